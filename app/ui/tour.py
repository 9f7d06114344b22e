"""The Tour tab: one sample, best-of-N and a guided sampler on the same prompts, in two minutes.

Three steps on the embedded arithmetic model (``embedded:arith``, a 0.9M-parameter
Llama, so each step runs in well under a minute on a laptop CPU), each on the same
built-in prompts ``arith:0`` .. ``arith:K-1`` with the same seed. Each step says in
one sentence what the user is looking at, and names two rewards honestly:

* the reward that **picks** (steers): what the sampler optimises. It never sees
  the answer key: ``arith_orm``, a learned outcome reward model, and ``arith_prm``,
  a learned process reward model, both trained by the project on the task.
* the reward that **judges**: ``math``, 1 if the pick's final answer equals the
  reference answer (the answer key), used only to score the pick afterwards.

A sampler steered by the answer key itself would be an oracle (pass@N), not a
sampler anyone can deploy; the Tour never does that, and says so.

Every run is stored like an Explore run (Runs lists them, a link replays them), so
the Label tab can pair the steps' picks across runs (same prompt, different
sampler) and votes rank the samplers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.ui.services import Services, error_message
from app.views.render import md_text

MODEL = "embedded:arith"
JUDGE = "math"
HEADERS = ["prompt", "step", "sampler", "picked by", "pick (verbatim)", "judged by math", "tokens"]


@dataclass(frozen=True)
class TourStep:
    title: str
    sentence: str  # what the user is looking at, in one sentence
    sampler: str
    picker: str  # the reward that steers / picks; never the answer key
    params: dict[str, Any]


STEPS = (
    TourStep(
        "1. One sample",
        "One answer per prompt straight from the model (temperature 1): the baseline every sampler must beat.",
        "best_of_n", "arith_orm", {"n": 1, "max_new_tokens": 64},
    ),
    TourStep(
        "2. Best-of-8",
        "Eight answers per prompt; the learned outcome reward arith_orm (it never sees the answer) picks one.",
        "best_of_n", "arith_orm", {"n": 8, "max_new_tokens": 64},
    ),
    TourStep(
        "3. Beam search with a process reward",
        "Four beams grow the working line by line; the learned process reward arith_prm keeps the steps it trusts.",
        "beam_search", "arith_prm", {"beams": 4, "expand": 2, "max_new_tokens": 64, "final_tokens": 64},
    ),
)


def judge_pick(request: Any, trace: Any) -> float | None:
    """The answer key's verdict (``math``: 1 right, 0 wrong) on a run's pick; None without a pick."""
    from engines.rewards import build_reward

    picks = trace.done.picks if trace.done is not None else []
    if not picks:
        return None
    return float(build_reward(JUDGE).score(request.task, [trace.full_text(picks[0])])[0])


def run_step(services: Services, step: TourStep, prompts: int, seed: int, cancel=None):
    """Yield (prompt index, request, trace, verdict) for each prompt; every run is stored."""
    from app.workflows.store import rewards_home, save_request_run
    from engines.runner import RunRequest, execute

    for index in range(prompts):
        request = RunRequest.build(model=MODEL, reward=step.picker, sampler=step.sampler, params=dict(step.params),
                                   task_ref=f"arith:{index}", seed=seed, device=services.device, dtype=services.dtype,
                                   rewards_folder=rewards_home())
        ticket = services.runs.enter()
        try:
            services.runs.start(ticket)
            trace = execute(request, cancel=cancel)
        finally:
            services.runs.leave(ticket)
        save_request_run(services.db, request, trace)
        yield index, request, trace, judge_pick(request, trace)


def step_markdown(step: TourStep, verdicts: list[float | None], tokens: int, seconds: float, prompts: int) -> str:
    right = sum(1 for v in verdicts if v == 1.0)
    return (f"**{md_text(step.title)}** — {md_text(step.sentence, 300)}  \n"
            f"Picked by `{md_text(step.picker)}` · judged by `{JUDGE}` (the answer key) · "
            f"**{right}/{len(verdicts)} right** of {prompts} · {tokens:,} tokens · {seconds:.1f} s")


class TourTab:
    def __init__(self, services: Services) -> None:
        self.services = services
        with gr.Tab("Tour", id="tour"):
            gr.Markdown(
                "### A two-minute tour: does spending more compute at sampling time help?\n"
                f"Three samplers answer the same arithmetic prompts on `{MODEL}` (a tiny model trained by the project). "
                "Each step names **the reward that picks** (what the sampler optimises; it never sees the answer) and "
                f"**the reward that judges** (`{JUDGE}`: 1 if the final answer equals the answer key). "
                "A sampler that picked with the answer key would be an oracle, not a sampler you could deploy."
            )
            with gr.Row():
                self.prompts = gr.Number(4, precision=0, label="Prompts (arith:0 onwards)", elem_id="tour-prompts")
                self.seed = gr.Number(0, precision=0, label="Seed", elem_id="tour-seed")
                self.go = gr.Button("Run the tour", variant="primary", elem_id="tour-run")
            self.steps = [gr.Markdown(f"**{md_text(s.title)}** — {md_text(s.sentence, 300)}", elem_id=f"tour-step-{k}")
                          for k, s in enumerate(STEPS, start=1)]
            self.status = gr.Markdown(elem_id="tour-status")
            self.table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="tour-table",
                                      label="Every pick, verbatim, with the answer key's verdict")
        self.go.click(self.run, [self.prompts, self.seed], [self.status, self.table, *self.steps],
                      concurrency_limit=None, show_progress="hidden")

    def run(self, prompts, seed):
        from app.ui.forms import whole_number

        try:
            count = whole_number("Prompts", prompts)
            seed = whole_number("Seed", seed)
            if not 1 <= count <= 64:
                raise ValueError(f"Prompts must be from 1 to 64, got {count}")
        except Exception as exc:
            yield {self.status: f"⚠ {md_text(error_message(exc), 300)}"}
            return
        token, flag = self.services.start_run()
        rows: list[list[Any]] = []
        try:
            for box, step in zip(self.steps, STEPS, strict=True):
                verdicts: list[float | None] = []
                tokens, start = 0, time.monotonic()
                for index, _, trace, verdict in run_step(self.services, step, count, seed, cancel=flag):
                    verdicts.append(verdict)
                    tokens += int(trace.cost.get("generated_tokens", 0))
                    pick = trace.full_text(trace.done.picks[0]) if trace.done and trace.done.picks else ""
                    rows.append([f"arith:{index}", step.title, step.sampler, step.picker, pick,
                                 None if verdict is None else int(verdict), int(trace.cost.get("generated_tokens", 0))])
                    yield {box: step_markdown(step, verdicts, tokens, time.monotonic() - start, count), self.table: rows,
                           self.status: f"running {md_text(step.title)}: prompt {index + 1}/{count}"}
                    if flag.is_set():
                        yield {self.status: "cancelled"}
                        return
            yield {self.status: "done: every run is stored (Runs tab); the Label tab can pair the steps' picks "
                                "across runs to rank the samplers by people's votes"}
        except Exception as exc:
            yield {self.status: f"⚠ {md_text(error_message(exc), 600)}"}
        finally:
            self.services.finish(token)
