"""Feynman-Kac steering reaches the reward-tilted density, within a bound set by the ESS.

The toy model's data distribution is the mixture p0 = 0.7·N(−2, 0.5²) + 0.3·N(2, 0.5²)
with an exact denoiser, and the reward is r(x) = x. The tilted target
p0(x)·exp(λx)/Z is again a Gaussian mixture, known in closed form
(:meth:`GaussianMixture.tilt_linear`): for λ = 0.5 it moves the mass above 0
from 0.30 to 0.76.

The bound: a weighted particle estimate of a probability p has a standard
error of about √(p(1−p)/N_eff), where N_eff is the effective sample size. We
take N_eff as the smallest ESS the run reported (resampling and the final
weights included: the run's bottleneck), require N_eff ≥ N/10 (a floor: a run
whose weights collapsed proves nothing) and allow four standard errors; the
same bound checks the weighted mean against the target's standard deviation,
and the run's estimate of log Z against the closed form.

Power: every potential the sampler offers (max, sum, difference) is checked,
and deliberately wrong variants defined here must fail the same check: a final
potential that drops its running term (the product of the earlier potentials
along the lineage), λ off by 25%, and weights not reset after resampling.

Why the potential schedule of the first test starts late: with potentials from
the first step (every 4 of 100 steps), ``max`` and ``sum`` multiply up an
intermediate tilt of about λ per potential step, which the final potential must
divide out again, and the final ESS collapses (measured: 7 and 5 of 2000
particles). ``difference`` potentials telescope and keep it high (1859 of 2000),
which is why ``difference`` is the default; the adaptive schedule is tested for
it below.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.samplers import build_sampler
from engines.samplers.fk_steering import FKSteering
from engines.task import Task
from engines.trace import collect

N = 2000
LAM = 0.5
LATE = {"resample_start": 60, "resample_every": 20, "ess_threshold": 1.0, "steps": 100}
ADAPTIVE = {"resample_start": 0, "resample_every": 4, "ess_threshold": 0.5, "steps": 100}


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


def misfits(trace, mixture, lam: float) -> list[str]:  # noqa: ANN001
    """What is wrong with a run as a sample of p0·exp(λx)/Z (empty when it passes)."""
    target = mixture.tilt_linear([1.0], lam)
    p_hat, mean_hat, n_eff = weighted_estimates(trace)
    if n_eff < N / 10:
        return [f"weights degenerated (N_eff = {n_eff:.0f} < {N // 10})"]
    out = []
    p = target.mass_above(0.0)
    tol_p = 4 * math.sqrt(p * (1 - p) / n_eff)
    tol_mean = 4 * mixture_sd(target) / math.sqrt(n_eff)
    if abs(p_hat - p) >= tol_p:
        out.append(f"P(x>0) = {p_hat:.4f}, exact {p:.4f}, bound {tol_p:.4f}")
    if abs(mean_hat - target.mean()) >= tol_mean:
        out.append(f"E[x] = {mean_hat:.4f}, exact {target.mean():.4f}, bound {tol_mean:.4f}")
    # the SMC estimate of log Z = log E[exp(λ r)] (relative s.e. of Ẑ about 1/√N_eff)
    log_z = mixture.log_partition([1.0], lam)
    if abs(trace.done.metrics["log_evidence"] - log_z) >= 4 / math.sqrt(n_eff):
        out.append(f"log Z = {trace.done.metrics['log_evidence']:.4f}, exact {log_z:.4f}")
    return out


def run(sampler, toy_model, reward):  # noqa: ANN001, ANN201
    trace = collect(sampler.run(Task(prompt=""), toy_model, reward, rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok"
    return trace


def fk(**params) -> FKSteering:  # noqa: ANN003
    return build_sampler("fk_steering", {"particles": N, "lam": LAM} | params)


@pytest.mark.parametrize(
    ("potential", "schedule", "guidance"),
    [
        ("max", LATE, 0.0),
        ("sum", LATE, 0.0),
        ("difference", LATE, 0.0),
        ("difference", ADAPTIVE, 0.0),
        ("difference", ADAPTIVE, LAM),
    ],
    ids=["max", "sum", "difference", "difference-adaptive", "difference-gradient-proposal"],
)
def test_fk_steering_matches_the_tilted_density(toy_model, mixture, coordinate_reward, potential, schedule, guidance) -> None:  # noqa: ANN001
    trace = run(fk(potential=potential, guidance=guidance, **schedule), toy_model, coordinate_reward)
    assert misfits(trace, mixture, LAM) == []
    if schedule is LATE:
        assert trace.done.metrics["resamples"] == 2  # the weights were reset twice: the reset is exercised
    # the untilted answer is far outside the bound: the check can tell the two apart
    p_hat, _, n_eff = weighted_estimates(trace)
    assert abs(mixture.mass_above(0.0) - p_hat) > 2 * 4 * math.sqrt(0.25 / n_eff)


def test_fk_without_a_tilt_is_the_base_model(toy_model, mixture, coordinate_reward) -> None:  # noqa: ANN001
    assert misfits(run(fk(lam=0.0, potential="difference", **ADAPTIVE), toy_model, coordinate_reward), mixture, 0.0) == []


# -- deliberately wrong variants: each must fail the same check -----------------------------


class DropsTheRunningTerm(FKSteering):
    """Final potential exp(λ r(x0)) without dividing by the earlier potentials of the lineage."""

    def _final_log_potential(self, r, lineage):  # noqa: ANN001, ANN202
        return self.config.lam * r


class KeepsWeightsAfterResampling(FKSteering):
    """Resampled particles keep their parent's weight instead of weight 1."""

    def _weights_after_resampling(self, log_w, ancestors):  # noqa: ANN001, ANN202
        return log_w[ancestors]


@pytest.mark.slow
@pytest.mark.parametrize("potential", ["max", "sum", "difference"])
@pytest.mark.parametrize("wrong", ["drops-running-term", "lambda-25%-high", "weights-not-reset"])
def test_a_wrong_weight_recursion_fails_the_check(toy_model, mixture, coordinate_reward, potential, wrong) -> None:  # noqa: ANN001
    if wrong == "lambda-25%-high":
        sampler = fk(potential=potential, **LATE, lam=LAM * 1.25)
    else:
        cls = DropsTheRunningTerm if wrong == "drops-running-term" else KeepsWeightsAfterResampling
        sampler = cls(FKSteering.Config(particles=N, lam=LAM, potential=potential, **LATE))
    trace = run(sampler, toy_model, coordinate_reward)
    assert misfits(trace, mixture, LAM), f"{wrong} ({potential}) passed the exactness check"
