"""What the page shows must be true (issue 22, items 5-10 and the Tour), in headless Chromium.

The real app on a real SQLite file, driven as a user would: model text shown verbatim in Runs
and on both Label sides; an edited built-in prompt drops its stale reference answer; numbers out
of range refused in the page's words instead of clamped; cross-run pairs that let votes rank
samplers, with exports filtered by modality; the knockout's rewards and bracket explained; the
previous pair's identities gone from under the next blind pair; Data and Runs fresh after a vote
or a run; forms that offer only what applies to the chosen model; the Tour on the embedded models.
"""

from __future__ import annotations

import re

import pytest

from tests.app.helpers import launched, open_db, store_run

pytestmark = [pytest.mark.browser, pytest.mark.model]

# importing test_browser skips this module where it is skipped (no playwright, no chromium)
import tests.app.test_browser as shared  # noqa: E402, I001
from playwright.sync_api import expect  # noqa: E402

# the shared Chromium and a fresh watched page per test (page errors and dialogs fail it), as pytest fixtures
browser, page = shared.browser, shared.page
open_tab, set_number = shared.open_tab, shared.set_number

WAIT_MS = 240_000

MARKDOWNISH = "12*4=48 and 3*5=15\n#### 667\n    indented   spaces kept"
MARKDOWNISH_2 = "- not a list item\n**not bold** <b>not bold</b>"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.ui.services import Services

    db = open_db(tmp_path_factory.mktemp("truth") / "app.db")
    services = Services(db=db, default_model="toy:abc", device="cpu")
    with launched(services) as url:
        yield url, db
    db.close()


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` (its shown label) in a gr.Dropdown."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()


def offered(page, elem_id: str) -> list[str]:
    """The options a gr.Dropdown offers (opened, read, closed)."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill("")
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    names = [o.inner_text().replace("✓", "").strip() for o in options.all()]
    box.press("Escape")
    page.locator("body").click(position={"x": 5, "y": 5})
    return names


def make_pairs(page, run_ids: str, strategy: str | None = None) -> None:
    expect(page.locator("#label-who")).to_contain_text("guest-")  # the page load has given this browser its id
    accordion = page.get_by_role("button", name=re.compile("^Make pairs"))
    if not page.locator("#label-make").is_visible():
        accordion.click()
    if strategy is not None:
        choose(page, "label-strategy", strategy)
    page.get_by_label("Run ids").fill(run_ids)


def show_pair_on(page, prompt: str) -> None:
    """Skip the queue forward to the pair on ``prompt`` (earlier tests on this server left pairs in every guest's queue)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(20):
        try:  # the pair made a moment ago shows once the queue is read again
            expect(page.locator("#label-prompt")).to_contain_text(prompt, timeout=5_000)
            return
        except AssertionError:
            pass
        except PlaywrightTimeout:
            pass
        before = page.locator("#label-progress").inner_text()
        page.locator("#vote-skip").click()
        expect(page.locator("#label-progress")).not_to_have_text(before)
    raise AssertionError(f"no pair on {prompt!r} in the queue")


def run_count(db) -> int:
    from storage import list_runs

    return len(db.read(lambda s: list_runs(s, limit=1000)))


# -- 5: model text verbatim ----------------------------------------------------------------------------------------


def assert_verbatim(page, selector: str, written: str) -> None:
    pane = page.locator(selector)
    expect(pane).to_contain_text(written.split("\n")[0])  # "12*4=48", not "124=48" with an <em>
    expect(pane.locator("pre.model-text").first).to_be_visible()
    assert written in pane.locator("pre.model-text").all_inner_texts()
    assert pane.locator("pre.model-text *, h1, h2, h3, h4, h5, h6, em, li, b").count() == 0  # nothing interpreted


def test_model_text_is_shown_verbatim_in_runs_and_on_both_label_sides(page, server):
    url, db = server
    run_id = store_run(db, [MARKDOWNISH, MARKDOWNISH_2], [0.9, 0.1], prompt="What is *12*4*?\n# heading?")
    page.goto(f"{url}?run={run_id}")
    expect(page.locator("#runs-header")).to_contain_text(f"Run {run_id}")
    assert_verbatim(page, "#runs-detail", MARKDOWNISH)  # the pick's full text, as Explore's detail pane shows it

    open_tab(page, "Label")
    make_pairs(page, str(run_id))
    page.locator("#label-make").click()
    expect(page.locator("#label-made")).to_contain_text("made 1 comparison")
    expect(page.locator("#label-left pre.model-text")).to_be_visible()
    sides = page.locator("#label-left pre.model-text").inner_text() + "|" + page.locator("#label-right pre.model-text").inner_text()
    assert MARKDOWNISH in sides and MARKDOWNISH_2 in sides
    assert page.locator("#label-left, #label-right").locator("h4, em, strong, li, b").count() == 0
    assert "What is *12*4*?\n# heading?" in page.locator("#label-prompt pre.model-text").inner_text()


# -- 6: a built-in task's answer does not outlive its prompt ---------------------------------------------------------


def test_editing_a_built_in_prompt_detaches_its_reference_answer(page, server):
    from engines.tasks import get_task

    url, db = server
    page.goto(url)
    task = get_task("arith:0")
    choose(page, "explore-task", next(label for label in offered(page, "explore-task") if label.startswith("arith:0 ")))
    expect(page.locator("#explore-prompt textarea")).to_have_value(task.prompt)
    answer = page.get_by_label("Reference answer")
    expect(answer).to_have_value(task.answer)
    page.locator("#explore-prompt textarea").fill("Q: 2+3\n")
    expect(answer).to_have_value("")
    expect(answer).to_have_attribute("placeholder", "cleared: the prompt is no longer arith:0's; type the new answer here")
    expect(page.locator("#explore-task input")).to_have_value("")


# -- 7: out of range is refused in the page's words -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("explore-best_of_n-temperature", -3, "Temperature must be at least 0, got -3"),
        ("explore-best_of_n-n", 0, "N must be at least 1, got 0"),
        ("explore-best_of_n-max_new_tokens", 100000, "Max new tokens must be at most 4096, got 100000"),
        ("explore-seed", -1, "Seed must be at least 0, got -1"),
    ],
)
def test_numbers_out_of_range_are_refused_with_the_fields_label(page, server, field, value, message):
    url, db = server
    before = run_count(db)
    page.goto(url)
    set_number(page, field, value)
    page.locator("#explore-prompt textarea").fill("go")
    page.locator("#explore-run").click()
    expect(page.locator("#explore-status")).to_contain_text(message)
    status = page.locator("#explore-status").inner_text()
    assert "--" not in status and "\n" not in status.strip()  # one line, in the page's words, not a CLI flag
    expect(page.locator(f"#{field} input[type=number]").first).to_have_value(str(value))  # not clamped
    assert run_count(db) == before


# -- 10: forms show what applies to the model -------------------------------------------------------------------------


def test_forms_offer_only_what_applies_to_the_chosen_model(page, server):
    url, _ = server
    page.goto(url)
    text_samplers = offered(page, "explore-sampler")
    assert "Best-of-N" in text_samplers and "Beam search" in " ".join(text_samplers)
    assert not {"FK steering", "SVDD", "ReNO"} & {s.split(" (")[0] for s in text_samplers}
    form = page.locator("#explore-best_of_n-max_new_tokens")
    expect(form).to_be_visible()
    expect(page.locator("#explore-best_of_n-steps")).to_be_hidden()  # "Denoising steps" is not a text model's

    choose(page, "explore-model", "embedded:digits")
    expect(page.locator("#explore-best_of_n-steps")).to_be_visible()
    expect(page.locator("#explore-best_of_n-max_new_tokens")).to_be_hidden()
    expect(page.locator("#explore-best_of_n-temperature")).to_be_hidden()
    image_samplers = offered(page, "explore-sampler")
    assert "Best-of-N" in image_samplers
    assert not any(s.startswith(("Beam", "MCTS", "Knockout", "Majority")) for s in image_samplers)


# -- 8: votes that rank samplers; exports by modality -------------------------------------------------------------------


def png_uri(shade: int) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=shade).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def store_image_run(db, shades: list[int], *, sampler: str, prompt: str = "digit:3") -> int:
    from engines.trace import DoneEvent, NodeEvent, ScoreEvent, SelectEvent, Trace
    from storage import save_run

    ids = [f"x{i}" for i in range(len(shades))]
    events = [NodeEvent(id="root", parent=None, text="")]
    events += [NodeEvent(id=i, parent="root", depth=1, image=png_uri(s), final=True) for i, s in zip(ids, shades, strict=True)]
    events += [ScoreEvent(node=i, reward="digit:3", value=s / 255) for i, s in zip(ids, shades, strict=True)]
    events += [SelectEvent(nodes=[ids[-1]]), DoneEvent(picks=[ids[-1]], candidates=ids, cost={})]
    return db.write(lambda s: save_run(s, trace=Trace(events), task={"prompt": prompt}, model="embedded:digits",
                                       reward="digit:3", sampler=sampler, config={}, seed=0))


def test_cross_run_pairs_rank_samplers_and_exports_filter_by_modality(page, server):
    from storage import add_vote, cross_run_comparisons

    url, db = server
    prompt = "Which greeting is kinder? (cross-run)"
    best = store_run(db, ["hello friend", "go away"], [0.9, -0.5], prompt=prompt, sampler="best_of_n")
    smc = store_run(db, ["good morning, dear", "meh"], [0.7, 0.0], prompt=prompt, sampler="smc")

    page.goto(url)
    open_tab(page, "Label")
    make_pairs(page, f"{best}, {smc}", "across runs: same prompt, different sampler or model (ranks samplers)")
    page.locator("#label-make").click()
    expect(page.locator("#label-made")).to_have_text("made 1 comparison(s) across 2 run(s)")
    show_pair_on(page, prompt)
    sides = page.locator("#label-left").inner_text() + page.locator("#label-right").inner_text()
    assert "hello friend" in sides and "good morning, dear" in sides  # the two runs' picks, one a side
    assert "best_of_n" not in sides and "smc" not in sides  # blind
    page.locator("#vote-a").click()
    expect(page.locator("#label-stored")).to_contain_text("Vote stored")
    # an image battle voted by someone else: it must stay out of a text DPO export
    images = [store_image_run(db, [40, 200], sampler="best_of_n"), store_image_run(db, [90, 250], sampler="fk_steering")]
    image_pair = db.write(lambda s: cross_run_comparisons(s, images))
    assert len(image_pair) == 1
    db.write(lambda s: add_vote(s, comparison_id=image_pair[0], annotator="someone", outcome="a", idempotency_key="img-1"))

    open_tab(page, "Data")  # no Refresh click: the tab reads the new vote when it opens
    expect(page.locator("#data-ranking")).to_contain_text("Bradley-Terry ranking by sampler")
    # players best_of_n and smc (this vote), fk_steering (the image pair's other side)
    expect(page.locator("#data-ranking .scatterlayer .point")).to_have_count(3)
    for name in ("best_of_n", "smc", "fk_steering"):
        expect(page.locator("#data-ranking .ytick", has_text=name)).to_have_count(1)

    page.locator("#export-dpo-jsonl").click()
    expect(page.locator("#data-note")).to_contain_text("1 rows written as dpo (jsonl); kept: text")
    rows = downloaded_rows(page)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("hello friend", "good morning, dear")] or \
        [(r["chosen"], r["rejected"]) for r in rows] == [("good morning, dear", "hello friend")]
    assert {rows[0]["chosen_sampler"], rows[0]["rejected_sampler"]} == {"best_of_n", "smc"}  # sampler against sampler
    assert "chosen_image" not in rows[0]
    page.locator("#data-modality").get_by_text("both", exact=True).click()
    page.locator("#export-dpo-jsonl").click()
    expect(page.locator("#data-note")).to_contain_text("2 rows written as dpo (jsonl); kept: all comparisons")


def downloaded_rows(page) -> list[dict]:
    import json

    link = page.locator("#data-file a[href*='samplescope-dpo']").first
    expect(link).to_be_attached()
    body = page.request.get(link.get_attribute("href")).text()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


# -- 9: the reveal stays with its pair; tabs fresh after an event -------------------------------------------------------


def test_the_previous_pairs_identities_do_not_sit_under_the_next_blind_pair(page, server):
    url, db = server
    runs = [store_run(db, [f"kind reply {k}", f"rude reply {k}"], [0.8, -0.5], prompt=f"Reveal question {k}?",
                      sampler="hidden_sampler_x", model="toy:hidden") for k in range(2)]
    page.goto(url)
    open_tab(page, "Label")
    make_pairs(page, ", ".join(map(str, runs)), "within a run: max_min")
    page.locator("#label-make").click()
    expect(page.locator("#label-made")).to_have_text("made 2 comparison(s) from 2 run(s)")
    show_pair_on(page, "Reveal question 0?")
    first_prompt = page.locator("#label-prompt").inner_text()
    page.locator("#vote-a").click()
    expect(page.locator("#label-stored")).to_contain_text("Vote stored")
    expect(page.locator("#label-prompt")).not_to_contain_text(first_prompt.split("\n")[-1])  # the next pair is up
    visible = page.locator("#label-panel").inner_text()
    assert "hidden_sampler_x" not in visible and "toy:hidden" not in visible  # nothing names a sampler under the blind pair
    page.get_by_role("button", name=re.compile("^Previous pair, revealed")).click()
    reveal = page.locator("#label-reveal")
    expect(reveal).to_contain_text("hidden_sampler_x on toy:hidden")
    expect(reveal).to_contain_text("Reveal question 0?")  # it names the pair it belongs to, not the one now shown


def test_the_runs_tab_lists_a_run_made_in_explore_without_a_refresh(page, server):
    url, db = server
    page.goto(url)
    open_tab(page, "Runs")
    open_tab(page, "Explore")
    set_number(page, "explore-best_of_n-n", 2)
    set_number(page, "explore-best_of_n-max_new_tokens", 3)
    page.locator("#explore-prompt textarea").fill("fresh run for the Runs tab")
    page.locator("#explore-run").click()
    expect(page.locator("#explore-link")).to_contain_text("Saved as run", timeout=WAIT_MS)
    run_id = re.search(r"run (\d+)", page.locator("#explore-link").inner_text()).group(1)
    open_tab(page, "Runs")
    expect(page.locator("#runs-table")).to_contain_text("fresh run for the Runs tab")
    expect(page.locator("#runs-table [role=row][data-index]").first).to_contain_text(run_id)


# -- the Tour -----------------------------------------------------------------------------------------------------------


def test_the_tour_runs_three_samplers_on_the_same_prompt_and_names_both_rewards(page, server):
    from storage import list_runs

    url, db = server
    before = run_count(db)
    page.goto(url)
    open_tab(page, "Tour")
    set_number(page, "tour-prompts", 1)
    page.locator("#tour-run").click()
    expect(page.locator("#tour-status")).to_contain_text("done: every run is stored", timeout=WAIT_MS)
    for k, (sampler_words, picker) in enumerate([("One sample", "arith_orm"), ("Best-of-8", "arith_orm"),
                                                 ("Beam search", "arith_prm")], start=1):
        step = page.locator(f"#tour-step-{k}")
        expect(step).to_contain_text(sampler_words)
        expect(step).to_contain_text(f"Picked by {picker}")
        expect(step).to_contain_text("judged by math (the answer key)")
        expect(step).to_contain_text(re.compile(r"[01]/1 right of 1"))
    rows = page.locator("#tour-table [role=row][data-index]")
    expect(rows).to_have_count(3)
    runs = db.read(lambda s: list_runs(s, limit=3))
    assert run_count(db) == before + 3
    assert {(r.sampler, r.reward, r.model) for r in runs} == {
        ("best_of_n", "arith_orm", "embedded:arith"), ("beam_search", "arith_prm", "embedded:arith")}
    assert len({r.prompt for r in runs}) == 1  # the same prompt for every step


def test_compare_names_the_steering_and_judging_rewards_and_calls_an_answer_key_steer_an_oracle(page, server):
    url, _ = server
    page.goto(url)
    open_tab(page, "Compare")
    set_number(page, "compare-prompts", 1)
    page.locator("#compare-sizes textarea, #compare-sizes input[type=text]").first.fill("1")
    page.locator("#compare-run").click()
    status = page.locator("#compare-status")
    expect(status).to_contain_text("done: sweep", timeout=WAIT_MS)
    rewards = page.locator("#compare-rewards")
    expect(rewards).to_contain_text("Picked by (steering): math · judged by: math")
    expect(rewards).to_contain_text("math reads the answer key")
