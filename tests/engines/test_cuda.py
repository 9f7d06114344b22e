"""GPU checks: the same engines on CUDA (skipped without a GPU; see the `cuda` marker in conftest)."""

from __future__ import annotations

import pytest
import torch

from engines.models import LoadOptions, load_model
from engines.models.base import SamplingParams
from engines.models.hf import TransformersTextModel
from engines.runner import RunRequest, execute
from engines.task import Task

pytestmark = pytest.mark.cuda


def test_auto_device_picks_cuda():
    assert LoadOptions().torch_device() == "cuda"


def test_text_model_on_cuda_agrees_with_cpu(tiny_lm_dir):
    cpu = TransformersTextModel.from_pretrained(str(tiny_lm_dir), LoadOptions(device="cpu"), name="cpu")
    gpu = TransformersTextModel.from_pretrained(str(tiny_lm_dir), LoadOptions(device="cuda"), name="gpu")
    prefix = cpu.encode_task(Task(prompt="count to ten"))
    params = SamplingParams(max_new_tokens=12, temperature=0)
    a = cpu.sample([prefix], params)[0][0]
    b = gpu.sample([prefix], params)[0][0]
    assert a.token_ids == b.token_ids
    assert b.logprobs == pytest.approx(a.logprobs, abs=1e-3)
    seeded = SamplingParams(max_new_tokens=8, temperature=1.0)
    first = gpu.sample([prefix], seeded, n=4, rng=torch.Generator().manual_seed(0))
    again = gpu.sample([prefix], seeded, n=4, rng=torch.Generator().manual_seed(0))
    assert [g.token_ids for g in first[0]] == [g.token_ids for g in again[0]]


@pytest.mark.model
def test_embedded_model_in_bf16_on_cuda():
    model = load_model("embedded:smollm2", device="cuda", dtype="bf16")
    assert model.describe()["device"].startswith("cuda") and model.describe()["dtype"] == "bfloat16"
    request = RunRequest.build(prompt="Describe a sunny day.", reward="sentiment", sampler="best_of_n",
                               params={"n": 8, "max_new_tokens": 24}, device="cuda", dtype="bf16")
    trace = execute(request)
    assert len(trace.candidates) == 8 and trace.done.status == "ok"
    beam = RunRequest.build(prompt="Describe a sunny day.", reward="sentiment", sampler="beam_search",
                            params={"beams": 2, "expand": 2, "step": "tokens", "max_new_tokens": 6, "max_steps": 3},
                            device="cuda", dtype="bf16")
    assert execute(beam).done.status == "ok"


def test_digits_diffusion_on_cuda():
    request = RunRequest.build(task_ref="digits:3", sampler="fk_steering", params={"particles": 8, "steps": 10}, device="cuda")
    trace = execute(request)
    assert trace.done.status == "ok" and trace.done.cost["nfe"] > 0
    assert all(trace.nodes[i].image for i in trace.candidates)
