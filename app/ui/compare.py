"""The Compare tab: samplers on a prompt set, quality against compute, live.

For each chosen sampler and each N in 1, 2, 4, ... up to the budget, every
prompt of the set is run with ``n = N``; a point is the mean generated tokens
per prompt (compute) against the mean evaluation reward of the picks
(quality: accuracy when the evaluation reward is a verifier such as ``math``).
Steering and evaluation rewards are separate, so a learned reward can steer
while the verifier judges, which is how over-optimisation shows.
"""

from __future__ import annotations

import statistics
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from app.ui.services import Services, error_message
from app.ui.views import _layout, empty
from engines.runner import RunRequest, load_parts, stream
from engines.trace import Trace

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def scaling_figure(points: list[dict]) -> go.Figure:
    if not points:
        return empty("Quality against compute", "no points yet")
    fig = go.Figure()
    for k, name in enumerate(dict.fromkeys(p["sampler"] for p in points)):
        mine = [p for p in points if p["sampler"] == name]
        fig.add_trace(go.Scatter(
            x=[p["tokens"] for p in mine], y=[p["quality"] for p in mine], mode="lines+markers+text", name=name,
            text=[f"N={p['n']}" for p in mine], textposition="top center", line={"color": PALETTE[k % len(PALETTE)]},
            hovertext=[f"{name} N={p['n']}: quality {p['quality']:.3f}, {p['tokens']:.0f} tokens/prompt" for p in mine],
            hoverinfo="text",
        ))
    fig.update_xaxes(title="generated tokens per prompt", type="log")
    fig.update_yaxes(title="quality (mean evaluation reward of the pick)")
    return _layout(fig, "Quality against compute", height=420, showlegend=True)


class CompareTab:
    def __init__(self, services: Services) -> None:
        from engines.samplers import SAMPLERS
        from engines.tasks import TASK_SETS

        self.services = services
        flat = [name for name, cls in SAMPLERS.items() if "text" in cls.modalities and "n" in {s.name for s in cls.Config.specs()}]
        sets = TASK_SETS.names()
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                self.samplers = gr.CheckboxGroup(flat, value=[s for s in ("best_of_n", "majority") if s in flat], label="Samplers")
                self.task_set = gr.Dropdown(sets, value="arith" if "arith" in sets else sets[0], label="Prompt set")
            with gr.Row():
                self.model = gr.Textbox(label="Model (empty: the set's model)")
                self.reward = gr.Textbox(label="Steering reward (empty: the set's)")
                self.evaluate = gr.Textbox(label="Evaluation reward (empty: the steering reward)")
            with gr.Row():
                self.prompts = gr.Slider(1, 50, value=8, step=1, label="Prompts", elem_id="compare-prompts")
                self.max_n = gr.Dropdown([1, 2, 4, 8, 16, 32, 64], value=8, label="Largest N (the budget)", elem_id="compare-max-n")
                self.tokens = gr.Slider(8, 512, value=64, step=8, label="Max new tokens", elem_id="compare-tokens")
                self.seed = gr.Number(0, precision=0, label="Seed")
            with gr.Row():
                self.go = gr.Button("Run comparison", variant="primary", elem_id="compare-run")
                self.stop = gr.Button("Cancel", variant="stop")
            self.status = gr.Markdown(elem_id="compare-status")
            self.plot = gr.Plot(label="Quality against compute", elem_id="compare-plot")
            self.table = gr.Dataframe(headers=["sampler", "N", "tokens/prompt", "quality", "prompts"], interactive=False)
            # states live inside the Tab: a State directly under gr.Tabs makes Gradio 6.31 draw duplicate tab buttons
            self.token = gr.State(None)
        inputs = [self.samplers, self.task_set, self.model, self.reward, self.evaluate, self.prompts, self.max_n, self.tokens, self.seed]
        self.go.click(self.run, inputs, [self.status, self.plot, self.table, self.token],
                      concurrency_limit=services.concurrency, concurrency_id="samplers", show_progress="hidden")
        self.stop.click(lambda t: "cancelling…" if services.cancel(t) else "nothing is running", [self.token], [self.status],
                        concurrency_limit=None)

    def run(self, samplers, task_set, model, reward, evaluate, prompts, max_n, tokens, seed):
        from engines.rewards import RewardEnv, build_reward
        from engines.tasks import TASK_SETS

        if not samplers:
            yield {self.status: "⚠ choose at least one sampler"}
            return
        token, flag = self.services.start_run()
        points: list[dict[str, Any]] = []
        try:
            tasks = TASK_SETS.get(task_set).tasks()[: int(prompts)]
            grid = [2**k for k in range(int(max_n).bit_length()) if 2**k <= int(max_n)]
            judges: dict[str, Any] = {}  # evaluation reward by spec, built once per run
            yield {self.token: token, self.status: "loading…", self.plot: scaling_figure([]), self.table: []}
            for name in samplers:
                for n in [n for n in grid if n >= n_min(name)]:  # knockout needs two to play
                    tokens_used, quality = [], []
                    for i, task in enumerate(tasks):
                        if flag.is_set():
                            yield {self.status: f"cancelled after {len(points)} points"}
                            return
                        request = RunRequest.build(
                            model=model.strip() or None, reward=reward.strip() or None, sampler=name,
                            params={"n": n, "max_new_tokens": int(tokens)}, task_ref=f"{task_set}:{i}",
                            seed=int(seed or 0) + i, device=self.services.device, dtype=self.services.dtype,
                        )
                        # without an evaluation reward each prompt is judged by its own steering reward
                        # (a set's prompts may name different ones), not by the first prompt's
                        spec = evaluate.strip() or request.reward
                        if spec not in judges:
                            model_obj, steer, _ = load_parts(request)
                            judges[spec] = build_reward(spec, RewardEnv(model=model_obj)) if evaluate.strip() else steer
                        judge = judges[spec]
                        trace = Trace(stream(request, cancel=flag))
                        tokens_used.append(trace.cost["generated_tokens"])
                        picks = [trace.full_text(p) for p in trace.done.picks[:1]]
                        quality.append(judge.score(task, picks)[0] if picks else 0.0)
                        yield {self.status: f"{name}, N={n}: prompt {i + 1}/{len(tasks)}"}
                    points.append({"sampler": name, "n": n, "tokens": statistics.fmean(tokens_used),
                                   "quality": statistics.fmean(quality), "prompts": len(tasks)})
                    yield {self.plot: scaling_figure(points), self.table: table_rows(points)}
            yield {self.status: f"done: {len(points)} points", self.token: None}
        except Exception as exc:
            yield {self.status: f"⚠ {error_message(exc)}", self.token: None}
        finally:
            self.services.finish(token)


def n_min(sampler: str) -> int:
    """The smallest N the sampler accepts (its config's bound on ``n``)."""
    from engines.samplers import SAMPLERS

    spec = next(s for s in SAMPLERS.get(sampler).Config.specs() if s.name == "n")
    return int(spec.min or 1)


def table_rows(points: list[dict]) -> list[list[Any]]:
    return [[p["sampler"], p["n"], round(p["tokens"], 1), round(p["quality"], 4), p["prompts"]] for p in points]
