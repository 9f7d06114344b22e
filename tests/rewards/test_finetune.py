"""``--kind finetune``: TRL's RewardTrainer on the stored pairs, with a tiny local model on CPU."""

from __future__ import annotations

import pytest

from app.cli import main
from app.workflows.reward_finetune import run_finetune
from app.workflows.store import rewards_home
from engines.errors import SamplescopeError
from engines.rewards import RewardEnv, build_reward
from engines.rewards.bt_fit import Progress
from engines.task import Task
from tests.rewards.simulated import fill


@pytest.mark.slow
def test_a_tiny_model_is_fine_tuned_stored_and_usable_as_learned(db, tiny_lm_dir):
    fill(db, prompts=10, per_prompt=6)
    from app.workflows.reward_finetune import finetune_reward

    items = list(finetune_reward(db, "ft", base=f"hf:{tiny_lm_dir}", epochs=3))
    losses = [p.loss for p in items if isinstance(p, Progress) and p.stage == "final"]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2  # the trainer's loss went down
    card = items[-1].card
    assert card["kind"] == "finetune" and card["trainer"] == "trl.RewardTrainer"
    assert card["metrics"]["heldout"]["n"] > 0 and card["votes"]["used"] == 60
    assert (rewards_home() / "ft" / "model" / "config.json").is_file()
    reward = build_reward("learned:ft", RewardEnv(rewards_folder=rewards_home()))
    values = reward.score(Task(prompt="prompt 0"), ["000000", "111111"])
    assert len(values) == 2 and all(isinstance(v, float) for v in values)


def test_finetune_bad_input_is_one_line(db, capsys, tiny_lm_dir):
    fill(db, prompts=2, per_prompt=3)
    url = str(db.engine.url)
    assert main(["reward", "train", "--db", url, "--kind", "finetune", "--name", "f", "--base", f"hf:{tiny_lm_dir}"]) == 2
    assert "too few votes" in capsys.readouterr().err
    fill(db, prompts=6, per_prompt=6, seed=4)
    assert main(["reward", "train", "--db", url, "--kind", "finetune", "--name", "f", "--base", "hf:/no/such"]) == 2
    assert "unknown base model" in capsys.readouterr().err
    assert not (rewards_home() / "f").exists()
    with pytest.raises(SamplescopeError, match="reward name"):
        run_finetune(db, "bad name", base=f"hf:{tiny_lm_dir}")
