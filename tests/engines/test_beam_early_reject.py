"""beam_early_reject: off it is beam search; on, exactly the candidates below the partial cut stop
after τ tokens; every token spent is in the trace, and fewer are spent than by beam search."""

from __future__ import annotations

import pytest
import torch

from engines.models import load_model
from engines.rewards.steps import OutcomeAsStep
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import Trace, collect
from tests.engines.test_sampler_behaviour import comparable
from tests.engines.toys import DigitValue

TASK = Task(prompt="x")
BEAMS = {"beams": 2, "expand": 3, "step": "tokens", "max_new_tokens": 3, "max_steps": 3, "final_tokens": 4}


def run(name: str, seed: int, model: str = "toy:binary", reward=None, task: Task = TASK, **params) -> Trace:
    sampler = build_sampler(name, {**BEAMS, **params})
    reward = reward or OutcomeAsStep(DigitValue())
    return collect(sampler.run(task, load_model(model), reward, rng=torch.Generator().manual_seed(seed)))


def traced_tokens(trace: Trace) -> int:
    return sum(node.tokens for node in trace.nodes.values() if node.parent is not None)


@pytest.mark.parametrize("seed", range(4))
def test_with_rejection_off_it_is_beam_search(seed):
    plain = run("beam_search", seed)
    off = run("beam_early_reject", seed, prefix_tokens=0)
    assert comparable(off) == comparable(plain)
    assert off.done.picks == plain.done.picks


def expected_cut(values: list[float], cut: str, keep: int, threshold: float) -> list[bool]:
    """The rule, written from the docstring: rank keeps the `keep` best (earlier first among
    equals); threshold keeps those >= threshold, or the single best when none is."""
    if cut == "rank":
        order = sorted(range(len(values)), key=lambda i: (-values[i], i))
        return [i in order[:keep] for i in range(len(values))]
    passed = [v >= threshold for v in values]
    if not any(passed):
        passed[max(range(len(values)), key=lambda i: (values[i], -i))] = True
    return passed


def prefix_nodes_by_step(trace: Trace) -> dict[int, list[str]]:
    """A step's candidates after τ tokens that were scored (a copy of a whole sibling step is merged unscored)."""
    out: dict[int, list[str]] = {}
    for node_id, node in trace.nodes.items():
        if "cut_at_prefix" in node.meta and any(e.kind == "score" and e.node == node_id for e in trace.events):
            out.setdefault(node.depth, []).append(node_id)
    return out


@pytest.mark.parametrize(("cut", "extra"), [("rank", {}), ("rank", {"survivors": 3}), ("threshold", {"threshold": 0.3}),
                                            ("threshold", {"threshold": 5.0})])
def test_exactly_the_candidates_below_the_cut_stop_early(cut, extra):
    rejected_any = survived_any = 0
    for seed in range(6):
        trace = run("beam_early_reject", seed, prefix_tokens=1, cut=cut, **extra)
        first_score = {}
        for e in trace.events:
            if e.kind == "score":
                first_score.setdefault(e.node, e)
        pruned = {e.node: e.reason for e in trace.events if e.kind == "prune"}
        for ids in prefix_nodes_by_step(trace).values():
            values = [first_score[i].value for i in ids]
            keep = expected_cut(values, cut, extra.get("survivors") or BEAMS["beams"], extra.get("threshold", 0.5))
            for node_id, kept in zip(ids, keep, strict=True):
                node, kids = trace.nodes[node_id], trace.children.get(node_id, [])
                cut_mid_step = node.meta["cut_at_prefix"]
                assert first_score[node_id].partial is (cut_mid_step or not node.final)
                if not kept:
                    assert pruned[node_id].startswith("rejected after 1 tokens")
                    assert kids == []  # its step was never finished
                    rejected_any += cut_mid_step
                else:
                    assert not pruned.get(node_id, "").startswith("rejected")
                    assert len(kids) == (1 if cut_mid_step else 0)  # the rest of its step, and only that
                    survived_any += cut_mid_step
    assert rejected_any and survived_any  # the rule was exercised both ways


@pytest.mark.parametrize("seed", range(3))
def test_metered_tokens_equal_traced_tokens(seed):
    trace = run("beam_early_reject", seed, prefix_tokens=1)
    assert trace.done.status == "ok"
    assert trace.done.cost["generated_tokens"] == traced_tokens(trace)


def test_fewer_tokens_than_beam_search_at_the_same_width():
    spent = {name: sum(run(name, seed, **extra).done.cost["generated_tokens"] for seed in range(5))
             for name, extra in (("beam_search", {}), ("beam_early_reject", {"prefix_tokens": 1}))}
    assert spent["beam_early_reject"] < spent["beam_search"]


def test_config_refuses_a_prefix_as_long_as_the_step():
    from engines.errors import ConfigError

    with pytest.raises(ConfigError, match="prefix_tokens"):
        build_sampler("beam_early_reject", {**BEAMS, "prefix_tokens": 3})


# -- the reasoning lab: partial scores of the arith rewards -----------------------------------


def test_arith_steps_partial_score_is_whether_the_line_can_still_be_legal():
    from engines.rewards.arith import ArithStepReward

    task = Task(prompt="Q: 3+4*5\n")
    reward = ArithStepReward()
    # 4*5=20 is legal; "4*5=2" can still become it; "4*6" cannot; after a wrong line nothing can
    values = reward.score_partial(task, [["4*5=2"], ["4*6"], ["4*5=20\n", "3+2"], ["4*5=21\n", "3+2"], [""]])
    assert values == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_arith_prm_reads_a_cut_step_where_its_text_ends():
    """A cut right after a line's newline is read on that newline, where score_last reads the line;
    one token later it is read on that token (the dense head is trained on every token)."""
    from engines.rewards.arith import ArithProcessModel

    task, prm = Task(prompt="Q: 3+4*5\n"), ArithProcessModel()
    at_newline, one_more = prm.score_partial(task, [["4*5=20\n", ""], ["4*5=20\n", "3"]])
    assert at_newline == pytest.approx(prm.score_last(task, [["4*5=20\n"]])[0], abs=1e-6)
    assert one_more != pytest.approx(at_newline, abs=1e-6)


def test_on_arith_with_the_learned_prm_it_spends_fewer_tokens_and_meters_them_all():
    from engines.prompts import builtin_prompt_set
    from engines.rewards.arith import ArithProcessModel

    task = builtin_prompt_set("arith").tasks[0]
    line = {"step": "newline", "max_new_tokens": 16, "max_steps": 8, "beams": 2, "expand": 4, "final_tokens": 64}
    spent = {}
    for name, extra in (("beam_search", {}), ("beam_early_reject", {"prefix_tokens": 3})):
        sampler = build_sampler(name, {**line, **extra})
        trace = collect(sampler.run(task, load_model("embedded:arith"), ArithProcessModel(), rng=torch.Generator().manual_seed(0)))
        assert trace.done.status == "ok" and trace.done.picks
        spent[name] = trace.done.cost["generated_tokens"]
        if name == "beam_early_reject":
            assert spent[name] == traced_tokens(trace)
    assert spent["beam_early_reject"] < spent["beam_search"]
