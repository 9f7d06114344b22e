"""Pictures of a training run (engines.training.loop): pure functions from its events to plotly figures.

:class:`TrainingView` folds the run's events (sample ``node``s, ``group``s, ``update``s,
``eval``s, ``done``) into what the Train (RL) tab draws: the latest batch as a prompts x
samples grid coloured by reward (:func:`batch_grid`; a dropped group greyed and labelled
with the rule that dropped it, each row with its own sample count, since Reinforce-Ada
draws unequal counts), the curves of held-out accuracy, KL, loss and samples spent
(:func:`curves`) and a one-line status (:func:`status_line`). A rollout-only run
(engines.training.rollouts_only: ``cost`` events per batch, no update) is drawn by
:func:`rollout_curves`: the share of samples each batch kept against samples spent, and the
groups dropped by each rule. :class:`RolloutTree` keeps the newest rollout *tree* (TreeRPO,
TreeRL and the diffusion ``tree`` / ``branch`` schemes link their segments by parent ids and
score inner nodes with their values) for the shared candidate-tree figure
(:func:`app.views.trace.tree_figure`). Prompt text reaches a figure
only through :func:`app.views.render.plain` (escaped), other strings through ``md_text``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views.render import md_text, plain
from app.views.trace import GREY, _layout, empty, tree_figure
from engines.trace import Event, GroupEvent, Trace
from engines.training.rollouts_only import kept_summary

REWARD_SCALE = "RdYlGn"


@dataclass
class TrainingView:
    """What the tab shows of a run, folded from its events (stored ones replayed on resume included)."""

    texts: dict[str, str] = field(default_factory=dict)  # node id -> its text (a prompt for a root)
    groups: list[GroupEvent] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # metrics, with "step"
    evals: list[dict[str, Any]] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)  # a rollout-only run's per-batch spend and kept share
    done: Any = None

    @property
    def rollouts_only(self) -> bool:
        return bool(self.costs) or (self.done is not None and self.done.metrics.get("mode") == "rollouts_only")

    def add(self, event: Event) -> bool:
        """Fold one event in; True when it changes a figure (a sample's score alone does not)."""
        kind = event.kind
        if kind == "node":
            if event.parent is None:
                self.texts[event.id] = event.text
            return False
        if kind == "group":
            self.groups.append(event)
        elif kind == "update":
            self.updates.append({"step": event.step, **event.metrics})
        elif kind == "eval":
            self.evals.append({"step": event.step, **event.metrics})
        elif kind == "cost" and "batch" in event.cost:
            self.costs.append(dict(event.cost))
        elif kind == "done":
            self.done = event
        else:
            return False
        return True

    def batch(self) -> list[GroupEvent]:
        """The groups of the newest batch (the one being drawn, or the last one trained on)."""
        if not self.groups:
            return []
        step = self.groups[-1].step
        return [g for g in self.groups if g.step == step]


@dataclass
class RolloutTree:
    """The newest rollout tree of a run, for :func:`figure`.

    Tree strategies emit a root ``node`` (parent None) per tree (text: one per prompt, all of a
    batch's roots before their trees; diffusion: one per update, its trees below it), then each
    segment as a ``node`` with its parent and ``score`` events: rewards at the leaves, values
    (partial) at inner nodes. A root whose nodes go deeper than one level is a tree; a flat
    group (GRPO's samples, all children of the prompt) is not and is not drawn. Only the last
    ``keep`` roots are held, so a long run's memory stays bounded.
    """

    keep: int = 64
    newest: str | None = None  # the root of the newest tree that branches below its first level
    _events: dict[str, list[Event]] = field(default_factory=dict)  # root id -> its events, root first
    _root_of: dict[str, str] = field(default_factory=dict)  # node id -> its root id

    def add(self, event: Event) -> bool:
        """Fold one event in; True when the drawn tree changed."""
        if event.kind == "node":
            if event.parent is None:
                self._events[event.id] = [event]
                self._root_of[event.id] = event.id
                self._forget_old_roots()
                return False
            root = self._root_of.get(event.parent)
            if root is None:
                return False
            self._root_of[event.id] = root
            self._events[root].append(event)
            if event.parent != root:
                self.newest = root
                return True
            return root == self.newest
        if event.kind == "score":
            root = self._root_of.get(event.node)
            if root is not None:
                self._events[root].append(event)
                return root == self.newest
        return False

    def _forget_old_roots(self) -> None:
        while len(self._events) > self.keep:
            old = next(iter(self._events))
            del self._events[old]
            self._root_of = {node: root for node, root in self._root_of.items() if root != old}
            if self.newest == old:
                self.newest = None

    def figure(self, title: str = "Rollout tree (newest): leaf rewards, node values") -> go.Figure:
        if self.newest is None:
            return empty(title, "no rollout tree yet: tree strategies (tree_rpo, tree_rl; diffusion tree, branch) draw one")
        return tree_figure(Trace(self._events[self.newest]), title)


def _row_label(view: TrainingView, group: GroupEvent) -> str:
    prompt = " ".join(view.texts.get(group.prompt, group.prompt).split())
    return f"{plain(prompt, 40)} (n={len(group.rewards)})"


def batch_grid(view: TrainingView, title: str = "Batch: prompts x samples, coloured by reward") -> go.Figure:
    """The newest batch as a heatmap: one row per prompt group, one cell per sample.

    Kept groups are coloured by reward; a dropped group's cells are grey and its row names the
    rule that dropped it. Rows have as many cells as the group drew (shorter rows end blank).
    """
    groups = view.batch()
    if not groups:
        return empty(title, "no batch drawn yet")
    width = max(len(g.rewards) for g in groups)
    rows = [f"{i + 1}. {_row_label(view, g)}" for i, g in enumerate(groups)]
    kept_z, dropped_z, hover = [], [], []
    for g in groups:
        cells = list(g.rewards) + [None] * (width - len(g.rewards))
        kept_z.append(cells if g.kept else [None] * width)
        dropped_z.append([None] * width if g.kept else [1.0] * len(g.rewards) + [None] * (width - len(g.rewards)))
        hover.append([
            f"sample {j + 1}: reward {v:.3g}" + (f", advantage {g.advantages[j]:.3g}" if j < len(g.advantages) else "")
            + ("" if g.kept else f"<br>dropped: {plain(g.rule or 'dropped', 80)}")
            if v is not None else "" for j, v in enumerate(cells)
        ])
    samples = [f"s{j + 1}" for j in range(width)]
    rewards = [v for g in groups for v in g.rewards]
    low, high = min(rewards), max(rewards)
    if low == high:
        low, high = low - 0.5, high + 0.5
    fig = go.Figure()
    fig.add_trace(go.Heatmap(
        z=kept_z, x=samples, y=rows, text=hover, hoverinfo="text", name="kept", colorscale=REWARD_SCALE,
        zmin=low, zmax=high, xgap=2, ygap=2, colorbar={"title": {"text": "reward"}},
    ))
    fig.add_trace(go.Heatmap(
        z=dropped_z, x=samples, y=rows, text=hover, hoverinfo="text", name="dropped",
        colorscale=[[0, GREY], [1, GREY]], zmin=0, zmax=1, showscale=False, xgap=2, ygap=2,
    ))
    for row, g in zip(rows, groups, strict=True):
        if not g.kept:
            fig.add_annotation(x=samples[-1], y=row, xanchor="left", xshift=18, showarrow=False,
                               text=f"dropped: {plain(g.rule or 'dropped', 60)}", font={"color": "#666", "size": 11})
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    kept = sum(g.kept for g in groups)
    _layout(fig, f"{title} — update {groups[0].step + 1}: {kept}/{len(groups)} groups kept", height=max(220, 60 + 28 * len(groups)))
    return fig.update_layout(margin={"r": 180})  # room for the rule of a dropped row


#: (panel title, series: (legend name, event list, metric key)), in the order of the 2x2 grid
PANELS = (
    ("Held-out accuracy", (("greedy", "evals", "accuracy_greedy"), ("T=1", "evals", "accuracy_t1"))),
    ("KL to the initial policy", (("KL", "updates", "kl"),)),
    ("Loss", (("loss", "updates", "loss"),)),
    ("Samples spent", (("samples", "updates", "spent_samples"),)),
)


def curves(view: TrainingView, title: str = "Training curves (x: update)") -> go.Figure:
    """Held-out accuracy (greedy and T=1) from ``eval`` events; KL, loss and samples spent from ``update`` events."""
    return panel_curves(view, PANELS, title)


def panel_curves(view: Any, panels: tuple, title: str) -> go.Figure:
    """A 2x2 grid of ``panels`` ((title, ((legend name, "updates"/"evals", metric key), ...)), ...) against
    the update step, read from a view's ``updates`` and ``evals`` lists."""
    if not view.updates and not view.evals:
        return empty(title, "no update yet")
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[0] for p in panels], vertical_spacing=0.18)
    for index, (_, series) in enumerate(panels):
        row, col = index // 2 + 1, index % 2 + 1
        for name, source, key in series:
            points = [(m["step"], m[key]) for m in getattr(view, source) if m.get(key) is not None]
            if points:
                fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=name,
                                         mode="lines+markers"), row=row, col=col)
    return _layout(fig, title, height=520, showlegend=True)


def rollout_curves(view: TrainingView, title: str = "Rollouts only (no updates): what the strategy keeps") -> go.Figure:
    """A rollout-only run: the share of each batch's samples kept (and the running share) against samples
    spent, and how many groups each rule dropped."""
    if not view.costs:
        return empty(title, "no batch drawn yet")
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Kept share of samples", "Groups dropped, by rule"])
    x = [c["samples"] for c in view.costs]
    per_batch = [c.get("batch_kept_share") for c in view.costs]
    kept = drawn = 0.0
    running = []
    for c in view.costs:
        kept, drawn = kept + c.get("batch_samples_kept", 0), drawn + c.get("batch_samples_drawn", 0)
        running.append(kept / drawn if drawn else None)
    fig.add_trace(go.Scatter(x=x, y=per_batch, name="batch", mode="markers"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=running, name="all so far", mode="lines"), row=1, col=1)
    rules = kept_summary(view.groups)["drop_rules"]
    fig.add_trace(go.Bar(x=[plain(r, 40) for r in rules] or ["none"], y=list(rules.values()) or [0], name="dropped groups",
                         marker={"color": GREY}), row=1, col=2)
    fig.update_xaxes(title="samples spent", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=1)
    return _layout(fig, title, height=360, showlegend=True)


def status_line(view: TrainingView, elapsed: float, running: bool) -> str:
    """Samples and tokens spent, updates done (batches and the kept share for a rollout-only run), elapsed
    time; the outcome once done (Markdown, escaped)."""
    spent = view.updates[-1] if view.updates else {}
    samples, tokens = spent.get("spent_samples", 0), spent.get("spent_tokens", 0)
    if view.costs:
        samples, tokens = view.costs[-1]["samples"], view.costs[-1]["tokens"]
    if view.done is not None:
        samples, tokens = view.done.metrics.get("samples", samples), view.done.metrics.get("tokens", tokens)
    if view.rollouts_only:
        summary = kept_summary(view.groups)
        drawn, kept = summary["samples_drawn"], summary["samples_kept"]
        share = f" ({kept / drawn:.0%})" if drawn else ""
        text = (f"{len(view.costs)} batches (rollouts only, no updates), {samples:,} samples, {tokens:,} tokens, "
                f"kept {kept:,}/{drawn:,} samples{share}; {elapsed:.1f} s")
    else:
        text = f"{len(view.updates)} updates, {samples:,} samples, {tokens:,} tokens; {elapsed:.1f} s"
    if running or view.done is None:
        return f"running… {text}"
    note = f" — {md_text(view.done.message, 300)}" if view.done.message else ""
    return f"**{md_text(view.done.status)}**: {text}{note}"
