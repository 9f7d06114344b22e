"""The Explore tab: pick a model, a reward and a sampler, run it, watch it live.

The run handler is a thin generator over the sampler's events: it appends them
to a trace and, a few times a second, yields ``{component: update}`` snapshots
of the views. Cancel raises the run's flag; the sampler stops at its next
model or reward call. A finished run (ok, stopped by its budget, or
cancelled) is stored in one repository call and gets a link ``/?run=ID``.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from app.ui import forms
from app.ui.panel import ViewPanel, candidate_html
from app.ui.services import Services, error_message
from app.views.render import md_text
from app.workflows.store import rewards_home
from engines.runner import RunRequest, stream
from engines.trace import Trace


def progress_text(trace: Trace, request: RunRequest, finished: bool = False) -> str:
    done = len(trace.candidates)
    target = request.params.get("n")
    count = f"{done}/{target} candidates" if target else f"{done} candidates, {len(trace.nodes)} nodes"
    cost = trace.cost
    spent = f"{int(cost.get('generated_tokens', 0)):,} tokens, {cost.get('wall_seconds', 0.0):.1f} s"
    if finished and trace.done is not None:
        note = f" — {md_text(trace.done.message, 400)}" if trace.done.message else ""
        return f"**{md_text(trace.done.status)}**: {count}, {spent}{note}"
    return f"running… {count}, {spent}"


def error_markdown(message: str) -> str:
    # our own element around the user's error, which is shown as text
    return f"<span class='error-line'>⚠ {md_text(message, 600)}</span>"


class ExploreTab:
    def __init__(self, services: Services) -> None:
        from engines.samplers import SAMPLERS

        self.services = services
        samplers = SAMPLERS.items()
        with gr.Tab("Explore", id="explore"):
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    self.model = gr.Dropdown(
                        services.model_choices(), value=services.default_model, allow_custom_value=True, label="Model",
                        info="an embedded model, hf:/path/to/folder, hf:HUB_ID, gguf:FILE or openai:URL#NAME",
                        elem_id="explore-model",
                    )
                    if services.engines:  # re-probed on every page load
                        self.engines = gr.Markdown(services.engine_markdown, elem_id="explore-engines")
                    self.reward = gr.Dropdown(
                        forms.reward_choices(), value="sentiment", allow_custom_value=True, label="Reward",
                        info="e.g. sentiment, math, length:20, regex:PATTERN, judge, rm:/path", elem_id="explore-reward",
                    )
                    modality = forms.model_modality(services.default_model)  # the pickers offer what runs on the model
                    self.sampler = gr.Dropdown(
                        forms.sampler_choices(modality), value="best_of_n", label="Sampler", elem_id="explore-sampler",
                    )
                    self.forms = forms.build_forms(samplers, "best_of_n", "explore", modality)
                    with gr.Row():  # no minimum: request() refuses a negative value in words instead
                        self.seed = gr.Number(0, precision=0, label="Seed", elem_id="explore-seed")
                        self.budget = gr.Number(0, precision=0, label="Token budget", info="0 = no cap", elem_id="explore-budget")
                with gr.Column(scale=2):
                    self.task = gr.Dropdown(forms.task_choices(), value=None, label="Built-in prompt", elem_id="explore-task")
                    self.prompt = gr.Textbox(lines=3, label="Prompt", placeholder="Write a prompt, or pick a built-in one", elem_id="explore-prompt")
                    with gr.Row():
                        self.answer = gr.Textbox(label="Reference answer", info="for verifiable rewards such as math", scale=3)
                        self.chat = gr.Checkbox(True, label="Chat template", scale=1)
                    with gr.Row():
                        self.run_button = gr.Button("Run", variant="primary", elem_id="explore-run")
                        self.cancel_button = gr.Button("Cancel", variant="stop", elem_id="explore-cancel")
                    self.status = gr.Markdown(elem_id="explore-status")
                    self.link = gr.Markdown(elem_id="explore-link")
            self.panel = ViewPanel("explore")
            # states live inside the Tab: a State directly under gr.Tabs makes Gradio 6.31 draw duplicate tab buttons
            self.token = gr.State(None)
            self.run_id = gr.State(None)
        self._wire()

    def _wire(self) -> None:
        inputs = [self.model, self.reward, self.sampler, self.prompt, self.answer, self.chat, self.seed, self.budget]
        inputs += forms.all_inputs(self.forms)
        outputs = [self.status, self.link, self.token, self.run_id, *self.panel.outputs]
        # no Gradio limit here: the run waits for a slot in services.runs and shows its place in line meanwhile
        self.run_button.click(self.run, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        self.prompt.submit(self.run, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        self.cancel_button.click(self.cancel, [self.token], [self.status], concurrency_limit=None, show_progress="hidden")
        self.sampler.change(lambda s: forms.visibility(self.forms, s), [self.sampler], [f.group for f in self.forms])
        self.model.change(lambda m, s: forms.fit_to_model(self.forms, self.sampler, m, s), [self.model, self.sampler],
                          [self.sampler, *forms.form_outputs(self.forms)], show_progress="hidden")
        self.task.change(self.pick_task, [self.task], [self.prompt, self.answer, self.chat, self.model, self.reward])
        # any change (typed, pasted, set by a link): a prompt that is not the task's own drops the task and its answer
        self.prompt.change(self.detach_task, [self.task, self.prompt], [self.task, self.answer], show_progress="hidden")
        self.panel.table.select(self.show_candidate, [self.run_id], [self.panel.detail])

    # -- handlers ------------------------------------------------------------------

    def request(self, model, reward, sampler, prompt, answer, chat, seed, budget, values) -> RunRequest:
        params = forms.params_for(self.forms, sampler, list(values))
        seed, budget = forms.whole_number("Seed", seed), forms.whole_number("Token budget", budget)
        return RunRequest.build(
            model=model, reward=reward, sampler=sampler, params=params, prompt=prompt or "",
            answer=(answer or "").strip() or None, chat=bool(chat), seed=seed,
            budget={"generated_tokens": budget} if budget else None,
            device=self.services.device, dtype=self.services.dtype, rewards_folder=rewards_home(),
        )

    def run(self, model, reward, sampler, prompt, answer, chat, seed, budget, *values):
        try:
            request = self.request(model, reward, sampler, prompt, answer, chat, seed, budget, values)
        except Exception as exc:  # bad input: one line in the page, nothing else changes
            yield {self.status: error_markdown(error_message(exc))}
            return
        try:
            ticket = self.services.runs.enter()
        except Exception as exc:
            yield {self.status: error_markdown(error_message(exc))}
            return
        token, flag = self.services.start_run()
        trace = Trace()
        try:
            while not self.services.runs.start(ticket, timeout=0.5):
                if flag.is_set():
                    yield {self.status: "cancelled while waiting: nothing ran", self.token: None}
                    return
                place = self.services.runs.position(ticket)
                yield {self.status: f"waiting for a free slot: {place} in line, {self.services.runs.running()} run(s) going",
                       self.token: token}
            yield {self.status: f"loading {md_text(request.model)}…", self.link: "", self.token: token, self.run_id: None, **self.panel.clear()}
            last = 0.0
            for event in stream(request, cancel=flag):
                trace.append(event)
                now = time.monotonic()
                if event.kind == "done" or now - last >= self.services.update_interval:
                    last = now
                    yield {self.status: progress_text(trace, request, finished=event.kind == "done"), **self.panel.render(trace)}
        except Exception as exc:
            yield {self.status: error_markdown(error_message(exc)), self.token: None}
            return
        finally:
            self.services.runs.leave(ticket)
            self.services.finish(token)
        yield self.save(request, trace)

    def save(self, request: RunRequest, trace: Trace) -> dict[Any, Any]:
        from app.workflows.store import save_request_run

        try:
            run_id = save_request_run(self.services.db, request, trace)
        except Exception as exc:
            return {self.link: error_markdown("not saved: " + error_message(exc)), self.token: None}
        return {self.link: f"Saved as run {run_id}: [/?run={run_id}](/?run={run_id})", self.run_id: run_id, self.token: None}

    def cancel(self, token):
        if self.services.cancel(token):
            return "cancelling… (the sampler stops at its next step)"
        return "nothing is running"

    def pick_task(self, ref):
        if not ref:  # an empty dict would read as one output value to Gradio
            return {self.prompt: gr.update()}
        from engines.tasks import TASK_SETS, get_task

        task = get_task(ref)
        task_set = TASK_SETS.get(ref.rsplit(":", 1)[0])
        return {
            self.prompt: task.prompt,
            self.answer: task.answer or "",
            self.chat: task.chat,
            self.model: task_set.model,
            self.reward: task.meta.get("reward", task_set.reward),
        }

    def detach_task(self, ref, prompt):
        """The built-in task's reference answer goes when its prompt is edited: it would score the new prompt wrongly."""
        from engines.tasks import get_task

        if not ref or (prompt or "") == get_task(ref).prompt:
            return {self.answer: gr.update()}
        return {self.task: None,
                self.answer: gr.update(value="", placeholder=f"cleared: the prompt is no longer {ref}'s; type the new answer here")}

    def show_candidate(self, run_id, evt: gr.SelectData):
        if run_id is None:
            return "<p><em>The run is still going; its candidates can be read when it is stored.</em></p>"
        from storage import load_run

        row = evt.row_value or []
        node_id = row[1] if len(row) > 1 else None
        trace = self.services.db.read(lambda s: load_run(s, int(run_id)).trace)
        return candidate_html(trace, node_id)
