"""A head on the embedded SmolLM2's embeddings learns a simulated annotator's taste (marked ``model``)."""

from __future__ import annotations

import math
import random

import pytest

from app.workflows.reward_training import run_training
from app.workflows.store import rewards_home
from engines.rewards import RewardEnv, build_reward
from engines.rewards.bt_fit import FitConfig
from engines.task import Task
from storage import add_vote, make_comparisons
from tests.storage.storage_helpers import store_run

GOOD = ["What a lovely, wonderful day.", "I am so happy and grateful.", "This is great news, thank you!",
        "The food was delicious and the staff were kind.", "A beautiful, joyful song."]
BAD = ["This is awful and I hate it.", "What a terrible, miserable day.", "The food was disgusting and cold.",
       "I am angry and disappointed.", "A horrible, painful mess."]


@pytest.mark.model
def test_a_head_on_smollm2_learns_which_replies_are_kind(db):
    rng = random.Random(0)
    for k in range(12):
        texts = rng.sample(GOOD, 3) + rng.sample(BAD, 3)
        run_id = store_run(db, texts, [0.0] * 6, prompt=f"Say something about day {k}.", seed=k)
        for cid in db.write(lambda s, r=run_id, k=k: make_comparisons(s, r, "all_pairs", max_pairs=9, seed=k)):
            from storage.votes import present

            pres = db.read(lambda s, c=cid: present(s, c))
            a, b = (pres.left, pres.right) if pres.left_side == "a" else (pres.right, pres.left)
            diff = (a.text in GOOD) - (b.text in GOOD)
            outcome = "a" if rng.random() < 1 / (1 + math.exp(-3 * diff)) else "b"
            db.write(lambda s, c=cid, o=outcome: add_vote(s, comparison_id=c, annotator="sim", outcome=o, idempotency_key=f"m{c}"))
    card = run_training(db, "kind", config=FitConfig(curve=(1.0,))).card
    assert card["base"] == "embedded:smollm2" and card["head"]["input_dim"] == 576
    assert card["metrics"]["heldout"]["low"] > 0.6, card["metrics"]["heldout"]
    reward = build_reward("learned:kind", RewardEnv(rewards_folder=rewards_home()))
    good, bad = reward.score(Task(prompt="Say something about today."), ["Such a happy, lovely morning.", "A miserable, awful morning."])
    assert good > bad
