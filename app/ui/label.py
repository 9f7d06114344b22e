"""The Label tab: blind pairwise preferences, stored through storage's rules.

Pairs come from stored runs by one of storage's pair strategies, or across
runs: the picks of runs on the same prompt with different samplers or models
(e.g. a Compare sweep's cells), the only pairs whose votes say which sampler
is better. A comparison is shown blind (no rewards, no sampler or model names)
with its sides as recorded at creation, drawn at random. The names and rewards
are revealed once the vote is in, in a closed "previous pair" box that names
the pair it belongs to, so they never read as the next blind pair's.
Buttons A, B, Tie, Both bad and Skip answer to the keys 1, 2, 3, 4 and s
(static/keys.js). Each shown comparison carries an idempotency key, so a
repeated click or a replayed request stores nothing new; every rule (the
comparison exists, the annotator may vote on it, a valid outcome, a rationale
within limits) is checked by storage on the server.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import gradio as gr

from app.ui.services import Services, error_message
from app.views.render import image_tag, md_text, verbatim

CHOICES = [("A is better", "left", "1", "vote-a"), ("B is better", "right", "2", "vote-b"),
           ("Tie", "tie", "3", "vote-tie"), ("Both bad", "both_bad", "4", "vote-bad"), ("Skip", "skip", "s", "vote-skip")]


def annotator_name(services: Services, request: gr.Request | None, token: str | None) -> str:
    """The signed-in user under --auth (the only identity there), else the guest the server signed ``token`` for."""
    user = getattr(request, "username", None) if request is not None else None
    if user:
        return str(user)
    if services.users is not None:
        raise ValueError("sign in first")
    guest = services.guests.verify(token)
    if guest is None:
        raise ValueError("this browser has no guest id from this server: reload the page")
    return guest


def annotator_state(secret: str | None = None) -> gr.BrowserState:
    """This browser's guest token (issued and signed by the server, see app.ui.identity), kept in localStorage.

    Create it outside ``gr.Tabs``: inside a tab it is mounted only once the tab is first opened, so
    the page-load event reads None and every reload becomes a new guest; directly under ``gr.Tabs``
    it makes Gradio 6.31 draw duplicate tab buttons.

    Gradio encrypts the stored value with ``secret`` (a random one per process by default, which would
    make every guest new after a restart); build_demo passes one derived from the server's secret.
    """
    return gr.BrowserState(None, storage_key="samplescope-annotator", secret=secret)


def side_html(shown: Any) -> str:
    if shown.image:
        return image_tag(shown.image, 192)
    return verbatim(shown.text)


def strategy_choices(strategies) -> list[tuple[str, str]]:
    """The pair strategies as the picker offers them: across runs first (it ranks samplers), then within one run."""
    from storage import CROSS_RUN

    return ([("across runs: same prompt, different sampler or model (ranks samplers)", CROSS_RUN)]
            + [(f"within a run: {name}", name) for name in strategies] + [(name, name) for name in learned_strategies()])


def learned_strategies() -> list[str]:
    """``uncertain:NAME`` for every learned reward in the data folder (storage.pairs)."""
    from app.workflows.store import rewards_home
    from engines.rewards.learned import list_learned

    return [f"uncertain:{card['name']}" for card in list_learned(rewards_home()) if card.get("name")]


class LabelTab:
    def __init__(self, services: Services, browser_id: gr.BrowserState | None = None) -> None:
        """``browser_id``: the per-browser annotator id, made by the caller outside ``gr.Tabs`` (see build_demo)."""
        from storage import STRATEGIES

        self.services = services
        self.browser_id = browser_id if browser_id is not None else annotator_state()
        with gr.Tab("Label", id="label", elem_id="label-panel") as self.tab:
            self.who = gr.Markdown(elem_id="label-who")
            with gr.Accordion("Make pairs from stored runs", open=False):
                with gr.Row():
                    self.pair_runs = gr.Textbox(label="Run ids", placeholder="e.g. 3, 5 (empty: the 20 newest runs)", scale=2)
                    self.sweep = gr.Dropdown([], value=None, label="or a Compare sweep's runs", scale=1, elem_id="label-sweep")
                    self.strategy = gr.Dropdown(strategy_choices(STRATEGIES), value="max_min",
                                                label="Pair strategy", scale=1, allow_custom_value=True, elem_id="label-strategy")
                    self.count = gr.Number(1, precision=0, minimum=1, label="Pairs per run (random)", scale=1)
                    self.make = gr.Button("Make pairs", scale=0, elem_id="label-make")
                self.made = gr.Markdown(elem_id="label-made")
            self.progress = gr.Markdown(elem_id="label-progress")
            self.prompt = gr.HTML(elem_id="label-prompt", elem_classes=["candidate-text"])
            with gr.Row(equal_height=True):
                with gr.Column():
                    gr.Markdown("**A**")
                    self.left = gr.HTML(elem_id="label-left", elem_classes=["candidate-text", "label-side"])
                with gr.Column():
                    gr.Markdown("**B**")
                    self.right = gr.HTML(elem_id="label-right", elem_classes=["candidate-text", "label-side"])
            self.rationale = gr.Textbox(label="Rationale (optional)", lines=2, max_length=2000, elem_id="label-rationale")
            with gr.Row():
                self.buttons = [gr.Button(f"{text} ({key})", elem_id=elem) for text, _, key, elem in CHOICES]
            self.stored = gr.Markdown(elem_id="label-stored")
            # closed, and naming its own pair: the last pair's identities never sit under the next blind pair
            with gr.Accordion("Previous pair, revealed", open=False, elem_id="label-reveal-box"):
                self.reveal = gr.Markdown(elem_id="label-reveal")
            # states live inside the Tab: a State directly under gr.Tabs makes Gradio 6.31 draw duplicate tab buttons
            self.current = gr.State(None)  # {comparison_id, key, shown_at}
        shown = [self.who, self.progress, self.prompt, self.left, self.right, self.current, self.rationale]
        for button, (_, choice, _, _) in zip(self.buttons, CHOICES, strict=True):
            button.click(
                self._voter(choice), [self.current, self.rationale, self.browser_id], [self.stored, self.reveal, *shown],
                concurrency_limit=8, concurrency_id="votes", show_progress="hidden", trigger_mode="once",
            )
        self.make.click(self.make_pairs, [self.pair_runs, self.strategy, self.count, self.sweep], [self.made]).then(
            self.next, [self.browser_id], shown
        )
        # what other tabs stored since (runs, sweeps, pairs) shows when the tab is opened, without a reload
        self.tab.select(self.sweeps, [], [self.sweep], show_progress="hidden").then(
            self.next, [self.browser_id], shown, show_progress="hidden")

    # -- handlers --------------------------------------------------------------------

    def ensure_identity(self, token):
        """This browser's token when the server signed it, else a new one (whatever else a client sends is dropped)."""
        return token if self.services.guests.verify(token) else self.services.guests.issue()

    def next(self, browser_id, request: gr.Request = None) -> dict[Any, Any]:
        from storage import queue_state

        try:
            who = annotator_name(self.services, request, browser_id)
            shown, done, remaining = self.services.db.read(lambda s: queue_state(s, who))
        except Exception as exc:
            return {self.progress: f"⚠ {md_text(error_message(exc), 600)}"}
        base = {self.who: f"Labelling as **{md_text(who, 64)}**", self.progress: f"{done} done, {remaining} to go", self.rationale: ""}
        if shown is None:
            return {**base, self.prompt: "<p><em>No pairs left for you. Make pairs from stored runs above.</em></p>",
                    self.left: "", self.right: "", self.current: None}
        state = {"comparison_id": shown.comparison_id, "key": uuid.uuid4().hex, "shown_at": shown.shown_at.isoformat()}
        return {**base, self.prompt: "<p><strong>Prompt</strong></p>" + verbatim(shown.prompt),
                self.left: side_html(shown.left), self.right: side_html(shown.right), self.current: state}

    def _voter(self, choice: str):
        def vote(current, rationale, browser_id, request: gr.Request = None):
            return self.vote(choice, current, rationale, browser_id, request)

        return vote

    def vote(self, choice, current, rationale, browser_id, request=None) -> dict[Any, Any]:
        from storage import add_vote, present

        if not current:
            return {self.stored: "Nothing to vote on.", **self.next(browser_id, request)}
        try:
            who = annotator_name(self.services, request, browser_id)
            comparison_id = int(current["comparison_id"])

            def write(session):
                shown = present(session, comparison_id)
                result = add_vote(
                    session, comparison_id=comparison_id, annotator=who, outcome=shown.outcome(choice),
                    idempotency_key=f"{who}:{current['key']}", rationale=(rationale or None),
                    shown_at=datetime.fromisoformat(current["shown_at"]),
                )
                return shown, result

            shown, result = self.services.db.write(write)
        except Exception as exc:
            return {self.stored: f"⚠ vote not stored: {md_text(error_message(exc), 600)}"}
        said = "" if result.created else " (already stored: nothing new was written)"
        return {self.stored: f"Vote stored{said}. The pair it was on is revealed under *Previous pair*.",
                self.reveal: reveal_markdown(shown, choice, result.created), **self.next(browser_id, request)}

    def sweeps(self) -> dict[Any, Any]:
        from storage.sweeps import list_sweeps

        try:
            choices = [(s.label(), s.id) for s in self.services.db.read(list_sweeps)]
        except Exception as exc:
            gr.Warning(md_text(error_message(exc), 200))
            return {self.sweep: gr.update()}
        return {self.sweep: gr.update(choices=choices)}

    def make_pairs(self, run_ids, strategy, count, sweep=None) -> str:
        from storage import CROSS_RUN, cross_run_comparisons, list_runs, make_comparisons

        try:
            ids = [int(x) for x in (run_ids or "").replace(",", " ").split()]
        except ValueError:
            return "⚠ run ids must be numbers, separated by commas or spaces"
        try:
            if not ids and sweep not in (None, ""):
                ids = self.services.db.read(lambda s: sweep_run_ids(s, int(sweep)))
            if not ids:
                ids = [r.id for r in self.services.db.read(lambda s: list_runs(s, limit=20))]
            if strategy == CROSS_RUN:
                made = self.services.db.write(lambda s: len(cross_run_comparisons(s, ids)))
                return (f"made {made} comparison(s) across {len(ids)} run(s)" if made else
                        f"⚠ no pairs: none of these {len(ids)} run(s) share a prompt with a run of another sampler or model")
            scorer = None
            if (strategy or "").startswith("uncertain:"):  # the learned reward scores the candidates
                from app.workflows.reward_training import reward_scorer

                scorer = reward_scorer("learned:" + strategy.split(":", 1)[1])
            made = self.services.db.write(
                lambda s: sum(len(make_comparisons(s, i, strategy, count=int(count or 1), scorer=scorer)) for i in ids)
            )
        except Exception as exc:
            return f"⚠ {md_text(error_message(exc), 600)}"
        return f"made {made} comparison(s) from {len(ids)} run(s)"


def sweep_run_ids(session, sweep_id: int) -> list[int]:
    """The runs a Compare sweep stored, one per finished cell."""
    from sqlalchemy import select

    from storage.models import SweepCell
    from storage.sweeps import load_sweep

    load_sweep(session, sweep_id)  # a one-line NotFound for an unknown sweep
    return list(session.scalars(select(SweepCell.run_id).where(SweepCell.sweep_id == sweep_id).order_by(SweepCell.id)))


def reveal_markdown(shown: Any, choice: str, created: bool) -> str:
    """Who was behind the pair just voted on, named as that pair (its number and prompt), not as the next one."""
    def side(name: str, s: Any) -> str:
        reward = "-" if s.reward is None else md_text(f"{s.reward:.4g}")
        return f"**{name}**: run {md_text(s.run_id)}, {md_text(s.sampler)} on {md_text(s.model)}, reward {reward}"

    said = {"left": "A", "right": "B", "tie": "a tie", "both_bad": "both bad", "skip": "skip"}[choice]
    again = "" if created else " (already stored: nothing new was written)"
    return (f"Your vote: **{said}**{again}, on pair {md_text(shown.comparison_id)} (prompt “{md_text(shown.prompt, 80)}”).  \n"
            f"{side('A', shown.left)}  \n{side('B', shown.right)}")
