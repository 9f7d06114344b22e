"""Every diffusion sampler: deterministic per seed, within its nfe budget, a well-formed trace ending in done."""

from __future__ import annotations

import math

import pytest
import torch

from engines.errors import ConfigError
from engines.rewards import build_reward
from engines.samplers import SAMPLERS, build_sampler
from engines.samplers.dts import DiffusionTreeSampling, TreeNode
from engines.samplers.fk_steering import effective_sample_size, resample_indices
from engines.task import Task
from engines.trace import Budget, DoneEvent, collect, event_to_dict

TASK = Task(prompt="")

# samplers that need a flow map (FMTT) cannot run on the digits model; their own tests cover them
IMAGE_SAMPLERS = [
    name for name, cls in SAMPLERS.items() if "image" in cls.modalities and not getattr(cls, "needs_flow_map", False)
]
# the cases come from the registry: each image sampler's own small ``examples``, so a new one is run here
CASES = {case: (name, params) for name in IMAGE_SAMPLERS for case, params in SAMPLERS.get(name).examples.items()}


def run(name: str, params: dict, model, reward, seed: int = 0, budget: Budget | None = None):  # noqa: ANN001, ANN201
    sampler = build_sampler(name, params)
    return collect(sampler.run(TASK, model, reward, budget=budget, rng=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def digit3():  # noqa: ANN201
    return build_reward("digit:3")


@pytest.mark.parametrize("case", sorted(CASES))
def test_deterministic_per_seed_and_well_formed(case: str, digits_model, digit3) -> None:  # noqa: ANN001
    name, params = CASES[case]
    first = run(name, params, digits_model, digit3, seed=0)
    again = run(name, params, digits_model, digit3, seed=0)
    other = run(name, params, digits_model, digit3, seed=1)
    strip = lambda trace: [{k: v for k, v in event_to_dict(e).items() if k != "cost"} for e in trace]  # noqa: E731
    assert strip(first) == strip(again)
    assert strip(first) != strip(other)

    assert isinstance(first.events[-1], DoneEvent) and first.done.status == "ok"
    finals = [i for i, n in first.nodes.items() if n.final]
    assert finals and first.selected and set(first.selected) <= set(finals)
    for node_id in finals:
        assert first.nodes[node_id].image.startswith("data:image/png;base64,")
        assert 0.0 <= first.scores[node_id]["digit:3"] <= 1.0
    for node in first.nodes.values():
        assert node.image is not None
        if node.parent is None:
            assert node.depth == 0
        else:
            assert node.depth == first.nodes[node.parent].depth + 1
    assert first.done.cost["nfe"] > 0 and first.done.cost["reward_calls"] > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_respects_an_nfe_budget(case: str, digits_model, digit3) -> None:  # noqa: ANN001
    name, params = CASES[case]
    unlimited = run(name, params, digits_model, digit3)
    cap = int(unlimited.done.cost["nfe"]) // 2
    capped = run(name, params, digits_model, digit3, budget=Budget(nfe=cap))
    assert capped.done is not None and capped.events[-1].kind == "done"
    assert 0 < capped.done.cost["nfe"] <= cap
    assert capped.done.status in ("ok", "budget") and capped.done.picks
    if name in ("fk_steering", "svdd", "reno"):  # they shrink their plan to the budget up front
        assert capped.done.status == "ok", capped.done.message
    exact = run(name, params, digits_model, digit3, budget=Budget(nfe=int(unlimited.done.cost["nfe"])))
    assert exact.done.status == "ok" and exact.done.cost == {**exact.done.cost, "nfe": unlimited.done.cost["nfe"]}
    nothing = run(name, params, digits_model, digit3, budget=Budget(nfe=1))
    assert nothing.done.status == "budget" and nothing.done.cost["nfe"] <= 1 and not nothing.done.picks


def test_every_image_sampler_declares_examples_that_build() -> None:
    examples = [case for name in IMAGE_SAMPLERS for case in SAMPLERS.get(name).examples]
    assert len(examples) == len(set(examples)) == len(CASES)  # case names are unique across samplers
    for name in IMAGE_SAMPLERS:
        assert SAMPLERS.get(name).examples, f"{name} declares no examples: the suite above would skip it"
        for params in SAMPLERS.get(name).examples.values():
            build_sampler(name, params)


def test_every_diffusion_sampler_is_registered() -> None:
    assert {"best_of_n", "fk_steering", "svdd", "dts", "reno"} <= set(IMAGE_SAMPLERS)
    for name in IMAGE_SAMPLERS:
        cls = SAMPLERS.get(name)
        assert "image" in cls.modalities and cls.Config.paper
        assert {"steps", "eta"} <= {spec.name for spec in cls.Config.specs()}
        assert all(spec.label for spec in cls.Config.specs())


def test_best_of_n_over_seeds_picks_the_highest_reward(digits_model, digit3) -> None:  # noqa: ANN001
    trace = run("best_of_n", {"n": 6, "steps": 5, "batch_size": 4}, digits_model, digit3)
    finals = [i for i, n in trace.nodes.items() if n.final]
    assert len(finals) == 6 and len({trace.nodes[i].meta["particle"] for i in finals}) == 6
    assert trace.selected == [max(finals, key=lambda i: trace.scores[i]["digit:3"])]
    assert trace.done.cost["nfe"] == 6 * 5 and trace.done.cost["reward_calls"] == 6


# -- Feynman-Kac steering ---------------------------------------------------------------


def test_fk_resampling_records_every_ancestor(digits_model, digit3) -> None:  # noqa: ANN001
    trace = run("fk_steering", {"particles": 5, "steps": 6, "resample_every": 2, "ess_threshold": 1.0}, digits_model, digit3)
    resampled = [r for r in trace.resamples if r.resampled]
    assert [r.step for r in resampled] == [0, 2, 4]
    for event in resampled:
        assert len(event.ancestors) == len(event.particles) == 5
        depth = trace.nodes[event.particles[0]].depth
        children = [n for n in trace.nodes.values() if n.depth == depth + 1]
        assert [c.parent for c in children] == [event.particles[a] for a in event.ancestors]
        dropped = set(event.particles) - {event.particles[a] for a in event.ancestors}
        assert all(trace.pruned[i] == "resampled away" for i in dropped)
    final = trace.resamples[-1]
    assert final.step == 6 and not final.resampled and len(final.log_weights) == 5
    assert math.isfinite(trace.done.metrics["log_evidence"])


def test_fk_rejects_bad_configs(tiny_sd_folder, digit3) -> None:  # noqa: ANN001
    from engines.models import load_model

    with pytest.raises(ConfigError, match="eta"):
        build_sampler("fk_steering", {"eta": 0.0})
    with pytest.raises(ConfigError, match="potential"):
        build_sampler("fk_steering", {"potential": "median"})
    with pytest.raises(ConfigError, match="resample_end"):
        build_sampler("fk_steering", {"resample_start": 5, "resample_end": 2})
    sd = load_model(f"diffusers:{tiny_sd_folder}", device="cpu")
    with pytest.raises(ConfigError, match="8x8"):
        build_sampler("fk_steering").run(TASK, sd, digit3)
    with pytest.raises(ConfigError, match="differentiable"):
        build_sampler("reno").run(TASK, sd, build_reward("0.5*ink + 0.5*symmetry"))


def test_resampling_schemes_follow_the_weights() -> None:
    weights = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    n = weights.numel()
    for method in ("systematic", "stratified"):
        counts = torch.bincount(resample_indices(weights.log(), method, torch.Generator().manual_seed(0)), minlength=n)
        assert counts.sum() == n and (counts.double() - n * weights).abs().max() < 1 + 1e-9
    many = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    draws = resample_indices(many.repeat(1).log(), "multinomial", torch.Generator().manual_seed(0))
    assert draws.numel() == 3
    big = torch.log(torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)).repeat_interleave(1000) - math.log(1000)
    share = torch.bincount(resample_indices(big, "multinomial", torch.Generator().manual_seed(1)) // 1000, minlength=3)
    assert (share.double() / 3000 - torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)).abs().max() < 0.03
    assert effective_sample_size(torch.zeros(8)) == pytest.approx(8)
    assert effective_sample_size(torch.tensor([0.0, -1e9, -1e9])) == pytest.approx(1)


# -- SVDD -------------------------------------------------------------------------------------


def test_svdd_costs_and_keeps_the_best_candidate(digits_model, digit3) -> None:  # noqa: ANN001
    n, m, k = 2, 3, 5
    assert digits_model.schedule(k).std(k - 1, 1.0) == 0  # DDIM's last step lands on ᾱ = 1: no noise
    trace = run("svdd", {"particles": n, "candidates": m, "steps": k}, digits_model, digit3)
    assert trace.done.cost["nfe"] == n + n * m * (k - 1)
    # M candidates at each noisy step, one at the noiseless last step (M copies would be identical)
    assert trace.done.cost["reward_calls"] == n * m * (k - 1) + n
    finals = [i for i, node in trace.nodes.items() if node.final]
    assert len(finals) == n and all(trace.nodes[i].depth == k for i in finals)
    for parent, children in trace.children.items():
        kids = [c for c in children if trace.nodes[c].meta.get("candidate")]
        if parent is None or not kids:
            continue
        assert len(kids) == (1 if trace.nodes[kids[0]].depth == k else m)
        value = lambda c: trace.partial_scores.get(c, trace.scores.get(c, {})).get("digit:3")  # noqa: E731
        kept = [c for c in kids if c not in trace.pruned]
        assert len(kept) == 1 and value(kept[0]) == max(value(c) for c in kids)


# -- DTS ----------------------------------------------------------------------------------------


def test_dts_soft_bellman_backup() -> None:
    sampler = DiffusionTreeSampling(DiffusionTreeSampling.Config(lam=2.0))
    root = TreeNode(depth=-1, x=None, parent=None)
    mid = TreeNode(depth=0, x=None, parent=root)
    root.children.append(mid)
    leaves = [TreeNode(depth=1, x=None, parent=mid, value=v, reward=v) for v in (0.0, 1.0)]
    mid.children.extend(leaves)
    path = sampler._backup(leaves[1])
    assert path == [root, mid, leaves[1]]
    expected = math.log((math.exp(0.0) + math.exp(2.0)) / 2) / 2.0
    assert mid.value == pytest.approx(expected) and root.value == pytest.approx(expected)
    assert (root.visits, mid.visits, leaves[1].visits, leaves[0].visits) == (1, 1, 1, 0)


def test_dts_star_returns_the_best_leaf_and_meters_rollouts(digits_model, digit3) -> None:  # noqa: ANN001
    steps = 5
    trace = run("dts", {"rollouts": 8, "steps": steps, "branching": 2, "mode": "search"}, digits_model, digit3)
    leaves = [i for i, n in trace.nodes.items() if n.final]
    assert trace.selected == [max(leaves, key=lambda i: trace.scores[i]["digit:3"])]
    # every rollout ends at a new leaf; each state before x0 costs one evaluation
    assert trace.done.cost["nfe"] == sum(1 for n in trace.nodes.values() if not n.final)
    assert trace.done.cost["reward_calls"] == len(leaves) == trace.done.metrics["leaves"]


# -- ReNO -------------------------------------------------------------------------------------------


def test_reno_raises_a_differentiable_reward(digits_model) -> None:  # noqa: ANN001
    ink = build_reward("ink")
    trace = run("reno", {"iterations": 6, "steps": 4, "lr": 20.0}, digits_model, ink)
    values = [trace.scores[i]["ink"] for i, n in trace.nodes.items() if n.final]
    assert len(values) == 6 and values[-1] > values[0]
    assert trace.done.metrics["best_reward"] == max(values)
    assert all("noise_norm" in n.meta for n in trace.nodes.values())
