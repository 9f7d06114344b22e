"""Served engines in the app: `serve --engine`, the model pickers, engine health, runs on up and down engines."""

from __future__ import annotations

import gradio as gr
import pytest

from app.ui.explore import ExploreTab
from app.ui.services import Services
from tests.app.helpers import explore_args

DOWN = "http://127.0.0.1:1/v1"


def explore_for(services):
    with gr.Blocks():
        return ExploreTab(services)


def test_serve_takes_engines_and_raises_the_default_concurrency(tmp_path):
    from app.cli import build_parser
    from app.commands.serve import build_services

    args = build_parser().parse_args(["serve", "--db", f"sqlite:///{tmp_path / 'a.db'}", "--engine", "http://h:1",
                                      "--engine", "http://h:2/v1/"])
    services = build_services(args)
    assert services.engines == ["http://h:1/v1", "http://h:2/v1"] and services.concurrency == 8
    with pytest.raises(Exception, match="must start with http"):
        build_services(build_parser().parse_args(["serve", "--engine", "h:1"]))


def test_a_down_engine_is_shown_and_a_run_on_it_is_one_line(db):
    services = Services(db=db, default_model="toy:abc", update_interval=0.0, engines=[DOWN])
    assert services.model_choices()[0] == f"openai:{DOWN}" and "toy:abc" in services.model_choices()
    assert "down" in services.engine_markdown() and "cannot reach" in services.engine_markdown()
    tab = explore_for(services)
    updates = list(tab.run(*explore_args(tab, model=f"openai:{DOWN}", prompt="Q: 1+1\n")))
    status = str(updates[-1][tab.status])
    assert "cannot reach the server at http://127.0.0.1:1" in status and "\n" not in status
    assert db.check().counts["runs"] == 0


@pytest.mark.vllm
def test_served_models_join_the_picker_and_runs_are_stored(db, vllm_url):
    from storage import load_run

    services = Services(db=db, default_model="toy:abc", update_interval=0.0, engines=[vllm_url])
    assert services.model_choices()[0] == f"openai:{vllm_url}#arith"
    assert "up, serving `arith`" in services.engine_markdown() and "vLLM 0.32" in services.engine_markdown()
    tab = explore_for(services)
    updates = list(tab.run(*explore_args(tab, model=f"openai:{vllm_url}#arith", prompt="Q: 3+4*5\n", n=4,
                                         max_new_tokens=16)))
    run_id = updates[-1][tab.run_id]
    stored = db.read(lambda s: load_run(s, run_id))
    assert stored.status == "ok" and len(stored.candidates) == 4 and stored.cost["requests"] >= 1


@pytest.mark.llamacpp
def test_a_llamacpp_engine_joins_the_picker_and_its_runs_are_stored(db, llamacpp_q4_url):
    from storage import load_run

    services = Services(db=db, default_model="toy:abc", update_interval=0.0, engines=[llamacpp_q4_url])
    assert services.model_choices()[0] == f"openai:{llamacpp_q4_url}#smollm2"
    assert "up, serving `smollm2`" in services.engine_markdown()
    tab = explore_for(services)
    updates = list(tab.run(*explore_args(tab, model=f"openai:{llamacpp_q4_url}#smollm2", prompt="Name a colour.",
                                         n=4, max_new_tokens=12)))
    run_id = updates[-1][tab.run_id]
    stored = db.read(lambda s: load_run(s, run_id))
    assert stored.status == "ok" and len(stored.candidates) == 4 and stored.cost["requests"] >= 1
