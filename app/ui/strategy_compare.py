"""The Train (RL) tab's Compare-strategies section: strategies at a matched sample budget, over seeds.

The chosen strategies each train with every seed on the policy, prompts, reward control,
samples budget and evaluation settings of the tab above, each with the parameters of its own
form (engines.training.compare); the cells run one after another in one of the services' run
slots, as a training run does. The figure (app.views.strategy_compare) and the table of each
strategy at the budget are redrawn whenever a run finishes; the status line follows the
running cell. Cancel stops the running cell at its next draw; Compare with the same name
continues: finished runs are kept, the stopped one continues from its last checkpoint. A
name holding another plan, and bad input, are refused in one line before anything starts.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from app.ui import forms
from app.ui.explore import error_markdown
from app.ui.services import error_message
from app.views.render import md_text
from app.views.strategy_compare import FINAL_HEADERS, comparison_figure, final_rows
from engines.errors import ConfigError


class CompareSection:
    """Built inside the Train tab (``tab``: its inputs, forms, services and slot runner)."""

    def __init__(self, tab: Any) -> None:
        from engines.training import STRATEGIES

        self.tab = tab
        with gr.Accordion("Compare strategies at a matched sample budget", open=False, elem_id="rl-compare") as self.accordion:
            gr.Markdown("Train each chosen strategy with every seed on the policy, prompts, reward control, samples "
                        "budget and evaluation settings above (each strategy with its own form's parameters), then "
                        "compare held-out accuracy, kept share and KL against samples spent, with 95% bootstrap bands "
                        "over seeds. Compare again with the same name to continue a stopped comparison.")
            with gr.Row():
                self.name = gr.Textbox("compare-1", label="Comparison name", elem_id="rl-compare-name")
                self.seeds = gr.Number(2, precision=0, label="Seeds", elem_id="rl-compare-seeds")
            self.strategies = gr.CheckboxGroup([(cls.Config.label, name) for name, cls in STRATEGIES.items()],
                                               value=["grpo", "raft"], label="Strategies", elem_id="rl-compare-strategies")
            with gr.Row():
                self.start_button = gr.Button("Compare", variant="primary", elem_id="rl-compare-start")
                self.cancel_button = gr.Button("Cancel comparison", variant="stop", elem_id="rl-compare-cancel")
            self.status = gr.Markdown(elem_id="rl-compare-status")
            self.figure = gr.Plot(label="Strategies at a matched sample budget", elem_id="rl-compare-plot")
            self.table = gr.Dataframe(headers=FINAL_HEADERS, interactive=False, elem_id="rl-compare-table")
            self.token = gr.State(None)
        inputs = [self.name, self.strategies, self.seeds, tab.policy, tab.prompts, tab.control, tab.budget,
                  tab.eval_every, tab.eval_size, tab.learning_rate, tab.kl_coef, *forms.all_inputs(tab.forms)]
        self.start_button.click(self.start, inputs, [self.status, self.figure, self.table, self.token],
                                concurrency_limit=None, show_progress="hidden")
        self.cancel_button.click(self.cancel, [self.token], [self.status], concurrency_limit=None, show_progress="hidden")

    def plan(self, name, strategies, seeds, policy, prompts, control, budget, eval_every, eval_size, learning_rate,
             kl_coef, values):
        """The StrategyComparison the page describes; ConfigError in the page's words otherwise."""
        from engines.training.compare import StrategyComparison
        from engines.training.prompts import load_prompts
        from engines.training.rollout_policy import check_trainable

        strategies = list(strategies or [])
        if not strategies:
            raise ConfigError("choose at least one strategy to compare")
        count = forms.whole_number("Seeds", seeds)
        if count < 1:
            raise ConfigError("Seeds must be at least 1")
        # the tab's own checks of the shared settings (budget, numbers, run name), with the first strategy
        config, _ = self.tab.settings(name, policy, prompts, control, strategies[0], budget, eval_every, eval_size,
                                      learning_rate, kl_coef, 0, True, values)
        check_trainable(config.policy)
        if config.eval_every:
            load_prompts(config.eval_prompts)  # a held-out set that does not exist is refused here
        per_strategy = {s: forms.params_for(self.tab.forms, s, list(values)) for s in strategies}
        return StrategyComparison(name=config.name, strategies=tuple(strategies), seeds=tuple(range(count)),
                                  config=config, per_strategy=per_strategy)

    def start(self, *args, request: gr.Request = None):
        from app.workflows.store import training_home
        from engines.training.compare import (
            CellDone,
            comparison_curves,
            comparison_dir,
            final_points,
            run_comparison,
            stored_cells,
        )

        clicked = time.monotonic()
        try:
            plan = self.plan(*args[:11], args[11:])
            folder = comparison_dir(training_home(), plan.name)
            ticket = self.tab.services.runs.enter()
        except Exception as exc:  # bad input: one line in the page, nothing starts
            yield {self.status: error_markdown(error_message(exc))}
            return
        total = len(plan.cells())
        state: dict[str, Any] = {"update": None}  # the running cell's latest update

        def produce(flag):
            return run_comparison(plan, folder, cancel=flag)

        def fold(event) -> bool:  # the figure changes when a run finishes
            if isinstance(event, CellDone):
                state["update"] = None
                return True
            if event.kind == "update":
                state["update"] = event
            return False

        def draw(changed: bool, running: bool) -> dict[Any, Any]:
            cells = stored_cells(folder) if folder.joinpath("plan.json").is_file() else []
            elapsed = time.monotonic() - clicked
            if running:
                update = state["update"]
                now = (f"; running: update {update.step}, {update.metrics.get('spent_samples', 0)} samples"
                       if update is not None else "")
                status = f"running… {len(cells)}/{total} runs done{now}; {elapsed:.1f} s"
            else:
                status = f"**{len(cells)}/{total} runs done** in {elapsed:.1f} s"
                if len(cells) < total:
                    status += " — stopped: Compare with this name continues it"
            update_page: dict[Any, Any] = {self.status: status}
            if changed:
                update_page[self.figure] = comparison_figure(comparison_curves(cells))
                update_page[self.table] = final_rows(final_points(cells, plan.config.samples))
            return update_page

        yield from self.tab.stream_in_slot(ticket, request, produce, fold, draw, f"comparing {md_text(plan.name)}…",
                                           status_box=self.status, token_box=self.token, thread="samplescope-compare")

    def cancel(self, token):
        if self.tab.services.cancel(token):
            return "cancelling… (the running training run stops at its next draw; finished runs are kept)"
        return "nothing is running"
