"""DeepConf (online): stop low-confidence traces early, then vote weighted by confidence.

Fu, Wang, Tian & Zhao, 2025, "Deep Think with Confidence" (arXiv:2508.15260), the online
algorithm (its Algorithm 2 and facebookresearch/deepconf ``deepconf-online.py``, read for
the details below):

| paper | here |
|---|---|
| token confidence C_i = -(1/k) Σ_{j≤k} log P_i(j), top-k of the model's distribution | ``confidence_top_k`` (20, as the code's ``logprobs=20``); computed by the model while it decodes |
| group confidence C_G = mean of C_i over a sliding window of w tokens | ``window`` (2048) |
| a trace's lowest group confidence (the mean of all its tokens when shorter than w) | :func:`lowest_group_confidence` |
| warm-up: N_init full traces; s = Percentile_{100-η} of their lowest group confidences | ``warmup``, η = ``keep_percent`` (10: DeepConf-low, 90: DeepConf-high) |
| online: a trace stops at the first token where its window's C_G < s | the model's ``stop_confidence`` (finish reason ``confidence``) |
| adaptive sampling: stop drawing once the leading answer holds a share ≥ τ of the vote weight | ``consensus`` (0.95; 1 turns it off), checked after each batch |
| vote: warm-up traces with lowest confidence ≥ s and online traces that were not stopped, weight = lowest confidence | :func:`confidence_vote` |

A complete online trace shorter than the window can still sit below s (its mean over all
tokens); as in the code it is filtered out of the vote, but it stays a complete candidate.
A stopped trace is a partial node (``final=False``) with a ``prune`` event; the tokens it
generated are metered like any other (stopping saves only what it did not generate). The
confidences come from the model's own decoding loop, so only in-process models
(``toy:``, ``hf:``, ``gguf:``, ``embedded:``) can run it; a served model's server has no such
stop and is refused.

The pick is the highest-confidence trace holding the winning answer.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.base import SamplingParams
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext, Sampler
from engines.samplers.candidates import VoteConfig, answer_key, open_root
from engines.task import Task
from engines.trace import Event, NodeEvent, PruneEvent, ScoreEvent, SelectEvent


class DeepConfConfig(VoteConfig):
    label = "DeepConf (confidence early stopping)"
    paper = "Fu et al. 2025, Deep Think with Confidence (arXiv:2508.15260)"
    summary = ("Warm up on a few traces to set a confidence bar; stop later traces whose sliding-window "
               "confidence falls below it; vote weighted by confidence.")

    n: int = param(32, label="N (budget)", min=1, max=1024, help="Most traces drawn, warm-up included.")
    warmup: int = param(16, label="Warm-up traces", min=1, max=1024, help="Full traces that calibrate the bar (at most N).")
    keep_percent: float = param(10.0, label="Keep top η%", min=0.1, max=100.0, step=0.1,
                                help="The bar is the (100-η)th percentile of warm-up confidences: 10 = DeepConf-low, 90 = DeepConf-high.")
    window: int = param(2048, label="Window (tokens)", min=1, max=65536, help="Tokens in a group confidence.")
    confidence_top_k: int = param(20, label="Top-k", min=1, max=1000, advanced=True,
                                  help="Tokens in the token confidence -mean(top-k log-probs).")
    consensus: float = param(0.95, label="Consensus τ", min=0.5, max=1.0, step=0.01,
                             help="Stop drawing once one answer holds this share of the vote weight (1: never).")

    def sampling(self, **overrides: Any) -> SamplingParams:
        return super().sampling(confidence_top_k=self.confidence_top_k, **overrides)


def lowest_group_confidence(confidences: list[float], window: int) -> float:
    """min over sliding windows of w tokens of their mean confidence; the mean of all when shorter."""
    if not confidences:
        return 0.0
    if len(confidences) < window:
        return math.fsum(confidences) / len(confidences)
    running = math.fsum(confidences[:window])
    lowest = running
    for i in range(window, len(confidences)):
        running += confidences[i] - confidences[i - window]
        lowest = min(lowest, running)
    return lowest / window


@dataclass
class ScoredTrace:
    id: str
    text: str
    confidence: float  # lowest group confidence
    stopped: bool
    warmup: bool


def confidence_vote(traces: list[ScoredTrace], bar: float, answer_format: str) -> dict[str, float]:
    """Vote weight per answer: traces at or above the bar that were not stopped, weighted by confidence."""
    votes: dict[str, float] = {}
    for t in traces:
        if t.stopped or t.confidence < bar:
            continue
        key = answer_key(t.text, answer_format)
        if key is not None:
            votes[key] = votes.get(key, 0.0) + t.confidence
    return votes


@SAMPLERS.register("deepconf")
class DeepConf(Sampler):
    name = "deepconf"
    Config = DeepConfConfig

    def check_inputs(self, task: Task, model: Any, reward: Any) -> None:
        super().check_inputs(task, model, reward)
        if not getattr(model, "confidence_stop", False):
            raise ConfigError(f"deepconf needs an in-process model that reports token confidences; {model.name!r} does not")

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: DeepConfConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        traces: list[ScoredTrace] = []
        warmup = min(cfg.warmup, cfg.n)
        while len(traces) < warmup:
            traces += yield from self._draw(ctx, prefix, min(cfg.batch_size, warmup - len(traces)), cfg.sampling(), True)
        bar = float(np.percentile([t.confidence for t in traces], 100.0 - cfg.keep_percent))
        ctx.metrics["confidence_bar"] = bar
        for t in traces:
            if t.confidence < bar:
                yield PruneEvent(node=t.id, reason=f"filtered: confidence {t.confidence:.3g} below the bar {bar:.3g}")
        online = cfg.sampling(stop_confidence=bar, confidence_window=cfg.window)
        votes = confidence_vote(traces, bar, cfg.answer_format)
        while len(traces) < cfg.n and not self._agreed(votes, cfg.consensus):
            traces += yield from self._draw(ctx, prefix, min(cfg.batch_size, cfg.n - len(traces)), online, False)
            votes = confidence_vote(traces, bar, cfg.answer_format)
        stopped = sum(t.stopped for t in traces)
        ctx.metrics.update(votes=votes, traces=len(traces), stopped=stopped,
                           consensus_stop=len(traces) < cfg.n)
        if not votes:  # the paper returns no answer; the lab still shows the most confident complete trace
            ctx.metrics["note"] = "no trace above the confidence bar gave an extractable answer"
            chosen = max((t for t in traces if not t.stopped), key=lambda t: t.confidence, default=None)
            if chosen is not None:
                yield SelectEvent(nodes=[chosen.id], reason="no answer to vote on: the most confident complete trace")
            return
        winner = max(votes, key=lambda k: votes[k])  # ties go to the answer seen first
        holders = [t for t in traces if not t.stopped and t.confidence >= bar and answer_key(t.text, cfg.answer_format) == winner]
        chosen = max(holders, key=lambda t: t.confidence)
        yield SelectEvent(nodes=[chosen.id], reason=f"answer {winner!r} with confidence weight {votes[winner]:.3g} "
                                                    f"of {sum(votes.values()):.3g} (bar {bar:.3g}, {stopped} traces stopped)")

    @staticmethod
    def _agreed(votes: dict[str, float], consensus: float) -> bool:
        total = sum(votes.values())
        return consensus < 1.0 and total > 0 and max(votes.values()) / total >= consensus

    def _draw(
        self, ctx: RunContext, prefix: list[int], count: int, params: SamplingParams, warmup: bool
    ) -> Generator[Event, None, list[ScoredTrace]]:
        """``count`` traces (as many as the budget allows); stopped ones as pruned partial nodes,
        complete ones scored by the run's reward."""
        cfg: DeepConfConfig = self.config  # type: ignore[assignment]
        affordable = ctx.affordable(count, params.max_new_tokens)
        if affordable == 0:
            raise BudgetExhausted("budget exhausted: no room for another trace")
        generations = ctx.generate([prefix], params, n=min(count, affordable))[0]
        out: list[ScoredTrace] = []
        for gen in generations:
            confidence = lowest_group_confidence(gen.meta.get("confidence", []), cfg.window)
            stopped = gen.finish_reason == "confidence"
            trace = ScoredTrace(ctx.new_id(), gen.text, confidence, stopped, warmup)
            out.append(trace)
            yield NodeEvent(id=trace.id, parent="root", depth=1, text=gen.text, tokens=len(gen.token_ids),
                            logprob=gen.logprob, final=not stopped,
                            meta={"finish": gen.finish_reason, "lowest_confidence": round(confidence, 6),
                                  "phase": "warm-up" if warmup else "online"})
        complete = [t for t in out if not t.stopped]
        if complete:
            for t, value in zip(complete, ctx.score([t.text for t in complete]), strict=True):
                yield ScoreEvent(node=t.id, reward=ctx.reward.name, value=value)
        if not warmup:
            bar = ctx.metrics["confidence_bar"]
            for t in out:
                if t.stopped:
                    yield PruneEvent(node=t.id, reason=f"stopped: window confidence below {bar:.3g}")
                elif t.confidence < bar:
                    yield PruneEvent(node=t.id, reason=f"filtered: confidence {t.confidence:.3g} below {bar:.3g}")
        yield ctx.cost_event()
        return out
