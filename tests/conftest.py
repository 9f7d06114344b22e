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


@pytest.fixture(scope="session")
def vllm_url():
    """The URL (``http://HOST:PORT/v1``) of a real vLLM server serving embedded:arith's policy, from
    SAMPLESCOPE_TEST_VLLM (make test starts one); tests that need it are skipped without it."""
    url = os.environ.get("SAMPLESCOPE_TEST_VLLM")
    if not url:
        pytest.skip("no vLLM server: set SAMPLESCOPE_TEST_VLLM=http://HOST:PORT/v1 (make test starts one)")
    return url


@pytest.fixture(scope="session")
def vllm_rm_url():
    """A vLLM pooling server serving embedded:arith's outcome reward model, from SAMPLESCOPE_TEST_VLLM_RM."""
    url = os.environ.get("SAMPLESCOPE_TEST_VLLM_RM")
    if not url:
        pytest.skip("no vLLM reward-model server: set SAMPLESCOPE_TEST_VLLM_RM=http://HOST:PORT/v1")
    return url


@pytest.fixture(scope="session")
def vllm_embed_url():
    """A vLLM embedding server on embedded:arith's policy (``--runner pooling --convert embed``, mean
    pooling), from SAMPLESCOPE_TEST_VLLM_EMBED (.ci/start-vllm starts one)."""
    url = os.environ.get("SAMPLESCOPE_TEST_VLLM_EMBED")
    if not url:
        pytest.skip("no vLLM embedding server: set SAMPLESCOPE_TEST_VLLM_EMBED=http://HOST:PORT/v1")
    return url


@pytest.fixture(scope="session")
def llamacpp_url():
    """The URL of a real llama.cpp server (``llama-server``) serving the embedded SmolLM2 GGUF, from
    SAMPLESCOPE_TEST_LLAMACPP (make test builds and starts one: .ci/start-llamacpp)."""
    url = os.environ.get("SAMPLESCOPE_TEST_LLAMACPP")
    if not url:
        pytest.skip("no llama.cpp server: set SAMPLESCOPE_TEST_LLAMACPP=http://HOST:PORT/v1 (make test starts one)")
    return url


@pytest.fixture(scope="session")
def llamacpp_q4_url():
    """A real llama.cpp server on the shipped Q4_1 SmolLM2 GGUF itself, from SAMPLESCOPE_TEST_LLAMACPP_Q4."""
    url = os.environ.get("SAMPLESCOPE_TEST_LLAMACPP_Q4")
    if not url:
        pytest.skip("no llama.cpp server on the Q4_1 file: set SAMPLESCOPE_TEST_LLAMACPP_Q4 (make test starts one)")
    return url


@pytest.fixture(scope="session")
def sglang_url():
    """The URL of a real SGLang server serving embedded:arith's policy as ``arith``, from SAMPLESCOPE_TEST_SGLANG.
    CI has none: SGLang's CPU kernels are not on PyPI (README, "SGLang")."""
    url = os.environ.get("SAMPLESCOPE_TEST_SGLANG")
    if not url:
        pytest.skip("no SGLang server: set SAMPLESCOPE_TEST_SGLANG=http://HOST:PORT/v1 (SGLang's CPU build is not on "
                    "PyPI, so CI starts none; scripts/sglang_cpu/run install && scripts/sglang_cpu/run serve)")
    return url


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
