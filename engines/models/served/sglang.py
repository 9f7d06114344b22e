"""An SGLang server behind the :class:`TextModel` protocol.

``openai:URL`` finds it by itself (``owned_by: sglang`` in ``/v1/models``). Sampling
goes through ``/v1/completions`` as on vLLM (token-id prompts, ``n``, ``seed``,
``min_tokens``, ``top_k``, ``stop``, ``return_token_ids``); the rest uses SGLang's
native ``POST /generate``, which returns token ids with every log-prob.
Checked against SGLang 0.5.23's server (its CPU path, torch-native attention).

Where SGLang differs from vLLM, and what samplescope does about it
------------------------------------------------------------------
- Tokenizer: ``/v1/models`` names no folder; ``/get_model_info`` gives the
  ``tokenizer_path``, read here when it is on this machine and checked against
  ``/tokenize`` (else ``/tokenize`` / ``/detokenize`` themselves).
- Log-probs of sampled tokens are taken after temperature but before top-k and
  top-p, or raw with the server's ``SGLANG_RETURN_ORIGINAL_LOGPROB=1`` (probed at
  connect: ``temperature`` or ``raw``). So the proposal's log-probs are exact only
  for temperature-only sampling; with top-k or top-p they are NaN and
  ``meta["sample_logprobs"]`` says why (samplers that need them refuse). The base
  log-probs of a warped sample come from one scoring request each, counted.
- ``score``: ``/generate`` with ``return_logprob`` and ``logprob_start_len`` at the
  last prefix token: the input log-probs of the continuation, with their ids.
- ``next_token_logprobs_for``: ``/generate``'s ``token_ids_logprob`` at temperature 1
  (exactly the asked tokens); ``next_token_logprobs``: ``top_logprobs_num`` (at most
  the vocabulary: SGLang 0.5.23 dies on a larger one) as a dense row, refused when
  the top ones miss mass.
- Seeds: SGLang uses a request's ``seed`` only when started with
  ``--enable-deterministic-inference`` (not available with every attention
  backend, e.g. not ``torch_native`` on CPU). Without it the same seed does not
  give the same trace: ``describe()["reproducible"]`` is False and a warning is
  logged at connect. With it, every continuation goes in its own request with its
  own seed (the copies of one request could share one).
- ``min_tokens`` holds back end-of-text but not stop strings (vLLM holds both).
- Cost: cached prompt tokens from ``prompt_tokens_details.cached_tokens``
  (``--enable-cache-report``) or ``/generate``'s ``cached_tokens``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from engines.errors import EngineError
from engines.models.base import Generation, SamplingParams
from engines.models.served.client import EngineClient
from engines.models.served.openai_compatible import MAX_N_PER_REQUEST, RAW, ServedTextModel, _identity_warp
from engines.models.served.tokens import load_tokenizer
from engines.trace import Cost

log = logging.getLogger("samplescope.served")
#: the log-probs of a sampled token follow the request's temperature, not its top-k / top-p
TEMPERATURE = "temperature"


class SGLangTextModel(ServedTextModel):
    """One model on one SGLang server."""

    @classmethod
    def from_server(cls, client: EngineClient, model_id: str, info: dict) -> SGLangTextModel:
        model_info = client.get("/get_model_info", root=True)
        tokenizer = load_tokenizer(client, model_id, model_info.get("tokenizer_path") or model_info.get("model_path"))
        try:
            server = client.get("/server_info", root=True)
        except EngineError:
            server = client.get("/get_server_info", root=True)
        self = cls(client, model_id, tokenizer, name=f"openai:{client.base_url}#{model_id}",
                   max_model_len=int(info.get("max_model_len") or 2048), logprobs_mode=RAW, token_id_logprobs=False)
        self.deterministic = bool(server.get("enable_deterministic_inference"))
        self.max_n_per_request = 1 if self.deterministic else MAX_N_PER_REQUEST
        if not self.deterministic:
            log.warning("%s: SGLang ignores seeds without --enable-deterministic-inference; runs on it are not "
                        "reproducible", self.name)
        self.logprobs_mode = self._probe_logprobs_mode()
        return self

    # -- native requests ---------------------------------------------------------------

    def _generate(self, input_ids: list[int], usage: Cost, *, generated: bool = False, **fields) -> dict:
        body = {"input_ids": input_ids, "sampling_params": {"max_new_tokens": 1, "temperature": 1.0},
                "return_logprob": True, **fields}
        data = self.client._send("POST", self.client.root_url + "/generate", body)
        meta = data.get("meta_info") or {}
        prompt, cached = int(meta.get("prompt_tokens") or 0), int(meta.get("cached_tokens") or 0)
        usage.add(prefill_tokens=prompt - cached, cached_prompt_tokens=cached, model_calls=1, requests=1,
                  generated_tokens=int(meta.get("completion_tokens") or 0) if generated else 0)
        return meta

    def _probe_logprobs_mode(self) -> str:
        probe = self.tokenizer.encode("The answer is") or [self.eos_token_id or 0]
        top = {}
        for temperature in (1.0, 0.5):
            meta = self._generate(probe, Cost(), sampling_params={"max_new_tokens": 1, "temperature": temperature},
                                  top_logprobs_num=3)
            top[temperature] = sorted((float(e[0]) for e in meta["output_top_logprobs"][0]), reverse=True)
        return TEMPERATURE if max(abs(a - b) for a, b in zip(top[1.0], top[0.5], strict=False)) > 1e-3 else RAW

    # -- sampling ---------------------------------------------------------------------------

    def _needs_scored_base(self, params: SamplingParams) -> bool:
        return self.logprobs_mode == TEMPERATURE and not _identity_warp(params)

    def _returns_warped(self) -> bool:
        return self.logprobs_mode == TEMPERATURE

    def _generation(self, prefix: list[int], choice: dict, params: SamplingParams) -> Generation:
        g = super()._generation(prefix, choice, params)
        if self.logprobs_mode == TEMPERATURE and params.temperature != 0 and (params.top_k or params.top_p < 1.0):
            nan = [math.nan] * len(g.token_ids)
            reason = (f"SGLang at {self.client.root_url} reports log-probs after temperature but before top-k/top-p, "
                      "so the proposal's are unknown; sample with temperature only")
            g = Generation(**{**g.__dict__, "sample_logprobs": nan, "meta": {**g.meta, "sample_logprobs": reason}})
        return g

    # -- scoring ------------------------------------------------------------------------------

    def score(self, prefixes, continuations, *, usage: Cost | None = None) -> list[list[float]]:
        pairs = self._scored_pairs(prefixes, continuations)
        last = self.tokenizer.vocab_size - 1  # SGLang 0.5.23 reports that id as 0 (it clips ids >= vocab - 1)

        def run(k: int, cost: Cost) -> list[float]:
            prefix, cont = pairs[k]
            if not cont:
                return []
            meta = self._generate(prefix + cont, cost, logprob_start_len=len(prefix) - 1)
            rows = (meta.get("input_token_logprobs") or [])[1:]  # the first row (the last prefix token) has none
            if len(rows) != len(cont) or any(int(r[1]) not in (t, 0 if t == last else t)
                                             for r, t in zip(rows, cont, strict=True)):
                raise EngineError(f"SGLang at {self.client.root_url} returned input log-probs for other tokens")
            return [float(r[0]) for r in rows]

        return self._metered(len(pairs), run, usage)

    def next_token_logprobs_for(self, prefixes, token_ids: Sequence[int], *, usage: Cost | None = None) -> torch.Tensor:
        wanted = [int(t) for t in token_ids]

        def run(k: int, cost: Cost) -> list[float]:
            meta = self._generate(list(prefixes[k]), cost, token_ids_logprob=wanted)
            got = {int(e[1]): float(e[0]) for e in meta["output_token_ids_logprobs"][0]}
            return [got[t] for t in wanted]

        return torch.tensor(self._metered(len(prefixes), run, usage), dtype=torch.float32)

    def next_token_logprobs(self, prefixes, *, usage: Cost | None = None) -> torch.Tensor:
        k = min(self.max_logprobs, self._vocab())

        def run(i: int, cost: Cost) -> dict[int, float]:
            meta = self._generate(list(prefixes[i]), cost, top_logprobs_num=k)
            return {int(e[1]): float(e[0]) for e in meta["output_top_logprobs"][0]}

        return self._dense_rows(self._metered(len(prefixes), run, usage), advice="use an in-process model")

    def describe(self) -> dict:
        return {**super().describe(), "server": "sglang", "reproducible": self.deterministic}
