"""Embeddings from a served model: vLLM's pooling runner behind ``TextModel.embed``.

Contract
--------
- In-process text models embed a text as the mean over its tokens of the last
  hidden state (after the final norm; :meth:`TransformersTextModel.embed`). vLLM
  0.32 serves the same vector from ``/v1/embeddings`` when started as an embedding
  model with mean pooling and asked for no normalisation::

      vllm serve FOLDER --runner pooling --convert embed --pooler-config '{"pooling_type": "MEAN"}'

  (``--convert embed`` turns a causal LM into an embedding model; its default
  pooling is the last token, hence ``pooling_type`` MEAN; ``use_activation:
  false`` per request turns off its L2 normalisation.) Texts go as token ids
  from the client's tokenizer, so the server embeds exactly the tokens the
  in-process model would (no BOS is added to token-id input).
- A server that does not embed (a generation server, or a pooling server of a
  classifier such as ``--runner pooling`` on a reward model) has no
  ``/v1/embeddings`` route (HTTP 404) or refuses the task: :func:`embed_texts`
  raises one :class:`EngineError` line naming the server setting above.
- Cost: ``prefill_tokens`` = the server's ``usage.prompt_tokens``, ``requests``
  and ``model_calls`` one per request (a request carries up to
  :data:`EMBED_BATCH` texts; requests go out concurrently).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from engines.errors import EngineError
from engines.trace import Cost

EMBED_BATCH = 16
SERVER_SETTING = "--runner pooling --convert embed --pooler-config '{\"pooling_type\": \"MEAN\"}'"


def refusal(model: Any, detail: str = "") -> EngineError:
    why = f" ({detail})" if detail else ""
    return EngineError(
        f"{model.name} serves no embeddings{why}; start vLLM on the model folder with {SERVER_SETTING}, "
        "or use an in-process model"
    )


def embed_texts(model: Any, texts: Sequence[str], *, usage: Cost | None = None) -> torch.Tensor:
    """[len(texts), hidden] float32 embeddings of ``texts`` from ``model``'s server (a ServedTextModel)."""
    texts = list(texts)
    if not texts:
        return torch.zeros(0, 0)
    ids = [model.encode(t) or [model.eos_token_id or 0] for t in texts]
    longest = max(len(s) for s in ids)
    if longest > model.max_model_len:
        raise ValueError(f"a text of {longest} tokens exceeds the served model's context of {model.max_model_len}")
    chunks = [ids[start:start + EMBED_BATCH] for start in range(0, len(ids), EMBED_BATCH)]

    def run(k: int, cost: Cost) -> list[list[float]]:
        body = {"model": model.model_id, "input": chunks[k], "encoding_format": "float", "use_activation": False}
        try:
            data = model.client.post("/embeddings", body)
        except EngineError as exc:
            line = str(exc)
            if "HTTP 404" in line or "does not support" in line.lower() or "not supported" in line.lower():
                raise refusal(model, "no /v1/embeddings") from None
            raise
        rows = sorted(data.get("data") or [], key=lambda r: r.get("index", 0))
        if len(rows) != len(chunks[k]) or any(not isinstance(r.get("embedding"), list) for r in rows):
            raise EngineError(f"the server at {model.client.root_url} answered /v1/embeddings with "
                              f"{len(rows)} embeddings for {len(chunks[k])} inputs")
        prompt = int((data.get("usage") or {}).get("prompt_tokens") or sum(len(s) for s in chunks[k]))
        cost.add(prefill_tokens=prompt, model_calls=1, requests=1)
        return [r["embedding"] for r in rows]

    out = [row for rows in model._metered(len(chunks), run, usage) for row in rows]
    widths = {len(r) for r in out}
    if len(widths) != 1:
        raise EngineError(f"the server at {model.client.root_url} returned embeddings of different widths {sorted(widths)}")
    return torch.tensor(out, dtype=torch.float32)
