import pytest

from engines.config import Config, param
from engines.errors import ConfigError
from engines.samplers import SAMPLERS, build_sampler


class Demo(Config):
    n: int = param(4, label="N", min=1, max=10)
    beta: float = param(0.5, label="beta", min=0.0)
    mode: str = param("a", label="mode", choices=("a", "b"))
    flag: bool = param(False, label="flag")
    cap: float | None = param(None, label="cap")


def test_defaults_and_coercion():
    cfg = Demo()
    assert cfg.n == 4 and cfg.cap is None
    assert Demo(beta=1).beta == 1.0 and isinstance(Demo(beta=1).beta, float)


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"n": 11}, {"n": "3"}, {"n": 2.5}, {"beta": -1.0}, {"mode": "c"}, {"flag": 1}, {"n": True}],
)
def test_bad_values_are_refused(kwargs):
    with pytest.raises(ConfigError):
        Demo(**kwargs)


def test_from_strings_parses_each_type():
    cfg = Demo.from_strings({"n": "7", "beta": "0.25", "mode": "b", "flag": "yes", "cap": "none"})
    assert (cfg.n, cfg.beta, cfg.mode, cfg.flag, cfg.cap) == (7, 0.25, "b", True, None)
    with pytest.raises(ConfigError, match="unknown parameter"):
        Demo.from_strings({"m": "1"})
    with pytest.raises(ConfigError, match="must be int"):
        Demo.from_strings({"n": "seven"})


def test_frozen():
    with pytest.raises(AttributeError):
        Demo().n = 3  # type: ignore[misc]


def test_every_sampler_config_builds_and_describes_itself():
    for name, cls in SAMPLERS.items():
        cfg = cls.Config()
        assert cls.Config.paper, f"{name} cites no paper"
        assert cls.Config.label
        for spec in cls.Config.specs():
            assert spec.label and (spec.help or spec.type == "bool"), f"{name}.{spec.name} lacks UI text"
        assert build_sampler(name, cfg.as_dict()).config == cfg
