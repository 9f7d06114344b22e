"""The pure figure builders (app/views/trace.py) and the sanitiser (app/views/render.py), on traces of toy runs."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pytest

from app.ui.panel import candidate_html
from app.views import trace as views
from app.views.render import plain, verbatim
from engines.runner import RunRequest, execute
from engines.trace import ResampleEvent, Trace
from tests.app.helpers import XSS_IMG, XSS_LINK, XSS_PAYLOADS, XSS_RAW, XSS_SCRIPT, make_trace


def toy_run(sampler: str, reward: str = "length", model: str = "toy:abc", **params) -> Trace:
    return execute(RunRequest.build(model=model, reward=reward, sampler=sampler, params=params, prompt="go", seed=3))


def markers(fig) -> list:
    return [t for t in fig.data if t.mode and "markers" in t.mode]


def hover_texts(fig) -> list[str]:
    return [h for t in fig.data for h in (t.hovertext or ())]


# -- the candidate tree -------------------------------------------------------------------------------------


def test_tree_has_every_node_pruned_grey_and_the_pick_starred():
    trace = toy_run("rejection", n=12, batch_size=4)
    assert trace.pruned, "rejection sampling prunes its rejected proposals"
    fig = views.tree_figure(trace)
    assert fig.layout.uirevision == "keep"  # a user's zoom survives live updates

    grey, coloured, star = markers(fig)
    assert grey.marker.color == views.GREY and star.marker.symbol == "star"
    assert len(grey.x) + len(coloured.x) == len(trace.nodes)
    # grey: exactly the pruned nodes and the unscored ones (the root); coloured by reward otherwise
    unscored = {i for i in trace.nodes if i not in trace.scores}
    assert len(grey.x) == len(set(trace.pruned) | unscored)
    assert list(coloured.marker.color) == [trace.reward(i) for i in trace.nodes if i not in trace.pruned and i not in unscored]

    pick = trace.selected[0]
    assert [h.split("</b>")[0] for h in star.hovertext] == [f"<b>{pick}"]
    chosen_edges = [t for t in fig.data if t.mode == "lines" and t.line.color == views.PICK]
    assert len(chosen_edges) == 1 and chosen_edges[0].line.width == 3
    assert chosen_edges[0].x[:2] == (0, 1)  # root (depth 0) to the pick (depth 1)


def test_tree_of_a_growing_trace_grows():
    trace = toy_run("best_of_n", n=6, batch_size=2)
    sizes = []
    partial = Trace()
    for event in trace.events:
        partial.append(event)
        fig = views.tree_figure(partial)
        sizes.append(sum(len(t.x) for t in markers(fig) if t.marker.symbol != "star"))
    assert sizes[-1] == len(trace.nodes) == 7
    assert sizes == sorted(sizes)


# -- the reward distribution -----------------------------------------------------------------------------


def test_reward_histogram_marks_every_candidate_the_pick_and_the_mean():
    trace = make_trace(["a", "bb", "ccc", "dddd", "eeeee"], [0.1, 0.5, 0.2, 0.9, 0.4], pick=3)
    fig = views.reward_figure(trace)
    hist = next(t for t in fig.data if t.type == "histogram")
    ticks = next(t for t in fig.data if t.type == "scatter")
    assert sorted(hist.x) == sorted(ticks.x) == [0.1, 0.2, 0.4, 0.5, 0.9]
    assert list(ticks.marker.color).count(views.PICK) == 1
    assert ticks.marker.color[list(ticks.x).index(0.9)] == views.PICK
    labels = [a.text for a in fig.layout.annotations]
    assert labels == ["μ", "μ-2σ", "μ+2σ", "pick"]
    mean = sum(hist.x) / 5
    assert math.isclose(fig.layout.shapes[0].x0, mean) and fig.layout.shapes[-1].x0 == 0.9
    assert fig.layout.uirevision == "keep"


def test_reward_histogram_of_a_real_toy_run():
    trace = toy_run("best_of_n", reward="regex:^a", n=8)
    fig = views.reward_figure(trace)
    ticks = next(t for t in fig.data if t.type == "scatter")
    assert len(ticks.x) == 8 and set(ticks.x) <= {0.0, 1.0}


# -- the knockout bracket, particles, acceptance ------------------------------------------------------------


def test_bracket_has_one_point_per_match_and_the_final_winner_in_red():
    trace = toy_run("knockout", n=6)
    fig = views.bracket_figure(trace)
    (points,) = fig.data
    assert len(points.x) == len(trace.matches) > 0
    assert sorted(set(points.x)) == list(range(len(trace.bracket())))  # rounds as columns
    played = [t for t in points.text if "bye" not in t]
    assert all(t.startswith("P(") and " beats " in t and "→" in t for t in played)
    final = len(points.x) - 1
    assert points.text[final].endswith(f"<b>{trace.selected[0]}</b>") and points.marker.color[final] == views.PICK
    assert fig.layout.uirevision == "keep"


def test_bracket_fills_in_as_matches_are_played():
    trace = toy_run("knockout", n=4)
    partial, counts = Trace(), []
    for event in trace.events:
        partial.append(event)
        if event.kind == "match":
            counts.append(len(views.bracket_figure(partial).data[0].x))
    assert counts == list(range(1, len(trace.matches) + 1))


def test_particles_figure_shows_lineage_weights_and_ess():
    trace = Trace([
        ResampleEvent(step=1, particles=["a", "b", "c"], ancestors=[0, 0, 2], log_weights=[0.0, -1.0, float("-inf")], ess=1.8),
        ResampleEvent(step=2, particles=["d", "e", "f"], ancestors=[1, 1, 1], log_weights=[-0.5, 0.0, -2.0], ess=2.4),
    ])
    fig = views.particles_figure(trace)
    lines, dots, ess = fig.data
    assert lines.x.count(None) == 3  # each particle of step 2 drawn to its ancestor at step 1
    assert list(lines.y) == [0, 0, None, 0, 1, None, 2, 2, None]
    assert len(dots.x) == 6 and dots.marker.color[2] == 0.0 and max(dots.marker.color) == 1.0
    assert list(ess.y) == [1.8, 2.4]


def test_acceptance_figure_of_a_rejection_run():
    trace = toy_run("rejection", n=10, batch_size=5)
    fig = views.acceptance_figure(trace)
    probability, rate = fig.data
    assert len(probability.x) == len(trace.accepts) > 0
    assert rate.y[-1] == sum(a.accepted for a in trace.accepts) / len(trace.accepts)


@pytest.mark.parametrize("build", [views.tree_figure, views.reward_figure, views.bracket_figure,
                                   views.particles_figure, views.acceptance_figure])
def test_every_view_of_an_empty_trace_is_a_placeholder(build):
    fig = build(Trace())
    assert not fig.data and fig.layout.annotations[0].text


# -- untrusted text ----------------------------------------------------------------------------------------------


def test_model_text_is_escaped_in_every_hover_box():
    payload = " ".join(XSS_PAYLOADS)
    trace = make_trace([payload, "fine", payload + "\nline two"], [0.3, 0.1, 0.2], pruned=(1,), root=XSS_SCRIPT)
    hovers = hover_texts(views.tree_figure(trace)) + hover_texts(views.reward_figure(trace))
    assert len(hovers) >= 4 + 3
    for text in hovers:
        lowered = text.lower()
        assert "<script" not in lowered and "<img" not in lowered and "<div" not in lowered
    joined = "".join(hovers)
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in joined
    assert "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;" in joined
    assert "(pruned: below &lt;b&gt;threshold&lt;/b&gt;)" in joined  # the prune reason is escaped too
    assert "line two" in joined and "<br>line two" in joined  # our own line breaks survive


def test_candidate_rows_are_plain_text_with_the_pick_first():
    trace = make_trace(["low", XSS_IMG, "high"], [0.1, 0.5, 0.9], pick=1)
    rows = views.candidate_rows(trace)
    assert [r[0] for r in rows] == ["★", "", ""] and [r[1] for r in rows] == ["n1", "n2", "n0"]
    assert rows[0][5] == XSS_IMG  # the table shows it as a string; gr.Dataframe renders str cells as text


def test_plain_truncates_and_escapes():
    assert plain("<b>x</b>\ny") == "&lt;b&gt;x&lt;/b&gt;<br>y"
    assert plain("z" * 50, 10) == "z" * 10 + "…"


def elements(html: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every element the browser would build from ``html``: (tag, attributes)."""
    found: list[tuple[str, dict[str, str | None]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Collect().feed(html)
    return found


@pytest.mark.parametrize("payload", [*XSS_PAYLOADS, " ".join(XSS_PAYLOADS)])
def test_verbatim_neutralises_active_content(payload):
    html = verbatim(f"Before.\n\n{payload}\n\nAfter.")
    built = elements(html)
    assert [tag for tag, _ in built] == ["pre"]  # our one element; nothing the model wrote is an element
    assert "Before." in html and "After." in html


def test_verbatim_shows_the_payload_as_text():
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in verbatim(XSS_SCRIPT)
    assert "&lt;img src=x onerror=" in verbatim(XSS_IMG)
    assert "[x](javascript:window.__xss=1)" in verbatim(XSS_LINK)
    assert "&lt;div" in verbatim(XSS_RAW) and "raw html" in verbatim(XSS_RAW)
    assert "<a" not in verbatim('<a href="javascript:alert(1)">click</a>')


def test_verbatim_interprets_no_markdown():
    written = "#### 667\n\n12*4=48 and *em* and `code`\n- one\n  two"
    html = verbatim(written)
    for tag in ("<h4>", "<em>", "<code>", "<li>"):
        assert tag not in html
    inner = html[html.index(">") + 1 : html.rindex("</pre>")]
    assert inner.replace("&#x27;", "'").replace("&quot;", '"') == written  # every character and line break kept


def test_candidate_detail_is_sanitised_and_names_the_pick():
    trace = make_trace([" ".join(XSS_PAYLOADS), "b"], [0.7, 0.2], pick=0)
    html = candidate_html(trace, "n0")
    assert "<code>n0</code> — <strong>picked</strong>" in html and "toy = 0.7" in html
    assert {tag for tag, _ in elements(html)} == {"p", "code", "br", "small", "strong", "pre"}
    assert [attrs for _, attrs in elements(html) if attrs] == [{"class": "model-text"}]  # the verbatim block's, no other
    assert "Pick a candidate" in candidate_html(trace, "nope")
