"""Trainable policies: any in-process transformers causal LM, loaded from a model spec.

``load_policy(spec)`` accepts ``embedded:arith`` (the reasoning lab's policy) and
``hf:FOLDER`` (any transformers causal-LM folder, e.g. a policy this lab trained) and
returns a fresh :class:`HFPolicy` that owns its weights (never the shared, cached
inference copy). Served specs (``openai:URL``) and other schemes cannot be trained and
get a one-line error.

:meth:`HFPolicy.rollout` samples with a KV cache and left padding from
``softmax(logits / T)`` with the caller's ``torch.Generator`` and records each token's
log-prob under the *untempered* policy (what the importance ratio of the update
compares against). :meth:`HFPolicy.token_logprobs` recomputes those log-probs with
gradients (prompt + completion, right padded).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engines.errors import ConfigError, ModelLoadError
from engines.training.base import Rollout


class HFPolicy:
    """A transformers causal LM and its tokenizer, as a trainable policy."""

    trainable = True

    def __init__(self, model: Any, tokenizer: Any, *, name: str) -> None:
        self.model = model.eval()  # no dropout in rollouts or updates; gradients still flow
        self.tokenizer = tokenizer
        self.name = name
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def parameters(self):
        return self.model.parameters()

    def parameter_groups(self, learning_rate: float, gain_learning_rate: float | None = None) -> list[dict[str, Any]]:
        """Optimiser groups: the output normalisation's gain (:meth:`logit_scale_parameters`) at
        ``gain_learning_rate``, every other parameter (the blocks' own norm gains included) at
        ``learning_rate``.

        Why a separate rate: the policy is sharp along its gradient (on the arith policy a step of
        L2 norm 0.1 along it costs 8 points of accuracy), so the matrices need a learning rate near
        1e-5, at which the output gain (≈ 1.3, one entry per channel) barely moves. That gain
        scales each channel of the last hidden state before the (tied) output projection: scaled
        uniformly it is the inverse sampling temperature, the direction that sharpens a policy and
        the one RL with a verifier moves first. The blocks' gains are not: at 0.1 with the output
        gain they broke the arith policy (README, "RL on the arith policy"). A model without such a
        gain trains every parameter at ``learning_rate``."""
        gains = self.logit_scale_parameters()
        if gain_learning_rate is None or not gains:
            return [{"params": list(self.model.parameters()), "lr": learning_rate}]
        rest = [p for p in self.model.parameters() if all(p is not g for g in gains)]
        return [{"params": rest, "lr": learning_rate}, {"params": gains, "lr": gain_learning_rate}]

    def logit_scale_parameters(self) -> list[torch.nn.Parameter]:
        """The gain of the normalisation right before the output projection (Llama's ``model.norm``,
        GPT-2's ``transformer.ln_f``): 1-D parameters of a ``*norm*`` / ``ln_f`` module outside the
        numbered blocks."""
        return [
            param for name, param in self.model.named_parameters()
            if param.dim() == 1 and name.endswith("weight") and ("norm" in name.lower() or "ln_f" in name)
            and not re.search(r"\.\d+\.", name)
        ]

    def frozen_copy(self) -> HFPolicy:
        """A copy that does not train (the KL reference)."""
        model = copy.deepcopy(self.model)
        for p in model.parameters():
            p.requires_grad_(False)
        return HFPolicy(model, self.tokenizer, name=f"{self.name}@ref")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @torch.no_grad()
    def rollout(
        self, prompts: Sequence[str], *, temperature: float, max_new_tokens: int, rng: torch.Generator, batch_size: int = 256
    ) -> list[Rollout]:
        return self.extend([self.encode(p) for p in prompts], temperature=temperature, max_new_tokens=max_new_tokens, rng=rng, batch_size=batch_size)

    @torch.no_grad()
    def extend(
        self,
        prefixes: Sequence[Sequence[int]],
        *,
        temperature: float,
        max_new_tokens: int,
        rng: torch.Generator,
        stop_ids: Sequence[int] = (),
        batch_size: int = 256,
    ) -> list[Rollout]:
        """One continuation of each token-id prefix (prompt + any partial completion, the
        rollout's ``prompt_ids``), ending at end-of-text, after a token in ``stop_ids`` (a
        step delimiter; kept in the continuation) or at ``max_new_tokens``. Tree rollouts
        branch with it."""
        out: list[Rollout] = []
        for start in range(0, len(prefixes), batch_size):
            part = [list(ids) for ids in prefixes[start : start + batch_size]]
            out += self._rollout_batch(part, temperature, max_new_tokens, rng, set(stop_ids))
        return out

    def _rollout_batch(self, encoded, temperature, max_new_tokens, rng, stop_ids) -> list[Rollout]:
        device = self.device
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[self.pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1, :].float()
        next_pos = positions[:, -1:] + 1
        rows = len(encoded)
        done = torch.zeros(rows, dtype=torch.bool)
        tokens_out: list[list[int]] = [[] for _ in range(rows)]
        logps_out: list[list[float]] = [[] for _ in range(rows)]
        for _ in range(max_new_tokens):
            logp = torch.log_softmax(logits, dim=-1).cpu()
            if temperature == 0:
                tokens = logp.argmax(-1)
            else:
                probs = logp.exp() if temperature == 1.0 else torch.softmax(logits.cpu() / temperature, dim=-1)
                tokens = torch.multinomial(probs, 1, generator=rng).squeeze(-1)
            chosen = logp.gather(1, tokens[:, None]).squeeze(-1)
            for i in (~done).nonzero().flatten().tolist():
                tokens_out[i].append(int(tokens[i]))
                logps_out[i].append(float(chosen[i]))
            done |= tokens == self.eos_id
            for stop in stop_ids:
                done |= tokens == stop
            if bool(done.all()):
                break
            tokens = torch.where(done, torch.full_like(tokens, self.pad_id), tokens).to(device)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            out = self.model(
                input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos, cache=cache, use_cache=True
            )
            cache, logits = out.cache, out.logits[:, -1, :].float()
            next_pos = next_pos + 1
        rollouts = []
        for ids, completion, logps in zip(encoded, tokens_out, logps_out, strict=True):
            finished = bool(completion) and completion[-1] == self.eos_id
            text_ids = completion[:-1] if finished else completion
            rollouts.append(
                Rollout(
                    prompt_ids=tuple(ids),
                    completion_ids=tuple(completion),
                    logprobs=tuple(logps),
                    text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                    finished=finished,
                )
            )
        return rollouts

    def token_logprobs(self, rollouts: Sequence[Rollout]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs (with grad) and entropies (detached) of each completion token; mask marks real tokens."""
        device = self.device
        seqs = [list(r.prompt_ids) + list(r.completion_ids) for r in rollouts]
        width = max(len(s) for s in seqs)
        completion_width = max(max(r.tokens for r in rollouts), 1)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        logits = self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
        logp_all = torch.log_softmax(logits, dim=-1)
        logps = torch.zeros((len(seqs), completion_width), device=device)
        entropies = torch.zeros((len(seqs), completion_width))
        mask = torch.zeros((len(seqs), completion_width))
        for i, r in enumerate(rollouts):
            n, start = r.tokens, len(r.prompt_ids)
            if n == 0:
                continue
            rows = logp_all[i, start - 1 : start - 1 + n]  # the logits at position t predict token t + 1
            target = torch.tensor(r.completion_ids, device=device)
            logps[i, :n] = rows.gather(1, target[:, None]).squeeze(-1)
            entropies[i, :n] = -(rows.exp() * rows).sum(-1).detach().cpu()
            mask[i, :n] = 1
        return logps, entropies, mask

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))


def load_policy(spec: str, *, device: str = "cpu") -> HFPolicy:
    """A fresh trainable policy from a model spec (``embedded:arith`` or ``hf:FOLDER``)."""
    spec = (spec or "").strip()
    scheme, _, rest = spec.partition(":")
    if scheme == "embedded" and rest == "arith":
        from engines.models.arith import POLICY_DIR

        folder = POLICY_DIR
    elif scheme == "hf" and rest:
        folder = Path(rest).expanduser()
        if not (folder / "config.json").exists():
            raise ModelLoadError(f"policy {spec!r}: no transformers model folder at {folder} (training needs a local folder)")
    elif scheme in ("openai", "gguf", "toy", "embedded", "diffusers"):
        raise ConfigError(
            f"policy {spec!r} cannot be trained here: training needs an in-process transformers causal LM "
            "(embedded:arith or hf:FOLDER)"
        )
    else:
        raise ConfigError(f"policy spec {spec!r} must be embedded:arith or hf:FOLDER")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load policy {spec!r}: {first}") from exc
    return HFPolicy(model.to(device), tokenizer, name=spec)
