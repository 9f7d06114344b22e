"""A task: what a sampler is asked to solve.

``prompt`` is the user's text; ``answer`` the reference answer when the task
is verifiable; ``chat`` says whether text models wrap the prompt in their chat
template (instruction-tuned models) or continue it raw (the reasoning lab's
models are trained on raw ``problem\\n`` prefixes). ``target`` carries
modality-specific targets (e.g. the digit class for diffusion rewards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Task:
    prompt: str
    answer: str | None = None
    chat: bool = True
    system: str | None = None
    name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError("prompt must be a string")

    def messages(self) -> list[dict[str, str]]:
        """The chat turns a chat template renders: the system message, if any, then the prompt as the user's."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.prompt}]

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "answer": self.answer,
            "chat": self.chat,
            "system": self.system,
            "name": self.name,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
