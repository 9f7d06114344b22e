"""The Gradio app: ``build_demo(services) -> gr.Blocks``; no module globals.

Tabs: Explore (run a sampler live), Runs (stored runs, replay, ``/?run=ID``
links), Label (blind pairwise votes), Data (statistics and exports), Compare
(quality against compute), Train (RL) (a rollout strategy trained live), Tour
(one sample, best-of-N and a guided sampler on the same prompts, the picking and judging rewards named). :func:`launch_options` gives what ``launch()``
needs besides the Blocks (CSS, the keyboard-shortcut script, auth).

Only the documented API (:data:`PUBLIC_API`: ``/sample``) is an API endpoint;
every other event handler is private (``api_visibility="private"``: not in the
API page, not callable by the Gradio clients). The page itself still calls
them, so each one validates what it gets on the server: identities come from
the sign-in or a server-signed guest token (app.ui.identity), never from the
client's word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.compare import CompareTab
from app.ui.data import DataTab
from app.ui.explore import ExploreTab
from app.ui.label import LabelTab, annotator_state
from app.ui.rollouts import RolloutsTab
from app.ui.runs import RunsTab
from app.ui.services import Services
from app.ui.tour import TourTab
from app.views.render import md_text

STATIC = Path(__file__).resolve().parents[2] / "static"


def build_demo(services: Services) -> gr.Blocks:
    with gr.Blocks(title="samplescope") as demo:
        gr.Markdown("## samplescope <small>— a lab for reward-guided sampling</small>")
        browser_id = annotator_state(services.browser_state_secret())  # outside the tabs, so that it is mounted (and read) at page load
        with gr.Tabs(selected="explore") as tabs:
            ExploreTab(services)
            runs = RunsTab(services)
            label = LabelTab(services, browser_id)
            data = DataTab(services)
            CompareTab(services)
            RolloutsTab(services)
            TourTab(services)

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
                yield {**updates, runs.header: f"⚠ no run {md_text(repr(wanted[:40]))}: a run link is /?run=ID"}
                return
            updates[runs.run_id] = int(wanted)
            yield updates
            yield from runs.replay(int(wanted))

        def sample(model: str, reward: str, sampler: str, prompt: str, params: dict | None = None,
                   answer: str | None = None, seed: int = 0, budget: dict | None = None) -> dict:
            """Run a sampler on a prompt, store the run, and return its candidates, picks, cost and run id.

            ``params`` may give ``n`` for the sampler's size parameter whatever its name (particles, beams, ...).
            ``budget`` caps cost counters as the CLI's ``--budget`` does, e.g. ``{"generated_tokens": 2000}``.
            """
            return sample_api(services, model, reward, sampler, prompt, params, answer, seed, budget)

        # Gradio's queue holds waiting API calls without a thread; a started one takes a slot in services.runs
        gr.api(sample, api_name="sample", concurrency_limit=services.concurrency, concurrency_id="samplers")

        def on_unload(request: gr.Request):
            """The page went away (closed, reloaded): its runs stop instead of keeping a core busy unseen."""
            services.cancel_session(getattr(request, "session_hash", None))

        demo.unload(on_unload)
        demo.load(
            on_load,
            [label.browser_id],
            [tabs, label.browser_id, runs.run_id, runs.header, runs.opened, *runs.panel.outputs,
             runs.table, runs.sampler, runs.model, runs.reward,
             label.who, label.progress, label.prompt, label.left, label.right, label.current, label.rationale,
             data.counts, data.ranking, data.agreement, data.annotators],
        )
    for fn in demo.fns.values():  # the class of bug, closed: nothing but the documented API is an endpoint
        if fn.api_name not in PUBLIC_API:
            fn.api_visibility = "private"
    demo.queue(default_concurrency_limit=services.concurrency)
    return demo


#: the endpoints the README documents; every other handler is private
PUBLIC_API = frozenset({"sample"})


def sample_api(services: Services, model, reward, sampler, prompt, params, answer, seed, budget=None) -> dict:
    from app.ui.services import error_message
    from app.workflows.store import rewards_home, save_request_run
    from engines.errors import ConfigError
    from engines.runner import RunRequest, execute

    try:
        if params is None:
            params = {}
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ConfigError("params must be a JSON object of sampler parameters")
        if budget is not None and (not isinstance(budget, dict) or not all(isinstance(k, str) for k in budget)):
            raise ConfigError('budget must be a JSON object of cost counters and caps, e.g. {"generated_tokens": 2000}')
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt must be text, got {type(prompt).__name__}")
        if seed is None:
            seed = 0
        if isinstance(seed, float) and seed.is_integer():  # JSON clients send 4.0 for 4
            seed = int(seed)
        sampler = sampler or "best_of_n"
        request = RunRequest.build(  # an "n" in params is the size, whatever the sampler calls it (Config.with_size)
            model=model or None, reward=reward or None, sampler=sampler, params=params,
            prompt=prompt, answer=answer or None, seed=seed, budget=budget, device=services.device, dtype=services.dtype,
            rewards_folder=rewards_home(),
        )  # the budget is checked as the CLI's --budget is (runner.parse_budget)
        ticket = services.runs.enter()  # the same first-come slots as Explore's runs
        try:
            services.runs.start(ticket)
            trace = execute(request)
        finally:
            services.runs.leave(ticket)
        run_id = save_request_run(services.db, request, trace)
    except Exception as exc:
        # API clients read this as text; no page shows it (gr.api is wired to no event of the page)
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
        options["auth"] = services.sign_in  # the users' scrypt check behind a per-name and overall failure limit
        options["auth_message"] = "Sign in with the account you were given (samplescope users add)."
    return options
