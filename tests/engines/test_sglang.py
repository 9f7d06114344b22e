"""The served backend against a real SGLang server (``-m sglang``; SAMPLESCOPE_TEST_SGLANG names it).

The server serves embedded:arith's policy folder as ``arith`` in float32 (README, "SGLang"): the same
weights in-process and served agree on per-token log-probs within TOL. CI starts no SGLang (its CPU
kernels are built from its GitHub sources, which CI cannot reach), so these tests skip there.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.errors import EngineError, SamplescopeError
from engines.models import load_model
from engines.models.base import SamplingParams
from engines.models.sampling import warp
from engines.models.served import connect, parse_openai_spec
from engines.models.served.sglang import SGLangTextModel
from engines.task import Task
from engines.trace import Cost
from tests.engines import test_sampler_behaviour as suite
from tests.engines.test_sampler_behaviour import (  # noqa: F401  (re-collected here against the server)
    test_cancel_before_start_stops_at_once,
    test_costs_are_counted,
    test_ends_with_exactly_one_done,
    test_exactly_n_candidates,
    test_generated_token_budget_is_never_passed,
    test_trace_json_round_trip,
)
from tests.engines.test_served import DigitCount

pytestmark = pytest.mark.sglang

TOL = 1e-4
ARITH = Task(prompt="Q: 3+4*5\n", chat=False)


class SGLangBackend(suite.ToyBackend):
    task = ARITH

    def __init__(self, url: str) -> None:
        self.url = url

    def model(self):
        return load_model(f"openai:{self.url}")

    def reward(self, name: str):
        return suite.reward_for(name, DigitCount())


@pytest.fixture
def backend(sglang_url):
    return SGLangBackend(sglang_url)


@pytest.fixture(scope="module")
def served(sglang_url) -> SGLangTextModel:
    return load_model(f"openai:{sglang_url}")


@pytest.fixture(scope="module")
def local():
    return load_model("embedded:arith", device="cpu")


def test_connect_recognises_sglang(served):
    info = served.describe()
    assert isinstance(served, SGLangTextModel) and info["server"] == "sglang"
    assert info["served_model"] == "arith" and served.max_model_len == 256
    assert "checked against /tokenize" in info["tokenizer"]
    assert info["logprobs_mode"] in ("temperature", "raw")


def test_tokenisation_agrees(served, local):
    for text in ["Q: 12+3*4\n", "4*5=20\n3+20=23\n#23"]:
        assert served.encode(text) == local.encode(text)
    assert served.encode_task(ARITH) == local.encode_task(ARITH)


def test_scores_match_the_in_process_model(served, local):
    prefix = local.encode_task(ARITH)
    conts = [local.encode("4*5=20\n3+20=23\n#23"), local.encode("4*5=21\n"), local.encode("9")]
    usage = Cost()
    there = served.score([prefix] * 3, conts, usage=usage)
    for a, b in zip(local.score([prefix] * 3, conts), there, strict=True):
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOL
    assert usage.requests == 3 and usage.generated_tokens == 0


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=24, temperature=0),
        SamplingParams(max_new_tokens=24, temperature=0, stop=("=",)),
        SamplingParams(max_new_tokens=24, temperature=0, stop=("\n3",)),
        SamplingParams(max_new_tokens=5, temperature=0),
        SamplingParams(max_new_tokens=40, temperature=0, min_new_tokens=30),
    ],
    ids=["eos", "stop-char", "stop-two-tokens", "max-tokens", "min-tokens"],
)
def test_greedy_generations_match_the_in_process_engine(served, local, params):
    prompts = [local.encode_task(ARITH), local.encode_task(Task(prompt="Q: 7*8-9\n", chat=False))]
    for a, b in zip(local.sample(prompts, params), served.sample(prompts, params), strict=True):
        (ga,), (gb,) = a, b
        assert gb.token_ids == ga.token_ids
        assert gb.text == ga.text == served.decode(gb.token_ids)
        assert (gb.finish_reason, gb.stop) == (ga.finish_reason, ga.stop)
        if not params.min_new_tokens:
            assert max(abs(x - y) for x, y in zip(ga.logprobs, gb.logprobs, strict=True)) < TOL


def _logits(local, prefix, cont):
    with torch.inference_mode():
        out = local.model(input_ids=torch.tensor([prefix + cont]))
    return out.logits[0, len(prefix) - 1 : len(prefix) + len(cont) - 1].float()


def test_base_and_warped_logprobs_at_a_temperature(served, local):
    if served.logprobs_mode != "temperature":
        pytest.skip("server started with SGLANG_RETURN_ORIGINAL_LOGPROB=1: base log-probs only")
    prefix = local.encode_task(ARITH)
    params = SamplingParams(max_new_tokens=12, temperature=2.0)
    usage = Cost()
    (gens,) = served.sample([prefix], params, n=3, rng=torch.Generator().manual_seed(1), usage=usage)
    assert usage.requests == 1 + 3  # the sampling request, then one scoring request per continuation
    for g in gens:
        base = local.score([prefix], [g.token_ids])[0]
        assert max(abs(x - y) for x, y in zip(base, g.logprobs, strict=True)) < TOL
        logits = _logits(local, prefix, g.token_ids)
        warped = [float(warp(row[None], params)[0, t]) for row, t in zip(logits, g.token_ids, strict=True)]
        assert max(abs(x - y) for x, y in zip(warped, g.sample_logprobs, strict=True)) < 1e-3


def test_top_k_leaves_the_proposal_unknown_and_says_why(served, local):
    params = SamplingParams(max_new_tokens=6, temperature=0.7, top_k=3)
    (gens,) = served.sample([local.encode_task(ARITH)], params, n=2, rng=torch.Generator().manual_seed(0))
    for g in gens:
        assert all(math.isnan(x) for x in g.sample_logprobs)
        assert "before top-k/top-p" in g.meta["sample_logprobs"]


def test_n_beyond_one_request_gives_exactly_n(served, local):
    (row,) = served.sample([local.encode_task(ARITH)], SamplingParams(max_new_tokens=4, temperature=2.0), n=20,
                           rng=torch.Generator().manual_seed(5))
    assert len(row) == 20 and all(len(g.token_ids) <= 4 for g in row)


def test_same_seed_same_samples_where_the_server_honours_seeds(served, local):
    if not served.describe()["reproducible"]:
        pytest.skip("this SGLang server ignores seeds (no --enable-deterministic-inference)")
    prefix = local.encode_task(ARITH)
    params = SamplingParams(max_new_tokens=10, temperature=2.0)
    a = served.sample([prefix], params, n=8, rng=torch.Generator().manual_seed(5))
    b = served.sample([prefix], params, n=8, rng=torch.Generator().manual_seed(5))
    assert [g.token_ids for g in a[0]] == [g.token_ids for g in b[0]]


def test_judge_tokens_and_next_token_rows(served, local):
    prefix = local.encode_task(ARITH) + local.encode("4*5=")
    usage = Cost()
    got = served.next_token_logprobs_for([prefix, prefix[:-1]], [5, 6], usage=usage)
    ref = local.next_token_logprobs([prefix, prefix[:-1]])
    assert torch.allclose(got, ref[:, [5, 6]], atol=TOL) and usage.requests == 2
    row = served.next_token_logprobs([prefix])[0]
    top = torch.isfinite(row)
    assert torch.allclose(row[top], ref[0][top], atol=TOL)


def test_context_overflow_and_bad_names_are_one_line(served, sglang_url):
    with pytest.raises(ValueError, match="exceeds the served model's context of 256"):
        served.sample([[5] * 250], SamplingParams(max_new_tokens=20))
    with pytest.raises(EngineError, match="context|longer|HTTP 400"):
        served._complete({"prompt": [5] * 300, "max_tokens": 4})
    with pytest.raises(SamplescopeError) as info:
        connect(*parse_openai_spec(f"{sglang_url}#nope"), retries=0)
    assert "has no model 'nope'; it serves: arith" in str(info.value) and "\n" not in str(info.value)
