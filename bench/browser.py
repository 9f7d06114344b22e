"""The app in a real browser: Run → first rendered update → done, for best-of-N on the embedded model.

Starts the real app (``samplescope serve`` in its own process, a fresh SQLite file, the model preloaded)
and drives headless Chromium. For each repeat it clicks Run in the Explore tab and records, with the
page's own clock (a MutationObserver on the status, link and table), when the page first shows:

- ``response``: the handler's first reply (status "loading…"),
- ``first_update``: the first rendered snapshot of the trace (status "running…"),
- ``first_candidate``: the first candidate row in the table,
- ``done``: the final view (status "ok: N/N candidates"),
- ``saved``: the link of the stored run (end to end: sampling, rendering, transport, storage).

The share of the end-to-end time spent outside the sampler (rendering, transport, storage) is
``1 - wall_seconds / saved``, with ``wall_seconds`` the sampler's own time from the stored run's
cost. Every repeat uses the same seed, so it does the same work; one warm-up run (browser caches,
the first plotly render) is reported apart, not in the medians.

    python -m bench.browser [--repeats 3] [--n 8] [--tokens 32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from bench.app_server import free_port, served
from bench.measure import save

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PROMPT = "Write one sentence about a rainy Monday morning."
MARKS = ("response", "first_update", "first_candidate", "done", "saved")

# Records when each mark first shows after the click (t0); marks wait for "response", because the
# previous run's status and link stay on the page until the new run's first reply replaces them.
OBSERVER = """() => {
  const status = document.querySelector('#explore-status'), link = document.querySelector('#explore-link');
  const table = document.querySelector('#explore-candidates');
  window.__bench = {t0: null};
  new MutationObserver(() => {
    const b = window.__bench, now = performance.now();
    if (b.t0 === null) return;
    const s = status.innerText.trim();
    if (b.response === undefined && s.startsWith('loading')) b.response = now;
    if (b.response === undefined) return;
    if (b.first_update === undefined && (s.startsWith('running') || /^ok:/.test(s))) b.first_update = now;
    if (b.first_candidate === undefined && table.querySelectorAll('[role=row][data-index]').length > 0) b.first_candidate = now;
    if (b.done === undefined && /^(ok|budget|cancelled):/.test(s)) b.done = now;
    if (b.saved === undefined && link.innerText.includes('Saved as run')) b.saved = now;
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
CLICK = "() => { window.__bench = {t0: performance.now()}; document.querySelector('#explore-run').click(); }"


@contextlib.contextmanager
def serve(db_url: str, model: str = "embedded:smollm2") -> Iterator[tuple[str, object]]:
    """The real app (``samplescope serve`` in its own process) on a free local port with ``model``
    preloaded; yields (url, the served app: ``.db`` the database it stores into, at ``.db_url``; ``.proc``)."""
    from storage import Database

    port = free_port()
    with tempfile.TemporaryDirectory() as home, \
            served(db_url, Path(home), port, model=model, preload=True, device="cpu", timeout=900) as proc, \
            contextlib.closing(Database.open(db_url)) as db:
        yield f"http://127.0.0.1:{port}/", SimpleNamespace(db=db, db_url=db_url, proc=proc)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A page in headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": width, "height": height}).new_page()
            page.set_default_timeout(600_000)
            yield page
        finally:
            browser.close()


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def one_run(page, services) -> dict:
    from storage import load_run

    page.evaluate(CLICK)
    page.wait_for_function("window.__bench.saved !== undefined", timeout=600_000, polling=200)
    marks = page.evaluate("window.__bench")
    run_id = int(re.search(r"Saved as run (\d+)", page.locator("#explore-link").inner_text()).group(1))
    stored = services.db.read(lambda s: load_run(s, run_id))
    out = {name: (marks[name] - marks["t0"]) / 1000 for name in MARKS if marks.get(name) is not None}
    out["sampler_wall"] = float(stored.cost["wall_seconds"])
    out["outside_sampler"] = out["saved"] - out["sampler_wall"]
    out["outside_share"] = 1 - out["sampler_wall"] / out["saved"]
    out["tokens"] = int(stored.cost["generated_tokens"])
    out["run_id"] = run_id
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        print(f"skipped: {CHROMIUM} is missing (make system-deps)", file=sys.stderr)
        return {}

    with tempfile.TemporaryDirectory() as tmp, serve(f"sqlite:///{Path(tmp) / 'bench.db'}") as (url, services):
        with chromium() as page:
            page.goto(url)
            page.wait_for_selector("#explore-run")
            set_number(page, "explore-best_of_n-n", args.n)
            set_number(page, "explore-best_of_n-max_new_tokens", args.tokens)
            page.locator("#explore-prompt textarea").fill(PROMPT)
            page.evaluate(OBSERVER)
            runs = []
            for k in range(args.repeats + 1):
                started = time.perf_counter()
                runs.append(one_run(page, services))
                print(f"  run {k}{' (warm-up)' if k == 0 else ''}: " + ", ".join(
                    f"{name} {runs[-1][name]:.2f} s" for name in (*MARKS, "sampler_wall") if name in runs[-1])
                    + f" ({time.perf_counter() - started:.1f} s wall here)", flush=True)

    timed = runs[1:]
    medians = {name: statistics.median(r[name] for r in timed) for name in (*MARKS, "sampler_wall", "outside_sampler", "outside_share")}
    result = {
        "what": f"best-of-{args.n}, {args.tokens} new tokens, embedded:smollm2 on CPU, headless Chromium",
        "repeats": args.repeats,
        "load_average": os.getloadavg(),
        "median_seconds": {k: v for k, v in medians.items() if k != "outside_share"},
        "outside_sampler_share": medians["outside_share"],
        "warm_up": runs[0],
        "runs": timed,
    }
    path = save("browser", result)
    print(f"Run → first rendered update: {medians['first_update']:.2f} s; → first candidate: {medians['first_candidate']:.2f} s; "
          f"→ done: {medians['done']:.2f} s; → stored: {medians['saved']:.2f} s (medians of {args.repeats})")
    print(f"sampler wall {medians['sampler_wall']:.2f} s; outside the sampler {medians['outside_sampler']:.2f} s "
          f"= {medians['outside_share']:.1%} of end-to-end")
    print(f"saved {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
