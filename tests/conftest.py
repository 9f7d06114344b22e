"""Shared fixtures: a private samplescope home per test, tiny local models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """Point the app's data folder (database, artifacts) at a temp folder; the model cache stays shared."""
    monkeypatch.setenv("SAMPLESCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SAMPLESCOPE_DB", raising=False)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    from tests.tiny import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from engines.models.hf import TransformersTextModel

    return TransformersTextModel.from_pretrained(str(tiny_lm_dir), name="tiny")


@pytest.fixture(scope="session")
def smollm2():
    from engines.models import load_model

    return load_model("embedded:smollm2")


def _server_url(variable: str, what: str, how: str = "make test starts one") -> str:
    """The URL (``http://HOST:PORT/v1``) in ``variable``; the test is skipped, saying so, without it."""
    url = os.environ.get(variable)
    if not url:
        pytest.skip(f"no {what}: set {variable}=http://HOST:PORT/v1 ({how})")
    return url


@pytest.fixture(scope="session")
def vllm_url():
    """A real vLLM server serving embedded:arith's policy (.ci/start-vllm)."""
    return _server_url("SAMPLESCOPE_TEST_VLLM", "vLLM server")


@pytest.fixture(scope="session")
def vllm_rm_url():
    """A vLLM pooling server serving embedded:arith's outcome reward model."""
    return _server_url("SAMPLESCOPE_TEST_VLLM_RM", "vLLM reward-model server")


@pytest.fixture(scope="session")
def vllm_embed_url():
    """A vLLM embedding server on embedded:arith's policy (``--runner pooling --convert embed``, mean pooling)."""
    return _server_url("SAMPLESCOPE_TEST_VLLM_EMBED", "vLLM embedding server")


@pytest.fixture(scope="session")
def llamacpp_url():
    """A real llama.cpp server (``llama-server``) on the float32 twin of the embedded SmolLM2 GGUF (.ci/start-llamacpp)."""
    return _server_url("SAMPLESCOPE_TEST_LLAMACPP", "llama.cpp server")


@pytest.fixture(scope="session")
def llamacpp_q4_url():
    """A real llama.cpp server on the shipped Q4_1 SmolLM2 GGUF itself."""
    return _server_url("SAMPLESCOPE_TEST_LLAMACPP_Q4", "llama.cpp server on the Q4_1 file")


@pytest.fixture(scope="session")
def sglang_url():
    """A real SGLang server serving embedded:arith's policy as ``arith``. CI has none: SGLang's CPU kernels are
    not on PyPI (README, "SGLang")."""
    return _server_url("SAMPLESCOPE_TEST_SGLANG", "SGLang server", "SGLang's CPU build is not on PyPI, so CI starts "
                       "none; scripts/sglang_cpu/run install && scripts/sglang_cpu/run serve")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
