"""The Runs tab: stored runs, filtered by sampler, model and reward; open one to replay it.

Opening a run replays its stored events into the same views Explore uses, in
a few quick steps so the tree can be seen growing. ``/?run=ID`` opens a run
directly (see :func:`app.ui.build_demo`). The list refreshes when the tab is
opened, so a run stored in Explore or Compare shows without a reload.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from app.ui.panel import ViewPanel, candidate_html
from app.ui.services import Services, error_message
from app.views.render import md_text, text
from engines.trace import Trace

ALL = "(all)"
HEADERS = ["id", "created", "sampler", "model", "reward", "status", "candidates", "best reward", "prompt"]


class RunsTab:
    def __init__(self, services: Services) -> None:
        self.services = services
        with gr.Tab("Runs", id="runs") as self.tab:
            with gr.Row():
                self.sampler = gr.Dropdown([ALL], value=ALL, label="Sampler", allow_custom_value=True)
                self.model = gr.Dropdown([ALL], value=ALL, label="Model", allow_custom_value=True)
                self.reward = gr.Dropdown([ALL], value=ALL, label="Reward", allow_custom_value=True)
                self.refresh = gr.Button("Refresh", scale=0)
            self.table = gr.Dataframe(
                headers=HEADERS, interactive=False, wrap=True, max_height=300, label="Stored runs (click one to open it)",
                datatype=["number", "str", "str", "str", "str", "str", "number", "number", "str"], elem_id="runs-table",
                column_widths=["5%", "15%", "10%", "13%", "10%", "7%", "10%", "9%", "21%"],
            )
            with gr.Row():
                self.run_id = gr.Number(None, precision=0, label="Run id", scale=1, elem_id="runs-id")
                self.open = gr.Button("Open", variant="primary", scale=0, elem_id="runs-open")
                self.report = gr.Button("Download report", scale=0, elem_id="runs-report")
            self.report_file = gr.File(label="Report (one HTML file, opens offline)", interactive=False,
                                       elem_id="runs-report-file")
            self.header = gr.Markdown(elem_id="runs-header")
            self.panel = ViewPanel("runs")
            # states live inside the Tab: a State directly under gr.Tabs makes Gradio 6.31 draw duplicate tab buttons
            self.opened = gr.State(None)
        filters = [self.sampler, self.model, self.reward]
        listing = [self.table, self.sampler, self.model, self.reward]
        self.refresh.click(self.list, filters, listing)
        self.tab.select(self.list, filters, listing, show_progress="hidden")
        for f in filters:
            f.input(self.list, filters, listing)
        self.open.click(self.replay, [self.run_id], [self.header, self.opened, *self.panel.outputs])
        self.table.select(self.pick, [], [self.run_id]).then(self.replay, [self.run_id], [self.header, self.opened, *self.panel.outputs])
        self.panel.table.select(self.show_candidate, [self.opened], [self.panel.detail])
        self.report.click(self.download_report, [self.run_id], [self.report_file, self.header])

    def download_report(self, run_id) -> dict[Any, Any]:
        """The run's self-contained HTML report (app.workflows.report) as a file to download."""
        import tempfile
        from pathlib import Path

        from app.workflows.report import report_html

        if run_id is None or str(run_id).strip() == "":
            return {self.header: "Pick a run first."}
        try:
            text = report_html(self.services.db, "run", int(run_id))
        except Exception as exc:
            return {self.header: f"⚠ {error_message(exc)}"}
        path = Path(tempfile.mkdtemp(prefix="samplescope-run-")) / f"samplescope-run-{int(run_id)}.html"
        path.write_text(text, encoding="utf-8")
        return {self.report_file: str(path)}

    def list(self, sampler=ALL, model=ALL, reward=ALL) -> dict[Any, Any]:
        from storage import list_runs

        def pick(value):
            return None if value in (None, "", ALL) else value

        try:
            runs = self.services.db.read(lambda s: list_runs(s, sampler=pick(sampler), model=pick(model), reward=pick(reward), limit=200))
            everything = self.services.db.read(lambda s: list_runs(s, limit=1000))
        except Exception as exc:
            gr.Warning(text(error_message(exc)))  # a toast renders its message as HTML
            return {}
        rows = [
            [r.id, r.created_at.strftime("%Y-%m-%d %H:%M:%S"), r.sampler, r.model, r.reward, r.status, r.candidates,
             None if r.best_reward is None else round(r.best_reward, 4), " ".join(r.prompt.split())[:120]]
            for r in runs
        ]

        def choices(attr: str) -> list[str]:
            return [ALL, *sorted({getattr(r, attr) for r in everything})]

        return {
            self.table: rows,
            self.sampler: gr.update(choices=choices("sampler")),
            self.model: gr.update(choices=choices("model")),
            self.reward: gr.update(choices=choices("reward")),
        }

    def pick(self, evt: gr.SelectData):
        row = evt.row_value or []
        return row[0] if row else None

    def replay(self, run_id, steps: int = 6):
        if run_id is None or str(run_id).strip() == "":
            yield {self.header: "Pick a run first."}
            return
        from storage import load_run

        try:
            number = float(run_id)
        except (TypeError, ValueError):
            number = float("nan")
        if not number.is_integer():
            yield {self.header: "⚠ a run id is a whole number"}
            return
        try:
            stored = self.services.db.read(lambda s: load_run(s, int(number)))
        except Exception as exc:
            yield {self.header: f"⚠ {md_text(error_message(exc), 600)}"}
            return
        # every stored string is shown as text: names are typed by users (hf:PATH, regex:PATTERN), and a
        # database written by another tool or an import may hold anything
        names = " · ".join(md_text(name) for name in (stored.sampler, stored.model, stored.reward))
        run_id = int(stored.id)
        header = (
            f"### Run {run_id}: {names} · seed {md_text(stored.seed)}\n"
            f"status **{md_text(stored.status)}**, {stored.created_at.strftime('%Y-%m-%d %H:%M:%S')} — link: [/?run={run_id}](/?run={run_id})"
        )
        events = stored.trace.events
        trace = Trace()
        if not events:  # an imported run keeps its candidates but no trace: show its header, clear the views
            note = header + "\n\n*This run has no stored trace (imported): its candidates are in the export, not here.*"
            yield {self.header: note, self.opened: stored.id, **self.panel.render(trace, stored.status)}
            return
        chunk = max(1, len(events) // steps)
        for start in range(0, len(events), chunk):
            trace.extend(events[start : start + chunk])
            final = start + chunk >= len(events)
            yield {self.header: header, self.opened: stored.id, **self.panel.render(trace, stored.status if final else "replaying…")}
            if not final:
                time.sleep(0.15)

    def show_candidate(self, run_id, evt: gr.SelectData):
        if run_id is None:
            return ""
        from storage import load_run

        row = evt.row_value or []
        trace = self.services.db.read(lambda s: load_run(s, int(run_id)).trace)
        return candidate_html(trace, row[1] if len(row) > 1 else None)
