"""Served models that fail: a scripted transport (fast, no server) and a real server behind a proxy that dies."""

from __future__ import annotations

import http.server
import json
import math
import threading

import httpx
import pytest

from engines.errors import EngineError
from engines.models.served.client import EngineClient, EngineUnavailable, parse_prometheus

# -- scripted answers (no server) ------------------------------------------------------


def scripted(*answers):
    """A transport that answers with ``answers`` in turn (an exception instance is raised)."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        answer = answers[min(len(calls) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler), calls


def client(transport, **kw):
    return EngineClient("http://engine.test:8000", transport=transport, backoff=0.0, **kw)


def test_5xx_and_connection_errors_are_retried_then_succeed():
    transport, calls = scripted(
        httpx.ConnectError("refused"), (503, {"error": {"message": "busy"}}), (200, {"ok": 1})
    )
    assert client(transport).post("/completions", {}) == {"ok": 1}
    assert len(calls) == 3


def test_unreachable_after_retries_is_one_line():
    transport, calls = scripted(httpx.ConnectError("refused"))
    with pytest.raises(EngineUnavailable, match=r"^cannot reach the server at http://engine.test:8000 .*is it running\?$"):
        client(transport, retries=2).post("/completions", {})
    assert len(calls) == 3


def test_client_errors_are_not_retried_and_name_the_problem():
    transport, calls = scripted((404, {"error": {"message": "The model `x` does not exist."}}))
    with pytest.raises(EngineError, match="has no such model: The model `x` does not exist"):
        client(transport).post("/completions", {})
    assert len(calls) == 1
    transport, _ = scripted((400, {"error": {"message": "This model's maximum context length is 256 tokens."}}))
    with pytest.raises(EngineError, match="^context overflow at http://engine.test:8000"):
        client(transport).post("/completions", {})


def test_a_dead_engine_is_one_line_and_later_calls_fail_fast():
    body = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                      "type": "InternalServerError"}}
    transport, calls = scripted((500, body), httpx.ConnectError("refused"))
    engine = client(transport)
    with pytest.raises(EngineUnavailable, match="died .*restart the server"):
        engine.post("/completions", {})
    assert len(calls) == 1  # not retried
    with pytest.raises(EngineUnavailable, match="died"):
        engine.post("/completions", {})
    assert len(calls) == 2  # one quick probe, no retries


def test_bad_urls_are_refused():
    with pytest.raises(EngineError, match="must start with http"):
        EngineClient("localhost:8000")
    assert EngineClient("http://h:1/").base_url == "http://h:1/v1"


def test_prometheus_counters_are_summed_over_labels():
    text = (
        "# HELP vllm:prefix_cache_hits_total x\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="a"} 12.0\n'
        'vllm:prefix_cache_hits_total{engine="1",model_name="a"} 3.0\n'
        "vllm:prompt_tokens_total 40\n"
    )
    assert parse_prometheus(text) == {"vllm:prefix_cache_hits_total": 15.0, "vllm:prompt_tokens_total": 40.0}


# -- a real server that goes away mid-run -------------------------------------------------


class DyingProxy:
    """Forwards to a real server; after ``limit`` completions requests it stops listening."""

    def __init__(self, target: str, limit: int) -> None:
        self.target, self.limit, self.count = target.rstrip("/").removesuffix("/v1"), limit, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method):
                if self.path.endswith("/completions"):
                    proxy.count += 1
                    if proxy.count > proxy.limit:
                        threading.Thread(target=proxy.stop, daemon=True).start()
                        self.close_connection = True
                        return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                answer = httpx.request(method, proxy.target + self.path, content=body,
                                       headers={"content-type": "application/json"}, timeout=60)
                self.send_response(answer.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.vllm
def test_a_run_that_loses_its_server_ends_in_error_and_keeps_its_events(vllm_url, tmp_path, capsys):
    from app.cli import main
    from storage import Database, load_run

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    base = ["sample", "--prompt", "Q: 3+4*5\n", "--raw", "--reward", "length:20", "--save", "--db", db, "--json"]
    # the connect probes (2) and the first run's one request fit; the second run dies after a few requests
    proxy = DyingProxy(vllm_url, limit=2 + 1 + 3)
    assert main([*base, "--model", f"openai:{proxy.url}", "--n", "4"]) == 0
    first = json.loads(capsys.readouterr().out)
    code = main([*base, "--model", f"openai:{proxy.url}", "--sampler", "beam_search",
                 "--set", "step=tokens", "--set", "max_new_tokens=2", "--set", "max_steps=12",
                 "--set", "beams=2", "--set", "expand=2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.strip().count("\n") == 0 and "cannot reach the server at" in err
    second = json.loads(out)
    assert second["status"] == "error"
    database = Database.open(db)
    kept = database.read(lambda s: load_run(s, first["run_id"]))
    lost = database.read(lambda s: load_run(s, second["run_id"]))
    assert kept.status == "ok" and len(kept.candidates) == 4
    assert lost.status == "error" and lost.trace.events[-1].kind == "done" and len(lost.trace.events) > 2


@pytest.mark.vllm
def test_a_bad_spec_is_one_line_and_stores_nothing(vllm_url, tmp_path, capsys):
    from app.cli import main
    from storage import Database, list_runs

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    for spec in ["openai:http://127.0.0.1:1/v1", f"openai:{vllm_url}#nope", "openai:nothing"]:
        code = main(["sample", "--prompt", "Q: 1+1\n", "--raw", "--reward", "length:20", "--save", "--db", db,
                     "--model", spec])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("samplescope: error: ") and err.count("\n") == 1
    assert Database.open(db).read(list_runs) == []


# -- a server whose log-probs are the base model's (vLLM's default raw_logprobs) ----------------


def raw_mode_model():
    """A ServedTextModel on a scripted raw-logprobs server answering every completion with '4*5' then eos."""
    from engines.models.arith import POLICY_DIR
    from engines.models.served.openai_compatible import RAW, ServedTextModel
    from engines.models.served.tokens import LocalTokenizer, _local

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        n = body.get("n", 1)
        choice = {"text": "4*5", "token_ids": [7, 15, 8, 1], "finish_reason": "stop", "stop_reason": None,
                  "logprobs": {"token_logprobs": [-0.1, -0.2, -0.3, -0.4], "top_logprobs": None}}
        return httpx.Response(200, json={"choices": [{**choice, "index": i} for i in range(n)],
                                         "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 4 * n}})

    tokenizer, vocab = _local(str(POLICY_DIR))
    engine = EngineClient("http://raw.test", transport=httpx.MockTransport(handler), backoff=0.0)
    return ServedTextModel(engine, "arith", LocalTokenizer(tokenizer, "local", vocab), name="raw",
                           max_model_len=256, logprobs_mode=RAW)


def test_power_mcmc_refuses_a_raw_logprobs_server_naming_the_setting():
    import torch

    from engines.errors import ConfigError
    from engines.samplers import build_sampler
    from engines.task import Task
    from engines.trace import collect
    from tests.engines.test_served import DigitCount

    model, task = raw_mode_model(), Task(prompt="Q: 3+4*5\n", chat=False)
    sampler = build_sampler("power_mcmc", {"temperature": 0.25, "max_new_tokens": 4, "block_size": 2, "mcmc_steps": 1})
    with pytest.raises(ConfigError, match="--logprobs-mode processed_logprobs"):
        collect(sampler.run(task, model, DigitCount(), rng=torch.Generator().manual_seed(0)))
    (gen,), = model.sample([[18]], model_params(temperature=1.0))
    assert gen.sample_logprobs == gen.logprobs == [-0.1, -0.2, -0.3, -0.4] and gen.finish_reason == "eos"
    (gen,), = model.sample([[18]], model_params(temperature=0.5))
    assert all(x != x for x in gen.sample_logprobs) and "processed_logprobs" in gen.meta["sample_logprobs"]


def model_params(**kw):
    from engines.models.base import SamplingParams

    return SamplingParams(max_new_tokens=4, **kw)


# -- llama.cpp's log-prob entries, which skip tokens inside a UTF-8 character ---------------------


def test_llamacpp_entries_are_aligned_to_their_tokens_and_ambiguity_is_left_open():
    from engines.models.served.llamacpp import _align

    entry = lambda token, lp: {"id": token, "logprob": lp}  # noqa: E731
    assert _align([5, 6, 7], [entry(5, -1.0), entry(6, -2.0), entry(7, -3.0)]) == [-1.0, -2.0, -3.0]
    # 9 left the text inside a character (no entry); 8 completed it
    assert _align([5, 9, 8, 7], [entry(5, -1.0), entry(8, -2.0), entry(7, -3.0)]) == [-1.0, None, -2.0, -3.0]
    # two equal byte tokens, one of them without an entry: which one is unknown, so neither is trusted
    assert _align([5, 8, 8, 7], [entry(5, -1.0), entry(8, -2.0), entry(7, -3.0)]) == [-1.0, None, None, -3.0]
    assert _align([4, 4], [entry(4, -0.5), entry(4, -0.25)]) == [-0.5, -0.25]
    assert _align([5, 6], [{"id": 5, "prob": 0.5}, {"id": 6, "prob": 0.0}]) == [math.log(0.5), -math.inf]
    with pytest.raises(EngineError, match="did not generate"):
        _align([5, 6], [entry(7, -1.0)])
