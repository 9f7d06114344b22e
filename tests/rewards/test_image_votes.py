"""A reward learned from image votes (Pick-a-Pic style, on digits) steers every diffusion sampler."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from app.workflows.reward_training import run_training
from engines.models import load_model
from engines.models.diffusion import images_to_data_uris
from engines.rewards import build_reward
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import DoneEvent, MatchEvent, NodeEvent, ScoreEvent, SelectEvent, Trace, collect
from storage import add_vote, make_comparisons, save_run
from tests.diffusion.test_samplers import CASES


def _digit_images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    index = np.random.default_rng(seed).choice(len(data.images), size=n, replace=False)
    images = torch.tensor(data.images[index] / 16.0 * 2 - 1, dtype=torch.float32)[:, None]
    return images, data.target[index]


def _store_image_votes(db, prompts: int = 24, per_prompt: int = 8, seed: int = 0) -> None:
    """Image runs of 6 real digits each; the simulated annotator prefers larger digits (logistic noise)."""
    rng = random.Random(seed)
    images, labels = _digit_images(prompts * 6, seed)
    for k in range(prompts):
        block = slice(6 * k, 6 * k + 6)
        uris = images_to_data_uris(images[block])
        events = [NodeEvent(id="root", parent=None, depth=0)]
        events += [NodeEvent(id=f"n{i}", parent="root", depth=1, image=u, final=True) for i, u in enumerate(uris)]
        events += [ScoreEvent(node=f"n{i}", reward="ink", value=float(images[6 * k + i].mean())) for i in range(6)]
        events += [SelectEvent(nodes=["n0"]), DoneEvent(picks=["n0"], candidates=[f"n{i}" for i in range(6)], cost={})]
        run_id = db.write(lambda s, ev=events, j=k: save_run(
            s, trace=Trace(ev), task={"prompt": f"digit {j}"}, model="embedded:digits", reward="ink",
            sampler="best_of_n", config={}, seed=j))
        ids = db.write(lambda s, r=run_id: make_comparisons(s, r, "all_pairs", max_pairs=per_prompt, seed=seed))
        stored_labels = {u: int(lab) for u, lab in zip(uris, labels[block], strict=True)}
        for cid in ids:
            from storage.votes import present

            pres = db.read(lambda s, c=cid: present(s, c))
            a, b = (pres.left, pres.right) if pres.left_side == "a" else (pres.right, pres.left)
            ra, rb = stored_labels[a.image], stored_labels[b.image]
            p = 1 / (1 + math.exp(-(ra - rb) / 1.0))
            outcome = "a" if rng.random() < p else "b"
            db.write(lambda s, c=cid, o=outcome: add_vote(s, comparison_id=c, annotator="sim", outcome=o, idempotency_key=f"i{c}"))
    assert MatchEvent  # (imported for symmetry with the text helpers)


@pytest.fixture(scope="module")
def learned_digits(tmp_path_factory):
    import os

    from storage import Database

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("SAMPLESCOPE_HOME")
    os.environ["SAMPLESCOPE_HOME"] = str(home)
    db = Database.open(f"sqlite:///{home / 'votes.db'}")
    try:
        _store_image_votes(db)
        trained = run_training(db, "larger")
    finally:
        db.close()
        if old is None:
            os.environ.pop("SAMPLESCOPE_HOME", None)
        else:
            os.environ["SAMPLESCOPE_HOME"] = old
    return trained


def test_image_votes_train_a_head_on_the_digit_classifier_features(learned_digits):
    card = learned_digits.card
    assert card["modality"] == "image" and card["base"] == "embedded:digits" and card["featuriser"] == "digits"
    assert card["head"]["input_dim"] == 128
    assert card["metrics"]["heldout"]["low"] > 0.65, card["metrics"]["heldout"]
    reward = build_reward(f"learned:{learned_digits.folder}")
    images, labels = _digit_images(60, seed=7)
    scores = np.array(reward.score(Task(prompt=""), images))
    assert np.corrcoef(scores, labels)[0, 1] > 0.7  # it learned "larger digits win"
    assert reward.differentiable


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_learned_image_reward_drives_every_diffusion_sampler(case, learned_digits):
    torch.set_num_threads(1)
    name, params = CASES[case]
    reward = build_reward(f"learned:{learned_digits.folder}")
    model = load_model("embedded:digits")
    run = lambda seed: collect(build_sampler(name, params).run(  # noqa: E731
        Task(prompt=""), model, reward, rng=torch.Generator().manual_seed(seed)))
    first = run(0)
    assert first.done.status == "ok" and first.selected
    assert [e for e in first.events if e.kind != "cost"][-1].kind == "done"
    assert first.done.cost["reward_calls"] > 0
    finals = [i for i, n in first.nodes.items() if n.final]
    assert all(reward.name in first.scores[i] for i in finals if first.scores.get(i))
    again = run(0)
    assert [e.kind for e in again.events] == [e.kind for e in first.events]


def test_image_votes_train_a_head_on_clip_features(db, tmp_path):
    from tests.diffusion.tiny_parts import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    _store_image_votes(db, prompts=8, per_prompt=6)
    trained = run_training(db, "clip-taste", base=f"clip:{clip}")
    assert trained.card["featuriser"] == "clip" and trained.card["modality"] == "image"
    reward = build_reward(f"learned:{trained.folder}")
    images, _ = _digit_images(4, seed=3)
    images.requires_grad_(True)
    values = reward.score_tensor(Task(prompt=""), images)
    values.sum().backward()  # differentiable through CLIP: gradient samplers can use it
    assert images.grad is not None and images.grad.abs().sum() > 0
