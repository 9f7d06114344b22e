"""The Data tab's training section: live progress and plot, the card, errors, the quality table."""

from __future__ import annotations

import gradio as gr
import pytest

from app.ui.train import TrainSection
from tests.rewards.simulated import fill


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The heads are fitted on tiny tensors: one thread is fastest on a shared, busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_streams_progress_and_a_held_out_plot(services, db):
    fill(db, prompts=12, per_prompt=6)
    fill(db, prompts=4, per_prompt=3, annotator="<b>mallory</b>", seed=5)
    with gr.Blocks():
        section = TrainSection(services)
    updates = list(section.train("ui-reward", "", "toy:digits", 0, "prompt", None))
    assert len(updates) > 3
    final = updates[-1]
    assert "learned:ui-reward" in final[section.result] and "ceiling" in final[section.result]
    figure = final[section.plot]
    assert len([t for t in figure.data if t.name and t.name.startswith("fold")]) == 5
    assert "100%" in final[section.progress]
    curve = final[section.curve].data[0]
    assert len(curve.x) == 3 and list(curve.x) == sorted(curve.x)  # accuracy against votes used
    again = list(section.train("ui-reward", "", "toy:digits", 0, "prompt", None))
    assert "exists already" in again[-1][section.result] and again[-1][section.result].startswith("⚠")
    quality = section.refresh_quality()[section.quality]
    assert "&lt;b&gt;mallory&lt;/b&gt;" in quality and "<b>mallory" not in quality


def test_training_drops_annotators_below_the_threshold(services, db):
    fill(db, prompts=12, per_prompt=6)
    with gr.Blocks():
        section = TrainSection(services)
    final = list(section.train("t2", "", "toy:digits", 0, "prompt", 1.5))[-1]
    assert "between 0 and 1" in final[section.result]


def test_label_tab_makes_uncertain_pairs_with_a_learned_reward(services, db):
    from app.ui.label import LabelTab, learned_strategies
    from app.workflows.reward_training import run_training
    from tests.storage.storage_helpers import store_run

    fill(db, prompts=12, per_prompt=6)
    run_training(db, "picker", base="toy:digits")
    assert learned_strategies() == ["uncertain:picker"]
    run_id = store_run(db, ["111111", "999999", "000000", "555555"], [0.0, 1.0, 2.0, 3.0], prompt="fresh")
    with gr.Blocks():
        tab = LabelTab(services)
    assert tab.make_pairs(str(run_id), "uncertain:picker", 2) == "made 2 comparison(s) from 1 run(s)"
    assert tab.make_pairs(str(run_id), "uncertain:missing", 1).startswith("⚠ no learned reward")


def test_compare_runs_samplers_with_a_learned_reward(services, db):
    from app.ui.compare import CompareTab
    from app.workflows.reward_training import run_training

    fill(db, prompts=12, per_prompt=6)
    run_training(db, "judge-me", base="toy:digits")
    with gr.Blocks():
        compare = CompareTab(services)
    updates = list(compare.run(["best_of_n"], "open", "toy:digits", "learned:judge-me", "", "size", "1,2",
                               "generated_tokens", "", 1, 4, 1, 0))
    final = [u[compare.plot] for u in updates if compare.plot in u][-1]
    assert len(final.data) == 1 and len(final.data[0].x) == 2  # one line, a point per size
    assert updates[-1][compare.status].startswith("done")
