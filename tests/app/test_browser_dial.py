"""The Explore tab's direction dial in headless Chromium (Playwright), on toy:digits (no SmolLM2 needed).

Moving the angle slider writes ``direction:θ:R1,R2`` into the Reward box; "Trace the front" runs
best-of-N at three angles and draws the picks and the front, with a table row per angle; bad
angles give one line and no plot.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.helpers import launched, open_db
from tests.engines.test_pareto import HIGH, LOW

pytestmark = [pytest.mark.browser]
expect = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright").expect


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.ui.services import Services

    db = open_db(tmp_path_factory.mktemp("dial") / "app.db")
    with launched(Services(db=db, default_model="toy:digits", device="cpu")) as url:
        yield url
    db.close()


def test_the_dial_sets_the_reward_and_traces_the_front(server, browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.locator("#explore-prompt textarea").fill("n?")
    page.get_by_text("Direction dial (DPA)").click()
    page.locator("#dial-rewards textarea, #dial-rewards input").first.fill(f"{HIGH},{LOW}")
    slider = page.locator("#dial-angle input[type=range]")
    slider.focus()
    page.keyboard.press("ArrowLeft")  # 45 -> 44
    expect(page.locator("#explore-reward input")).to_have_value(f"direction:44:{HIGH},{LOW}")

    page.locator("#dial-angles textarea, #dial-angles input").first.fill("0,100")
    page.locator("#dial-trace").click()
    expect(page.locator("#dial-status")).to_contain_text("[0, 90]")

    page.locator("#dial-angles textarea, #dial-angles input").first.fill("0,45,90")
    page.locator("#dial-trace").click()
    expect(page.locator("#dial-status")).to_contain_text("traced 3 angles", timeout=180_000)
    expect(page.locator("#dial-plot .scatterlayer .point")).to_have_count(3)
    expect(page.locator("#dial-table [role=row][data-index]")).to_have_count(3)
    artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    page.locator("#dial").screenshot(path=str(artifacts / "dial.png"))
    context.close()
    assert not errors, errors
