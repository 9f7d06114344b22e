"""The Data tab's "Build training pairs" section: a pair rule and a filter over a prompt set.

It calls :func:`app.workflows.pair_building.build_pairs` (the same as ``samplescope pairs``) on a
worker thread and shows its progress; then the chosen and rejected candidates drawn on the reward
plot with the seven points of the sweet-spot grid, the grid's 21 cells for the shown prompt, the
pairs as a table (plain text) and a JSONL download of TRL preference rows. The runs are stored and
the kept pairs become comparisons named by the rule, so they can be labelled in the Label tab.
"""

from __future__ import annotations

import html
import tempfile
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.services import Services, error_message
from app.views.pairs import PAIR_HEADERS, grid_cells_figure, pair_figure, pair_rows
from app.views.render import md_text
from app.views.trace import empty

RULE_CHOICES = [("sweet-spot grid: one cell", "grid"), ("sweet-spot grid: all 21 cells", "grid:all"),
                ("max / min", "max_min"), ("MC-PO hard negative", "mcpo"),
                ("temporal: rejected from an earlier model", "temporal"), ("AceCoder pass rates (arith)", "acecoder")]
POINTS = ["min", "mu-2sigma", "mu-sigma", "mu", "mu+sigma", "mu+2sigma", "max"]


def prompt_view(build: Any, index: int) -> dict[str, Any]:
    """What the figures need of one prompt: rewards, texts (cut), pairs as (chosen, rejected, label)."""
    entry = build.prompts[index]
    rejected_rewards = None
    if entry.earlier is not None:  # temporal: rejected indexes the earlier model's list, drawn beside
        rejected_rewards = {i: r for i, r in enumerate(entry.earlier[1])}
    return {"prompt": entry.task.prompt[:200], "rewards": list(entry.rewards), "texts": [t[:300] for t in entry.texts],
            "pairs": [(p.chosen, p.rejected, p.rule) for p in entry.pairs], "rejected_rewards": rejected_rewards}


def figures(view: dict[str, Any] | None) -> tuple[Any, Any]:
    if not view or len(view["rewards"]) < 2:
        return empty("Reward distribution and the pairs", "build pairs to see them"), empty("Sweet-spot grid", "nothing yet")
    title = f"Prompt: {html.escape(' '.join(view['prompt'].split())[:60])}"
    return (pair_figure(view["rewards"], view["texts"], view["pairs"], title=title, rejected_rewards=view["rejected_rewards"]),
            grid_cells_figure(view["rewards"]))


class PairsSection:
    def __init__(self, services: Services) -> None:
        from app.ui.compare import set_choices

        self.services = services
        gr.Markdown("### Build training pairs")
        with gr.Row():
            self.prompt_set = gr.Dropdown(set_choices(services), value="arith", label="Prompt set", elem_id="pairs-set")
            self.limit = gr.Number(8, label="Prompts (the first K)", precision=0, minimum=1, elem_id="pairs-limit")
            self.model = gr.Textbox("", label="Model (blank: the set's)", elem_id="pairs-model")
            self.reward = gr.Textbox("", label="Reward (blank: the set's)", elem_id="pairs-reward")
            self.n = gr.Number(16, label="N per prompt", precision=0, elem_id="pairs-n")
        with gr.Row():
            self.rule = gr.Dropdown(RULE_CHOICES, value="grid", label="Pair rule", elem_id="pairs-rule")
            self.chosen_point = gr.Dropdown(POINTS, value="max", label="Grid: chosen point", elem_id="pairs-chosen")
            self.rejected_point = gr.Dropdown(POINTS, value="mu-2sigma", label="Grid: rejected point", elem_id="pairs-rejected")
            self.beta = gr.Number(1.0, label="MC-PO β", elem_id="pairs-beta")
            self.earlier = gr.Textbox("", label="Temporal: earlier model", elem_id="pairs-earlier")
        with gr.Row():
            self.filter = gr.Radio([("none", "none"), ("UPO: less uncertain pairs", "upo"), ("strength: a vote of rewards", "strength")],
                                   value="none", label="Filter", elem_id="pairs-filter")
            self.readings = gr.Textbox("", label="Filter rewards (comma-separated)", elem_id="pairs-readings")
            self.build = gr.Button("Build pairs", variant="primary", scale=0, elem_id="pairs-build")
        self.status = gr.Markdown(elem_id="pairs-status")
        self.shown = gr.Dropdown([], label="Prompt shown", elem_id="pairs-shown")
        with gr.Row():
            self.plot = gr.Plot(label="Pairs on the reward plot", elem_id="pairs-plot")
            self.grid = gr.Plot(label="Sweet-spot grid", elem_id="pairs-grid")
        self.table = gr.Dataframe(headers=PAIR_HEADERS, interactive=False, wrap=True, max_height=360, label="Pairs",
                                  elem_id="pairs-table")
        self.file = gr.File(label="TRL preference rows (JSONL)", interactive=False, elem_id="pairs-file")
        self.views = gr.State([])
        inputs = [self.prompt_set, self.limit, self.model, self.reward, self.n, self.rule, self.chosen_point,
                  self.rejected_point, self.beta, self.earlier, self.filter, self.readings]
        outputs = [self.status, self.shown, self.plot, self.grid, self.table, self.file, self.views]
        self.build.click(self.run, inputs, outputs)
        self.shown.change(self.show, [self.shown, self.views], [self.plot, self.grid], show_progress="hidden")

    def run(self, prompt_set, limit, model, reward, n, rule, chosen_point, rejected_point, beta, earlier, filt, readings):
        """Build on a worker thread; yield its progress, then every view."""
        from app.workflows.pair_building import build_pairs, plan_from_inputs

        try:
            rule_name = f"grid:{chosen_point}/{rejected_point}" if rule == "grid" else str(rule or "")
            plan = plan_from_inputs(
                model=(model or "").strip() or None, reward=(reward or "").strip() or None, rule=rule_name,
                prompt_set=prompt_set or None, limit=int(limit) if limit is not None else None, db=self.services.db,
                n=int(n) if n is not None else 0, filter=filt or "none", beta=float(beta or 0),
                readings=tuple(s.strip() for s in (readings or "").split(",") if s.strip()),
                earlier_model=(earlier or "").strip() or None)
        except Exception as exc:
            yield {self.status: f"⚠ {md_text(error_message(exc), 600)}"}
            return
        out = Path(tempfile.mkdtemp(prefix="samplescope-pairs-")) / "pairs.jsonl"
        done: dict[str, Any] = {}
        progress = {"done": 0, "total": len(plan.tasks)}

        def work() -> None:
            try:
                done["result"] = build_pairs(plan, db=self.services.db, out=out, device=self.services.device,
                                             dtype=self.services.dtype,
                                             progress=lambda i, total: progress.update(done=i, total=total))
            except Exception as exc:  # shown as one line below
                done["error"] = exc

        ticket = self.services.runs.enter()  # the model work waits for a run slot, in line with Explore
        try:
            self.services.runs.start(ticket)
            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            while worker.is_alive():
                yield {self.status: f"Sampling and scoring: prompt {progress['done']} of {progress['total']}…"}
                worker.join(0.5)
        finally:
            self.services.runs.leave(ticket)
        if "error" in done:
            yield {self.status: f"⚠ {md_text(error_message(done['error']), 600)}"}
            return
        build = done["result"]
        views = [prompt_view(build, i) for i in range(len(build.prompts))]
        first = next((i for i, v in enumerate(views) if v["pairs"]), 0)
        labels = [f"{i + 1}: {' '.join(v['prompt'].split())[:50]}" for i, v in enumerate(views)]
        plot, grid = figures(views[first] if views else None)
        summary = (f"**{md_text(plan.strategy, 60)}**, filter **{md_text(plan.filter, 20)}**: {len(build.pairs)} pairs from "
                   f"{len(build.prompts)} prompts (N = {plan.n}, model {md_text(plan.model, 80)}, reward {md_text(plan.reward, 80)}); "
                   f"**{len(build.kept)} kept**, stored as {len(build.comparison_ids)} comparisons to label or export.")
        yield {self.status: summary, self.shown: gr.update(choices=labels, value=labels[first] if labels else None),
               self.plot: plot, self.grid: grid, self.table: pair_rows(build.pairs), self.file: str(out), self.views: views}

    def show(self, label: str | None, views: list[dict[str, Any]]) -> dict[Any, Any]:
        try:
            index = int(str(label).split(":", 1)[0]) - 1
            view = views[index] if 0 <= index < len(views) else None
        except (ValueError, TypeError):
            view = None
        plot, grid = figures(view)
        return {self.plot: plot, self.grid: grid}
