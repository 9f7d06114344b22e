"""Two pair rules beside the reward-distribution ones: temporal pairs and pass-rate pairs.

Temporal self-rewarding pairs
    Wang et al. 2025, "Temporal Self-Rewarding Language Models: Decoupling Chosen-Rejected via
    Past-Future" (arXiv:2508.06026). In iterative self-rewarding DPO the chosen and rejected
    answers of one model grow alike and the gradient vanishes; they keep them apart in time:
    *anchored rejection* takes the rejected answer from an earlier (past) model, *future-guided
    chosen* takes the chosen answer from a later (future) model. :func:`temporal_pair`: of N
    samples from the earlier model and N from the later one, all scored by one reward, the
    rejected is the earlier model's lowest and the chosen the later model's highest; the pair is
    made only when the chosen scores strictly higher. The two models are any two model specs
    (e.g. ``embedded:arith`` and an RL-trained arith policy).

Pass-rate pairs (AceCoder)
    Zeng et al. 2025, "AceCoder: Acing Coder RL via Automated Test-Case Synthesis"
    (arXiv:2502.01718). Sample programs per question, run each against the question's test
    cases, and take its pass rate s; pairs (i, j) with s_i >= 0.8 (the chosen passes most
    tests), s_i - s_j >= 0.4 (a clear gap) and s_j > 0 (the rejected is a real attempt, not a
    broken one) train a Bradley-Terry reward model. :func:`pass_rate_pairs` makes every such
    pair, thresholds adjustable. On the reasoning lab the tests are the exact checks
    (:func:`arith_pass_rate`): each of the problem's k reductions done legally and right, in
    order (``engines.tasks.arith.check_steps``), and the final answer: k + 1 checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from engines.pairs import IndexPair, PairError, check_rewards


def temporal_pair(earlier_rewards: Sequence[float], later_rewards: Sequence[float]) -> IndexPair | None:
    """``chosen`` indexes the later model's candidates, ``rejected`` the earlier model's; None if no gain."""
    early = check_rewards(earlier_rewards, "the earlier model's rewards", minimum=1)
    late = check_rewards(later_rewards, "the later model's rewards", minimum=1)
    if len(early) + len(late) < 2:
        raise PairError("temporal pairs need at least two candidates in all")
    rejected = min(range(len(early)), key=lambda i: (early[i], i))
    chosen = max(range(len(late)), key=lambda i: (late[i], -i))
    if late[chosen] <= early[rejected]:
        return None
    return IndexPair(chosen, rejected, "temporal", {"chosen_from": "later", "rejected_from": "earlier"})


def pass_rate_pairs(pass_rates: Sequence[float], *, min_chosen: float = 0.8, min_gap: float = 0.4,
                    min_rejected: float = 0.0, max_pairs: int | None = None) -> list[IndexPair]:
    """Every (i, j) with s_i >= min_chosen, s_i - s_j >= min_gap and s_j > min_rejected, best gaps first."""
    rates = check_rewards(pass_rates, "pass rates")
    if any(not 0.0 <= s <= 1.0 for s in rates):
        raise PairError("pass rates must lie in [0, 1]")
    for name, value in (("min_chosen", min_chosen), ("min_gap", min_gap), ("min_rejected", min_rejected)):
        if not 0.0 <= value <= 1.0:
            raise PairError(f"{name} must lie in [0, 1], got {value!r}")
    eps = 1e-12  # pass rates are ratios of small counts: compare them without float noise
    pairs = [
        IndexPair(i, j, "acecoder", {"pass_rates": (rates[i], rates[j])})
        for i in range(len(rates)) for j in range(len(rates))
        if rates[i] >= min_chosen - eps and rates[i] - rates[j] >= min_gap - eps and rates[j] > min_rejected + eps
    ]
    pairs.sort(key=lambda p: (-(rates[p.chosen] - rates[p.rejected]), p.chosen, p.rejected))
    return pairs if max_pairs is None else pairs[:max_pairs]


def arith_checks(prompt: str, completion: str) -> list[bool]:
    """The exact checks of an arith completion: each of the k reductions in order, then the answer."""
    from engines.tasks.arith import check_steps, is_correct, parse_expression, split_steps

    try:
        problem = parse_expression(prompt)
    except ValueError as exc:
        raise PairError(f"pass-rate pairs on arith need an arithmetic prompt like 'Q: 3+4*5': {exc}") from None
    k = len(problem.ops)
    lines = split_steps(completion)
    valid = check_steps(problem, lines[:k])
    steps = [bool(v) for v in valid] + [False] * (k - len(valid))
    return [*steps, is_correct(completion, problem.answer)]


def arith_pass_rate(prompt: str, completion: str) -> float:
    checks = arith_checks(prompt, completion)
    return sum(checks) / len(checks)
