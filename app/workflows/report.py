"""A report to share: one self-contained HTML file for a stored run or sweep.

The file holds everything it shows: plotly.js itself (the copy the plotly package
ships, inlined in a ``<script>``, no CDN), each figure's JSON in a
``<script type="application/json">`` block (``<``, ``>`` and ``&`` written as JSON
``\\u`` escapes, so no string can close the block), the candidate images as PNG data
URIs checked by :func:`app.views.render.image_tag`, and the tables. Every model-written or
stored string reaches the page through ``html.escape`` (text) or
:func:`app.views.render.plain` (plot labels), never as markup. A Content-Security-Policy
meta tag forbids any network fetch, so the file renders the same offline.

A run report: header (sampler, model, reward, seed, status), config, cost, the
candidate tree, the reward distribution, the knockout bracket, the particles, the
acceptance plot where the run has them, and the candidates (the pick first). A sweep
report: the quality-against-compute plot with 95% bootstrap intervals, the points
table, the paired comparisons, the plan, and example picks. A strategy-comparison report
(``compare:NAME``, engines.training.compare): the curves of held-out accuracy, kept share
and KL against samples spent with 95% bootstrap bands over seeds, each strategy at the
matched budget, every run's totals, and the plan.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from app.views.pairs import trace_pairs_figure
from app.views.render import image_tag, plain
from app.views.strategy_compare import FINAL_HEADERS, comparison_figure, final_rows
from app.views.sweep import sweep_figure
from app.views.trace import (
    acceptance_figure,
    bracket_figure,
    cost_markdown,
    particles_figure,
    tree_figure,
)
from engines.errors import ConfigError
from engines.sweep_stats import all_pairs, points
from storage import load_run
from storage.sweeps import load_sweep, sweep_cells

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "font-src data:; connect-src 'none'")
STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;
vertical-align:top;text-align:left}th{background:#f4f4f4}pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;
font-size:12px}.pick{background:#fff3f0}.figure{margin:12px 0}small{color:#666}
"""


def _escape_json(data: str) -> str:
    return data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(f"<td>{_cell(v)}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


class Safe(str):
    """Markup made here from checked parts (an engine PNG's image tag), put in a table as is."""


def _cell(value: Any) -> str:
    if isinstance(value, Safe):
        return str(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


class Page:
    """An HTML page being assembled: sections of escaped text, tables and figures."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.figures: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def raw(self, markup: str) -> None:
        """Markup built here from escaped parts (tables, image tags): never model text as is."""
        self.parts.append(markup)

    def figure(self, fig: go.Figure) -> None:
        k = len(self.figures)
        self.figures.append(_escape_json(fig.to_json()))
        self.parts.append(f'<div class="figure" id="figure-{k}"></div>')

    def render(self) -> str:
        data = "".join(f'<script type="application/json" id="figure-data-{k}">{blob}</script>'
                       for k, blob in enumerate(self.figures))
        boot = (
            "<script>for(const el of document.querySelectorAll('script[id^=\"figure-data-\"]')){"
            "const k=el.id.slice(12);const f=JSON.parse(el.textContent);"
            "Plotly.newPlot('figure-'+k,f.data,f.layout,{displaylogo:false,responsive:true});}</script>"
        )
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{html.escape(self.title)}</title><style>{STYLE}</style>"
            f"<script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{''.join(self.parts)}{data}{boot}"
            "<p><small>Made by samplescope; this file needs no server and no network.</small></p></body></html>"
        )


# -- a run ---------------------------------------------------------------------------------------------------


def run_page(stored: Any) -> Page:
    trace = stored.trace
    page = Page(f"samplescope run {stored.id}: {stored.sampler}")
    page.raw(_table(["sampler", "model", "reward", "seed", "status", "created"],
                    [[stored.sampler, stored.model, stored.reward, stored.seed, stored.status,
                      stored.created_at.isoformat(timespec="seconds")]]))
    page.heading("Prompt")
    page.raw(f"<pre>{html.escape(stored.prompt)}</pre>")
    page.heading("Config and cost")
    page.raw(f"<pre>{html.escape(json.dumps(stored.config, indent=2, ensure_ascii=False, default=str))}</pre>")
    cost_rows = [line.strip("|").split("|") for line in cost_markdown(trace.cost).splitlines()[2:]]
    page.raw(_table(["cost", ""], [[a.strip(), b.strip()] for a, b in cost_rows]))
    page.heading("The search")
    page.figure(tree_figure(trace))
    page.figure(trace_pairs_figure(trace))  # the ordinary reward figure, or a preference pair drawn on the grid
    if trace.matches:
        page.figure(bracket_figure(trace))
    if trace.resamples:
        page.figure(particles_figure(trace))
    if trace.accepts:
        page.figure(acceptance_figure(trace))
    page.heading("Candidates")
    rows, classes = [], []
    for row in sorted(trace.reward_table(), key=lambda r: (not r["picked"], -(r["reward"] or -1e300))):
        rows.append(["★" if row["picked"] else "", row["id"], row["reward"], row["tokens"], row["pruned"] or "",
                     row["text"]])
        classes.append("pick" if row["picked"] else "")
    table = _table(["pick", "id", "reward", "tokens", "pruned", "text"], rows[:200], classes)
    images = [image_tag(r["image"], 48, r["id"]) for r in trace.reward_table() if r["image"]][:64]  # checked PNG tags
    page.raw(table + ("<p>" + "".join(images) + "</p>" if images else ""))
    return page


# -- a sweep ----------------------------------------------------------------------------------------------------


def sweep_page(sweep: Any, prompt_set: Any, cells: list[dict[str, Any]], examples: list[tuple[dict, Any]],
               counter: str = "generated_tokens") -> Page:
    spec = sweep.spec
    page = Page(f"samplescope sweep {sweep.id}: {', '.join(a['label'] for a in spec['arms'])}")
    pts = points(cells)
    page.raw(_table(["prompt set", "prompts", "axis", "levels", "evaluation reward", "engines", "cells", "status"],
                    [[prompt_set.name, spec.get("prompts"), spec["axis"] + (f" ({spec['counter']})" if spec.get("counter") else ""),
                      ", ".join(f"{v:g}" for v in spec["levels"]), spec.get("evaluate") or "the steering reward",
                      ", ".join(spec.get("models") or [prompt_set.model or "the set's model"]),
                      f"{len(cells)}/{sweep.cells_planned}", sweep.status]]))
    page.heading("Quality against compute")
    page.figure(sweep_figure(pts, counter))
    page.raw(_table(["arm", "level", "prompts", "quality", "95% CI", "steering score", "gap", counter, "reward calls",
                     "budget stops"],
                    [[p["arm"], p["level"], p["prompts"], p["quality"], f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}]",
                      p["steer"], p["gap"], p[counter], p["reward_calls"], p["budget_stops"]] for p in pts]))
    pairs = all_pairs(cells)
    if pairs:
        page.heading("Paired comparisons (same prompts, same seeds)")
        page.raw(_table(["A", "B", "level", "prompts", "mean A - B", "95% CI", "A wins", "ties", "B wins"],
                        [[r["a"], r["b"], r["level"], r["prompts"], r["mean_diff"], f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                          r["wins"], r["ties"], r["losses"]] for r in pairs]))
    page.heading("The plan")
    page.raw(f"<pre>{html.escape(json.dumps(spec, indent=2, ensure_ascii=False, default=str))}</pre>")
    if examples:
        page.heading("Example picks")
        rows = []
        for cell, stored in examples:
            pick = stored.trace.selected[0] if stored.trace.selected else None
            node = stored.trace.nodes.get(pick) if pick else None
            shown = image_tag(node.image, 48) if node is not None and node.image else ""
            text = stored.trace.full_text(pick) if pick else ""
            rows.append([cell["arm"], cell["level"], cell["prompt"], stored.prompt[:300], cell["quality"], text[:600],
                         Safe(shown)])
        page.raw(_table(["arm", "level", "prompt #", "prompt", "quality", "pick", "image"], rows))
        page.heading("Their searches")
        for cell, stored in examples:  # each arm's search at its largest level: tree, and bracket or particles
            where = plain(f"{cell['arm']} @ {cell['level']:g}, prompt {cell['prompt']}", 120)  # plotly titles take markup
            page.figure(tree_figure(stored.trace, title=f"{where}: candidate tree"))
            if stored.trace.matches:
                page.figure(bracket_figure(stored.trace, title=f"{where}: knockout bracket"))
            if stored.trace.resamples:
                page.figure(particles_figure(stored.trace, title=f"{where}: particles"))
    return page


# -- a strategy comparison ------------------------------------------------------------------------------------


def comparison_page(plan: Any, cells: list[dict[str, Any]]) -> Page:
    """A strategy comparison (engines.training.compare): its curves, each strategy at the budget, its runs, its plan."""
    from engines.training.compare import comparison_curves, final_points

    config = plan.config
    page = Page(f"samplescope strategy comparison {plan.name}: {', '.join(plan.strategies)}")
    page.raw(_table(["policy", "prompts", "held-out prompts", "reward", "samples budget", "seeds", "runs"],
                    [[config.policy, config.prompts, f"{config.eval_prompts} (first {config.eval_size})",
                      f"{config.reward} ({config.reward_control})", config.samples, len(plan.seeds),
                      f"{len(cells)}/{len(plan.cells())}"]]))
    page.heading("Curves against samples spent (mean over seeds, 95% bootstrap band)")
    page.figure(comparison_figure(comparison_curves(cells)))
    page.heading("At the matched budget")
    page.raw(_table(FINAL_HEADERS, final_rows(final_points(cells, config.samples))))
    page.heading("Runs")
    page.raw(_table(["strategy", "seed", "status", "updates", "samples", "tokens", "seconds", "trained policy"],
                    [[c["strategy"], c["seed"], c["status"], c.get("updates"), c.get("samples"), c.get("tokens"),
                      c.get("seconds"), c.get("policy_spec")] for c in cells]))
    page.heading("The plan")
    page.raw(f"<pre>{html.escape(json.dumps(plan.as_dict(), indent=2, ensure_ascii=False, default=str))}</pre>")
    return page


def comparison_html(name: str) -> str:
    from app.workflows.store import training_home
    from engines.training.compare import comparison_dir, load_plan, stored_cells

    folder = comparison_dir(training_home(), name)
    return comparison_page(load_plan(folder), stored_cells(folder)).render()


# -- a reward audit ------------------------------------------------------------------------------------------------


def audit_page(report: Any) -> Page:
    """The reward audit's figures and tables (``app.workflows.reward_audit.AuditReport``)."""
    from app.views.audit import accuracy_figure, best_of_n_figure, master_key_figure

    data = report.as_dict()
    cfg = data["config"]
    page = Page(f"samplescope reward audit: {cfg['reward']}")
    page.raw(_table(["reward", "prompt set", "prompts", "samples", "evaluation reward", "accepted samples", "N", "k", "seed"],
                    [[cfg["reward"], cfg["prompts"], data["prompt_count"], data["samples"], cfg["evaluate"],
                      data["base_accuracy"], cfg["n"], cfg["k"], cfg["seed"]]]))

    def ci(row: dict[str, Any]) -> str:
        return "" if row.get("rate") is None else f"[{row['low']:.3f}, {row['high']:.3f}]"

    page.heading("Master keys")
    page.text(f"A key is a false positive when the evaluation reward rejects it and {data['master_keys']['rule']}.")
    page.figure(master_key_figure(data))
    page.raw(_table(["key", "group", "false-positive rate", "95% CI", "prompts"],
                    [[r["key"], r["group"], r["rate"], ci(r), r["prompts"]] for r in data["master_keys"]["by_key"]]))
    page.heading("One right answer against many wrong, and accuracy by category")
    page.figure(accuracy_figure(data))
    rows = [[f"one-vs-{data['one_vs_many']['k']}", data["one_vs_many"]["rate"], ci(data["one_vs_many"]), data["one_vs_many"]["prompts"]],
            ["right vs wrong pairs", data["pairwise_accuracy"]["rate"], ci(data["pairwise_accuracy"]), data["pairwise_accuracy"]["prompts"]]]
    rows += [[r["category"], r["rate"], ci(r), r["prompts"]] for r in data["by_category"]]
    page.raw(_table(["measure", "accuracy", "95% CI", "prompts"], rows))
    page.heading("Length and selection")
    page.raw(_table(["Spearman rho with tokens", "mean", "95% CI", "prompts"],
                    [[name, row["rate"], ci(row), row["prompts"]] for name, row in data["length"].items()]))
    page.figure(best_of_n_figure(data))
    page.raw(_table(["N", "picks rejected", "95% CI", "prompts"], [[r["n"], r["rate"], ci(r), r["prompts"]] for r in data["best_of_n"]]))
    return page


def write_report(db: Any, target: str, out: str | Path) -> Path:
    """``run:ID``, ``sweep:ID``, ``compare:NAME`` (a strategy comparison), ``steer:NAME`` (steer or train?,
    app.workflows.steer_or_train) or a bare run id -> the HTML file at ``out``."""
    from engines.training.loop import NAME_CHARS

    kind, _, ident = str(target).partition(":") if ":" in str(target) else ("run", "", str(target))
    if kind == "compare" and ident and set(ident) <= NAME_CHARS:
        html_text = comparison_html(ident)
    elif kind == "steer" and ident and set(ident) <= NAME_CHARS:
        from app.workflows.steer_or_train import load_result, steer_or_train_page

        html_text = steer_or_train_page(load_result(ident)).render()
    elif kind not in ("run", "sweep") or not ident.strip().isdigit():
        raise ConfigError(f"report takes run:ID, sweep:ID, compare:NAME, steer:NAME or a run id, got {target!r}")
    else:
        html_text = report_html(db, kind, int(ident))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_text, encoding="utf-8")
    return path


def report_html(db: Any, kind: str, ident: int) -> str:
    if kind == "run":
        return run_page(db.read(lambda s: load_run(s, ident))).render()

    def read(session):
        sweep, prompt_set = load_sweep(session, ident)
        cells = sweep_cells(session, ident)
        chosen, seen = [], set()
        for cell in sorted(cells, key=lambda c: (c["prompt"], c["arm"], -c["level"])):
            if cell["arm"] not in seen and len(chosen) < 12:  # the largest level of each arm on the first prompt
                seen.add(cell["arm"])
                chosen.append((cell, load_run(session, cell["run_id"])))
        return sweep, prompt_set, cells, chosen

    sweep, prompt_set, cells, chosen = db.read(read)
    counter = sweep.spec.get("counter") or "generated_tokens"
    return sweep_page(sweep, prompt_set, cells, chosen, counter).render()
