"""Steer or train? (engines.steer_or_train, ``samplescope steer-or-train``, ``report steer:NAME``) at tiny settings.

One DPOK update on the digits DDPM (2 samples, 4 denoising steps), best-of-N steering at sizes 1 and 2
and plain sampling from the fine-tuned model, 2 images per point: compute is counted alike (a fine-tuned
model's rows carry exactly its training NFE, backward NFE and seconds over the amortisation count; a
steering row only its own), every point has its interval and held-out shares, the report draws it, and
bad input is one line that runs nothing.
"""

from __future__ import annotations

import json

import pytest
import torch

from app.cli import main
from engines.errors import ConfigError
from engines.samplers import build_sampler
from engines.steer_or_train import SteerOrTrainPlan, finetuned_params, train_schemes
from engines.task import Task
from engines.trace import collect
from engines.training.diffusion import build_scheme
from engines.training.diffusion.loop import evaluate

pytestmark = pytest.mark.model

TINY = ["--samplers", "best_of_n", "--sizes", "1,2", "--schemes", "dpok", "--scheme-set", "dpok.batch_size=2",
        "--train-samples", "2", "--finetuned-sizes", "1", "--amortize", "4", "--prompts", "2", "--steps", "4"]


@pytest.mark.slow  # about 30 s on the shared, loaded 2-core machine: one training update, 6 sampled cells
def test_steer_or_train_counts_compute_alike_and_reports(tmp_path, capsys):
    assert main(["steer-or-train", "--name", "tiny", *TINY, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    trained = result["training"]["dpok"]
    assert trained["updates"] == 1 and trained["samples"] == 2 and trained["model_spec"].startswith("diffusers:")
    assert trained["reward_calls"] == 2  # each training sample scored once
    steering = [c for c in result["cells"] if c["arm"] == "best_of_n"]
    tuned = [c for c in result["cells"] if c["arm"] == "dpok + best_of_n"]
    assert len(steering) == 4 and len(tuned) == 2  # 2 sizes x 2 images; 1 size x 2 images
    for cell in steering:
        assert cell["nfe"] == cell["sampling_nfe"] == 4 * cell["level"] and cell["backward_nfe"] == 0
    for cell in tuned:
        assert cell["model"] == trained["model_spec"]
        assert cell["nfe"] == pytest.approx(cell["sampling_nfe"] + trained["nfe"] / 4)
        assert cell["backward_nfe"] == pytest.approx(trained["backward_nfe"] / 4) and trained["backward_nfe"] > 0
        assert cell["reward_calls"] == pytest.approx(cell["level"] + trained["reward_calls"] / 4)
        assert cell["wall_seconds"] == pytest.approx(cell["sampling_seconds"] + trained["seconds"] / 4)
    for point in result["points"]:
        assert point["prompts"] == 2 and point["ci_low"] <= point["quality"] <= point["ci_high"]
        assert 0 <= point["heldout_digit"] <= 1 and point["heldout_target_low"] <= point["heldout_target"]

    out = tmp_path / "steer.html"
    assert main(["report", "steer:tiny", "--out", str(out)]) == 0
    page = out.read_text()
    assert "Quality against network evaluations per image" in page and "dpok + best_of_n" in page

    assert main(["steer-or-train", "--name", "tiny", *TINY]) == 2  # the name is taken: nothing overwritten
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--samplers", "beam_search"], "does not steer an image model"),
    (["--schemes", "nope"], "nope"),
    (["--scheme-set", "draft.k=2"], "SCHEME.KEY=VALUE for a scheme in --schemes"),
    (["--scheme-set", "dpok.kl_coef=lots"], "lots"),
    (["--amortize", "0"], "amortize_images must be at least 1"),
    (["--schemes", "curated_retraining", "--train-samples", "255"], "round_size·choices = 256 samples before its first"),
    (["--schemes", "curated_retraining", "--scheme-set", "curated_retraining.round_size=32",
      "--scheme-set", "curated_retraining.choices=8", "--train-samples", "200"], "round_size·choices = 256"),
    (["--sizes", "1,two"], "--sizes takes whole numbers"),
    (["--name", "../x"], "must be letters"),
    (["--evaluate", "nope"], "unknown reward 'nope'"),  # refused before any training
    (["--reward", "1*digit:3+0.5*nope"], "unknown reward 'nope'"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert main(["steer-or-train", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def best_of_n_rewards(params, model, reward, n: int, seed: int) -> list[float]:
    trace = collect(build_sampler("best_of_n", {**params, "n": n, "batch_size": n}).run(
        Task(prompt=""), model, reward, rng=torch.Generator().manual_seed(seed)))
    return [e.value for e in trace.events if e.kind == "score"]


def test_a_finetuned_arm_samples_the_chain_its_scheme_trained_and_evaluated_on(toy_model, coordinate_reward):
    """single_sde trains one SDE step and ODE steps elsewhere: the fine-tuned model's best_of_n arm gets
    that per-step η and draws, for a seed, exactly the images the training loop's evaluation draws;
    the plan's plain steps (η = 1 on every step, the old arm) draw other images."""
    plan = SteerOrTrainPlan(samplers=(), schemes=("single_sde",), steps=8)
    params = finetuned_params(plan, "single_sde", toy_model.schedule(8))
    assert params == {"steps": 8, "eta_steps": "1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0"}
    scheme = build_scheme("single_sde", plan.scheme_settings("single_sde"))
    n, seed = 16, 5
    evaluated = evaluate(toy_model, scheme, coordinate_reward, n, seed)["reward_mean"]
    assert sum(best_of_n_rewards(params, toy_model, coordinate_reward, n, seed)) / n == pytest.approx(evaluated, abs=1e-12)
    old = best_of_n_rewards(plan.sampler_params(), toy_model, coordinate_reward, n, seed)
    assert sum(old) / n != pytest.approx(evaluated, abs=1e-3)
    # a scheme's own steps win over the plan's; a constant η (no noise floor) stays one number
    plan = SteerOrTrainPlan(samplers=(), schemes=("dpok",), steps=8, scheme_params={"dpok": {"steps": 4, "noise_floor": 0.0}})
    assert finetuned_params(plan, "dpok", toy_model.schedule(4)) == {"steps": 4, "eta": 1.0}


def test_best_of_n_eta_steps_are_checked_in_one_line(toy_model, coordinate_reward):
    with pytest.raises(ConfigError, match="every η in eta_steps must be between 0 and 1"):
        build_sampler("best_of_n", {"eta_steps": "1,2"})
    with pytest.raises(ConfigError, match="eta_steps has 2 values for a 8-step chain"):
        build_sampler("best_of_n", {"steps": 8, "eta_steps": "1,0"}).run(
            Task(prompt=""), toy_model, coordinate_reward, rng=torch.Generator())


def test_a_scheme_that_made_no_update_is_not_reported_as_trained(tmp_path):
    """dpok's leave-one-out baseline needs 2 samples an update: with 1 training sample the run ends
    with 0 updates, and its saved model (the base model) must not become a fine-tuned arm."""
    plan = SteerOrTrainPlan(name="none", samplers=(), schemes=("dpok",), train_samples=1, prompts=2, steps=4)
    with pytest.raises(ConfigError, match="dpok made no update within train_samples=1"):
        list(train_schemes(plan, tmp_path))
    # that failed run's folder stays; the same name again is one line naming it, before any training
    with pytest.raises(ConfigError, match="none-dpok is left from an earlier steer-or-train named 'none'"):
        list(train_schemes(plan, tmp_path))
    # one curated round fits: the plan is accepted
    SteerOrTrainPlan(samplers=(), schemes=("curated_retraining",), train_samples=64,
                     scheme_params={"curated_retraining": {"round_size": 16, "choices": 4}})
