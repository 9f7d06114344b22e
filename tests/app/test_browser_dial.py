"""The Explore tab's direction dial in headless Chromium (Playwright), on toy:digits (no SmolLM2 needed).

Moving the angle slider writes ``direction:θ:R1,R2`` into the Reward box; "Trace the front" runs
best-of-N at three angles and draws the picks and the front, with a table row per angle; bad
angles give one line. The same handler is also driven without a browser (runs wherever the suite does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.helpers import launched, open_db
from tests.engines.test_pareto import HIGH, LOW


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.ui.services import Services

    db = open_db(tmp_path_factory.mktemp("dial") / "app.db")
    with launched(Services(db=db, default_model="toy:digits", device="cpu")) as url:
        yield url
    db.close()


@pytest.mark.browser
def test_the_dial_sets_the_reward_and_traces_the_front(server, browser) -> None:
    expect = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright").expect
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


def test_the_dial_handler_without_a_browser(services) -> None:
    """The Trace handler itself: bad input is one line and draws nothing; a trace ends with the front and a row per angle."""
    import gradio as gr

    from app.ui.explore import ExploreTab
    from tests.app.helpers import explore_args

    with gr.Blocks():
        tab = ExploreTab(services)
    dial = tab.dial
    values = explore_args(tab, model="toy:digits", prompt="n?")[8:]
    bad = list(dial.trace("toy:digits", "best_of_n", "n?", True, 0, "sentiment", "0,90", *values))
    assert len(bad) == 1 and set(bad[0]) == {dial.status} and "exactly 2 rewards" in bad[0][dial.status]
    updates = list(dial.trace("toy:digits", "best_of_n", "n?", True, 0, f"{HIGH},{LOW}", "0,45,90", *values))
    last = updates[-1]
    assert "traced 3 angles" in last[dial.status]
    assert [row[0] for row in last[dial.table]] == [0, 45, 90]
    assert sum("tracing…" in u.get(dial.status, "") for u in updates) == 3  # progress after each angle
    assert dial.spec(30, f"{HIGH},{LOW}")[tab.reward] == f"direction:30:{HIGH},{LOW}"
