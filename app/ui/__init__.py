"""The Gradio app: ``build_demo(services) -> gr.Blocks``; no module globals.

Tabs: Explore (run a sampler live), Runs (stored runs, replay, ``/?run=ID``
links), Label (blind pairwise votes), Data (statistics and exports), Compare
(quality against compute). :func:`launch_options` gives what ``launch()``
needs besides the Blocks (CSS, the keyboard-shortcut script, auth).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.compare import CompareTab
from app.ui.data import DataTab
from app.ui.explore import ExploreTab
from app.ui.label import LabelTab, annotator_state
from app.ui.runs import RunsTab
from app.ui.services import Services

STATIC = Path(__file__).resolve().parents[2] / "static"


def build_demo(services: Services) -> gr.Blocks:
    with gr.Blocks(title="samplescope") as demo:
        gr.Markdown("## samplescope <small>— a lab for reward-guided sampling</small>")
        browser_id = annotator_state()  # outside the tabs, so that it is mounted (and read) at page load
        with gr.Tabs(selected="explore") as tabs:
            ExploreTab(services)
            runs = RunsTab(services)
            label = LabelTab(services, browser_id)
            data = DataTab(services)
            CompareTab(services)

        def on_load(browser_id, request: gr.Request):
            browser_id = label.ensure_identity(browser_id)
            updates: dict[Any, Any] = {label.browser_id: browser_id, **label.next(browser_id, request), **runs.list()}
            updates.update(data.stats())
            wanted = dict(request.query_params).get("run") if request is not None else None
            if not wanted:
                yield updates
                return
            updates[tabs] = gr.Tabs(selected="runs")
            if not wanted.strip().isdigit():  # the Number box takes only an id; say so instead of failing
                yield {**updates, runs.header: f"⚠ no run {html.escape(wanted[:40])!r}: a run link is /?run=ID"}
                return
            updates[runs.run_id] = int(wanted)
            yield updates
            yield from runs.replay(int(wanted))

        def sample(model: str, reward: str, sampler: str, prompt: str, params: dict | None = None,
                   answer: str | None = None, seed: int = 0) -> dict:
            """Run a sampler on a prompt, store the run, and return its candidates, picks, cost and run id."""
            return sample_api(services, model, reward, sampler, prompt, params or {}, answer, seed)

        gr.api(sample, api_name="sample", concurrency_limit=services.concurrency, concurrency_id="samplers")

        demo.load(
            on_load,
            [label.browser_id],
            [tabs, label.browser_id, runs.run_id, runs.header, runs.opened, *runs.panel.outputs,
             runs.table, runs.sampler, runs.model, runs.reward,
             label.who, label.progress, label.prompt, label.left, label.right, label.current, label.rationale,
             data.counts, data.ranking, data.agreement, data.annotators],
        )
    demo.queue(default_concurrency_limit=services.concurrency)
    return demo


def sample_api(services: Services, model, reward, sampler, prompt, params, answer, seed) -> dict:
    from app.store import save_request_run
    from app.ui.services import error_message
    from engines.runner import RunRequest, execute

    try:
        request = RunRequest.build(
            model=model or None, reward=reward or None, sampler=sampler or "best_of_n", params=dict(params),
            prompt=prompt, answer=answer or None, seed=int(seed or 0), device=services.device, dtype=services.dtype,
        )
        trace = execute(request)
        run_id = save_request_run(services.db, request, trace)
    except Exception as exc:
        raise gr.Error(error_message(exc)) from exc
    return {**request.summary(trace), "run_id": run_id}


def launch_options(services: Services) -> dict[str, Any]:
    script = (STATIC / "keys.js").read_text(encoding="utf-8")
    options: dict[str, Any] = {
        "css": (STATIC / "app.css").read_text(encoding="utf-8"),
        "head": f"<script>{script}</script>",
        "footer_links": ["api"],
    }
    if services.users is not None:
        services.users.require_users()
        options["auth"] = services.users.verify
        options["auth_message"] = "Sign in with the account you were given (samplescope users add)."
    return options
