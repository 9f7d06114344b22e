"""Frozen, self-validating configs that carry their own UI metadata.

A sampler config is a subclass of :class:`Config` whose fields are declared
with :func:`param`; every subclass becomes a frozen, keyword-only dataclass
on its own (``__init_subclass__``), so there is no decorator to forget. The metadata
(label, help, range, choices) drives validation in ``__post_init__``, the
CLI's ``--set key=value`` parsing and the app's generated forms, so a new
sampler needs no UI code.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engines.errors import ConfigError


def param(
    default: Any,
    *,
    label: str,
    help: str = "",
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    step: float | None = None,
    advanced: bool = False,
) -> Any:
    """A config field with validation and UI metadata."""
    meta = {
        "label": label,
        "help": help,
        "min": min,
        "max": max,
        "choices": choices,
        "step": step,
        "advanced": advanced,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamSpec:
    """What a form needs to render one field."""

    name: str
    type: str  # "int", "float", "bool", "str", "choice"
    default: Any
    label: str
    help: str
    min: float | None
    max: float | None
    choices: tuple[Any, ...] | None
    step: float | None
    advanced: bool
    optional: bool


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {annotation!r}")
        return args[0], True
    if origin is typing.Literal:
        return str, False
    return annotation, False


@dataclass(frozen=True, kw_only=True)
class Config:
    """Base for sampler (and other) configs. Subclasses declare fields with :func:`param`."""

    label: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: the field that sets how much a run draws (N, particles, beams, simulations, rollouts):
    #: what ``--n`` and the Compare tab's size grid set. None where a sampler has no such knob.
    size_field: ClassVar[str | None] = "n"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # every subclass is itself a frozen, keyword-only dataclass: declaring fields is enough
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True, kw_only=True)(cls)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, optional = _base_type(hints[f.name])
            meta = f.metadata
            if value is None:
                if optional:
                    continue
                raise ConfigError(f"{f.name} is required")
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                value = float(value)
            if kind is int and isinstance(value, float) and value.is_integer():
                object.__setattr__(self, f.name, int(value))
                value = int(value)
            if kind in (int, float, bool, str) and (
                not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))
            ):
                raise ConfigError(f"{f.name} must be {kind.__name__}, got {value!r}")
            if meta.get("choices") is not None and value not in meta["choices"]:
                options = ", ".join(map(str, meta["choices"]))
                raise ConfigError(f"{f.name} must be one of {options}, got {value!r}")
            if meta.get("min") is not None and value < meta["min"]:
                raise ConfigError(f"{f.name} must be >= {meta['min']}, got {value!r}")
            if meta.get("max") is not None and value > meta["max"]:
                raise ConfigError(f"{f.name} must be <= {meta['max']}, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise ConfigError."""

    # -- introspection -------------------------------------------------------

    @classmethod
    def specs(cls) -> list[ParamSpec]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            kind, optional = _base_type(hints[f.name])
            meta = f.metadata
            type_name = "choice" if meta.get("choices") else kind.__name__
            out.append(
                ParamSpec(
                    name=f.name,
                    type=type_name,
                    default=f.default,
                    label=meta.get("label", f.name),
                    help=meta.get("help", ""),
                    min=meta.get("min"),
                    max=meta.get("max"),
                    choices=meta.get("choices"),
                    step=meta.get("step"),
                    advanced=meta.get("advanced", False),
                    optional=optional,
                )
            )
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)} for {cls.__name__}; "
                f"known: {', '.join(sorted(names))}"
            )
        return cls(**data)

    @classmethod
    def from_strings(cls, data: dict[str, str]) -> Config:
        """Parse ``key=value`` strings (the CLI's ``--set``) by each field's type."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        parsed: dict[str, Any] = {}
        for key, raw in data.items():
            if key not in fields:
                raise ConfigError(
                    f"unknown parameter {key!r} for {cls.__name__}; known: {', '.join(sorted(fields))}"
                )
            kind, optional = _base_type(hints[key])
            parsed[key] = _parse_scalar(key, raw, kind, optional)
        return cls.from_dict(parsed)

    @classmethod
    def size_spec(cls) -> ParamSpec | None:
        """The spec of :attr:`size_field`, or None when the sampler has no size knob."""
        return next((s for s in cls.specs() if s.name == cls.size_field), None)

    @classmethod
    def with_size(cls, params: dict[str, Any], size: Any = None, *, sampler: str | None = None) -> dict[str, Any]:
        """``params`` with the run's size set: the one place "n is the sampler's size" is decided.

        The size (the CLI's ``--n``, the API's ``n``, a sweep's level) goes to :attr:`size_field`,
        whatever the sampler calls it; an ``n`` among ``params`` of a sampler whose size is named
        otherwise is that size. A size for a sampler without a size knob, or a size given twice
        with two values, is a :class:`ConfigError`. Values keep their type (strings stay strings).
        """
        params, name = dict(params), sampler or cls.__name__
        if cls.size_field not in (None, "n") and "n" in params:
            alias = params.pop("n")
            if size is not None and str(size).strip() != str(alias).strip():
                raise ConfigError(f"the size is given twice: n={alias!r} and n={size!r}"[:200])
            size = alias
        if size is None:
            return params
        if cls.size_field is None:
            raise ConfigError(f"sampler {name!r} has no size parameter; set its parameters by name")
        given = params.get(cls.size_field)
        if given is not None and str(given).strip() != str(size).strip():
            raise ConfigError(f"the size is given twice: {cls.size_field}={given!r} and n={size!r}"[:200])
        params[cls.size_field] = size
        return params

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _parse_scalar(key: str, raw: str, kind: type, optional: bool) -> Any:
    text = str(raw).strip()
    if optional and text.lower() in ("", "none", "null"):
        return None
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"{key} must be {kind.__name__}, got {raw!r}") from None
    return text
