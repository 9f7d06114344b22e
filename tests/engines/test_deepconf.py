"""DeepConf against brute force on enumerable toys.

- Every stopping decision equals a recomputation from the toy's exact next-token tables:
  token confidence -mean(top-k log-probs), the first full window whose mean falls below
  the bar calibrated as the (100-η)th percentile of the warm-up traces' lowest window means.
- The traced tokens (stopped traces included) equal the metered generated tokens.
- The law of the pick under confidence-filtered, confidence-weighted voting equals the
  law enumerated over every tuple of traces (chi-square), and plain majority's law is rejected.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import pytest
import torch

from engines.errors import ConfigError
from engines.models import load_model
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import collect
from tests.engines.test_exactness import ALPHA, chi_square_p
from tests.engines.toys import CountA

TASK = Task(prompt="toy")


def brute_confidences(model, text: str, ended: bool, k: int) -> list[float]:
    """C_t for every generated token of ``text`` (and its end token when ``ended``), from the logits table."""
    ids = model.encode(text) + ([model.eos_id] if ended else [])
    out = []
    for t in range(len(ids)):
        logits = model.logits([model.bos_id, *ids[:t]])
        logp = sorted((v for v in logits.log_softmax(-1).tolist() if v != -math.inf), reverse=True)[:k]
        out.append(-sum(logp) / len(logp))
    return out


def brute_lowest(confs: list[float], window: int) -> float:
    if len(confs) < window:
        return sum(confs) / len(confs)
    return min(sum(confs[i : i + window]) / window for i in range(len(confs) - window + 1))


def brute_percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def test_stopping_decisions_equal_brute_force_and_traced_cost_is_metered():
    model, k, window = load_model("toy:binary"), 2, 3
    cfg = {"n": 60, "warmup": 10, "keep_percent": 50.0, "window": window, "confidence_top_k": k, "consensus": 1.0,
           "answer_format": "text", "max_new_tokens": 8, "batch_size": 10}
    trace = collect(build_sampler("deepconf", cfg).run(TASK, model, CountA(), rng=torch.Generator().manual_seed(0)))
    nodes = [n for n in trace.nodes.values() if n.parent == "root"]
    assert len(nodes) == 60
    warm = [n for n in nodes if n.meta["phase"] == "warm-up"]
    lows = [brute_lowest(brute_confidences(model, n.text, True, k), window) for n in warm]
    bar = brute_percentile(lows, 50.0)
    assert trace.done.metrics["confidence_bar"] == pytest.approx(bar, abs=1e-9)
    stopped = 0
    for node in nodes:
        if node.meta["phase"] != "online":
            continue
        ended = node.meta["finish"] == "eos"
        confs = brute_confidences(model, node.text, ended, k)
        # the first window (ending on a drawn token that is not the end token) below the bar
        first = next((t for t in range(window, len(confs) + 1)
                      if sum(confs[t - window : t]) / window < bar and not (ended and t == len(confs))), None)
        if node.meta["finish"] == "confidence":
            stopped += 1
            assert not node.final and first == node.tokens == len(confs)
            assert any(e.kind == "prune" and e.node == node.id for e in trace.events)
        else:
            assert node.final and first is None
        assert node.meta["lowest_confidence"] == pytest.approx(brute_lowest(confs, window), abs=1e-6)
    assert 0 < stopped < 50  # the run exercises both decisions
    assert trace.done.metrics["stopped"] == stopped
    assert sum(n.tokens for n in nodes) == trace.done.cost["generated_tokens"]


def pick_law(model, k: int, window: int, n: int, keep: float, weighted_filter: bool) -> dict[str, float]:
    """The exact law of the picked text with ``n`` warm-up traces (every tuple enumerated).
    ``weighted_filter`` False gives plain majority over all traces (the wrong law)."""
    p = model.distribution()
    low = {x: brute_lowest(brute_confidences(model, x, True, k), window) for x in p}
    law: dict[str, float] = defaultdict(float)
    for combo in itertools.product(list(p), repeat=n):
        prob = math.prod(p[x] for x in combo)
        bar = brute_percentile([low[x] for x in combo], 100 - keep) if weighted_filter else -math.inf
        votes: dict[str, float] = {}
        for x in combo:
            if low[x] >= bar and x:
                votes[x] = votes.get(x, 0.0) + (low[x] if weighted_filter else 1.0)
        if votes:
            winner = max(votes, key=lambda a: votes[a])
            pick = winner
        else:
            pick = max((x for x in combo), key=lambda x: low[x])
        law[pick] += prob
    return dict(law)


def test_confidence_weighted_vote_follows_its_enumerated_law():
    model, k, window, n, keep, runs = load_model("toy:ab2"), 2, 2, 3, 50.0, 1500
    law = pick_law(model, k, window, n, keep, weighted_filter=True)
    cfg = {"n": n, "warmup": n, "keep_percent": keep, "window": window, "confidence_top_k": k, "consensus": 1.0,
           "answer_format": "text", "max_new_tokens": 4}
    sampler = build_sampler("deepconf", cfg)
    gen = torch.Generator().manual_seed(2)
    picks = Counter()
    for _ in range(runs):
        trace = collect(sampler.run(TASK, model, CountA(), rng=gen))
        picks[trace.full_text(trace.done.picks[0])] += 1
    assert chi_square_p(picks, law, runs) > ALPHA
    assert chi_square_p(picks, pick_law(model, k, window, n, keep, weighted_filter=False), runs) < ALPHA


def test_consensus_stops_drawing_once_one_answer_dominates():
    model = load_model("toy:digits")
    cfg = {"n": 64, "warmup": 4, "keep_percent": 90.0, "window": 1, "consensus": 0.5, "answer_format": "text",
           "max_new_tokens": 3, "batch_size": 4}
    trace = collect(build_sampler("deepconf", cfg).run(TASK, model, CountA(), rng=torch.Generator().manual_seed(1)))
    votes = trace.done.metrics["votes"]
    assert trace.done.metrics["consensus_stop"] and trace.done.metrics["traces"] < 64
    assert max(votes.values()) / sum(votes.values()) >= 0.5


def test_a_model_without_confidences_is_refused():
    class Served:
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        confidence_stop = False

    with pytest.raises(ConfigError, match="token confidences"):
        build_sampler("deepconf").run(TASK, Served(load_model("toy:abc")), CountA(), rng=torch.Generator())


def test_sampling_params_refuse_a_confidence_stop_without_confidences():
    from engines.models.base import SamplingParams

    with pytest.raises(ValueError, match="stop_confidence needs confidence_top_k"):
        SamplingParams(stop_confidence=1.0)
    with pytest.raises(ValueError, match="confidence_window"):
        SamplingParams(confidence_top_k=5, confidence_window=0)


def test_the_transformers_loop_reports_and_stops_on_the_same_confidences():
    """embedded:arith (the transformers loop): the confidences it reports equal -mean(top-k) of
    next_token_logprobs on every prefix, and its stop falls on the first window below the bar."""
    from engines.models.base import SamplingParams
    from engines.prompts import builtin_prompt_set

    model, k, window = load_model("embedded:arith"), 5, 4
    prompt = model.encode_task(builtin_prompt_set("arith").tasks[0])
    free = model.sample([prompt], SamplingParams(max_new_tokens=40, confidence_top_k=k), n=3,
                        rng=torch.Generator().manual_seed(0))[0]
    for gen in free:
        rows = model.next_token_logprobs([prompt + gen.token_ids[:t] for t in range(len(gen.token_ids))])
        brute = [-float(row.topk(k).values.mean()) for row in rows]
        assert gen.meta["confidence"] == pytest.approx(brute, abs=1e-3)
    confs = free[0].meta["confidence"]
    means = [sum(confs[t - window : t]) / window for t in range(window, len(confs))]
    bar = sorted(means)[len(means) // 2]  # a bar the first trace crosses somewhere
    first = next(t for t in range(window, len(confs)) if sum(confs[t - window : t]) / window < bar)
    stopped = model.sample([prompt], SamplingParams(max_new_tokens=40, confidence_top_k=k, stop_confidence=bar,
                                                    confidence_window=window), n=3, rng=torch.Generator().manual_seed(0))[0]
    assert stopped[0].finish_reason == "confidence" and len(stopped[0].token_ids) == first
    assert stopped[0].token_ids == free[0].token_ids[:first]
