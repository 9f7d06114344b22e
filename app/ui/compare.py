"""The Compare tab: your prompts, these samplers, these budgets — a stored sweep, live.

Pick a prompt set (built-in or uploaded: JSONL, CSV, Parquet with a column mapping),
any samplers (flat, step-level and tree, diffusion), sizes of each sampler's size knob
or caps of one cost counter, engines (several model specs spread the prompts), a
steering and an evaluation reward. The run is a sweep of ``engines.sweep`` stored by
``app.workflows.sweeps`` cell by cell, so the plot fills in live, a cancel keeps what finished,
and Resume finishes a stored sweep without redoing its cells. A point is the mean
evaluation reward of the picks over prompts, with its 95% bootstrap interval, against
the mean of the chosen cost counter. Stored sweeps reopen here and download as CSV,
Parquet or a self-contained HTML report.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.services import Services, error_message
from app.views.sweep import PAIR_HEADERS, POINT_HEADERS, pair_rows, point_rows, sweep_figure
from engines.trace import COST_FIELDS


def engine_specs(engines: Any) -> list[str]:
    """The picker's value (a list of specs) or a comma-separated string -> model specs, in order, once each."""
    items = engines if isinstance(engines, list | tuple) else str(engines or "").split(",")
    return list(dict.fromkeys(str(m).strip() for m in items if str(m or "").strip()))


def rewards_note(plan: Any) -> str:
    """Which reward steers (picks) and which judges the sweep, in words; a steering reward that reads the
    answer key is called what it is: an oracle, whose quality no deployable sampler can reach."""
    from app.views.render import md_text
    from engines.rewards import list_rewards

    reads_answer = {row["name"] for row in list_rewards() if row.get("needs_answer")}
    cells = plan.cells()
    steering = sorted({plan.request(k).reward for k in cells[:200]})
    judging = sorted({plan.evaluation_spec(plan.request(k)) for k in cells[:200]})
    line = f"Picked by (steering): {', '.join(f'`{md_text(r)}`' for r in steering)} · judged by: {', '.join(f'`{md_text(r)}`' for r in judging)}"
    oracles = [r for r in steering if r.split(":", 1)[0] in reads_answer]
    if oracles:
        line += (f"  \n⚠ {', '.join(md_text(r) for r in oracles)} reads the answer key: the samplers are steered by the "
                 "answer itself (an oracle, pass@N). Set a steering reward that does not (e.g. arith_orm) to measure a sampler.")
    return line


def set_choices(services: Services) -> list[str]:
    from engines.prompts import builtin_names
    from storage.prompt_sets import list_prompt_sets

    stored = [s.name for s in services.db.read(list_prompt_sets)]
    return sorted(set(builtin_names()) | set(stored))


def sweep_choices(services: Services) -> list[tuple[str, int]]:
    from storage.sweeps import list_sweeps

    return [(s.label(), s.id) for s in services.db.read(list_sweeps)]


class CompareTab:
    def __init__(self, services: Services) -> None:
        from engines.samplers import SAMPLERS

        self.services = services
        samplers = SAMPLERS.names()
        sets = set_choices(services)
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                self.prompt_set = gr.Dropdown(sets, value="arith" if "arith" in sets else sets[0], label="Prompt set",
                                              elem_id="compare-set")
                self.upload = gr.File(label="Upload a prompt set (.jsonl, .csv, .parquet)", file_types=[".jsonl", ".csv", ".parquet"],
                                      elem_id="compare-upload")
                with gr.Column():
                    self.set_name = gr.Textbox(label="Name for the upload", elem_id="compare-set-name")
                    self.prompt_col = gr.Textbox("prompt", label="Prompt column", elem_id="compare-prompt-col")
                    self.answer_col = gr.Textbox(label="Answer column (optional)", elem_id="compare-answer-col")
                    self.system_col = gr.Textbox(label="System column (optional)", elem_id="compare-system-col")
                    self.add = gr.Button("Add prompt set", elem_id="compare-add")
            self.add_status = gr.Markdown(elem_id="compare-add-status")
            self.samplers = gr.CheckboxGroup(samplers, value=[s for s in ("best_of_n", "majority") if s in samplers],
                                             label="Samplers (flat, step-level and tree, diffusion)", elem_id="compare-samplers")
            with gr.Row():
                # the served engines' models first (Services.model_choices), any other spec typed in
                self.engines = gr.Dropdown(services.model_choices(), value=[], multiselect=True, allow_custom_value=True,
                                           label="Engines: models to spread the prompts over (empty: the set's model)",
                                           elem_id="compare-engines")
                self.reward = gr.Textbox(label="Steering reward (empty: each prompt's)", elem_id="compare-reward")
                self.evaluate = gr.Textbox(label="Evaluation reward (empty: the steering reward)", elem_id="compare-evaluate")
            with gr.Row():
                self.axis = gr.Radio(["size", "budget"], value="size", label="Compute axis", elem_id="compare-axis")
                self.sizes = gr.Textbox("1,2,4,8", label="Sizes (each sampler's size knob)", elem_id="compare-sizes")
                self.counter = gr.Dropdown(list(COST_FIELDS), value="generated_tokens", label="Budget counter",
                                           elem_id="compare-counter")
                self.budgets = gr.Textbox("64,128,256", label="Budgets (caps of the counter)", elem_id="compare-budgets")
            with gr.Row():
                self.prompts = gr.Slider(1, 200, value=8, step=1, label="Prompts", elem_id="compare-prompts")
                self.tokens = gr.Slider(8, 512, value=64, step=8, label="Max new tokens", elem_id="compare-tokens")
                self.workers = gr.Slider(1, 16, value=4, step=1, label="Cells in flight", elem_id="compare-workers")
                self.seed = gr.Number(0, precision=0, label="Seed", elem_id="compare-seed")
            with gr.Row():
                self.go = gr.Button("Run sweep", variant="primary", elem_id="compare-run")
                self.stop = gr.Button("Cancel", variant="stop", elem_id="compare-cancel")
            self.status = gr.Markdown(elem_id="compare-status")
            self.rewards_line = gr.Markdown(elem_id="compare-rewards")  # which reward picks, which judges
            self.x_counter = gr.Dropdown(list(COST_FIELDS), value="generated_tokens", label="Plot against",
                                         elem_id="compare-x")
            self.plot = gr.Plot(label="Quality against compute", elem_id="compare-plot")
            self.table = gr.Dataframe(headers=POINT_HEADERS, interactive=False, elem_id="compare-table")
            self.pairs = gr.Dataframe(headers=PAIR_HEADERS, interactive=False, label="Paired comparisons",
                                      elem_id="compare-pairs")
            with gr.Row():
                self.stored = gr.Dropdown(sweep_choices(services), label="Stored sweeps", elem_id="compare-stored")
                self.refresh = gr.Button("Refresh", elem_id="compare-refresh")
                self.open = gr.Button("Open", elem_id="compare-open")
                self.resume = gr.Button("Resume", elem_id="compare-resume")
            with gr.Row():
                self.csv = gr.Button("Download CSV", elem_id="compare-csv")
                self.parquet = gr.Button("Download Parquet", elem_id="compare-parquet")
                self.report = gr.Button("Download report", elem_id="compare-report")
            self.file = gr.File(label="Download", interactive=False, elem_id="compare-file")
            # states live inside the Tab: a State directly under gr.Tabs makes Gradio 6.31 draw duplicate tab buttons
            self.token = gr.State(None)
            self.current = gr.State(None)
        inputs = [self.samplers, self.prompt_set, self.engines, self.reward, self.evaluate, self.axis, self.sizes,
                  self.counter, self.budgets, self.prompts, self.tokens, self.workers, self.seed, self.x_counter]
        outputs = [self.status, self.plot, self.table, self.pairs, self.token, self.current, self.stored, self.rewards_line]
        # no Gradio limit: each cell waits for one of services.runs' slots, in line with Explore and /sample
        self.go.click(self.run, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        self.resume.click(self.resume_sweep, [self.stored, self.workers, self.x_counter], outputs,
                          concurrency_limit=None, show_progress="hidden")
        self.stop.click(lambda t: "cancelling…" if services.cancel(t) else "nothing is running", [self.token], [self.status],
                        concurrency_limit=None)
        self.add.click(self.add_set, [self.upload, self.set_name, self.prompt_col, self.answer_col, self.system_col],
                       [self.add_status, self.prompt_set])
        self.refresh.click(lambda: gr.Dropdown(choices=sweep_choices(services)), None, [self.stored])
        self.open.click(self.show, [self.stored, self.x_counter], [self.status, self.plot, self.table, self.pairs, self.current])
        self.x_counter.change(self.show, [self.current, self.x_counter], [self.status, self.plot, self.table, self.pairs,
                                                                          self.current])
        for button, kind in ((self.csv, "csv"), (self.parquet, "parquet"), (self.report, "html")):
            button.click(lambda sweep_id, kind=kind: self.download(sweep_id, kind), [self.current], [self.file, self.status])

    # -- handlers ----------------------------------------------------------------------------------------------

    def add_set(self, upload, name, prompt_col, answer_col, system_col):
        from app.workflows.sweeps import add_prompt_set
        from engines.prompts import load_prompt_file

        if not upload:
            return {self.add_status: "⚠ choose a file first"}
        path = Path(upload if isinstance(upload, str) else upload.name)
        try:
            prompts = load_prompt_file(path, name=(name or "").strip() or None, prompt_col=(prompt_col or "prompt").strip(),
                                       answer_col=(answer_col or "").strip() or None, system_col=(system_col or "").strip() or None)
            _, created, stored_name = add_prompt_set(self.services.db, prompts)
        except Exception as exc:
            return {self.add_status: f"⚠ {error_message(exc)}"}
        note = "stored" if created else "already stored (same content)"
        return {self.add_status: f"{note}: {stored_name!r}, {len(prompts)} prompts",
                self.prompt_set: gr.Dropdown(choices=set_choices(self.services), value=stored_name)}

    def run(self, samplers, prompt_set, engines, reward, evaluate, axis, sizes, counter, budgets, prompts, tokens,
            workers, seed, x_counter="generated_tokens"):
        from app.workflows.sweeps import parse_arms, parse_levels, start

        if not samplers:
            yield {self.status: "⚠ choose at least one sampler"}
            return
        try:
            arms = parse_arms(samplers, {"max_new_tokens": int(tokens)})
            if (reward or "").strip():
                arms = tuple(dataclasses.replace(a, reward=reward.strip()) for a in arms)
            levels = parse_levels(sizes if axis == "size" else budgets, "sizes" if axis == "size" else "budgets")
            models = engine_specs(engines)
            sweep_id, plan = start(self.services.db, prompt_set, arms=arms, levels=levels, axis=axis,
                                   counter=counter if axis == "budget" else None, models=models, evaluate=(evaluate or "").strip(),
                                   seed=int(seed or 0), prompts=int(prompts), device=self.services.device,
                                   dtype=self.services.dtype)
        except Exception as exc:
            yield {self.status: f"⚠ {error_message(exc)}"}
            return
        updates = self._drive(sweep_id, plan, int(workers), x_counter)
        first = next(updates, {})  # the note rides on the sweep's first update: one update per step
        yield {self.rewards_line: rewards_note(plan), **first}
        yield from updates

    def resume_sweep(self, sweep_id, workers, x_counter="generated_tokens"):
        from app.workflows.sweeps import load_plan

        if sweep_id is None:
            yield {self.status: "⚠ choose a stored sweep"}
            return
        try:
            plan = load_plan(self.services.db, int(sweep_id), device=self.services.device, dtype=self.services.dtype)
        except Exception as exc:
            yield {self.status: f"⚠ {error_message(exc)}"}
            return
        yield from self._drive(int(sweep_id), plan, int(workers), x_counter)

    def _drive(self, sweep_id: int, plan, workers: int, x_counter: str):
        from app.workflows.sweeps import cell_rows, run_stored

        token, flag = self.services.start_run()
        total = len(plan.cells())
        done = len(cell_rows(self.services.db, sweep_id))
        try:
            yield {self.token: token, self.current: sweep_id, **self._views(sweep_id, x_counter),
                   self.status: f"sweep {sweep_id}: {done}/{total} cells, loading…"}
            last = 0.0
            runs = self.services.runs
            for result in run_stored(self.services.db, sweep_id, plan, workers=workers, cancel=flag, slot=runs.slot):
                done += 1
                update = {self.status: f"sweep {sweep_id}: {done}/{total} cells ({result.key.arm} @ {result.key.level:g}); "
                                       f"{runs.running()} of {runs.slots} run slots busy, {runs.waiting()} waiting"}
                if time.monotonic() - last >= self.services.update_interval or done == total:
                    update.update(self._views(sweep_id, x_counter))
                    last = time.monotonic()
                yield update
            word = "cancelled" if flag.is_set() else "done"
            yield {**self._views(sweep_id, x_counter), self.token: None,
                   self.status: f"{word}: sweep {sweep_id}, {done}/{total} cells",
                   self.stored: gr.Dropdown(choices=sweep_choices(self.services), value=sweep_id)}
        except Exception as exc:
            yield {self.status: f"⚠ {error_message(exc)}", self.token: None}
        finally:
            self.services.finish(token)

    def _views(self, sweep_id: int, counter: str) -> dict:
        from app.workflows.sweeps import cell_rows
        from engines.sweep_stats import all_pairs, points

        cells = cell_rows(self.services.db, sweep_id)
        pts = points(cells)
        return {self.plot: sweep_figure(pts, counter or "generated_tokens"), self.table: point_rows(pts, counter or "generated_tokens"),
                self.pairs: pair_rows(all_pairs(cells))}

    def show(self, sweep_id, counter):
        if sweep_id is None:
            return {self.status: "choose a stored sweep"}
        try:
            views = self._views(int(sweep_id), counter)
        except Exception as exc:
            return {self.status: f"⚠ {error_message(exc)}"}
        return {**views, self.current: int(sweep_id), self.status: f"sweep {int(sweep_id)}"}

    def download(self, sweep_id, kind: str):
        if sweep_id is None:
            return {self.status: "⚠ run or open a sweep first"}
        folder = Path(tempfile.mkdtemp(prefix="samplescope-sweep-"))
        path = folder / f"samplescope-sweep-{int(sweep_id)}.{kind}"
        try:
            if kind == "html":
                from app.workflows.report import report_html

                path.write_text(report_html(self.services.db, "sweep", int(sweep_id)), encoding="utf-8")
            else:
                from storage.sweeps import export_cells

                self.services.db.read(lambda s: export_cells(s, int(sweep_id), path))
        except Exception as exc:
            return {self.status: f"⚠ {error_message(exc)}"}
        return {self.file: str(path), self.status: f"ready: {path.name}"}
