"""The Pareto-front figure of a direction dial (Gradio-free; the Explore tab and the CLI's callers show it).

Each traced angle is one point at its pick's reward vector (r_1, r_2), coloured by the angle;
the exact non-dominated points are joined by a line in order of r_1, and every point's hover
says its angle, direction vector, v · r and the (escaped) picked text.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from app.views.render import plain
from app.views.trace import _layout, empty

FRONT_HEADERS = ["angle", "v", "r1", "r2", "v·r", "on front", "pick"]


def _point(p: Any) -> dict[str, Any]:
    return p if isinstance(p, dict) else {k: getattr(p, k) for k in ("angle", "vector", "values", "score", "picks", "on_front")}


def front_figure(points: list[Any], dimensions: list[str], title: str = "Pareto front over the direction") -> go.Figure:
    """Points (FrontPoint or its dict) coloured by angle; the non-dominated ones joined by a line."""
    rows = [_point(p) for p in points]
    if not rows:
        return empty(title, "no angles traced yet")
    x_name, y_name = (plain(d, 60) for d in dimensions[:2])
    fig = go.Figure()
    front = sorted((p for p in rows if p["on_front"]), key=lambda p: (p["values"][0], -p["values"][1]))
    if front:
        fig.add_trace(go.Scatter(
            x=[p["values"][0] for p in front], y=[p["values"][1] for p in front], mode="lines", name="front",
            line={"color": "#444", "dash": "dot"}, hoverinfo="skip",
        ))
    fig.add_trace(go.Scatter(
        x=[p["values"][0] for p in rows], y=[p["values"][1] for p in rows], mode="markers", name="picks",
        marker={"size": 12, "color": [p["angle"] for p in rows], "colorscale": "Viridis", "cmin": 0, "cmax": 90,
                "colorbar": {"title": "angle°"}, "line": {"width": 1, "color": "#222"}},
        hovertext=[
            f"θ={p['angle']:g}°, v=({', '.join(f'{w:.3f}' for w in p['vector'])}), v·r={p['score']:.4g}<br>"
            f"{x_name}={p['values'][0]:.4g}, {y_name}={p['values'][1]:.4g}"
            f"{' (front)' if p['on_front'] else ''}<br>{plain(p['picks'][0] if p['picks'] else '', 120)}"
            for p in rows
        ],
        hoverinfo="text",
    ))
    fig.update_xaxes(title=x_name)
    fig.update_yaxes(title=y_name)
    return _layout(fig, title, height=420, showlegend=False)


def front_rows(points: list[Any]) -> list[list[Any]]:
    """One table row per angle; the picked text plain (never HTML), whitespace collapsed, as candidate tables show it."""
    rows = []
    for p in map(_point, points):
        rows.append([p["angle"], ", ".join(f"{w:.3f}" for w in p["vector"]), round(p["values"][0], 4),
                     round(p["values"][1], 4), round(p["score"], 4), "yes" if p["on_front"] else "",
                     " ".join((p["picks"][0] if p["picks"] else "").split())[:200]])
    return rows
