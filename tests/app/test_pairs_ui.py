"""The Data tab's "Build training pairs" section: progress, the pair on the reward plot, storage, errors."""

from __future__ import annotations

import gradio as gr

from app.ui.pairs import PairsSection
from storage import Database

GRADED = "1*regex:a + 1*regex:aa + 0.5*regex:c + 0.3*regex:b"


def _section(services):
    with gr.Blocks():
        return PairsSection(services)


def test_building_shows_the_pair_on_the_grid_and_stores_comparisons(services, db):
    section = _section(services)
    from engines.prompts import PromptSet
    from engines.task import Task
    from storage.prompt_sets import save_prompt_set

    tasks = tuple(Task(prompt=f"toy <b>{i}</b>") for i in range(3))
    db.write(lambda s: save_prompt_set(s, PromptSet(name="toys", tasks=tasks, source="test")))
    updates = list(section.run("toys", 3, "toy:abc", GRADED, 12, "grid", "max", "mu-2sigma", 1.0, "", "none", ""))
    final = updates[-1]
    assert "kept" in final[section.status] and "grid:max/mu-2sigma" in final[section.status]
    plot = final[section.plot]
    assert any(t.name == "chosen" for t in plot.data) and any(t.name == "rejected" for t in plot.data)
    assert "<b>" not in plot.layout.title.text
    assert len([t for row in final[section.grid].data[0].text for t in row if t]) == 21
    assert final[section.table] and final[section.file].endswith(".jsonl")
    assert db.check().counts["comparisons"] >= 1
    shown = section.show(final[section.shown]["value"], final[section.views])
    assert shown[section.plot].layout.title.text == plot.layout.title.text


def test_bad_input_is_one_line_and_stores_nothing(services, db):
    section = _section(services)
    before = db.check().counts
    for args, message in (
        (("arith", 2, "toy:abc", "no_such_reward", 8, "max_min", "max", "min", 1.0, "", "none", ""), "unknown reward"),
        (("arith", 2, "toy:abc", GRADED, 1, "max_min", "max", "min", 1.0, "", "none", ""), "N must be"),
        (("arith", 2, "toy:abc", GRADED, 8, "grid", "min", "max", 1.0, "", "none", ""), "above"),
        (("arith", 2, "toy:abc", GRADED, 8, "max_min", "max", "min", 1.0, "", "upo", "length"), "two rewards"),
    ):
        final = list(section.run(*args))[-1]
        assert final[section.status].startswith("⚠") and message in final[section.status]
        assert "\n" not in final[section.status]
    after = db.check().counts
    assert after.get("runs", 0) == before.get("runs", 0) and after.get("comparisons", 0) == before.get("comparisons", 0)
    assert isinstance(db, Database)
