"""Rollout-only runs from served policies: real vLLM (``-m vllm``, embedded:arith's policy) and real
llama.cpp (``-m llamacpp``, the float32 twin of the SmolLM2 GGUF) servers, as .ci/with-services starts them.

Each run yields the groups a strategy keeps and drops from the server's rollouts, at their sample and
token cost, and no update; the rollouts' token log-probs come from the server and equal the same
weights' log-probs in process (tolerances as in tests/engines/test_served.py and test_llamacpp.py).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from app.workflows.store import training_home
from engines.training.loop import TrainConfig
from engines.training.rollout_policy import TextModelPolicy, load_rollout_policy
from engines.training.rollouts_only import rollouts_only

PARAMS = {"prompts_per_batch": 2, "group_size": 4, "max_new_tokens": 32}


def _check_run(events, budget: int) -> list:
    kinds = [e.kind for e in events]
    assert "update" not in kinds and "eval" not in kinds and kinds[-1] == "done"
    done = events[-1]
    assert done.status == "budget" and done.metrics["samples"] == budget
    groups = [e for e in events if e.kind == "group"]
    assert sum(len(g.rewards) for g in groups) == budget == done.metrics["samples_drawn"]
    assert done.metrics["tokens"] == sum(e.tokens for e in events if e.kind == "node" and e.parent is not None)
    assert not training_home().exists() or not any(training_home().iterdir())
    return groups


@pytest.mark.vllm
def test_rollouts_only_from_vllm_match_the_policy_in_process(vllm_url):
    from engines.training.policy import load_policy

    policy = load_rollout_policy(f"openai:{vllm_url}")
    assert isinstance(policy, TextModelPolicy) and not policy.trainable
    config = TrainConfig(policy=f"openai:{vllm_url}", strategy="reinforce_rej", samples=16, seed=3)
    events = list(rollouts_only(config, PARAMS, policy=policy))
    groups = _check_run(events, 16)
    assert all(g.kept == (min(g.rewards) != max(g.rewards)) for g in groups)

    local = load_policy("embedded:arith")
    rollouts = policy.rollout(["Q: 3+4*5\n"] * 4, temperature=1.0, max_new_tokens=24, rng=torch.Generator().manual_seed(0))
    assert all(r.prompt_ids == tuple(local.encode("Q: 3+4*5\n")) for r in rollouts)
    logps, _, _ = local.token_logprobs(rollouts)
    for i, r in enumerate(rollouts):
        assert r.tokens == len(r.logprobs) > 0 and all(math.isfinite(x) for x in r.logprobs)
        assert logps[i, : r.tokens].detach().tolist() == pytest.approx(list(r.logprobs), abs=1e-4)


@pytest.mark.vllm
def test_cli_rollouts_only_on_a_vllm_policy(vllm_url, capsys):
    from app.cli import main

    argv = ["train", "--policy", f"openai:{vllm_url}", "--rollouts-only", "--strategy", "dynamic_sampling",
            "--set", "group_size=4", "--set", "prompts_per_batch=2", "--set", "max_new_tokens=32",
            "--budget", "samples=24", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "rollouts_only" and result["samples"] == 24 and result["samples_drawn"] == 24
    assert main(["train", "--policy", f"openai:{vllm_url}", "--budget", "samples=8"]) == 2
    assert "--rollouts-only" in capsys.readouterr().err


@pytest.mark.llamacpp
@pytest.mark.model
def test_rollouts_only_from_llamacpp_match_the_gguf_twin_in_process(llamacpp_url, smollm2):
    policy = load_rollout_policy(f"openai:{llamacpp_url}")
    config = TrainConfig(policy=f"openai:{llamacpp_url}", strategy="grpo", samples=8, seed=1)
    events = list(rollouts_only(config, PARAMS, policy=policy))
    _check_run(events, 8)

    prompt = "Q: 12+7\n"
    rollouts = policy.rollout([prompt] * 3, temperature=1.0, max_new_tokens=12, rng=torch.Generator().manual_seed(0))
    prefix = smollm2.encode(prompt)
    assert all(r.prompt_ids == tuple(prefix) for r in rollouts)
    here = smollm2.score([prefix] * 3, [list(r.completion_ids) for r in rollouts])
    for r, base in zip(rollouts, here, strict=True):
        assert r.tokens == len(r.logprobs) > 0
        assert max(abs(x - y) for x, y in zip(base, r.logprobs, strict=True)) < 5e-4  # test_llamacpp's TOL
