"""Training-time sampling: rollout strategies, the policy-gradient / SFT update and the training loop.

Each rollout strategy lives in its own module under ``engines.training.strategies`` and
registers itself with ``@STRATEGIES.register(name)``, as samplers do; importing this
package imports them all. See :mod:`engines.training.base` for the protocol and
:mod:`engines.training.loop` for a training run.
"""

from __future__ import annotations

from typing import Any

from engines.registry import Registry
from engines.training.base import RolloutStrategy

STRATEGIES: Registry[type[RolloutStrategy]] = Registry("rollout strategy")


def build_strategy(name: str, params: dict[str, Any] | None = None, *, strings: bool = False) -> RolloutStrategy:
    """A strategy by registered name, its config built from ``params`` (strings as the CLI's ``--set``)."""
    cls = STRATEGIES.get(name)
    params = params or {}
    config = cls.Config.from_strings(params) if strings else cls.Config.from_dict(params)
    return cls(config)


def _load_all() -> None:
    # Imported for their registration side effect, one module per strategy.
    from engines.training.strategies import (  # noqa: F401
        bcpg_nsa,
        d3s,
        dynamic_sampling,
        eepo,
        grpo,
        lspo,
        pf_ppo,
        polarity,
        raft,
        reinforce_ada,
        reinforce_rej,
        rloo,
        tree_rl,
        tree_rpo,
    )


_load_all()
