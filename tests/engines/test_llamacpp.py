"""The served backend against a real llama.cpp server (``-m llamacpp``; make test builds and starts one).

.ci/start-llamacpp serves the float32 twin of the embedded SmolLM2 GGUF (scripts/gguf_f32.py)
with an f32 KV cache and flash attention off, so served and in-process log-probs of the same
weights agree within TOL: llama.cpp normalises its probabilities in float32 over the
49,152-token vocabulary and returns probabilities, not log-probs (measured: ~1e-4). The
sampler behaviour suite runs on a second server on the shipped Q4_1 file (faster, and the
quantised path users run).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from engines.errors import EngineError, SamplescopeError
from engines.models import load_model
from engines.models.base import SamplingParams
from engines.models.sampling import warp
from engines.models.served import connect, parse_openai_spec
from engines.models.served.client import parse_prometheus
from engines.models.served.llamacpp import LlamaCppTextModel
from engines.rewards.base import Reward
from engines.task import Task
from engines.trace import Cost, Trace
from tests.engines import test_sampler_behaviour as suite
from tests.engines.test_sampler_behaviour import (  # noqa: F401  (re-collected here against the server)
    test_cancel_before_start_stops_at_once,
    test_costs_are_counted,
    test_ends_with_exactly_one_done,
    test_exactly_n_candidates,
    test_generated_token_budget_is_never_passed,
    test_same_seed_same_trace,
    test_trace_json_round_trip,
)

pytestmark = [pytest.mark.llamacpp, pytest.mark.model]

TOL = 5e-4
ROOT = Path(__file__).resolve().parents[2]
HAIKU = Task(prompt="Write a haiku about the sea.")
COUNT = Task(prompt="Count: 1, 2, 3, 4,", chat=False)


def _without_floats(value):
    if isinstance(value, float):
        return None
    if isinstance(value, list):
        return [_without_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_floats(v) for k, v in value.items()}
    return value


class LetterE(Reward):
    """r(x) = the number of 'e's in x / 10: defined on any text, partial ones too."""

    name = "letter_e"

    def score(self, task, candidates, *, usage=None):
        return [x.count("e") / 10 for x in candidates]


class LlamaCppBackend(suite.ToyBackend):
    def __init__(self, url: str) -> None:
        self.url = url

    def model(self):
        return load_model(f"openai:{self.url}")

    def reward(self, name: str):
        return suite.reward_for(name, LetterE())

    def comparable(self, trace: Trace) -> list[dict]:
        # the same tokens, texts and choices; llama.cpp's float32 sums change in their last bits with the
        # batch a request lands in (its README says so), so no float is compared
        return _without_floats(suite.comparable(trace))


@pytest.fixture
def backend(llamacpp_q4_url):
    return LlamaCppBackend(llamacpp_q4_url)  # the behaviour suite runs on the shipped Q4_1 file


@pytest.fixture(scope="module")
def served(llamacpp_url) -> LlamaCppTextModel:
    return load_model(f"openai:{llamacpp_url}")


@pytest.fixture(scope="module")
def local(smollm2):
    return smollm2


def test_connect_recognises_llamacpp(served):
    info = served.describe()
    assert isinstance(served, LlamaCppTextModel) and info["server"] == "llama.cpp"
    assert info["served_model"] == "smollm2" and info["slots"] == 4
    assert served.max_model_len == 1024  # -c 4096 over 4 slots
    assert "unknown" not in info["tokenizer"]  # control tokens read from the GGUF file
    assert served.eos_token_id == 2 and served.tokenizer.vocab_size == 49152


def test_tokenisation_agrees_with_the_in_process_tokenizer(served, local):
    for text in ["Hello, world! ü", "Q: 3+4*5\nThe answer is 23.", "  two spaces\ttab", "<|im_start|>user\nhi"]:
        assert served.encode(text) == local.encode(text)
        assert served.decode(local.encode(text)) == local.decode(local.encode(text))
    assert served.encode_task(HAIKU) == local.encode_task(HAIKU)
    assert served.encode_task(COUNT) == local.encode_task(COUNT)
    assert served.decode([*local.encode("done"), 2]) == "done"  # control tokens are not text


def test_scores_match_the_in_process_model(served, local):
    prefix = local.encode_task(HAIKU)
    conts = [local.encode("The sea is wide and blue, waves roll in."), local.encode("Banana quantum"), local.encode("!")]
    usage = Cost()
    there = served.score([prefix] * 3, conts, usage=usage)
    here = local.score([prefix] * 3, conts)
    for a, b in zip(here, there, strict=True):
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOL
    # one request per scored token, each computing one new prompt token on top of the slot's cache
    assert usage.requests == sum(map(len, conts)) and usage.generated_tokens == 0
    assert usage.prefill_tokens < len(prefix) * 3 + sum(map(len, conts)) * 2


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=48, temperature=0),
        SamplingParams(max_new_tokens=24, temperature=0, stop=("\n",)),
        SamplingParams(max_new_tokens=24, temperature=0, stop=(" 7",)),
        SamplingParams(max_new_tokens=5, temperature=0),
        SamplingParams(max_new_tokens=12, min_new_tokens=12, temperature=0),
    ],
    ids=["eos", "stop-newline", "stop-two-tokens", "max-tokens", "min-equals-max"],
)
def test_greedy_generations_match_the_in_process_engine(served, local, params):
    prompts = [local.encode_task(HAIKU), local.encode_task(COUNT)]
    here = local.sample(prompts, params)
    there = served.sample(prompts, params)
    for a, b in zip(here, there, strict=True):
        (ga,), (gb,) = a, b
        assert gb.token_ids == ga.token_ids
        assert gb.text == ga.text == served.decode(gb.token_ids)
        assert (gb.finish_reason, gb.stop) == (ga.finish_reason, ga.stop)
        assert len(gb.token_ids) == len(gb.logprobs) <= params.max_new_tokens
        if params.min_new_tokens:
            assert len(gb.token_ids) == params.min_new_tokens
        else:
            assert max(abs(x - y) for x, y in zip(ga.logprobs, gb.logprobs, strict=True)) < TOL
    assert any(g.finish_reason == "stop" for (g,) in there) or not params.stop


def test_tokens_inside_a_utf8_character_keep_their_log_probs(served, local):
    """llama.cpp records log-probs per whole character; a byte token that ends inside one gets none from it."""
    prefix = local.encode_task(Task(prompt="Translate to Japanese: Good morning"))
    params = SamplingParams(max_new_tokens=16, temperature=0)
    (ga,), (gb,) = local.sample([prefix], params)[0], served.sample([prefix], params)[0]
    assert any("\ufffd" in local.decode([t]) for t in gb.token_ids)  # the case is really there
    assert gb.token_ids == ga.token_ids and len(gb.logprobs) == len(gb.token_ids)
    assert max(abs(x - y) for x, y in zip(ga.logprobs, gb.logprobs, strict=True)) < TOL
    cont = local.encode(" 🙂 café ☕")
    assert max(abs(x - y) for x, y in zip(local.score([prefix], [cont])[0], served.score([prefix], [cont])[0],
                                          strict=True)) < TOL


def test_min_tokens_below_max_is_refused_in_one_line(served):
    with pytest.raises(EngineError, match="^llama.cpp's server has no min_tokens") as info:
        served.sample([[1, 2, 3]], SamplingParams(max_new_tokens=10, min_new_tokens=3))
    assert "\n" not in str(info.value)


def _logits(local, prefix, cont):
    with torch.inference_mode():
        out = local.model(input_ids=torch.tensor([prefix + cont]))
    return out.logits[0, len(prefix) - 1 : len(prefix) + len(cont) - 1].float()


def test_base_and_warped_logprobs(served, local):
    prefix = local.encode_task(HAIKU)
    usage = Cost()
    params = SamplingParams(max_new_tokens=8, temperature=0.5, top_k=5, top_p=0.9)
    (gens,) = served.sample([prefix], params, n=3, rng=torch.Generator().manual_seed(1), usage=usage)
    # the sampling request (warped log-probs), then one forced request per token for the base ones
    assert usage.requests == 1 + sum(len(g.token_ids) for g in gens)
    for g in gens:
        base = local.score([prefix], [g.token_ids])[0]
        assert max(abs(x - y) for x, y in zip(base, g.logprobs, strict=True)) < TOL
        logits = _logits(local, prefix, g.token_ids)
        warped = [float(warp(row[None], params)[0, t]) for row, t in zip(logits, g.token_ids, strict=True)]
        assert max(abs(x - y) for x, y in zip(warped, g.sample_logprobs, strict=True)) < 1e-3
        assert all(math.isfinite(x) for x in g.sample_logprobs)


def test_same_seed_same_samples_and_n_beyond_the_slots(served, local):
    prefix = local.encode_task(HAIKU)
    params = SamplingParams(max_new_tokens=6, temperature=1.0)
    usage = Cost()
    a = served.sample([prefix, prefix], params, n=6, rng=torch.Generator().manual_seed(5), usage=usage)
    b = served.sample([prefix, prefix], params, n=6, rng=torch.Generator().manual_seed(5))
    c = served.sample([prefix, prefix], params, n=6, rng=torch.Generator().manual_seed(6))
    assert [len(row) for row in a] == [6, 6] and usage.requests == 4  # 6 = 4 + 2 per prefix on 4 slots
    ids = lambda rows: [g.token_ids for row in rows for g in row]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert len({tuple(t) for t in ids(a)}) > 6  # no seed reused within a call
    assert usage.generated_tokens == sum(map(len, ids(a)))


def test_sampled_law_is_the_model_with_llamacpp_defaults_off(served, local):
    """One token, many seeds: llama.cpp's draws follow the in-process model's law with its own defaults
    (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05) switched off: the tokens that min-p would cut
    (p < 0.05 p_max) come up as often as the law says, and so does the likeliest token. (Temperature,
    top-k and top-p themselves: test_base_and_warped_logprobs, from the chain's own probabilities.)"""
    prefix = local.encode_task(HAIKU)
    params = SamplingParams(max_new_tokens=1, temperature=1.0)
    n = 240
    (gens,) = served.sample([prefix], params, n=n, rng=torch.Generator().manual_seed(0))
    law = warp(local.next_token_logprobs([prefix]), params)[0].exp()
    drawn = torch.tensor([g.token_ids[0] for g in gens])
    cut = law < 0.05 * law.max()
    for mask in (cut, law == law.max()):
        p = float(law[mask].sum())
        seen = float(mask[drawn].float().mean())
        assert abs(seen - p) < 4 * math.sqrt(p * (1 - p) / n), (seen, p)
    assert float(law[cut].sum()) > 0.1  # the check has power: min-p would drop this much mass


def test_next_token_distribution_and_judge_tokens(served, local):
    prefix = local.encode_task(HAIKU)
    row = served.next_token_logprobs([prefix])[0]
    ref = local.next_token_logprobs([prefix])[0]
    assert torch.isfinite(row).all() and abs(float(row.exp().sum()) - 1) < 1e-3
    assert torch.allclose(row, ref, atol=TOL * 4)
    wanted = [int(ref.argmax()), local.encode(" banana")[0]]
    usage = Cost()
    got = served.next_token_logprobs_for([prefix, prefix[:-1]], wanted, usage=usage)
    assert got.shape == (2, 2) and usage.requests == 4
    assert torch.allclose(got[0], ref[wanted], atol=TOL)


def test_context_overflow_and_refusals_are_one_line(served):
    with pytest.raises(ValueError, match="exceeds the served model's context of 1024"):
        served.sample([[5] * 1000], SamplingParams(max_new_tokens=40))
    with pytest.raises(EngineError, match="exceeds the available context size"):
        served.client._send("POST", served.client.root_url + "/completion", {"prompt": [5] * 1100, "n_predict": 1})
    with pytest.raises(EngineError, match="full next-token distribution"):
        served.sample([[5]], SamplingParams(stop_entropy=1.0))
    with pytest.raises(EngineError, match="gives no mean-pooled hidden states"):
        served.embed(["hello"])


def test_bad_model_name_is_one_line(llamacpp_url):
    with pytest.raises(SamplescopeError) as info:
        connect(*parse_openai_spec(f"{llamacpp_url}#nope"), retries=0)
    assert "has no model 'nope'; it serves: smollm2" in str(info.value) and "\n" not in str(info.value)


# -- a server of our own, on the shipped Q4_1 file, killed mid-run ----------------------------------


@pytest.fixture
def own_server():
    binary = ROOT / ".llamacpp" / "bin" / "llama-server"
    if not binary.exists():
        pytest.skip("no .llamacpp/bin/llama-server: run .ci/start-llamacpp build")
    from engines.models.embedded import smollm2_gguf

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(binary), "-m", str(smollm2_gguf()), "--alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
         "-c", "2048", "-np", "2", "-t", "1", "--metrics", "--no-ui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    else:
        proc.kill()
        pytest.fail("llama-server did not start")
    yield proc, url + "/v1"
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_run_that_loses_its_server_ends_in_error_and_keeps_its_events(own_server, tmp_path, capsys):
    from app.cli import main
    from storage import Database, load_run

    proc, url = own_server
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    base = ["sample", "--prompt", "Write one sentence about rain.", "--reward", "length:20", "--save", "--db", db,
            "--json", "--model", f"openai:{url}"]
    assert main([*base, "--n", "3", "--set", "max_new_tokens=8"]) == 0
    first = json.loads(capsys.readouterr().out)

    def kill_after_some_tokens():  # the shipped Q4_1 file; dies once the second run has made a few tokens
        start = parse_prometheus(httpx.get(url.removesuffix("/v1") + "/metrics").text)["llamacpp:tokens_predicted_total"]
        while proc.poll() is None:
            try:
                now = parse_prometheus(httpx.get(url.removesuffix("/v1") + "/metrics").text)
            except httpx.HTTPError:
                return
            if now.get("llamacpp:tokens_predicted_total", 0) >= start + 40:  # a few beam-search steps in
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_some_tokens, daemon=True)
    killer.start()
    code = main([*base, "--sampler", "beam_search", "--set", "step=tokens", "--set", "max_new_tokens=2",
                 "--set", "max_steps=200", "--set", "beams=2", "--set", "expand=2"])
    killer.join(10)
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip().count("\n") == 0 and "cannot reach the server at" in err
    second = json.loads(out)
    assert second["status"] == "error"
    database = Database.open(db)
    kept = database.read(lambda s: load_run(s, first["run_id"]))
    lost = database.read(lambda s: load_run(s, second["run_id"]))
    assert kept.status == "ok" and len(kept.candidates) == 3
    assert lost.status == "error" and lost.trace.events[-1].kind == "done" and len(lost.trace.events) > 2

