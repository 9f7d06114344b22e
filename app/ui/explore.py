"""The Explore tab: pick a model, a reward and a sampler, run it, watch it live.

The run handler is a thin generator over the run's events. The sampler works on
its own thread (:func:`engines.runner.live`), so drawing never slows it down and
the page hears of tokens decoded inside a long model call (cost snapshots). The
handler appends events to a trace and yields ``{component: update}`` snapshots
of the views when :class:`RenderThrottle` says one is due: drawing takes at
most a fixed share of the run, however costly a snapshot gets (a diffusion tree
with a hundred thumbnails). The final view is one update built from the
complete trace, after the run is stored, and never throttled. Cancel (or
closing the page) raises the run's flag: the model stops at its next decode
step. A finished run (ok, stopped by its budget, or cancelled) is stored in one
repository call and gets a link ``/?run=ID``.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from app.ui import forms
from app.ui.dial import DirectionDial
from app.ui.panel import ViewPanel, candidate_html
from app.ui.services import Services, error_message
from app.views import trace as views
from app.views.render import md_text
from app.workflows.store import rewards_home
from engines.runner import RunRequest, live
from engines.trace import Trace


def progress_text(trace: Trace, request: RunRequest, waited: float, finished: bool = False) -> str:
    """One status line: candidates so far, work done (tokens, or network evaluations for images), and
    both clocks: the sampler's own compute time and the user's wait since Run (loading, queueing and
    drawing included)."""
    done = len(trace.candidates)
    target = request.params.get("n")
    count = f"{done}/{target} candidates" if target else f"{done} candidates, {len(trace.nodes)} nodes"
    cost = trace.cost
    tokens, nfe = int(cost.get("generated_tokens", 0) or 0), int(cost.get("nfe", 0) or 0)
    work = f"{nfe:,} network evaluations" if nfe and not tokens else f"{tokens:,} tokens"
    if finished and trace.done is not None:
        note = f" — {md_text(trace.done.message, 400)}" if trace.done.message else ""
        clocks = f"sampler {float(cost.get('wall_seconds', 0.0) or 0.0):.1f} s, your wait {waited:.1f} s"
        return f"**{md_text(trace.done.status)}**: {count}, {work}; {clocks}{note}"
    return f"running… {count}, {work}; {waited:.1f} s since Run"


class RenderThrottle:
    """When the next live snapshot may be drawn.

    A snapshot is due ``interval`` seconds after the previous one *finished* (drawn and sent), and
    no sooner than the time that keeps drawing under ``share`` of the run: a snapshot that took
    ``c`` seconds waits ``c·(1-share)/share`` more. A clock taken before drawing would make every
    event due once a draw outlasts the interval (the page then lags the run without bound).
    ``interval`` 0 draws every event (the handler tests watch each step).
    """

    def __init__(self, interval: float, share: float = 0.2, clock=time.monotonic) -> None:
        self.interval, self.share, self.clock = interval, share, clock
        self.created = clock()
        self.next_at = 0.0
        self.spent = 0.0  # seconds spent drawing, for the benchmark

    def due(self) -> bool:
        return self.interval <= 0 or self.clock() >= self.next_at

    def drawn(self, started: float) -> None:
        """Call when the snapshot started at ``started`` (this clock) is drawn and sent."""
        now = self.clock()
        cost = max(now - started, 0.0)
        self.spent += cost
        self.next_at = now + max(self.interval, cost * (1 - self.share) / self.share)


#: Run (or Enter in the prompt) brings the status, Cancel and the live views into sight: the form
#: above them can be taller than the window. A listener installed once by an empty HTML element
#: (Gradio 6 runs a js-only event listener's code only for some triggers; a DOM listener always).
SHOW_LIVE_VIEWS = """
if (!window.__samplescopeLive) {
  window.__samplescopeLive = true;
  const show = () => document.getElementById('explore-live')?.scrollIntoView({block: 'start', behavior: 'instant'});
  document.addEventListener('click', (e) => { if (e.target.closest && e.target.closest('#explore-run')) show(); }, true);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && e.target.closest && e.target.closest('#explore-prompt')) show();
  }, true);
}
"""


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
                    self.run_button = gr.Button("Run", variant="primary", elem_id="explore-run")
                    self.dial = DirectionDial(services, self)
                    gr.HTML("", js_on_load=SHOW_LIVE_VIEWS, padding=False, container=False, elem_id="explore-show-live")
            # the run's status, its Cancel and its views together, full width: Run scrolls them into sight
            with gr.Row(elem_id="explore-live", equal_height=True):
                with gr.Column(scale=5):
                    self.status = gr.Markdown(elem_id="explore-status")
                    self.link = gr.Markdown(elem_id="explore-link")
                self.cancel_button = gr.Button("Cancel", variant="stop", elem_id="explore-cancel", scale=1, min_width=120)
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
        for trigger in (self.run_button.click, self.prompt.submit):
            trigger(self.run, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        self.cancel_button.click(self.cancel, [self.token], [self.status], concurrency_limit=None, show_progress="hidden")
        self.sampler.change(lambda s: forms.visibility(self.forms, s), [self.sampler], [f.group for f in self.forms])
        # The sampler list follows the model in the same update that sets the model: a user's pick (.input),
        # or the task pick below. A second round trip after a programmatic model change would replace the
        # sampler list while the user may already have it open, which Gradio's dropdown reports as a page error.
        fitted = [self.sampler, *forms.form_outputs(self.forms)]
        self.model.input(lambda m, s: forms.fit_to_model(self.forms, self.sampler, m, s), [self.model, self.sampler],
                         fitted, show_progress="hidden")
        self.task.change(self.pick_task, [self.task, self.sampler],
                         [self.prompt, self.answer, self.chat, self.model, self.reward, *fitted])
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

    def run(self, model, reward, sampler, prompt, answer, chat, seed, budget, *values, request: gr.Request = None):
        clicked = time.monotonic()
        try:
            run_request = self.request(model, reward, sampler, prompt, answer, chat, seed, budget, values)
        except Exception as exc:  # bad input: one line in the page, nothing else changes
            yield {self.status: error_markdown(error_message(exc)), self.run_id: None}
            return
        try:
            ticket = self.services.runs.enter()
        except Exception as exc:
            yield {self.status: error_markdown(error_message(exc)), self.run_id: None}
            return
        token, flag = self.services.start_run(getattr(request, "session_hash", None))
        trace = Trace()
        try:
            while not self.services.runs.start(ticket, timeout=0.5):
                if flag.is_set():
                    yield {self.status: "cancelled while waiting: nothing ran", self.token: None, self.run_id: None}
                    return
                place = self.services.runs.position(ticket)
                yield {self.status: f"waiting for a free slot: {place} in line, {self.services.runs.running()} run(s) going",
                       self.token: token, self.run_id: None}
            yield {self.status: f"loading {md_text(run_request.model)}…", self.link: "", self.token: token, self.run_id: None,
                   **self.panel.clear()}
            throttle = RenderThrottle(self.services.update_interval)
            changed = False  # events the views have not shown yet (cost snapshots only move the status)
            for event in live(run_request, flag):
                if event is not None:
                    trace.append(event)
                    changed = changed or event.kind not in ("cost", "done")
                if trace.done is not None or not throttle.due():
                    continue
                started = time.monotonic()
                if trace.events:
                    status = progress_text(trace, run_request, started - clicked)
                else:  # the model is loading (once per process) or the sampler has not reached its first event
                    status = f"loading {md_text(run_request.model)}… {started - clicked:.1f} s since Run"
                if changed:
                    yield {self.status: status, **self.panel.render(trace, detail=False)}
                    changed = False
                else:
                    yield {self.status: status, self.panel.cost: views.cost_markdown(trace.cost)}
                throttle.drawn(started)
        except Exception as exc:
            yield {self.status: error_markdown(error_message(exc)), self.token: None}
            return
        finally:
            if trace.done is None:
                flag.set()  # an error, or Gradio closed this generator (the page went away): the worker stops too
            self.services.runs.leave(ticket)
            self.services.finish(token)
        yield self.final(run_request, trace, clicked)

    def final(self, request: RunRequest, trace: Trace, clicked: float) -> dict[Any, Any]:
        """The one final update: every view from the complete trace, the status, the stored run's link.

        It is the generator's last value, so Gradio sends it whole (not as a diff of the previous
        snapshot) in the message that ends the run: no intermediate snapshot can land after it."""
        saved = self.save(request, trace)
        status = progress_text(trace, request, time.monotonic() - clicked, finished=True)
        return {**saved, self.status: status, **self.panel.render(trace)}

    def save(self, request: RunRequest, trace: Trace) -> dict[Any, Any]:
        from app.workflows.store import save_request_run

        try:
            run_id = save_request_run(self.services.db, request, trace)
        except Exception as exc:
            return {self.link: error_markdown("not saved: " + error_message(exc)), self.token: None}
        return {self.link: f"Saved as run {run_id}: [/?run={run_id}](/?run={run_id})", self.run_id: run_id, self.token: None}

    def cancel(self, token):
        if self.services.cancel(token):
            return "cancelling… (the model stops at its next decode step)"
        return "nothing is running"

    def pick_task(self, ref, sampler):
        """The task's prompt, answer, model and reward, and the sampler list and forms of that model, in one update."""
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
            **forms.fit_to_model(self.forms, self.sampler, task_set.model, sampler),
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
