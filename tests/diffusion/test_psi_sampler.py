"""Ψ-Sampler reaches the reward-tilted density (the FK steering check), and its start matters.

Same toy and bound as ``test_exactness.py``: p0 = 0.7·N(−2, 0.5²) + 0.3·N(2, 0.5²), r(x) = x,
the target p0(x)·exp(λx)/Z in closed form, the weighted particles' P(x > 0) and mean within
four standard errors at the run's smallest ESS (at least N/10). Every particle comes from its
own pCNL chain (``chains = particles``), so the particles are independent and the ESS bound is
honest.

Why η = 0.2 and a 10-step look-ahead for the wrong variants: with η = 1 the reverse chain
injects so much noise that x0 hardly depends on x_T, and neither a better nor a wrong start
changes the law of x0 measurably (measured: a prior start passed the check). With little step
noise x_T decides most of x0, the posterior over x_T is far from the prior, and the wrong
variants fail by many bounds (measured: P(x > 0) = 0.50 from a prior start and 0.64 without the
Metropolis-Hastings correction, against 0.76 ± 0.05).
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.rewards import build_reward
from engines.samplers.psi_sampler import PsiSampler, lookahead_schedule, thinned_positions
from engines.task import Task
from engines.trace import Budget, collect
from tests.diffusion.test_exactness import mixture_sd, weighted_estimates

N = 2000
LAM = 0.5
BASE = {"particles": N, "chains": N, "burn_in": 20, "mcmc_steps": 1, "lam": LAM, "steps": 100,
        "resample_every": 4, "ess_threshold": 0.5}
SHARP = {"eta": 0.2, "lookahead": 10, "rho": 0.2}


def misfits(trace, mixture, lam: float, particles: int = N) -> list[str]:  # noqa: ANN001
    """What is wrong with a run of ``particles`` weighted particles as a sample of p0·exp(λx)/Z
    (empty when it passes); no check of log Z, which these samplers do not estimate in full."""
    target = mixture.tilt_linear([1.0], lam)
    p_hat, mean_hat, n_eff = weighted_estimates(trace)
    if n_eff < particles / 10:
        return [f"weights degenerated (N_eff = {n_eff:.0f})"]
    p = target.mass_above(0.0)
    out = []
    if abs(p_hat - p) >= 4 * math.sqrt(p * (1 - p) / n_eff):
        out.append(f"P(x>0) = {p_hat:.4f}, exact {p:.4f}")
    if abs(mean_hat - target.mean()) >= 4 * mixture_sd(target) / math.sqrt(n_eff):
        out.append(f"E[x] = {mean_hat:.4f}, exact {target.mean():.4f}")
    return out


def run(sampler, model, reward, budget=None):  # noqa: ANN001, ANN201
    trace = collect(sampler.run(Task(prompt=""), model, reward, budget=budget, rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok", trace.done.message
    return trace


def psi(cls=PsiSampler, **params):  # noqa: ANN001, ANN003, ANN201
    return cls(cls.Config(**(BASE | params)))


@pytest.mark.parametrize(
    "params",
    [{}, SHARP, SHARP | {"guidance": LAM}],
    ids=["paper-tweedie-eta1", "lookahead-eta0.2", "lookahead-gradient-proposal"],
)
def test_psi_sampler_matches_the_tilted_density(toy_model, mixture, coordinate_reward, params) -> None:  # noqa: ANN001
    trace = run(psi(**params), toy_model, coordinate_reward)
    assert misfits(trace, mixture, LAM) == []
    assert 0.0 < trace.done.metrics["mcmc_acceptance"] <= 1.0
    assert "log_evidence" not in trace.done.metrics and math.isfinite(trace.done.metrics["log_evidence_ratio"])
    p_hat, _, n_eff = weighted_estimates(trace)  # the untilted answer is far outside the bound
    assert abs(mixture.mass_above(0.0) - p_hat) > 2 * 4 * math.sqrt(0.25 / n_eff)


# -- deliberately wrong variants: each must fail the same check -----------------------------


class PriorStart(PsiSampler):
    """Prior noise x_T ~ N(0, I) passed off as posterior draws (weights start equal, tilt in the lineage)."""

    def _initial_particles(self, ctx, n, sched):  # noqa: ANN001, ANN202
        yield from ()
        x = ctx.model.initial_noise(n, ctx.rng)
        r, _ = self._reward_and_gradient(ctx, x, lookahead_schedule(sched, self.config.lookahead))
        return x, r.double(), self.config.lam * r.double()


class NoMetropolisHastings(PsiSampler):
    """Unadjusted pCN Langevin: every proposal accepted."""

    def _log_acceptance(self, x, *rest):  # noqa: ANN001, ANN002, ANN202
        return torch.zeros(x.shape[0], dtype=torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [PriorStart, NoMetropolisHastings], ids=["prior-start", "no-mh"])
def test_a_wrong_start_fails_the_check(toy_model, mixture, coordinate_reward, cls) -> None:  # noqa: ANN001
    trace = run(psi(cls, **SHARP), toy_model, coordinate_reward)
    assert misfits(trace, mixture, LAM), f"{cls.__name__} passed the exactness check"


# -- the pieces and the metering ------------------------------------------------------------------


def test_lookahead_schedule_jumps_along_the_run_schedule(toy_model) -> None:  # noqa: ANN001
    sched = toy_model.schedule(10)
    look = lookahead_schedule(sched, 3)
    assert look.timesteps == (sched.timesteps[0], sched.timesteps[3], sched.timesteps[6])
    assert look.alpha_bars_prev == (sched.alpha_bars[3], sched.alpha_bars[6], sched.alpha_bars_prev[-1])
    assert lookahead_schedule(sched, 1).timesteps == (sched.timesteps[0],)
    assert thinned_positions(25, 2) == [24, 12] and thinned_positions(1, 1) == [0]


def test_psi_meters_mcmc_gradients_as_backward_passes(digits_model) -> None:  # noqa: ANN001
    n, chains, burn, kept, steps, look = 4, 2, 2, 3, 5, 2
    params = {"particles": n, "chains": chains, "burn_in": burn, "mcmc_steps": kept, "steps": steps,
              "lookahead": look, "resample_every": 2}
    trace = run(PsiSampler(PsiSampler.Config(**params)), digits_model, build_reward("digit:3"))
    evaluations = chains * (1 + burn + kept)
    cost = trace.done.cost
    assert cost["backward_passes"] == evaluations
    assert cost["backward_nfe"] == evaluations * look
    assert cost["nfe"] == evaluations * look + n * steps
    potentials = len(range(0, steps, 2))
    assert cost["reward_calls"] == evaluations + n * (potentials + 1)
    assert trace.done.metrics["mcmc_chains"] == chains
    finals = [i for i, node in trace.nodes.items() if node.final]
    assert len(finals) == n
    # a budget too small for this plan shrinks particles and chains up front; the run still ends ok
    small = run(PsiSampler(PsiSampler.Config(**params)), digits_model, build_reward("digit:3"),
                budget=Budget(backward_passes=evaluations - 1))
    assert small.done.cost["backward_passes"] <= evaluations - 1 and small.done.metrics["mcmc_chains"] == 1


def test_psi_rejects_bad_configs_and_rewards(digits_model) -> None:  # noqa: ANN001
    from engines.errors import ConfigError

    with pytest.raises(ConfigError, match="mcmc_steps"):
        PsiSampler.Config(particles=10, chains=2, mcmc_steps=3)
    with pytest.raises(ConfigError, match="eta"):
        PsiSampler.Config(eta=0.0)
    with pytest.raises(ConfigError, match="differentiable"):
        PsiSampler().run(Task(prompt=""), digits_model, build_reward("0.5*ink + 0.5*symmetry"), rng=torch.Generator())
    with pytest.raises(ConfigError, match="lookahead"):
        lookahead_schedule(digits_model.schedule(4), 5)
