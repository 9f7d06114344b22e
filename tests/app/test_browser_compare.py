"""The Compare tab and the shared report in headless Chromium (Playwright), no SmolLM2 needed.

Uploads a prompt set, runs a sweep with a tree sampler (MCTS) on a toy model and one with two
diffusion samplers (FK steering, DTS) on the embedded digits DDPM, sees the live plot fill in,
downloads the sweep's report and opens it with the network off; a run report with XSS payloads
in its candidates renders its plots and runs none of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.app.helpers import CHROMIUM, CHROMIUM_ARGS, XSS_PAYLOADS, launched, open_db

pytestmark = [pytest.mark.browser]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("the playwright package is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (make system-deps installs Debian's chromium)", allow_module_level=True)

WAIT_MS = 240_000


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _page(browser, *, offline: bool = False):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (errors.append(f"dialog {dialog.message}"), dialog.dismiss()))
    if offline:
        context.set_offline(True)
        context.route("**/*", lambda route: (requests.append(route.request.url),
                                             route.continue_() if route.request.url.startswith("file:") else route.abort()))
    return context, page, errors, requests


def open_report_offline(browser, path: Path):
    """Open an HTML file with the network off; return (page, context, errors, requests)."""
    context, page, errors, requests = _page(browser, offline=True)
    page.goto(path.resolve().as_uri())
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
    return page, context, errors, requests


def check_offline_report(page, errors, requests, min_plots: int) -> None:
    plots = page.locator(".js-plotly-plot")
    assert plots.count() >= min_plots
    for k in range(plots.count()):  # every figure drew its SVG
        assert plots.nth(k).locator(".main-svg").count() >= 1
    assert page.locator(".scatterlayer .point").count() > 0
    assert page.evaluate("typeof Plotly") == "object"
    assert not [u for u in requests if not u.startswith("file:")], requests
    assert not errors, errors
    assert page.evaluate("window.__xss") is None
    assert page.locator("[onerror], [onmouseover], a[href^='javascript' i]").count() == 0


def set_value(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def fill(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} textarea, #{elem_id} input[type=text]").first.fill(value)


def pick_engines(page, specs: list[str]) -> None:
    """Set the Engines multiselect to ``specs`` (typed custom values, Enter to add each)."""
    box = page.locator("#compare-engines")
    clear = box.locator(".token-remove.remove-all")
    if clear.count():
        clear.first.click()
    field = box.locator("input").first
    for spec in specs:
        field.fill(spec)
        field.press("Enter")
    field.press("Escape")


def choose_samplers(page, wanted: set[str]) -> None:
    group = page.locator("#compare-samplers")
    for label in group.locator("label").all():
        name = label.inner_text().strip()
        box = label.locator("input[type=checkbox]")
        if box.is_checked() != (name in wanted):
            box.click()


def choose_set(page, name: str) -> None:
    box = page.locator("#compare-set input")
    box.click()
    box.fill(name)
    page.get_by_role("option", name=name, exact=True).click()


def test_compare_drives_sweeps_with_a_tree_and_diffusion_samplers_and_the_report_opens_offline(browser, tmp_path):
    from app.ui.services import Services
    from app.workflows.sweeps import cell_rows

    db = open_db(tmp_path / "compare.db")
    services = Services(db=db, default_model="toy:abc", device="cpu", update_interval=0.2)
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(f'{{"question": "say {w}"}}\n' for w in ("a", "b", "c")), encoding="utf-8")
    with launched(services) as url:
        context, page, errors, _ = _page(browser)
        page.goto(url)
        page.get_by_role("tab", name="Compare", exact=True).click()
        page.locator("#compare-upload input[type=file]").set_input_files(str(prompts))
        fill(page, "compare-set-name", "mine")
        fill(page, "compare-prompt-col", "question")
        page.locator("#compare-add").click()
        expect(page.locator("#compare-add-status")).to_contain_text("stored: 'mine', 3 prompts")
        expect(page.locator("#compare-set input")).to_have_value("mine")
        choose_samplers(page, {"best_of_n", "mcts"})
        pick_engines(page, ["toy:abc"])
        fill(page, "compare-reward", "length")
        fill(page, "compare-sizes", "1,2")
        set_value(page, "compare-prompts", 3)
        set_value(page, "compare-tokens", 8)
        page.locator("#compare-run").click()
        expect(page.locator("#compare-status")).to_contain_text("done: sweep 1, 12/12 cells", timeout=WAIT_MS)
        expect(page.locator("#compare-plot .scatterlayer .point")).to_have_count(4)  # 2 samplers x 2 sizes
        assert {c["arm"] for c in cell_rows(db, 1)} == {"best_of_n", "mcts"}

        choose_set(page, "digits")
        choose_samplers(page, {"fk_steering", "dts"})
        pick_engines(page, [])
        fill(page, "compare-reward", "")
        fill(page, "compare-sizes", "2,4")
        set_value(page, "compare-prompts", 2)
        page.locator("#compare-run").click()
        expect(page.locator("#compare-status")).to_contain_text("done: sweep 2, 8/8 cells", timeout=WAIT_MS)
        expect(page.locator("#compare-plot .scatterlayer .point")).to_have_count(4)
        cells = cell_rows(db, 2)
        assert {c["arm"] for c in cells} == {"fk_steering", "dts"} and all(c["nfe"] > 0 for c in cells)

        page.locator("#compare-report").click()
        expect(page.locator("#compare-file a[download]")).to_have_count(1)
        with page.expect_download() as download:
            page.locator("#compare-file a[download]").click()
        report = tmp_path / "sweep.html"
        download.value.save_as(str(report))
        assert not errors, errors
        context.close()
    offline, context, errors, requests = open_report_offline(browser, report)
    check_offline_report(offline, errors, requests, min_plots=4)  # the sweep; each arm's tree; FK's particles
    expect(offline.locator("h1")).to_contain_text("dts, fk_steering")
    assert offline.locator("table img[src^='data:image/png;base64,']").count() >= 1  # example picks are digits
    context.close()
    db.close()


def test_a_run_report_renders_offline_and_escapes_model_text(browser, tmp_path):
    from app.cli import main
    from tests.storage.storage_helpers import make_trace

    db = open_db(tmp_path / "report.db")
    texts = list(XSS_PAYLOADS) + ["plain answer"]
    trace = make_trace(texts, [0.1, 0.9, 0.4, 0.2, 0.7], picks=[1], matches=[(0, 1, 1), (2, 3, 2), (1, 2, 1)])
    from storage import save_run

    run_id = db.write(lambda s: save_run(s, trace=trace, task={"prompt": "<script>window.__xss=2</script>"},
                                         model="toy:abc", reward="toy", sampler="knockout", config={"n": 5}, seed=0))
    out = tmp_path / "run.html"
    assert main(["report", f"run:{run_id}", "--out", str(out), "--db", f"sqlite:///{tmp_path / 'report.db'}"]) == 0
    page, context, errors, requests = open_report_offline(browser, out)
    check_offline_report(page, errors, requests, min_plots=3)  # tree, rewards, bracket
    body = page.locator("body").inner_text()
    for payload in XSS_PAYLOADS:
        assert payload in body  # shown as text, not run
    assert "<script>window.__xss=2</script>" in body
    context.close()
    db.close()
