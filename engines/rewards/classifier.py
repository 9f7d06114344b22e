"""Learned rewards: transformers sequence-classification reward models, and
the Bradley-Terry pairwise view of any scalar reward.

``rm:SPEC`` loads ``AutoModelForSequenceClassification`` from a local folder
or hub id (``rm:/path``, ``rm:hf:/path``), or reaches one on a server
(``rm:openai:URL``, :mod:`engines.rewards.served`). The reward is the logit for
``num_labels == 1`` (the usual RM head), else logit[1] - logit[0]. The input
is the (prompt, response) conversation under the tokenizer's chat template
when it has one, else ``prompt + "\\n" + response``
(:func:`engines.models.chat.reward_model_text`, shared with ``rm:openai:``).

``pairwise:SPEC`` views the outcome reward SPEC as a pairwise one:
P(a beats b) = σ((r_a - r_b)/τ) (:class:`ScalarAsPairwise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from engines.errors import ConfigError, ModelLoadError
from engines.models import LoadOptions
from engines.models.chat import reward_model_text
from engines.rewards import REWARDS, RewardEnv, RewardFactory, build_reward
from engines.rewards.base import Reward, ScalarAsPairwise
from engines.task import Task
from engines.trace import Cost

_LOADED: dict[tuple[str, str], tuple[object, object]] = {}


def load_classifier(source: str, options: LoadOptions | None = None):
    """(model, tokenizer) of a sequence-classification model, loaded once per process."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    options = options or LoadOptions()
    key = (source, options.torch_device())
    if key not in _LOADED:
        local = Path(source).expanduser()
        offline = not local.exists()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else source, local_files_only=offline)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(local) if local.exists() else source, local_files_only=offline, dtype=options.torch_dtype()
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load reward model {source!r}: not a local folder with a sequence-classification "
                f"model, and it is not in the local hub cache; pass rm:/path/to/folder"
            ) from exc
        model.to(options.torch_device()).eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        _LOADED[key] = (model, tokenizer)
    return _LOADED[key]


class ClassifierReward(Reward):
    def __init__(self, model, tokenizer, name: str, batch_size: int = 16) -> None:
        self.model, self.tokenizer, self.name, self.batch_size = model, tokenizer, name, batch_size
        self.device = next(model.parameters()).device

    def _text(self, prompt: str, response: str) -> str:
        return reward_model_text(self.tokenizer, prompt, response)

    @torch.inference_mode()
    def score(self, task: Task, candidates: Sequence[str], *, usage: Cost | None = None) -> list[float]:
        out: list[float] = []
        for start in range(0, len(candidates), self.batch_size):
            texts = [self._text(task.prompt, c) for c in candidates[start : start + self.batch_size]]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            logits = self.model(**batch).logits.float()
            if usage is not None:
                usage.add(reward_tokens=int(batch["attention_mask"].sum()))
            values = logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
            out.extend(values.tolist())
        return out


def _rm(arg: str | None, env: RewardEnv) -> ClassifierReward:
    source = arg or ""
    if source.startswith("hf:"):
        source = source[3:]
    if not source:
        raise ConfigError("rm needs a model: rm:/path/to/folder, rm:hf:HUB_ID or rm:openai:URL")
    if source.startswith("openai:"):  # a served reward model (engines.rewards.served)
        from engines.rewards.served import served_rm

        return served_rm(source[len("openai:"):], name=f"rm:{arg}")
    model, tokenizer = load_classifier(source, env.options.get("load_options"))
    return ClassifierReward(model, tokenizer, name=f"rm:{arg}")


def _pairwise(arg: str | None, env: RewardEnv) -> ScalarAsPairwise:
    inner = build_reward(arg or "", env)
    if not isinstance(inner, Reward):
        raise ConfigError(f"pairwise: needs an outcome reward, {arg!r} is {inner.kind}")
    return ScalarAsPairwise(inner, tau=float(env.options.get("tau", 1.0)))


REWARDS.add(
    "rm",
    RewardFactory(
        name="rm",
        kind="outcome",
        modality="text",
        help="a transformers sequence-classification reward model (rm:/path or rm:hf:ID)",
        build=_rm,
        arg="MODEL",
        arg_required=True,
    ),
)
REWARDS.add(
    "pairwise",
    RewardFactory(
        name="pairwise",
        kind="pairwise",
        modality="text",
        help="Bradley-Terry view of an outcome reward: P(a>b) = sigmoid((r_a - r_b)/tau)",
        build=_pairwise,
        arg="REWARD",
        arg_required=True,
    ),
)
