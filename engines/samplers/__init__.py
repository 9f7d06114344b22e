"""The sampler registry: name -> Sampler class.

Each sampler lives in its own module and registers itself with
``@SAMPLERS.register(name)``; importing this package imports them all.
"""

from __future__ import annotations

from typing import Any

from engines.registry import Registry
from engines.samplers.base import Sampler

SAMPLERS: Registry[type[Sampler]] = Registry("sampler")


def build_sampler(name: str, params: dict[str, Any] | None = None, *, strings: bool = False) -> Sampler:
    """A sampler by registered name, its config built from ``params``
    (parsed from strings when ``strings`` is set, as the CLI's ``--set``)."""
    cls = SAMPLERS.get(name)
    params = params or {}
    config = cls.Config.from_strings(params) if strings else cls.Config.from_dict(params)
    return cls(config)


def _load_all() -> None:
    # Imported for their registration side effect, one module per algorithm.
    from engines.samplers import (  # noqa: F401
        adaptive_restart,
        beam_early_reject,
        beam_search,
        best_of_majority,
        best_of_n,
        cards,
        deepconf,
        dts,
        dual_phase,
        dvts,
        early_rejection,
        fk_steering,
        fmtt,
        genselect,
        knockout,
        majority,
        mcts,
        mini_n,
        minority_guidance,
        power_mcmc,
        preference_pairs,
        psi_sampler,
        q_probe,
        rejection,
        reno,
        smc,
        soft_best_of_k,
        svdd,
        vas,
        weighted_majority,
        zip_rc,
    )


_load_all()
