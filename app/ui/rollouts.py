"""The Train (RL) tab: run a training-time rollout strategy on a policy, watch it live.

Pick a policy (the embedded arith policy by default), a training prompt set, a reward
control (exact, random, inverted, gated step: the controls that tell learning from noise),
a rollout strategy (its form built from its config, as the samplers' are) and a budget in
samples. Start runs :func:`engines.training.loop.train` on a worker thread inside one of
the services' run slots, as Explore's live runs do; the handler folds its events into a
:class:`~app.views.rollouts.TrainingView` and draws, when the render throttle allows, the
batch grid (prompts x samples by reward, dropped groups greyed with their rule), the
curves (held-out accuracy greedy and T=1, KL, loss, samples spent) and a status line.
Cancel raises the run's flag: the loop stops at its next draw and its last checkpoint
stays in the data folder; Resume continues the named run from it (``resume=True``), with
the run's stored settings and the budget in the page. Bad input is refused with one line
before anything starts.

"Rollouts only" runs the strategy's rollout side without updates
(:func:`engines.training.rollouts_only.rollouts_only`) on any text model, served ones
included (``openai:URL``): the same batch grid, and instead of training curves the share
of samples each batch kept and the groups dropped by each rule; it stores nothing. A
policy that cannot be trained without that box ticked is refused in one line. Below, the
Compare-strategies section (app.ui.strategy_compare) runs strategies x seeds at the matched
samples budget of this form.
"""

from __future__ import annotations

import json
import time
from typing import Any

import gradio as gr

from app.ui import forms
from app.ui.diffusion_train import DIFFUSION_POLICIES, DiffusionTrainSection
from app.ui.explore import RenderThrottle, error_markdown
from app.ui.services import Services, error_message
from app.ui.strategy_compare import CompareSection
from app.views import rollouts as views
from app.views.render import md_text
from engines.errors import ConfigError
from engines.runner import on_thread


def prompt_choices() -> list[str]:
    """The training prompt sets engines.training.prompts offers: arith-train at each level, and the task sets."""
    from engines.tasks import TASK_SETS
    from engines.tasks.arith import LEVELS

    return ["arith-train", *(f"arith-train:{level}" for level in LEVELS if level != "medium"), *(n for n, _ in TASK_SETS.items())]


class RolloutsTab:
    def __init__(self, services: Services) -> None:
        from engines.training import STRATEGIES
        from engines.training.rewards import CONTROLS

        self.services = services
        with gr.Tab("Train (RL)", id="rollouts"):
            gr.Markdown("Train a policy with a training-time rollout strategy and watch which samples it draws, "
                        "keeps and drops. Checkpoints go to the data folder's `training/`.")
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    self.name = gr.Textbox("run-1", label="Run name", info="letters, digits, '.', '_' or '-'", elem_id="rl-name")
                    self.policy = gr.Dropdown(["embedded:arith", *DIFFUSION_POLICIES], value="embedded:arith",
                                              allow_custom_value=True, label="Policy",
                                              info="embedded:arith or hf:FOLDER; rollouts only: any text model, e.g. "
                                              "openai:URL; diffusion: embedded:digits or diffusers:FOLDER", elem_id="rl-policy")
                    self.rollouts_only = gr.Checkbox(False, label="Rollouts only (no updates)", elem_id="rl-rollouts-only",
                                                     info="what the strategy keeps from this model, at what sample cost; "
                                                     "served models too; stores nothing")
                    self.prompts = gr.Dropdown(prompt_choices(), value="arith-train", allow_custom_value=True,
                                               label="Training prompts", info="arith-train[:LEVEL[:N]], a task set or a .jsonl file",
                                               elem_id="rl-prompts")
                    self.control = gr.Dropdown(list(CONTROLS), value="exact", label="Reward control",
                                               info="random and inverted rewards: what no strategy should learn from",
                                               elem_id="rl-control")
                    with gr.Row():
                        self.budget = gr.Number(64, precision=0, label="Budget: samples", elem_id="rl-budget")
                        self.eval_every = gr.Number(1, precision=0, label="Evaluate every (updates)", elem_id="rl-eval-every")
                        self.eval_size = gr.Number(20, precision=0, label="Held-out prompts", elem_id="rl-eval-size")
                    with gr.Row():
                        self.learning_rate = gr.Number(1e-5, label="Learning rate", elem_id="rl-lr")
                        self.kl_coef = gr.Number(0.0, label="KL coefficient", elem_id="rl-kl")
                        self.seed = gr.Number(0, precision=0, label="Seed", elem_id="rl-seed")
                with gr.Column(scale=1, min_width=320) as self.strategy_column:
                    self.strategy = gr.Dropdown([(cls.Config.label, name) for name, cls in STRATEGIES.items()], value="grpo",
                                                label="Strategy", elem_id="rl-strategy")
                    self.forms = forms.build_forms(STRATEGIES.items(), "grpo", "rl")
            with gr.Row(equal_height=True) as self.buttons:
                self.start_button = gr.Button("Start", variant="primary", elem_id="rl-start")
                self.resume_button = gr.Button("Resume", elem_id="rl-resume")
                self.cancel_button = gr.Button("Cancel", variant="stop", elem_id="rl-cancel")
            self.status = gr.Markdown(elem_id="rl-status")
            self.grid = gr.Plot(label="Batch", elem_id="rl-grid")
            self.curves = gr.Plot(label="Curves", elem_id="rl-curves")
            self.tree = gr.Plot(label="Rollout tree (tree_rpo, tree_rl)", elem_id="rl-tree")
            self.token = gr.State(None)  # inside the Tab: see ExploreTab
            self.compare = CompareSection(self)
            self.diffusion = DiffusionTrainSection(self)
        self._wire()
        self.diffusion.toggle([self.rollouts_only, self.prompts, self.control, self.kl_coef, self.strategy_column,
                               self.buttons, self.status, self.grid, self.curves, self.tree, self.compare.accordion])

    def _wire(self) -> None:
        inputs = [self.name, self.policy, self.prompts, self.control, self.strategy, self.budget, self.eval_every,
                  self.eval_size, self.learning_rate, self.kl_coef, self.seed, self.rollouts_only,
                  *forms.all_inputs(self.forms)]
        outputs = [self.status, self.grid, self.curves, self.tree, self.token]
        self.start_button.click(self.start, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        self.resume_button.click(self.resume, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        self.cancel_button.click(self.cancel, [self.token], [self.status], concurrency_limit=None, show_progress="hidden")
        self.strategy.change(lambda s: forms.visibility(self.forms, s), [self.strategy], [f.group for f in self.forms])

    # -- handlers ------------------------------------------------------------------

    def settings(self, name, policy, prompts, control, strategy, budget, eval_every, eval_size, learning_rate,
                 kl_coef, seed, rollouts_only, values, *, resume: bool = False):
        """(TrainConfig, strategy params) from the page's values; ConfigError in the page's words otherwise.

        Resume takes the run's stored settings (its run.json) and only the budget from the page."""
        from engines.training.rollout_policy import check_trainable

        if resume and rollouts_only:
            raise ConfigError("a rollout-only run stores no checkpoint to resume: untick Rollouts only or press Start")
        from app.workflows.store import training_home
        from engines.training import STRATEGIES
        from engines.training.loop import TrainConfig

        samples = forms.whole_number("Budget: samples", budget)
        if samples < 1:
            raise ConfigError("Budget: samples must be at least 1")
        name = (name or "").strip()
        if resume:
            TrainConfig(name=name, samples=samples)  # the run name's check, before it names a folder
            stored_file = training_home() / name / "run.json"
            if not stored_file.is_file():
                raise ConfigError(f"nothing to resume: no run named {name!r}")
            stored = json.loads(stored_file.read_text())
            config = TrainConfig.from_dict({**stored["config"], "samples": samples})
            return config, stored.get("strategy_params", {})
        if strategy not in STRATEGIES:
            STRATEGIES.get(strategy)  # the registry's one-line unknown-name error
        params = forms.params_for(self.forms, strategy, list(values))
        STRATEGIES.get(strategy).Config.from_dict(params)  # its own checks, before anything starts
        number = {"Learning rate": learning_rate, "KL coefficient": kl_coef}
        for label, value in number.items():
            try:
                number[label] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{label} must be a number, got {value!r}") from None
        config = TrainConfig.from_dict({
            "name": name, "policy": (policy or "").strip(), "prompts": (prompts or "").strip(),
            "reward_control": control, "strategy": strategy, "samples": samples,
            "eval_every": forms.whole_number("Evaluate every (updates)", eval_every),
            "eval_size": max(1, forms.whole_number("Held-out prompts", eval_size)),
            "learning_rate": number["Learning rate"], "kl_coef": number["KL coefficient"],
            "seed": forms.whole_number("Seed", seed),
        })
        from engines.training.prompts import load_prompts

        load_prompts(config.prompts)  # a prompt set that does not exist is refused here, not on the worker
        if rollouts_only:
            return config, params
        check_trainable(config.policy)
        if (training_home() / config.name / "state.pt").exists():
            raise ConfigError(f"run {config.name!r} exists; press Resume or give another run name")
        return config, params

    def start(self, *args, request: gr.Request = None):
        yield from self._run(args, resume=False, request=request)

    def resume(self, *args, request: gr.Request = None):
        yield from self._run(args, resume=True, request=request)

    def _run(self, args, *, resume: bool, request: gr.Request | None):
        from app.workflows.store import training_home
        from engines.training.loop import train
        from engines.training.rollouts_only import rollouts_only

        clicked = time.monotonic()
        only = bool(args[11])
        try:
            config, params = self.settings(*args[:12], args[12:], resume=resume)
            ticket = self.services.runs.enter()
        except Exception as exc:  # bad input: one line in the page, nothing starts
            yield {self.status: error_markdown(error_message(exc))}
            return
        view = views.TrainingView()
        tree = views.RolloutTree()
        curves = views.rollout_curves if only else views.curves

        def fold(event) -> bool:
            return view.add(event) | tree.add(event)  # both see every event

        def produce(flag):  # on the worker thread
            if only:
                return rollouts_only(config, params, cancel=flag)
            return train(config, params, resume=resume, cancel=flag, runs_folder=training_home())

        def draw(changed: bool, running: bool) -> dict[Any, Any]:
            status = views.status_line(view, time.monotonic() - clicked, running=running)
            if not running and view.done is not None and view.done.status == "cancelled" and not only:
                status += " — the last checkpoint is kept: Resume continues this run"
            figures = {self.grid: views.batch_grid(view), self.curves: curves(view), self.tree: tree.figure()} if changed else {}
            return {self.status: status, **figures}

        starting = f"{'resuming' if resume else 'starting'} {md_text(config.name)}…"
        yield from self.stream_in_slot(ticket, request, produce, fold, draw, starting,
                                       status_box=self.status, token_box=self.token, thread="samplescope-train")

    def stream_in_slot(self, ticket, request, produce, fold, draw, starting: str, *, status_box, token_box, thread: str):
        """Wait for the run slot ``ticket`` holds a place for, run ``produce(cancel_flag)`` (an event iterator) on a
        worker thread, ``fold`` each event into the caller's view (True when its figures changed) and yield page
        updates: ``draw(changed, running=True)`` as the render throttle allows, ``draw(True, running=False)`` at the
        end. The run's token (for Cancel) goes to ``token_box``; an error is one line in ``status_box``."""
        token, flag = self.services.start_run(getattr(request, "session_hash", None))
        finished = False
        try:
            while not self.services.runs.start(ticket, timeout=0.5):
                if flag.is_set():
                    yield {status_box: "cancelled while waiting: nothing ran", token_box: None}
                    return
                yield {status_box: f"waiting for a free slot: {self.services.runs.position(ticket)} in line",
                       token_box: token}
            yield {**draw(True, True), status_box: starting, token_box: token}
            throttle = RenderThrottle(self.services.update_interval)
            changed = False
            for event in on_thread(lambda put: produce(flag), flag, name=thread):
                if event is not None:
                    changed = fold(event) or changed
                if not throttle.due():
                    continue
                started = time.monotonic()
                yield draw(changed, True)
                changed = False
                throttle.drawn(started)
            finished = True
        except Exception as exc:
            yield {status_box: error_markdown(error_message(exc)), token_box: None}
            return
        finally:
            if not finished:
                flag.set()  # an error, or the page went away: the worker stops too
            self.services.runs.leave(ticket)
            self.services.finish(token)
        yield {**draw(True, False), token_box: None}

    def cancel(self, token):
        if self.services.cancel(token):
            return "cancelling… (the run stops at its next draw; its last checkpoint stays)"
        return "nothing is running"
