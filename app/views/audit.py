"""Figures and tables of a reward audit (``app.workflows.reward_audit``): the Data tab and the HTML
report show the same ones. Plotly only, no Gradio; every label from the audit passes ``plain``."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from app.views.render import md_text, plain
from app.views.trace import _layout, empty


def _bars(rows: list[tuple[str, dict[str, Any]]], title: str, axis: str, chance: float | None = None) -> go.Figure:
    rows = [(label, row) for label, row in rows if row.get("rate") is not None]
    if not rows:
        return empty(title, "no prompt had what this measure needs")
    fig = go.Figure(go.Bar(
        x=[r["rate"] for _, r in rows], y=[plain(label, 60) for label, _ in rows], orientation="h",
        marker={"color": "#8fb3d9"},
        error_x={"type": "data", "symmetric": False, "array": [r["high"] - r["rate"] for _, r in rows],
                 "arrayminus": [r["rate"] - r["low"] for _, r in rows]},
        hovertext=[f"{plain(label, 60)}: {r['rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}], {r['prompts']} prompts"
                   for label, r in rows], hoverinfo="text",
    ))
    if chance is not None:
        fig.add_vline(x=chance, line={"dash": "dot", "color": "#888"})
    fig.update_xaxes(range=[0, 1], title=axis)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=max(220, 28 * len(rows) + 90))


def master_key_figure(report: dict[str, Any]) -> go.Figure:
    keys = report["master_keys"]
    rows = [("all keys", keys["overall"])] + [(f"{row['key']!r} ({row['group']})", row) for row in keys["by_key"]]
    return _bars(rows, "Master-key false positives (Zhao et al. 2025)", "share of prompts where the key passes (95% CI)")


def accuracy_figure(report: dict[str, Any]) -> go.Figure:
    ovm = report["one_vs_many"]
    rows = [(f"one right vs {ovm['k']} wrong", ovm), ("right vs wrong pairs", report["pairwise_accuracy"])]
    rows += [(f"  {row['category']}", row) for row in report["by_category"]]
    return _bars(rows, f"Accuracy (dotted: one-vs-{ovm['k']} chance)", "accuracy (95% CI)", chance=ovm["chance"])


def best_of_n_figure(report: dict[str, Any]) -> go.Figure:
    rows = [r for r in report["best_of_n"] if r.get("rate") is not None]
    if not rows:
        return empty("Best-of-N picks the evaluation reward rejects", "no samples")
    fig = go.Figure(go.Scatter(
        x=[r["n"] for r in rows], y=[r["rate"] for r in rows], mode="lines+markers", line={"color": "#d62728"},
        error_y={"type": "data", "symmetric": False, "array": [r["high"] - r["rate"] for r in rows],
                 "arrayminus": [r["rate"] - r["low"] for r in rows], "thickness": 1},
        hovertext=[f"N={r['n']}: {r['rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" for r in rows], hoverinfo="text",
    ))
    fig.update_xaxes(type="log", title="N (best of N by the audited reward)", tickvals=[r["n"] for r in rows])
    fig.update_yaxes(range=[0, 1], title="share of picks rejected (95% CI)")
    return _layout(fig, f"Best-of-N picks that {plain(report['config']['evaluate'], 40)} rejects", height=360)


def _ci(row: dict[str, Any]) -> str:
    if row.get("rate") is None:
        return "n/a"
    return f"{row['rate']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"


def audit_markdown(report: dict[str, Any]) -> str:
    """The headline numbers as Markdown (every stored string through ``md_text``)."""
    cfg = report["config"]
    ovm, length = report["one_vs_many"], report["length"]
    return "\n".join([
        f"**{md_text(cfg['reward'])}** on **{md_text(cfg['prompts'])}**: {report['prompt_count']} prompts, "
        f"{report['samples']} samples; truth from **{md_text(cfg['evaluate'])}**, which accepts "
        f"{report['base_accuracy']:.3f} of the samples.",
        "",
        "| measure | value (95% CI over prompts) |",
        "|---|---|",
        f"| master-key false positives | {_ci(report['master_keys']['overall'])} |",
        f"| one-vs-{ovm['k']} accuracy (chance {ovm['chance']:.3f}) | {_ci(ovm)} |",
        f"| right-vs-wrong pairwise accuracy | {_ci(report['pairwise_accuracy'])} |",
        f"| Spearman ρ(reward, tokens) | {_ci(length['reward'])} |",
        f"| … of the evaluation reward | {_ci(length['evaluation'])} |",
        *(f"| best-of-{row['n']} picks rejected | {_ci(row)} |" for row in report["best_of_n"]),
    ])
