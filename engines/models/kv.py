"""Per-sequence KV caches: a prefix store and the batching glue around it.

Tree search, beam search and SMC extend many nodes whose prefixes were already
encoded. :class:`PrefixStore` keeps, for a token sequence, the keys and values
of every layer (batch dimension removed), and finds the longest stored prefix
of a new request, so only the rest is prefilled. Entries are evicted least
recently used once the store holds more than ``max_bytes`` of keys and values
(SmolLM2-135M in fp32 needs about 46 KB per token, so the default 1 GiB keeps
about 23,000 tokens).

:func:`stack` turns per-row caches of different lengths into one batched
``DynamicCache`` by left padding (the attention mask hides the pads);
:func:`row_kv` cuts one row back out, dropping its pads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from transformers import DynamicCache

# One sequence's cache: for each layer, (keys, values) shaped [heads, length, head_dim].
RowKV = list[tuple[torch.Tensor, torch.Tensor]]


def kv_length(kv: RowKV) -> int:
    return int(kv[0][0].shape[1]) if kv else 0


def nbytes(kv: RowKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def crop(kv: RowKV, length: int) -> RowKV:
    return [(k[:, :length], v[:, :length]) for k, v in kv]


class PrefixStore:
    """LRU map from token-id tuples to their KV caches."""

    def __init__(self, max_bytes: int = 1 << 30, scan_limit: int = 256) -> None:
        self.max_bytes = max_bytes
        self.scan_limit = scan_limit
        self._entries: OrderedDict[tuple[int, ...], RowKV] = OrderedDict()
        self._lengths: dict[int, int] = {}  # length -> how many entries have it
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._lengths.clear()
            self._bytes = 0

    def put(self, ids: Sequence[int], kv: RowKV) -> None:
        key = tuple(ids)
        if len(key) != kv_length(kv):
            raise ValueError(f"cache length {kv_length(kv)} does not match {len(key)} tokens")
        size = nbytes(kv)
        if not key or size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = kv
            self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
            self._bytes += size
            while self._bytes > self.max_bytes:
                old, old_kv = self._entries.popitem(last=False)
                self._bytes -= nbytes(old_kv)
                self._lengths[len(old)] -= 1
                if not self._lengths[len(old)]:
                    del self._lengths[len(old)]

    def longest(self, ids: Sequence[int], limit: int) -> RowKV | None:
        """KV of the longest stored prefix shared with ``ids``, cropped to at most ``limit`` tokens.

        A stored sequence need not be a prefix of ``ids``: any common prefix is
        usable (the KV of a token depends only on the tokens before it), which is
        what a Metropolis-Hastings move that rewrites a suffix needs.
        """
        key = tuple(ids)
        with self._lock:
            best_key, best_len = None, 0
            for length in sorted(self._lengths, reverse=True):
                if length <= len(key) and key[:length] in self._entries:
                    best_key, best_len = key[:length], length
                    break
            if best_len < min(limit, len(key)):
                query = torch.tensor(key)
                for stored in reversed(list(self._entries)[-self.scan_limit :]):
                    m = min(len(stored), len(query))
                    if m <= best_len:
                        continue
                    same = torch.tensor(stored[:m]) == query[:m]
                    common = m if bool(same.all()) else int(same.int().argmin())
                    if common > best_len:
                        best_key, best_len = stored, common
            if best_key is None or best_len == 0:
                self.misses += 1
                return None
            self._entries.move_to_end(best_key)
            self.hits += 1
            return crop(self._entries[best_key], min(best_len, limit))


def stack(rows: Sequence[RowKV | None], width: int, template: RowKV | None) -> DynamicCache:
    """A batched cache of ``width`` positions from per-row caches, left-padded with zeros."""
    cache = DynamicCache()
    if width == 0 or template is None:
        return cache
    layers = []
    for layer, (k0, v0) in enumerate(template):
        heads, _, dim_k = k0.shape
        dim_v = v0.shape[-1]
        keys = k0.new_zeros((len(rows), heads, width, dim_k))
        values = v0.new_zeros((len(rows), heads, width, dim_v))
        for i, row in enumerate(rows):
            if row is None:
                continue
            k, v = row[layer]
            length = k.shape[1]
            if length:
                keys[i, :, width - length :] = k
                values[i, :, width - length :] = v
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)


def cache_layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def row_kv(cache: DynamicCache, row: int, mask: torch.Tensor) -> RowKV:
    """Row ``row`` of a batched cache, keeping only positions where ``mask`` (its [width] mask) is 1."""
    keep = mask.bool()
    return [(k[row][:, keep].clone(), v[row][:, keep].clone()) for k, v in cache_layers(cache)]
