"""The real app in headless Chromium (Playwright), with the embedded SmolLM2 and a real SQLite file.

Loads the page, runs best-of-N on the embedded model and sees the tree and the histogram render,
labels three pairs by keyboard and finds the votes in the database, opens a run by its link, and
plants XSS payloads in stored candidates to check that nothing runs. Screenshots of each tab go to
tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.app.helpers import CHROMIUM, CHROMIUM_ARGS, XSS_IMG, XSS_PAYLOADS, launched, open_db, store_run

pytestmark = [pytest.mark.browser, pytest.mark.model]

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("the playwright package is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (make system-deps installs Debian's chromium)", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_MS = 300_000  # the embedded model decodes a few tokens a second on a busy CPU


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.ui.services import Services

    db = open_db(tmp_path_factory.mktemp("browser") / "app.db")
    services = Services(db=db, default_model="embedded:smollm2", device="cpu")
    services.preload()
    with launched(services) as url:
        yield url, db
    db.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser profile (so a fresh guest annotator id); uncaught page errors and dialogs fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert not dialogs, f"dialogs opened: {dialogs}"


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    expect(page.locator("[role=tab][aria-selected=true]")).to_have_text(name)


def set_number(page, elem_id: str, value: int) -> None:
    """Type ``value`` into a number box and commit it (Enter, then leaving the box). A box that was just
    revealed (an accordion opening) can be mounted again right after the fill, with its old value: the
    value is read back after a moment and typed again until it holds (a CI run's compare started with
    the default seeds where the test had typed 0)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        box.press("Tab")
        page.wait_for_timeout(250)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"#{elem_id} did not keep the value {value}: it reads {box.input_value()!r}")


def plot_points(page, elem_id: str, layer: str = "scatterlayer") -> int:
    return page.locator(f"#{elem_id} .{layer} .point").count()


def table_rows(page, elem_id: str):
    return page.locator(f"#{elem_id} [role=row][data-index]")  # gr.Dataframe's body rows (a grid of divs)


def hover_point(page, point):
    """Move the mouse onto a plotly point until its hover box shows (a move plotly misses is retried)."""
    point.scroll_into_view_if_needed()  # the mouse only reaches what is on screen
    box = point.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    hover = page.locator(".hoverlayer .hovertext")
    for _ in range(10):
        page.mouse.move(x - 40, y - 40)
        page.mouse.move(x, y, steps=4)
        try:
            hover.first.wait_for(state="attached", timeout=2_000)
            return hover.first
        except PlaywrightTimeout:
            continue
    raise AssertionError("plotly showed no hover box")


def annotator(page) -> str:
    expect(page.locator("#label-who")).to_contain_text("guest-")
    return re.search(r"guest-\w+", page.locator("#label-who").inner_text()).group(0)


def assert_no_xss(page) -> None:
    assert page.evaluate("window.__xss") is None
    assert page.locator("script:has-text('__xss')").count() == 0
    assert page.locator("[onerror], [onmouseover], a[href^='javascript' i]").count() == 0


# -- Explore ---------------------------------------------------------------------------------------------------


def test_best_of_n_on_the_embedded_model_renders_tree_and_histogram(page, server):
    from storage import load_run

    url, db = server
    page.goto(url)
    expect(page.locator("#explore-model input")).to_have_value("embedded:smollm2")
    set_number(page, "explore-best_of_n-n", 4)
    set_number(page, "explore-best_of_n-max_new_tokens", 16)
    page.locator("#explore-prompt textarea").fill("Write one sentence about a rainy Monday morning.")
    # every status the page shows, to prove the run streamed into it before it finished
    page.evaluate("""() => { window.__statuses = [];
        new MutationObserver(() => window.__statuses.push(document.querySelector('#explore-status').innerText))
          .observe(document.querySelector('#explore-status'), {subtree: true, childList: true, characterData: true}); }""")
    page.locator("#explore-run").click()
    expect(page.locator("#explore-link")).to_contain_text("Saved as run", timeout=WAIT_MS)
    statuses = page.evaluate("window.__statuses")
    assert any(s.startswith("running…") for s in statuses) and any("ok: 4/4 candidates" in s for s in statuses)

    expect(page.locator("#explore-status")).to_contain_text("ok: 4/4 candidates")
    assert plot_points(page, "explore-tree") == 5 + 1  # the root, 4 candidates, the pick's star
    assert plot_points(page, "explore-rewards") == 4 and plot_points(page, "explore-rewards", "barlayer") >= 1
    expect(table_rows(page, "explore-candidates")).to_have_count(4)

    run_id = int(re.search(r"Saved as run (\d+)", page.locator("#explore-link").inner_text()).group(1))
    stored = db.read(lambda s: load_run(s, run_id))
    assert (stored.model, stored.sampler, stored.status) == ("embedded:smollm2", "best_of_n", "ok")
    assert stored.config["n"] == 4 and stored.config["max_new_tokens"] == 16 and len(stored.candidates) == 4
    expect(page.locator("#explore-detail code").first).to_have_text(stored.trace.selected[0])
    shoot(page, "explore")


# -- Runs: a run by its link ---------------------------------------------------------------------------------


def test_a_run_link_opens_the_runs_tab_and_replays_it(page, server):
    url, db = server
    run_id = store_run(db, ["alpha", "beta", "gamma", "delta", "epsilon"], [0.1, 0.9, 0.4, -0.2, 0.3],
                       sampler="knockout", pick=1)
    page.goto(f"{url}?run={run_id}")
    expect(page.locator("[role=tab][aria-selected=true]")).to_have_text("Runs")
    expect(page.locator("#runs-header")).to_contain_text(f"Run {run_id}: knockout")
    expect(page.locator("#runs-cost")).to_contain_text("status: ok")  # the replay's last frame
    assert plot_points(page, "runs-tree") == 6 + 1 and plot_points(page, "runs-rewards") == 5
    expect(table_rows(page, "runs-candidates").first).to_contain_text("beta")
    expect(page.locator("#runs-detail")).to_contain_text("picked")
    shoot(page, "runs")
    open_tab(page, "Label")
    open_tab(page, "Runs")
    expect(page.locator("[role=tablist] [role=tab]")).to_have_text(["Explore", "Runs", "Label", "Data", "Compare", "Train (RL)", "Tour"])

    page.goto(f"{url}?run=abc")
    expect(page.locator("#runs-header")).to_contain_text("no run 'abc'")


# -- Label: three pairs by keyboard ------------------------------------------------------------------------


def test_label_three_pairs_by_keyboard_and_find_the_votes(page, server):
    from storage import present, vote_history

    url, db = server
    runs = [store_run(db, [f"answer {k} is kind", f"answer {k} is rude"], [0.8, -0.5], prompt=f"Question {k}?")
            for k in range(3)]
    page.goto(url)
    open_tab(page, "Label")
    who = annotator(page)
    before = db.check().counts["comparisons"]
    page.get_by_role("button", name=re.compile("^Make pairs from stored runs")).click()  # the accordion
    page.get_by_label("Run ids").fill(", ".join(map(str, runs)))
    page.locator("#label-make").click()
    expect(page.locator("#label-made")).to_have_text("made 3 comparison(s) from 3 run(s)")
    comparisons = list(range(before + 1, before + 4))
    assert db.check().counts["comparisons"] == before + 3

    for k, key in enumerate("123"):
        expect(page.locator("#label-progress")).to_have_text(f"{k} done, {3 - k} to go")
        expect(page.locator("#label-prompt")).to_contain_text(f"Question {k}?")
        sides = page.locator("#label-left").inner_text() + page.locator("#label-right").inner_text()
        assert "kind" in sides and "rude" in sides and "0.8" not in sides  # blind: no rewards before the vote
        if k == 2:
            shoot(page, "label")
            page.locator("#label-rationale textarea").fill("kind beats 2 rude")  # a digit typed here votes nothing
            page.locator("#label-prompt").click()
        page.keyboard.press(key)
        expect(page.locator("#label-stored")).to_contain_text("Vote stored")
        if k == 0:  # the reveal waits in its own closed box, away from the next blind pair
            page.get_by_role("button", name=re.compile("^Previous pair, revealed")).click()
        expect(page.locator("#label-reveal")).to_contain_text(f"Question {k}?")  # revealed after the vote, naming its pair
        expect(page.locator("#label-reveal")).to_contain_text("reward 0.8")
    expect(page.locator("#label-progress")).to_have_text("3 done, 0 to go")
    page.reload()  # the guest id lives in this browser: a reload is the same annotator, with the same progress
    open_tab(page, "Label")
    assert annotator(page) == who
    expect(page.locator("#label-progress")).to_have_text("3 done, 0 to go")

    for cid, choice in zip(comparisons, ["left", "right", "tie"], strict=True):
        history = db.read(lambda s, cid=cid: vote_history(s, cid, who))
        assert [v.outcome for v in history] == [db.read(lambda s, cid=cid: present(s, cid)).outcome(choice)]


# -- untrusted model output ----------------------------------------------------------------------------------


def test_the_xss_check_would_catch_a_live_payload(browser):
    control = browser.new_page()
    control.set_content(f"<p>{XSS_IMG}</p>")
    control.wait_for_function("window.__xss === 1")  # the same payload, unsanitised, does run here
    control.close()


def test_xss_payloads_in_stored_candidates_show_as_text(page, server):
    from storage import make_comparisons

    url, db = server
    combined = "\n\n".join(XSS_PAYLOADS)
    run_id = store_run(db, [combined, *XSS_PAYLOADS], [0.9, 0.1, 0.2, 0.3, 0.4], prompt=f"Prompt {XSS_IMG}", pick=0,
                       model=f"hf:{XSS_IMG}")  # a model spec is typed by a user: untrusted too
    page.goto(f"{url}?run={run_id}")
    expect(page.locator("#runs-cost")).to_contain_text("status: ok")
    expect(page.locator("#runs-header")).to_contain_text(f"hf:{XSS_IMG}")
    detail = page.locator("#runs-detail")
    for payload in XSS_PAYLOADS:
        expect(detail).to_contain_text(payload)
    assert detail.locator(".prose").count() == 1 and detail.locator(".prose :is(img, script, div, [style])").count() == 0
    hover = hover_point(page, page.locator("#runs-tree .scatterlayer .trace").last.locator(".point"))
    expect(hover).to_contain_text("<script>window.__xss=1</script>")  # plotly's hover box for the pick
    table_rows(page, "runs-candidates").nth(2).locator("[role=gridcell]").nth(1).click()
    expect(detail.locator("code")).not_to_have_text("n0")
    assert_no_xss(page)

    open_tab(page, "Label")
    who = annotator(page)
    db.write(lambda s: make_comparisons(s, run_id, "max_min", assign_to=[who]))
    page.goto(url)  # the same browser, so the same guest, now with a pair in its queue
    open_tab(page, "Label")
    expect(page.locator("#label-prompt")).to_contain_text(f"Prompt {XSS_IMG}")
    sides = page.locator("#label-left").inner_text() + page.locator("#label-right").inner_text()
    assert all(payload in sides for payload in XSS_PAYLOADS)  # max_min: the all-payloads text against <script>
    assert page.locator("#label-left img, #label-right img, #label-prompt img").count() == 0
    page.locator("#label-left").hover()
    page.locator("#label-right").hover()
    shoot(page, "label-xss")
    page.keyboard.press("1")
    expect(page.locator("#label-stored")).to_contain_text("Vote stored")
    page.get_by_role("button", name=re.compile("^Previous pair, revealed")).click()
    expect(page.locator("#label-reveal")).to_contain_text("Your vote: **A**".replace("**", ""))
    assert_no_xss(page)


# -- Data and Compare ---------------------------------------------------------------------------------------


def test_data_and_compare_tabs_render(page, server):
    from storage import add_vote, compare_runs, present

    url, db = server
    ids = [store_run(db, [f"{name} line"], [k / 2], prompt="A shared prompt.", sampler=name)
           for k, name in enumerate(["best_of_n", "knockout", "rejection"])]
    comparisons = db.write(lambda s: compare_runs(s, ids))
    for k, cid in enumerate(comparisons):
        db.write(lambda s, cid=cid, k=k: add_vote(s, comparison_id=cid, annotator="data-test",
                                                  outcome=present(s, cid).outcome("left"), idempotency_key=f"d{k}"))
    page.goto(url)
    open_tab(page, "Data")
    page.locator("#data-refresh").click()
    expect(page.locator("#data-counts")).to_contain_text(f"{db.check().counts['votes']} votes")
    expect(page.locator("#data-ranking .js-plotly-plot")).to_have_count(1)
    assert plot_points(page, "data-ranking") == 3  # one point per sampler
    expect(page.locator("#data-agreement .js-plotly-plot")).to_have_count(1)
    page.locator("#export-dpo-jsonl").click()
    expect(page.locator("#data-file a[download]")).to_have_count(1)
    with page.expect_download() as download:
        page.locator("#data-file a[download]").click()
    assert download.value.suggested_filename == "samplescope-dpo.jsonl"
    rows = Path(download.value.path()).read_text(encoding="utf-8").splitlines()
    assert len(rows) >= len(comparisons) and all(json.loads(row)["prompt"] for row in rows)
    shoot(page, "data")

    open_tab(page, "Compare")
    engines = page.locator("#compare-engines input").first  # a multiselect: type a spec, Enter adds it
    engines.fill("toy:abc")
    engines.press("Enter")
    engines.press("Escape")
    page.locator("#compare-reward textarea, #compare-reward input[type=text]").first.fill("length")
    set_number(page, "compare-prompts", 2)
    page.locator("#compare-run").click()
    expect(page.locator("#compare-status")).to_contain_text("/16 cells", timeout=WAIT_MS)
    expect(page.locator("#compare-status")).to_contain_text("done: sweep", timeout=WAIT_MS)
    assert plot_points(page, "compare-plot") == 8  # best-of-N and majority at sizes 1, 2, 4, 8
    shoot(page, "compare")
