"""SVDD: soft value-based decoding, derivative-free guidance one step at a time.

Li, Zhao, Uehara, Biancalani, et al., "Derivative-Free Guidance in Continuous
and Discrete Diffusion Models with Soft Value-Based Decoding" (2024,
arXiv:2408.08252); reference code: masa-ue/SVDD.

At every step each particle draws M candidates x_{t-1}^(m) ~ p_θ(·|x_t) from
the pretrained model, values each one through its predicted clean sample
(SVDD-PM: v(x_{t-1}) ≈ r(x̂0(x_{t-1})), which costs one network evaluation per
candidate and is reused for the next step), and keeps one candidate drawn with
probability ∝ exp(v/α). α = 0 (the paper's default) keeps the best candidate.
At the last step the candidates are clean samples and are valued by the reward
itself. No gradient of the reward is needed.

| code | paper | meaning |
|---|---|---|
| ``candidates`` | M | candidates per particle per step |
| ``alpha`` | α | temperature of the selection (0: argmax) |
| value | v_{t-1}(x_{t-1}) = r(x̂0(x_{t-1})) | the soft value estimate (posterior-mean approximation) |

A step whose noise is zero (σ_t = 0: DDIM's last step onto ᾱ = 1, or η = 0)
has one possible outcome, so it draws one candidate per particle, not M
identical ones.

Cost, with K steps of which the last has σ = 0 (the usual schedule): N network
evaluations for x_T, then N·M per step except the last (whose candidates need
none): N + N·M·(K−1) in all; N·M·(K−1) + N reward calls and as many decodes
(VAE passes for latent models, metered as ``decodes``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.diffusion_common import (
    DiffusionConfig,
    DiffusionSampler,
    decode,
    fit_particles,
    image_uris,
    preview_uris,
    prunes,
    reward_name,
    scores,
    state_nodes,
    take,
)
from engines.trace import Event, SelectEvent


class SVDDConfig(DiffusionConfig):
    size_field = "particles"
    label = "SVDD (soft value-based decoding)"
    paper = "Li et al. 2024, Derivative-Free Guidance in Continuous and Discrete Diffusion Models with Soft Value-Based Decoding"
    summary = "M candidates per step, valued through the predicted x0; keep the best (or a soft choice)."

    particles: int = param(1, label="Particles", min=1, max=1024, help="Independent chains decoded in parallel.")
    candidates: int = param(8, label="Candidates (M)", min=1, max=256, help="Draws per particle per step.")
    alpha: float = param(
        0.0, label="α (selection temperature)", min=0.0, max=100.0, step=0.01, help="0 keeps the best candidate."
    )

    def validate(self) -> None:
        if self.eta == 0 and self.candidates > 1:
            raise ConfigError("svdd draws candidates from stochastic steps; eta must be > 0")


@SAMPLERS.register("svdd")
class SVDD(DiffusionSampler):
    name = "svdd"
    Config = SVDDConfig
    examples = {
        "svdd": {"particles": 2, "candidates": 3, "steps": 5},
        "svdd_soft": {"particles": 1, "candidates": 3, "steps": 5, "alpha": 0.1},
    }

    @staticmethod
    def plan(m: int, stochastic: list[bool]) -> dict[str, int]:
        """Per-particle work with M = ``m`` candidates at each stochastic step (one at a noiseless
        one): the initial evaluation, one per candidate before the last step, and a reward
        call and a decode per candidate."""
        per_step = [m if s else 1 for s in stochastic]
        looks = sum(per_step)
        return {"nfe_each": 1 + sum(per_step[:-1]), "reward_calls_each": looks, "decodes_each": looks}

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg = self.config
        model = ctx.model
        sched = model.schedule(cfg.steps)
        total, m = len(sched), cfg.candidates
        stochastic = [sched.std(i, cfg.eta) > 0 for i in range(total)]
        n = fit_particles(ctx, cfg.particles, **self.plan(m, stochastic))
        if n < 1:  # not one particle with M candidates: one particle, and the most candidates that fit
            n = 1
            fits = (k for k in range(m, 0, -1) if fit_particles(ctx, 1, **self.plan(k, stochastic)) == 1)
            m = next(fits, 0)
            if m < 1:
                raise BudgetExhausted("budget exhausted: not even one particle fits the nfe / reward / decode budget")
        rname = reward_name(ctx)
        x = model.initial_noise(n, ctx.rng)
        pred = ctx.denoise(x, 0, sched)
        ids, events = state_nodes(ctx, depth=0, parents=[None] * n, images=preview_uris(ctx, pred.x0), timestep=sched.timesteps[0])
        yield from events
        values = torch.zeros(n)
        for i in range(total):
            last = i == total - 1
            k = m if stochastic[i] else 1  # a noiseless step has one outcome: no identical copies
            repeat = torch.arange(n, device=x.device).repeat_interleave(k)
            cand = model.step(x[repeat], i, sched, take(pred, repeat), eta=cfg.eta, rng=ctx.rng).sample
            if last:
                images = decode(ctx, cand)
                cand_values = torch.tensor(ctx.score(images))
                uris = image_uris(ctx, images)
            else:
                cand_pred = ctx.denoise(cand, i + 1, sched)
                cand_values = torch.tensor(ctx.score(decode(ctx, cand_pred.x0)))
                uris = preview_uris(ctx, cand_pred.x0)
            grid = cand_values.view(n, k)
            if cfg.alpha == 0:
                choice = grid.argmax(dim=1)
            else:
                choice = torch.multinomial(torch.softmax(grid.double() / cfg.alpha, dim=1), 1, generator=ctx.rng).squeeze(1)
            chosen = torch.arange(n) * k + choice
            chosen_set = set(chosen.tolist())
            cand_ids, events = state_nodes(
                ctx,
                depth=i + 1,
                parents=[ids[j] for j in repeat.tolist()],
                images=uris,
                timestep=None if last else sched.timesteps[i + 1],
                particles=repeat.tolist(),
                final=[last and j in chosen_set for j in range(n * k)],
                meta={"candidate": True},
            )
            yield from events
            yield from scores(cand_ids, cand_values.tolist(), rname, partial=not last)
            yield from prunes([cand_ids[j] for j in range(n * k) if j not in chosen_set], "not selected")
            index = chosen.to(x.device)
            x = cand[index]
            if not last:
                pred = take(cand_pred, index)
            ids = [cand_ids[j] for j in chosen.tolist()]
            values = cand_values[chosen]
        best = int(torch.argmax(values))
        ctx.metrics.update({"particles": n, "candidates": m, "steps": total})
        yield SelectEvent(nodes=[ids[best]], reason=f"best of {n} SVDD particle(s), M = {m}")
