"""The Math-Shepherd process-reward format, written once for the in-process and the served PRM.

Math-Shepherd (Wang et al., 2024, arXiv:2312.08935) trains a causal LM to predict a "good"
or a "bad" token at a step tag placed after every step; a step's score is
P(good) / (P(good) + P(bad)) read at the tag. The text is ``prompt + "\\n"`` followed by
``step.strip() + " " + tag + "\\n"`` for every step. The tag and the two tokens default to
Math-Shepherd's ``ки``, ``+`` and ``-``; each must be one token of the PRM's tokenizer.

:class:`~engines.rewards.steps.ShepherdPRM` (a local folder) and
:class:`~engines.rewards.served.ServedShepherdPRM` (``prm:openai:URL``) both build their
input with :meth:`ShepherdFormat.text` and check their scores with
:meth:`ShepherdFormat.check_scores`, so the two read the same positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engines.errors import ConfigError


@dataclass(frozen=True)
class ShepherdFormat:
    step_tag: str = "ки"
    good: str = "+"
    bad: str = "-"

    def __post_init__(self) -> None:
        for name in ("step_tag", "good", "bad"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"the PRM's {name} must be non-empty text, got {getattr(self, name)!r}")

    def text(self, prompt: str, steps: Sequence[str]) -> str:
        """The PRM's input: the prompt, then every step followed by the tag (a step holding the tag is refused)."""
        if any(self.step_tag in step for step in steps):
            raise ConfigError(f"a step contains the PRM's step tag {self.step_tag!r}; its scores would shift")
        body = "".join(f"{step.strip()} {self.step_tag}\n" for step in steps)
        return f"{prompt}\n{body}"

    def token_ids(self, tokenizer: Any) -> tuple[int, int, int]:
        """(tag, good, bad) ids in ``tokenizer``; each must be one (non-blank) token."""
        return single_token_id(tokenizer, self.step_tag), single_token_id(tokenizer, self.good), single_token_id(tokenizer, self.bad)

    @staticmethod
    def check_scores(scores: Sequence[float], steps: Sequence[str]) -> list[float]:
        """One score per step, or one line saying the tags and the steps disagree."""
        if len(scores) != len(steps):
            raise ConfigError(f"the PRM found {len(scores)} step tags for {len(steps)} steps; a step contains the tag?")
        return list(scores)


def single_token_id(tokenizer: Any, text: str) -> int:
    """The id of ``text`` as one token, ignoring blank pieces a tokenizer may prepend (SentencePiece's ``▁``)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if tokenizer.decode([i]).strip()] or ids
    if len(ids) != 1:
        raise ConfigError(f"PRM token {text!r} is not a single token of this tokenizer")
    return ids[0]
