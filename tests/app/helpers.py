"""Helpers shared by the app tests: stored runs, XSS payloads, a launched app, the Explore form."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engines.trace import DoneEvent, NodeEvent, PruneEvent, ScoreEvent, SelectEvent, Trace

# Untrusted model output that would run code if it reached the page as HTML.
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '<img src=x onerror="window.__xss=1">'
XSS_LINK = "[x](javascript:window.__xss=1)"
XSS_RAW = '<div style="color:red" onmouseover="window.__xss=1">raw html</div>'
XSS_PAYLOADS = (XSS_SCRIPT, XSS_IMG, XSS_LINK, XSS_RAW)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


def open_db(path: Path):
    from storage import Database

    return Database.open(f"sqlite:///{path}")


def make_trace(texts: list[str], rewards: list[float | None], *, pick: int = 0, pruned: tuple[int, ...] = (),
               root: str = "PROMPT") -> Trace:
    """A finished one-level trace: a root, one final child per text, rewards, optional prunes, one pick."""
    ids = [f"n{i}" for i in range(len(texts))]
    events: list[Any] = [NodeEvent(id="root", parent=None, text=root)]
    events += [NodeEvent(id=i, parent="root", depth=1, text=t, tokens=len(t), final=True) for i, t in zip(ids, texts, strict=True)]
    events += [ScoreEvent(node=i, reward="toy", value=v) for i, v in zip(ids, rewards, strict=True) if v is not None]
    events += [PruneEvent(node=ids[k], reason="below <b>threshold</b>") for k in pruned]
    events += [SelectEvent(nodes=[ids[pick]]),
               DoneEvent(picks=[ids[pick]], candidates=ids, cost={"generated_tokens": 40, "wall_seconds": 0.25})]
    return Trace(events)


def store_run(db, texts: list[str], rewards: list[float | None], *, prompt: str = "Say something nice.",
              sampler: str = "best_of_n", model: str = "toy:abc", pick: int = 0) -> int:
    from storage import save_run

    trace = make_trace(texts, rewards, pick=pick)
    return db.write(lambda s: save_run(s, trace=trace, task={"prompt": prompt}, model=model, reward="toy",
                                       sampler=sampler, config={"n": len(texts)}, seed=0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, timeout: float = 180.0) -> None:
    """Return once ``url`` answers an HTTP request; raise after ``timeout`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=30).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the app at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


@contextlib.contextmanager
def launched(services) -> Iterator[str]:
    """The real app (build_demo + launch_options) on a free local port; yields its URL."""
    from app.ui import build_demo, launch_options

    demo = build_demo(services)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    # Gradio's own "is localhost reachable" check gives up after one 3 s HEAD and then refuses to
    # start ("a shareable link must be created"): on a loaded 2-core CI machine that failed a test's
    # setup. `_frontend=False` skips only that check; the wait below is the same check, patient.
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                show_error=False, _frontend=False, **launch_options(services))
    try:
        wait_until_up(url)
        yield url
    finally:
        demo.close()


def explore_args(tab, *, model: str = "toy:abc", reward: str = "length", sampler: str = "best_of_n",
                 prompt: str = "go", seed: int = 0, budget: int = 0, **params: Any) -> list[Any]:
    """The positional inputs of ExploreTab.run, as the page would send them: every form at its default,
    ``params`` overriding fields of the chosen sampler's form."""
    values: list[Any] = []
    for form in tab.forms:
        for spec, component in zip(form.specs, form.inputs, strict=True):
            values.append(params.pop(spec.name) if form.name == sampler and spec.name in params else component.value)
    assert not params, f"no such parameter for {sampler}: {sorted(params)}"
    return [model, reward, sampler, prompt, "", True, seed, budget, *values]
