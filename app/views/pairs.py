"""Pictures of training pairs: the reward distribution with the sweet-spot grid and the chosen and
rejected candidates drawn on it, and the 21 cells of the grid as a table (Gradio-free).

The seven points and the cells are ``engines.pairs.grid``'s (Xiao et al. 2025, arXiv:2502.16825).
Model text reaches a figure only through :func:`app.views.render.plain` (escaped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from app.views.render import plain
from app.views.trace import _layout, empty, reward_figure
from engines.trace import Trace

CHOSEN = "#2ca02c"
REJECTED = "#d62728"
LABELS = {"min": "min", "mu-2sigma": "μ-2σ", "mu-sigma": "μ-σ", "mu": "μ", "mu+sigma": "μ+σ", "mu+2sigma": "μ+2σ", "max": "max"}


def pair_figure(rewards: Sequence[float], texts: Sequence[str], pairs: Sequence[tuple[int, int, str]],
                title: str = "Reward distribution and the pairs", rejected_rewards: dict[int, float] | None = None) -> go.Figure:
    """The candidates' rewards (histogram and a tick each), the seven grid points as dotted lines, and
    each pair (chosen index, rejected index, label) as a segment from its rejected to its chosen reward.

    ``rejected_rewards`` maps a rejected index to its reward where the rejected comes from another
    candidate list (temporal pairs: the earlier model's)."""
    from engines.pairs.grid import point_values

    values = [float(r) for r in rewards]
    if len(values) < 2:
        return empty(title, "a pair needs at least two scored candidates")
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=values, nbinsx=min(30, max(5, len(values) // 2)), marker={"color": "#c6d9ec"},
                               hoverinfo="skip", name="candidates", showlegend=False))
    fig.add_trace(go.Scatter(
        x=values, y=[0] * len(values), mode="markers", marker={"symbol": "line-ns-open", "size": 14, "color": "#555"},
        hovertext=[f"reward {v:.4g}<br>{plain(t, 200)}" for v, t in zip(values, texts, strict=False)], hoverinfo="text",
        showlegend=False,
    ))
    for name, x in point_values(values).items():
        fig.add_vline(x=x, line={"color": "#7f7f7f", "dash": "dot", "width": 1}, annotation_text=LABELS[name],
                      annotation_position="top")
    top = max(2, len(values) // 3)
    for level, (chosen, rejected, label) in enumerate(pairs):
        y = top + 0.6 * level
        r_rej = (rejected_rewards or {}).get(rejected, values[rejected] if rejected < len(values) else None)
        if r_rej is None:
            continue
        r_ch = values[chosen]
        fig.add_trace(go.Scatter(x=[r_rej, r_ch], y=[y, y], mode="lines", line={"color": "#999", "width": 1},
                                 hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(
            x=[r_ch], y=[y], mode="markers", marker={"symbol": "triangle-up", "size": 11, "color": CHOSEN},
            name="chosen", legendgroup="chosen", showlegend=level == 0,
            hovertext=[f"<b>chosen</b> ({plain(label, 40)}) reward {r_ch:.4g}<br>{plain(texts[chosen], 200)}"], hoverinfo="text",
        ))
        fig.add_trace(go.Scatter(
            x=[r_rej], y=[y], mode="markers", marker={"symbol": "x", "size": 10, "color": REJECTED},
            name="rejected", legendgroup="rejected", showlegend=level == 0,
            hovertext=[f"<b>rejected</b> ({plain(label, 40)}) reward {r_rej:.4g}"], hoverinfo="text",
        ))
    fig.update_xaxes(title="reward")
    fig.update_yaxes(title="candidates / pairs")
    return _layout(fig, title, height=max(320, 200 + 18 * len(pairs)), bargap=0.05, showlegend=bool(pairs))


def grid_cells_figure(rewards: Sequence[float], title: str = "Sweet-spot grid: reward margin of each cell") -> go.Figure:
    """A 7 x 7 table, chosen point by row and rejected point by column: the 21 cells' reward margins
    (blank where both points are one candidate); the paper's cell (max, μ-2σ) outlined."""
    from engines.pairs.grid import POINT_NAMES, SWEET_SPOT, grid_pairs

    values = [float(r) for r in rewards]
    if len(values) < 2:
        return empty(title, "a grid needs at least two scored candidates")
    cells = grid_pairs(values)
    rows, cols = list(POINT_NAMES[::-1]), list(POINT_NAMES)
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    for hi in rows:
        z_row, t_row = [], []
        for lo in cols:
            pair = cells.get((hi, lo))
            margin = None if pair is None else values[pair.chosen] - values[pair.rejected]
            z_row.append(margin)
            t_row.append("" if (hi, lo) not in cells else "—" if margin is None else f"{margin:.3g}")
        z.append(z_row)
        text.append(t_row)
    fig = go.Figure(go.Heatmap(z=z, x=[LABELS[c] for c in cols], y=[LABELS[r] for r in rows], text=text,
                               texttemplate="%{text}", colorscale="Blues", hoverongaps=False, showscale=False,
                               hovertemplate="chosen %{y}, rejected %{x}: margin %{z:.4g}<extra></extra>"))
    hi, lo = SWEET_SPOT
    fig.add_shape(type="rect", x0=cols.index(lo) - 0.5, x1=cols.index(lo) + 0.5, y0=rows.index(hi) - 0.5,
                  y1=rows.index(hi) + 0.5, line={"color": CHOSEN, "width": 3})
    fig.update_xaxes(title="rejected point", side="bottom")
    fig.update_yaxes(title="chosen point")
    return _layout(fig, title, height=380)


def trace_pairs_figure(trace: Trace) -> go.Figure:
    """Where a run chose a preference pair (``preference_pairs``: two picks, chosen first), its rewards with
    the grid points and the pair drawn on them; any other run gets the ordinary reward figure."""
    done = trace.done
    pair = (done.metrics.get("pair") if done else None) or None
    table = [row for row in trace.reward_table() if row["reward"] is not None]
    if not isinstance(pair, dict) or len(table) < 2:
        return reward_figure(trace)
    index = {row["id"]: i for i, row in enumerate(table)}
    if pair.get("chosen") not in index or pair.get("rejected") not in index:
        return reward_figure(trace)
    label = str(done.metrics.get("strategy", "pair"))
    return pair_figure([row["reward"] for row in table], [row["text"] for row in table],
                       [(index[pair["chosen"]], index[pair["rejected"]], label)],
                       title=f"Reward distribution: the {plain(label, 40)} pair on the sweet-spot grid")


def pair_rows(pairs: Sequence[Any], limit: int = 200) -> list[list[Any]]:
    """Table rows for built pairs (``app.workflows.pair_building.BuiltPair``): plain text on one line, cut
    (a Dataframe shows cells as text, never HTML, as the candidates table does)."""

    def line(text: str, n: int) -> str:
        return " ".join((text or "").split())[:n]

    return [[line(p.rule, 40), ("flipped, kept" if p.flipped else "kept") if p.kept else "dropped", round(p.chosen_reward, 4),
             round(p.rejected_reward, 4), round(p.statistic, 4), line(p.chosen, 200), line(p.rejected, 200), line(p.prompt, 120)]
            for p in pairs[:limit]]


PAIR_HEADERS = ["rule", "filter", "chosen reward", "rejected reward", "filter statistic", "chosen", "rejected", "prompt"]
