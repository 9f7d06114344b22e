"""Text formats built from a transformers tokenizer, written once for every caller.

- :func:`task_ids` -- a :class:`Task`'s prompt ids: the tokenizer's chat template with the
  generation prompt when the task asks for chat and the tokenizer has a template, else the
  raw prompt with the BOS token the tokenizer asks for (``add_bos_token``). The in-process
  model (:mod:`engines.models.hf`) and a served model tokenised locally
  (:mod:`engines.models.served.tokens`) both use it, so a prompt is the same ids either way.
- :func:`reward_model_text` -- the input of a sequence-classification reward model: the
  (prompt, response) conversation under the chat template when there is one, else
  ``prompt + "\\n" + response``. The in-process ``rm:`` and the served ``rm:openai:`` use it.

The tokenizer is any object with the ``transformers`` tokenizer calls used here
(``__call__``, ``apply_chat_template``, ``chat_template``, ``bos_token_id``), so tests can
hand in a small stand-in.
"""

from __future__ import annotations

from typing import Any

from engines.task import Task


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of raw text, no special tokens added (what every prefix of a run is made of)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def task_ids(tokenizer: Any, task: Task) -> list[int]:
    """The prompt's ids: chat-templated (with the generation prompt) or raw with the tokenizer's BOS."""
    if task.chat and has_chat_template(tokenizer):
        return text_ids(tokenizer, tokenizer.apply_chat_template(task.messages(), tokenize=False, add_generation_prompt=True))
    ids = text_ids(tokenizer, task.prompt)
    bos = tokenizer.bos_token_id
    if getattr(tokenizer, "add_bos_token", False) and bos is not None:
        ids = [bos, *ids]
    return ids


def reward_model_text(tokenizer: Any | None, prompt: str, response: str) -> str:
    """A reward model's input: the conversation under the chat template, else ``prompt\\nresponse``."""
    if tokenizer is not None and has_chat_template(tokenizer):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"{prompt}\n{response}"
