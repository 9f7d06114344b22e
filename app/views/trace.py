"""Pictures of a trace: pure functions from a :class:`Trace` to plotly figures and tables.

The Explore tab calls them on every throttled snapshot of a growing trace, the
Runs tab on a replayed one; tests call them directly. Every figure sets a
constant ``uirevision`` so a user's zoom survives live updates. Text from the
model only reaches a figure through :func:`app.views.render.plain` (escaped).
"""

from __future__ import annotations

import html
import math
import statistics
from typing import Any

import plotly.graph_objects as go

from app.views.render import image_tag, md_text, plain, png_data_uri
from engines.trace import Trace

GREY = "#b8b8b8"
PICK = "#d62728"
SCALE = "Viridis"


def _layout(fig: go.Figure, title: str, height: int = 360, **kwargs: Any) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 14}},
        height=height,
        margin={"l": 40, "r": 20, "t": 40, "b": 35},
        uirevision="keep",
        template="plotly_white",
        showlegend=kwargs.pop("showlegend", False),
        **kwargs,
    )
    return fig


def empty(title: str, message: str = "nothing yet") -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"color": "#888"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=220)


# -- the candidate tree -------------------------------------------------------------


def _tree_positions(trace: Trace) -> dict[str, tuple[float, float]]:
    """x = depth, y = leaf order (a depth-first layout; parents centred over their children)."""
    pos: dict[str, tuple[float, float]] = {}
    next_leaf = [0.0]

    def place(node_id: str) -> float:
        kids = trace.children.get(node_id, [])
        if not kids:
            y = next_leaf[0]
            next_leaf[0] += 1
        else:
            ys = [place(k) for k in kids]
            y = (min(ys) + max(ys)) / 2
        pos[node_id] = (trace.nodes[node_id].depth, y)
        return y

    for root in trace.children.get(None, []):
        place(root)
    return pos


def tree_figure(trace: Trace, title: str = "Candidate tree") -> go.Figure:
    if not trace.nodes:
        return empty(title)
    pos = _tree_positions(trace)
    rows = {row["id"]: row for row in trace.tree()}
    fig = go.Figure()
    for state, colour, width in (("normal", "#9aa5b1", 1), ("pruned", "#dddddd", 1), ("chosen", PICK, 3)):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for node_id, node in trace.nodes.items():
            if node.parent is None or node.parent not in pos:
                continue
            row = rows[node_id]
            kind = "chosen" if row["chosen"] else "pruned" if row["pruned"] else "normal"
            if kind != state:
                continue
            (x0, y0), (x1, y1) = pos[node.parent], pos[node_id]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "width": width}, hoverinfo="skip"))
    ids = list(pos)
    scores = [rows[i]["score"] for i in ids]
    live = [i for i, s in zip(ids, scores, strict=True) if s is not None and not rows[i]["pruned"]]
    dead = [i for i, s in zip(ids, scores, strict=True) if s is None or rows[i]["pruned"]]

    def hover(i: str) -> str:
        row = rows[i]
        score = "" if row["score"] is None else f"score {row['score']:.4g}<br>"
        state = " (pruned: " + plain(trace.pruned[i], 80) + ")" if row["pruned"] else ""
        return f"<b>{plain(i, 80)}</b>{state}<br>{score}{plain(row['text'] or ('[image]' if row['image'] else ''), 300)}"

    if dead:
        fig.add_trace(
            go.Scatter(
                x=[pos[i][0] for i in dead], y=[pos[i][1] for i in dead], mode="markers",
                marker={"color": GREY, "size": 8, "line": {"width": 0}},
                hovertext=[hover(i) for i in dead], hoverinfo="text",
            )
        )
    if live:
        values = [rows[i]["score"] for i in live]
        fig.add_trace(
            go.Scatter(
                x=[pos[i][0] for i in live], y=[pos[i][1] for i in live], mode="markers",
                marker={"color": values, "colorscale": SCALE, "size": 11, "showscale": True,
                        "colorbar": {"title": "reward", "thickness": 10},
                        "line": {"width": [2 if rows[i]["chosen"] else 0 for i in live], "color": PICK}},
                hovertext=[hover(i) for i in live], hoverinfo="text",
            )
        )
    picks = [i for i in trace.selected if i in pos]
    if picks:
        fig.add_trace(
            go.Scatter(
                x=[pos[i][0] for i in picks], y=[pos[i][1] for i in picks], mode="markers",
                marker={"symbol": "star", "size": 18, "color": PICK}, hovertext=[hover(i) for i in picks], hoverinfo="text",
            )
        )
    thumbs = [i for i in ids if png_data_uri(trace.nodes[i].image)]  # only a clean PNG data URI reaches plotly
    if thumbs and len(thumbs) <= 150:  # image nodes (diffusion trees) show their picture
        # one assignment of the whole list: add_layout_image per image re-validates the growing tuple (quadratic)
        fig.layout.images = [
            {"source": trace.nodes[i].image, "x": pos[i][0], "y": pos[i][1], "xref": "x", "yref": "y", "sizex": 0.45,
             "sizey": 0.9, "xanchor": "center", "yanchor": "middle", "layer": "above"}
            for i in thumbs
        ]
    depth = max(n.depth for n in trace.nodes.values())
    fig.update_xaxes(title="depth / step", dtick=1, range=[-0.3, depth + 0.3])
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=max(300, min(900, 14 * len(trace.children.get("root", [])) + 200)))


# -- the reward distribution ------------------------------------------------------------


def pairwise_only_note(trace: Trace) -> str | None:
    """What to say where a per-candidate reward would go when the run's only reward was pairwise
    (a knockout judged match by match: no candidate has a score of its own); None otherwise."""
    if not trace.matches or trace.scores:
        return None
    return f"{_judge(trace, 'pairwise reward')}: no per-candidate score; see the bracket (matches won per candidate in the table)"


def _judge(trace: Trace, unnamed: str) -> str:
    """The pairwise reward the matches name (escaped), or ``unnamed`` for traces stored before they did."""
    name = next((m.reward for m in trace.matches if m.reward), "")
    return f"pairwise reward {plain(name, 80)}" if name else unnamed


def reward_figure(trace: Trace, title: str = "Reward distribution", k: float = 2.0) -> go.Figure:
    table = [row for row in trace.reward_table() if row["reward"] is not None]
    if not table:
        return empty(title, pairwise_only_note(trace) or "nothing yet")
    values = [row["reward"] for row in table]
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=values, nbinsx=min(30, max(5, len(values) // 2)), marker={"color": "#8fb3d9"}, hoverinfo="skip"))
    fig.add_trace(
        go.Scatter(
            x=values, y=[0] * len(values), mode="markers",
            marker={"symbol": "line-ns-open", "size": 16, "color": ["#d62728" if r["picked"] else "#333" for r in table]},
            hovertext=[f"<b>{plain(r['id'], 80)}</b> reward {r['reward']:.4g}<br>{plain(r['text'], 200)}" for r in table],
            hoverinfo="text",
        )
    )
    mean = statistics.fmean(values)
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    lines = [(mean, "μ", "#2ca02c", "solid")]
    if sd > 0:
        lines += [(mean - k * sd, f"μ-{k:g}σ", "#2ca02c", "dot"), (mean + k * sd, f"μ+{k:g}σ", "#2ca02c", "dot")]
    lines += [(r["reward"], "pick", PICK, "dash") for r in table if r["picked"]]
    for x, label, colour, dash in lines:
        fig.add_vline(x=x, line={"color": colour, "dash": dash, "width": 1.5}, annotation_text=label, annotation_position="top")
    fig.update_xaxes(title="reward")
    fig.update_yaxes(title="candidates")
    return _layout(fig, title, bargap=0.05)


# -- the knockout bracket ------------------------------------------------------------------


def match_records(trace: Trace) -> dict[str, tuple[int, int]]:
    """Each player's (matches won, last round played); a bye is no match won."""
    records: dict[str, tuple[int, int]] = {}
    for m in trace.matches:
        for player in (m.a, m.b):
            if player is not None:
                won, _ = records.get(player, (0, 0))
                records[player] = (won + (m.b is not None and m.winner == player), m.round)
    return records


def bracket_figure(trace: Trace, title: str = "Knockout bracket") -> go.Figure:
    """One point per match, labelled ``P(a beats b)=p → winner`` (the winner in bold); the title
    names the pairwise reward that gave P."""
    rounds = trace.bracket()
    if not rounds:
        return empty(title, "no matches in this run")
    fig = go.Figure()
    rewards = {i: trace.reward(i) for i in trace.nodes}
    judge = _judge(trace, "the run's pairwise reward")

    def with_reward(node: str) -> str:
        return "" if rewards.get(node) is None else f" (reward {rewards[node]:.3g})"

    xs, ys, texts, colours, hovers = [], [], [], [], []
    for col, matches in enumerate(rounds):
        gap = 2 ** col
        for row, m in enumerate(matches):
            y = -(row * gap * 2 + gap)
            a, b, winner = plain(m.a, 40), plain(m.b or "", 40), plain(m.winner, 40)  # escaped: node ids reach the page
            if m.b is None:
                label = f"{a} (bye) → <b>{winner}</b>"
            else:
                label = f"P({a} beats {b})={m.p_a:.2f} → <b>{winner}</b>"
            xs.append(col)
            ys.append(y)
            texts.append(label)
            colours.append(PICK if trace.selected and m.winner == trace.selected[0] else "#1f77b4")
            a_text, b_text = trace.full_text(m.a), trace.full_text(m.b) if m.b else ""
            hovers.append(
                f"<b>round {plain(str(m.round), 20)}</b><br>A {a}{with_reward(m.a)}: {plain(a_text, 150)}<br>"
                + (f"B {b}{with_reward(m.b)}: {plain(b_text, 150)}<br>P(A beats B) = {m.p_a:.3f} under {judge}<br>"
                   if m.b else "bye<br>")
                + f"winner {winner}"
            )
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, mode="markers+text", text=texts, textposition="middle right",
            marker={"size": 10, "color": colours}, hovertext=hovers, hoverinfo="text",
        )
    )
    fig.update_xaxes(title="round", tickvals=list(range(len(rounds))), ticktext=[str(i + 1) for i in range(len(rounds))],
                     range=[-0.2, len(rounds) + 0.6])
    fig.update_yaxes(visible=False)
    height = max(260, 28 * len(rounds[0]) * 2 + 80)
    return _layout(fig, f"{title}: P(a beats b) from {judge}, winner in bold", height=min(height, 900))


# -- particles (SMC, FK steering) -------------------------------------------------------------


def particles_figure(trace: Trace, title: str = "Particles and ancestry") -> go.Figure:
    """Particles by step (colour: relative weight), a line from each to its ancestor, and the ESS."""
    if not trace.resamples:
        return empty(title, "no resampling in this run")
    events = trace.resamples
    fig = go.Figure()
    xs: list[float | None] = []
    ys: list[float | None] = []
    for k, event in enumerate(events[:-1]):  # event k's ancestors feed the particles of event k + 1
        for i, parent in enumerate(event.ancestors):
            xs += [k, k + 1, None]
            ys += [parent, i, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#9aa5b1", "width": 1}, hoverinfo="skip"))
    steps, idx, weights, hovers = [], [], [], []
    for k, event in enumerate(events):
        finite = [w for w in event.log_weights if math.isfinite(w)]
        top = max(finite) if finite else 0.0
        for i, (node, w) in enumerate(zip(event.particles, event.log_weights, strict=True)):
            weight = math.exp(w - top) if math.isfinite(w) else 0.0
            steps.append(k)
            idx.append(i)
            weights.append(weight)
            text = trace.full_text(node) if node in trace.nodes else ""
            hovers.append(f"step {plain(str(event.step), 20)}, particle {i} ({plain(node, 20)}), relative weight {weight:.3f}<br>{plain(text, 200)}")
    fig.add_trace(
        go.Scatter(
            x=steps, y=idx, mode="markers",
            marker={"color": weights, "colorscale": SCALE, "size": 7, "showscale": True, "colorbar": {"title": "weight", "thickness": 10}},
            hovertext=hovers, hoverinfo="text",
        )
    )
    fig.add_trace(go.Scatter(
        x=list(range(len(events))), y=[e.ess for e in events], mode="lines+markers", yaxis="y2",
        line={"color": PICK}, name="ESS", hovertext=[f"ESS {e.ess:.1f}{' (resampled)' if e.resampled else ''}" for e in events],
        hoverinfo="text",
    ))
    fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "ESS", "showgrid": False, "rangemode": "tozero"})
    fig.update_xaxes(title="resampling point", tickvals=list(range(len(events))), ticktext=[plain(str(e.step), 20) for e in events])
    fig.update_layout(yaxis={"title": "particle"})
    return _layout(fig, title, height=380)


def particle_grid_html(trace: Trace, max_particles: int = 16, max_steps: int = 12) -> str:
    """Image particles by step: rows are particles, columns resampling points, each with its reward."""
    events = [e for e in trace.resamples if any(trace.nodes.get(n) and trace.nodes[n].image for n in e.particles)]
    if not events:
        return ""
    if len(events) > max_steps:  # evenly spaced columns, the last one always shown
        stride = (len(events) - 1) / (max_steps - 1)
        events = [events[round(j * stride)] for j in range(max_steps)]
    header = "".join(f"<th><small>step {html.escape(str(e.step))}</small></th>" for e in events)
    rows = []
    for i in range(min(max_particles, len(events[0].particles))):
        cells = []
        for e in events:
            node = trace.nodes.get(e.particles[i]) if i < len(e.particles) else None
            if node is None or not node.image:
                cells.append("<td></td>")
                continue
            scores = trace.scores.get(node.id) or trace.partial_scores.get(node.id) or {}
            value = next(iter(scores.values()), None)
            label = "" if value is None else f"{value:.2f}"
            cells.append(f"<td style='text-align:center'>{image_tag(node.image, 40, node.id)}<br><small>{label}</small></td>")
        rows.append(f"<tr><th><small>{i}</small></th>{''.join(cells)}</tr>")
    return (
        "<p><strong>Particles by step</strong> <small>(predicted clean image; reward under each)</small></p>"
        f"<div style='overflow-x:auto'><table><tr><th></th>{header}</tr>{''.join(rows)}</table></div>"
    )


def acceptance_figure(trace: Trace, title: str = "Acceptance") -> go.Figure:
    if not trace.accepts:
        return empty(title, "no accept/reject decisions in this run")
    accepted = 0
    xs, rate, probs = [], [], []
    for k, event in enumerate(trace.accepts, start=1):
        accepted += event.accepted
        xs.append(k)
        rate.append(accepted / k)
        probs.append(event.probability)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=probs, mode="markers", marker={"color": ["#2ca02c" if e.accepted else GREY for e in trace.accepts]}, name="acceptance probability"))
    fig.add_trace(go.Scatter(x=xs, y=rate, mode="lines", line={"color": PICK}, name="running acceptance rate"))
    fig.update_xaxes(title="decision")
    fig.update_yaxes(title="probability", range=[0, 1.05])
    return _layout(fig, title, showlegend=True)


# -- tables and panels ------------------------------------------------------------------------


def cost_markdown(cost: dict[str, float], status: str | None = None) -> str:
    def count(key: str) -> str:
        value = _finite(cost.get(key, 0))
        return "?" if value is None else f"{int(value):,}"

    wall = _finite(cost.get("wall_seconds", 0.0))
    rows = [
        ("generated tokens", count("generated_tokens")),
        ("prefill tokens", count("prefill_tokens")),
        ("model calls", count("model_calls")),
        ("reward calls", count("reward_calls")),
        ("reward tokens", count("reward_tokens")),
        ("network evaluations", count("nfe")),
        ("decodes (VAE)", count("decodes")),
        ("reward backward passes", count("backward_passes")),
        ("network evaluations back-propagated", count("backward_nfe")),
        # the sampler's own compute; the user's wait (loading, queueing, drawing too) is in the status line
        ("sampler wall time (not the wait)", "?" if wall is None else f"{wall:.2f} s"),
    ]
    body = "\n".join(f"| {k} | {v} |" for k, v in rows if v not in ("0", "0.00 s") or k.startswith(("generated", "sampler wall")))
    head = f"**status:** {md_text(status)}\n\n" if status else ""
    return f"{head}| cost | |\n|---|---:|\n{body}"


def candidate_rows(trace: Trace) -> list[list[Any]]:
    """Rows for the candidates table: pick mark, id, reward, tokens, state, text (plain, never HTML).
    In a tournament the state also counts the matches each candidate won (its only number when
    the reward was purely pairwise)."""
    records = match_records(trace)
    out = []
    for row in trace.reward_table():
        state = row["pruned"] or ""
        if row["id"] in records:
            won, last = records[row["id"]]
            state = "; ".join(filter(None, [state, f"{won} match{'es' if won != 1 else ''} won, to round {last}"]))
        out.append(
            [
                "★" if row["picked"] else "",
                row["id"],
                None if row["reward"] is None else round(row["reward"], 4),
                row["tokens"],
                state,
                " ".join((row["text"] or ("[image]" if row["image"] else "")).split())[:500],
            ]
        )
    out.sort(key=lambda r: (r[0] != "★", -(r[2] if r[2] is not None else -math.inf)))
    return out


CANDIDATE_HEADERS = ["pick", "id", "reward", "tokens", "pruned", "text"]


def _finite(value: Any) -> float | None:
    """A stored counter as a finite number, or None (shown as ?) when it is anything else."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
