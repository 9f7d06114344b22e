"""Every view that renders stored data, fed hostile values in every field of a stored run and a vote.

A run is stored through the storage API with a payload in every string it carries (node and
parent ids, texts, images, reward names, prune reasons, match sides, particle ids, status,
message, sampler, model and reward names, prompt); votes carry hostile annotator names and
rationales. Each view's output is parsed (tests/app/hostile.py) and must hold no live markup.
"""

from __future__ import annotations

import itertools

import gradio as gr
import pytest

from engines.trace import (
    AcceptEvent,
    DoneEvent,
    MatchEvent,
    NodeEvent,
    PruneEvent,
    ResampleEvent,
    ScoreEvent,
    SelectEvent,
    Trace,
)
from tests.app.helpers import XSS_PAYLOADS
from tests.app.hostile import BAD_IMAGES, PAYLOADS, live_in_figure, live_in_update, live_markdown, live_markup

HOSTILE = [*PAYLOADS, *XSS_PAYLOADS]


def hostile_trace() -> Trace:
    ids = [f"{p}#{k}" for k, p in enumerate(HOSTILE)]
    root = HOSTILE[0] + "#root"
    events = [NodeEvent(id=root, parent=None, text=HOSTILE[1])]
    for k, (node, payload) in enumerate(zip(ids, itertools.cycle(HOSTILE), strict=False)):
        image = BAD_IMAGES[k % len(BAD_IMAGES)] if k % 3 == 0 else None
        events.append(NodeEvent(id=node, parent=root, depth=1, text=payload, tokens=3, final=True, image=image,
                                meta={payload: payload}))
    for k, node in enumerate(ids):
        events.append(ScoreEvent(node=node, reward=HOSTILE[k % len(HOSTILE)], value=k / 10))
    events.append(PruneEvent(node=ids[2], reason=HOSTILE[3]))
    events.append(MatchEvent(round=0, a=ids[0], b=ids[1], p_a=0.7, winner=ids[0]))
    events.append(MatchEvent(round=0, a=ids[2], b=None, p_a=1.0, winner=ids[2]))
    events.append(MatchEvent(round=1, a=ids[0], b=ids[2], p_a=0.4, winner=ids[2]))
    events.append(ResampleEvent(step=0, particles=ids[:4], ancestors=[0, 0, 1, 3], log_weights=[0.0, -1.0, -2.0, -0.5], ess=2.5))
    events.append(ResampleEvent(step=1, particles=ids[4:8], ancestors=[1, 1, 2, 0], log_weights=[0.0, 0.0, -1.0, -0.5], ess=3.1))
    events.append(AcceptEvent(node=ids[5], accepted=True, probability=0.5, current=ids[4]))
    events.append(SelectEvent(nodes=[ids[2]], reason=HOSTILE[5]))
    events.append(DoneEvent(picks=[ids[2]], candidates=ids, cost={"generated_tokens": 9, "wall_seconds": 0.1},
                            message=HOSTILE[0], metrics={HOSTILE[1]: HOSTILE[2]}))
    return Trace(events)


@pytest.fixture
def stored(db):
    """The hostile run, stored and loaded back through storage, with votes by hostile annotators."""
    from storage import add_vote, load_run, make_comparisons, save_run

    names = [p.replace("\n", " ").strip()[:190] for p in HOSTILE]
    run_id = db.write(lambda s: save_run(s, trace=hostile_trace(), task={"prompt": HOSTILE[0] + HOSTILE[1]},
                                         model=names[1], reward=names[2], sampler=names[0],
                                         config={"n": 3}, seed=0, title=names[3]))
    second = db.write(lambda s: save_run(s, trace=hostile_trace(), task={"prompt": HOSTILE[0]}, model=names[4],
                                         reward=names[5], sampler=names[6], config={}, seed=1))
    comparisons = db.write(lambda s: make_comparisons(s, run_id, "max_min", count=1))
    comparisons += db.write(lambda s: make_comparisons(s, second, "max_min", count=1))
    for k, who in enumerate(names[:6]):
        for cid in comparisons:
            db.write(lambda s, cid=cid, who=who, k=k: add_vote(
                s, comparison_id=cid, annotator=who, outcome=["a", "b", "tie"][k % 3],
                idempotency_key=f"{k}:{cid}", rationale=HOSTILE[k]))
    return db.read(lambda s: load_run(s, run_id)), comparisons


def check_updates(updates: dict, where: str) -> list[str]:
    problems = []
    for component, value in updates.items():
        markdown = isinstance(component, gr.Markdown)
        problems += live_in_update(value, f"{where}/{type(component).__name__}#{getattr(component, 'elem_id', '')}",
                                   markdown=markdown)
    return problems


def test_the_hostile_trace_has_every_view_and_a_payload_in_each_field(stored):
    run, _ = stored
    trace = run.trace
    assert trace.matches and trace.resamples and trace.accepts and trace.pruned and trace.selected
    assert any(n.image for n in trace.nodes.values()) and run.sampler.startswith("<div")
    # the checker itself sees the payloads as live markup, so a view that passes them through fails
    assert live_markup(HOSTILE[0], "raw") and live_markdown(HOSTILE[3], "raw") and live_markdown(HOSTILE[0], "raw")


def test_view_functions_render_no_live_markup(stored):
    from app.ui.panel import candidate_html, image_grid
    from app.views import trace as views

    trace = stored[0].trace
    problems = []
    for name in ("tree_figure", "reward_figure", "bracket_figure", "particles_figure", "acceptance_figure"):
        problems += live_in_figure(getattr(views, name)(trace), name)
    problems += live_markup(image_grid(trace), "image_grid")
    problems += live_markup(views.particle_grid_html(trace), "particle_grid_html")
    problems += live_markdown(views.cost_markdown({"generated_tokens": HOSTILE[0], "wall_seconds": float("nan")}, HOSTILE[0]), "cost")
    for node_id in [*trace.nodes, HOSTILE[0], None]:
        problems += live_markup(candidate_html(trace, node_id), f"candidate_html({node_id!r:.30})")
    views.candidate_rows(trace)  # plain table cells: only that it renders
    assert not problems, "\n".join(problems[:20])


def test_runs_tab_open_and_list_render_no_live_markup(services, stored):
    from app.ui.runs import RunsTab

    with gr.Blocks():
        runs = RunsTab(services)
    problems = []
    for updates in runs.replay(stored[0].id, steps=2):
        problems += check_updates(updates, "replay")
    listing = runs.list()
    assert listing[runs.table]
    problems += check_updates({k: v for k, v in listing.items() if k is not runs.table}, "list")
    assert not problems, "\n".join(problems[:20])


def test_label_and_data_tabs_render_no_live_markup(services, stored):
    from app.ui.data import DataTab
    from app.ui.label import LabelTab, reveal_markdown
    from storage import present

    with gr.Blocks():
        label = LabelTab(services)
        data = DataTab(services)
    problems = []
    token = label.ensure_identity(None)
    shown = label.next(token)
    assert shown[label.current] is not None
    problems += check_updates(shown, "label.next")
    problems += check_updates(label.vote("left", shown[label.current], HOSTILE[0], token), "label.vote")
    for cid in stored[1]:
        presentation = services.db.read(lambda s, cid=cid: present(s, cid))
        for choice in ("left", "right", "tie"):
            problems += live_markdown(reveal_markdown(presentation, choice, True), "reveal")
        problems += live_markup(presentation.prompt and label.next(token).get(label.prompt, ""), "prompt")
    stats = data.stats()
    assert "Cohen" in stats[data.annotators]
    problems += check_updates(stats, "data.stats")
    assert not problems, "\n".join(problems[:20])


def test_explore_status_lines_render_no_live_markup():
    from app.ui.explore import error_markdown, progress_text
    from engines.runner import RunRequest

    request = RunRequest.build(model="toy:abc", reward="length", prompt="go")
    problems = live_markdown(progress_text(hostile_trace(), request, 0.0, finished=True), "progress")
    problems += live_markdown(error_markdown(HOSTILE[0] + HOSTILE[3]), "error")
    assert not problems, "\n".join(problems)


def test_bad_images_never_reach_plotly_or_an_img():
    from app.views import trace as views
    from app.views.render import image_tag, png_data_uri

    for bad in BAD_IMAGES:
        assert png_data_uri(bad) is None and image_tag(bad) == ""
        trace = Trace([NodeEvent(id="r", parent=None, text="p"), NodeEvent(id="a", parent="r", depth=1, image=bad, final=True)])
        assert not views.tree_figure(trace).to_plotly_json()["layout"].get("images")
