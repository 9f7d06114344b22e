"""Tokenisation that agrees with a served model.

:func:`load_tokenizer` prefers the tokenizer files of the folder the server
loaded (``/v1/models`` reports it as ``root``) when that folder, or a hub id in
the local cache, is readable here: local encoding is fast and gives the chat
template. It then checks the local tokenizer against the server's
``/tokenize`` on a probe text (one line of error when they disagree, so no
silent re-tokenisation drift). Without local files it tokenises through the
server itself (``/tokenize``, ``/detokenize``, chat templates via
``/tokenize`` with ``messages``), one request per call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from engines.models.chat import task_ids, text_ids
from engines.models.served.client import EngineClient, EngineError
from engines.task import Task

log = logging.getLogger("samplescope.served")

PROBE = "Q: 3+4*5\nThe answer is 23. Hello, world! ü"


class ServerTokenizer:
    """encode / decode / encode_task for one served model."""

    source = "server"

    def __init__(self, client: EngineClient, model: str, *, eos_token_id: int | None, vocab_size: int) -> None:
        self.client, self.model = client, model
        self.eos_token_id, self.vocab_size = eos_token_id, vocab_size
        self._encode = lru_cache(maxsize=4096)(self._encode_remote)
        self._decode = lru_cache(maxsize=4096)(self._decode_remote)

    def _encode_remote(self, text: str) -> tuple[int, ...]:
        data = self.client._send("POST", self.client.root_url + "/tokenize",
                                 {"model": self.model, "prompt": text, "add_special_tokens": False})
        return tuple(int(t) for t in data["tokens"])

    def _decode_remote(self, ids: tuple[int, ...]) -> str:
        kept = [t for t in ids if t != self.eos_token_id]
        if not kept:
            return ""
        data = self.client._send("POST", self.client.root_url + "/detokenize", {"model": self.model, "tokens": kept})
        return str(data["prompt"] if "prompt" in data else data["text"])  # vLLM says prompt, SGLang text

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text)) if text else []

    def decode(self, ids: Sequence[int]) -> str:
        return self._decode(tuple(int(i) for i in ids))

    def encode_task(self, task: Task) -> list[int]:
        if task.chat:
            try:
                return self._chat_ids(task)
            except EngineError as exc:
                if "template" not in str(exc).lower():  # a model without a chat template: the plain prompt
                    raise
        return self.encode(task.prompt)

    def _chat_ids(self, task: Task) -> list[int]:
        data = self.client._send("POST", self.client.root_url + "/tokenize",
                                 {"model": self.model, "messages": task.messages(), "add_generation_prompt": True})
        return [int(t) for t in data["tokens"]]


class LocalTokenizer:
    """The served folder's own tokenizer files, read here (checked against the server)."""

    def __init__(self, tokenizer, source: str, vocab_size: int) -> None:
        self.tokenizer, self.source, self.vocab_size = tokenizer, source, vocab_size

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode_task(self, task: Task) -> list[int]:
        return task_ids(self.tokenizer, task)  # the same ids the in-process model makes


def _local(root: str | None):
    """(tokenizer, vocab size) from the served folder or the local hub cache, or None."""
    if not root:
        return None
    try:
        from transformers import AutoConfig, AutoTokenizer

        source = str(Path(root).expanduser()) if Path(root).expanduser().exists() else root
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        try:
            vocab = int(getattr(AutoConfig.from_pretrained(source, local_files_only=True), "vocab_size", 0) or 0)
        except (OSError, ValueError):
            vocab = 0
        return tokenizer, max(vocab, len(tokenizer))
    except (OSError, ValueError, ImportError) as exc:
        log.info("no local tokenizer for %s (%s); tokenising through the server", root, exc)
        return None


def load_tokenizer(client: EngineClient, model: str, root: str | None):
    """A tokenizer that agrees with the server (checked where the server has /tokenize)."""
    local = _local(root)
    try:
        remote = client._send("POST", client.root_url + "/tokenize",
                              {"model": model, "prompt": PROBE, "add_special_tokens": False})
        server_ids = [int(t) for t in remote["tokens"]]
    except EngineError as exc:
        if local is None:
            raise EngineError(
                f"the server at {client.root_url} has no /tokenize and its tokenizer files ({root}) are not on "
                f"this machine; samplescope cannot tokenise for it"
            ) from exc
        server_ids = None
    if local is not None:
        tokenizer, vocab = local
        wrapped = LocalTokenizer(tokenizer, f"local:{root} (checked against /tokenize)", vocab)
        if server_ids is None:
            wrapped.source = f"local:{root} (unchecked: the server has no /tokenize)"
        elif wrapped.encode(PROBE) != server_ids:
            raise EngineError(
                f"the tokenizer files at {root} disagree with the server's /tokenize; point the server at "
                "the same folder"
            )
        return wrapped
    # the server's own tokenizer: no eos id or vocabulary size known here
    return ServerTokenizer(client, model, eos_token_id=None, vocab_size=0)
