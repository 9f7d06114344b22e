"""ZIP-RC's controller against brute-force expected-utility maximisation on an enumerable toy.

- With the oracle predictor, every decision of a run (which live prefixes continue, how many
  samples start, stop) maximises U = E[max reward] - α·E[Σ remaining]/ℓ - β·E[max remaining]/ℓ,
  recomputed here from the toy's exact law by enumerating every joint outcome of the running
  samples; controllers that drop the compute or the latency term choose otherwise.
- E[max] by the CDF product equals enumeration, with copies and a floor.
- The traced tokens and reward calls equal the metered ones.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.models import load_model
from engines.samplers import build_sampler
from engines.samplers.zip_rc import expected_max
from engines.task import Task
from engines.trace import collect
from tests.engines.toys import CountA

TASK = Task(prompt="toy")
TOY, REWARD = load_model("toy:abc"), CountA()  # one instance each: the exact laws are cached per (model, reward, prefix)


@functools.cache
def cells(model, reward, prefix: str) -> dict[tuple[float, int], float]:
    """The exact law of (final reward, remaining tokens incl. the end token) of a sample at ``prefix``."""
    p = {x: q for x, q in distribution(model).items() if x.startswith(prefix)}
    total = sum(p.values())
    law: dict[tuple[float, int], float] = defaultdict(float)
    for x, q in p.items():
        law[(round(reward.score(TASK, [x])[0], 9), len(x) + 1 - len(prefix))] += q / total
    return dict(law)


@functools.cache
def distribution(model) -> dict[str, float]:
    return model.distribution()


def brute_terms(laws, best) -> tuple[float, float, float]:
    """(E[max reward], E[Σ remaining], E[max remaining]) by enumerating every joint outcome of the running samples."""
    value = latency = 0.0
    for outcome in itertools.product(*(law.items() for law in laws)):
        prob = math.prod(q for _, q in outcome)
        rewards = [r for (r, _), _ in outcome] + ([best] if best is not None else [])
        value += prob * max(rewards)
        latency += prob * max((t for (_, t), _ in outcome), default=0)
    compute = sum(q * t for law in laws for (_, t), q in law.items())
    return value, compute, latency


def brute_terms_table(live_laws, root_law, best, can_start, width) -> dict:
    """{(kept live indexes, new count): terms} over every allowed meta-action."""
    out = {}
    for r in range(len(live_laws) + 1):
        for keep in itertools.combinations(range(len(live_laws)), r):
            for new in range(min(can_start, width - len(keep)) + 1):
                if best is None and not keep and not new:
                    continue
                out[(keep, new)] = brute_terms([live_laws[i] for i in keep] + [root_law] * new, best)
    return out


def utilities(terms: dict, alpha: float, beta: float, scale: float) -> dict:
    return {a: value - alpha * compute / scale - beta * latency / scale for a, (value, compute, latency) in terms.items()}


def unique_argmax(table: dict, margin: float = 1e-5):
    ranked = sorted(table.items(), key=lambda kv: -kv[1])
    return ranked[0][0] if len(ranked) == 1 or ranked[0][1] - ranked[1][1] > margin else None


@pytest.mark.parametrize(("alpha", "beta"), [(0.05, 0.4), (0.4, 0.05), (0.0, 0.0)])
def test_every_decision_maximises_the_brute_force_utility(alpha, beta):
    model, reward, width, samples = TOY, REWARD, 2, 6
    root_law = cells(model, reward, "")
    scale = sum(q * t for (_, t), q in root_law.items())
    cfg = {"samples": samples, "width": width, "interval": 1, "max_new_tokens": 8,
           "compute_cost": alpha, "latency_cost": beta}
    differs = {"compute": 0, "latency": 0}
    checked = 0
    stops = 0
    for seed in range(6):
        trace = collect(build_sampler("zip_rc", cfg).run(TASK, model, reward, rng=torch.Generator().manual_seed(seed)))
        assert trace.done.status == "ok"
        finals = [i for i, n in trace.nodes.items() if n.final]
        for d in trace.done.metrics["decisions"]:
            live_laws = [cells(model, reward, trace.full_text(i)) for i in d["live"]]
            terms = brute_terms_table(live_laws, root_law, d["best_finished"], samples - d["started"], width)
            table = utilities(terms, alpha, beta, scale)
            chosen = (tuple(d["live"].index(i) for i in d["continue"]), d["new"])
            # 1e-6: the toy's distribution() is float32, the sampler's oracle float64
            assert table[chosen] == pytest.approx(d["utility"], abs=1e-6)
            assert table[chosen] == pytest.approx(max(table.values()), abs=1e-6)
            best = unique_argmax(table)
            if best is not None:
                assert chosen == best
                for dropped, wrong in (("compute", utilities(terms, 0.0, beta, scale)),
                                       ("latency", utilities(terms, alpha, 0.0, scale))):
                    differs[dropped] += unique_argmax(wrong) not in (None, best)
            checked += 1
            stops += not d["continue"] and not d["new"]
        assert stops >= 1 and trace.done.picks[0] in finals
        assert trace.reward(trace.done.picks[0]) == max(trace.reward(i) for i in finals)
    assert checked >= 12
    if alpha > 0.2:  # a controller blind to compute keeps more samples going
        assert differs["compute"] > 0
    if beta > 0.2:  # one blind to latency starts more samples at once
        assert differs["latency"] > 0


def test_expected_max_equals_enumeration_with_copies_and_a_floor():
    gen = np.random.default_rng(0)
    variables = []
    for size in (3, 2, 4):
        support = np.sort(gen.choice(np.arange(-5, 6), size=size, replace=False)).astype(float)
        pmf = gen.dirichlet(np.ones(size))
        variables.append((support, pmf, int(gen.integers(1, 3))))
    for floor in (None, 0.5, -10.0):
        draws = [(s, p) for s, p, c in variables for _ in range(c)]
        brute = 0.0
        for outcome in itertools.product(*(list(zip(s, p, strict=True)) for s, p in draws)):
            values = [v for v, _ in outcome] + ([floor] if floor is not None else [])
            brute += math.prod(q for _, q in outcome) * max(values)
        assert expected_max(variables, floor) == pytest.approx(brute, abs=1e-12)
    assert expected_max([], 0.3) == 0.3 and expected_max([]) == 0.0


def test_traced_cost_equals_metered_cost():
    model, reward = load_model("toy:abc"), CountA()
    cfg = {"samples": 10, "width": 3, "interval": 2, "max_new_tokens": 8, "compute_cost": 0.05, "latency_cost": 0.05}
    trace = collect(build_sampler("zip_rc", cfg).run(TASK, model, reward, rng=torch.Generator().manual_seed(1)))
    assert sum(n.tokens for i, n in trace.nodes.items() if i != "root") == trace.done.cost["generated_tokens"]
    scored = [e for e in trace.events if e.kind == "score" and e.reward == reward.name]
    assert len(scored) == trace.done.cost["reward_calls"] == len(trace.candidates)  # the oracle is free
    assert trace.done.metrics["samples"] == sum(1 for n in trace.nodes.values() if n.parent == "root")
    last = [e for e in trace.events if e.kind == "cost"][-1].cost
    assert {k: v for k, v in last.items() if k != "wall_seconds"} == {
        k: v for k, v in trace.done.cost.items() if k != "wall_seconds"}
    pruned = {e.node for e in trace.events if e.kind == "prune"}
    assert all(not trace.nodes[i].final for i in pruned)


def test_bad_predictor_settings_are_refused():
    model = load_model("toy:abc")
    with pytest.raises(ConfigError, match="temperature 1"):
        build_sampler("zip_rc", {"temperature": 0.5}).run(TASK, model, CountA(), rng=torch.Generator())
    with pytest.raises(ConfigError, match="compute_cost"):
        build_sampler("zip_rc", {"compute_cost": -1.0})
    with pytest.raises(ConfigError, match="reads embedded:arith samples, not 'toy:abc'"):  # its tokenizer is arith's
        build_sampler("zip_rc", {"predictor": "arith_head"}).run(TASK, model, CountA(), rng=torch.Generator())
