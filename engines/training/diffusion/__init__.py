"""Training-time sampling for diffusion models: rollout schemes over the denoising chain.

Each scheme lives in its own module here and registers itself with
``@SCHEMES.register(name)``; importing this package imports them all. See
:mod:`engines.training.diffusion.base` for the protocol and
:mod:`engines.training.diffusion.loop` for a training run (the text lab's run folder,
events, checkpoints, resume and budgets, with diffusion's counters).

| name | module | paper |
|---|---|---|
| ``dpok`` | dpok | Fan et al. 2023 (DDPO's score-function estimator when β = 0: Black et al. 2023) |
| ``draft``, ``draft_k``, ``draft_lv`` | draft | Clark et al. 2023 |
| ``curated_retraining`` | curated | Ferbach et al. 2024 |
| ``single_sde`` | single_sde | Zhang et al. 2026 (E-GRPO) |
| ``branch`` | branch | Hu et al. 2025 (B²-DiffuRL) |
| ``tree`` | tree | Fu et al. 2025 (Dynamic-TreeRPO) |
| ``adjoint_matching`` | adjoint_matching | Domingo-Enrich et al. 2025 |

Shared options: ``eta_shape='decaying'`` (:mod:`~engines.training.diffusion.decaying_noise`, HiCoGen's
decaying stochasticity) for every scheme that reads :meth:`SchemeConfig.eta_schedule`; DPOK's
``step_credit='cosine'`` (:mod:`~engines.training.diffusion.step_credit`, CoCA: Liao et al. 2025).
"""

from __future__ import annotations

from typing import Any

from engines.registry import Registry
from engines.training.diffusion.base import DiffusionScheme

SCHEMES: Registry[type[DiffusionScheme]] = Registry("diffusion rollout scheme")


def build_scheme(name: str, params: dict[str, Any] | None = None, *, strings: bool = False) -> DiffusionScheme:
    """A scheme by registered name, its config built from ``params`` (strings as the CLI's ``--set``)."""
    cls = SCHEMES.get(name)
    params = params or {}
    config = cls.Config.from_strings(params) if strings else cls.Config.from_dict(params)
    return cls(config)


def _load_all() -> None:
    # Imported for their registration side effect, one module per scheme.
    from engines.training.diffusion import (  # noqa: F401
        adjoint_matching,
        branch,
        curated,
        dpok,
        draft,
        single_sde,
        tree,
    )


_load_all()
