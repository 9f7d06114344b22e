"""A simulated annotator: votes follow a hidden reward through logistic noise.

P(annotator prefers a) = sigmoid((r(a) - r(b)) / temperature); its ceiling,
the best accuracy any reward can reach on its votes, is the mean of
max(p, 1 - p) over the pairs it voted on.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from engines.rewards.bt_fit import PairData
from storage import Database, add_vote, make_comparisons
from tests.storage.storage_helpers import store_run

WEIGHTS = {str(d): w for d, w in zip("0123456789", (1.0, -0.8, 0.6, -0.4, 0.2, 0.0, -0.2, 0.4, -0.6, 0.8), strict=True)}


def hidden_reward(text: str) -> float:
    return sum(WEIGHTS.get(c, 0.0) for c in text)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- the same annotator on feature tensors (no database): digit strings, their digit counts as features


def counts(text: str) -> torch.Tensor:
    """The toy:digits featuriser: how often each digit occurs."""
    v = torch.zeros(10)
    for c in text:
        v[int(c)] += 1
    return v


def digits(rng: random.Random, n: int = 6) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def human_pairs(rng: random.Random, n: int, temperature: float = 0.5) -> PairData:
    xa, xb, y = [], [], []
    for _ in range(n):
        a, b = digits(rng), digits(rng)
        p = sigmoid((hidden_reward(a) - hidden_reward(b)) / temperature)
        xa.append(counts(a))
        xb.append(counts(b))
        y.append(1.0 if rng.random() < p else 0.0)
    return PairData(torch.stack(xa), torch.stack(xb), torch.tensor(y), np.array(["human"] * n, dtype=object))


def heldout_accuracy(head, rng: random.Random, n: int = 600) -> float:
    pairs = [(a, b) for a, b in ((digits(rng), digits(rng)) for _ in range(n)) if hidden_reward(a) != hidden_reward(b)]
    with torch.no_grad():
        d = head(torch.stack([counts(a) for a, _ in pairs])) - head(torch.stack([counts(b) for _, b in pairs]))
    truth = torch.tensor([hidden_reward(a) > hidden_reward(b) for a, b in pairs])
    return float(((d > 0) == truth).float().mean())



def fill(
    db: Database,
    *,
    prompts: int = 30,
    per_prompt: int = 10,
    candidates: int = 8,
    temperature: float = 0.5,
    seed: int = 0,
    random_votes: bool = False,
    annotator: str = "sim",
    ties: float = 0.0,
    crowd: tuple[tuple[str, str], ...] = (),
) -> float:
    """Store runs and ``prompts * per_prompt`` votes; returns the annotator's ceiling.

    ``crowd``: more annotators voting on the same comparisons, as (name, how) with how
    ``follow`` (the same hidden reward, independent noise) or ``flip`` (its opposite).
    """
    rng = random.Random(seed)
    total = 0.0
    count = 0
    for k in range(prompts):
        texts = ["".join(rng.choice("0123456789") for _ in range(6)) for _ in range(candidates)]
        run_id = store_run(db, texts, [float(len(set(t))) for t in texts], prompt=f"prompt {k}", seed=k, reward="distinct")
        ids = db.write(lambda s, r=run_id: make_comparisons(s, r, "all_pairs", max_pairs=per_prompt, seed=seed))
        for cid in ids:
            pres = db.read(lambda s, c=cid: __import__("storage").votes.present(s, c))
            a, b = (pres.left, pres.right) if pres.left_side == "a" else (pres.right, pres.left)
            p = sigmoid((hidden_reward(a.text) - hidden_reward(b.text)) / temperature)
            total += max(p, 1 - p)
            count += 1
            u = rng.random()
            if random_votes:
                outcome = "a" if u < 0.5 else "b"
            elif rng.random() < ties:
                outcome = "tie"
            else:
                outcome = "a" if u < p else "b"
            votes = [(annotator, outcome)]
            for name, how in crowd:
                follows = rng.random() < p
                votes.append((name, "a" if follows == (how == "follow") else "b"))
            for name, o in votes:
                db.write(
                    lambda s, c=cid, o=o, name=name: add_vote(
                        s, comparison_id=c, annotator=name, outcome=o, idempotency_key=f"{name}-{seed}-{c}"
                    )
                )
    return total / count
