"""The Data tab's "Audit a reward" panel in headless Chromium: the exact verifier audited on two arith
prompts shows its controls (no master key passes it, one-vs-many 1.000) with the three figures; an unknown
reward is one line and draws nothing."""

from __future__ import annotations

import os

import pytest

from tests.app.helpers import CHROMIUM, CHROMIUM_ARGS, launched, open_db

pytestmark = [pytest.mark.browser, pytest.mark.model]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    pytest.skip("the playwright package is not installed (pip install -e '.[dev]')", allow_module_level=True)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"{CHROMIUM} is missing (make system-deps installs Debian's chromium)", allow_module_level=True)


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_audit_a_reward_in_the_data_tab(tmp_path):
    from app.ui.services import Services

    db = open_db(tmp_path / "app.db")
    services = Services(db=db, default_model="embedded:arith", device="cpu")
    with launched(services) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        expect.set_options(timeout=300_000)
        page.goto(url)
        page.get_by_role("tab", name="Data", exact=True).click()
        page.get_by_text("Audit a reward (master keys").click()
        page.locator("#audit-reward textarea, #audit-reward input").first.fill("nope")
        page.locator("#audit-run").click()
        expect(page.locator("#audit-summary")).to_contain_text("unknown reward")
        assert len(page.locator("#audit-summary").inner_text().strip().splitlines()) == 1
        expect(page.locator("#audit-keys .js-plotly-plot")).to_have_count(0)

        page.locator("#audit-reward textarea, #audit-reward input").first.fill("math")
        set_slider(page, "audit-n", 2)
        set_slider(page, "audit-limit", 2)
        page.locator("#audit-run").click()
        summary = page.locator("#audit-summary")
        expect(summary).to_contain_text("2 prompts")
        expect(summary.locator("tr", has_text="master-key false positives")).to_contain_text("0.000")
        expect(summary.locator("tr", has_text="one-vs-")).to_contain_text("1.000")
        for plot in ("audit-keys", "audit-accuracy", "audit-bon"):
            expect(page.locator(f"#{plot} .js-plotly-plot")).to_have_count(1)
        browser.close()
    assert not errors, f"uncaught errors in the page: {errors}"
    db.close()
