"""Shared fixtures: a private samplescope home per test, tiny local models."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread, here and in the processes the tests start (OMP_NUM_THREADS): most tests run tiny tensors, where a
# second OpenMP thread only adds a barrier, and on a busy machine (the services starting beside the suite, other jobs)
# that barrier waits for a core. Measured on the 2-core AVX2 machine under load: log_softmax of a 6x4 tensor 3-11 ms
# with 2 threads, 2 us with 1; SmolLM2 best-of-4 x 16 tokens 0.2-0.4 tok/s with 2 threads, 2.8-3.5 tok/s with 1.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


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


# -- services that start while the suite runs ---------------------------------------------------------------------
# .ci/with-services starts PostgreSQL before the suite and vLLM and llama.cpp in the background (their installs, build
# and warm-up take minutes), naming a folder in SAMPLESCOPE_TEST_SERVICES: NAME.pending while service NAME is on its
# way, then NAME.env (its SAMPLESCOPE_TEST_* variables, one VAR=VALUE a line, written whole) once it is up or has given
# up, and NAME.log (its diagnostics). The tests that need a service run last (pytest_collection_modifyitems) and wait
# for its file, so the rest of the suite runs while the servers start.
SERVICE_MARKERS = ("vllm", "llamacpp")  # markers named as the services, in the order their tests run
SERVICE_WAIT_S = 1800  # vLLM's install, three servers' warm-up, llama.cpp's build, on a busy 2-core machine
_services_ready: dict[str, float] = {}  # service -> seconds the first test that needed it waited


def _services_folder() -> Path | None:
    folder = os.environ.get("SAMPLESCOPE_TEST_SERVICES")
    return Path(folder) if folder else None


def _await_service(name: str) -> None:
    """Wait for background service ``name`` (if one is on its way) and take its variables into the environment."""
    folder = _services_folder()
    if folder is None or name in _services_ready or not (folder / f"{name}.pending").exists():
        return
    started = time.monotonic()
    done = folder / f"{name}.env"
    while not done.exists() and time.monotonic() - started < SERVICE_WAIT_S:
        time.sleep(1)
    _services_ready[name] = time.monotonic() - started
    if done.exists():
        for line in done.read_text().splitlines():
            variable, _, value = line.partition("=")
            if variable.startswith("SAMPLESCOPE_TEST_") and value:
                os.environ[variable] = value


def _service_of(variable: str) -> str | None:
    return next((name for name in SERVICE_MARKERS if variable.startswith(f"SAMPLESCOPE_TEST_{name.upper()}")), None)


def _server_url(variable: str, what: str, how: str = "make test starts one") -> str:
    """The URL (``http://HOST:PORT/v1``) in ``variable``; the test is skipped, saying so, without it."""
    service = _service_of(variable)
    if service:
        _await_service(service)
    url = os.environ.get(variable)
    if not url:
        folder = _services_folder()
        log = folder / f"{service}.log" if folder and service else None
        if log is not None and log.exists():
            how = f"it did not start: see {log}"
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


def _service_rank(item: pytest.Item) -> int:
    return next((rank for rank, name in enumerate(SERVICE_MARKERS, 1) if item.get_closest_marker(name)), 0)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
    if _services_folder() is not None:  # the servers are starting: their tests last, in collection order otherwise
        items.sort(key=_service_rank)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A service's tests (also those that read its files, as llama.cpp's own-server test) wait for it first."""
    for name in SERVICE_MARKERS:
        if item.get_closest_marker(name):
            _await_service(name)


def pytest_terminal_summary(terminalreporter):
    folder = _services_folder()
    if folder is None:
        return
    for name in SERVICE_MARKERS:
        if (folder / f"{name}.pending").exists():
            waited = _services_ready.get(name)
            state = "not needed" if waited is None else f"its tests waited {waited:.0f} s for it"
            up = "up" if any(line for line in _read(folder / f"{name}.env").splitlines()) else "NOT up"
            terminalreporter.write_line(f"services: {name} {up} ({state}; log {folder / f'{name}.log'})")


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
