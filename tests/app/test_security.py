"""Who may do what: the API surface, server-issued guest ids, sign-in limits, and users not blocking each other."""

from __future__ import annotations

import threading
import time

import gradio as gr
import pytest

from bench.gradio_http import GradioCallError, PageSession
from tests.app.helpers import launched, open_db, store_run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.ui.services import Services

    db = open_db(tmp_path_factory.mktemp("security") / "app.db")
    for k in range(4):
        store_run(db, [f"good {k}", f"bad {k}"], [0.9, 0.1])
    from storage import list_runs, make_comparisons

    for run in db.read(lambda s: list_runs(s)):
        db.write(lambda s, run=run: make_comparisons(s, run.id, "max_min"))
    with launched(Services(db=db, default_model="toy:abc")) as url:
        yield url, db
    db.close()


def votes(db) -> int:
    return db.check().counts["votes"]


# -- the API surface ---------------------------------------------------------------------------------------------


def test_only_the_documented_api_is_an_endpoint(server):
    from gradio_client import Client

    client = Client(server[0], verbose=False)
    info = client.view_api(return_format="dict", print_info=False)
    assert set(info["named_endpoints"]) == {"/sample"} and not info["unnamed_endpoints"]
    page = PageSession(server[0])
    private = [d for d in page.config["dependencies"] if d.get("api_visibility") != "private"]
    assert [d["api_name"] for d in private] == ["sample"]
    with pytest.raises(Exception):  # noqa: B017  (the client refuses, whatever its error type)
        client.predict(None, "", "guest-1", fn_index=page.dependency(elem_id="vote-a")["id"])


def test_a_vote_with_a_made_up_or_forged_guest_id_is_refused_over_http(server):
    url, db = server
    page = PageSession(url)
    load = page.dependency(event="load")
    out = page.call(load, [None])
    token = next(v for v in out if isinstance(v, str) and v.startswith("guest-") and "." in v)
    vote = page.dependency(elem_id="vote-a")
    reveal = vote["outputs"].index(page.component_id("label-stored"))  # the line under the buttons: stored or why not
    before = votes(db)
    for forged in ("guest-1", "ada", token.split(".")[0], token[:-1] + ("0" if token[-1] != "0" else "1"), None, 7, ["x"]):
        result = page.call(vote, [None, "", forged])
        assert str(result[reveal]).startswith("⚠ vote not stored") and "guest id" in str(result[reveal]), forged
    assert votes(db) == before
    result = page.call(vote, [None, "", token])  # the page's own token: stored as that guest
    assert str(result[reveal]).startswith("Vote stored") and votes(db) == before + 1


def test_page_load_replaces_a_client_chosen_id_with_a_signed_one(server):
    page = PageSession(server[0])
    load = page.dependency(event="load")
    out = page.call(load, ["ada"])  # a browser that put someone's name in its storage
    token = next(v for v in out if isinstance(v, str) and v.startswith("guest-"))
    assert token != "ada" and "." in token
    again = page.call(load, [token])
    assert token in again  # a signed token is kept: a reload is the same guest


def test_under_auth_the_signed_in_name_is_the_only_identity(services):
    from app.ui.auth import UserStore
    from app.ui.label import annotator_name

    token = services.guests.issue()
    assert annotator_name(services, None, token) == token.split(".")[0]
    services.users = UserStore("/nonexistent/users.jsonl")

    class Signed:
        username = "ada"

    assert annotator_name(services, Signed(), token) == "ada"
    with pytest.raises(ValueError, match="sign in first"):
        annotator_name(services, None, token)


# -- sign-in limits ------------------------------------------------------------------------------------------------


def test_sign_in_is_limited_per_name_and_overall():
    from app.ui.identity import SignInLimiter

    now = [0.0]
    checked = []

    def verify(name, password):
        checked.append(name)
        return password == "right"

    limit = SignInLimiter(verify, per_name=3, overall=10, window=60, clock=lambda: now[0])
    assert [limit("ada", "wrong") for _ in range(3)] == [False] * 3
    assert limit("ada", "right") is False and checked.count("ada") == 3  # refused without checking the password
    assert limit("bob", "right") is True  # another name is not blocked by ada's failures
    now[0] = 61.0
    assert limit("ada", "right") is True  # the window moved on
    for k in range(10):
        limit(f"user{k}", "wrong")
    assert limit("carol", "right") is False and limit.refused >= 2  # spraying many names trips the overall limit


def test_sign_in_over_http_is_limited(tmp_path):
    import httpx

    from app.ui.auth import UserStore
    from app.ui.services import Services

    store = UserStore(tmp_path / "users.jsonl")
    store.add("ada", "correct horse battery")
    db = open_db(tmp_path / "auth.db")
    with launched(Services(db=db, default_model="toy:abc", users=store)) as url:
        def login(password):
            return httpx.post(url + "login", data={"username": "ada", "password": password}, timeout=30).status_code

        assert login("correct horse battery") == 200
        assert [login(f"guess {k}") for k in range(5)] == [400] * 5
        assert login("correct horse battery") == 400  # limited now, even with the right password
    db.close()


# -- users do not block each other ---------------------------------------------------------------------------------


def test_a_cold_model_load_blocks_only_its_own_callers():
    from engines import models

    release = threading.Event()
    calls = []

    def slow_loader(rest, options):
        calls.append(rest)
        release.wait(30)
        return f"slow model {rest}"

    models.SCHEMES.add("slowtest", slow_loader)
    try:
        results = []
        loaders = [threading.Thread(target=lambda: results.append(models.load_model("slowtest:a"))) for _ in range(3)]
        for t in loaders:
            t.start()
        while not calls:
            time.sleep(0.01)
        other = models.load_model("toy:abc")  # another model loads while slowtest:a is still loading
        assert other is not None and all(t.is_alive() for t in loaders) and calls == ["a"]
        release.set()
        for t in loaders:
            t.join(30)
        assert results == ["slow model a"] * 3 and calls == ["a"]  # one load, shared by its three callers
    finally:
        release.set()
        models.SCHEMES._items.pop("slowtest", None)


def test_a_cold_model_load_does_not_block_labelling_over_http(server):
    from engines import models

    url, db = server
    release, loading = threading.Event(), threading.Event()

    def slow_loader(rest, options):
        loading.set()
        release.wait(60)
        return models.load_model("toy:abc")

    models.SCHEMES.add("slowhttp", slow_loader)
    try:
        runner = PageSession(url)
        outcome = []
        sample = threading.Thread(target=lambda: outcome.append(runner.call(runner.dependency(api_name="sample"), [
            "slowhttp:x", "length", "best_of_n", "go", {"n": 2, "max_new_tokens": 2}, None, 0, None])))
        sample.start()
        assert loading.wait(30)
        page = PageSession(url)
        load = page.dependency(event="load")
        token = next(v for v in page.call(load, [None]) if isinstance(v, str) and v.startswith("guest-"))
        vote = page.dependency(elem_id="vote-b")
        result = page.call(vote, [None, "", token])
        stored = result[vote["outputs"].index(page.component_id("label-stored"))]
        assert str(stored).startswith("Vote stored") and sample.is_alive() and not release.is_set()
        release.set()
        sample.join(60)
        assert outcome and outcome[0][0]["status"] == "ok"
    finally:
        release.set()
        models.SCHEMES._items.pop("slowhttp", None)


def test_a_waiting_run_shows_its_place_in_line(services):
    from app.ui.explore import ExploreTab
    from tests.app.helpers import explore_args

    services.concurrency = 1
    services.runs.slots = 1
    with gr.Blocks():
        explore = ExploreTab(services)
    holder = services.runs.enter()
    assert services.runs.start(holder, timeout=1)  # someone else's run holds the only slot
    runner = explore.run(*explore_args(explore, n=2, max_new_tokens=2))
    first = next(runner)
    assert "waiting for a free slot: 1 in line, 1 run(s) going" in first[explore.status]
    behind = services.runs.enter()
    assert services.runs.position(behind) == 2
    services.runs.leave(holder)
    services.runs.leave(behind)
    rest = list(runner)
    assert any("Saved as run" in str(u.get(explore.link, "")) for u in rest)
    assert services.runs.running() == 0


def test_the_waiting_line_is_capped(services):
    from engines.errors import SamplescopeError

    queue = type(services.runs)(1, max_waiting=2)
    tickets = [queue.enter(), queue.enter()]
    with pytest.raises(SamplescopeError, match="busy"):
        queue.enter()
    assert queue.start(tickets[0], timeout=1) and queue.position(tickets[1]) == 1
    queue.leave(tickets[0])
    assert queue.start(tickets[1], timeout=1)


def test_cancel_while_waiting_runs_nothing(services, db):
    from app.ui.explore import ExploreTab
    from tests.app.helpers import explore_args

    services.runs.slots = 1
    with gr.Blocks():
        explore = ExploreTab(services)
    holder = services.runs.enter()
    services.runs.start(holder, timeout=1)
    runner = explore.run(*explore_args(explore, n=2, max_new_tokens=2))
    token = next(runner)[explore.token]
    assert explore.cancel(token).startswith("cancelling")
    assert [u[explore.status] for u in runner][-1] == "cancelled while waiting: nothing ran"
    services.runs.leave(holder)
    assert db.check().counts["runs"] == 0 and services.runs.running() == 0


# -- imported runs --------------------------------------------------------------------------------------------------


def test_opening_an_imported_run_shows_its_header(services, db, tmp_path):
    from app.ui.runs import RunsTab
    from storage import import_file, list_runs

    path = tmp_path / "plain.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', encoding="utf-8")
    db.write(lambda s: import_file(s, path))
    (run,) = db.read(lambda s: list_runs(s))
    with gr.Blocks():
        runs = RunsTab(services)
    (update,) = list(runs.replay(run.id))
    assert update[runs.header].startswith(f"### Run {run.id}:") and "no stored trace" in update[runs.header]
    assert update[runs.opened] == run.id
    for bad in (float("nan"), float("inf"), 1.5, "x", 10**30):
        (update,) = list(runs.replay(bad))
        assert update[runs.header].startswith("⚠") and "internal error" not in update[runs.header]


def test_guest_tokens_cannot_be_forged():
    from app.ui.identity import GuestTokens

    mine, other = GuestTokens(b"k" * 32), GuestTokens(b"j" * 32)
    token = mine.issue()
    assert mine.verify(token) == token.split(".")[0] and other.verify(token) is None
    for bad in ("", "guest-0123456789ab", token + "0", token.upper(), token.replace("guest-", "guest_"), None, 3):
        assert mine.verify(bad) is None


def test_gradio_call_errors_are_reported(server):
    page = PageSession(server[0])
    with pytest.raises(GradioCallError):
        page.call({"id": 9999, "targets": [[1, "click"]]}, [])
