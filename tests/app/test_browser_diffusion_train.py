"""The Train (RL) tab's diffusion side in headless Chromium: a tiny real DPOK run on the digits DDPM.

Picking embedded:digits swaps the text controls for the diffusion section (the scheme picker offers
the registry's schemes); bad input is refused in the page's words; a run (2 samples a batch, 4
denoising steps) shows its before/after sample grids as images, its reward / held-out / KL curves
and the denoising rollout; it is cancelled and then resumed from its checkpoint to a budget.
"""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.model]

# importing test_browser skips this module where it is skipped (no playwright, no chromium)
import tests.app.test_browser as shared  # noqa: E402, I001
from playwright.sync_api import expect  # noqa: E402

import tests.app.test_browser_rollouts as rollouts_test  # noqa: E402

browser, page = shared.browser, shared.page
server = rollouts_test.server  # the same app as the text side's test
open_tab, set_number = shared.open_tab, shared.set_number

WAIT_MS = 300_000


def test_diffusion_training_runs_cancels_and_resumes(server, page):
    from engines.training.diffusion import SCHEMES
    from tests.app.test_browser_truth import choose, offered

    page.goto(server)
    open_tab(page, "Train (RL)")
    expect(page.locator("#dt-section")).to_be_hidden()
    choose(page, "rl-policy", "embedded:digits")
    expect(page.locator("#dt-section")).to_be_visible()
    expect(page.locator("#rl-start")).to_be_hidden()  # the text run's controls give way
    assert len(offered(page, "dt-scheme")) == len(list(SCHEMES.items()))
    page.keyboard.press("Escape")

    status = page.locator("#dt-status")
    page.locator("#rl-name input, #rl-name textarea").first.fill("digits-1")
    set_number(page, "rl-budget", 0)
    page.locator("#dt-start").click()
    expect(status).to_contain_text("Budget: samples must be at least 1")

    set_number(page, "rl-budget", 2000)  # far more than it runs before the cancel lands
    set_number(page, "rl-eval-size", 4)
    set_number(page, "rl-eval-every", 1)
    set_number(page, "dt-dpok-batch_size", 2)
    page.locator("#dt-dpok-steps input, #dt-dpok-steps textarea").first.fill("4")  # optional: a text box
    page.locator("#dt-start").click()
    expect(status).to_contain_text(re.compile(r"running… [1-9]\d* updates"), timeout=WAIT_MS)
    grids = page.locator("#dt-grids")
    expect(grids).to_contain_text("Before: first batch")
    expect(grids.locator("img[src^='data:image/png']").first).to_be_attached()
    curves = page.locator("#dt-curves")
    expect(curves).to_contain_text("Held-out k-NN check")
    expect(curves).to_contain_text("KL to the base model")
    expect(page.locator("#dt-rollout")).to_contain_text("stochastic step")
    page.locator("#dt-cancel").click()
    expect(status).to_contain_text("cancelled", timeout=WAIT_MS)
    expect(status).to_contain_text("Resume continues this run")
    updates = int(re.search(r"cancelled: (\d+) updates", status.inner_text()).group(1))
    assert updates >= 1
    assert curves.locator(".scatterlayer .point").count() > 0

    set_number(page, "rl-budget", 2 * updates + 2)  # room for one more update of 2 samples
    page.locator("#dt-resume").click()
    expect(status).to_contain_text(f"budget: {updates + 1} updates, {2 * updates + 2} samples", timeout=WAIT_MS)
    expect(status).to_contain_text("trained model: diffusers:")
    expect(grids).to_contain_text(f"After: update {updates + 1}'s batch")
