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
