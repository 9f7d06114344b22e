"""Best-of-N: draw N candidates, score each with the reward, keep the best.

The baseline of every reward-guided sampler (Stiennon et al., 2020, "Learning
to summarize from human feedback"; Nakano et al., 2021, WebGPT). With i.i.d.
draws from the proposal q (the model at the sampling temperature / top-p /
top-k) the pick follows the law of the maximum of N draws of the reward: for a
reward with CDF F under q, P(pick ≤ r) = F(r)^N; ties go to the earliest draw,
so within a tied reward value the pick follows q.

Candidates are drawn in batches of ``batch_size`` sharing the prompt's KV
cache (the prompt is encoded once), scored as each batch lands, so the UI
sees the distribution fill in.

On a diffusion model the same sampler is best-of-N over seeds: N independent
reverse chains (``steps`` and ``eta`` from :class:`DiffusionConfig`, or one η per
step in ``eta_steps``: e.g. the chain a model was fine-tuned on), batched
``batch_size`` at a time, every state a node of the trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engines.config import param
from engines.errors import ConfigError
from engines.models.diffusion import Eta, parse_etas
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.candidates import Candidate, argmax, draw_scored, open_root
from engines.samplers.diffusion_common import (
    DiffusionConfig,
    ImageCandidate,
    check_diffusion_inputs,
    draw_images,
)
from engines.task import Task
from engines.trace import Event, SelectEvent


class BestOfNConfig(DiffusionConfig, GenerationConfig):
    label = "Best-of-N"
    paper = "Stiennon et al. 2020, Learning to summarize from human feedback (arXiv:2009.01325)"
    summary = "Draw N candidates, keep the one with the highest reward."

    n: int = param(8, label="N", min=1, max=1024, help="How many candidates to draw.")
    batch_size: int = param(16, label="Batch size", min=1, max=256, help="Candidates per model call.", advanced=True)
    eta_steps: str = param(
        "",
        label="η per step",
        help="Diffusion: comma-separated η, one per denoising step, noisiest first (e.g. a fine-tuned model's "
        "training chain); overrides η.",
        advanced=True,
    )

    def validate(self) -> None:
        super().validate()
        if self.eta_steps.strip():
            parse_etas(self.eta_steps)

    def chain_eta(self) -> Eta:
        """The step noise of every chain: ``eta_steps`` when given, else ``eta``."""
        return parse_etas(self.eta_steps) if self.eta_steps.strip() else self.eta


@SAMPLERS.register("best_of_n")
class BestOfN(Sampler):
    name = "best_of_n"
    Config = BestOfNConfig
    modalities = ("text", "image")
    examples = {"best_of_n": {"n": 5, "steps": 5, "batch_size": 2}}

    def check_inputs(self, task: Task, model: Any, reward: Any) -> None:
        super().check_inputs(task, model, reward)
        if model.modality == "image":
            check_diffusion_inputs(model, reward)
            cfg: BestOfNConfig = self.config  # type: ignore[assignment]
            eta, steps = cfg.chain_eta(), len(model.schedule(cfg.steps))
            if not isinstance(eta, (int, float)) and len(eta) != steps:
                raise ConfigError(f"eta_steps has {len(eta)} values for a {steps}-step chain")

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: BestOfNConfig = self.config  # type: ignore[assignment]
        if ctx.model.modality == "image":
            images: list[ImageCandidate] = []
            while len(images) < cfg.n:
                yield from draw_images(ctx, min(cfg.batch_size, cfg.n - len(images)), cfg.steps, cfg.chain_eta(), images)
            best = argmax(images)  # type: ignore[arg-type]
            yield SelectEvent(nodes=[best.id], reason=f"highest reward of {len(images)} seeds")
            return
        prefix, root = open_root(ctx)
        yield root
        found: list[Candidate] = []
        while len(found) < cfg.n:
            found += yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(found)), cfg)
        best = argmax(found)
        yield SelectEvent(nodes=[best.id], reason=f"highest reward of {len(found)}")
