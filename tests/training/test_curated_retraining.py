"""Curated retraining (Ferbach et al. 2024, arXiv:2407.09499): the curator's pick law, the loop on toys, digits.

- The curator keeps sample j of K with probability softmax(α·r)_j: a chi-square test on fixed
  rewards passes, and the wrong variants (argmax; uniform) fail it.
- On a 1-D Gaussian with r(x) = x, K = 2 and exact retraining (refit a Gaussian by maximum
  likelihood), the curated mean has a closed form, μ + E[D·sigmoid(αD)] with D ~ N(0, 2σ²) (by
  symmetry of X − Y and X + Y), and the expected reward rises every round; argmax curation
  (μ + σ/√π) is a different law and the test tells them apart.
- Through the training loop on the Gaussian-mixture toy: the pool's reward rises round by
  round, every counter is met, bad input is one line.
- Digits (slow, in CI): two rounds raise the mean ``digit:3`` reward; diversity (mean pairwise
  distance, entropy of the held-out check's digits) is reported round by round.
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch
from scipy.stats import chisquare

from app.workflows.store import training_home
from engines.errors import ConfigError
from engines.models.gaussian_mixture import GaussianMixture
from engines.training.diffusion.curated import curate, label_entropy, pairwise_distance
from engines.training.diffusion.loop import DiffusionTrainConfig, train_diffusion
from tests.diffusion.conftest import CoordinateReward
from tests.diffusion.trainable_toys import StepShiftToy
from tests.training.test_diffusion_training import _comparable, one_thread  # noqa: F401  (one_thread: the fixture)

REWARDS = torch.tensor([0.0, 0.5, 1.0, 2.0])


def _pick_counts(picker, trials: int = 20_000) -> torch.Tensor:
    rows = REWARDS.expand(trials, -1)
    return torch.bincount(picker(rows), minlength=4).double()


def _chi2_pvalue(counts: torch.Tensor, weight: float) -> float:
    expected = torch.softmax(weight * REWARDS.double(), 0) * counts.sum()
    return float(chisquare(counts.numpy(), expected.numpy()).pvalue)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_the_curator_picks_by_softmax_of_the_reward(weight):
    rng = torch.Generator().manual_seed(1)
    assert _chi2_pvalue(_pick_counts(lambda r: curate(r, weight, rng)), weight) > 1e-3
    # wrong variants: keep the best one (argmax), or ignore the reward (uniform)
    assert _chi2_pvalue(_pick_counts(lambda r: r.argmax(1)), weight) < 1e-6
    uniform = lambda r: torch.randint(0, 4, (r.shape[0],), generator=rng)  # noqa: E731
    assert _chi2_pvalue(_pick_counts(uniform), weight) < 1e-6


def _curated_mean_shift(sigma: float, weight: float) -> float:
    """E[D·sigmoid(weight·D)], D ~ N(0, 2σ²), by quadrature: the K = 2 curated mean minus μ."""
    s = math.sqrt(2) * sigma
    d = torch.linspace(-12 * s, 12 * s, 200_001, dtype=torch.float64)
    density = torch.exp(-0.5 * (d / s) ** 2) / (s * math.sqrt(2 * math.pi))
    return float(torch.trapezoid(d * torch.sigmoid(weight * d) * density, d))


def test_exact_retraining_on_curated_gaussians_raises_the_reward_each_round_by_the_closed_form():
    rng = torch.Generator().manual_seed(0)
    mu, sigma, n, weight = 0.0, 1.0, 40_000, 1.0
    for _ in range(3):
        pairs = mu + sigma * torch.randn(n, 2, generator=rng, dtype=torch.float64)
        kept = pairs[torch.arange(n), curate(pairs, weight, rng)]  # r(x) = x
        expected = mu + _curated_mean_shift(sigma, weight)
        assert abs(float(kept.mean()) - expected) < 4 * sigma / math.sqrt(n)
        argmax_mean = mu + sigma / math.sqrt(math.pi)  # the wrong variant's law, far from this one's
        assert abs(argmax_mean - expected) > 10 * sigma / math.sqrt(n)
        assert float(kept.mean()) > mu  # the expected reward rises
        mu, sigma = float(kept.mean()), float(kept.std())  # exact retraining: the ML Gaussian fit


def test_diversity_measures():
    same = torch.zeros(5, 1, 8, 8)
    assert pairwise_distance(same) == 0.0
    two = torch.stack([torch.zeros(64), torch.ones(64)]).reshape(2, 1, 8, 8)
    assert pairwise_distance(two) == pytest.approx(8.0)
    assert label_entropy([1, 1, 1, None]) == 0.0
    assert label_entropy([0, 1, 2, 3]) == pytest.approx(2.0)
    assert label_entropy([None]) == 0.0


MIXTURE = GaussianMixture(weights=(0.7, 0.3), means=((-2.0,), (2.0,)), stds=(0.5, 0.5))
TOY_PARAMS = {"steps": 6, "batch_size": 16, "round_size": 32, "choices": 4, "round_updates": 5, "real_fraction": 0.25}


def _toy_run(name, params=None, *, cancel_at=None, resume=False, **budget):
    policy = StepShiftToy(MIXTURE, default_steps=6)
    config = DiffusionTrainConfig(name=name, scheme="curated_retraining", learning_rate=0.05, eval_every=0,
                                  eval_size=256, **budget)
    cancel = threading.Event()
    events = []
    for event in train_diffusion(config, {**TOY_PARAMS, **(params or {})}, policy=policy, reward=CoordinateReward(),
                                 cancel=cancel, resume=resume, runs_folder=training_home()):
        events.append(event)
        if event.kind == "update" and event.step == cancel_at:
            cancel.set()
    return events


def test_rounds_on_the_toy_raise_the_reward_and_meet_the_budget():
    events = _toy_run("toy", max_updates=15, nfe=15 * 16 + 3 * 32 * 4 * 6)
    updates = [e.metrics for e in events if e.kind == "update"]
    rounds = [m for m in updates if "pool_reward_mean" in m]
    assert [m["round"] for m in rounds] == [0, 1, 2] and len(updates) == 15
    assert all(m["real_rows"] == 4 for m in updates)
    pool = [m["pool_reward_mean"] for m in rounds]
    assert pool[0] < pool[1] < pool[2]
    assert all(m["curated_reward_mean"] > m["pool_reward_mean"] for m in rounds)
    evals = [e.metrics for e in events if e.kind == "eval"]
    assert evals[-1]["reward_mean"] > evals[0]["reward_mean"] + 0.2
    done = events[-1]
    assert done.metrics["nfe"] == 15 * 16 + 3 * 32 * 4 * 6 and done.metrics["samples"] == 3 * 32 * 4
    assert done.metrics["backward_nfe"] == 15 * 16
    groups = [e for e in events if e.kind == "group"]
    assert len(groups) == 3 and len(groups[0].meta["kept"]) == 32


def test_same_seed_same_run_and_a_resume_at_a_round_boundary_matches():
    first = _toy_run("a", max_updates=10)
    again = _toy_run("b", max_updates=10)
    assert _comparable(first)[:-1] == _comparable(again)[:-1]  # done names its own folder
    cancelled = _toy_run("c", max_updates=10, cancel_at=5)  # the first round's last update
    assert cancelled[-1].status == "cancelled"
    resumed = _toy_run("c", max_updates=10, resume=True)  # redraws round 1's pool from the checkpointed rng
    assert _comparable(resumed)[:-1] == _comparable(first)[:-1]


def test_bad_input_is_one_line_and_stores_nothing():
    with pytest.raises(ConfigError, match="choices"):
        _toy_run("bad", {"choices": 0}, max_updates=1)
    policy = StepShiftToy(MIXTURE, default_steps=6)
    policy.mixture = None  # a model with no real data to mix in
    config = DiffusionTrainConfig(name="bad", scheme="curated_retraining", max_updates=1)
    with pytest.raises(ConfigError, match="no real data") as info:
        list(train_diffusion(config, TOY_PARAMS, policy=policy, reward=CoordinateReward(), runs_folder=training_home()))
    assert "\n" not in str(info.value)
    assert not training_home().exists() or not any(training_home().iterdir())


def test_cli_runs_curated_retraining_on_digits_and_bad_input_is_one_line(capsys):
    from app.cli import main

    argv = ["train", "--name", "c", "--policy", "embedded:digits", "--strategy", "curated_retraining", "--reward",
            "digit:3", "--set", "steps=2", "--set", "round_size=4", "--set", "choices=2", "--set", "batch_size=4",
            "--set", "round_updates=1", "--train-set", "eval_size=8", "--budget", "updates=2", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["updates"] == 2 and result["samples"] == 2 * 4 * 2 and result["backward_nfe"] == 2 * 4
    assert result["model_spec"].startswith("diffusers:")
    assert main(["train", "--policy", "embedded:digits", "--strategy", "curated_retraining", "--set", "real_fraction=2",
                 "--budget", "updates=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "real_fraction" in err and len(err.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_two_rounds_on_digits_raise_the_digit_reward_and_report_diversity():
    params = {"steps": 10, "round_size": 48, "choices": 4, "batch_size": 32, "round_updates": 10, "real_fraction": 0.25,
              "reward_weight": 5.0}
    config = DiffusionTrainConfig(name="digits", scheme="curated_retraining", reward="digit:3", learning_rate=3e-4,
                                  max_updates=20, eval_every=10, eval_size=64)
    events = list(train_diffusion(config, params, runs_folder=training_home()))
    rounds = [e.metrics for e in events if e.kind == "update" and "pool_reward_mean" in e.metrics]
    evals = [e.metrics for e in events if e.kind == "eval"]
    for m in rounds:
        print(f"round {m['round']}: pool digit:3 {m['pool_reward_mean']:.3f}, curated {m['curated_reward_mean']:.3f}, "
              f"pairwise distance {m['pool_pairwise_distance']:.3f}, held-out label entropy "
              f"{m['pool_label_entropy_bits']:.3f} bits, still a digit {m['pool_heldout_digit']:.2f}")
    print("eval digit:3 reward", [round(m["reward_mean"], 3) for m in evals],
          "held-out digit", [round(m["heldout_digit"], 2) for m in evals])
    assert len(rounds) == 2
    assert rounds[1]["pool_reward_mean"] > rounds[0]["pool_reward_mean"]
    assert evals[-1]["reward_mean"] > evals[0]["reward_mean"] + 0.05
    assert all(m["pool_pairwise_distance"] > 0 and 0 <= m["pool_label_entropy_bits"] <= math.log2(10) for m in rounds)
