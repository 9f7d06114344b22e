"""The Train (RL) tab's figures (app.views.rollouts), from hand-made training events."""

from __future__ import annotations

from app.views import rollouts as views
from engines.trace import DoneEvent, EvalEvent, GroupEvent, NodeEvent, ScoreEvent, UpdateEvent


def fold(events) -> views.TrainingView:
    view = views.TrainingView()
    for event in events:
        view.add(event)
    return view


def batch_events(step: int = 0):
    return [
        NodeEvent(id="b0.g0", parent=None, text="What is 2+<b>3</b>?"),
        NodeEvent(id="b0.g1", parent=None, text="What is 4*5?"),
        ScoreEvent(node="b0.g0.s0", reward="math", value=1.0),
        GroupEvent(step=step, prompt="b0.g0", nodes=["a", "b", "c"], rewards=[1.0, 0.0, 1.0], advantages=[0.5, -1.0, 0.5]),
        GroupEvent(step=step, prompt="b0.g1", nodes=["d", "e"], rewards=[0.0, 0.0], kept=False, rule="all_wrong"),
    ]


def test_grid_greys_a_dropped_group_names_its_rule_and_counts_each_row():
    fig = views.batch_grid(fold(batch_events()))
    kept, dropped = fig.data
    assert kept.name == "kept" and dropped.name == "dropped"
    # the kept group is coloured by its rewards; the dropped one only in the grey layer
    assert list(kept.z[0]) == [1.0, 0.0, 1.0] and all(v is None for v in kept.z[1])
    assert all(v is None for v in dropped.z[0]) and list(dropped.z[1]) == [1.0, 1.0, None]
    assert {c for c in dropped.colorscale[0][1:] + dropped.colorscale[1][1:]} == {views.GREY}
    notes = [a.text for a in fig.layout.annotations]
    assert notes == ["dropped: all_wrong"]
    rows = list(kept.y)
    assert "(n=3)" in rows[0] and "(n=2)" in rows[1]  # unequal counts per prompt
    assert "&lt;b&gt;3&lt;/b&gt;" in rows[0] and "<b>" not in rows[0]  # prompt text escaped
    assert "1/2 groups kept" in fig.layout.title.text


def test_grid_shows_only_the_newest_batch():
    events = batch_events(0) + [GroupEvent(step=1, prompt="b0.g1", nodes=["x"], rewards=[1.0])]
    fig = views.batch_grid(fold(events))
    assert len(fig.data[0].y) == 1 and not fig.layout.annotations


def test_curves_read_update_and_eval_events():
    events = [
        EvalEvent(step=0, metrics={"accuracy_t1": 0.25, "accuracy_greedy": 0.5, "n": 4}),
        UpdateEvent(step=1, metrics={"loss": -0.1, "kl": 0.01, "spent_samples": 4, "spent_tokens": 40}),
        EvalEvent(step=1, metrics={"accuracy_t1": 0.5, "accuracy_greedy": 0.75, "n": 4}),
        UpdateEvent(step=2, metrics={"loss": -0.2, "kl": 0.03, "spent_samples": 8, "spent_tokens": 90}),
    ]
    view = fold(events)
    series = {trace.name: (list(trace.x), list(trace.y)) for trace in views.curves(view).data}
    assert series["greedy"] == ([0, 1], [0.5, 0.75])
    assert series["T=1"] == ([0, 1], [0.25, 0.5])
    assert series["KL"] == ([1, 2], [0.01, 0.03])
    assert series["loss"] == ([1, 2], [-0.1, -0.2])
    assert series["samples"] == ([1, 2], [4, 8])
    assert views.status_line(view, 3.0, running=True).startswith("running… 2 updates, 8 samples, 90 tokens")


def test_status_line_escapes_the_done_message():
    view = fold([DoneEvent(picks=[], candidates=[], status="cancelled", message="<script>x</script>",
                           metrics={"samples": 4, "tokens": 30}, cost={})])
    line = views.status_line(view, 1.0, running=False)
    assert "<script>" not in line and "4 samples, 30 tokens" in line and "cancelled" in line


def test_empty_run_has_placeholder_figures():
    view = views.TrainingView()
    assert views.batch_grid(view).data == () and views.curves(view).data == ()


def test_rollout_only_run_draws_kept_share_and_drop_rules_and_says_no_updates():
    from engines.trace import CostEvent

    events = batch_events(0) + [
        CostEvent(cost={"batch": 1, "samples": 5, "tokens": 50, "batch_samples_drawn": 5, "batch_samples_kept": 3,
                        "batch_kept_share": 0.6}),
        GroupEvent(step=1, prompt="b0.g0", nodes=["x", "y"], rewards=[1.0, 1.0], kept=False, rule="all_right"),
        CostEvent(cost={"batch": 2, "samples": 7, "tokens": 66, "batch_samples_drawn": 2, "batch_samples_kept": 0,
                        "batch_kept_share": 0.0}),
        DoneEvent(picks=[], candidates=[], cost={}, status="budget", metrics={"mode": "rollouts_only", "samples": 7, "tokens": 66}),
    ]
    view = fold(events)
    assert view.rollouts_only and not view.updates
    fig = views.rollout_curves(view)
    series = {trace.name: (list(trace.x), list(trace.y)) for trace in fig.data}
    assert series["batch"] == ([5, 7], [0.6, 0.0])
    assert series["all so far"] == ([5, 7], [0.6, 3 / 7])
    assert dict(zip(*series["dropped groups"], strict=True)) == {"all_wrong": 1, "all_right": 1}
    line = views.status_line(view, 1.0, running=False)
    assert "2 batches (rollouts only, no updates), 7 samples, 66 tokens, kept 3/7 samples (43%)" in line
    assert views.rollout_curves(views.TrainingView()).layout.annotations[0].text == "no batch drawn yet"


def test_comparison_figure_draws_a_step_line_and_band_per_strategy_and_names_missing_metrics():
    from app.views.strategy_compare import comparison_figure, final_rows

    def point(strategy, metric, samples, mean, low, high):
        return {"strategy": strategy, "metric": metric, "samples": samples, "mean": mean, "ci_low": low,
                "ci_high": high, "seeds": 3}

    curves = [point("grpo", "accuracy_t1", 0, 0.4, 0.3, 0.5), point("grpo", "accuracy_t1", 8, 0.6, 0.5, 0.7),
              point("<b>x</b>", "accuracy_t1", 0, 0.4, 0.3, 0.5), point("grpo", "kept_share", 8, 1.0, 1.0, 1.0)]
    fig = comparison_figure(curves)
    means = [t for t in fig.data if t.mode == "lines+markers"]
    assert [(t.name, list(t.y)) for t in means] == [("grpo", [0.4, 0.6]), ("grpo", [1.0]), ("&lt;b&gt;x&lt;/b&gt;", [0.4])]
    assert [t.showlegend for t in means] == [True, False, True]  # each strategy once in the legend
    bands = [t for t in fig.data if t.fill == "tonexty"]
    assert [list(t.y) for t in bands][0] == [0.3, 0.5] and all(t.line.shape == "hv" for t in fig.data)
    missing = [a for a in fig.layout.annotations if a.text == "not measured in these runs"]
    assert len(missing) == 2  # greedy accuracy and KL have no curve
    finals = [{"strategy": "grpo", "seeds": 3, "accuracy_t1": curves[1]}]
    assert final_rows(finals) == [["grpo", 3, 0.6, "[0.500, 0.700]", None, "", None, None]]
    assert comparison_figure([]).layout.annotations[0].text == "no finished run yet"


# -- the rollout tree ------------------------------------------------------------------------------------------


def test_rollout_tree_draws_the_newest_tree_rpo_tree_with_its_leaf_rewards_and_node_values():
    """Real TreeRPO events (a batch's roots first, then each prompt's tree) on the enumerable toy."""
    from engines.training import build_strategy
    from engines.training.base import Allowance
    from engines.training.tree import VALUE
    from tests.training.test_tree_strategies import _setup, _toy_params, run

    policy, pool, reward = _setup(prompts=2)
    strategy = build_strategy("tree_rpo", {**_toy_params(), "prompts_per_batch": 2, "group_size": 2})
    events, _ = run(strategy, policy, pool, reward, Allowance(samples=64), seed=0)
    roots = [e.id for e in events if e.kind == "node" and e.parent is None]
    assert len(roots) == 2 and [e.kind for e in events[:2]] == ["node", "node"]  # roots come before their trees

    tree = views.RolloutTree()
    changed = [tree.add(e) for e in events]
    assert any(changed) and tree.newest == roots[-1]
    fig = tree.figure()
    drawn = [i for trace in fig.data if trace.mode == "markers" for i in trace.hovertext]
    below = {e.id for e in events if e.kind == "node" and e.parent is not None}
    mine = {roots[-1]}
    for e in events:  # the nodes of the newest tree only
        if e.kind == "node" and e.parent in mine:
            mine.add(e.id)
    assert len(drawn) == len(mine) and len(mine) < len(below) + 2
    values = {e.node: e.value for e in events if e.kind == "score" and e.reward == VALUE and e.node in mine}
    assert values, "inner nodes carry their values"
    for node, value in values.items():
        assert any(node in h and f"score {value:.4g}" in h for h in drawn)


def test_rollout_tree_ignores_flat_groups_and_keeps_only_the_last_roots():
    tree = views.RolloutTree(keep=2)
    flat = [NodeEvent(id="g0", parent=None, text="Q"), NodeEvent(id="g0.s0", parent="g0", text="a"),
            NodeEvent(id="g0.s1", parent="g0", text="b"), ScoreEvent(node="g0.s0", reward="math", value=1.0)]
    assert not any(tree.add(e) for e in flat) and tree.newest is None
    assert "no rollout tree yet" in tree.figure().layout.annotations[0].text
    # a diffusion update: its root, then trees below it (the images are data URIs the figure shows as thumbnails)
    update = [NodeEvent(id="u1", parent=None), NodeEvent(id="u1.t0", parent="u1", depth=1),
              NodeEvent(id="u1.t0.0", parent="u1.t0", depth=2), NodeEvent(id="u1.t0.1", parent="u1.t0", depth=2),
              ScoreEvent(node="u1.t0.0", reward="digit:3", value=0.25)]
    assert [tree.add(e) for e in update] == [False, False, True, True, True] and tree.newest == "u1"
    for root in ("u2", "u3"):  # two newer roots push u1 out: memory stays bounded
        tree.add(NodeEvent(id=root, parent=None))
    assert tree.newest is None and "u1" not in tree._events and "u1.t0.0" not in tree._root_of
    assert not tree.add(NodeEvent(id="u1.t0.2", parent="u1.t0", depth=2))  # a node of a forgotten tree is dropped
