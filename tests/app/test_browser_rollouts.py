"""The Train (RL) tab in headless Chromium: a tiny real training run on the embedded arith policy.

Bad input is refused in the page's words; a run of 8 samples (GRPO, groups of 2, 2 prompts per batch)
shows its batch grid and its curves; a second run is cancelled after its first update and resumed
from its checkpoint to a larger budget.
"""

from __future__ import annotations

import re

import pytest

from tests.app.helpers import launched, open_db

pytestmark = [pytest.mark.browser, pytest.mark.model]

# importing test_browser skips this module where it is skipped (no playwright, no chromium)
import tests.app.test_browser as shared  # noqa: E402, I001
from playwright.sync_api import expect  # noqa: E402

browser, page = shared.browser, shared.page
open_tab, set_number = shared.open_tab, shared.set_number

WAIT_MS = 300_000


@pytest.fixture
def server(tmp_path):
    from app.ui.services import Services

    db = open_db(tmp_path / "app.db")
    with launched(Services(db=db, default_model="toy:abc", device="cpu")) as url:
        yield url
    db.close()


def tiny(page, name: str, budget: int) -> None:
    """A run that fits a loaded machine: 2 prompts x 2 samples a batch, short rollouts, 4 held-out prompts."""
    page.locator("#rl-name input, #rl-name textarea").first.fill(name)
    set_number(page, "rl-budget", budget)
    set_number(page, "rl-eval-size", 4)
    set_number(page, "rl-grpo-group_size", 2)
    set_number(page, "rl-grpo-prompts_per_batch", 2)
    set_number(page, "rl-grpo-max_new_tokens", 12)


def test_train_tab_runs_cancels_and_resumes(server, page):
    page.goto(server)
    open_tab(page, "Train (RL)")
    status = page.locator("#rl-status")

    tiny(page, "first", 0)
    page.locator("#rl-start").click()
    expect(status).to_contain_text("Budget: samples must be at least 1")

    set_number(page, "rl-budget", 8)
    page.locator("#rl-start").click()
    expect(status).to_contain_text("budget: 2 updates, 8 samples", timeout=WAIT_MS)
    grid = page.locator("#rl-grid")
    expect(grid).to_contain_text("groups kept")
    expect(grid).to_contain_text("(n=2)")  # each prompt row with its sample count
    expect(grid.locator(".heatmaplayer").first).to_be_attached()
    curves = page.locator("#rl-curves")
    expect(curves).to_contain_text("Held-out accuracy")
    assert curves.locator(".scatterlayer .point").count() > 0

    page.locator("#rl-start").click()  # the same name again: refused, nothing overwritten
    expect(status).to_contain_text("exists; press Resume")

    tiny(page, "second", 2000)  # far more than it runs before the cancel lands
    page.locator("#rl-start").click()
    # a checkpoint is written per update; the throttled status may skip a count
    expect(status).to_contain_text(re.compile(r"running… [1-9]\d* updates"), timeout=WAIT_MS)
    page.locator("#rl-cancel").click()
    expect(status).to_contain_text("cancelled", timeout=WAIT_MS)
    expect(status).to_contain_text("Resume continues this run")
    # every update was checkpointed (checkpoint_every 1); on a loaded machine the cancel may land a few updates late
    updates = int(re.search(r"cancelled: (\d+) updates", status.inner_text()).group(1))
    assert updates >= 1

    set_number(page, "rl-budget", 4 * updates + 4)  # room for one more update of 2 x 2 samples
    page.locator("#rl-resume").click()
    expect(status).to_contain_text(f"budget: {updates + 1} updates, {4 * updates + 4} samples", timeout=WAIT_MS)
    expect(page.locator("#rl-grid")).to_contain_text(f"update {updates + 1}:")


def test_rollouts_only_and_compare_strategies_in_the_train_tab(server, page):
    """Rollouts only: the batch grid and the kept share, no update. Compare strategies: GRPO and RAFT, one seed,
    4 samples each, drawn with their curves and the table at the budget (that a comparison continues where
    it stopped is tested through the CLI, tests/training/test_compare.py)."""
    from tests.app.test_browser_truth import choose

    page.goto(server)
    open_tab(page, "Train (RL)")
    tiny(page, "peek", 4)
    set_number(page, "rl-eval-size", 2)
    choose(page, "rl-strategy", "RAFT")
    for field, value in (("group_size", 2), ("prompts_per_batch", 2), ("max_new_tokens", 12)):
        set_number(page, f"rl-raft-{field}", value)
    choose(page, "rl-strategy", "GRPO")

    page.locator("#rl-rollouts-only input[type=checkbox]").check()
    page.locator("#rl-start").click()
    status = page.locator("#rl-status")
    expect(status).to_contain_text("1 batches (rollouts only, no updates), 4 samples", timeout=WAIT_MS)
    expect(page.locator("#rl-grid")).to_contain_text("groups kept")
    expect(page.locator("#rl-curves")).to_contain_text("Kept share of samples")
    page.locator("#rl-rollouts-only input[type=checkbox]").uncheck()

    page.get_by_role("button", name=re.compile("^Compare strategies")).click()
    compare = page.locator("#rl-compare-status")
    expect(page.locator("#rl-compare-start")).to_be_visible()  # the section is open before its boxes are typed in
    set_number(page, "rl-compare-seeds", 0)
    page.locator("#rl-compare-start").click()
    expect(compare).to_contain_text("Seeds must be at least 1")
    set_number(page, "rl-compare-seeds", 1)
    page.locator("#rl-compare-start").click()
    expect(compare).to_contain_text("2/2 runs done", timeout=WAIT_MS)
    expect(compare).not_to_contain_text("running")
    plot = page.locator("#rl-compare-plot")
    expect(plot).to_contain_text("Held-out accuracy, T=1")
    expect(plot).to_contain_text("Kept share of samples")
    assert plot.locator(".scatterlayer .point").count() > 0
    rows = shared.table_rows(page, "rl-compare-table")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("grpo")
    expect(rows.nth(1)).to_contain_text("raft")
