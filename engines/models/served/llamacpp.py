"""llama.cpp's server (``llama-server``) behind the :class:`TextModel` protocol.

``openai:URL`` finds it by itself: ``/v1/models`` says ``owned_by: llamacpp``.
Its OpenAI-compatible ``/v1/completions`` returns neither token ids nor a way
to tell an end-of-text from a stop string, so this model speaks the server's
native ``POST /completion`` (``GET /props`` for its slots and context). Not
streamed: a stream withholds a token that ends inside a UTF-8 character and
never sends it if generation stops there.

What it offers, and how each protocol call uses it
-------------------------------------------------
- ``sample``: one request per (prefix, chunk of ``n``): ``prompt`` as
  token ids (no BOS is added to ids), ``n_cmpl`` up to the server's slots
  (``--parallel``; a larger ``n`` is split), ``n_predict``, ``stop``, ``seed``
  (the k-th completion of a request uses seed + k), ``return_tokens``. The
  sampler chain is set to ``temperature, top_k, top_p`` (the order of
  :func:`engines.models.sampling.warp`), and every other llama.cpp sampler is
  switched off (``min_p`` 0.05, ``top_k`` 40, ``top_p`` 0.95 and temperature 0.8
  are its defaults, so nothing is left to them).
- Log-probs: one kind per request. ``post_sampling_probs`` gives the sampled
  token's probability under the warped chain (the proposal); without it, under
  the raw logits (the base model). At temperature 1 with no truncation both are
  the same; greedy requests take the base ones; otherwise the request takes the
  warped ones and the base ones come from ``score`` (counted in the cost), as on
  a vLLM server started with ``--logprobs-mode processed_logprobs``. The answer
  drops the log-probs of a matched stop string's tokens (as many as the stop
  string has tokens); those few come from the whole next-token distribution
  (one request each, warped here with :func:`~engines.models.sampling.warp`).
- ``score``: llama.cpp has no prompt log-probs (``echo`` is refused). Each
  position of a continuation is one request for one token, with the token forced
  by a ``logit_bias`` (the reported log-prob is read from the raw logits, before
  any bias); the positions of one continuation go in order, so the slot's prompt
  cache makes each request one new prompt token. Exact, but one request per
  token: power MCMC and proposal-corrected SMC work, slowly.
- ``next_token_logprobs`` asks for every token's log-prob (``n_probs`` = the
  vocabulary, one request and ~3 MB of JSON for SmolLM2); ``next_token_logprobs_for``
  forces each asked token as ``score`` does.
- ``min_new_tokens``: llama.cpp has no ``min_tokens``; ``min == max`` is
  ``ignore_eos`` (the end-of-text token masked at every step, the same law),
  anything between is refused in one line.
- A token that leaves the text inside a UTF-8 character gets no log-prob entry
  from the server (it records them per whole character); such positions are
  read off the whole next-token distribution instead, so every token has one.
- Tokenisation is the server's (``/tokenize``, ``/detokenize``, ``/apply-template``),
  so it agrees by construction; control tokens (read from the GGUF file when it
  is on this machine, else the end-of-text token) are dropped from decoded text.
- Cost: ``prefill_tokens`` = ``timings.prompt_n``, ``cached_prompt_tokens`` =
  ``timings.cache_n`` of the request's first completion (its other completions
  copy that prompt's cache, and the server's ``/metrics`` counts it once),
  ``generated_tokens`` the tokens generated, ``requests`` and ``model_calls``.

What it lacks (one line each): embeddings (``/v1/embeddings`` of a generation
server is not the mean-pooled state samplescope trains on), entropy-cut segments
(no full distribution per step), ``0 < min_new_tokens < max_new_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from engines.errors import EngineError
from engines.models.base import Generation, SamplingParams
from engines.models.sampling import warp
from engines.models.served.client import EngineClient
from engines.models.served.openai_compatible import PROCESSED, ServedTextModel, _identity_warp
from engines.models.served.tokens import ServerTokenizer
from engines.task import Task
from engines.trace import Cost

#: the sampler chain, in the order samplescope's own engine applies it
CHAIN = ["temperature", "top_k", "top_p"]
#: llama.cpp's other samplers, switched off (its defaults would change the law)
NEUTRAL = {
    "min_p": 0.0, "typical_p": 1.0, "top_n_sigma": -1.0, "xtc_probability": 0.0, "dynatemp_range": 0.0,
    "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0, "mirostat": 0,
}
#: a logit bias that makes the biased token the only one left
FORCE = 1e4
_SEED_STRIDE = 1024


class LlamaCppTokenizer(ServerTokenizer):
    """The server's own tokenizer in llama.cpp's terms; control tokens skipped when decoding."""

    def __init__(self, client: EngineClient, *, eos_token_id: int | None, vocab_size: int,
                 control: frozenset[int], source: str) -> None:
        super().__init__(client, "", eos_token_id=eos_token_id, vocab_size=vocab_size)
        self.control, self.source = control, source

    def _post(self, path: str, body: dict) -> dict:
        return self.client._send("POST", self.client.root_url + path, body)

    def _encode_remote(self, text: str) -> tuple[int, ...]:
        data = self._post("/tokenize", {"content": text, "add_special": False, "parse_special": True})
        return tuple(int(t) for t in data["tokens"])

    def _decode_remote(self, ids: tuple[int, ...]) -> str:
        kept = [t for t in ids if t not in self.control]
        return str(self._post("/detokenize", {"tokens": kept})["content"]) if kept else ""

    def _chat_ids(self, task: Task) -> list[int]:
        return self.encode(str(self._post("/apply-template", {"messages": task.messages()})["prompt"]))


def _logprob(step: dict) -> float:
    """A token's log-prob from llama.cpp's entry: ``logprob``, or ``prob`` when post-sampling probabilities were asked."""
    if "prob" in step:
        return math.log(step["prob"]) if step["prob"] > 0 else -math.inf
    return float(step["logprob"])


def _align(ids: list[int], steps: list[dict]) -> list[float | None]:
    """Each token's log-prob from the server's entries, None where the server gave none.

    The entries are the tokens' in order, less those that left the text inside a UTF-8
    character. Each entry goes to the first token with its id; a run of equal ids that lost an
    entry is ambiguous (which of them lost it?), so the whole run is None."""
    out: list[float | None] = [None] * len(ids)
    t = 0
    for step in steps:
        while t < len(ids) and ids[t] != int(step["id"]):
            t += 1
        if t == len(ids):
            raise EngineError("llama.cpp returned log-probs of tokens it did not generate")
        out[t] = _logprob(step)
        t += 1
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or ids[end] != ids[start]:
            if any(v is None for v in out[start:end]):
                out[start:end] = [None] * (end - start)
            start = end
    return out


def _control_tokens(model_path: str | None) -> frozenset[int] | None:
    """Ids of the GGUF file's control tokens (token type 3), or None when the file is not here."""
    if not model_path or not Path(model_path).is_file():
        return None
    try:
        import gguf

        field = gguf.GGUFReader(model_path).fields.get("tokenizer.ggml.token_type")
        if field is None:
            return None
        return frozenset(i for i, t in enumerate(field.contents()) if int(t) == 3)
    except (ImportError, OSError, ValueError) as exc:  # not a readable GGUF here: the server's word only
        del exc
        return None


class LlamaCppTextModel(ServedTextModel):
    """One model on one ``llama-server``."""

    @classmethod
    def from_server(cls, client: EngineClient, model_id: str, info: dict) -> LlamaCppTextModel:
        props = client.get("/props", root=True)
        settings = props.get("default_generation_settings") or {}
        slots = int(props.get("total_slots") or 1)
        n_ctx = int(settings.get("n_ctx") or (info.get("meta") or {}).get("n_ctx") or 0)
        vocab = int((info.get("meta") or {}).get("n_vocab") or 0)
        if not n_ctx or not vocab:
            raise EngineError(f"the llama.cpp server at {client.root_url} reports no context size or vocabulary")
        probe = LlamaCppTokenizer(client, eos_token_id=None, vocab_size=vocab, control=frozenset(), source="")
        eos_ids = probe.encode(str(props.get("eos_token") or ""))
        eos = eos_ids[0] if len(eos_ids) == 1 else None
        control = _control_tokens(props.get("model_path"))
        source = "server (llama.cpp /tokenize)"
        if control is None:
            control = frozenset({eos} if eos is not None else ())
            source += "; control tokens unknown here, only end-of-text dropped from text"
        tokenizer = LlamaCppTokenizer(client, eos_token_id=eos, vocab_size=vocab, control=control, source=source)
        self = cls(client, model_id, tokenizer, name=f"openai:{client.base_url}#{model_id}", max_model_len=n_ctx,
                   logprobs_mode=PROCESSED, max_logprobs=vocab, token_id_logprobs=False)
        self.max_n_per_request = slots
        self.slots = slots
        self.plain_token = tokenizer.encode("a")[0]
        self.model_path = props.get("model_path")
        return self

    # -- sampling ---------------------------------------------------------------------------

    def _draw_seed(self, rng: torch.Generator) -> int:
        # llama.cpp seeds are 32-bit and 0xFFFFFFFF means "random"; the k-th completion uses seed + k
        return int(torch.randint(0, 2**32 // _SEED_STRIDE - 1, (1,), generator=rng)) * _SEED_STRIDE

    def _needs_scored_base(self, params: SamplingParams) -> bool:
        return not _identity_warp(params) and params.temperature != 0

    def _body(self, prompt: list[int], params: SamplingParams) -> dict:
        return {
            "prompt": prompt, "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p,
            "samplers": CHAIN, **NEUTRAL, "cache_prompt": not self.salt_requests, "return_tokens": True,
        }

    def _check_params(self, params: SamplingParams) -> None:
        super()._check_params(params)
        if 0 < params.min_new_tokens < params.max_new_tokens:
            raise EngineError(
                f"llama.cpp's server has no min_tokens: {self.name} can force exactly max_new_tokens "
                f"(min = max) or none, not min_new_tokens={params.min_new_tokens} < {params.max_new_tokens}"
            )

    def _sample_one(self, prefix: list[int], params: SamplingParams, count: int, seed, usage: Cost) -> list[Generation]:
        warped = self._needs_scored_base(params)  # warped log-probs asked for; the base ones scored after
        body = {
            **self._body(prefix, params), "n_predict": params.max_new_tokens, "n_cmpl": count, "n_probs": 1,
            "post_sampling_probs": warped, "ignore_eos": params.min_new_tokens >= params.max_new_tokens > 0,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        data = self.client._send("POST", self.client.root_url + "/completion", body)
        answers = sorted(data if isinstance(data, list) else [data], key=lambda a: int(a.get("index") or 0))
        if len(answers) != count:
            raise EngineError(f"the llama.cpp server at {self.client.root_url} answered {len(answers)} of {count} "
                              "completions")
        gens = [self._generation_llamacpp(prefix, answer, params, warped, usage) for answer in answers]
        first = answers[0].get("timings") or {}
        usage.add(prefill_tokens=int(first.get("prompt_n") or 0), cached_prompt_tokens=int(first.get("cache_n") or 0),
                  generated_tokens=sum(len(g.token_ids) for g in gens),
                  model_calls=1 + max((len(g.token_ids) for g in gens), default=0), requests=1)
        return gens

    def _generation_llamacpp(self, prefix: list[int], answer: dict, params: SamplingParams, warped: bool,
                             usage: Cost) -> Generation:
        ids = [int(t) for t in answer.get("tokens") or []]
        steps = answer.get("completion_probabilities") or []
        stop_type = answer.get("stop_type")
        # The answer has no log-prob for a token that leaves the text inside a UTF-8 character, and drops the
        # last k of them when a stop string of k tokens matched. Only when the count shows that no token was
        # of the first kind are the entries the first ones of the tokens; otherwise every position, and the
        # dropped tail in any case, is read off the whole next-token distribution (warped here if need be).
        dropped = min(len(ids), len(self.encode(str(answer.get("stopping_word") or "")))) if stop_type == "word" else 0
        known = _align(ids[: len(ids) - dropped], steps)
        lps = []
        for t, token in enumerate(ids):
            value = known[t] if t < len(known) else None  # the dropped tail of a stop string has none
            if value is not None:
                lps.append(value)
            elif warped:
                lps.append(float(warp(self._row(prefix + ids[:t], usage)[None], params)[0, token]))
            else:
                lps.append(self._forced(prefix + ids[:t], token, usage))
        if stop_type == "word":
            finish, stop = "stop", str(answer.get("stopping_word") or "")
        elif stop_type == "eos":
            finish, stop = "eos", None
        else:
            finish, stop = "length", None
        if params.temperature == 0:
            base, sampled = lps, [0.0] * len(ids)
        elif warped:
            base, sampled = [math.nan] * len(ids), lps  # base filled in by sample()'s scoring pass
        else:
            base, sampled = lps, list(lps)
        return Generation(text=self.decode(ids), token_ids=ids, logprobs=base, sample_logprobs=sampled,
                          finish_reason=finish, stop=stop, prefix_tokens=len(prefix), meta={})

    def _row(self, prompt: list[int], usage: Cost) -> torch.Tensor:
        """The base model's whole next-token distribution after ``prompt`` (log-probs, -inf where none)."""
        vocab = self.tokenizer.vocab_size
        # the drawn token is forced to a plain one: a token ending inside a UTF-8 character gets no log-probs
        body = {**self._body(prompt, SamplingParams(max_new_tokens=1)), "n_predict": 1, "n_probs": vocab, "seed": 0,
                "logit_bias": [[self.plain_token, FORCE]]}
        data = self.client._send("POST", self.client.root_url + "/completion", body)
        steps = data.get("completion_probabilities") or []
        if not steps:
            raise EngineError(f"the llama.cpp server at {self.client.root_url} returned no log-probs")
        timings = data.get("timings") or {}
        usage.add(prefill_tokens=int(timings.get("prompt_n") or 0), cached_prompt_tokens=int(timings.get("cache_n") or 0),
                  model_calls=1, requests=1)
        out = torch.full((vocab,), float("-inf"))
        for e in steps[0].get("top_logprobs") or []:
            if int(e["id"]) < vocab:
                out[int(e["id"])] = float(e["logprob"])
        return out

    # -- scoring ------------------------------------------------------------------------------

    def _forced(self, prompt: list[int], token: int, usage: Cost) -> float:
        """Base log-prob of ``token`` after ``prompt``: one request for one token, forced by a logit bias."""
        body = {**self._body(prompt, SamplingParams(max_new_tokens=1)), "n_predict": 1, "n_probs": 1,
                "logit_bias": [[int(token), FORCE]], "seed": 0}
        data = self.client._send("POST", self.client.root_url + "/completion", body)
        steps = data.get("completion_probabilities") or []
        timings = data.get("timings") or {}
        usage.add(prefill_tokens=int(timings.get("prompt_n") or 0), cached_prompt_tokens=int(timings.get("cache_n") or 0),
                  model_calls=1, requests=1)
        if not steps and [int(t) for t in data.get("tokens") or []][:1] == [int(token)]:
            return float(self._row(prompt, usage)[int(token)])  # a token inside a UTF-8 character: no entry
        if not steps or int(steps[0]["id"]) != int(token):
            raise EngineError(f"the llama.cpp server at {self.client.root_url} did not take the forced token {token}")
        return float(steps[0]["logprob"])

    def score(self, prefixes, continuations, *, usage: Cost | None = None) -> list[list[float]]:
        pairs = self._scored_pairs(prefixes, continuations)

        def run(k: int, cost: Cost) -> list[float]:  # in order: each request extends the slot's cached prompt by one
            prefix, cont = pairs[k]
            return [self._forced(prefix + cont[:t], token, cost) for t, token in enumerate(cont)]

        return self._metered(len(pairs), run, usage)

    def next_token_logprobs_for(self, prefixes, token_ids: Sequence[int], *, usage: Cost | None = None) -> torch.Tensor:
        wanted = [int(t) for t in token_ids]
        cells = [(list(p), t) for p in prefixes for t in wanted]
        values = self._metered(len(cells), lambda k, cost: self._forced(*cells[k], cost), usage)
        return torch.tensor(values, dtype=torch.float32).reshape(len(prefixes), len(wanted))

    def next_token_logprobs(self, prefixes, *, usage: Cost | None = None) -> torch.Tensor:
        rows = self._metered(len(prefixes), lambda k, cost: self._row(list(prefixes[k]), cost), usage)
        return torch.stack(rows) if rows else torch.empty((0, self.tokenizer.vocab_size))

    def embed(self, texts, *, usage: Cost | None = None) -> torch.Tensor:
        raise EngineError(
            f"{self.name} is a llama.cpp generation server: it gives no mean-pooled hidden states; embed with an "
            "in-process model or a vLLM pooling server (--runner pooling --convert embed)"
        )

    def describe(self) -> dict:
        return {**super().describe(), "server": "llama.cpp", "slots": self.slots, "model_path": self.model_path}
