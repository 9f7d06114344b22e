"""Control rewards for audits: a reward that knows nothing, to calibrate what chance looks like.

- ``random`` (``random:SEED``): a uniform value in [0, 1) from a hash of (seed, prompt,
  candidate). It is deterministic (the same candidate always gets the same score, as a real
  reward model would give it) but carries no information, so on a one-vs-many test (one right
  answer against k wrong ones) it picks the right one with probability 1/(k+1), and a master
  key outscores a typical right answer half the time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from engines.errors import ConfigError
from engines.rewards import REWARDS, RewardEnv, RewardFactory
from engines.rewards.base import Reward
from engines.task import Task


class RandomReward(Reward):
    """A seeded, content-blind uniform score per (prompt, candidate)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.name = f"random:{seed}"

    def score(self, task: Task, candidates: Sequence[str], *, usage=None) -> list[float]:
        out = []
        for text in candidates:
            digest = hashlib.blake2b(f"{self.seed}\0{task.prompt}\0{text}".encode(), digest_size=8).digest()
            out.append(int.from_bytes(digest, "big") / 2**64)
        return out


def _random(arg: str | None, env: RewardEnv) -> RandomReward:
    try:
        return RandomReward(int(arg or 0))
    except ValueError:
        raise ConfigError(f"random takes an integer seed (random:3), got {arg!r}") from None


REWARDS.add(
    "random",
    RewardFactory(
        name="random",
        kind="outcome",
        modality="text",
        help="control: a content-blind uniform score per candidate (random:SEED); chance level for audits",
        build=_random,
        arg="SEED",
    ),
)
