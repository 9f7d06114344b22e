"""Pictures of a diffusion training run (engines.training.diffusion.loop): pure functions from its events.

:class:`DiffusionTrainingView` folds the run's events (the sample ``node``s with their images,
the ``group`` of each update with rewards, advantages and the chain's stochastic steps,
``update``s, ``eval``s, ``done``) into what the Train (RL) tab draws for a diffusion policy:

- :func:`sample_grids`: the first batch (drawn by the base model, before any update) beside
  the newest one, as image grids (HTML built only from :func:`app.views.render.image_tag`,
  which refuses anything but a PNG data URI);
- :func:`diffusion_curves`: against the update step, the batch reward and the evaluation
  reward, the held-out k-NN check (share of evaluation samples still read as a digit, and as
  the reward's digit: a reward that climbs while these fall is being hacked), the KL to the
  base model and the loss;
- :func:`rollout_figure`: the newest batch's best sample's denoising chain, step by step
  (noisiest first), each step marked stochastic (it drew noise and has a log-prob term) or
  deterministic, steps the scheme back-propagated through marked, and the sample's per-step
  advantages where the scheme credits steps separately (DPOK) or its one advantage on the
  stochastic step (one-stochastic-step schemes);
- :func:`diffusion_status`: updates, samples, NFE, backward NFE, seconds; the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go

from app.views.render import image_tag, md_text
from app.views.rollouts import panel_curves
from app.views.trace import GREY, _layout, empty
from engines.trace import Event, GroupEvent

STOCHASTIC, DETERMINISTIC, DIFFERENTIATED = "#d62728", GREY, "#1f77b4"


@dataclass
class DiffusionTrainingView:
    """What the tab shows of a diffusion run. Only the first and the newest batch's images are kept."""

    first_images: list[str | None] = field(default_factory=list)
    first_rewards: list[float] = field(default_factory=list)
    latest_images: list[str | None] = field(default_factory=list)
    latest: GroupEvent | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    done: Any = None
    _pending: dict[str, str | None] = field(default_factory=dict)

    def add(self, event: Event) -> bool:
        """Fold one event in; True when it changes a figure."""
        kind = event.kind
        if kind == "node":
            if event.parent is not None:
                self._pending[event.id] = event.image
            return False
        if kind == "group":
            images = [self._pending.get(node) for node in event.nodes]
            self._pending.clear()
            if self.latest is None:
                self.first_images, self.first_rewards = images, list(event.rewards)
            self.latest, self.latest_images = event, images
        elif kind == "update":
            self.updates.append({"step": event.step, **event.metrics})
        elif kind == "eval":
            self.evals.append({"step": event.step, **event.metrics})
        elif kind == "done":
            self.done = event
        else:
            return False
        return True


def _grid(images: list[str | None], rewards: list[float], columns: int = 8) -> str:
    cells = [
        f'<div style="text-align:center">{image_tag(uri, 48, f"reward {r:.3f}")}<br><small>{r:.2f}</small></div>'
        for uri, r in zip(images, rewards, strict=False)
    ]
    return (f'<div style="display:grid;grid-template-columns:repeat({columns},52px);gap:4px">'
            f"{''.join(cells)}</div>")


def sample_grids(view: DiffusionTrainingView) -> str:
    """Before (the first batch, drawn by the base model) and after (the newest batch), with each sample's reward."""
    if view.latest is None:
        return "<p><em>no batch drawn yet</em></p>"

    def mean(values: list[float]) -> str:  # a number only: nothing of the run's text reaches this HTML
        return f"{sum(float(v) for v in values) / len(values):.3f}" if values else "–"

    after = view.latest.rewards
    return (
        '<div class="diffusion-grids" style="display:flex;gap:32px;flex-wrap:wrap">'
        f"<div><b>Before: first batch (base model)</b>, mean reward {mean(view.first_rewards)}"
        f"{_grid(view.first_images, view.first_rewards)}</div>"
        f"<div><b>After: update {int(view.latest.step) + 1}'s batch</b>, mean reward {mean(after)}"
        f"{_grid(view.latest_images, after)}</div></div>"
    )


#: (panel title, series: (legend name, event list, metric key)), in the order of the 2x2 grid
PANELS = (
    ("Reward", (("batch", "updates", "reward_mean"), ("evaluation samples", "evals", "reward_mean"))),
    ("Held-out k-NN check", (("still a digit", "evals", "heldout_digit"), ("read as the target", "evals", "heldout_target"))),
    ("KL to the base model", (("KL", "updates", "kl"),)),
    ("Loss", (("loss", "updates", "loss"),)),
)


def diffusion_curves(view: DiffusionTrainingView, title: str = "Diffusion training (x: update)") -> go.Figure:
    """Reward, the held-out check, KL to the base model and loss against the update step."""
    fig = panel_curves(view, PANELS, title)
    if view.updates or view.evals:
        fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    return fig


def step_advantages(group: GroupEvent, sample: int) -> dict[int, float]:
    """The advantage credited to each stochastic step of one sample: per step where the scheme
    records it (``sample_step_advantages``: DPOK), else the sample's one advantage on the one
    stochastic step (a one-stochastic-step scheme), else none (gradient schemes have no advantage)."""
    stochastic = group.meta.get("stochastic_steps", [])
    per_step = group.meta.get("sample_step_advantages")
    if per_step and sample < len(per_step) and len(per_step[sample]) == len(stochastic):
        return dict(zip(stochastic, per_step[sample], strict=True))
    if len(stochastic) == 1 and sample < len(group.advantages):
        return {stochastic[0]: group.advantages[sample]}
    return {}


def rollout_figure(view: DiffusionTrainingView, title: str = "Denoising rollout of the batch's best sample") -> go.Figure:
    """One sample's chain (x: denoising step, noisiest first): stochastic and deterministic steps marked,
    back-propagated steps marked, and the per-step advantages."""
    group = view.latest
    if group is None:
        return empty(title, "no batch drawn yet")
    sample = max(range(len(group.rewards)), key=group.rewards.__getitem__)
    stochastic = set(group.meta.get("stochastic_steps", []))
    differentiated = set(group.meta.get("differentiated_steps", []))
    steps = int(group.meta.get("chain_steps") or max([*stochastic, *differentiated, -1]) + 1)
    credit = step_advantages(group, sample)
    fig = go.Figure()
    for label, colour, chosen, symbol in (
        ("deterministic step (no log-prob)", DETERMINISTIC, [i for i in range(steps) if i not in stochastic], "square-open"),
        ("stochastic step (draws noise)", STOCHASTIC, sorted(stochastic), "circle"),
    ):
        if chosen:
            fig.add_trace(go.Scatter(
                x=chosen, y=[credit.get(i, 0.0) for i in chosen], mode="markers", name=label,
                marker={"color": colour, "symbol": symbol, "size": 10},
                hovertext=[f"step {i}: {'advantage ' + format(credit[i], '.3g') if i in credit else 'no advantage'}"
                           for i in chosen], hoverinfo="text",
            ))
    if differentiated:
        fig.add_trace(go.Scatter(x=sorted(differentiated), y=[0.0] * len(differentiated), mode="markers",
                                 name="back-propagated through", marker={"color": DIFFERENTIATED, "symbol": "x", "size": 8}))
    if credit:
        fig.add_trace(go.Bar(x=list(credit), y=list(credit.values()), name="advantage", marker={"color": STOCHASTIC},
                             opacity=0.35, width=0.6))
    fig.add_hline(y=0, line={"color": "#888", "dash": "dot"})
    fig.update_xaxes(title="denoising step (noisiest first)", range=[-0.5, steps - 0.5])
    fig.update_yaxes(title="advantage credited to the step")
    note = f"sample {sample + 1}, reward {group.rewards[sample]:.3f}; {len(stochastic)}/{steps} steps stochastic"
    return _layout(fig, f"{title} — update {group.step + 1}, {note}", height=340, showlegend=True)


def diffusion_status(view: DiffusionTrainingView, elapsed: float, running: bool) -> str:
    """Updates, samples and network evaluations spent, elapsed time; the outcome once done (Markdown, escaped)."""
    spent = {k.removeprefix("spent_"): v for k, v in (view.updates[-1] if view.updates else {}).items()
             if k.startswith("spent_")}
    if view.done is not None:
        spent = {**spent, **view.done.metrics}
    text = (f"{len(view.updates)} updates, {int(spent.get('samples', 0)):,} samples, {int(spent.get('nfe', 0)):,} NFE, "
            f"{int(spent.get('backward_nfe', 0)):,} backward NFE; {elapsed:.1f} s")
    if running or view.done is None:
        return f"running… {text}"
    note = f" — {md_text(view.done.message, 300)}" if view.done.message else ""
    return f"**{md_text(view.done.status)}**: {text}{note}"
