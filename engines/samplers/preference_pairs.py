"""Preference-pair construction from N scored samples (data for DPO / reward models).

Draw N candidates, score them, and pick a (chosen, rejected) pair:

- ``max_min``: the highest- and the lowest-reward candidates.
- ``sweet_spot``: chosen = the highest; rejected = the candidate whose reward
  is nearest μ - 2σ of the N rewards (Xiao et al., 2025, "Finding the Sweet
  Spot: Preference Data Construction for Scaling Preference Optimization",
  arXiv:2502.16825: as N grows the minimum becomes an outlier, and μ - 2σ
  keeps improving DPO where max/min stalls).
- ``west_of_n``: West-of-N (Pace et al., 2024, "West-of-N: Synthetic
  Preferences for Self-Improving Reward Models", arXiv:2401.12086): the best
  and worst of N under the reward, kept only when the reward's Bradley-Terry
  confidence σ((r_best - r_worst)/τ) reaches ``min_confidence`` (their
  confidence filter); otherwise no pair is emitted for this prompt.
- ``grid``: any cell of the sweet-spot grid (Xiao et al. 2025, as above): the
  candidates nearest two of the seven representative points min, μ-2σ, μ-σ, μ,
  μ+σ, μ+2σ, max (``engines.pairs.grid``); ``sweet_spot`` is the cell max/μ-kσ.
- ``mcpo``: chosen = the highest; rejected = one step of MC-PO's
  contrastive-divergence kernel from it over the others, P ∝ exp(r/β) with the
  chosen itself in the draw (Chen et al. 2025, arXiv:2502.04567;
  ``engines.pairs.mcpo``). When the chain stays put, no pair this time.

The pair is the ``select`` event's two nodes, chosen first; the margin and
the strategy are in the ``done`` metrics.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

from engines.config import param
from engines.errors import ConfigError
from engines.pairs.grid import POINT_NAMES, grid_pair
from engines.pairs.mcpo import mcpo_pair
from engines.rewards.base import sigmoid
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.candidates import Candidate, draw_scored, open_root
from engines.trace import Event, SelectEvent


class PreferencePairsConfig(GenerationConfig):
    label = "Preference pairs"
    paper = "Xiao et al. 2025, Finding the Sweet Spot (arXiv:2502.16825); Pace et al. 2024, West-of-N (arXiv:2401.12086)"
    summary = "Sample N, score, and emit a (chosen, rejected) pair: max/min, μ-2σ sweet spot, or West-of-N."

    n: int = param(8, label="N", min=2, max=1024, help="Candidates per prompt.")
    strategy: str = param(
        "sweet_spot", label="Strategy", choices=("max_min", "sweet_spot", "west_of_n", "grid", "mcpo"),
        help="How the pair is chosen."
    )
    chosen_point: str = param("max", label="Chosen point", choices=POINT_NAMES, help="Grid: the chosen candidate's point.")
    rejected_point: str = param("mu-2sigma", label="Rejected point", choices=POINT_NAMES, help="Grid: the rejected candidate's point.")
    beta: float = param(1.0, label="β (MC-PO)", min=1e-6, max=1e6, advanced=True, help="MC-PO kernel temperature: P ∝ exp(r/β).")
    k_sigma: float = param(2.0, label="k (μ - kσ)", min=0.0, max=10.0, step=0.5, help="Sweet spot: rejected nearest μ - kσ.")
    min_confidence: float = param(0.5, label="Min confidence", min=0.5, max=1.0, step=0.01, help="West-of-N: keep the pair only if σ(Δr/τ) reaches this.")
    tau: float = param(1.0, label="τ", min=1e-6, max=1e6, advanced=True, help="West-of-N confidence temperature.")
    batch_size: int = param(16, label="Batch size", min=1, max=256, advanced=True, help="Candidates per model call.")

    def validate(self) -> None:
        super().validate()
        if self.strategy == "grid" and POINT_NAMES.index(self.chosen_point) <= POINT_NAMES.index(self.rejected_point):
            raise ConfigError(f"the chosen point ({self.chosen_point}) must lie above the rejected point ({self.rejected_point})")


def choose_pair(found: list[Candidate], cfg: PreferencePairsConfig, rng=None) -> tuple[Candidate, Candidate] | None:
    if cfg.strategy in ("grid", "mcpo"):
        rewards = [c.reward for c in found]
        pair = grid_pair(rewards, cfg.chosen_point, cfg.rejected_point) if cfg.strategy == "grid" else mcpo_pair(rewards, rng, cfg.beta)
        return None if pair is None else (found[pair.chosen], found[pair.rejected])
    ranked = sorted(found, key=lambda c: -c.reward)
    chosen = ranked[0]
    if cfg.strategy == "sweet_spot":
        rewards = [c.reward for c in found]
        target = statistics.fmean(rewards) - cfg.k_sigma * statistics.pstdev(rewards)
        pool = [c for c in found if c is not chosen]
        rejected = min(pool, key=lambda c: (abs(c.reward - target), c.reward))
    else:
        rejected = ranked[-1]
    if cfg.strategy == "west_of_n" and sigmoid((chosen.reward - rejected.reward) / cfg.tau) < cfg.min_confidence:
        return None
    if rejected.reward >= chosen.reward:
        return None  # all rewards equal: no preference to learn
    return chosen, rejected


@SAMPLERS.register("preference_pairs")
class PreferencePairs(Sampler):
    name = "preference_pairs"
    Config = PreferencePairsConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: PreferencePairsConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        found: list[Candidate] = []
        while len(found) < cfg.n:
            found += yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(found)), cfg)
        if len(found) < 2:
            raise ConfigError("a preference pair needs at least two candidates")
        pair = choose_pair(found, cfg, ctx.rng)
        ctx.metrics["strategy"] = f"grid:{cfg.chosen_point}/{cfg.rejected_point}" if cfg.strategy == "grid" else cfg.strategy
        if pair is None:
            ctx.metrics["note"] = "no confident pair: rewards too close"
            return
        chosen, rejected = pair
        ctx.metrics["pair"] = {"chosen": chosen.id, "rejected": rejected.id, "margin": chosen.reward - rejected.reward}
        yield SelectEvent(nodes=[chosen.id, rejected.id], reason=f"{cfg.strategy}: chosen vs rejected")
