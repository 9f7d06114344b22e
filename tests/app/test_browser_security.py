"""Hostile stored data and identities in a real browser (headless Chromium, a toy model: no model load).

* A run stored with a payload in every field (ids, names, status, images), and votes by
  annotators whose names are payloads (the page-covering ``<div style="position:fixed">``
  among them): opening the run by its link, clicking its candidates and the Data tab show
  them as text; nothing runs, nothing covers the page.
* A guest id is the server's (guest- and 12 hex digits, signed); a reload keeps it.
"""

from __future__ import annotations

import os

import pytest

from tests.app.helpers import CHROMIUM, CHROMIUM_ARGS, launched, open_db

pytestmark = [pytest.mark.browser]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover
    pytest.skip("the playwright package is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (make system-deps installs Debian's chromium)", allow_module_level=True)

OVERLAY = '<div style="position:fixed;inset:0;z-index:9999;background:#c00">expired</div>'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.ui.services import Services

    db = open_db(tmp_path_factory.mktemp("browser-security") / "app.db")
    with launched(Services(db=db, default_model="toy:abc")) as url:
        yield url, db
    db.close()


@pytest.fixture
def page(tmp_path_factory):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
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
        browser.close()
    assert not errors and not dialogs, (errors, dialogs)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    expect(page.locator("[role=tab][aria-selected=true]")).to_have_text(name)


def assert_nothing_live(page) -> None:
    assert page.evaluate("window.__xss") is None
    assert page.locator("script:has-text('alert'), script:has-text('__xss')").count() == 0
    assert page.locator("[onerror], [onload], [onmouseover], a[href^='javascript' i], iframe").count() == 0
    fixed = page.evaluate("""[...document.querySelectorAll('body *')].filter(e =>
        getComputedStyle(e).position === 'fixed' && e.textContent.includes('expired')).length""")
    assert fixed == 0, "a stored payload covers the page"


def test_a_hostile_stored_run_and_hostile_annotators_show_as_text(page, server):
    from storage import add_vote, make_comparisons, save_run
    from tests.app.test_hostile_render import HOSTILE, hostile_trace

    url, db = server
    names = [p.replace("\n", " ").strip()[:190] for p in HOSTILE]
    run_id = db.write(lambda s: save_run(s, trace=hostile_trace(), task={"prompt": OVERLAY}, model=names[1],
                                         reward=names[2], sampler=OVERLAY, config={}, seed=0))
    (cid,) = db.write(lambda s: make_comparisons(s, run_id, "max_min", count=1))
    for k, who in enumerate([OVERLAY, names[2], names[3]]):
        db.write(lambda s, who=who, k=k: add_vote(s, comparison_id=cid, annotator=who, outcome=["a", "b", "tie"][k],
                                                  idempotency_key=f"hostile-{k}"))

    page.goto(f"{url}?run={run_id}")
    expect(page.locator("#runs-header")).to_contain_text(OVERLAY)  # the name, as text
    expect(page.locator("#runs-detail")).to_contain_text("picked")
    assert_nothing_live(page)
    rows = page.locator("#runs-candidates [role=row][data-index]")
    for k in range(min(4, rows.count())):
        rows.nth(k).locator("[role=gridcell]").nth(1).click()
        expect(page.locator("#runs-detail code")).to_have_count(1)
        assert_nothing_live(page)

    open_tab(page, "Data")
    page.locator("#data-refresh").click()
    expect(page.locator("#data-annotators")).to_contain_text("expired")
    expect(page.locator("#data-annotators")).to_contain_text("<div style=")
    assert_nothing_live(page)


def test_a_guest_id_is_issued_by_the_server(page, server):
    """The page shows the id the server signed (guest- and 12 hex digits) and keeps it over a reload; a
    client-chosen value is replaced by a signed one (tested over HTTP in test_security.py, since Gradio
    encrypts the browser's stored value)."""
    import re

    url, _ = server
    page.goto(url)
    open_tab(page, "Label")
    expect(page.locator("#label-who")).to_have_text(re.compile(r"^\s*Labelling as guest-[0-9a-f]{12}\s*$"))
    # Read the id alone: while Gradio refreshes the block its inner text also holds a timer ("0.1s").
    first = re.search(r"guest-[0-9a-f]{12}", page.locator("#label-who").inner_text()).group(0)
    page.reload()
    open_tab(page, "Label")
    # the signed token survives a reload
    expect(page.locator("#label-who")).to_have_text(re.compile(rf"^\s*Labelling as {first}\s*$"))
