"""Issue 11, flat text samplers: the particle maths, RSO's Algorithm 1 and best-of-N, tested
against exact laws on an enumerable toy model, each with a deliberately wrong variant that
must fail the same check (so the check has power)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from engines.models import load_model
from engines.samplers import build_sampler
from engines.samplers.particles import effective_sample_size, log_mean_exp, normalised_weights, resample
from engines.samplers.rejection import Rejection
from engines.trace import Budget, collect
from tests.engines.test_exactness import ALPHA, TASK, chi_square_p, pick_counts, tilted
from tests.engines.toys import CountA

# ---------------------------------------------------------------------------
# particles.py, tested once for SMC and FK steering


def test_ess_and_log_mean_exp():
    assert effective_sample_size([0.0] * 8) == pytest.approx(8)
    assert effective_sample_size([0.0, -math.inf, -math.inf]) == pytest.approx(1)
    assert effective_sample_size(torch.log(torch.tensor([0.5, 0.25, 0.25]))) == pytest.approx(1 / 0.375)
    assert log_mean_exp([math.log(1.0), math.log(3.0)]) == pytest.approx(math.log(2.0))
    assert log_mean_exp([1000.0, 1000.0]) == pytest.approx(1000.0)  # stable
    with pytest.raises(ValueError):
        effective_sample_size([-math.inf, -math.inf])


@pytest.mark.parametrize("method", ["systematic", "stratified"])
def test_low_variance_resampling_gives_each_particle_floor_or_ceil_of_n_w(method):
    w = torch.tensor([0.05, 0.0, 0.45, 0.2, 0.0, 0.3])
    n = w.numel()
    for seed in range(50):
        counts = torch.bincount(resample(w.log(), method, torch.Generator().manual_seed(seed)), minlength=n)
        assert counts[1] == 0 and counts[4] == 0  # empty intervals are never chosen
        if method == "systematic":
            assert torch.all(counts >= torch.floor(n * w)) and torch.all(counts <= torch.ceil(n * w))


def test_zero_weight_particle_is_never_chosen_on_a_boundary(monkeypatch):
    """u exactly on a cumulative boundary picks the particle whose interval [C_{i-1}, C_i) holds it:
    systematic with U = 0 puts points at 0, 1/4, 1/2, 3/4 and 1/4 = C_0 = C_1 belongs to particle 2."""
    w = torch.tensor([0.25, 0.0, 0.25, 0.5])
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros_like(real_rand(*a, **k)))
    assert resample(w.log(), "systematic", torch.Generator()).tolist() == [0, 2, 3, 3]
    assert resample(w.log(), "stratified", torch.Generator()).tolist() == [0, 2, 3, 3]


def test_multinomial_resampling_follows_the_weights():
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    draws = torch.cat([resample(w.log(), "multinomial", torch.Generator().manual_seed(s)) for s in range(500)])
    counts = Counter(draws.tolist())
    assert chi_square_p(counts, dict(enumerate(w.tolist())), len(draws)) > ALPHA
    assert normalised_weights([0.0, math.log(3.0)]).tolist() == pytest.approx([0.25, 0.75])


def test_fk_steering_uses_the_shared_particle_helpers():
    from engines.samplers import fk_steering, particles

    assert fk_steering.effective_sample_size is particles.effective_sample_size
    assert fk_steering.log_mean_exp is particles.log_mean_exp
    assert fk_steering.resample_indices is particles.resample


# ---------------------------------------------------------------------------
# RSO (defect 2)


def algorithm_1_law(p: dict[str, float], r: dict[str, float], n: int, beta: float) -> dict[str, float]:
    """The exact law of the one sample RSO's Algorithm 1 accepts from a pool of n i.i.d. draws.

    The pool's first sweep uses M = the pool's maximum; candidate i is the output when
    candidates 1..i-1 are rejected and i accepted. For each value m of M, the event
    {all ≤ m, first i-1 rejected at m, X_i = x accepted at m} minus the same with all < m
    is {M = m, ...}, and each term factorises over the i.i.d. candidates.
    """
    law = dict.fromkeys(p, 0.0)
    for m in sorted(set(r.values())):
        acc = {x: math.exp((r[x] - m) / beta) for x in p}
        f_le = sum(p[x] for x in p if r[x] <= m)
        f_lt = sum(p[x] for x in p if r[x] < m)
        rej_le = sum(p[x] * (1 - acc[x]) for x in p if r[x] <= m)
        rej_lt = sum(p[x] * (1 - acc[x]) for x in p if r[x] < m)
        for x in p:
            for i in range(1, n + 1):
                term = (rej_le ** (i - 1) * f_le ** (n - i)) if r[x] <= m else 0.0
                term -= (rej_lt ** (i - 1) * f_lt ** (n - i)) if r[x] < m else 0.0
                law[x] += p[x] * acc[x] * term
    return law


class ArgmaxRSO(Rejection):
    """Deliberately wrong: the pool's best instead of Algorithm 1's random acceptance."""

    @staticmethod
    def subsample(rewards, accept, beta, rng):
        best = max(range(len(rewards)), key=lambda i: rewards[i])
        return [(best, 1.0, True)]


class UniformRedrawRSO(Rejection):
    """Deliberately wrong: the old pool mode (r_max fixed to the pool maximum, uniform redraws)."""

    @staticmethod
    def subsample(rewards, accept, beta, rng):
        r_max, remaining, out, count = max(rewards), list(range(len(rewards))), [], 0
        while count < accept and remaining and len(out) < 2000:  # capped: unbounded in the old code
            j = int(torch.randint(len(remaining), (1,), generator=rng))
            p = math.exp((rewards[remaining[j]] - r_max) / beta)
            ok = float(torch.rand((), generator=rng)) < p
            out.append((remaining[j], p, ok))
            if ok:
                count += 1
                remaining.pop(j)
        return out


def rso_picks(sampler, runs: int, seed: int) -> Counter:
    return pick_counts(sampler, load_model("toy:abc"), CountA(), runs, seed)


def test_rso_pool_mode_follows_the_law_of_algorithm_1():
    """Defect 2: the pick of RSO's Algorithm 1 (n = 6, β = 0.5) against its exact law.

    Before the fix the pool-mode test only checked that β → 0 picks the maximum, which the
    argmax variant (best-of-N) passes; it must fail this chi-square check. (The old uniform
    redraw has a law close to Algorithm 1's at m = 1; it is caught by the bound below.)"""
    model, reward, n, beta, runs = load_model("toy:abc"), CountA(), 6, 0.5, 1500
    p = model.distribution()
    r = dict(zip(p, reward.score(TASK, list(p)), strict=True))
    law = algorithm_1_law(p, r, n, beta)
    assert sum(law.values()) == pytest.approx(1.0)
    config = {"mode": "statistical", "beta": beta, "n": n, "accept": 1, "max_new_tokens": 8}
    picks = rso_picks(build_sampler("rejection", config), runs, seed=3)
    assert chi_square_p(picks, law, runs) > ALPHA
    bad = rso_picks(ArgmaxRSO(Rejection.Config.from_dict(config)), runs, seed=3)
    assert chi_square_p(bad, law, runs) < ALPHA


@pytest.mark.parametrize("variant", [None, UniformRedrawRSO])
def test_rso_pool_mode_is_bounded_and_accepts_exactly_m(variant):
    """Defect 2: accept=4, β=0.05, n=12 emitted over a million accept events before the fix
    (the old uniform redraw, kept here as the wrong variant, which must fail this bound).

    Algorithm 1 accepts the best remaining candidate in every sweep: at most m sweeps of n."""
    model, reward = load_model("toy:abc"), CountA()
    config = {"mode": "statistical", "beta": 0.05, "n": 12, "accept": 4, "max_new_tokens": 8}
    sampler = build_sampler("rejection", config) if variant is None else variant(Rejection.Config.from_dict(config))
    if variant is not None:
        with pytest.raises(AssertionError):
            check_bounded(sampler, model, reward)
        return
    check_bounded(sampler, model, reward)


def check_bounded(sampler, model, reward):
    for seed in range(5):
        trace = collect(sampler.run(TASK, model, reward, budget=Budget(wall_seconds=3), rng=torch.Generator().manual_seed(seed)))
        assert trace.done.status == "ok"
        assert len(trace.done.picks) == 4
        assert len(trace.accepts) <= 4 * 12
        accepted = [a for a in trace.accepts if a.accepted]
        assert len(accepted) == 4 and len({a.node for a in accepted}) == 4
        # each sweep's r_max is the best *remaining* reward: the first accepted has probability 1
        assert accepted[0].probability <= 1.0 and any(a.probability == 1.0 for a in accepted)


def test_rso_with_r_max_off_by_a_quarter_in_beta_fails_the_same_check():
    """Exact RSO (r_max given) reaches q·exp(r/β); β·1.25 must be rejected by the same test."""
    model, reward, beta = load_model("toy:abc"), CountA(), 2.0
    target = tilted(model, reward, beta)
    results = {}
    for scale in (1.0, 1.25):
        sampler = build_sampler("rejection", {"mode": "statistical", "beta": beta * scale, "r_max": 4.4, "n": 4000,
                                              "accept": 4000, "batch_size": 256, "max_new_tokens": 8})
        accepted = Counter()
        for seed in range(3):
            trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(7 + seed)))
            accepted.update(trace.full_text(i) for i in trace.done.picks)
        assert sum(accepted.values()) > 1500
        results[scale] = chi_square_p(accepted, target, sum(accepted.values()))
    assert results[1.0] > ALPHA
    assert results[1.25] < ALPHA


def test_rso_law_is_relative_to_the_tempered_proposal():
    """At temperature 0.7 exact RSO samples q·exp(r/β), q the tempered model — not p·exp(r/β)."""
    from engines.models.base import SamplingParams
    from engines.models.sampling import warp

    model, reward, beta, temperature = load_model("toy:abc"), CountA(), 2.0, 0.7
    params = SamplingParams(temperature=temperature)
    q = {}
    for x in model.distribution():
        ids = model.encode(x)
        lq = sum(float(warp(model.logits([0, *ids[:t]])[None], params)[0, tok]) for t, tok in enumerate(ids))
        q[x] = math.exp(lq + float(warp(model.logits([0, *ids])[None], params)[0, model.eos_id]))
    r = dict(zip(q, reward.score(TASK, list(q)), strict=True))
    z = sum(q[x] * math.exp(r[x] / beta) for x in q)
    target_q = {x: q[x] * math.exp(r[x] / beta) / z for x in q}
    sampler = build_sampler("rejection", {"mode": "statistical", "beta": beta, "r_max": 4.4, "n": 4000, "accept": 4000,
                                          "batch_size": 256, "max_new_tokens": 8, "temperature": temperature})
    trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(8)))
    accepted = Counter(trace.full_text(i) for i in trace.done.picks)
    total = sum(accepted.values())
    assert chi_square_p(accepted, target_q, total) > ALPHA
    assert chi_square_p(accepted, tilted(model, reward, beta), total) < ALPHA


# ---------------------------------------------------------------------------
# best-of-N


def test_best_of_n_pick_follows_the_law_of_the_first_maximum_over_texts():
    """The pick's law over texts: P(max = r(x)) · p(x) / P(r = r(x)) (ties go to the earliest,
    which is uniform among the tied by exchangeability); a random pick must fail the same check."""
    model, reward, n, runs = load_model("toy:abc"), CountA(), 4, 2000
    p = model.distribution()
    r = dict(zip(p, reward.score(TASK, list(p)), strict=True))
    values = sorted(set(r.values()))
    mass = {v: sum(p[x] for x in p if r[x] == v) for v in values}
    cdf = {v: sum(mass[u] for u in values if u <= v) for v in values}
    below = {v: cdf[v] - mass[v] for v in values}
    law = {x: (cdf[r[x]] ** n - below[r[x]] ** n) * p[x] / mass[r[x]] for x in p}
    assert sum(law.values()) == pytest.approx(1.0)

    from engines.samplers.best_of_n import BestOfN

    picks = rso_picks(build_sampler("best_of_n", {"n": n, "max_new_tokens": 8}), runs, seed=5)
    assert chi_square_p(picks, law, runs) > ALPHA

    class RandomPick(BestOfN):  # deliberately wrong: any candidate, not the best
        def steps(self, ctx):
            events = list(super().steps(ctx))
            nodes = [e.id for e in events if e.kind == "node" and e.final]
            pick = nodes[int(torch.randint(len(nodes), (1,), generator=ctx.rng))]
            from engines.trace import SelectEvent

            yield from (e for e in events if e.kind != "select")
            yield SelectEvent(nodes=[pick], reason="random")

    wrong = rso_picks(RandomPick(BestOfN.Config.from_dict({"n": n, "max_new_tokens": 8})), runs, seed=5)
    assert chi_square_p(wrong, law, runs) < ALPHA
