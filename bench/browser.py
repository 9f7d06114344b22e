"""The app in a real browser: Run → first rendered update → done, for every kind of embedded run.

Starts the real app (``samplescope serve`` in its own process, a fresh SQLite file, the model preloaded)
and drives headless Chromium through three scenarios: best-of-N and a knockout tournament on
SmolLM2, and Feynman-Kac steering on the digits DDPM (a diffusion tree of image thumbnails, the
heaviest view to draw). For each repeat it clicks Run in the Explore tab and records, with the
page's own clock (a MutationObserver on the status, link and table), when the page first shows:

- ``response``: the handler's first reply (status "loading…"),
- ``first_update``: the first rendered snapshot of the trace (status "running…"),
- ``first_candidate``: the first candidate row in the table,
- ``done``: the final view (status "ok: …"),
- ``saved``: the link of the stored run (end to end: sampling, rendering, transport, storage).

The headline is ``done / sampler_wall``: how long the user waits for the finished page per second
of the sampler's own work (``wall_seconds`` from the stored run's cost); the goal is at most 1.5.
Every repeat uses the same seed, so it does the same work; one warm-up run per scenario (model
loading, browser caches, the first plotly render) is reported apart, not in the medians.

    python -m bench.browser [--repeats 3] [--n 8] [--tokens 32] [--particles 16] [--scenarios best_of_n,knockout,fk_steering]
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


def choose(page, elem_id: str, label: str) -> None:
    """Pick the dropdown option named ``label`` (or ``label — description``, as the built-in prompts are)."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(label)
    page.get_by_role("option", name=re.compile(rf"^{re.escape(label)}( —.*)?$")).first.click()


def choose_task(page, task: str) -> None:
    """Pick a built-in prompt and wait until the model shows the task's model: the task pick's one update
    sets the prompt, the model and that model's sampler list and forms together."""
    choose(page, "explore-task", task)
    model = page.locator("#explore-model input")
    for _ in range(600):  # up to a minute
        if task.split(":")[0] in model.input_value():
            break
        page.wait_for_timeout(100)


def type_value(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    box.press("Enter")


def scenarios(args) -> dict[str, dict]:
    """What each scenario sets in the Explore form: a built-in prompt or a typed one, the sampler, its numbers."""
    text = {"prompt": PROMPT}
    return {
        "best_of_n": {**text, "sampler": "Best-of-N", "what": f"best-of-{args.n}, {args.tokens} new tokens, SmolLM2",
                      "numbers": {"explore-best_of_n-n": args.n, "explore-best_of_n-max_new_tokens": args.tokens}},
        "knockout": {**text, "sampler": "Knockout tournament", "reward": "pairwise:sentiment",
                     "what": f"knockout of {args.n}, {args.tokens} new tokens, SmolLM2, pairwise sentiment",
                     "numbers": {"explore-knockout-n": args.n, "explore-knockout-max_new_tokens": args.tokens}},
        "fk_steering": {"task": "digits:3", "sampler": "Feynman-Kac steering",
                        "what": f"FK steering, {args.particles} particles, digits DDPM (digits:3)",
                        "numbers": {"explore-fk_steering-particles": args.particles}},
    }


def set_up(page, url: str, scenario: dict) -> None:
    page.goto(url)
    page.wait_for_selector("#explore-run")
    if scenario.get("task"):
        choose_task(page, scenario["task"])
        page.wait_for_function("document.querySelector('#explore-prompt textarea').value !== ''")
    else:
        page.locator("#explore-prompt textarea").fill(scenario["prompt"])
    if scenario.get("reward"):
        type_value(page, "explore-reward", scenario["reward"])
    choose(page, "explore-sampler", scenario["sampler"])
    for elem_id, value in scenario["numbers"].items():
        set_number(page, elem_id, value)
    page.evaluate(OBSERVER)


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
    out["done_per_sampler_second"] = out["done"] / out["sampler_wall"]
    out["tokens"] = int(stored.cost["generated_tokens"])
    out["run_id"] = run_id
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--scenarios", default="best_of_n,knockout,fk_steering")
    args = parser.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        print(f"skipped: {CHROMIUM} is missing (make system-deps)", file=sys.stderr)
        return {}
    known = scenarios(args)
    wanted = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in known]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")

    results = {}
    with tempfile.TemporaryDirectory() as tmp, serve(f"sqlite:///{Path(tmp) / 'bench.db'}") as (url, services):
        with chromium() as page:
            for name in wanted:
                scenario = known[name]
                set_up(page, url, scenario)
                runs = []
                for k in range(args.repeats + 1):
                    started = time.perf_counter()
                    runs.append(one_run(page, services))
                    print(f"  {name} run {k}{' (warm-up)' if k == 0 else ''}: " + ", ".join(
                        f"{mark} {runs[-1][mark]:.2f} s" for mark in (*MARKS, "sampler_wall") if mark in runs[-1])
                        + f", done/sampler {runs[-1]['done_per_sampler_second']:.2f}"
                        + f" ({time.perf_counter() - started:.1f} s wall here)", flush=True)
                timed = runs[1:]
                keys = (*MARKS, "sampler_wall", "outside_sampler", "outside_share", "done_per_sampler_second")
                medians = {key: statistics.median(r[key] for r in timed) for key in keys}
                results[name] = {"what": scenario["what"], "median_seconds": {k: medians[k] for k in (*MARKS, "sampler_wall", "outside_sampler")},
                                 "done_per_sampler_second": medians["done_per_sampler_second"],
                                 "outside_sampler_share": medians["outside_share"], "warm_up": runs[0], "runs": timed}
                print(f"{name}: Run → first update {medians['first_update']:.2f} s, → done {medians['done']:.2f} s, "
                      f"sampler {medians['sampler_wall']:.2f} s: done/sampler {medians['done_per_sampler_second']:.2f} "
                      f"(goal <= 1.5; medians of {args.repeats})", flush=True)

    result = {"what": "the Explore tab in headless Chromium, embedded models on CPU", "repeats": args.repeats,
              "load_average": os.getloadavg(), "scenarios": results}
    path = save("browser", result)
    print(f"saved {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
