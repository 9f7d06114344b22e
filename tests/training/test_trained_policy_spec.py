"""A policy the lab trained is a model spec everywhere (``-m model``): best-of-N on it is one command
(``samplescope sample --model hf:FOLDER``), it scores its own tokens as the trained weights do, and it
is a policy for a rollout-only run (or further training) under the same spec."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.model


def test_best_of_n_on_the_rl_trained_policy_is_one_command(capsys):
    from app.cli import main
    from engines.models import load_model
    from engines.models.base import SamplingParams
    from engines.training.base import Rollout
    from engines.training.loop import TrainConfig
    from engines.training.policy import load_policy
    from engines.training.rollouts_only import rollouts_only

    argv = ["train", "--name", "for-bon", "--strategy", "grpo", "--set", "group_size=2", "--set", "prompts_per_batch=2",
            "--set", "max_new_tokens=32", "--train-set", "eval_every=0", "--train-set", "learning_rate=0.01",
            "--budget", "samples=4", "--json"]
    assert main(argv) == 0
    spec = json.loads(capsys.readouterr().out)["policy_spec"]
    assert spec.startswith("hf:")

    assert main(["sample", "--model", spec, "--task", "arith:0", "--sampler", "best_of_n", "--n", "4",
                 "--set", "max_new_tokens=48", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["candidates"]) == 4 and result["picks"]

    # the spec's model is the trained weights, not the embedded ones: the same tokens score as under the trained policy
    trained, untouched = load_policy(spec), load_policy("embedded:arith")
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), untouched.state_dict().values(), strict=True))
    model = load_model(spec)
    prefix = model.encode("Q: 3+4*5\n")
    (gens,) = model.sample([prefix], SamplingParams(max_new_tokens=16), n=2, rng=torch.Generator().manual_seed(0))
    rollouts = [Rollout(prompt_ids=tuple(prefix), completion_ids=tuple(g.token_ids), logprobs=tuple(g.logprobs), text=g.text)
                for g in gens]
    logps, _, _ = trained.token_logprobs(rollouts)
    for i, g in enumerate(gens):
        assert logps[i, : len(g.token_ids)].detach().tolist() == pytest.approx(list(g.logprobs), abs=1e-4)

    events = list(rollouts_only(TrainConfig(policy=spec, strategy="reinforce_rej", samples=4),
                                {"group_size": 2, "prompts_per_batch": 2, "max_new_tokens": 24}))
    assert events[-1].metrics["policy"] == spec and events[-1].metrics["samples"] == 4
