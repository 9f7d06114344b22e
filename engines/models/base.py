"""The text-model protocol every sampler talks to.

A text model samples batched continuations of token-id prefixes, scores given
continuations, and embeds texts. Prefixes are token ids (not strings) so that
step-level samplers can grow a node token by token and reuse its KV cache
without re-tokenisation drift; ``encode_task`` turns a :class:`Task` into the
prompt's ids (with the chat template where the model has one and the task asks
for it).

Every call adds what it spent to an optional ``usage`` (:class:`Cost`), so the
run tracker can count prefill tokens, generated tokens and forward calls.

Log-probabilities come in two flavours on every generated token:
``logprobs`` under the base model (temperature 1, no truncation: what
likelihood-based samplers such as power MCMC need) and ``sample_logprobs``
under the distribution actually sampled from (after temperature, top-k and
top-p: the proposal density).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from engines.task import Task
from engines.trace import Cost


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    min_new_tokens: int = 0
    #: end a segment before a token whose next-token entropy (nats) reaches this (CARDS)
    stop_entropy: float | None = None
    #: ... but only after this many tokens of the segment
    entropy_min_tokens: int = 1
    #: keep each finished row's KV cache for later extension (tree search, SMC, MCMC)
    keep_cache: bool = False
    #: DeepConf's token confidence, -mean of the top-k base log-probs at each drawn token, in
    #: ``Generation.meta["confidence"]`` (0: not computed)
    confidence_top_k: int = 0
    #: DeepConf's online stop: end a row once the mean confidence of its last ``confidence_window``
    #: tokens falls below this (the token that crossed it is kept; finish reason ``confidence``)
    stop_confidence: float | None = None
    confidence_window: int = 2048

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.stop_entropy is not None and self.stop_entropy <= 0:
            raise ValueError(f"stop_entropy must be > 0, got {self.stop_entropy}")
        if self.entropy_min_tokens < 1:
            raise ValueError("entropy_min_tokens must be >= 1")
        if self.confidence_top_k < 0 or self.confidence_window < 1:
            raise ValueError("confidence_top_k must be >= 0 and confidence_window >= 1")
        if self.stop_confidence is not None and not self.confidence_top_k:
            raise ValueError("stop_confidence needs confidence_top_k > 0")


@dataclass(frozen=True)
class Generation:
    """One sampled continuation of one prefix.

    ``text`` is ``decode(token_ids)`` (special tokens skipped), so text and ids
    always agree; when generation ended on a stop string, ``stop`` names it and
    the token that completed it is the last one kept.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    sample_logprobs: list[float]
    finish_reason: Literal["eos", "stop", "length", "entropy", "confidence"]
    stop: str | None = None
    prefix_tokens: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))


def checked_prefixes(
    prefixes: Sequence[Sequence[int]], n: int, max_new_tokens: int, context: int | None, *, what: str = "model"
) -> list[list[int]]:
    """The prefixes as lists, after the checks every ``sample`` makes: n >= 1, no empty prefix,
    and room in the model's context for the longest prefix plus ``max_new_tokens``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    prefixes = [list(p) for p in prefixes]
    if any(not p for p in prefixes):
        raise ValueError("every prefix needs at least one token")
    longest = max((len(p) for p in prefixes), default=0)
    if context is not None and longest + max_new_tokens > context:
        raise ValueError(
            f"prefix of {longest} tokens + {max_new_tokens} new tokens exceeds the {what}'s context of {context}"
        )
    return prefixes


class TextModel(ABC):
    """A language model as samplers see it."""

    modality: Literal["text"] = "text"
    name: str = "text-model"
    #: whether ``sample`` honours ``confidence_top_k`` / ``stop_confidence`` (DeepConf); served
    #: models decode on the server, which has no such stop
    confidence_stop: bool = False

    # -- tokens ----------------------------------------------------------------

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of raw text (no special tokens added)."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens skipped)."""

    @abstractmethod
    def encode_task(self, task: Task) -> list[int]:
        """The prompt's token ids: chat-templated when the model has a template and
        ``task.chat`` is set, raw otherwise."""

    @property
    @abstractmethod
    def eos_token_id(self) -> int | None: ...

    @property
    def context_length(self) -> int | None:
        """Most tokens a sequence may hold (prompt and continuation), or None when unbounded."""
        return None

    # -- sampling and scoring ----------------------------------------------------

    @abstractmethod
    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        rng: torch.Generator | None = None,
        usage: Cost | None = None,
    ) -> list[list[Generation]]:
        """``n`` continuations of every prefix: ``result[i][j]`` is the j-th of prefix i."""

    @abstractmethod
    def score(
        self,
        prefixes: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        *,
        usage: Cost | None = None,
    ) -> list[list[float]]:
        """Per-token base-model log-probs of each continuation given its prefix."""

    @abstractmethod
    def embed(self, texts: Sequence[str], *, usage: Cost | None = None) -> torch.Tensor:
        """Hidden-state embeddings, one row per text."""

    @abstractmethod
    def next_token_logprobs(
        self, prefixes: Sequence[Sequence[int]], *, usage: Cost | None = None
    ) -> torch.Tensor:
        """Base-model log-probs of the next token after each prefix, shape [B, V]."""

    def describe(self) -> dict:
        return {"name": self.name, "modality": self.modality}
