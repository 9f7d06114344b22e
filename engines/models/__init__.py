"""Model specs -> loaded models.

A spec is ``scheme:rest``:

- ``embedded:NAME``: models that ship with samplescope or its packages
  (``embedded:smollm2``, the reasoning lab's ``embedded:arith``, the diffusion
  side's ``embedded:digits``);
- ``hf:ID_OR_FOLDER``: a transformers causal LM from a local folder or a hub id;
- ``gguf:FILE``: a GGUF file, dequantised by transformers;
- ``diffusers:PATH_OR_ID``: a diffusers pipeline folder or hub id (Stable
  Diffusion, or a UNet2DModel DDPM/DDIM pipeline);
- ``toy:NAME``: small enumerable models for tests and demos;
- ``openai:URL`` / ``openai:URL#NAME``: a model on an OpenAI-compatible
  inference server (vLLM, SGLang, llama.cpp's server), see :mod:`engines.models.served`.

Other modules add schemes and embedded names through :data:`SCHEMES` and
:data:`EMBEDDED`. Loaded models are cached per (spec, device, dtype), so the
app and the CLI load each model once; each model has its own load lock, so a
slow cold load blocks only the callers of that model, never a run on another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.errors import ModelLoadError
from engines.registry import Registry


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # "auto" picks CUDA when present
    dtype: str = "fp32"  # "fp32" or "bf16"

    def __post_init__(self) -> None:
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ModelLoadError(f"unknown dtype {self.dtype!r}; use fp32 or bf16")
        if self.device != "auto":
            import torch

            try:
                kind = torch.device(self.device).type
            except (RuntimeError, TypeError):
                raise ModelLoadError(f"unknown device {self.device!r}; use auto, cpu or cuda[:N]") from None
            if kind == "cuda" and not torch.cuda.is_available():
                raise ModelLoadError(f"device {self.device!r}: no CUDA GPU on this machine; use auto or cpu")

    def torch_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def torch_dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    modality: str
    description: str
    load: Callable[[LoadOptions], Any]


Loader = Callable[[str, LoadOptions], Any]

SCHEMES: Registry[Loader] = Registry("model scheme")
EMBEDDED: Registry[EmbeddedModel] = Registry("embedded model")

DEFAULT_MODEL = "embedded:smollm2"

_cache: dict[tuple[str, str, str], Any] = {}
_lock = threading.Lock()  # guards the two dicts only; never held while a model loads
_loading: dict[tuple[str, str, str], threading.Lock] = {}  # one lock per model: a cold load blocks only its own callers


def parse_spec(spec: str) -> tuple[str, str]:
    spec = (spec or "").strip()
    if ":" not in spec:
        raise ModelLoadError(
            f"model spec {spec!r} needs a scheme: embedded:NAME, hf:ID_OR_FOLDER, gguf:FILE, toy:NAME or openai:URL"
        )
    scheme, rest = spec.split(":", 1)
    if not rest:
        raise ModelLoadError(f"model spec {spec!r} names no model after {scheme!r}")
    SCHEMES.get(scheme)  # raises a one-line UnknownNameError
    return scheme, rest


def load_model(spec: str, *, device: str = "auto", dtype: str = "fp32") -> Any:
    """Load (once per process) the model a spec names."""
    options = LoadOptions(device=device, dtype=dtype)
    scheme, rest = parse_spec(spec)
    key = (spec.strip(), options.torch_device(), dtype)
    with _lock:
        if key in _cache:
            return _cache[key]
        model_lock = _loading.setdefault(key, threading.Lock())
    with model_lock:  # others asking for this model wait for this one load; other models load meanwhile
        with _lock:
            if key in _cache:
                return _cache[key]
        model = SCHEMES.get(scheme)(rest, options)
        with _lock:
            _cache[key] = model
            _loading.pop(key, None)
        return model


def list_models() -> list[dict[str, str]]:
    rows = [
        {"spec": f"embedded:{name}", "modality": m.modality, "description": m.description}
        for name, m in EMBEDDED.items()
    ]
    from engines.models.toy import TOY_MODELS

    rows += [
        {"spec": f"toy:{name}", "modality": "text", "description": doc} for name, (_, doc) in TOY_MODELS.items()
    ]
    return rows


def _load_embedded(name: str, options: LoadOptions) -> Any:
    return EMBEDDED.get(name).load(options)


SCHEMES.add("embedded", _load_embedded)


def _register_builtin() -> None:
    from engines.models import arith, digits, embedded, hf, served, stable_diffusion, toy  # noqa: F401  (registration side effects)


_register_builtin()
