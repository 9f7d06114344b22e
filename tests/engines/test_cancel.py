"""Cancel reaches the decode loop: a cancelled batch stops within one decode step, counted in tokens.

The flag is raised from the run's progress hook after a fixed number of decode steps, so the count
of tokens generated after it is exact, not a matter of timing. Before the watch existed, a cancelled
best-of-N generated every token of its batch (8 x 512 in the issue) before the sampler looked.
"""

from __future__ import annotations

import threading

import pytest

from engines.errors import Cancelled
from engines.models.base import SamplingParams
from engines.models.watch import Watch, decode_step, watching
from engines.runner import RunRequest, live, stream
from engines.trace import Cost, CostEvent

ROWS, STEPS, LONG = 8, 3, 400


def cancel_after(steps: int, rows: int = ROWS):
    """A cancel flag and a progress hook that raises it once ``steps`` decode steps of ``rows`` rows are done."""
    flag = threading.Event()

    def progress(cost: Cost) -> None:
        if cost.generated_tokens >= steps * rows:
            flag.set()

    return flag, progress


def test_a_model_call_stops_at_the_decode_step_that_follows_the_cancel(tiny_lm):
    flag, progress = cancel_after(STEPS)
    usage = Cost()
    params = SamplingParams(max_new_tokens=LONG, min_new_tokens=LONG)
    with watching(Watch(cancel=flag, progress=progress)), pytest.raises(Cancelled):
        tiny_lm.sample([tiny_lm.encode("Hello")], params, n=ROWS, usage=usage)
    assert usage.generated_tokens == STEPS * ROWS  # not one step more, let alone LONG * ROWS


def test_without_a_watch_the_loop_runs_to_the_end(tiny_lm):
    usage = Cost()
    decode_step(usage)  # no watch installed: nothing happens
    out = tiny_lm.sample([tiny_lm.encode("Hi")], SamplingParams(max_new_tokens=5, min_new_tokens=5), n=2, usage=usage)
    assert [len(g.token_ids) for g in out[0]] == [5, 5] and usage.generated_tokens == 10


def request_for(tiny_lm_dir, **params) -> RunRequest:
    return RunRequest.build(
        model=f"hf:{tiny_lm_dir}", reward="length", sampler="best_of_n", prompt="Tell me a story.", chat=False,
        params={"n": ROWS, "max_new_tokens": LONG, "min_new_tokens": LONG, **params}, device="cpu",
    )


def test_a_cancelled_best_of_n_stops_within_one_decode_step_and_says_so(tiny_lm_dir):
    flag, progress = cancel_after(STEPS)
    events = list(stream(request_for(tiny_lm_dir), cancel=flag, progress=progress))
    done = events[-1]
    assert done.kind == "done" and done.status == "cancelled"
    assert done.cost["generated_tokens"] == STEPS * ROWS
    assert not done.candidates  # no half-decoded row is passed off as a candidate


def test_live_streams_token_progress_from_inside_one_model_call_then_stops_on_cancel(tiny_lm_dir):
    """runner.live: cost snapshots arrive while the one batched call decodes; the viewer cancels on the
    first one, and the run ends cancelled long before its LONG tokens per row."""
    flag = threading.Event()
    seen: list[float] = []
    events = []
    for event in live(request_for(tiny_lm_dir), flag, progress_every=0.0, poll=0.05):
        if event is None:
            continue
        events.append(event)
        if isinstance(event, CostEvent) and event.cost["generated_tokens"] > 0:
            seen.append(event.cost["generated_tokens"])
            flag.set()
    done = events[-1]
    assert seen and done.status == "cancelled"
    assert done.cost["generated_tokens"] < LONG * ROWS / 2  # the batch did not run to the end


def test_closing_the_live_stream_cancels_the_worker(tiny_lm_dir):
    """A viewer that goes away (Gradio closes the handler) stops the run instead of leaving it running."""
    flag = threading.Event()
    stream_ = live(request_for(tiny_lm_dir), flag, progress_every=0.0, poll=0.05)
    for event in stream_:
        if isinstance(event, CostEvent) and event.cost["generated_tokens"] > 0:
            break
    stream_.close()
    assert flag.is_set()


class SlowServer:
    """An OpenAI-style server that holds every request until its client goes away (or ``hold`` seconds),
    counting the requests it received and the clients it saw leave."""

    def __init__(self, hold: float = 20.0) -> None:
        import http.server
        import select
        import socket

        self.received = threading.Semaphore(0)
        self.left = threading.Semaphore(0)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.received.release()
                import time

                end = time.monotonic() + hold
                while time.monotonic() < end:
                    ready, _, _ = select.select([self.connection], [], [], 0.05)
                    if ready and self.connection.recv(1, socket.MSG_PEEK) == b"":
                        owner.left.release()  # the client shut its socket: a server aborts the request here
                        return
                body = b'{"choices": [{"text": "late"}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_cancelled_run_abandons_its_requests_in_flight():
    """Served models: Cancel drops the wait and shuts the requests' sockets, so the server sees its
    clients leave and can abort the generation (vLLM does), instead of decoding every token unread."""
    from engines.models.served.client import EngineClient

    server = SlowServer()
    client = EngineClient(server.url, retries=0)
    flag = threading.Event()

    def cancel_once_all_arrived():
        for _ in range(3):
            assert server.received.acquire(timeout=30)
        flag.set()

    threading.Thread(target=cancel_once_all_arrived, daemon=True).start()
    try:
        with watching(Watch(cancel=flag)), pytest.raises(Cancelled):
            client.map(lambda k: client.post("/completions", {"k": k}), range(3))
        assert all(server.left.acquire(timeout=10) for _ in range(3))  # every request in flight was abandoned
    finally:
        client.close()
        server.stop()
