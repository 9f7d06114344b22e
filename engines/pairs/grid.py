"""The sweet-spot grid: seven representative points of a prompt's reward distribution, 21 pairs.

Xiao et al. 2025, "Finding the Sweet Spot: Preference Data Construction for Scaling Preference
Optimization" (ACL 2025, arXiv:2502.16825; code github.com/XYaoooo/DPO_Pair). For each prompt
they sample N responses, score them with a reward model, treat the N rewards as roughly normal
with mean mu and standard deviation sigma, and take seven representative points:

    min, mu - 2 sigma, mu - sigma, mu, mu + sigma, mu + 2 sigma, max

Each point is the response whose reward is nearest that position (min and max are the extreme
responses themselves). Every two points give one pair, the higher point chosen: C(7, 2) = 21
pairs. Their finding: chosen = max with rejected = mu - 2 sigma beats the conventional max/min,
and keeps improving as N grows (``preference_pairs``' ``sweet_spot`` is that one cell).

mu and sigma are the mean and population standard deviation of the N rewards (the repository
computes them with numpy's default, ddof = 0). When two points land on the same response (small
N, ties) their pair carries no preference and is not made; such a cell is reported as empty.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence

from engines.pairs import IndexPair, PairError, check_rewards

#: the seven points, lowest first; ``k`` is the offset in sigmas (None: the extreme itself)
POINTS: tuple[tuple[str, float | None], ...] = (
    ("min", None), ("mu-2sigma", -2.0), ("mu-sigma", -1.0), ("mu", 0.0),
    ("mu+sigma", 1.0), ("mu+2sigma", 2.0), ("max", None),
)
POINT_NAMES = tuple(name for name, _ in POINTS)
#: the 21 (chosen point, rejected point) cells, the higher point chosen
CELLS = tuple((hi, lo) for lo, hi in itertools.combinations(POINT_NAMES, 2))
#: the paper's recommended cell
SWEET_SPOT = ("max", "mu-2sigma")


def point_values(rewards: Sequence[float]) -> dict[str, float]:
    """Where each of the seven points sits on the reward axis."""
    values = check_rewards(rewards)
    mu, sigma = statistics.fmean(values), statistics.pstdev(values)
    return {name: (min(values) if name == "min" else max(values)) if k is None else mu + k * sigma for name, k in POINTS}


def point_indices(rewards: Sequence[float]) -> dict[str, int]:
    """The candidate at each point: the nearest reward (ties: the lower reward, then the earlier)."""
    values = check_rewards(rewards)
    targets = point_values(values)
    out = {}
    for name, target in targets.items():
        out[name] = min(range(len(values)), key=lambda i: (abs(values[i] - target), values[i], i))
    return out


def parse_cell(text: str) -> tuple[str, str]:
    """``"max/mu-2sigma"`` -> ("max", "mu-2sigma"); the chosen point must lie above the rejected."""
    chosen, sep, rejected = str(text).partition("/")
    if not sep or chosen not in POINT_NAMES or rejected not in POINT_NAMES:
        raise PairError(f"a grid cell is CHOSEN/REJECTED with points from {', '.join(POINT_NAMES)}; got {text!r}")
    if POINT_NAMES.index(chosen) <= POINT_NAMES.index(rejected):
        raise PairError(f"the chosen point must lie above the rejected one; got {text!r}")
    return chosen, rejected


def grid_pair(rewards: Sequence[float], chosen: str = SWEET_SPOT[0], rejected: str = SWEET_SPOT[1]) -> IndexPair | None:
    """The pair of one grid cell, or None when both points are one response or rewards are equal."""
    parse_cell(f"{chosen}/{rejected}")
    values = check_rewards(rewards)
    at = point_indices(values)
    i, j = at[chosen], at[rejected]
    if i == j or values[i] <= values[j]:
        return None
    return IndexPair(i, j, f"grid:{chosen}/{rejected}", {"chosen_point": chosen, "rejected_point": rejected})


def grid_pairs(rewards: Sequence[float]) -> dict[tuple[str, str], IndexPair | None]:
    """All 21 cells: (chosen point, rejected point) -> its pair (None where the cell is empty)."""
    return {cell: grid_pair(rewards, *cell) for cell in CELLS}
