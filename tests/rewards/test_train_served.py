"""`reward train --base openai:URL`: a BT head on a vLLM embedding server's embeddings (``-m vllm``;
.ci/start-vllm starts the arith policy as an embedding model)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.vllm
def test_reward_train_on_served_embeddings_matches_the_in_process_base(db, capsys, vllm_embed_url):
    from app.cli import main
    from app.workflows.reward_training import run_training
    from app.workflows.store import rewards_home
    from engines.rewards import RewardEnv, build_reward
    from engines.task import Task
    from tests.rewards.simulated import fill

    fill(db, prompts=12, per_prompt=6)
    base = f"openai:{vllm_embed_url}"
    assert main(["reward", "train", "--db", str(db.engine.url), "--name", "served", "--base", base]) == 0
    assert "held-out" in capsys.readouterr().out.lower()
    card = json.loads((rewards_home() / "served" / "card.json").read_text())
    assert card["base"] == base
    local = run_training(db, "local", base="embedded:arith").card
    # the same features (within 1e-4) give the same held-out verdicts
    assert card["metrics"]["heldout"]["n"] == local["metrics"]["heldout"]["n"]
    assert card["metrics"]["heldout"]["rate"] == pytest.approx(local["metrics"]["heldout"]["rate"], abs=0.02)
    texts = ["000000", "123456", "999999"]
    served_scores = build_reward("learned:served", RewardEnv(rewards_folder=rewards_home())).score(Task(prompt="prompt 0"), texts)
    local_scores = build_reward("learned:local", RewardEnv(rewards_folder=rewards_home())).score(Task(prompt="prompt 0"), texts)
    assert served_scores == pytest.approx(local_scores, abs=1e-3)
