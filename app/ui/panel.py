"""The live views of one run, as a reusable group of components.

Explore renders a growing trace into a :class:`ViewPanel`; Runs replays a
stored one into another. :meth:`ViewPanel.render` maps a trace snapshot to a
``{component: update}`` dict; views that do not apply to the run (no bracket
without matches, no particles without resampling) are hidden.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.views import trace as views
from app.views.pairs import trace_pairs_figure
from app.views.render import image_tag, text, verbatim
from engines.trace import Trace


class ViewPanel:
    def __init__(self, prefix: str) -> None:
        with gr.Row():
            self.tree = gr.Plot(label="Candidate tree", elem_id=f"{prefix}-tree")
            self.rewards = gr.Plot(label="Reward distribution", elem_id=f"{prefix}-rewards")
        with gr.Row():
            self.bracket = gr.Plot(label="Knockout bracket", visible=False, elem_id=f"{prefix}-bracket")
            self.particles = gr.Plot(label="Particles", visible=False, elem_id=f"{prefix}-particles")
            self.acceptance = gr.Plot(label="Acceptance", visible=False, elem_id=f"{prefix}-acceptance")
        self.images = gr.HTML(visible=False, elem_id=f"{prefix}-images")
        with gr.Row():
            with gr.Column(scale=3):
                self.table = gr.Dataframe(
                    headers=views.CANDIDATE_HEADERS,
                    datatype=["str", "str", "number", "number", "str", "str"],
                    label="Candidates (click a row to read it; sort by any column)",
                    interactive=False,
                    wrap=True,
                    max_height=420,
                    column_widths=["7%", "8%", "11%", "10%", "12%", "52%"],  # room for the text; no headers wrapped letter by letter
                    elem_id=f"{prefix}-candidates",
                )
            with gr.Column(scale=2):
                self.cost = gr.Markdown(elem_id=f"{prefix}-cost")
                self.detail = gr.HTML(elem_id=f"{prefix}-detail", elem_classes=["candidate-text"])

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [self.tree, self.rewards, self.bracket, self.particles, self.acceptance, self.images, self.table, self.cost, self.detail]

    def render(self, trace: Trace, status: str | None = None, *, detail: bool = True) -> dict[Any, Any]:
        rows = views.candidate_rows(trace)
        updates: dict[Any, Any] = {
            self.tree: views.tree_figure(trace),
            self.rewards: trace_pairs_figure(trace),  # a preference pair's run draws the pair on the grid
            self.bracket: gr.update(value=views.bracket_figure(trace), visible=bool(trace.matches)),
            self.particles: gr.update(value=views.particles_figure(trace), visible=bool(trace.resamples)),
            self.acceptance: gr.update(value=views.acceptance_figure(trace), visible=bool(trace.accepts)),
            self.images: gr.update(value=image_grid(trace) + views.particle_grid_html(trace), visible=any(n.image for n in trace.nodes.values())),
            self.table: rows,
            self.cost: views.cost_markdown(trace.cost, status),
        }
        if detail:
            updates[self.detail] = candidate_html(trace, trace.selected[0] if trace.selected else None)
        return updates

    def clear(self) -> dict[Any, Any]:
        return self.render(Trace(), None)


def candidate_html(trace: Trace, node_id: str | None) -> str:
    """A candidate's full text, verbatim (or its image), with its rewards."""
    if node_id is None or node_id not in trace.nodes:
        return "<p><em>Pick a candidate in the table to read it here.</em></p>"
    node = trace.nodes[node_id]
    rewards = trace.scores.get(node_id, {})
    head = ", ".join(f"{text(name)} = {_number(value)}" for name, value in rewards.items())
    head = head or views.pairwise_only_note(trace) or "no reward"  # the note is escaped already
    picked = " — <strong>picked</strong>" if node_id in trace.selected else ""
    body = image_tag(node.image, 128) if node.image else verbatim(trace.full_text(node_id))
    return f"<p><code>{text(node_id)}</code>{picked}<br><small>{head}</small></p>{body}"


def image_grid(trace: Trace, limit: int = 64) -> str:
    """Final images ranked by reward, each with its reward under it."""
    rows = [r for r in trace.reward_table() if r["image"]]
    if not rows:
        return ""
    rows.sort(key=lambda r: -(r["reward"] if r["reward"] is not None else float("-inf")))
    cells = []
    for r in rows[:limit]:
        reward = "-" if r["reward"] is None else f"{r['reward']:.3f}"
        border = "3px solid #d62728" if r["picked"] else "1px solid #ddd"
        cells.append(
            f'<figure style="margin:4px;display:inline-block;text-align:center;border:{border};padding:2px">'
            f"{image_tag(r['image'], 64, r['id'])}<figcaption><small>{text(r['id'])} {reward}</small></figcaption></figure>"
        )
    return "<p><strong>Final images, ranked by reward</strong></p><div>" + "".join(cells) + "</div>"


def _number(value: object) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return text(value)
