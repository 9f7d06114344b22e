"""The Data tab's "Audit a reward" panel: how far to trust a reward before a sampler selects on it.

It streams :func:`app.workflows.reward_audit.audit_reward` (the CLI's ``samplescope reward
audit`` runs the same generator): a progress line while it samples and scores, then the
headline table and the figures of ``app.views.audit``. Errors are one escaped line.
"""

from __future__ import annotations

import functools
import html

import gradio as gr

from app.ui.services import Services, error_message
from app.views.audit import accuracy_figure, audit_markdown, best_of_n_figure, master_key_figure
from app.views.render import md_text


class AuditSection:
    def __init__(self, services: Services) -> None:
        self.services = services
        with gr.Accordion("Audit a reward (master keys, one-vs-many, length, best-of-N)", open=False, elem_id="audit"):
            with gr.Row():
                self.reward = gr.Textbox("arith_orm", label="Reward spec", elem_id="audit-reward")
                self.prompts = gr.Textbox("arith", label="Prompt set", elem_id="audit-prompts")
                self.evaluate = gr.Textbox("math", label="Evaluation reward (truth)", elem_id="audit-evaluate")
            with gr.Row():
                self.n = gr.Slider(2, 64, value=16, step=1, label="N (samples per prompt)", elem_id="audit-n")
                self.limit = gr.Slider(1, 200, value=12, step=1, label="Prompts", elem_id="audit-limit")
                self.run = gr.Button("Audit", variant="primary", scale=0, elem_id="audit-run")
            self.status = gr.HTML(elem_id="audit-status")
            self.summary = gr.Markdown(elem_id="audit-summary")
            with gr.Row():
                self.keys = gr.Plot(label="Master keys", elem_id="audit-keys")
                self.accuracy = gr.Plot(label="Accuracy", elem_id="audit-accuracy")
            self.best_of_n = gr.Plot(label="Best-of-N", elem_id="audit-bon")
        self.run.click(self.audit, [self.reward, self.prompts, self.evaluate, self.n, self.limit],
                       [self.status, self.summary, self.keys, self.accuracy, self.best_of_n])

    def audit(self, reward: str, prompts: str, evaluate: str, n: float, limit: float):
        from app.workflows.reward_audit import AuditConfig, AuditProgress, audit_reward
        from app.workflows.store import rewards_home
        from engines.models import load_model

        try:
            config = AuditConfig(reward=(reward or "").strip(), prompts=(prompts or "").strip(),
                                 evaluate=(evaluate or "").strip() or "math", n=int(n), limit=int(limit))
            loader = functools.partial(load_model, device=self.services.device, dtype=self.services.dtype)
            for item in audit_reward(config, db=self.services.db, rewards_folder=rewards_home(), load_model=loader):
                if isinstance(item, AuditProgress):
                    yield {self.status: f"<small>{html.escape(item.stage)} {item.done}/{item.total} prompts</small>"}
                else:
                    data = item.as_dict()
                    yield {self.status: "", self.summary: audit_markdown(data), self.keys: master_key_figure(data),
                           self.accuracy: accuracy_figure(data), self.best_of_n: best_of_n_figure(data)}
        except Exception as exc:
            yield {self.status: "", self.summary: f"⚠ {md_text(error_message(exc), 600)}"}
