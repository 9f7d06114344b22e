"""transformers causal LMs behind the :class:`TextModel` protocol.

Loading: a local folder, a hub id (from the local hub cache first; an
unreachable hub gives a one-line error that says how to point at a folder), or
a GGUF file (``gguf_file=``, dequantised by transformers).

Sampling is a hand-written batched decode loop rather than ``generate`` so
that it can (1) prefill each distinct prefix once and expand its KV cache to
the N continuations that share it, (2) reuse the cached KV of any stored prefix
(tree search extends nodes whose prefixes are already encoded), (3) return the
base and the sampling log-prob of every token, and (4) draw from the caller's
``torch.Generator``. Finished rows leave the batch so late rows do not pay for
early ones. After every decode step the loop calls
:func:`engines.models.watch.decode_step`: the run's progress hook sees the
tokens so far, and a cancelled run stops there, not after the whole batch.

Row layout of a prefill batch (``A`` = longest cached part, ``B`` = longest
uncached suffix): ``[pads | cached KV][pads | suffix tokens]``; pads are masked
and position ids follow each row's real tokens.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from engines.errors import ModelLoadError
from engines.models import SCHEMES, LoadOptions
from engines.models.base import Generation, SamplingParams, TextModel, checked_prefixes
from engines.models.chat import has_chat_template, task_ids, text_ids
from engines.models.kv import PrefixStore, RowKV, stack
from engines.models.kv import row_kv as cut_row
from engines.models.sampling import confidence_stops, draw, entropy, token_confidence
from engines.models.watch import decode_step
from engines.task import Task
from engines.trace import Cost


class TransformersTextModel(TextModel):
    """A causal LM and its tokenizer, with a prefix KV store."""

    confidence_stop = True

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        name: str,
        reuse_prefixes: bool = True,
        store_bytes: int = 1 << 30,
        batch_size: int = 64,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.reuse_prefixes = reuse_prefixes
        self.store = PrefixStore(store_bytes)
        self.batch_size = batch_size
        self._lock = threading.RLock()
        config = model.config
        self.max_positions = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        self._eos_ids = self._collect_eos_ids()
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (min(self._eos_ids) if self._eos_ids else 0)

    # -- loading -----------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        options: LoadOptions | None = None,
        *,
        name: str | None = None,
        gguf_file: str | None = None,
        **kwargs,
    ) -> TransformersTextModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        options = options or LoadOptions()
        local = Path(path_or_id).expanduser()
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            if local.exists():
                source = str(local)
                tokenizer = AutoTokenizer.from_pretrained(source, **extra)
                model = AutoModelForCausalLM.from_pretrained(source, dtype=options.torch_dtype(), **extra)
            else:
                tokenizer, model = _from_hub(path_or_id, options, extra)
        except ModelLoadError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"could not load {path_or_id!r}: {first}") from exc
        model.to(options.torch_device())
        return cls(model, tokenizer, name=name or path_or_id, **kwargs)

    def _collect_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if value is None:
                continue
            ids.update([value] if isinstance(value, int) else list(value))
        return {int(i) for i in ids}

    # -- tokens ------------------------------------------------------------------

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def context_length(self) -> int:
        return self.max_positions

    def encode(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    def encode_task(self, task: Task) -> list[int]:
        return task_ids(self.tokenizer, task)

    # -- forward helpers -------------------------------------------------------------

    def _prefill(
        self, prefixes: list[list[int]], usage: Cost | None
    ) -> tuple[torch.Tensor, object, torch.Tensor, torch.Tensor]:
        """Encode distinct prefixes (reusing stored KV); returns (last logits, cache, mask, last positions)."""
        cached: list[RowKV | None] = []
        for ids in prefixes:
            hit = self.store.longest(ids, len(ids) - 1) if self.reuse_prefixes else None
            cached.append(hit if hit and hit[0][0].shape[1] > 0 else None)
        cached_len = [row[0][0].shape[1] if row else 0 for row in cached]
        suffixes = [ids[n:] for ids, n in zip(prefixes, cached_len, strict=True)]
        width_a = max(cached_len)
        width_b = max(len(s) for s in suffixes)
        rows = len(prefixes)
        input_ids = torch.full((rows, width_b), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width_a + width_b), dtype=torch.long)
        for i, (suffix, n) in enumerate(zip(suffixes, cached_len, strict=True)):
            input_ids[i, width_b - len(suffix) :] = torch.tensor(suffix)
            mask[i, width_a - n : width_a] = 1
            mask[i, width_a + width_b - len(suffix) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, width_a:]
        template = next((row for row in cached if row is not None), None)
        cache = stack(cached, width_a, template)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if usage is not None:
            usage.add(prefill_tokens=sum(len(s) for s in suffixes), model_calls=1)
        return out.logits[:, -1, :], out.cache, mask.to(self.device), positions[:, -1].to(self.device)

    # -- sampling ----------------------------------------------------------------------

    @torch.inference_mode()
    def sample(
        self,
        prefixes: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        rng: torch.Generator | None = None,
        usage: Cost | None = None,
    ) -> list[list[Generation]]:
        prefixes = checked_prefixes(prefixes, n, params.max_new_tokens, self.max_positions)
        # every (prefix, copy) request; equal prefixes are encoded once per chunk
        requests = [(i, j) for i in range(len(prefixes)) for j in range(n)]
        results: list[list[Generation | None]] = [[None] * n for _ in prefixes]
        with self._lock:
            # chunk the rows so that a big request does not hold every KV at once
            chunk = max(self.batch_size, n)
            for start in range(0, len(requests), chunk):
                self._sample_rows(requests[start : start + chunk], prefixes, params, rng, usage, results)
        return [[g for g in row if g is not None] for row in results]

    def _sample_rows(self, part, prefixes, params, rng, usage, results) -> None:
        unique: list[list[int]] = []
        index_of: dict[tuple[int, ...], int] = {}
        for i, _ in part:
            key = tuple(prefixes[i])
            if key not in index_of:
                index_of[key] = len(unique)
                unique.append(prefixes[i])
        logits, cache, mask, last_pos = self._prefill(unique, usage)
        expand = [index_of[tuple(prefixes[i])] for i, _ in part]
        if expand != list(range(len(unique))):  # expand each prefix's KV to the rows continuing it
            index = torch.tensor(expand, device=self.device)
            cache.batch_select_indices(index)
            logits, mask, last_pos = logits[index], mask[index], last_pos[index]
        owners = list(part)  # (prefix index, copy index) of each live row
        state = [_RowState() for _ in owners]
        max_stop = max((len(s) for s in params.stop), default=0)
        for step in range(params.max_new_tokens):
            if params.stop_entropy is not None and step >= params.entropy_min_tokens:
                # CARDS-style segments end before a high-uncertainty token: it is not drawn
                uncertain = [r for r, h in enumerate(entropy(logits).tolist()) if h >= params.stop_entropy]
                for r in uncertain:
                    state[r].reason = "entropy"
                if uncertain:
                    self._finish(uncertain, owners, state, prefixes, cache, mask, results, fed_all=True, keep=params.keep_cache)
                    live = self._drop(uncertain, owners, state, cache, logits, mask, last_pos)
                    if live is None:
                        return
                    owners, state, logits, mask, last_pos = live
            step_conf = token_confidence(logits, params.confidence_top_k).tolist() if params.confidence_top_k else None
            if step < params.min_new_tokens and self._eos_ids:
                logits = logits.clone()
                logits[:, list(self._eos_ids)] = float("-inf")
            tokens, base_lp, sample_lp = draw(logits, params, rng)
            if usage is not None:
                usage.add(generated_tokens=len(owners))
            decode_step(usage)  # the run's progress hook; Cancelled here stops a cancelled run within one step
            finished: list[int] = []
            for r, (token, lp, slp) in enumerate(zip(tokens.tolist(), base_lp.tolist(), sample_lp.tolist(), strict=True)):
                st = state[r]
                st.ids.append(token)
                st.lp.append(lp)
                st.slp.append(slp)
                if step_conf is not None:
                    st.conf.append(step_conf[r])
                if token in self._eos_ids:
                    st.reason = "eos"
                elif params.stop:
                    tail = self.decode(st.ids[-(max_stop + 2) :])
                    hit = next((s for s in params.stop if s in tail), None)
                    if hit is not None:
                        st.reason, st.stop = "stop", hit
                if st.reason is None and confidence_stops(st.conf, params):
                    st.reason = "confidence"
                if st.reason is None and step == params.max_new_tokens - 1:
                    st.reason = "length"
                if st.reason is not None:
                    finished.append(r)
            if finished:
                self._finish(finished, owners, state, prefixes, cache, mask, results, fed_all=False, keep=params.keep_cache)
                live = self._drop(finished, owners, state, cache, tokens, mask, last_pos)
                if live is None:
                    return
                owners, state, tokens, mask, last_pos = live
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last_pos = last_pos + 1
            out = self.model(
                input_ids=tokens[:, None].to(self.device),
                attention_mask=mask,
                position_ids=last_pos[:, None],
                cache=cache,
                use_cache=True,
            )
            if usage is not None:
                usage.add(model_calls=1)
            cache, logits = out.cache, out.logits[:, -1, :]

    def _drop(self, rows, owners, state, cache, *tensors):
        """The live batch without ``rows`` (its cache shrunk in place), or None when no row is left."""
        gone = set(rows)
        keep = [r for r in range(len(owners)) if r not in gone]
        if not keep:
            return None
        index = torch.tensor(keep, device=self.device)
        cache.batch_select_indices(index)
        return [owners[r] for r in keep], [state[r] for r in keep], *(t[index] for t in tensors)

    def _finish(self, rows, owners, state, prefixes, cache, mask, results, *, fed_all: bool, keep: bool) -> None:
        """Record finished rows; keep their KV in the prefix store for later extension.

        ``fed_all``: the cache already holds every generated token (a segment cut
        before drawing); otherwise the last drawn token has not been fed yet.
        """
        for r in rows:
            i, j = owners[r]
            st = state[r]
            cached = st.ids if fed_all else st.ids[:-1]
            if self.reuse_prefixes and keep and st.reason != "eos" and cached:
                self.store.put(prefixes[i] + cached, cut_row(cache, r, mask[r]))
            results[i][j] = Generation(
                text=self.decode(st.ids),
                token_ids=st.ids,
                logprobs=st.lp,
                sample_logprobs=st.slp,
                finish_reason=st.reason,
                stop=st.stop,
                prefix_tokens=len(prefixes[i]),
                meta={"confidence": st.conf} if st.conf else {},
            )

    # -- scoring -----------------------------------------------------------------------

    @torch.inference_mode()
    def _forward_padded(self, sequences: list[list[int]], usage: Cost | None, hidden: bool = False):
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            output_hidden_states=hidden,
            use_cache=False,
        )
        if usage is not None:
            usage.add(prefill_tokens=int(mask.sum()), model_calls=1)
        return out, mask.to(self.device)

    def score(self, prefixes, continuations, *, usage=None) -> list[list[float]]:
        if len(prefixes) != len(continuations):
            raise ValueError("score needs one continuation per prefix")
        results: list[list[float]] = []
        with self._lock:
            for start in range(0, len(prefixes), 16):
                pre = [list(p) for p in prefixes[start : start + 16]]
                cont = [list(c) for c in continuations[start : start + 16]]
                out, _ = self._forward_padded([p + c for p, c in zip(pre, cont, strict=True)], usage)
                logp = out.logits.float().log_softmax(-1)
                for i, (p, c) in enumerate(zip(pre, cont, strict=True)):
                    if not c:
                        results.append([])
                        continue
                    positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=logp.device)
                    target = torch.tensor(c, device=logp.device)
                    results.append(logp[i, positions, target].tolist())
        return results

    def next_token_logprobs(self, prefixes, *, usage=None) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            logits, _, _, _ = self._prefill([list(p) for p in prefixes], usage)
        return logits.float().log_softmax(-1).cpu()

    def embed(self, texts, *, usage=None) -> torch.Tensor:
        rows = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), 16):
                seqs = [self.encode(t) or [self.pad_id] for t in texts[start : start + 16]]
                out, mask = self._forward_padded(seqs, usage, hidden=True)
                last = out.hidden_states[-1].float()
                weights = mask[..., None].float()
                rows.append((last * weights).sum(1) / weights.sum(1))
        return torch.cat(rows).cpu()

    def describe(self) -> dict:
        params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name,
            "modality": "text",
            "parameters": params,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "device": str(self.device),
            "chat_template": self.has_chat_template,
        }


class _RowState:
    __slots__ = ("ids", "lp", "slp", "conf", "reason", "stop")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.conf: list[float] = []  # DeepConf token confidences, when asked for
        self.lp: list[float] = []
        self.slp: list[float] = []
        self.reason: str | None = None
        self.stop: str | None = None


def _from_hub(repo_id: str, options: LoadOptions, extra: dict):
    """Load from the local hub cache, then the hub; one clear line when neither works."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    last: Exception | None = None
    for offline in (True, False):
        if not offline and os.environ.get("HF_HUB_OFFLINE") == "1":
            break
        try:
            tokenizer = AutoTokenizer.from_pretrained(repo_id, local_files_only=offline, **extra)
            model = AutoModelForCausalLM.from_pretrained(
                repo_id, dtype=options.torch_dtype(), local_files_only=offline, **extra
            )
            return tokenizer, model
        except (OSError, ValueError) as exc:
            last = exc
    raise ModelLoadError(
        f"could not load {repo_id!r}: it is not a local folder and the model hub is unreachable "
        f"or has no such model; download it where a hub is reachable and pass hf:/path/to/folder"
    ) from last


def _load_hf(rest: str, options: LoadOptions) -> TransformersTextModel:
    return TransformersTextModel.from_pretrained(rest, options, name=f"hf:{rest}")


def _load_gguf(rest: str, options: LoadOptions) -> TransformersTextModel:
    path = Path(rest).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {rest!r} does not exist")
    return TransformersTextModel.from_pretrained(
        str(path.parent), options, name=f"gguf:{rest}", gguf_file=path.name
    )


SCHEMES.add("hf", _load_hf)
SCHEMES.add("gguf", _load_gguf)
