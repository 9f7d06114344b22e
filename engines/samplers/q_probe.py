"""Q-probe sampling: k samples of the model, one picked by softmax(Q / beta) of a probe on its own embeddings.

Li, Chen, Hao, Sui, Wu & Kakade 2024, "Q-Probe: A Lightweight Approach to Reward Maximization for
Language Models" (arXiv:2402.14688). The probe Q(x, y) = w . phi(x, y) is a linear function of the
policy's embedding of prompt and completion, trained on the policy's own samples by reward modelling
or by the paper's importance-weighted policy gradient (``samplescope reward probe``, see
engines.rewards.q_probe), and stored as ``learned:NAME``: that is this sampler's reward. Inference is the
soft best-of-k rule (engines.samplers.soft_best_of_k) over the probe's values, whose law tends to p(y|x) exp(Q(x,y)/beta) / Z(x) as k grows
(the paper's KL-constrained maximisation; exact law at finite k: engines.rewards.q_probe.soft_pick_law).

What the probe costs is what the run's cost shows: one embedding forward pass of the policy per
candidate, no reward-model calls. Judge the picks with another reward (the verifier) in Compare.
"""

from __future__ import annotations

from typing import Any

from engines.config import param
from engines.errors import ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.soft_best_of_k import SoftBestOfK, SoftBestOfKConfig
from engines.task import Task


class QProbeConfig(SoftBestOfKConfig):
    label = "Q-probe"
    paper = "Li et al. 2024, Q-Probe: A Lightweight Approach to Reward Maximization for Language Models (arXiv:2402.14688)"
    summary = "Draw k candidates; pick by softmax(Q / β) of a linear probe on the model's own embeddings (reward learned:PROBE)."

    selection_temperature: float = param(1.0, label="β (probe temperature)", min=1e-4, max=1e4, step=0.01,
                                         help="Softmax temperature over the probe's values; small is its argmax.")


@SAMPLERS.register("q_probe")
class QProbe(SoftBestOfK):
    name = "q_probe"
    Config = QProbeConfig

    def check_inputs(self, task: Task, model: Any, reward: Any) -> None:
        """A Q-probe reads the embeddings of the model it was fit on: one fit on another model is refused.
        Any other outcome reward stands in for Q (the rule is then soft best-of-k at β)."""
        super().check_inputs(task, model, reward)
        card = getattr(reward, "card", None) or {}
        if card.get("trained_by") != "q_probe":
            return
        features = getattr(reward, "features", None)
        if getattr(features, "model", None) is not model and card.get("base") != getattr(model, "name", None):
            raise ConfigError(f"{reward.name} was fit on the embeddings of {card.get('base')!r}; this run's model is "
                              f"{getattr(model, 'name', model)!r}")
