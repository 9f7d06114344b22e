"""The launched app driven by gradio_client: /sample runs best-of-N and stores it; bad requests fail cleanly."""

from __future__ import annotations

import pytest

from tests.app.helpers import launched, open_db


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.ui.services import Services

    db = open_db(tmp_path_factory.mktemp("server") / "app.db")
    with launched(Services(db=db, default_model="toy:abc")) as url:
        yield url, db
    db.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[0], verbose=False)


def test_the_api_lists_sample_with_its_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = [p["parameter_name"] for p in api["/sample"]["parameters"]]
    assert params == ["model", "reward", "sampler", "prompt", "params", "answer", "seed", "budget"]


def test_sample_runs_best_of_n_and_stores_it(client, server):
    from storage import load_run

    result = client.predict("toy:digits", "math", "best_of_n", "a digit?", {"n": 6, "max_new_tokens": 3}, "7", 4,
                            api_name="/sample")
    assert result["status"] == "ok" and result["sampler"] == "best_of_n" and result["params"]["n"] == 6
    ids = [c["id"] for c in result["candidates"]]
    assert len(ids) == 6 and len(result["picks"]) == 1 and result["picks"][0] in ids
    picked = next(c for c in result["candidates"] if c["picked"])
    assert picked["reward"] == max(c["reward"] for c in result["candidates"])
    assert result["cost"]["generated_tokens"] > 0

    stored = server[1].read(lambda s: load_run(s, result["run_id"]))
    assert [c.text for c in stored.candidates] == [c["text"] for c in result["candidates"]]
    assert stored.task["answer"] == "7" and stored.seed == 4

    again = client.predict("toy:digits", "math", "best_of_n", "a digit?", {"n": 6, "max_new_tokens": 3}, "7", 4,
                           api_name="/sample")
    assert again["candidates"] == result["candidates"] and again["run_id"] == result["run_id"] + 1


def test_sample_defaults_to_best_of_n_on_the_given_model(client):
    result = client.predict("toy:abc", "length", "", "go", None, None, 0, api_name="/sample")
    assert result["sampler"] == "best_of_n" and len(result["candidates"]) == result["params"]["n"] == 8


def test_sample_keeps_a_budget_as_the_cli_does(client, server):
    from storage import load_run

    result = client.predict("toy:abc", "length", "best_of_n", "go", {"n": 8, "max_new_tokens": 4}, None, 0,
                            {"generated_tokens": 10.0}, api_name="/sample")
    assert result["budget"] == {"generated_tokens": 10} and result["status"] == "budget"
    assert 0 < result["cost"]["generated_tokens"] <= 10 and len(result["candidates"]) < 8
    stored = server[1].read(lambda s: load_run(s, result["run_id"]))
    assert stored.config["budget"] == {"generated_tokens": 10}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("toy:abc", "length", "nope", "go", {}, None, 0), "unknown sampler 'nope'"),
        (("toy:abc", "length", "best_of_n", "go", {"n": 0}, None, 0), "n must be >= 1"),
        (("toy:abc", "length", "best_of_n", "go", {"beam": 3}, None, 0), "unknown parameter"),
        (("toy:abc", "math", "best_of_n", "go", {}, None, 0), "reference answer"),
        (("nope:x", "length", "best_of_n", "go", {}, None, 0), "unknown model scheme"),
        (("toy:abc", "length", "best_of_n", "go", {}, None, -1), "seed must be a non-negative integer"),
        (("toy:abc", "length", "best_of_n", "go", {}, None, 0, {"tokens": 5}), "unknown budget counter(s): tokens"),
        (("toy:abc", "length", "best_of_n", "go", {}, None, 0, {"generated_tokens": 4.5}), "must be a whole number"),
        (("toy:abc", "length", "best_of_n", "go", {}, None, 0, {"generated_tokens": -1}), "finite number >= 0"),
        (("toy:abc", "length", "best_of_n", "go", {}, None, 0, [5]), "budget must be a JSON object"),
    ],
)
def test_a_bad_request_is_a_clean_one_line_error_and_stores_nothing(client, server, args, message):
    from gradio_client.exceptions import AppError

    before = server[1].check().counts["runs"]
    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name="/sample")
    text = str(caught.value)
    assert message in text and "\n" not in text and "Traceback" not in text and "internal error" not in text
    assert server[1].check().counts["runs"] == before
