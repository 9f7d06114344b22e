"""Feynman-Kac steering reaches the reward-tilted density, within a bound set by the particle count.

The toy model's data distribution is the mixture p0 = 0.7·N(−2, 0.5²) + 0.3·N(2, 0.5²)
with an exact denoiser, and the reward is r(x) = x. The tilted target
p0(x)·exp(λx)/Z is again a Gaussian mixture, known in closed form
(:meth:`GaussianMixture.tilt_linear`): for λ = 0.5 it moves the mass above 0
from 0.30 to 0.76.

The bound: a weighted particle estimate of a probability p has a standard
error of about √(p(1−p)/N_eff), where N_eff is the effective sample size. We
take N_eff as the smallest ESS the run reported (resampling and the final
weights included: the run's bottleneck) and allow four standard errors; the
same bound checks the weighted mean against the target's standard deviation.
The untilted mixture lies far outside the bound, so a sampler that ignored
the reward, or weighted wrongly, fails. The run's estimate of log Z is checked
against the closed form too.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import collect

N = 2000
LAM = 0.5


def weighted_estimates(trace) -> tuple[float, float, float]:  # noqa: ANN001
    """(P(x > 0), E[x], N_eff) from the final particles and their importance weights."""
    final = trace.resamples[-1]
    assert not final.resampled  # the final event carries the importance weights
    weights = torch.softmax(torch.tensor(final.log_weights, dtype=torch.float64), dim=0)
    xs = torch.tensor([trace.scores[i]["x0"] for i in final.particles], dtype=torch.float64)
    n_eff = min(r.ess for r in trace.resamples)
    return float((weights * (xs > 0)).sum()), float((weights * xs).sum()), n_eff


def mixture_sd(mixture) -> float:  # noqa: ANN001
    m = mixture.mean()
    second = sum(w * (s**2 + mu[0] ** 2) for w, mu, s in zip(mixture.weights, mixture.means, mixture.stds, strict=True))
    return math.sqrt(second - m**2)


@pytest.mark.parametrize(
    ("lam", "guidance"),
    [(0.0, 0.0), (LAM, 0.0), (LAM, LAM)],
    ids=["untilted", "tilted", "tilted-with-gradient-proposal"],
)
def test_fk_steering_matches_the_tilted_density(toy_model, mixture, coordinate_reward, lam, guidance) -> None:  # noqa: ANN001
    target = mixture.tilt_linear([1.0], lam)
    sampler = build_sampler(
        "fk_steering",
        {
            "particles": N,
            "lam": lam,
            "potential": "difference",
            "resample_every": 4,
            "ess_threshold": 0.5,
            "guidance": guidance,
            "steps": 100,
        },
    )
    trace = collect(sampler.run(Task(prompt=""), toy_model, coordinate_reward, rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok"
    p_hat, mean_hat, n_eff = weighted_estimates(trace)
    assert n_eff > N / 10, f"weights degenerated (N_eff = {n_eff:.0f})"

    p = target.mass_above(0.0)
    tol_p = 4 * math.sqrt(p * (1 - p) / n_eff)
    tol_mean = 4 * mixture_sd(target) / math.sqrt(n_eff)
    assert abs(p_hat - p) < tol_p, f"P(x>0) = {p_hat:.4f}, exact {p:.4f}, bound {tol_p:.4f}"
    assert abs(mean_hat - target.mean()) < tol_mean, f"E[x] = {mean_hat:.4f}, exact {target.mean():.4f}"
    # the SMC estimate of log Z = log E[exp(λ r)] (relative s.e. of Ẑ about 1/√N_eff)
    log_z = mixture.log_partition([1.0], lam)
    assert abs(trace.done.metrics["log_evidence"] - log_z) < 4 / math.sqrt(n_eff)
    if lam > 0:
        # the untilted answer is far outside the bound: the test can tell the two apart
        assert abs(mixture.mass_above(0.0) - p) > 5 * tol_p
        assert abs(mixture.mean() - target.mean()) > 5 * tol_mean
