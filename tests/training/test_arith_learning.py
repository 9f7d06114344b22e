"""A real RL run on the embedded arith policy (slow, still in CI): GRPO with the exact ``math`` reward
raises held-out T=1 accuracy on fresh problems by at least 3 points within 5,120 samples, and the
random-reward control, over the same budget, does not raise it and stays inside the model card's band.

The card (engines/assets/arith/MODEL_CARD.md): T=1 accuracy 35.9% on ``arith`` (medium), band for a
seeded run of 200 samples 23.4%-48.4%. The issue's goal, GRPO ending *above* that band, is not met
yet: single-sample readings of this recipe peaked near 45% (README, "RL on the arith policy").
The recipe is the loop's default (``TrainConfig``: Adam at 1e-5 with the normalisation gains at
1e-2, see ``HFPolicy.parameter_groups``) with 32 prompts x 8 samples per update (``samplescope
train``'s default); the held-out set is 200 ``arith-fresh`` problems (none in the training prompts
or a task set), four T=1 samples each (800 in all: a standard error near 1.7 points), drawn with
the loop's fixed evaluation generator.
"""

from __future__ import annotations

import pytest

from engines.models.arith import accuracy_band
from engines.training.loop import TrainConfig, train

pytestmark = pytest.mark.slow

CARD_T1 = 0.359  # MODEL_CARD.md, arith (medium), T=1 over 800 samples
LOW, HIGH = 0.234, 0.484
STRATEGY = {"prompts_per_batch": 32, "group_size": 8, "max_new_tokens": 96}
BUDGET = 5_120  # 20 updates
RISE = 0.03


def _final_accuracy(control: str, tmp_path) -> tuple[float, float]:
    config = TrainConfig.from_dict({
        "name": f"learn-{control}", "strategy": "grpo", "reward": "math", "reward_control": control,
        "samples": BUDGET, "eval_every": BUDGET, "eval_size": 200, "eval_samples": 4, "eval_greedy": False, "checkpoint_every": 1000, "seed": 0,
    })
    evals = [e.metrics for e in train(config, STRATEGY, run_dir=tmp_path / control) if e.kind == "eval"]
    assert evals[0]["samples"] == 0 and evals[-1]["samples"] == BUDGET
    return evals[0]["accuracy_t1"], evals[-1]["accuracy_t1"]


def test_the_band_is_the_model_cards():
    low, high = accuracy_band(CARD_T1, 200, n_ref=800)
    assert (round(low, 3), round(high, 3)) == (LOW, HIGH)


def test_grpo_with_the_exact_reward_raises_held_out_accuracy(tmp_path):
    start, end = _final_accuracy("exact", tmp_path)
    assert LOW <= start <= HIGH
    assert end >= start + RISE, f"held-out T=1 accuracy {start:.3f} -> {end:.3f} after {BUDGET} samples"


def test_the_random_reward_control_stays_in_the_band(tmp_path):
    start, end = _final_accuracy("random", tmp_path)
    assert LOW <= start <= HIGH
    assert end < start + RISE and LOW <= end <= HIGH, f"held-out T=1 accuracy {start:.3f} -> {end:.3f} after {BUDGET} samples of random reward"
