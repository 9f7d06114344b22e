"""The Data tab: counts, agreement and rankings as charts, and the exports as downloads.

Exports are filtered by modality (text pairs only, image pairs only), model and
sampler (``storage.exports.RecordFilter``), so a DPO file for a language model
carries no image comparison with empty text. The tab refreshes itself when it
is opened: votes cast and runs stored in other tabs show without a reload.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from app.ui.services import Services, error_message
from app.views.render import md_text, plain
from app.views.trace import _layout, empty

ALL = "(all)"
FORMATS = [("DPO pairs (JSONL)", "dpo", ".jsonl"), ("DPO pairs (Parquet)", "dpo", ".parquet"),
           ("KTO rows (JSONL)", "kto", ".jsonl"), ("Battles (JSONL)", "battles", ".jsonl"),
           ("Image pairs, Pick-a-Pic (Parquet)", "pickapic", ".parquet")]


def ranking_figure(stats: dict) -> go.Figure:
    players = stats["ranking"]["players"]
    if not players:
        return empty("Bradley-Terry ranking", "no decisive votes between samplers yet")
    names = [plain(p["name"], 60) for p in players][::-1]
    ratings = [p["rating"] for p in players][::-1]
    lows = [p["low"] if p["low"] is not None else p["rating"] for p in players][::-1]
    highs = [p["high"] if p["high"] is not None else p["rating"] for p in players][::-1]
    fig = go.Figure(go.Scatter(
        x=ratings, y=names, mode="markers", marker={"size": 11, "color": "#1f77b4"},
        error_x={"type": "data", "symmetric": False, "array": [h - r for h, r in zip(highs, ratings, strict=True)],
                 "arrayminus": [r - lo for r, lo in zip(ratings, lows, strict=True)]},
        hovertext=[f"{plain(p['name'], 80)}: {p['rating']:.0f} ({p['battles']} battles)" for p in players][::-1], hoverinfo="text",
    ))
    fig.update_xaxes(title=f"rating (Elo scale), 95% bootstrap interval ({stats['ranking']['bootstrap']} resamples)")
    return _layout(fig, f"Bradley-Terry ranking by {plain(stats['ranking']['by'], 20)}", height=max(220, 60 * len(names) + 80))


def agreement_figure(stats: dict) -> go.Figure:
    bars = []
    overall = stats["reward_agreement"]["overall"]
    if overall["rate"] is not None:
        bars.append(("reward vs humans", overall))
    for name, prop in stats["reward_agreement"].get("by_reward", {}).items():
        if prop["rate"] is not None:
            bars.append((f"  {plain(name, 60)}", prop))
    bias = stats["position_bias"]
    if bias.get("rate") is not None:
        bars.append(("left side wins", bias))
    if not bars:
        return empty("Agreement", "no decisive votes yet")
    fig = go.Figure(go.Bar(
        x=[b[1]["rate"] for b in bars], y=[b[0] for b in bars], orientation="h", marker={"color": "#8fb3d9"},
        error_x={"type": "data", "symmetric": False, "array": [b[1]["high"] - b[1]["rate"] for b in bars],
                 "arrayminus": [b[1]["rate"] - b[1]["low"] for b in bars]},
        hovertext=[f"{b[1]['successes']}/{b[1]['n']}" for b in bars], hoverinfo="text+x",
    ))
    fig.add_vline(x=0.5, line={"dash": "dot", "color": "#888"})
    fig.update_xaxes(range=[0, 1], title="share (95% Wilson interval)")
    return _layout(fig, "Reward-model agreement and position bias", height=max(220, 45 * len(bars) + 80))


def annotator_markdown(stats: dict) -> str:
    agreement = stats["annotator_agreement"]
    alpha = agreement.get("krippendorff_alpha")
    lines = [f"**Krippendorff's α** (nominal, all annotators): {'n/a' if alpha is None else f'{alpha:.3f}'}", ""]
    pairs = agreement.get("pairs", [])
    if pairs:
        lines += ["| annotators | shared | raw agreement | Cohen's κ |", "|---|---:|---:|---:|"]
        for p in pairs:
            kappa = "n/a" if p["kappa"] is None else f"{p['kappa']:.3f}"
            lines.append(f"| {md_text(p['annotators'][0])} · {md_text(p['annotators'][1])} | {p['n']} | {p['agreement']:.2f} | {kappa} |")
    else:
        lines.append("No comparison has votes from two annotators yet.")
    return "\n".join(lines)


class DataTab:
    def __init__(self, services: Services) -> None:
        self.services = services
        with gr.Tab("Data", id="data") as self.tab:
            with gr.Row():
                self.by = gr.Radio(["sampler", "model"], value="sampler", label="Rank")
                self.refresh = gr.Button("Refresh", scale=0, elem_id="data-refresh")
            self.counts = gr.Markdown(elem_id="data-counts")
            with gr.Row():
                self.ranking = gr.Plot(label="Ranking", elem_id="data-ranking")
                self.agreement = gr.Plot(label="Agreement", elem_id="data-agreement")
            self.annotators = gr.Markdown(elem_id="data-annotators")
            gr.Markdown("### Exports")
            with gr.Row():
                self.modality = gr.Radio([("text pairs", "text"), ("image pairs", "image"), ("both", ALL)], value="text",
                                         label="Modality", elem_id="data-modality")
                self.model = gr.Dropdown([ALL], value=ALL, label="Model (on a side)", elem_id="data-model")
                self.sampler = gr.Dropdown([ALL], value=ALL, label="Sampler (on a side)", elem_id="data-sampler")
            with gr.Row():
                self.export_buttons = [gr.Button(label, elem_id=f"export-{fmt}{ext.replace('.', '-')}") for label, fmt, ext in FORMATS]
            self.file = gr.File(label="Download", interactive=False, elem_id="data-file")
            self.note = gr.Markdown(elem_id="data-note")
            from app.ui.pairs import PairsSection  # building training pairs lives in its own module
            from app.ui.train import TrainSection  # training and label quality live in their own module

            self.pairs = PairsSection(services)
            self.train = TrainSection(services)
            from app.ui.audit import AuditSection  # the reward audit shares the workflow with the CLI

            self.audit = AuditSection(services)
        outputs = [self.counts, self.ranking, self.agreement, self.annotators]
        self.refresh.click(self.stats, [self.by], outputs)
        self.by.change(self.stats, [self.by], outputs)
        self.refresh.click(self.train.refresh_quality, [], [self.train.quality])
        self.tab.select(self.stats, [self.by], outputs, show_progress="hidden").then(
            self.filter_choices, [], [self.model, self.sampler], show_progress="hidden")
        filters = [self.by, self.modality, self.model, self.sampler]
        for button, (_, fmt, ext) in zip(self.export_buttons, FORMATS, strict=True):
            button.click(lambda by, modality, model, sampler, fmt=fmt, ext=ext: self.export(fmt, ext, by, modality, model, sampler),
                         filters, [self.file, self.note])

    def filter_choices(self) -> dict[Any, Any]:
        """The models and samplers of the stored runs, for the export filters."""
        from storage import list_runs

        try:
            runs = self.services.db.read(lambda s: list_runs(s, limit=1000))
        except Exception as exc:
            return {self.note: f"⚠ {md_text(error_message(exc), 600)}"}
        return {self.model: gr.update(choices=[ALL, *sorted({r.model for r in runs})]),
                self.sampler: gr.update(choices=[ALL, *sorted({r.sampler for r in runs})])}

    def stats(self, by: str = "sampler") -> dict[Any, Any]:
        from storage import summary

        try:
            report = self.services.db.check()
            stats = self.services.db.read(lambda s: summary(s, by=by, bootstrap=200))
        except Exception as exc:
            return {self.counts: f"⚠ {md_text(error_message(exc), 600)}"}
        counts = ", ".join(f"{n:,} {md_text(table)}" for table, n in report.counts.items())
        outcomes = ", ".join(f"{md_text(k)} {md_text(v)}" for k, v in stats["outcomes"].items())
        return {
            self.counts: f"**Stored:** {counts}.  \n**Votes:** {stats['votes']} current ({outcomes}).",
            self.ranking: ranking_figure(stats),
            self.agreement: agreement_figure(stats),
            self.annotators: annotator_markdown(stats),
        }

    def export(self, fmt: str, ext: str, by: str, modality: str = ALL, model: str = ALL, sampler: str = ALL) -> dict[Any, Any]:
        from storage import export
        from storage.exports import RecordFilter

        def pick(value):
            return None if value in (None, "", ALL) else value

        if fmt == "pickapic":  # Pick-a-Pic rows are image pairs by definition
            modality = "image"
        folder = Path(tempfile.mkdtemp(prefix="samplescope-export-"))
        path = folder / f"samplescope-{fmt}{ext}"
        try:
            only = RecordFilter(modality=pick(modality), model=pick(model), sampler=pick(sampler))
            rows = self.services.db.read(lambda s: export(s, fmt, path, by=by, only=only))
        except Exception as exc:
            return {self.file: None, self.note: f"⚠ {md_text(error_message(exc), 600)}"}
        kept = ", ".join(md_text(v) for v in (pick(modality), pick(model), pick(sampler)) if v) or "all comparisons"
        return {self.file: str(path), self.note: f"{rows} rows written as {fmt} ({ext[1:]}); kept: {kept}"}
