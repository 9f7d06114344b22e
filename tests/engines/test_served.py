"""The served backend against a real vLLM server (``-m vllm``; make test starts one on embedded:arith's policy).

The server runs with ``--logprobs-mode processed_logprobs --no-enable-chunked-prefill``
(see engines/models/served/openai_compatible.py). Tolerance: the same fp32 weights in-process
and served agree on per-token log-probs within 1e-4 (absolute; different
kernels and summation orders).
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.errors import EngineError, SamplescopeError
from engines.models import load_model
from engines.models.base import SamplingParams
from engines.models.served import connect, parse_openai_spec
from engines.models.served.openai_compatible import ServedTextModel
from engines.rewards.base import Reward
from engines.task import Task
from engines.trace import Cost, Trace
from tests.engines import test_sampler_behaviour as suite
from tests.engines.test_sampler_behaviour import (  # noqa: F401  (re-collected here against the server)
    test_cancel_before_start_stops_at_once,
    test_cancel_mid_run_stops_within_a_step,
    test_costs_are_counted,
    test_ends_with_exactly_one_done,
    test_exactly_n_candidates,
    test_generated_token_budget_is_never_passed,
    test_same_seed_same_trace,
    test_trace_json_round_trip,
)

pytestmark = pytest.mark.vllm

TOL = 1e-4
ARITH = Task(prompt="Q: 3+4*5\n", chat=False)


class DigitCount(Reward):
    """r(x) = digits in x / 10: defined on any arithmetic text, partial ones too."""

    name = "digit_count"

    def score(self, task, candidates, *, usage=None):
        return [sum(ch.isdigit() for ch in x) / 10 for x in candidates]


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


class ServedBackend(suite.ToyBackend):
    task = ARITH

    def __init__(self, url: str) -> None:
        self.url = url

    def model(self):
        return load_model(f"openai:{self.url}")

    def reward(self, name: str):
        return suite.reward_for(name, DigitCount())

    def comparable(self, trace: Trace) -> list[dict]:
        # same tokens, same choices; log-probs only to 1e-3 (batch composition changes fp32 sums)
        return _rounded(suite.comparable(trace))


@pytest.fixture
def backend(vllm_url):
    return ServedBackend(vllm_url)


@pytest.fixture(scope="module")
def served(vllm_url) -> ServedTextModel:
    return load_model(f"openai:{vllm_url}")


@pytest.fixture(scope="module")
def local():
    return load_model("embedded:arith", device="cpu")


def test_connects_and_describes_itself(served, vllm_url):
    info = served.describe()
    assert info["served_model"] == "arith" and info["logprobs_mode"] == "processed"
    assert "checked against /tokenize" in info["tokenizer"]
    assert served.max_model_len == 256


def test_tokenisation_agrees_with_the_server(served, local):
    for text in ["Q: 12+3*4\n", "4*5=20\n3+20=23\n#23", "Q: 99-98\n"]:
        server = served.client._send("POST", served.client.root_url + "/tokenize",
                                     {"model": "arith", "prompt": text, "add_special_tokens": False})["tokens"]
        assert served.encode(text) == server == local.encode(text)
    assert served.encode_task(ARITH) == local.encode_task(ARITH)


def test_scores_match_the_in_process_model(served, local):
    prefix = local.encode_task(ARITH)
    conts = [local.encode("4*5=20\n3+20=23\n#23"), local.encode("4*5=21\n"), local.encode("9")]
    here = local.score([prefix] * 3, conts)
    there = served.score([prefix] * 3, conts)
    for a, b in zip(here, there, strict=True):
        assert len(a) == len(b)
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOL


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
    here = local.sample(prompts, params)
    there = served.sample(prompts, params)
    for a, b in zip(here, there, strict=True):
        (ga,), (gb,) = a, b
        assert gb.token_ids == ga.token_ids
        assert gb.text == ga.text == served.decode(gb.token_ids)
        assert (gb.finish_reason, gb.stop) == (ga.finish_reason, ga.stop)
        assert len(gb.token_ids) >= min(params.min_new_tokens, params.max_new_tokens)
        assert len(gb.token_ids) <= params.max_new_tokens
        if not params.min_new_tokens:  # vLLM's raw log-probs ignore the eos mask that in-process ones apply
            assert max(abs(x - y) for x, y in zip(ga.logprobs, gb.logprobs, strict=True)) < TOL


def test_base_and_warped_logprobs(served, local):
    prefix = local.encode_task(ARITH)
    usage = Cost()
    params = SamplingParams(max_new_tokens=12, temperature=0.5, top_k=5)
    (gens,) = served.sample([prefix], params, n=4, rng=torch.Generator().manual_seed(1), usage=usage)
    assert usage.requests == 1 + 4  # the sampling request, then one scoring request per continuation
    for g in gens:
        base = local.score([prefix], [g.token_ids])[0]
        assert max(abs(x - y) for x, y in zip(base, g.logprobs, strict=True)) < TOL
        logits = _logits(local, prefix, g.token_ids)
        from engines.models.sampling import warp

        warped = [float(warp(row[None], params)[0, t]) for row, t in zip(logits, g.token_ids, strict=True)]
        assert max(abs(x - y) for x, y in zip(warped, g.sample_logprobs, strict=True)) < 1e-3


def _logits(local, prefix, cont):
    with torch.inference_mode():
        out = local.model(input_ids=torch.tensor([prefix + cont]))
    return out.logits[0, len(prefix) - 1 : len(prefix) + len(cont) - 1].float()


def test_same_seed_same_samples_and_n_beyond_one_request(served, local):
    prefix = local.encode_task(ARITH)
    params = SamplingParams(max_new_tokens=10, temperature=2.0)  # the arith model is sure of itself at 1.0
    a = served.sample([prefix, prefix], params, n=20, rng=torch.Generator().manual_seed(5))
    b = served.sample([prefix, prefix], params, n=20, rng=torch.Generator().manual_seed(5))
    c = served.sample([prefix, prefix], params, n=20, rng=torch.Generator().manual_seed(6))
    assert [len(row) for row in a] == [20, 20]
    ids = lambda rows: [g.token_ids for row in rows for g in row]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len({tuple(t) for t in ids(a)}) > 1  # the copies differ: no seed is reused within a call


def test_judge_reads_its_tokens_from_the_server(served, local):
    from engines.rewards.judge import _Judge  # the arith vocabulary has digits, not Yes/No: judge with 1 vs 2

    prompts = ["Q: 1+1\n", "Q: 3+4*5\n4*5=20\n3+20=23\n#"]
    here = _Judge(local, ["1"], ["2"]).p_positive(prompts, None)
    usage = Cost()
    there = _Judge(served, ["1"], ["2"]).p_positive(prompts, usage)
    assert max(abs(a - b) for a, b in zip(here, there, strict=True)) < 1e-4 and usage.requests == 2


def test_next_token_logprobs_from_the_top_k(served, local):
    prefix = local.encode_task(ARITH) + local.encode("4*5=")
    row = served.next_token_logprobs([prefix])[0]
    ref = local.next_token_logprobs([prefix])[0]
    top = torch.isfinite(row)
    assert torch.allclose(row[top], ref[top], atol=TOL)


def test_context_overflow_is_one_line_before_any_request(served):
    with pytest.raises(ValueError, match="exceeds the served model's context of 256"):
        served.sample([[5] * 250], SamplingParams(max_new_tokens=20))
    with pytest.raises(EngineError, match="context overflow|HTTP 400"):
        served._complete({"prompt": [5] * 300, "max_tokens": 4})


def test_entropy_segments_are_refused(served):
    with pytest.raises(EngineError, match="full next-token distribution"):
        served.sample([[5]], SamplingParams(stop_entropy=1.0))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("openai:{url}#nope", "has no model 'nope'; it serves: arith"),
        ("openai:http://127.0.0.1:1/v1", "cannot reach the server at http://127.0.0.1:1"),
        ("openai:ftp://example", "must start with http"),
    ],
)
def test_bad_specs_give_one_line(vllm_url, spec, message):
    with pytest.raises(SamplescopeError) as info:
        connect(*_split(spec.format(url=vllm_url)), retries=0)
    assert message in str(info.value) and "\n" not in str(info.value)


def _split(spec):
    return parse_openai_spec(spec[len("openai:"):])


def test_remote_reward_model_scores_as_in_process(vllm_rm_url):
    from engines.rewards import build_reward
    from engines.rewards.arith import ORM_DIR

    candidates = ["4*5=20\n3+20=23\n#23", "4*5=20\n3+20=24\n#24", ""]
    here = build_reward(f"rm:{ORM_DIR}").score(ARITH, candidates)
    usage = Cost()
    there = build_reward(f"rm:openai:{vllm_rm_url}").score(ARITH, candidates, usage=usage)
    assert max(abs(a - b) for a, b in zip(here, there, strict=True)) < TOL
    assert usage.reward_tokens > 0 and usage.requests == 3


def test_served_shepherd_prm_matches_in_process(served, local):
    """The policy's own weights read as a Math-Shepherd PRM (tag '=', good '1', bad '2'): same scores."""
    from engines.rewards.served import ServedShepherdPRM
    from engines.rewards.steps import ShepherdPRM

    steps = [["4*5=20\n", "3+20=23\n"], ["4*5=21\n"]]
    here = ShepherdPRM(local.model, local.tokenizer, step_tag="#", good="1", bad="2", name="p").score_steps(ARITH, steps)
    there = ServedShepherdPRM(served.client, "arith", local.tokenizer, step_tag="#", good="1", bad="2",
                              name="p").score_steps(ARITH, steps)
    for a, b in zip(here, there, strict=True):
        assert len(a) == len(b) and all(math.isclose(x, y, abs_tol=TOL) for x, y in zip(a, b, strict=True))
