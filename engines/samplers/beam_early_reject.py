"""Beam search with in-step early rejection: partial steps scored by the process reward.

Cheshmi, Khan, Wang, Liu & Anwar, 2025, "Accelerating LLM Reasoning via Early Rejection
with Partial Reward Modeling" (arXiv:2508.01969, Findings of EMNLP 2025; public code
scheshmi/accelerated-reasoning-ER-PRM, ``partial_beam_search``). Their hypothesis: a PRM is
also a *partial* reward model, so its score of a step cut after τ tokens already predicts
the score of the finished step, and a beam-search step need not finish every candidate.

One iteration, for K beams with M expansions each (N = K·M candidates; the first draws all
N from the prompt, as :mod:`engines.samplers.beam_search` does):

1. every candidate step is sampled for at most τ tokens (``prefix_tokens``), with the step's
   own stop rule, so a step that ends sooner is already whole;
2. every candidate is scored: a whole step by the step reward as in beam search, a cut one
   by the reward's partial score (:meth:`engines.rewards.base.StepReward.score_partial`:
   ``arith_prm`` reads its dense head at the last token, ``arith_steps`` says whether the
   text can still become a valid solution), aggregated with the beam's earlier step scores;
3. the cut: ``rank`` keeps the ``survivors`` best of the N (default K, the paper's N/M of N
   in its notation), ``threshold`` keeps those scoring at least ``threshold`` (and always the
   best one, so the search goes on); the rest are pruned and their steps are never finished;
   those tokens are what the method saves;
4. the surviving cut steps are finished (up to the step cap less τ), scored whole, and beam
   search proceeds as usual: the K best unfinished children are the next beams, finished
   solutions join the pool, the pick is the best finished one. Steps equal to a sibling's
   are merged, as beam search merges identical expansions (whole steps before scoring,
   finished survivors after), and equal cut prefixes are scored once.

With ``prefix_tokens = 0`` no step is cut and the run is exactly ``beam_search`` (same seed,
same trace). A step whose cap (the context's room) is at most τ runs whole: there is
nothing to save. In the tree a finished survivor is two nodes: its first τ tokens (scored
partially) and, as their child, the rest of the step (scored whole).

Symbols: K = ``beams``, M = ``expand``, τ = ``prefix_tokens``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Sequence

from engines.config import param
from engines.errors import ConfigError
from engines.models.base import Generation, SamplingParams
from engines.rewards.base import aggregate
from engines.samplers import SAMPLERS
from engines.samplers.base import RunContext
from engines.samplers.beam_search import BeamSearch, BeamSearchConfig
from engines.samplers.stepwise import Partial, fit_step, prune, score
from engines.trace import Event, NodeEvent, ScoreEvent

CUTS = ("rank", "threshold")


class BeamEarlyRejectConfig(BeamSearchConfig):
    label = "Beam search, early rejection (partial PRM)"
    paper = ("Cheshmi et al. 2025, Accelerating LLM Reasoning via Early Rejection with Partial Reward Modeling "
             "(arXiv:2508.01969)")
    summary = "Beam search that scores every candidate step after τ tokens and finishes only those that pass the cut."

    prefix_tokens: int = param(4, label="Score after τ tokens", min=0, max=4096,
                               help="Score each candidate step after this many of its tokens; 0 turns early rejection off (plain beam search).")
    cut: str = param("rank", label="Cut", choices=CUTS,
                     help="rank: the best `survivors` candidates go on; threshold: those whose partial score reaches `threshold`.")
    survivors: int = param(0, label="Survivors", min=0, max=4096,
                           help="cut=rank: candidates of a step that are finished (0: K, the beam width, as in the paper).")
    threshold: float = param(0.5, label="Partial threshold", min=-1e9, max=1e9, step=0.01,
                             help="cut=threshold: a candidate whose partial score is below this stops (the best one always goes on).")

    def validate(self) -> None:
        super().validate()
        cap = min(self.max_new_tokens, self.final_tokens)
        if self.prefix_tokens and self.prefix_tokens >= cap:
            raise ConfigError(f"prefix_tokens ({self.prefix_tokens}) must be below max_new_tokens and final_tokens ({cap}): "
                              "a step must have tokens left to save")


def passes_cut(values: Sequence[float], cfg: BeamEarlyRejectConfig) -> list[bool]:
    """Which candidates go on, given their (partial or whole) scores in generation order:
    the rank cut keeps the best ``survivors`` (the first of equals), the threshold cut those
    at or above ``threshold`` and at least the best one."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    if cfg.cut == "rank":
        kept = set(order[: cfg.survivors or cfg.beams])
    else:
        kept = {i for i in order if values[i] >= cfg.threshold} or set(order[:1])
    return [i in kept for i in range(len(values))]


def child(ctx: RunContext, parent: Partial, gen: Generation, *, step_prefix: str = "", ids: list[int] | None = None,
          logprob: float = 0.0, proposal: float = 0.0) -> Partial:
    """The partial solution ``parent`` + (``step_prefix`` +) ``gen`` as one new step."""
    return Partial(
        id=ctx.new_id(), ids=(ids if ids is not None else parent.ids) + gen.token_ids,
        steps=[*parent.steps, step_prefix + gen.text],
        logprob=parent.logprob + logprob + gen.logprob,
        proposal_logprob=parent.proposal_logprob + proposal + float(sum(gen.sample_logprobs)),
        parent=parent,
    )


@SAMPLERS.register("beam_early_reject")
class BeamEarlyReject(BeamSearch):
    name = "beam_early_reject"
    Config = BeamEarlyRejectConfig

    def grow(self, ctx: RunContext, beams: list[Partial], k: int, params: SamplingParams | None) -> Generator[Event, None, list[Partial]]:
        cfg: BeamEarlyRejectConfig = self.config  # type: ignore[assignment]
        tau = cfg.prefix_tokens
        whole = fit_step(ctx, beams, 0, params or cfg.step_params())  # k=0: only the context's cut
        if not tau or tau >= whole.max_new_tokens:
            return (yield from super().grow(ctx, beams, k, params))
        candidates = yield from draw_prefixes(ctx, beams, k, dataclasses.replace(whole, max_new_tokens=tau), cfg)
        candidates = yield from score_prefixes(ctx, candidates, cfg)
        go_on = passes_cut([c.value for c, _ in candidates], cfg)  # type: ignore[misc]
        rejected = [(c, cut) for (c, cut), ok in zip(candidates, go_on, strict=True) if not ok]
        ctx.metrics["rejected_early"] = ctx.metrics.get("rejected_early", 0) + sum(cut for _, cut in rejected)
        yield from prune([c for c, _ in rejected], f"rejected after {tau} tokens: partial score below the {cfg.cut} cut")
        survivors = [(c, cut) for (c, cut), ok in zip(candidates, go_on, strict=True) if ok]
        rest = dataclasses.replace(whole, max_new_tokens=whole.max_new_tokens - tau, min_new_tokens=max(0, whole.min_new_tokens - tau),
                                   entropy_min_tokens=max(1, whole.entropy_min_tokens - tau))
        finished = yield from finish_steps(ctx, [c for c, cut in survivors if cut], rest, cfg)
        return (yield from merge_copies([finished.get(c.id, c) for c, _ in survivors]))


def draw_prefixes(ctx: RunContext, beams: list[Partial], k: int, head: SamplingParams,
                  cfg: BeamEarlyRejectConfig) -> Generator[Event, None, list[tuple[Partial, bool]]]:
    """Step 1: ``k`` candidate steps of every beam, at most τ tokens each; (candidate, cut mid-step)."""
    head = fit_step(ctx, beams, k, head)
    out: list[tuple[Partial, bool]] = []
    for beam, gens in zip(beams, ctx.generate([b.ids for b in beams], head, n=k), strict=True):
        for gen in gens:
            c, cut = child(ctx, beam, gen), gen.finish_reason == "length"
            c.done = not cut and (gen.finish_reason == "eos" or c.depth >= cfg.max_steps)
            out.append((c, cut))
            yield NodeEvent(id=c.id, parent=beam.id, depth=c.depth, text=gen.text, tokens=len(gen.token_ids),
                            logprob=gen.logprob, final=c.done, meta={"finish": gen.finish_reason, "cut_at_prefix": cut})
    return out


def score_prefixes(ctx: RunContext, candidates: list[tuple[Partial, bool]],
                   cfg: BeamEarlyRejectConfig) -> Generator[Event, None, list[tuple[Partial, bool]]]:
    """Step 2: whole steps scored as in beam search (copies merged first, as beam search merges
    identical expansions), cut ones by the partial score (equal prefixes scored once)."""
    whole_steps = yield from merge_copies([c for c, cut in candidates if not cut])
    candidates = [(c, cut) for c, cut in candidates if cut or any(c is w for w in whole_steps)]
    yield from score(ctx, whole_steps, cfg.aggregate)
    prefixes: dict[tuple[str | None, tuple[int, ...]], list[Partial]] = {}
    for c, cut in candidates:
        if cut:
            prefixes.setdefault((c.parent.id if c.parent else None, tuple(c.ids)), []).append(c)
    values = ctx.score_partial([group[0].steps for group in prefixes.values()]) if prefixes else []
    for group, value in zip(prefixes.values(), values, strict=True):
        for c in group:
            c.value = aggregate([*(c.parent.scores if c.parent else []), value], cfg.aggregate)  # type: ignore[arg-type]
            yield ScoreEvent(node=c.id, reward=ctx.reward.name, value=c.value, partial=True)
    return candidates


def finish_steps(ctx: RunContext, going: list[Partial], rest: SamplingParams,
                 cfg: BeamEarlyRejectConfig) -> Generator[Event, None, dict[str, Partial]]:
    """Step 4: the surviving cut steps finished (each the child of its first τ tokens in the tree)
    and scored whole; returns the finished step by the id of its cut prefix."""
    if not going:
        return {}
    finished: dict[str, Partial] = {}
    for c, (gen,) in zip(going, ctx.generate([c.ids for c in going], fit_step(ctx, going, 1, rest), n=1), strict=True):
        assert c.parent is not None
        step = child(ctx, c.parent, gen, step_prefix=c.steps[-1], ids=c.ids,
                     logprob=c.logprob - c.parent.logprob, proposal=c.proposal_logprob - c.parent.proposal_logprob)
        step.done = gen.finish_reason == "eos" or step.depth >= cfg.max_steps
        finished[c.id] = step
        yield NodeEvent(id=step.id, parent=c.id, depth=step.depth, text=gen.text, tokens=len(gen.token_ids),
                        logprob=gen.logprob, final=step.done, meta={"finish": gen.finish_reason})
    yield from score(ctx, list(finished.values()), cfg.aggregate)
    return finished


def merge_copies(children: list[Partial]) -> Generator[Event, None, list[Partial]]:
    """The children without later copies of a sibling's step (same parent, same tokens): beam
    search draws distinct expansions, and copies would fill the beam with one solution."""
    seen: set[tuple[str | None, tuple[int, ...]]] = set()
    out: list[Partial] = []
    copies: list[Partial] = []
    for c in children:
        key = (c.parent.id if c.parent else None, tuple(c.ids))
        (copies if key in seen else out).append(c)
        seen.add(key)
    yield from prune(copies, "the same step as a sibling")
    return out
