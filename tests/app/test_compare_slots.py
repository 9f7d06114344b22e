"""The Compare tab shares the app's run slots (services.runs) and offers the served engines' models."""

from __future__ import annotations

import threading

import gradio as gr
import pytest

from app.ui.compare import CompareTab, engine_specs
from app.ui.services import Services
from app.workflows.sweeps import cell_rows

DOWN = "http://127.0.0.1:1/v1"


def compare_for(services):
    with gr.Blocks():
        return CompareTab(services)


def sweep(compare, *, sizes="1,2,4,8", prompts=4, workers=4, engines=("toy:abc",)):
    return compare.run(["best_of_n"], "open", list(engines), "length", "", "size", sizes, "generated_tokens", "8",
                       prompts, 8, workers, 0, "generated_tokens")


def test_sweep_cells_never_hold_more_than_the_shared_slots(db):
    services = Services(db=db, default_model="toy:abc", update_interval=0.0, concurrency=2)
    runs, seen, lock = services.runs, [], threading.Lock()
    start = runs.start

    def counting_start(ticket, timeout=None):
        admitted = start(ticket, timeout)
        with lock:
            seen.append(runs.running())
        return admitted

    runs.start = counting_start
    compare = compare_for(services)
    updates = list(sweep(compare, workers=6))
    assert updates[-1][compare.status] == "done: sweep 1, 16/16 cells"
    status = [str(v) for u in updates for v in u.values() if isinstance(v, str) and "run slots busy" in v]
    assert status and all("of 2 run slots busy" in s for s in status)
    assert max(seen) <= 2 and len(cell_rows(db, 1)) == 16
    assert runs.running() == 0 and runs.waiting() == 0 and services.live_runs() == 0


def test_a_sweep_waits_for_a_slot_held_by_another_user_and_does_not_starve_them(db):
    services = Services(db=db, default_model="toy:abc", update_interval=0.0, concurrency=1)
    runs = services.runs
    compare = compare_for(services)
    other = runs.enter()  # another user's Explore run holds the only slot
    assert runs.start(other, timeout=1)
    updates = sweep(compare, prompts=8, workers=4)
    first = next(updates)  # the sweep is created and its cells queue behind the other run
    assert "0/32 cells" in first[compare.status]
    stored_while_held: list[int] = []
    released = threading.Event()

    def hold_then_release():
        for _ in range(20):  # give the sweep's cells time to run, if they (wrongly) ignored the slot
            if runs.waiting() >= 1:
                break
            threading.Event().wait(0.05)
        threading.Event().wait(0.3)
        stored_while_held.append(len(cell_rows(db, 1)))
        runs.leave(other)
        released.set()

    threading.Thread(target=hold_then_release).start()
    # mid-sweep, a second user asks for a slot: admitted after at most the sweep's cells already in line
    admitted_at: list[int] = []
    rest = []
    for update in updates:
        rest.append(update)
        if released.is_set() and not admitted_at and len(cell_rows(db, 1)) >= 1:
            ticket = runs.enter()
            ahead = runs.position(ticket) - 1  # the sweep's cells in line before this user
            before = len(cell_rows(db, 1))
            assert runs.start(ticket, timeout=30)
            admitted_at.append(len(cell_rows(db, 1)) - before)
            runs.leave(ticket)
            assert ahead <= 4
    assert stored_while_held == [0]  # no cell ran while the other user held the only slot
    assert admitted_at and admitted_at[0] <= 4 + 1  # let in after the cells ahead of it, not after the sweep
    assert rest[-1][compare.status] == "done: sweep 1, 32/32 cells"
    assert runs.running() == 0 and runs.waiting() == 0


def test_a_cancelled_sweep_leaves_the_line_without_running_a_cell(db):
    services = Services(db=db, default_model="toy:abc", update_interval=0.0, concurrency=1)
    runs = services.runs
    compare = compare_for(services)
    other = runs.enter()
    assert runs.start(other, timeout=1)
    updates = sweep(compare, prompts=2, workers=2)
    token = next(updates)[compare.token]
    assert services.cancel(token)
    last = list(updates)[-1]
    assert last[compare.status].startswith("cancelled: sweep 1, 0/")
    assert cell_rows(db, 1) == [] and runs.waiting() == 0
    runs.leave(other)


def test_the_engines_picker_offers_the_served_models_and_takes_several(db):
    services = Services(db=db, default_model="toy:abc", update_interval=0.0, engines=[DOWN])
    compare = compare_for(services)
    choices = [c[0] if isinstance(c, tuple) else c for c in compare.engines.choices]
    assert choices[0] == f"openai:{DOWN}" and "toy:abc" in choices and "embedded:arith" in choices
    assert compare.engines.multiselect
    assert engine_specs(["toy:abc", " toy:abc", "toy:xyz"]) == ["toy:abc", "toy:xyz"]
    assert engine_specs("toy:abc, toy:xyz") == ["toy:abc", "toy:xyz"] and engine_specs(None) == []
    updates = list(sweep(compare, sizes="1", prompts=4, engines=("toy:abc", "toy:ab2")))
    assert updates[-1][compare.status] == "done: sweep 1, 4/4 cells"
    assert sorted({c["engine"] for c in cell_rows(db, 1)}) == ["toy:ab2", "toy:abc"]  # prompts spread over both
    down = list(sweep(compare, sizes="1", prompts=2, engines=(f"openai:{DOWN}",)))
    assert "cannot reach the server at http://127.0.0.1:1" in down[-1][compare.status]


@pytest.mark.vllm
def test_a_sweep_on_a_served_model_picked_from_the_list(db, vllm_url):
    services = Services(db=db, default_model="toy:abc", update_interval=0.0, engines=[vllm_url])
    compare = compare_for(services)
    spec = f"openai:{vllm_url}#arith"
    assert compare.engines.choices[0][0] == spec
    updates = list(compare.run(["best_of_n"], "arith", [spec], "", "", "size", "1,2", "generated_tokens", "8", 2, 16,
                               2, 0, "generated_tokens"))
    assert updates[-1][compare.status] == "done: sweep 1, 4/4 cells"
    assert {c["engine"] for c in cell_rows(db, 1)} == {spec}
