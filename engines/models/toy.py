"""Toy language models whose whole sequence distribution can be enumerated.

A toy model has an alphabet of single-character tokens, an end token and a
horizon ``T``: after ``T`` tokens it must end. Its next-token logits are a
fixed, seeded table indexed by the continuation so far, so p(x) of every
complete continuation is known exactly (:meth:`ToyModel.distribution`). Tests
use it to check that a sampler reaches the law it claims: the tilted target
p(x)·exp(r(x)/β)/Z, the power target p(x)^α/Z, the law of the best of N.

It implements the full :class:`TextModel` protocol (same temperature, top-k and
top-p code as the real models), so every sampler runs on it unchanged. The
distribution conditions only on the continuation (the tokens after the last
``<s>``), not on the prompt.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from engines.errors import ConfigError
from engines.models import SCHEMES, LoadOptions
from engines.models.base import Generation, SamplingParams, TextModel
from engines.models.sampling import confidence_stops, draw, entropy, token_confidence
from engines.task import Task
from engines.trace import Cost

BOS = "<s>"
EOS = "</s>"


class ToyModel(TextModel):
    """An enumerable LM over ``alphabet`` with horizon ``horizon``."""

    confidence_stop = True

    def __init__(self, alphabet: str, horizon: int, *, seed: int = 0, scale: float = 1.5, name: str = "toy") -> None:
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ConfigError("toy alphabet must be non-empty distinct characters")
        if horizon < 1:
            raise ConfigError("toy horizon must be >= 1")
        self.alphabet = alphabet
        self.horizon = horizon
        self.name = name
        self.vocab = [BOS, EOS, *alphabet]
        self.bos_id, self.eos_id = 0, 1
        self._char_id = {c: i + 2 for i, c in enumerate(alphabet)}
        gen = torch.Generator().manual_seed(seed)
        self._table: dict[tuple[int, ...], torch.Tensor] = {}
        vocab = len(self.vocab)
        for length in range(horizon + 1):
            for prefix in itertools.product(range(2, vocab), repeat=length):
                logits = torch.randn(vocab, generator=gen) * scale
                logits[self.bos_id] = float("-inf")
                if length == horizon:  # the horizon forces the end token
                    logits[2:] = float("-inf")
                    logits[self.eos_id] = 0.0
                self._table[prefix] = logits

    # -- tokens ------------------------------------------------------------------

    @property
    def eos_token_id(self) -> int:
        return self.eos_id

    def encode(self, text: str) -> list[int]:
        try:
            return [self._char_id[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the toy alphabet {self.alphabet!r}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids if i >= 2)

    def encode_task(self, task: Task) -> list[int]:
        return [self.bos_id]

    # -- the distribution ------------------------------------------------------------

    def _continuation(self, ids: Sequence[int]) -> tuple[int, ...]:
        ids = list(ids)
        start = len(ids) - ids[::-1].index(self.bos_id) if self.bos_id in ids else 0
        return tuple(ids[start:])

    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        key = self._continuation(ids)
        if key not in self._table:
            raise ValueError(f"toy model {self.name!r} cannot continue past its horizon of {self.horizon}")
        return self._table[key]

    def distribution(self) -> dict[str, float]:
        """Exact p(x) of every complete continuation x (as text)."""
        out: dict[str, float] = {}
        for prefix, logits in self._table.items():
            logp_end = logits.log_softmax(-1)[self.eos_id].item()
            out[self.decode(prefix)] = math.exp(self.sequence_logprob(prefix) + logp_end)
        return out

    def sequence_logprob(self, ids: Sequence[int]) -> float:
        """log p of emitting ``ids`` (no end token) from the start."""
        total = 0.0
        for t, token in enumerate(ids):
            total += self._table[tuple(ids[:t])].log_softmax(-1)[token].item()
        return total

    # -- protocol ---------------------------------------------------------------------

    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        rng: torch.Generator | None = None,
        usage: Cost | None = None,
    ) -> list[list[Generation]]:
        rows = [list(p) for p in prefixes for _ in range(n)]
        if usage is not None:
            usage.add(prefill_tokens=sum(len(p) for p in {tuple(p) for p in prefixes}), model_calls=1)
        done: list[Generation | None] = [None] * len(rows)
        generated: list[list[int]] = [[] for _ in rows]
        lps: list[list[float]] = [[] for _ in rows]
        slps: list[list[float]] = [[] for _ in rows]
        confs: list[list[float]] = [[] for _ in rows]
        meta = lambda r: {"confidence": confs[r]} if params.confidence_top_k else {}  # noqa: E731
        live = list(range(len(rows)))
        for step in range(params.max_new_tokens):
            logits = torch.stack([self.logits(rows[r] + generated[r]) for r in live])
            if params.stop_entropy is not None and step >= params.entropy_min_tokens:
                high = entropy(logits) >= params.stop_entropy
                for k in [k for k, h in enumerate(high.tolist()) if h]:
                    r = live[k]
                    done[r] = Generation(
                        text=self.decode(generated[r]), token_ids=generated[r], logprobs=lps[r],
                        sample_logprobs=slps[r], finish_reason="entropy", prefix_tokens=len(rows[r]), meta=meta(r),
                    )
                keep = [k for k, h in enumerate(high.tolist()) if not h]
                live = [live[k] for k in keep]
                if not live:
                    break
                logits = logits[keep]
            step_conf = token_confidence(logits, params.confidence_top_k).tolist() if params.confidence_top_k else None
            if step < params.min_new_tokens:
                logits = logits.clone()
                logits[:, self.eos_id] = float("-inf")
            tokens, base, sample_lp = draw(logits, params, rng)
            if usage is not None:
                usage.add(generated_tokens=len(live), model_calls=1 if step else 0)
            still = []
            for k, r in enumerate(live):
                token = int(tokens[k])
                generated[r].append(token)
                lps[r].append(float(base[k]))
                slps[r].append(float(sample_lp[k]))
                if step_conf is not None:
                    confs[r].append(step_conf[k])
                reason, stop = None, None
                if token == self.eos_id:
                    reason = "eos"
                elif params.stop:
                    text = self.decode(generated[r])
                    stop = next((s for s in params.stop if text.endswith(s)), None)
                    reason = "stop" if stop else None
                if reason is None and confidence_stops(confs[r], params):
                    reason = "confidence"
                if reason is None and step == params.max_new_tokens - 1:
                    reason = "length"
                if reason is None:
                    still.append(r)
                    continue
                done[r] = Generation(
                    text=self.decode(generated[r]),
                    token_ids=generated[r],
                    logprobs=lps[r],
                    sample_logprobs=slps[r],
                    finish_reason=reason,
                    stop=stop,
                    prefix_tokens=len(rows[r]),
                    meta=meta(r),
                )
            live = still
            if not live:
                break
        return [done[i * n : (i + 1) * n] for i in range(len(prefixes))]  # type: ignore[misc]

    def score(self, prefixes, continuations, *, usage=None) -> list[list[float]]:
        out = []
        for prefix, cont in zip(prefixes, continuations, strict=True):
            ids = list(prefix)
            row = []
            for token in cont:
                row.append(self.logits(ids).log_softmax(-1)[token].item())
                ids.append(token)
            out.append(row)
        if usage is not None:
            usage.add(prefill_tokens=sum(len(p) + len(c) for p, c in zip(prefixes, continuations, strict=True)), model_calls=1)
        return out

    def next_token_logprobs(self, prefixes, *, usage=None) -> torch.Tensor:
        if usage is not None:
            usage.add(prefill_tokens=sum(len(p) for p in prefixes), model_calls=1)
        return torch.stack([self.logits(p).log_softmax(-1) for p in prefixes])

    def embed(self, texts, *, usage=None) -> torch.Tensor:
        """Character counts: a bag-of-tokens embedding."""
        out = torch.zeros(len(texts), len(self.alphabet))
        for i, text in enumerate(texts):
            for c in text:
                if c in self._char_id:
                    out[i, self._char_id[c] - 2] += 1
        return out

    def describe(self) -> dict:
        return {"name": self.name, "modality": "text", "alphabet": self.alphabet, "horizon": self.horizon}


TOY_MODELS = {
    "ab2": (lambda: ToyModel("ab", 2, seed=3, name="toy:ab2"), "alphabet ab, horizon 2: 7 sequences (a depth-2 tree)"),
    "abc": (lambda: ToyModel("abc", 4, seed=0, name="toy:abc"), "alphabet abc, horizon 4: 121 sequences"),
    "binary": (lambda: ToyModel("01", 6, seed=1, name="toy:binary"), "alphabet 01, horizon 6: 127 sequences"),
    "digits": (
        lambda: ToyModel("0123456789", 2, seed=2, scale=1.0, name="toy:digits"),
        "digits, horizon 2: 111 numbers (for verifiable rewards)",
    ),
}


def _load_toy(rest: str, options: LoadOptions) -> ToyModel:
    if rest not in TOY_MODELS:
        raise ConfigError(f"unknown toy model {rest!r}; known: {', '.join(TOY_MODELS)}")
    return TOY_MODELS[rest][0]()


SCHEMES.add("toy", _load_toy)
