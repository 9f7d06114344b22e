"""A learned token-level value head V(s, a) of a frozen policy, for Value Augmented Sampling.

Contract
--------
A value head folder holds a one-label ``*ForTokenClassification`` model that reads the *policy's*
token ids, its tokenizer, and ``value_head.json`` (:class:`ValueHeadSpec`): the policy whose
samples trained it (a model name such as ``embedded:arith``), the reward it values and that
reward's two levels (lo, hi). sigmoid(logit at position t) is q(s, a), the probability that the
frozen policy, continuing the prefix that ends in token t, reaches a text of reward ``hi`` (else
``lo``); the mean value is lo + (hi - lo)·q. ``scripts/train_arith_value.py`` trains the shipped
one (``engines/assets/arith/value``) by TD(λ) on samples of ``embedded:arith`` (Han et al. 2024,
arXiv:2405.06639), labelled by the ``math`` verifier.

:meth:`ValueHead.success_probabilities` values k candidate tokens after one prefix in one batched
forward pass (k rows ``prefix + [a]``, the last position read) and meters it as one model call
and the tokens it read as prefill tokens. Weights load once per process, offline
(:func:`engines.models.arith.load_hf`).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.errors import ConfigError, ModelLoadError
from engines.models.arith import ASSETS, load_hf
from engines.trace import Cost

VALUE_DIR = ASSETS / "value"
SPEC_FILE = "value_head.json"


@dataclass(frozen=True)
class ValueHeadSpec:
    """What a value head values: ``policy``'s completions scored by ``reward``, whose values are ``levels``."""

    policy: str
    reward: str
    levels: tuple[float, float] = (0.0, 1.0)
    td_lambda: float = 0.95
    gamma: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = self.levels
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(f"a value head's reward levels must be finite with lo < hi, got {self.levels}")


class ValueHead:
    """q(s, a) for candidate tokens a after a prefix s (see the module docstring)."""

    def __init__(self, model: Any, spec: ValueHeadSpec, context: int) -> None:
        self.model, self.spec, self.context = model, spec, context

    @classmethod
    def from_pretrained(cls, folder: str | Path = VALUE_DIR, device: str = "cpu") -> ValueHead:
        """The head in ``folder``, loaded once per process (a sampler asks for it at every step)."""
        return _load(str(Path(folder).resolve()), device)

    @classmethod
    def _read(cls, folder: Path, device: str) -> ValueHead:
        spec_path = folder / SPEC_FILE
        if not spec_path.exists():
            raise ModelLoadError(f"no value head in {folder} (no {SPEC_FILE}); "
                                 "run `python scripts/train_arith_value.py` to build the arith one")
        try:
            raw = json.loads(spec_path.read_text())
            spec = ValueHeadSpec(**{**raw, "levels": tuple(raw.get("levels", (0.0, 1.0)))})
        except (TypeError, ValueError) as exc:  # JSON errors are ValueErrors
            raise ModelLoadError(f"{spec_path} is not a value head spec: {exc}") from None
        model, _ = load_hf(folder, device, "token")
        return cls(model, spec, int(model.config.max_position_embeddings))

    @torch.no_grad()
    def success_probabilities(self, prefix: list[int], tokens: list[int], *, usage: Cost | None = None) -> torch.Tensor:
        """q(s, a) [k] (float64) for every a in ``tokens`` after ``prefix`` (the policy's ids, prompt included)."""
        if len(prefix) + 1 > self.context:
            raise ConfigError(f"the value head reads at most {self.context} tokens; the prefix has {len(prefix)}")
        device = next(self.model.parameters()).device
        rows = torch.tensor([prefix + [a] for a in tokens], dtype=torch.long, device=device)
        logits = self.model(input_ids=rows, attention_mask=torch.ones_like(rows)).logits[:, -1, 0]
        if usage is not None:
            usage.add(model_calls=1, prefill_tokens=rows.numel())
        return torch.sigmoid(logits.double()).cpu()


@functools.lru_cache(maxsize=8)
def _load(folder: str, device: str) -> ValueHead:
    return ValueHead._read(Path(folder), device)
