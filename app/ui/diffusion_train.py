"""The Train (RL) tab's diffusion side: fine-tune a diffusion policy with a rollout scheme, watch it live.

When the tab's policy is a diffusion model (``embedded:digits`` or ``diffusers:FOLDER``) the
text controls give way to this section: a reward (``digit:3`` by default), a rollout scheme
picked from the registry of :mod:`engines.training.diffusion` (its form built from its config,
so a newly registered scheme appears without UI code), and the tab's run name, samples budget,
evaluation settings, learning rate and seed. Start runs
:func:`engines.training.diffusion.loop.train_diffusion` on a worker thread inside one of the
services' run slots (the text side's :meth:`RolloutsTab.stream_in_slot`), folding its events into
a :class:`~app.views.diffusion_train.DiffusionTrainingView`: the sample grids before and after,
reward / held-out k-NN check / KL / loss against the update, and the denoising rollout of a
sample with its stochastic and deterministic steps and per-step advantages. Cancel raises the
run's flag (the last checkpoint stays); Resume continues the named run with its stored settings
and the page's budget. Bad input is refused with one line before anything starts.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import gradio as gr

from app.ui import forms
from app.ui.explore import error_markdown
from app.ui.services import error_message
from app.views import diffusion_train as views
from app.views.render import md_text
from app.views.rollouts import RolloutTree
from engines.errors import ConfigError

DIFFUSION_POLICIES = ("embedded:digits",)


def is_diffusion_policy(spec: str | None) -> bool:
    spec = (spec or "").strip()
    return spec in (*DIFFUSION_POLICIES, "digits") or spec.startswith("diffusers:")


class DiffusionTrainSection:
    """Built inside the Train (RL) tab (``tab``: its shared inputs, services and slot runner)."""

    def __init__(self, tab: Any) -> None:
        from engines.training.diffusion import SCHEMES

        self.tab = tab
        with gr.Column(visible=False, elem_id="dt-section") as self.column:
            gr.Markdown("Fine-tune the diffusion policy against a reward with a rollout scheme: which denoising steps "
                        "draw noise, which get credit, how far the gradient flows. The held-out k-NN check tells a "
                        "rising reward from a hacked one.")
            with gr.Row():
                self.reward = gr.Textbox("digit:3", label="Reward", info="an image reward, e.g. digit:3",
                                         elem_id="dt-reward")
                self.scheme = gr.Dropdown([(cls.Config.label, name) for name, cls in SCHEMES.items()], value="dpok",
                                          label="Rollout scheme", elem_id="dt-scheme")
            # every scheme field applies to images (the forms hide a text-only field by its name otherwise)
            image_schemes = [(name, SimpleNamespace(Config=cls.Config, modalities=("image",))) for name, cls in SCHEMES.items()]
            self.forms = forms.build_forms(image_schemes, "dpok", "dt", modality="image")
            with gr.Row(equal_height=True):
                self.start_button = gr.Button("Start", variant="primary", elem_id="dt-start")
                self.resume_button = gr.Button("Resume", elem_id="dt-resume")
                self.cancel_button = gr.Button("Cancel", variant="stop", elem_id="dt-cancel")
            self.status = gr.Markdown(elem_id="dt-status")
            self.grids = gr.HTML(elem_id="dt-grids")
            self.curves = gr.Plot(label="Curves", elem_id="dt-curves")
            self.rollout = gr.Plot(label="Denoising rollout", elem_id="dt-rollout")
            self.tree = gr.Plot(label="Rollout tree (tree, branch)", elem_id="dt-tree")
            self.token = gr.State(None)
        inputs = [tab.name, tab.policy, self.reward, self.scheme, tab.budget, tab.eval_every, tab.eval_size,
                  tab.learning_rate, tab.seed, *forms.all_inputs(self.forms)]
        outputs = [self.status, self.grids, self.curves, self.rollout, self.tree, self.token]
        self.start_button.click(self.start, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        self.resume_button.click(self.resume, inputs, outputs, concurrency_limit=None, show_progress="hidden")
        self.cancel_button.click(self.cancel, [self.token], [self.status], concurrency_limit=None, show_progress="hidden")
        self.scheme.change(lambda s: forms.visibility(self.forms, s), [self.scheme], [f.group for f in self.forms])

    def toggle(self, text_only: list[Any]):
        """Wire the policy picker: a diffusion policy shows this section and hides ``text_only``."""

        def show(policy: str) -> dict[Any, Any]:
            diffusion = is_diffusion_policy(policy)
            return {self.column: gr.update(visible=diffusion), **{c: gr.update(visible=not diffusion) for c in text_only}}

        self.tab.policy.change(show, [self.tab.policy], [self.column, *text_only], show_progress="hidden")

    # -- handlers ------------------------------------------------------------------

    def settings(self, name, policy, reward, scheme, budget, eval_every, eval_size, learning_rate, seed, values,
                 *, resume: bool = False):
        """(DiffusionTrainConfig, scheme params) from the page; ConfigError in the page's words otherwise.

        Resume takes the run's stored settings (its run.json) and only the budget from the page."""
        from app.workflows.store import training_home
        from engines.training.diffusion import SCHEMES
        from engines.training.diffusion.loop import DiffusionTrainConfig

        samples = forms.whole_number("Budget: samples", budget)
        if samples < 1:
            raise ConfigError("Budget: samples must be at least 1")
        name = (name or "").strip()
        if resume:
            DiffusionTrainConfig(name=name, samples=samples)  # the run name's check, before it names a folder
            stored_file = training_home() / name / "run.json"
            if not stored_file.is_file():
                raise ConfigError(f"nothing to resume: no run named {name!r}")
            stored = json.loads(stored_file.read_text())
            if stored.get("config", {}).get("scheme") not in SCHEMES:
                raise ConfigError(f"run {name!r} is not a diffusion run: resume it with a text policy picked")
            return DiffusionTrainConfig.from_dict({**stored["config"], "samples": samples}), stored.get("scheme_params", {})
        if scheme not in SCHEMES:
            SCHEMES.get(scheme)  # the registry's one-line unknown-name error
        params = forms.params_for(self.forms, scheme, list(values))
        SCHEMES.get(scheme).Config.from_dict(params)  # its own checks, before anything starts
        try:
            rate = float(learning_rate)
        except (TypeError, ValueError):
            raise ConfigError(f"Learning rate must be a number, got {learning_rate!r}") from None
        config = DiffusionTrainConfig.from_dict({
            "name": name, "policy": (policy or "").strip(), "reward": (reward or "").strip(), "scheme": scheme,
            "samples": samples, "eval_every": forms.whole_number("Evaluate every (updates)", eval_every),
            "eval_size": max(1, forms.whole_number("Evaluation samples", eval_size)), "learning_rate": rate,
            "seed": forms.whole_number("Seed", seed),
        })
        if (training_home() / config.name / "state.pt").exists():
            raise ConfigError(f"run {config.name!r} exists; press Resume or give another run name")
        return config, params

    def start(self, *args, request: gr.Request = None):
        yield from self._run(args, resume=False, request=request)

    def resume(self, *args, request: gr.Request = None):
        yield from self._run(args, resume=True, request=request)

    def _run(self, args, *, resume: bool, request: gr.Request | None):
        from app.workflows.store import training_home
        from engines.training.diffusion.loop import train_diffusion

        clicked = time.monotonic()
        services = self.tab.services
        try:
            config, params = self.settings(*args[:9], args[9:], resume=resume)
            ticket = services.runs.enter()
        except Exception as exc:  # bad input: one line in the page, nothing starts
            yield {self.status: error_markdown(error_message(exc))}
            return
        view = views.DiffusionTrainingView()
        tree = RolloutTree()

        def fold(event) -> bool:
            return view.add(event) | tree.add(event)  # both see every event

        def produce(flag):  # on the worker thread; the policy and reward load there, checked before any event
            return train_diffusion(config, params, resume=resume, cancel=flag, runs_folder=training_home())

        def draw(changed: bool, running: bool) -> dict[Any, Any]:
            status = views.diffusion_status(view, time.monotonic() - clicked, running=running)
            if not running and view.done is not None and view.done.status == "cancelled":
                status += " — the last checkpoint is kept: Resume continues this run"
            if not running and view.done is not None and view.done.metrics.get("model_spec"):
                status += f"; trained model: `{md_text(view.done.metrics['model_spec'], 300)}`"
            if not changed:
                return {self.status: status}
            return {self.status: status, self.grids: views.sample_grids(view), self.curves: views.diffusion_curves(view),
                    self.rollout: views.rollout_figure(view), self.tree: tree.figure()}

        starting = f"{'resuming' if resume else 'starting'} {md_text(config.name)}…"
        yield from self.tab.stream_in_slot(ticket, request, produce, fold, draw, starting, status_box=self.status,
                                           token_box=self.token, thread="samplescope-train-diffusion")

    def cancel(self, token):
        return self.tab.cancel(token)
