"""The Data tab's "Train a reward from these votes" section, and the label-quality table.

Training streams :func:`app.workflows.reward_training.train_reward`: a progress bar and
a live plot of held-out agreement per cross-validation fold while it fits,
then the card's numbers against the stored rewards and the annotators' own
agreement. Every stored string shown here (annotator names, reward names,
error lines) is escaped.
"""

from __future__ import annotations

import html
import time
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from app.ui.services import Services, error_message
from app.views.trace import _layout, empty


def _cell(text: Any) -> str:
    """A Markdown table cell from untrusted text: HTML-escaped, pipes and line breaks neutralised."""
    return html.escape(str(text)).replace("|", "&#124;").replace("\n", " ")


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def progress_html(fraction: float, label: str) -> str:
    percent = max(0.0, min(100.0, 100 * fraction))
    return (
        '<div class="train-progress" style="border:1px solid #ccc;border-radius:4px;height:14px;width:100%">'
        f'<div style="background:#1f77b4;height:100%;width:{percent:.1f}%"></div></div>'
        f"<small>{html.escape(label)} · {percent:.0f}%</small>"
    )


def curve_figure(points: dict[int, list[tuple[int, float]]], final: dict[str, Any] | None = None) -> go.Figure:
    """Held-out agreement against training epoch, one line per fold (the fold's prompts unseen)."""
    if not points:
        return empty("Held-out agreement while training", "no held-out votes scored yet")
    fig = go.Figure()
    for fold, rows in sorted(points.items()):
        fig.add_trace(go.Scatter(x=[e for e, _ in rows], y=[a for _, a in rows], mode="lines", name=f"fold {fold}"))
    if final:
        held, ceiling = final["heldout"], final.get("annotator_ceiling") or {}
        if held.get("rate") is not None:
            fig.add_hline(y=held["rate"], line={"color": "#1f77b4", "dash": "dash"},
                          annotation_text=f"pooled {held['rate']:.3f} [{held['low']:.3f}, {held['high']:.3f}]")
        if ceiling.get("rate") is not None:
            fig.add_hline(y=ceiling["rate"], line={"color": "#2ca02c", "dash": "dot"}, annotation_text="annotators' agreement")
    fig.add_hline(y=0.5, line={"color": "#888", "dash": "dot"})
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="held-out pairwise accuracy", range=[0, 1])
    return _layout(fig, "Held-out agreement while training", height=320)


def learning_curve_figure(card: dict[str, Any]) -> go.Figure:
    """Held-out accuracy against votes used (95% intervals), with the ceiling and the stored rewards."""
    metrics = card["metrics"]
    points = [p for p in metrics.get("learning_curve", []) if p.get("rate") is not None]
    if not points:
        return empty("Learning curve", "no learning curve for this reward")
    fig = go.Figure(go.Scatter(
        x=[p["votes"] for p in points], y=[p["rate"] for p in points], mode="lines+markers", name="this reward",
        error_y={"type": "data", "symmetric": False, "array": [p["high"] - p["rate"] for p in points],
                 "arrayminus": [p["rate"] - p["low"] for p in points]},
    ))
    ceiling = (metrics.get("annotator_ceiling") or {}).get("rate")
    if ceiling is not None:
        fig.add_hline(y=ceiling, line={"color": "#2ca02c", "dash": "dot"}, annotation_text="annotators' agreement")
    for name, p in (metrics.get("baselines", {}).get("by_reward") or {}).items():
        if p.get("rate") is not None:
            fig.add_hline(y=p["rate"], line={"color": "#d62728", "dash": "dash"}, annotation_text=html.escape(name))
    fig.update_xaxes(title="training votes per fold")
    fig.update_yaxes(title="held-out pairwise accuracy", range=[0, 1])
    return _layout(fig, "Learning curve", height=320)


def card_markdown(card: dict[str, Any]) -> str:
    votes, metrics = card["votes"], card["metrics"]
    held, ceiling = metrics["heldout"], metrics.get("annotator_ceiling") or {}
    cv = card.get("cross_validation", {})
    lines = [
        f"**learned:{_cell(card['name'])}** on `{_cell(card['base'])}` — use it as a reward anywhere as "
        f"`learned:{_cell(card['name'])}` (or `pairwise:learned:{_cell(card['name'])}`).",
        "",
        f"Votes: {votes['used']} used ({votes['decisive']} decisive, {votes['ties']} ties as half-wins); "
        f"{votes['both_bad_excluded']} both-bad and {votes['repeats_excluded']} repeats left out; "
        f"{votes['dropped_votes']} votes dropped from {len(votes['dropped_annotators'])} annotators below the threshold.",
        "",
        "| | agreement with held-out votes | 95% interval | votes |",
        "|---|---:|---:|---:|",
        f"| this reward ({cv.get('folds')} folds by {_cell(cv.get('grouped_by'))}) | {_fmt(held['rate'])} | "
        f"{_fmt(held['low'])} – {_fmt(held['high'])} | {held['n']} |",
        f"| annotators with each other (ceiling) | {_fmt(ceiling.get('rate'))} | {_fmt(ceiling.get('low'))} – "
        f"{_fmt(ceiling.get('high'))} | {ceiling.get('n', 0)} pairs |",
    ]
    for name, p in (metrics.get("baselines", {}).get("by_reward") or {}).items():
        lines.append(f"| stored reward {_cell(name)} | {_fmt(p['rate'])} | {_fmt(p['low'])} – {_fmt(p['high'])} | {p['n']} |")
    curve = metrics.get("learning_curve", [])
    if curve:
        lines += ["", "Learning curve: " + ", ".join(f"{p['votes']:.0f} votes → {_fmt(p['rate'])}" for p in curve)]
    return "\n".join(lines)


def quality_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"**Label quality** — gold pairs {len(summary['gold_ids'])}, side-swapped repeats {len(summary['repeat_ids'])}, "
        f"Krippendorff's α {_fmt(summary['krippendorff_alpha'])}",
        "",
    ]
    rows = summary["annotators"]
    if not rows:
        return "\n".join(lines + ["No votes yet."])
    lines += ["| annotator | votes | agreement with others | mean κ | gold accuracy | left side wins | self-consistent |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gold = r["gold"]
        lines.append(
            f"| {_cell(r['annotator'])} | {r['votes']} | {_fmt(r['agreement'])} | {_fmt(r['kappa'])} | "
            f"{_fmt(gold['rate'])} ({gold['n']}) | {_fmt(r['position_bias']['rate'])} | "
            f"{_fmt(r['self_consistency']['rate'])} ({r['self_consistency']['n']}) |"
        )
    return "\n".join(lines)


class TrainSection:
    """Built inside the Data tab: quality table, training form, progress, live plot, result."""

    def __init__(self, services: Services) -> None:
        self.services = services
        gr.Markdown("### Label quality")
        self.quality = gr.Markdown(elem_id="data-quality")
        self.quality_refresh = gr.Button("Refresh quality", scale=0, elem_id="quality-refresh")
        gr.Markdown("### Train a reward from these votes")
        with gr.Row():
            self.name = gr.Textbox(label="Name", placeholder="my-reward", elem_id="train-name")
            self.votes = gr.Textbox(label="Votes (filter)", placeholder="annotator=alice,strategy=random", elem_id="train-votes")
            self.base = gr.Textbox(label="Base model", placeholder="auto: embedded:smollm2 / embedded:digits", elem_id="train-base")
        with gr.Row():
            self.hidden = gr.Number(label="Hidden units (0: linear head)", value=0, precision=0, minimum=0, maximum=4096)
            self.group_by = gr.Radio(["prompt", "annotator"], value="prompt", label="Cross-validate by")
            self.min_agreement = gr.Number(label="Drop annotators below agreement (blank: keep all)", value=None)
            self.start = gr.Button("Train", variant="primary", scale=0, elem_id="train-start")
        self.progress = gr.HTML(elem_id="train-progress")
        with gr.Row():
            self.plot = gr.Plot(label="Held-out agreement", elem_id="train-plot")
            self.curve = gr.Plot(label="Learning curve", elem_id="train-curve")
        self.result = gr.Markdown(elem_id="train-result")
        self.quality_refresh.click(self.refresh_quality, [], [self.quality])
        self.start.click(
            self.train, [self.name, self.votes, self.base, self.hidden, self.group_by, self.min_agreement],
            [self.progress, self.plot, self.curve, self.result],
        )

    def refresh_quality(self) -> dict[Any, Any]:
        from storage.quality import quality_summary

        try:
            return {self.quality: quality_markdown(self.services.db.read(quality_summary))}
        except Exception as exc:
            return {self.quality: f"⚠ {_cell(error_message(exc))}"}

    def train(self, name: str, votes: str, base: str, hidden: Any, group_by: str, min_agreement: Any):
        from app.workflows.reward_training import train_reward
        from engines.models import load_model
        from engines.rewards.bt_fit import FitConfig, Progress

        points: dict[int, list[tuple[int, float]]] = {}
        last = 0.0

        def loader(spec: str) -> Any:
            return load_model(spec, device=self.services.device, dtype=self.services.dtype)

        try:
            config = FitConfig(hidden=int(hidden or 0))
            items = train_reward(
                self.services.db, (name or "").strip(), votes=votes or None, base=(base or "").strip() or None,
                group_by=group_by or "prompt", config=config, load_model=loader,
                min_agreement=None if min_agreement in (None, "") else float(min_agreement),
            )
            yield {self.progress: progress_html(0.0, "checking the votes and loading the base model"), self.result: ""}
            for item in items:
                if isinstance(item, Progress):
                    if item.stage == "cv" and item.heldout_accuracy is not None:
                        points.setdefault(item.fold, []).append((item.epoch, item.heldout_accuracy))
                    now = time.monotonic()
                    if now - last >= max(self.services.update_interval, 0.0):
                        last = now
                        label = {"cv": f"cross-validation fold {item.fold}/{item.folds}", "curve": "learning curve",
                                 "final": "fitting on all votes"}[item.stage]
                        yield {self.progress: progress_html(item.fraction_done, label), self.plot: curve_figure(points)}
                else:
                    yield {
                        self.progress: progress_html(1.0, f"stored in {item.folder}"),
                        self.plot: curve_figure(points, item.card["metrics"]),
                        self.curve: learning_curve_figure(item.card),
                        self.result: card_markdown(item.card),
                    }
        except Exception as exc:
            yield {self.progress: "", self.result: f"⚠ {_cell(error_message(exc))}"}
