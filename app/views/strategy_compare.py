"""The figure and table of a strategy comparison (engines.training.compare), for the Train tab and the report.

:func:`comparison_figure` draws one panel per metric (held-out accuracy at T=1 and greedy,
the cumulative kept share, KL) against samples spent, one line per strategy with its 95%
bootstrap band over seeds; :func:`final_rows` is the table of each strategy at the matched
budget. Strategy names reach the figure through :func:`app.views.render.plain`.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views.render import plain
from app.views.sweep import PALETTE
from app.views.trace import _layout, empty
from engines.training.compare import METRICS

FINAL_HEADERS = ["strategy", "seeds", "T=1 accuracy", "95% CI", "greedy accuracy", "95% CI", "kept share", "KL"]


def _band_colour(hex_colour: str, alpha: float = 0.15) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def comparison_figure(curves: list[dict[str, Any]], title: str = "Strategies at a matched sample budget") -> go.Figure:
    """A 2x2 grid, one panel per metric in METRICS; x: samples spent, y: the mean over seeds, band: its 95% CI."""
    if not curves:
        return empty(title, "no finished run yet")
    fig = make_subplots(rows=2, cols=2, subplot_titles=[label for _, label in METRICS.values()], vertical_spacing=0.16)
    strategies = list(dict.fromkeys(p["strategy"] for p in curves))
    drawn: set[str] = set()  # metrics with a curve
    listed: set[str] = set()  # strategies in the legend (once each)
    for k, strategy in enumerate(strategies):
        colour = PALETTE[k % len(PALETTE)]
        for index, metric in enumerate(METRICS):
            row, col = index // 2 + 1, index % 2 + 1
            points = [p for p in curves if p["strategy"] == strategy and p["metric"] == metric]
            if not points:
                continue
            drawn.add(metric)
            x = [p["samples"] for p in points]
            name = plain(strategy, 40)
            step = {"width": 0, "shape": "hv"}  # a value holds until the next measurement, as the mean's line
            fig.add_trace(go.Scatter(x=x, y=[p["ci_high"] for p in points], mode="lines", line=step, hoverinfo="skip",
                                     showlegend=False, legendgroup=name), row=row, col=col)
            fig.add_trace(go.Scatter(x=x, y=[p["ci_low"] for p in points], mode="lines", line=step, fill="tonexty",
                                     fillcolor=_band_colour(colour), hoverinfo="skip", showlegend=False,
                                     name=f"{name} 95% CI", legendgroup=name), row=row, col=col)
            fig.add_trace(go.Scatter(
                x=x, y=[p["mean"] for p in points], mode="lines+markers", line={"color": colour, "shape": "hv"},
                name=name, legendgroup=name, showlegend=strategy not in listed,
                hovertext=[f"{name}: {p['mean']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}] at {p['samples']:g} samples, "
                           f"{p['seeds']} seeds" for p in points], hoverinfo="text",
            ), row=row, col=col)
            listed.add(strategy)
    for index, metric in enumerate(METRICS):
        if metric not in drawn:  # e.g. KL, measured only when the runs keep a reference (kl_coef > 0)
            # in paper coordinates: plotly.js misplaces "xN domain" references of an axis with no trace
            suffix = "" if index == 0 else str(index + 1)
            x_domain, y_domain = fig.layout[f"xaxis{suffix}"].domain, fig.layout[f"yaxis{suffix}"].domain
            fig.add_annotation(xref="paper", yref="paper", x=sum(x_domain) / 2, y=sum(y_domain) / 2, showarrow=False,
                               text="not measured in these runs", font={"color": "#888"})
    fig.update_xaxes(title="samples spent")
    _layout(fig, title, height=640, showlegend=True)
    return fig.update_layout(margin={"t": 90})


def final_rows(finals: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows under FINAL_HEADERS: each strategy's metrics at the matched budget (numbers rounded for reading)."""

    def mean(row: dict[str, Any], metric: str) -> float | None:
        return round(row[metric]["mean"], 4) if metric in row else None

    def interval(row: dict[str, Any], metric: str) -> str:
        return f"[{row[metric]['ci_low']:.3f}, {row[metric]['ci_high']:.3f}]" if metric in row else ""

    return [[r["strategy"], r["seeds"], mean(r, "accuracy_t1"), interval(r, "accuracy_t1"), mean(r, "accuracy_greedy"),
             interval(r, "accuracy_greedy"), mean(r, "kept_share"), mean(r, "kl")] for r in finals]
