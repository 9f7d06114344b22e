"""The tabs' handlers, called directly (no server): Explore, Runs, Label, Data, Compare; the users file."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime

import gradio as gr
import pyarrow.parquet as pq
import pytest

from app.ui import launch_options
from app.ui.auth import AuthError, UserStore
from app.ui.compare import CompareTab
from app.ui.data import FORMATS, DataTab
from app.ui.explore import ExploreTab
from app.ui.label import LabelTab
from app.ui.runs import RunsTab
from tests.app.helpers import explore_args, store_run


def counts(db) -> dict[str, int]:
    return db.check().counts


def status_of(update: dict, tab) -> str:
    return str(update.get(tab.status, ""))


@pytest.fixture
def explore(services):
    with gr.Blocks():
        return ExploreTab(services)


# -- Explore ------------------------------------------------------------------------------------------------


def test_explore_run_streams_live_updates_then_stores_the_run(explore, services, db):
    from storage import load_run

    updates = list(explore.run(*explore_args(explore, n=5, batch_size=1, max_new_tokens=4)))
    first, last = updates[0], updates[-1]
    assert "loading toy:abc" in status_of(first, explore) and first[explore.token]
    assert first[explore.panel.table] == []  # the views start clear

    live = [u for u in updates if explore.panel.table in u]
    rows = [len(u[explore.panel.table]) for u in live]
    assert rows == sorted(rows) and rows[-1] == 5 and len(set(rows)) >= 5  # one candidate at a time
    assert all(u[explore.panel.tree].layout.uirevision == "keep" for u in live)
    assert any(status_of(u, explore).startswith("running… 2/5 candidates") for u in live)
    assert status_of(live[-1], explore).startswith("**ok**: 5/5 candidates")

    run_id = last[explore.run_id]
    assert isinstance(run_id, int) and f"/?run={run_id}" in last[explore.link] and last[explore.token] is None
    stored = db.read(lambda s: load_run(s, run_id))
    assert (stored.sampler, stored.model, stored.reward, stored.status) == ("best_of_n", "toy:abc", "length", "ok")
    assert stored.config["n"] == 5 and stored.config["max_new_tokens"] == 4 and len(stored.candidates) == 5
    assert [c.node_id for c in stored.candidates if c.picked] == stored.trace.selected
    assert services.live_runs() == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": 0}, "N must be at least 1, got 0"),  # the field's label, not the config's name
        ({"n": 2.5}, "N must be a whole number"),
        ({"prompt": "   "}, "the prompt is empty"),
        ({"sampler": "nope"}, "unknown sampler"),
        ({"model": "nope:x"}, "unknown model scheme"),
        ({"reward": "regex:("}, "invalid regex"),
        ({"budget": -1}, "Token budget must be at least 0, got -1"),
    ],
)
def test_explore_bad_input_is_one_line_in_the_status_and_nothing_is_stored(explore, services, db, change, message):
    sampler_params = {k: v for k, v in change.items() if k == "n"}
    page = {k: v for k, v in change.items() if k != "n"}
    args = explore_args(explore, **{k: v for k, v in page.items() if k != "sampler"}, **sampler_params)
    if "sampler" in page:
        args[2] = page["sampler"]
    updates = list(explore.run(*args))
    error = status_of(updates[-1], explore)
    assert message in error and error.startswith("<span class='error-line'>⚠") and "\n" not in error
    assert "Traceback" not in error and "internal error" not in error
    assert not any(u.get(explore.run_id) for u in updates)
    assert counts(db)["runs"] == 0 and services.live_runs() == 0


def test_cancel_stops_the_run_and_stores_what_it_did(explore, services, db):
    """The sampler runs on its own thread, ahead of the views; cancelling before it starts stores a
    cancelled run with nothing in it (tests/engines/test_cancel.py counts the decode steps after a cancel)."""
    from storage import load_run

    run = explore.run(*explore_args(explore, n=40, batch_size=1, max_new_tokens=4))
    token = next(run)[explore.token]  # "loading…": the worker has not started yet
    assert explore.cancel(token).startswith("cancelling")
    rest = list(run)
    assert "**cancelled**" in status_of(rest[-1], explore)
    stored = db.read(lambda s: load_run(s, rest[-1][explore.run_id]))
    assert stored.status == "cancelled" and len(stored.candidates) == 0
    assert explore.cancel(token) == "nothing is running" and services.live_runs() == 0


def test_a_built_in_prompt_fills_the_form(explore):
    filled = explore.pick_task("open:9", "best_of_n")
    assert filled[explore.prompt].startswith("Write a sentence that mentions the sun")
    assert filled[explore.reward] == "keywords:sun,sea" and filled[explore.model] == "embedded:smollm2"
    nothing = explore.pick_task(None, "best_of_n")
    assert list(nothing) == [explore.prompt] and nothing[explore.prompt] == gr.update()  # nothing changes


def test_a_task_pick_sends_its_models_sampler_list_in_the_same_update(explore):
    """The sampler list follows the task's model in the task pick's own update (no second round trip that
    could replace the list while the user has it open): a diffusion task offers diffusion samplers only."""
    from app.ui import forms
    from engines.tasks import TASK_SETS

    filled = explore.pick_task("digits:3", "best_of_n")
    picker = filled[explore.sampler]
    names = [name for _, name in picker["choices"]]
    modality = forms.model_modality(TASK_SETS.get("digits").model)
    assert modality != forms.model_modality("embedded:smollm2")
    assert names and names == [name for _, name in forms.sampler_choices(modality)
                               if any(f.name == name for f in explore.forms)]
    assert "best_of_n" not in names or picker["value"] == "best_of_n"
    assert picker["value"] in names
    assert all(component in filled for component in forms.form_outputs(explore.forms))
    text = explore.pick_task("arith:0", "beam_search")
    assert text[explore.sampler]["value"] == "beam_search"  # a sampler that runs on the model stays chosen


def test_every_sampler_has_a_form_and_only_the_chosen_one_shows(explore):
    from app.ui import forms
    from engines.samplers import SAMPLERS

    assert [f.name for f in explore.forms] == [name for name, _ in SAMPLERS.items()]
    shown = forms.visibility(explore.forms, "knockout")
    assert [u["visible"] for u in shown.values()] == [f.name == "knockout" for f in explore.forms]
    values = explore_args(explore, sampler="knockout", n=6)[8:]
    assert forms.params_for(explore.forms, "knockout", values)["n"] == 6


# -- Runs ------------------------------------------------------------------------------------------------------


def test_runs_list_filters_and_replay(services, db):
    with gr.Blocks():
        runs = RunsTab(services)
    first = store_run(db, ["a", "b", "c", "d"], [0.1, 0.9, 0.5, 0.3], sampler="best_of_n", pick=1)
    store_run(db, ["x", "y"], [0.2, 0.4], sampler="knockout")
    listed = runs.list()
    assert [r[0] for r in listed[runs.table]] == [first + 1, first]
    assert "knockout" in listed[runs.sampler]["choices"]
    assert [r[2] for r in runs.list(sampler="knockout")[runs.table]] == ["knockout"]

    steps = list(runs.replay(first))
    rows = [len(u[runs.panel.table]) for u in steps]
    assert len(steps) > 1 and rows == sorted(rows) and rows[-1] == 4  # replayed in steps, growing
    assert steps[-1][runs.opened] == first and f"/?run={first}" in steps[-1][runs.header]
    assert "**status:** ok" in steps[-1][runs.panel.cost] and "replaying" in steps[0][runs.panel.cost]
    assert steps[-1][runs.panel.table][0][:3] == ["★", "n1", 0.9]
    assert next(runs.replay(999))[runs.header] == "⚠ no run with id 999"
    assert next(runs.replay(None))[runs.header] == "Pick a run first."


# -- Label -------------------------------------------------------------------------------------------------------


@pytest.fixture
def label(services):
    with gr.Blocks():
        return LabelTab(services)


def test_label_vote_flow_is_blind_stored_once_and_revealed(label, db):
    from storage import present, vote_history

    token = label.ensure_identity(None)  # issued and signed by the server
    guest = label.services.guests.verify(token)
    assert guest.startswith("guest-") and label.ensure_identity(token) == token

    for k in range(3):
        store_run(db, [f"good answer {k}", f"bad answer {k}"], [0.9, -0.4], sampler="secret_sampler", model="secret-model")
    assert label.make_pairs("", "max_min", 1) == "made 3 comparison(s) from 3 run(s)"

    shown = label.next(token)
    assert shown[label.progress] == "0 done, 3 to go" and guest in shown[label.who]
    blind = shown[label.left] + shown[label.right] + shown[label.prompt]
    assert "answer" in blind and not any(w in blind for w in ("secret", "0.9", "-0.4"))
    current = shown[label.current]

    out = label.vote("left", current, "clearer", token)
    assert out[label.reveal].startswith("Your vote: **A**, on pair ") and "secret_sampler on secret-model" in out[label.reveal]
    assert out[label.progress] == "1 done, 2 to go" and out[label.current]["comparison_id"] != current["comparison_id"]
    cid = current["comparison_id"]
    (vote,) = db.read(lambda s: vote_history(s, cid, guest))
    assert vote.outcome == db.read(lambda s: present(s, cid)).outcome("left") and counts(db)["votes"] == 1
    # the same shown state voted again (a double click, a replayed request) stores nothing new
    again = label.vote("left", current, "clearer", token)
    assert "already stored: nothing new was written" in again[label.reveal] and counts(db)["votes"] == 1
    # the same state with another answer is refused, not stored as a second vote
    other = label.vote("right", current, "clearer", token)
    assert other[label.stored].startswith("⚠ vote not stored: idempotency key") and counts(db)["votes"] == 1


def test_a_label_vote_costs_a_bounded_number_of_statements(label, db):
    """The Label tab's vote (store, reveal, next pair, progress): 27 statements once, at most 14 now."""
    from sqlalchemy import event

    token = label.ensure_identity(None)
    for k in range(3):
        store_run(db, [f"good answer {k}", f"bad answer {k}"], [0.9, -0.4])
    label.make_pairs("", "max_min", 1)
    first = label.vote("left", label.next(token)[label.current], "", token)  # creates the annotator
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        out = label.vote("right", first[label.current], "", token)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert out[label.reveal].startswith("Your vote: **B**, on pair ") and out[label.progress] == "2 done, 1 to go"
    assert len(statements) <= 14, "\n".join(statements)


@pytest.mark.parametrize(
    ("current", "browser_id", "message"),
    [
        ({"comparison_id": 999, "key": "k1"}, "issued", "no comparison with id 999"),
        ({"comparison_id": "x", "key": "k1"}, "issued", "invalid literal"),
        ({"comparison_id": 1, "key": "k1", "shown_at": "yesterday"}, "issued", "isoformat"),
        ({"comparison_id": 1, "key": "k1"}, None, "no guest id from this server"),
        ({"comparison_id": 1, "key": "k1"}, "guest-1", "no guest id from this server"),  # a name the client made up
        ({"comparison_id": 1, "key": "k1"}, "guest-0123456789ab." + "0" * 64, "no guest id from this server"),  # forged
    ],
)
def test_a_bad_vote_is_an_error_and_stores_nothing(label, db, current, browser_id, message):
    store_run(db, ["one", "two"], [0.9, 0.1])
    label.make_pairs("", "max_min", 1)
    state = {"shown_at": datetime.now(UTC).isoformat(), **current}
    if browser_id == "issued":
        browser_id = label.ensure_identity(None)
    out = label.vote("left", state, "", browser_id)
    assert out[label.stored].startswith("⚠ vote not stored") and message in out[label.stored]  # in sight, not in the closed box
    assert "internal error" not in out[label.stored] and counts(db)["votes"] == 0
    assert label.vote("left", None, "", label.ensure_identity(None))[label.stored] == "Nothing to vote on."


def test_make_pairs_reports_bad_input(label, db):
    assert label.make_pairs("3, x", "max_min", 1).startswith("⚠ run ids must be numbers")
    assert label.make_pairs("42", "max_min", 1) == "⚠ no run with id 42"
    run = store_run(db, ["one", "two"], [0.9, 0.1])
    assert "unknown pair strategy" in label.make_pairs(str(run), "nope", 1)
    assert counts(db)["comparisons"] == 0


# -- Data -------------------------------------------------------------------------------------------------------


def test_data_stats_and_every_export_have_rows(services, db, tmp_path):
    from storage import add_vote, compare_runs, present

    prompt = "Name a colour."
    ids = [store_run(db, [f"{name} says {k}"], [k / 3], prompt=prompt, sampler=name)
           for k, name in enumerate(["best_of_n", "knockout", "rejection"])]
    comparisons = db.write(lambda s: compare_runs(s, ids))
    for who, choice in (("ann", "left"), ("bob", "left"), ("cat", "right")):
        for k, cid in enumerate(comparisons):
            def vote(s, cid=cid, who=who, choice=choice, key=f"{who}{k}"):
                return add_vote(s, comparison_id=cid, annotator=who, outcome=present(s, cid).outcome(choice), idempotency_key=key)
            db.write(vote)
    with gr.Blocks():
        data = DataTab(services)
    shown = data.stats("sampler")
    assert "9 current" in shown[data.counts] and "3 runs" in shown[data.counts]
    assert set(shown[data.ranking].data[0].y) == {"best_of_n", "knockout", "rejection"}
    assert shown[data.agreement].data and "Krippendorff" in shown[data.annotators]

    for _, fmt, ext in FORMATS:
        out = data.export(fmt, ext, "sampler")
        path = out[data.file]
        rows = int(out[data.note].split()[0])
        if fmt == "pickapic":  # image pairs only; these votes are on text (tests/storage/test_pickapic.py)
            assert rows == 0 and path.endswith(ext)
            continue
        assert rows > 0 and path.endswith(ext)
        if ext == ".jsonl":
            lines = [json.loads(line) for line in open(path, encoding="utf-8")]
            assert len(lines) == rows and (fmt == "battles" or prompt in json.dumps(lines[0]))
        else:
            assert pq.read_table(path).num_rows == rows


# -- Compare ----------------------------------------------------------------------------------------------------


def _compare_run(compare, samplers, prompt_set="open", engines="toy:abc", reward="length", evaluate="", axis="size",
                 sizes="1,2,4", counter="generated_tokens", budgets="8,16", prompts=2, tokens=8, workers=2, seed=0):
    return list(compare.run(samplers, prompt_set, engines, reward, evaluate, axis, sizes, counter, budgets, prompts, tokens,
                            workers, seed, "generated_tokens"))


def test_compare_runs_a_stored_sweep_with_a_point_per_sampler_and_size(services):
    from app.workflows.sweeps import cell_rows

    with gr.Blocks():
        compare = CompareTab(services)
    updates = _compare_run(compare, ["best_of_n", "mcts"])
    plots = [u[compare.plot] for u in updates if compare.plot in u]
    assert len(plots) >= 3 and len(plots[0].data) == 0  # live: the first picture is empty, then it fills in
    final = plots[-1]
    assert [t.name for t in final.data] == ["best_of_n", "mcts"]
    assert all(len(t.x) == 3 and all(x > 0 for x in t.x) for t in final.data)
    assert all(t.error_y.array is not None for t in final.data)  # bootstrap intervals drawn
    assert updates[-1][compare.status] == "done: sweep 1, 12/12 cells"
    assert len(updates[-1][compare.table]) == 6 and len(updates[-1][compare.pairs]) == 3
    assert len(cell_rows(services.db, 1)) == 12
    assert _compare_run(compare, [])[0][compare.status].startswith("⚠")
    knockout = _compare_run(compare, ["knockout"], reward="pairwise:length")
    assert knockout[-1][compare.status] == "done: sweep 2, 4/4 cells"  # size 1 is no tournament: left out
    assert services.live_runs() == 0


def test_compare_at_matched_budgets_keeps_each_cap_and_reopens(services):
    from app.workflows.sweeps import cell_rows

    with gr.Blocks():
        compare = CompareTab(services)
    updates = _compare_run(compare, ["best_of_n", "rejection"], axis="budget", budgets="6,12")
    assert updates[-1][compare.status].startswith("done: sweep 1, 8/8")
    assert all(c["generated_tokens"] <= c["level"] for c in cell_rows(services.db, 1))
    shown = compare.show(1, "reward_calls")
    assert shown[compare.current] == 1 and shown[compare.plot].layout.xaxis.title.text.startswith("reward calls")
    for kind, ext in (("csv", ".csv"), ("parquet", ".parquet"), ("html", ".html")):
        path = compare.download(1, kind)[compare.file]
        assert path.endswith(ext) and os.path.getsize(path) > 0
    bad = _compare_run(compare, ["best_of_n"], axis="budget", counter="generated_tokens", budgets="x")
    assert bad[0][compare.status].startswith("⚠ budgets takes numbers")


def test_compare_judges_each_prompt_by_its_own_reward_without_an_evaluation_reward(services):
    from engines.rewards import build_reward
    from engines.runner import RunRequest, execute

    with gr.Blocks():
        compare = CompareTab(services)
    updates = _compare_run(compare, ["best_of_n"], reward="", sizes="1", prompts=8, workers=1)
    (quality,) = [u[compare.plot] for u in updates if compare.plot in u][-1].data[0].y
    expected, specs = [], set()
    for i in range(8):  # the same runs, each pick scored by its own prompt's reward
        request = RunRequest.build(model="toy:abc", sampler="best_of_n", params={"n": 1, "max_new_tokens": 8},
                                   task_ref=f"open:{i}", seed=1_000 * i + 1)
        trace = execute(request)
        specs.add(request.reward)
        expected.append(build_reward(request.reward).score(request.task, [trace.full_text(trace.done.picks[0])])[0])
    assert len(specs) == 3  # sentiment, length and a regex: judging all by the first would differ
    assert quality == pytest.approx(sum(expected) / len(expected)) and quality > 0


def test_compare_uploads_a_prompt_set_and_refuses_a_bad_one(services, tmp_path):
    with gr.Blocks():
        compare = CompareTab(services)
    good = tmp_path / "mine.jsonl"
    good.write_text('{"q": "say a"}\n{"q": "say b"}\n')
    added = compare.add_set(str(good), "mine", "q", "", "")
    assert added[compare.add_status].startswith("stored: 'mine', 2 prompts")
    dropdown = added[compare.prompt_set]  # the new set is offered and selected
    assert "mine" in [value for _, value in dropdown.choices] and dropdown.value == "mine"
    updates = _compare_run(compare, ["best_of_n"], prompt_set="mine", sizes="1,2")
    assert updates[-1][compare.status] == "done: sweep 1, 4/4 cells"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "ok"}\n{"q": ""}\n')
    assert compare.add_set(str(bad), "bad", "q", "", "")[compare.add_status] == (
        "⚠ bad.jsonl row 2: empty prompt in column 'q'")


# -- the users file ----------------------------------------------------------------------------------------------


def test_users_file_holds_scrypt_hashes_and_verifies(tmp_path):
    store = UserStore(tmp_path / "users.jsonl")
    with pytest.raises(AuthError, match="samplescope users add NAME"):
        store.require_users()
    store.add("ada", "correct horse battery")
    text = (tmp_path / "users.jsonl").read_text()
    assert "correct horse" not in text
    (row,) = [json.loads(line) for line in text.splitlines()]
    assert set(row) == {"name", "salt", "hash", "n", "r", "p"} and row["n"] == 2**14
    assert len(bytes.fromhex(row["hash"])) == 32 and len(bytes.fromhex(row["salt"])) == 16
    assert store.verify("ada", "correct horse battery")
    assert not store.verify("ada", "correct horse batterz") and not store.verify("eve", "correct horse battery")
    store.require_users()
    for name in ("", "a b", "x" * 65, "<script>", "ada\n"):
        with pytest.raises(AuthError, match="user names"):
            store.add(name, "long enough pw")
    with pytest.raises(AuthError, match="at least 8"):
        store.add("bob", "short")
    with pytest.raises(AuthError, match="already exists"):
        store.add("ada", "another password")
    assert store.names() == ["ada"] and (tmp_path / "users.jsonl").stat().st_mode & 0o777 == 0o600


def test_auth_goes_into_launch_options_only_with_users(services, tmp_path):
    assert "auth" not in launch_options(services)
    store = UserStore(tmp_path / "users.jsonl")
    services.users = store
    with pytest.raises(AuthError):
        launch_options(services)
    store.add("ada", "correct horse battery")
    options = launch_options(services)
    assert options["auth"]("ada", "correct horse battery") and not options["auth"]("ada", "nope")
    assert "keys.js" not in options["head"] and "vote-a" in options["head"]


def test_users_add_command_and_serve_refusing_an_empty_users_file(tmp_path, monkeypatch, capsys):
    from app.cli import main

    users = tmp_path / "users.jsonl"
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["users", "add", "bob", "--auth", str(users), "--password-stdin"]) == 0
    assert UserStore(users).verify("bob", "a long password")
    assert main(["users", "list", "--auth", str(users)]) == 0 and capsys.readouterr().out.splitlines()[-1] == "bob"
    empty = tmp_path / "nobody.jsonl"
    assert main(["serve", "--auth", str(empty), "--db", f"sqlite:///{tmp_path / 'x.db'}", "--no-preload"]) == 2
    assert "no users in" in capsys.readouterr().err


def test_compare_resumes_a_sweep_closed_mid_way(services):
    from app.workflows.sweeps import cell_rows

    with gr.Blocks():
        compare = CompareTab(services)
    run = compare.run(["best_of_n", "mcts"], "open", "toy:abc", "length", "", "size", "1,2,4", "generated_tokens", "",
                      4, 8, 1, 0, "generated_tokens")
    for _ in range(4):  # the page goes away after a few updates
        next(run)
    run.close()
    kept = len(cell_rows(services.db, 1))
    assert 0 < kept < 24 and services.live_runs() == 0
    updates = list(compare.resume_sweep(1, 2))
    assert updates[0][compare.status].startswith(f"sweep 1: {kept}/24 cells")
    assert updates[-1][compare.status] == "done: sweep 1, 24/24 cells" and len(cell_rows(services.db, 1)) == 24
    assert list(compare.resume_sweep(None, 2))[0][compare.status] == "⚠ choose a stored sweep"
