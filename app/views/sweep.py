"""The figure and tables of a sweep: quality against compute per arm, with bootstrap intervals,
and the paired comparisons between arms (the Compare tab and the HTML report both show them)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from app.views.render import plain
from app.views.trace import _layout, empty

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
POINT_HEADERS = ["arm", "level", "prompts", "quality", "CI low", "CI high", "steer", "gap", "tokens", "reward calls"]
PAIR_HEADERS = ["A", "B", "level", "prompts", "A - B", "CI low", "CI high", "A wins", "ties", "B wins"]


def sweep_figure(points: list[dict], counter: str = "generated_tokens") -> go.Figure:
    """Quality against the mean of ``counter``, one line per arm, 95% bootstrap intervals as error bars."""
    if not points:
        return empty("Quality against compute", "no points yet")
    fig = go.Figure()
    for k, arm in enumerate(dict.fromkeys(p["arm"] for p in points)):
        mine = [p for p in points if p["arm"] == arm]
        fig.add_trace(go.Scatter(
            x=[p[counter] for p in mine], y=[p["quality"] for p in mine], mode="lines+markers", name=plain(arm, 60),
            line={"color": PALETTE[k % len(PALETTE)]},
            error_y={"type": "data", "symmetric": False, "array": [p["ci_high"] - p["quality"] for p in mine],
                     "arrayminus": [p["quality"] - p["ci_low"] for p in mine], "thickness": 1},
            hovertext=[f"{plain(arm, 60)} @ {p['level']:g}: quality {p['quality']:.3f} "
                       f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}], {p[counter]:.4g} {counter}, {p['prompts']} prompts"
                       for p in mine],
            hoverinfo="text",
        ))
    positive = all(p[counter] > 0 for p in points)
    fig.update_xaxes(title=f"{counter.replace('_', ' ')} per prompt (mean)", type="log" if positive else "linear")
    fig.update_yaxes(title="quality (evaluation reward of the pick, 95% CI)")
    return _layout(fig, "Quality against compute", height=440, showlegend=True)


def point_rows(points: list[dict], counter: str = "generated_tokens") -> list[list[Any]]:
    def r(v):
        return None if v is None else round(float(v), 4)

    return [[p["arm"], p["level"], p["prompts"], r(p["quality"]), r(p["ci_low"]), r(p["ci_high"]), r(p["steer"]),
             r(p["gap"]), r(p[counter]), r(p["reward_calls"])] for p in points]


def pair_rows(pairs: list[dict]) -> list[list[Any]]:
    return [[p["a"], p["b"], p["level"], p["prompts"], round(p["mean_diff"], 4), round(p["ci_low"], 4),
             round(p["ci_high"], 4), p["wins"], p["ties"], p["losses"]] for p in pairs]
