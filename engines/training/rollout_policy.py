"""A rollout-only policy: any text model the lab can load (served ones included) as a :class:`Policy`.

:class:`TextModelPolicy` wraps a :class:`~engines.models.base.TextModel` (``openai:URL`` on
vLLM, SGLang or llama.cpp, ``gguf:``, ``hf:``, ``embedded:``) and draws rollouts through its
``sample``: the prompt's token ids are the model's own ``encode`` of the prompt text (raw, as
:class:`~engines.training.policy.HFPolicy` encodes it), the completion's token ids and
per-token log-probs are what the model returns. Those log-probs are the *base* (untempered)
model's, as the training policy records them: a served model gets them from the server
(vLLM's ``logprobs``, llama.cpp's ``n_probs``; at a temperature other than 1 from the base
log-probs the backend documents in engines/models/served/openai_compatible.py).

It is not trainable (``trainable = False``): the loop refuses to update it, and
:func:`engines.training.rollouts_only.rollouts_only` runs the strategies' rollout side on
it. Strategies that need more than ``rollout`` (tree rollouts extend token prefixes, TreeRL
reads per-token entropies) get a one-line error from :meth:`token_logprobs` / :meth:`extend`.

:func:`load_rollout_policy` gives the lab's own trainable policy for the specs training
accepts (``embedded:arith``, ``hf:FOLDER``: the same rollouts as a training run draws) and a
:class:`TextModelPolicy` for every other text model spec.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from engines.errors import ConfigError
from engines.models.base import SamplingParams
from engines.training.base import Rollout


def trainable_spec(spec: str) -> bool:
    """Whether ``spec`` names a policy the lab can train in process."""
    spec = (spec or "").strip()
    return spec == "embedded:arith" or (spec.startswith("hf:") and len(spec) > 3)


def check_trainable(spec: str) -> None:
    """The one-line refusal of a training run on a policy that cannot be trained (a served one)."""
    if not trainable_spec(spec):
        raise ConfigError(
            f"policy {spec!r} cannot be trained here: training needs an in-process transformers causal LM "
            "(embedded:arith or hf:FOLDER); run its rollouts without updates (--rollouts-only, or Rollouts only in the "
            "Train tab) to see what each strategy would keep from it"
        )


class TextModelPolicy:
    """A text model as a rollout-only policy (see the module docstring)."""

    trainable = False

    def __init__(self, model: Any, *, name: str | None = None) -> None:
        if getattr(model, "modality", "text") != "text" or not hasattr(model, "sample"):
            raise ConfigError(f"{name or model!r} is not a text model: rollouts need one")
        self.model = model
        self.name = name or getattr(model, "name", "model")

    def encode(self, text: str) -> list[int]:
        return list(self.model.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.model.decode(list(ids))

    @torch.no_grad()
    def rollout(
        self, prompts: Sequence[str], *, temperature: float, max_new_tokens: int, rng: torch.Generator
    ) -> list[Rollout]:
        """One completion per prompt. Runs of equal consecutive prompts (a group) go out as one
        ``sample`` call with ``n`` copies, so a server draws a group in one request."""
        if not prompts:
            return []
        runs: list[tuple[str, int]] = []
        for prompt in prompts:
            if runs and runs[-1][0] == prompt:
                runs[-1] = (prompt, runs[-1][1] + 1)
            else:
                runs.append((prompt, 1))
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        sizes = {n for _, n in runs}
        if len(sizes) == 1:  # every group the same size: one call
            encoded = [self.encode(p) for p, _ in runs]
            drawn = self.model.sample(encoded, params, n=sizes.pop(), rng=rng)
            pairs = [(ids, g) for ids, gens in zip(encoded, drawn, strict=True) for g in gens]
        else:
            pairs = []
            for prompt, n in runs:
                ids = self.encode(prompt)
                pairs += [(ids, g) for g in self.model.sample([ids], params, n=n, rng=rng)[0]]
        return [
            Rollout(prompt_ids=tuple(ids), completion_ids=tuple(g.token_ids), logprobs=tuple(float(x) for x in g.logprobs),
                    text=g.text, finished=g.finish_reason in ("eos", "stop"))
            for ids, g in pairs
        ]

    def extend(self, *args: Any, **kwargs: Any) -> list[Rollout]:
        raise ConfigError(f"tree rollouts branch from token prefixes of an in-process policy; {self.name} is rollout-only")

    def parameters(self):
        raise ConfigError(f"this strategy changes the policy's weights, which {self.name} (rollout-only) does not expose")

    def token_logprobs(self, rollouts: Sequence[Rollout]):
        raise ConfigError(f"this strategy reads the policy's per-token entropies, which {self.name} (rollout-only) does not give")


def load_rollout_policy(spec: str, *, device: str = "cpu") -> Any:
    """The policy a rollout-only run draws from: the lab's trainable one for embedded:arith / hf:FOLDER,
    else any text model spec (``openai:URL``, ``gguf:...``, ``embedded:smollm2``) as a :class:`TextModelPolicy`."""
    spec = (spec or "").strip()
    if trainable_spec(spec):
        from engines.training.policy import load_policy

        return load_policy(spec, device=device)
    if not spec:
        raise ConfigError("no policy given")
    from engines.models import load_model

    return TextModelPolicy(load_model(spec, device=device), name=spec)
