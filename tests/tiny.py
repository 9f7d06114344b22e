"""Tiny transformers models built in the tests (no hub, no weights in the repo)."""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHARS = string.ascii_letters + string.digits + " .,:;!?'\"-+*/=#\n()[]{}<>_"
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def char_tokenizer(chat_template: str | None = None):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


CHAT = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def tiny_llama(folder: Path, *, seed: int = 0, chat: bool = True, head: str = "causal", num_labels: int = 1) -> Path:
    """Save a randomly initialised 2-layer Llama (causal LM or sequence classifier) and its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = char_tokenizer(CHAT if chat else None)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config) if head == "causal" else LlamaForSequenceClassification(config)
    # sharpen the random LM a little so samples are not uniform noise
    if head == "causal":
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
