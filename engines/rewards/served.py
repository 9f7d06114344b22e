"""Reward models on an OpenAI-compatible server (vLLM's pooling and completions endpoints).

- ``rm:openai:URL[#NAME]``: a sequence-classification reward model served by
  vLLM with ``--runner pooling``. The input is built by the function the
  in-process ``rm:`` uses (:func:`engines.models.chat.reward_model_text`:
  the chat template when the tokenizer has one, else ``prompt + "\\n" +
  response``), tokenised with the served folder's tokenizer and sent as token
  ids to ``/classify`` with ``use_activation: false``, so the server returns
  the head's raw logits; the reward is the logit for one label, else
  logit[1] - logit[0], as in-process.
- ``prm:openai:URL[#NAME]``: a Math-Shepherd process reward model (a causal LM
  read at step tags; Wang et al., 2024, arXiv:2312.08935) on a completions
  server: the text with a tag after every step
  (:class:`~engines.rewards.shepherd.ShepherdFormat`, as in-process) goes out once with
  ``prompt_logprobs=K`` and the step's score is P(good)/(P(good)+P(bad)) from
  the top-K prompt log-probs after each tag. The tag and the two tokens come
  from ``prm:openai:URL#NAME?tag=...&good=...&bad=...`` or default to
  Math-Shepherd's ``ки``, ``+``, ``-``; a score whose tokens are not in the
  server's top K is refused in one line.

Requests for one call go out concurrently; reward tokens are the server's
prompt tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from urllib.parse import parse_qsl

from engines.errors import ConfigError, EngineError
from engines.models.chat import reward_model_text
from engines.models.served.client import EngineClient
from engines.models.served.tokens import _local
from engines.rewards.base import Reward, StepReward
from engines.rewards.shepherd import ShepherdFormat
from engines.task import Task
from engines.trace import Cost


def _connect(rest: str) -> tuple[EngineClient, str, dict, object]:
    url, _, name_query = rest.partition("#")
    name, _, query = name_query.partition("?")
    client = EngineClient(url)
    listed = client.models()
    ids = [m.get("id") for m in listed]
    if not name:
        if len(ids) != 1:
            raise EngineError(f"the server at {client.root_url} serves {ids}; pick one with #NAME")
        name = ids[0]
    if name not in ids:
        raise EngineError(f"the server at {client.root_url} has no model {name!r}; it serves: {', '.join(map(str, ids))}")
    info = next(m for m in listed if m.get("id") == name)
    local = _local(info.get("root"))
    return client, name, dict(parse_qsl(query)), (local[0] if local else None)


class ServedClassifierReward(Reward):
    def __init__(self, client: EngineClient, model: str, tokenizer, name: str) -> None:
        self.client, self.model, self.tokenizer, self.name = client, model, tokenizer, name

    def _input(self, prompt: str, response: str) -> str | list[int]:
        """The in-process ``rm:`` input (:func:`reward_model_text`): token ids where the tokenizer is here, else text."""
        text = reward_model_text(self.tokenizer, prompt, response)
        return text if self.tokenizer is None else list(self.tokenizer(text)["input_ids"])

    def score(self, task: Task, candidates: Sequence[str], *, usage: Cost | None = None) -> list[float]:
        inputs = [self._input(task.prompt, c) for c in candidates]

        def run(item):
            body = {"model": self.model, "input": item, "use_activation": False}
            data = self.client._send("POST", self.client.root_url + "/classify", body)
            row = data["data"][0]
            logits = row.get("probs") or row.get("logits") or row.get("data")
            tokens = int((data.get("usage") or {}).get("prompt_tokens") or 0)
            return logits, tokens

        rows = self.client.map(run, inputs)
        if usage is not None:
            usage.add(reward_tokens=sum(t for _, t in rows), requests=len(rows))
        return [float(v[0]) if len(v) == 1 else float(v[1] - v[0]) for v, _ in rows]


class ServedShepherdPRM(StepReward):
    def __init__(self, client: EngineClient, model: str, tokenizer, *, step_tag: str, good: str, bad: str,
                 name: str, top_k: int = 20) -> None:
        if tokenizer is None:
            raise ConfigError("prm:openai needs the served model's tokenizer files on this machine")
        self.client, self.model, self.tokenizer, self.name, self.top_k = client, model, tokenizer, name, top_k
        self.format = ShepherdFormat(step_tag, good, bad)
        self.tag_id, self.good_id, self.bad_id = self.format.token_ids(tokenizer)

    def score_steps(self, task: Task, candidates: Sequence[Sequence[str]], *, usage: Cost | None = None) -> list[list[float]]:
        def run(steps):
            if not steps:
                return [], 0
            ids = self.tokenizer(self.format.text(task.prompt, steps), add_special_tokens=False)["input_ids"]
            body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 1.0,
                    "prompt_logprobs": self.top_k}
            data = self.client.post("/completions", body)
            rows = data["choices"][0].get("prompt_logprobs")
            if rows is None:
                raise EngineError(f"the server at {self.client.root_url} returns no prompt log-probs; prm needs them")
            scores = []
            for position, token in enumerate(ids):
                if token != self.tag_id:
                    continue
                if position + 1 < len(ids):
                    top = {int(k): v["logprob"] for k, v in (rows[position + 1] or {}).items()}
                else:  # the tag ends the text: its next-token distribution is the generated position
                    top = self._next(ids)
                if self.good_id not in top or self.bad_id not in top:
                    raise EngineError(f"the PRM's good/bad tokens are not in the server's top {self.top_k} "
                                      "log-probs after a step tag; raise vLLM's --max-logprobs")
                g, b = math.exp(top[self.good_id]), math.exp(top[self.bad_id])
                scores.append(g / (g + b))
            return self.format.check_scores(scores, steps), int((data.get("usage") or {}).get("prompt_tokens") or 0)

        rows = self.client.map(run, list(candidates))
        if usage is not None:
            usage.add(reward_tokens=sum(t for _, t in rows), requests=sum(1 for s, _ in rows if s))
        return [s for s, _ in rows]

    def _next(self, ids: list[int]) -> dict[int, float]:
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 1.0,
                "logprobs": 2, "logprob_token_ids": [self.good_id, self.bad_id], "return_tokens_as_token_ids": True}
        data = self.client.post("/completions", body)
        rows = (data["choices"][0].get("logprobs") or {}).get("top_logprobs") or [{}]
        return {int(k.split(":", 1)[1]): float(v) for k, v in (rows[0] or {}).items() if k.startswith("token_id:")}


def served_rm(rest: str, name: str) -> ServedClassifierReward:
    client, model, _, tokenizer = _connect(rest)
    return ServedClassifierReward(client, model, tokenizer, name)


def served_prm(rest: str, name: str) -> ServedShepherdPRM:
    client, model, options, tokenizer = _connect(rest)
    defaults = ShepherdFormat()
    return ServedShepherdPRM(
        client, model, tokenizer, name=name,
        step_tag=options.get("tag", defaults.step_tag), good=options.get("good", defaults.good),
        bad=options.get("bad", defaults.bad),
        top_k=int(options.get("top_k", 20)),
    )
