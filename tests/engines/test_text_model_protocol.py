"""One behaviour suite for the :class:`TextModel` protocol, run on every backend.

In-process: the enumerable toy, the embedded arith policy (transformers), SmolLM2 from its
GGUF file (``-m model``). Served (each only where its test server's variable is set, as in
the backend's own tests): vLLM and SGLang on arith's policy, llama.cpp on SmolLM2 (f32 and Q4_1). A new
backend joins by adding one entry to ``BACKENDS``.

What every backend must do, whatever its engine: tokens round-trip, ``sample`` returns
``n`` well-formed generations per prefix within ``max_new_tokens`` and counts them, a seed
fixes the samples, greedy decoding starts with the argmax of ``next_token_logprobs``,
``score`` returns one finite log-prob per continuation token, and a prefix past the context
is refused before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from engines.models import load_model
from engines.models.base import SamplingParams, TextModel
from engines.task import Task
from engines.trace import Cost


@dataclass(frozen=True)
class Backend:
    """How to reach one backend, and text its vocabulary covers."""

    spec: str  # a model spec; ``{url}`` is filled from ``url_fixture``
    task: Task
    text: str
    url_fixture: str | None = None
    model_fixture: str | None = None  # a session fixture that already holds the model


ARITH = Task(prompt="Q: 3+4*5\n", chat=False)
BACKENDS = {
    "toy": Backend("toy:digits", Task(prompt="pick a number"), "07"),
    "arith": Backend("embedded:arith", ARITH, "Q: 12+3*4\n4*5=20\n#23"),
    "smollm2": Backend("embedded:smollm2", Task(prompt="Say hello."), "Hello, world!", model_fixture="smollm2"),
    "vllm": Backend("openai:{url}", ARITH, "Q: 12+3*4\n4*5=20\n#23", url_fixture="vllm_url"),
    "sglang": Backend("openai:{url}", ARITH, "Q: 12+3*4\n4*5=20\n#23", url_fixture="sglang_url"),
    "llamacpp": Backend("openai:{url}", Task(prompt="Say hello."), "Hello, world!", url_fixture="llamacpp_url"),
    "llamacpp_q4": Backend("openai:{url}", Task(prompt="Say hello."), "Hello, world!", url_fixture="llamacpp_q4_url"),
}
MARKS = {"smollm2": pytest.mark.model, "vllm": pytest.mark.vllm, "sglang": pytest.mark.sglang,
         "llamacpp": pytest.mark.llamacpp, "llamacpp_q4": pytest.mark.llamacpp}


@pytest.fixture(scope="module", params=[pytest.param(name, marks=MARKS.get(name, ())) for name in BACKENDS])
def backend(request) -> tuple[Backend, TextModel]:
    spec = BACKENDS[request.param]
    if spec.model_fixture:
        return spec, request.getfixturevalue(spec.model_fixture)
    url = request.getfixturevalue(spec.url_fixture) if spec.url_fixture else ""  # skips when unset
    return spec, load_model(spec.spec.format(url=url), device="cpu")


def test_tokens_round_trip(backend):
    spec, model = backend
    ids = model.encode(spec.text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert model.decode(ids) == spec.text
    prompt = model.encode_task(spec.task)
    assert prompt and all(isinstance(i, int) for i in prompt)


def test_sample_returns_n_counted_generations_per_prefix(backend):
    spec, model = backend
    prompt = model.encode_task(spec.task)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    usage = Cost()
    rows = model.sample([prompt, prompt], params, n=3, rng=torch.Generator().manual_seed(0), usage=usage)
    assert [len(row) for row in rows] == [3, 3]
    total = 0
    for generation in (g for row in rows for g in row):
        assert 0 < len(generation.token_ids) <= params.max_new_tokens
        assert len(generation.logprobs) == len(generation.token_ids)
        assert all(math.isfinite(lp) and lp <= 1e-6 for lp in generation.logprobs)
        total += len(generation.token_ids)
    assert usage.generated_tokens == total


def test_a_seed_fixes_the_samples(backend):
    spec, model = backend
    prompt = model.encode_task(spec.task)
    params = SamplingParams(max_new_tokens=6, temperature=1.5)
    draw = lambda seed: [g.token_ids for row in model.sample([prompt], params, n=4, rng=torch.Generator().manual_seed(seed))  # noqa: E731
                         for g in row]
    assert draw(3) == draw(3)


def test_greedy_starts_with_the_most_likely_next_token(backend):
    spec, model = backend
    prompt = model.encode_task(spec.task)
    params = SamplingParams(max_new_tokens=4, temperature=0)
    (first,), (again,) = model.sample([prompt, prompt], params)
    assert first.token_ids == again.token_ids
    row = model.next_token_logprobs([prompt])[0]
    assert row.ndim == 1 and torch.isfinite(row).any()
    assert first.token_ids[0] == int(torch.argmax(row))
    # a (possibly truncated) distribution; 5e-4: llama.cpp normalises in float32 over 49,152 tokens (tests/engines/test_llamacpp.py)
    assert float(torch.logsumexp(row[torch.isfinite(row)], dim=0)) <= 5e-4


def test_score_gives_one_log_prob_per_continuation_token(backend):
    spec, model = backend
    prompt = model.encode_task(spec.task)
    continuations = [model.encode(spec.text), model.encode(spec.text)[:1]]
    scores = model.score([prompt, prompt], continuations)
    assert [len(s) for s in scores] == [len(c) for c in continuations]
    assert all(math.isfinite(lp) and lp <= 1e-6 for s in scores for lp in s)
    assert scores[1][0] == pytest.approx(scores[0][0], abs=1e-3)  # the first token's log-prob does not see the rest


def test_a_prefix_past_the_context_is_refused_before_any_work(backend):
    _, model = backend
    if model.context_length is None:
        pytest.skip(f"{model.name} has no context limit")
    usage = Cost()
    with pytest.raises(ValueError, match="context"):
        model.sample([[5] * model.context_length], SamplingParams(max_new_tokens=4), usage=usage)
    assert usage.generated_tokens == 0 and usage.requests == 0
