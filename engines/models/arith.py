"""``embedded:arith``: the reasoning lab's small arithmetic model, trained by this project.

Contract
--------
- The weights, config and character-level tokenizer live in
  ``engines/assets/arith/policy`` (reproduced by ``scripts/train_arith.py``
  from its seed; see ``engines/assets/arith/MODEL_CARD.md``). The policy is a
  tiny ``LlamaForCausalLM``; the tokenizer is a ``tokenizers`` WordLevel model
  over single characters (:data:`CHARS`), saved as a
  ``PreTrainedTokenizerFast`` with ``<eos>`` and ``<pad>``, no BOS and no chat
  template: tasks use ``chat=False`` and the prompt ``"Q: 3+4*5\\n"`` (see
  :mod:`engines.tasks.arith`).
- ``load_model("embedded:arith")`` returns the project's
  ``TransformersTextModel`` over that folder; nothing touches the network.
- :func:`sample_completions` is a plain-torch batched sampler (KV cache,
  left padding, the caller's ``torch.Generator``, full softmax at the given
  temperature) shared by the training script and the tests, so that the
  accuracy the model card states is measured the same way everywhere.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engines.errors import ModelLoadError
from engines.models import EMBEDDED, EmbeddedModel, LoadOptions

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "arith"
POLICY_DIR = ASSETS / "policy"

#: every character a prompt or solution may contain
CHARS = "0123456789+-*=#Q: \n"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"

_lock = threading.Lock()
_hf_cache: dict[tuple[str, str], tuple[Any, Any]] = {}


def build_tokenizer():
    """The character-level tokenizer (ids: <pad>=0, <eos>=1, <unk>=2, then :data:`CHARS`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # one pre-token per character (newlines included), glued back together on decode
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )


def load_hf(folder: str | Path = POLICY_DIR, device: str = "cpu", kind: str = "causal") -> tuple[Any, Any]:
    """(model, tokenizer) from an arith asset folder, once per process; eval mode, offline.

    ``kind`` is ``causal`` (the policy), ``sequence`` (the outcome reward model)
    or ``token`` (the process reward model).
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    auto = {
        "causal": AutoModelForCausalLM,
        "sequence": AutoModelForSequenceClassification,
        "token": AutoModelForTokenClassification,
    }[kind]
    folder = Path(folder)
    key = (str(folder.resolve()), f"{kind}@{device}")
    with _lock:
        if key not in _hf_cache:
            if not (folder / "config.json").exists():
                raise ModelLoadError(
                    f"no arith model in {folder}; run `python scripts/train_arith.py` to build it"
                )
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            model = auto.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
            _hf_cache[key] = (model.to(device).eval(), tokenizer)
        return _hf_cache[key]


@torch.no_grad()
def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 96,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> list[str]:
    """One completion per prompt (text after the prompt, up to ``<eos>``).

    Temperature 0 is greedy; otherwise tokens are drawn from
    ``softmax(logits / temperature)`` with ``generator``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        out += _sample_batch(
            model, tokenizer, prompts[start : start + batch_size], temperature, max_new_tokens, generator
        )
    return out


def _sample_batch(model, tokenizer, prompts, temperature, max_new_tokens, generator) -> list[str]:
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = out.cache
    logits = out.logits[:, -1, :]
    next_pos = positions[:, -1:] + 1
    rows = len(prompts)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in range(rows)]
    for _ in range(max_new_tokens):
        if temperature == 0:
            tokens = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            tokens = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(device)
        tokens = torch.where(done, torch.full_like(tokens, pad), tokens)
        for i in (~done).nonzero().flatten().tolist():
            if tokens[i].item() != eos:
                generated[i].append(int(tokens[i]))
        done |= tokens == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        out = model(
            input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos, cache=cache, use_cache=True
        )
        cache = out.cache
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]


def accuracy_band(p: float, n: int = 200, *, n_ref: int | None = None, z: float = 3.29) -> tuple[float, float]:
    """Where the share of right answers among ``n`` fresh samples should fall, given a measured rate ``p``.

    ``p ± z·sqrt(p(1-p)·(1/n + 1/n_ref))`` clipped to [0, 1], where ``n_ref`` is the
    number of samples ``p`` was measured on (None: ``p`` is exact). z=3.29 leaves
    about a 0.1% chance of a false alarm for independent samples; drawing on a
    fixed problem set only shrinks the spread.
    """
    if not 0 <= p <= 1 or n < 1:
        raise ValueError("need 0 <= p <= 1 and n >= 1")
    spread = 1 / n + (1 / n_ref if n_ref else 0.0)
    half = z * math.sqrt(p * (1 - p) * spread)
    return max(0.0, p - half), min(1.0, p + half)


def _load(options: LoadOptions) -> Any:
    from engines.models.hf import TransformersTextModel

    if not (POLICY_DIR / "config.json").exists():
        raise ModelLoadError(f"no arith model in {POLICY_DIR}; run `python scripts/train_arith.py` to build it")
    return TransformersTextModel.from_pretrained(str(POLICY_DIR), options, name="embedded:arith")


EMBEDDED.add(
    "arith",
    EmbeddedModel(
        name="arith",
        modality="text",
        description="Tiny Llama trained by samplescope on multi-step arithmetic (prompt 'Q: 3+4*5\\n', chat=False)",
        load=_load,
    ),
)

