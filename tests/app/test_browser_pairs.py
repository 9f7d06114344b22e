"""The Data tab's "Build training pairs" in headless Chromium: a sweet-spot grid cell on a toy model,
the pair drawn on the reward plot, the 21-cell table, the pairs table and the JSONL download."""

from __future__ import annotations

import os

import pytest

from tests.app.helpers import CHROMIUM, CHROMIUM_ARGS, launched, open_db

pytestmark = [pytest.mark.browser]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("the playwright package is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (make system-deps installs Debian's chromium)", allow_module_level=True)

GRADED = "1*regex:a + 1*regex:aa + 0.5*regex:c + 0.3*regex:b"


def test_build_pairs_in_the_data_tab(tmp_path):
    from app.ui.services import Services

    db = open_db(tmp_path / "app.db")
    services = Services(db=db, default_model="toy:abc", device="cpu")
    with launched(services) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        expect.set_options(timeout=120_000)
        page.goto(url)
        page.get_by_role("tab", name="Data", exact=True).click()
        page.locator("#pairs-model textarea, #pairs-model input").first.fill("toy:abc")
        page.locator("#pairs-reward textarea, #pairs-reward input").first.fill(GRADED)
        limit = page.locator("#pairs-limit input[type=number]")
        limit.fill("3")
        limit.press("Enter")
        n = page.locator("#pairs-n input[type=number]")
        n.fill("12")
        n.press("Enter")
        page.locator("#pairs-build").click()
        expect(page.locator("#pairs-status")).to_contain_text("kept")
        expect(page.locator("#pairs-status")).to_contain_text("grid:max/mu-2sigma")
        expect(page.locator("#pairs-plot .js-plotly-plot")).to_have_count(1)
        expect(page.locator("#pairs-plot .legendtext", has_text="chosen")).to_have_count(1)
        expect(page.locator("#pairs-grid .js-plotly-plot")).to_have_count(1)
        expect(page.locator("#pairs-table [role=row][data-index]").first).to_be_visible()
        expect(page.locator("#pairs-file a[download]")).to_have_count(1)
        browser.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    assert db.check().counts["comparisons"] >= 1
    db.close()
