"""A stand-in for SGLang's CPU kernel package, for testing samplescope against SGLang's server on a CPU.

SGLang's CPU kernels (``sgl-kernel`` built from ``csrc/cpu`` of its GitHub repository) are on no
package index, and SGLang's CPU path imports this module before it runs the model. With no kernels
registered under ``torch.ops.sgl_kernel`` SGLang keeps its AMX paths off and runs its torch-native
layers and attention (``--attention-backend torch_native``); the one helper it calls outside the
model, writing a request's KV-cache slots into its token table, is below in plain torch. Anything
else it asks for fails loudly rather than silently doing nothing.
"""

from __future__ import annotations

__version__ = "0+samplescope.shim"


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    """req_to_token[req, start:end] = the next end - start cache locations, for each request in turn."""
    taken = 0
    for row, start, end in zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist(), strict=True):
        req_to_token[row, start:end] = out_cache_loc[taken : taken + end - start].to(req_to_token.dtype)
        taken += end - start


def __getattr__(name: str):
    if name.endswith("_cpu"):
        def missing(*args, **kwargs):
            raise NotImplementedError(f"samplescope's sgl_kernel stand-in has no {name}")

        missing.__name__ = name
        return missing
    raise AttributeError(name)
