"""Step-level samplers on enumerable toy models: the laws and optima they claim."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import pytest
import torch

from engines.models import load_model
from engines.rewards.steps import OutcomeAsStep
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import collect
from tests.engines.test_exactness import ALPHA, chi_square_p
from tests.engines.toys import CountA

TASK = Task(prompt="toy")
TOKEN_STEPS = {"step": "tokens", "max_new_tokens": 1}


def tilted(model, reward, lam):
    p = model.distribution()
    w = {x: p[x] * math.exp(lam * reward.score(TASK, [x])[0]) for x in p}
    z = sum(w.values())
    return {x: v / z for x, v in w.items()}


def weighted_law(trace) -> dict[str, float]:
    final = trace.resamples[-1]
    top = max(final.log_weights)
    weights = [math.exp(lw - top) for lw in final.log_weights]
    total = sum(weights)
    law: dict[str, float] = defaultdict(float)
    for node, w in zip(final.particles, weights, strict=True):
        law[trace.full_text(node)] += w / total
    return law


def tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(x, 0.0) - b.get(x, 0.0)) for x in set(a) | set(b))


@pytest.mark.parametrize("ess_threshold", [0.0, 0.5, 1.0])
def test_smc_with_exact_potentials_reaches_the_tilted_target(ess_threshold):
    """4,096 particles, one token per step; v_t = r(prefix) so the potentials telescope to exp(λ r(x)).

    Bound: an n-sample estimate of a law π has E[TV] ≈ 0.8 · ½ Σ sqrt(π(1-π)/n); we take n as
    the smallest ESS the run went through (resampling cannot add information) and allow twice
    the rms value ½ Σ sqrt(π(1-π)/n).
    """
    model, reward, lam = load_model("toy:abc"), CountA(), 1.0
    target = tilted(model, reward, lam)
    sampler = build_sampler("smc", {"particles": 4096, "lam": lam, "ess_threshold": ess_threshold, "max_steps": 5, **TOKEN_STEPS})
    trace = collect(sampler.run(TASK, model, OutcomeAsStep(reward), rng=torch.Generator().manual_seed(0)))
    n_eff = min(event.ess for event in trace.resamples)
    bound = 2 * 0.5 * sum(math.sqrt(q * (1 - q) / n_eff) for q in target.values())
    estimate = weighted_law(trace)
    assert tv(estimate, target) < bound
    assert tv(model.distribution(), target) > 3 * bound  # the bound is tight enough to see the tilt
    if ess_threshold == 1.0:
        assert trace.done.metrics["resamples"] >= 1
        for event in trace.resamples:
            assert len(event.ancestors) == 4096 and all(0 <= a < 4096 for a in event.ancestors)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_power_mcmc_reaches_p_to_the_alpha(temperature):
    model, alpha, runs = load_model("toy:abc"), 2.0, 800
    p = model.distribution()
    z = sum(v**alpha for v in p.values())
    target = {x: v**alpha / z for x, v in p.items()}
    sampler = build_sampler("power_mcmc", {"alpha": alpha, "temperature": temperature, "block_size": 8, "max_new_tokens": 8, "mcmc_steps": 12})
    counts, gen, rates = Counter(), torch.Generator().manual_seed(0), []
    for _ in range(runs):
        trace = collect(sampler.run(TASK, model, CountA(), rng=gen))
        counts[trace.full_text(trace.done.picks[0])] += 1
        rates.append(trace.done.metrics["acceptance_rate"])
    assert chi_square_p(counts, target, runs) > ALPHA
    assert chi_square_p(counts, p, runs) < ALPHA
    assert 0 < sum(rates) / runs < 1


def best_sequences(model, reward) -> tuple[float, set[str]]:
    scores = {x: reward.score(TASK, [x])[0] for x in model.distribution()}
    top = max(scores.values())
    return top, {x for x, v in scores.items() if v == top}


class Tiebreak(CountA):
    """A reward with a unique optimum: CountA plus a small bonus for ending in 'c'."""

    name = "count_a_c"

    def score(self, task, candidates, *, usage=None):
        return [v + (0.05 if x.endswith("c") else 0.0) for v, x in zip(super().score(task, candidates), candidates, strict=True)]


def test_mcts_with_enough_simulations_finds_the_best_sequence():
    model, reward = load_model("toy:abc"), Tiebreak()
    top, best = best_sequences(model, reward)
    sampler = build_sampler("mcts", {"simulations": 400, "width": 4, "c": 2.0, "temperature": 3.0, "max_steps": 5, **TOKEN_STEPS})
    trace = collect(sampler.run(TASK, model, OutcomeAsStep(reward), rng=torch.Generator().manual_seed(0)))
    (pick,) = trace.done.picks
    assert trace.full_text(pick) in best and trace.reward(pick) == pytest.approx(top)


def test_beam_search_as_wide_as_the_branching_returns_the_exhaustive_optimum():
    """toy:ab2 is a depth-2 tree with branching 3 (a, b, end); 3 beams keep every first step."""
    model = load_model("toy:ab2")

    class Arbitrary(CountA):  # a reward whose optimum the model rarely samples
        def score(self, task, candidates, *, usage=None):
            table = {"": 0.1, "a": 0.3, "b": 0.2, "aa": 0.0, "ab": 0.05, "ba": 0.9, "bb": 0.4}
            return [table[x] for x in candidates]

    reward = Arbitrary()
    for x in ["", "a", "b", "aa", "ab", "ba", "bb"]:
        assert x in model.distribution()
    top, best = best_sequences(model, reward)
    # the partial score of "b" (0.2) is below "a" (0.3): a beam of 1 would miss "ba"
    narrow = build_sampler("beam_search", {"beams": 1, "expand": 12, "temperature": 4.0, "max_steps": 3, **TOKEN_STEPS})
    wide = build_sampler("beam_search", {"beams": 3, "expand": 12, "temperature": 4.0, "max_steps": 3, **TOKEN_STEPS})
    trace = collect(wide.run(TASK, model, OutcomeAsStep(reward), rng=torch.Generator().manual_seed(0)))
    assert trace.full_text(trace.done.picks[0]) in best
    missed = collect(narrow.run(TASK, model, OutcomeAsStep(reward), rng=torch.Generator().manual_seed(0)))
    assert missed.full_text(missed.done.picks[0]) not in best  # a single beam follows 'a' and misses 'ba'


def test_early_rejection_without_rejection_is_best_of_n():
    model, reward = load_model("toy:abc"), CountA()
    er = build_sampler("early_rejection", {"n": 12, "rejection_rate": 0.0, "interval": 8, "max_tokens": 8})
    trace = collect(er.run(TASK, model, OutcomeAsStep(reward), rng=torch.Generator().manual_seed(4)))
    finals = [i for i in trace.candidates]
    assert len(finals) == 12 and not trace.pruned
    best = max(trace.reward(i) for i in finals)
    assert trace.reward(trace.done.picks[0]) == best


def test_early_rejection_prunes_the_worst_share_at_each_checkpoint():
    model, reward = load_model("toy:abc"), CountA()
    er = build_sampler("early_rejection", {"n": 16, "rejection_rate": 0.5, "interval": 1, "max_tokens": 8, "temperature": 1.5})
    trace = collect(er.run(TASK, model, OutcomeAsStep(reward), rng=torch.Generator().manual_seed(1)))
    first = [n for n in trace.nodes.values() if n.depth == 1]
    pruned_first = [n.id for n in first if n.id in trace.pruned]
    running = [n for n in first if not n.final]
    assert len(pruned_first) == len(running) - math.ceil(len(running) / 2)
    kept = [n.id for n in running if n.id not in trace.pruned]
    def value(node_id):
        return next(iter(trace.partial_scores[node_id].values()))

    if kept and pruned_first:  # survivors scored at least as well as the rejected
        assert min(value(i) for i in kept) >= max(value(i) for i in pruned_first)


def test_cards_segments_respect_the_rising_threshold_in_hard_mode():
    model, reward = load_model("toy:abc"), CountA()
    cards = build_sampler("cards", {"mode": "hard", "reward_threshold": 2.0, "alpha": 0.5, "max_tokens": 4,
                                    "max_retries": 50, "temperature": 2.0, **TOKEN_STEPS, "max_steps": 5})
    trace = collect(cards.run(TASK, model, OutcomeAsStep(reward), rng=torch.Generator().manual_seed(0)))
    for event in trace.accepts:
        value = next(iter((trace.scores.get(event.node) or trace.partial_scores[event.node]).values()))
        assert event.accepted == (event.probability == 1.0)
        assert event.accepted <= (value >= 0)  # accepted segments were scored
    assert trace.done.metrics["attempts"] >= trace.done.metrics["segments"] >= 1
    (pick,) = trace.done.picks
    assert trace.nodes[pick].final


def test_entropy_segmentation_cuts_before_uncertain_tokens():
    from engines.models.base import SamplingParams
    from engines.models.sampling import entropy

    model = load_model("toy:abc")
    prefix = model.encode_task(TASK)
    params = SamplingParams(max_new_tokens=4, stop_entropy=0.8, entropy_min_tokens=1)
    for gen in model.sample([prefix], params, n=40, rng=torch.Generator().manual_seed(0))[0]:
        ids = prefix + gen.token_ids
        if gen.finish_reason == "entropy":
            assert entropy(model.logits(ids)[None])[0] >= 0.8
        for t in range(1, len(gen.token_ids)):  # no earlier cut was due
            assert entropy(model.logits(prefix + gen.token_ids[:t])[None])[0] < 0.8


def test_prefix_store_reuses_any_common_prefix():
    from engines.models.kv import PrefixStore

    store = PrefixStore()
    kv = [(torch.arange(10.0).reshape(1, 10, 1), torch.arange(10.0).reshape(1, 10, 1))]
    store.put(list(range(10)), kv)
    hit = store.longest([0, 1, 2, 3, 99, 98], limit=5)
    assert hit is not None and hit[0][0].shape[1] == 4  # shares 0..3 with the stored sequence
    assert store.longest([5, 6], limit=2) is None
    assert store.longest(list(range(12)), limit=11)[0][0].shape[1] == 10


