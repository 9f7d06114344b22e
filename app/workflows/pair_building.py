"""Build training pairs from sampled candidates with a pair rule and a filter (CLI and Data tab).

``samplescope pairs`` and the Data tab's "Build training pairs" call :func:`build_pairs`: for every
prompt of a set, draw N candidates from the model (the ``best_of_n`` sampler, so each draw is an
ordinary run with its trace), score them with the reward, pick pairs with a rule of
``engines.pairs``, read each pair again with the filter's rewards and keep the reliable ones.
Everything is checked first (unknown rule, filter, reward or model, an empty prompt set, N < 2, a
temporal rule without an earlier model, AceCoder pairs on prompts without exact checks), so bad
input is one line and stores nothing. With a database the runs are stored and the kept pairs
become comparisons (strategy = the rule), ready to label in the Label tab or to export; ``out``
writes them as TRL preference rows (prompt, chosen, rejected).

Rules: ``max_min``; ``sweet_spot`` (= ``grid:max/mu-2sigma``); ``grid:HI/LO`` (one cell of the
sweet-spot grid); ``grid:all`` (all 21 cells of every prompt); ``mcpo``; ``temporal`` (rejected
from ``earlier_model``); ``acecoder`` (pass rates over the arith exact checks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import ConfigError
from engines.pairs import IndexPair, PairError
from engines.task import Task

RULES = ("max_min", "sweet_spot", "grid:HI/LO", "grid:all", "mcpo", "temporal", "acecoder")
FILTERS = ("none", "upo", "strength")


@dataclass(frozen=True)
class PairPlan:
    """What to build; checks itself on construction (no model is loaded)."""

    model: str
    reward: str
    rule: str
    tasks: tuple[Task, ...]
    n: int = 8
    filter: str = "none"
    readings: tuple[str, ...] = ()  # reward specs the filter reads each pair with (an ensemble)
    keep: float = 0.5  # UPO: share of the favoured pairs kept
    earlier_model: str | None = None
    beta: float = 1.0
    seed: int = 0
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        from engines.pairs.grid import parse_cell
        from engines.pairs.rules import arith_checks

        if not self.tasks:
            raise PairError("the prompt set is empty: give at least one prompt")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 2 <= self.n <= 1024:
            raise PairError(f"N must be an integer from 2 to 1024 (a pair needs two candidates), got {self.n!r}")
        rule = self.rule
        if rule.startswith("grid:") and rule != "grid:all":
            parse_cell(rule[5:])
        elif rule not in RULES:
            raise PairError(f"unknown pair rule {rule!r}; choose one of {', '.join(RULES)}")
        if self.filter not in FILTERS:
            raise PairError(f"unknown pair filter {self.filter!r}; choose one of {', '.join(FILTERS)}")
        if self.filter == "upo" and len(self.readings) < 2:
            raise PairError("the upo filter needs at least two rewards to read each pair with (--readings A,B)")
        if self.filter == "strength" and len(self.readings) < 1:
            raise PairError("the strength filter needs rewards that vote on each pair (--readings A,B,...)")
        if rule == "temporal" and not self.earlier_model:
            raise PairError("temporal pairs take the rejected answer from an earlier model: give --earlier MODEL")
        if rule == "acecoder":
            for task in self.tasks:
                arith_checks(task.prompt, "")  # one line if a prompt has no exact checks
        if not self.beta > 0:
            raise PairError(f"the MC-PO temperature beta must be positive, got {self.beta!r}")

    @property
    def strategy(self) -> str:
        return "grid:max/mu-2sigma" if self.rule == "sweet_spot" else self.rule


@dataclass
class PromptPairs:
    """One prompt: its candidates (text, reward), the pairs made, and the runs they came from."""

    task: Task
    texts: list[str]
    rewards: list[float]
    node_ids: list[str]
    pairs: list[IndexPair]
    traces: dict[str, Any] = field(default_factory=dict)  # "later" / "earlier" -> Trace
    earlier: tuple[list[str], list[float], list[str]] | None = None  # temporal: the earlier model's


@dataclass
class BuiltPair:
    prompt: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    rule: str
    kept: bool
    flipped: bool
    statistic: float


@dataclass
class PairBuild:
    plan: PairPlan
    prompts: list[PromptPairs]
    pairs: list[BuiltPair]
    run_ids: list[int] = field(default_factory=list)
    comparison_ids: list[int] = field(default_factory=list)

    @property
    def kept(self) -> list[BuiltPair]:
        return [p for p in self.pairs if p.kept]

    def summary(self) -> dict[str, Any]:
        return {"rule": self.plan.strategy, "filter": self.plan.filter, "prompts": len(self.prompts),
                "pairs": len(self.pairs), "kept": len(self.kept), "runs": self.run_ids, "comparisons": self.comparison_ids,
                "rows": [p.__dict__ for p in self.kept]}


def _draw(model_spec: str, reward_spec: str, task: Task, plan: PairPlan, seed: int, parts_cache: dict,
          device: str = "auto", dtype: str = "fp32") -> tuple[Any, Any]:
    """(request, trace) of best-of-N on one prompt: every candidate scored."""
    from engines.runner import RunRequest, load_parts, stream_parts
    from engines.trace import Trace

    params: dict[str, Any] = {"n": plan.n}
    if plan.max_new_tokens is not None:
        params["max_new_tokens"] = plan.max_new_tokens
    from app.workflows.store import rewards_home

    request = RunRequest.build(model=model_spec, reward=reward_spec, sampler="best_of_n", params=params, task=task,
                               seed=seed, rewards_folder=rewards_home(), device=device, dtype=dtype)
    if model_spec not in parts_cache:
        parts_cache[model_spec] = load_parts(request)
    trace = Trace()
    for event in stream_parts(request, *parts_cache[model_spec]):
        trace.append(event)
    return request, trace


def _rows(trace: Any) -> tuple[list[str], list[float], list[str]]:
    rows = [r for r in trace.reward_table() if r["reward"] is not None]
    return [r["text"] for r in rows], [float(r["reward"]) for r in rows], [r["id"] for r in rows]


def choose_pairs(plan: PairPlan, texts: list[str], rewards: list[float], task: Task, rng: Any,
                 earlier: list[float] | None = None) -> list[IndexPair]:
    """The rule's pairs among one prompt's candidates (indices into ``texts``; temporal: rejected into the earlier's)."""
    from engines.pairs.grid import grid_pair, grid_pairs
    from engines.pairs.mcpo import mcpo_pair
    from engines.pairs.rules import arith_pass_rate, pass_rate_pairs, temporal_pair

    if len(rewards) < 2 and plan.rule != "temporal":
        return []
    rule = plan.strategy
    if rule == "max_min":
        pair = grid_pair(rewards, "max", "min")
        return [IndexPair(pair.chosen, pair.rejected, "max_min")] if pair else []
    if rule == "grid:all":
        return [p for p in grid_pairs(rewards).values() if p is not None]
    if rule.startswith("grid:"):
        pair = grid_pair(rewards, *rule[5:].split("/"))
        return [pair] if pair else []
    if rule == "mcpo":
        pair = mcpo_pair(rewards, rng, plan.beta)
        return [pair] if pair else []
    if rule == "temporal":
        pair = temporal_pair(earlier or [], rewards) if earlier and rewards else None
        return [pair] if pair else []
    rates = [arith_pass_rate(task.prompt, t) for t in texts]
    return pass_rate_pairs(rates, max_pairs=1)


def _readers(specs: Sequence[str]) -> list[Any]:
    """The filter's rewards, built before any sampling (an unknown spec is one line, nothing drawn)."""
    from app.workflows.store import rewards_home
    from engines.models import load_model
    from engines.rewards import RewardEnv, build_reward
    from engines.rewards.base import Reward

    readers = []
    for spec in specs:
        reward = build_reward(spec, RewardEnv(load_model=load_model, rewards_folder=rewards_home()))
        if not isinstance(reward, Reward):
            raise PairError(f"the filter reads each side with an outcome reward; {spec!r} is not one")
        readers.append(reward)
    return readers


def build_pairs(plan: PairPlan, *, db: Any = None, out: str | Path | None = None,
                progress: Callable[[int, int], None] | None = None, device: str = "auto", dtype: str = "fp32") -> PairBuild:
    """Sample, score, pick, filter; store the runs and kept pairs in ``db`` and write ``out`` if given."""
    import numpy as np
    import torch

    from engines.pairs.reliability import apply_filter

    if out is not None and Path(out).suffix != ".jsonl":
        raise PairError(f"the pairs file is JSONL (TRL preference rows): name it .jsonl, got {str(out)!r}")
    if out is not None and not Path(out).resolve().parent.is_dir():  # before anything is sampled or stored
        raise PairError(f"no folder {str(Path(out).resolve().parent)!r} for the pairs file {str(out)!r}")
    readers = _readers(plan.readings)
    parts: dict[str, Any] = {}
    rng = torch.Generator().manual_seed(plan.seed)
    prompts: list[PromptPairs] = []
    for index, task in enumerate(plan.tasks):
        seed = plan.seed * 1_000_003 + index
        request, trace = _draw(plan.model, plan.reward, task, plan, seed, parts, device, dtype)
        texts, rewards, nodes = _rows(trace)
        entry = PromptPairs(task, texts, rewards, nodes, [], {"later": (request, trace)})
        early_rewards = None
        if plan.rule == "temporal":
            early_request, early_trace = _draw(plan.earlier_model, plan.reward, task, plan, seed, parts, device, dtype)
            entry.earlier = _rows(early_trace)
            entry.traces["earlier"] = (early_request, early_trace)
            early_rewards = entry.earlier[1]
        entry.pairs = choose_pairs(plan, texts, rewards, task, rng, early_rewards)
        prompts.append(entry)
        if progress is not None:
            progress(index + 1, len(plan.tasks))
    flat = [(entry, pair) for entry in prompts for pair in entry.pairs]

    def side_texts(entry: PromptPairs, pair: IndexPair) -> tuple[str, str, float, float]:
        rejected_from = entry.earlier if plan.rule == "temporal" else (entry.texts, entry.rewards, entry.node_ids)
        return (entry.texts[pair.chosen], rejected_from[0][pair.rejected], entry.rewards[pair.chosen],
                rejected_from[1][pair.rejected])

    sides = [side_texts(e, p) for e, p in flat]
    if flat and readers:
        both = np.array([[reader.score(e.task, [s[0], s[1]]) for (e, _), s in zip(flat, sides, strict=True)] for reader in readers],
                        dtype=float)  # [readers, pairs, 2]
        chosen, rejected = both[..., 0], both[..., 1]
        options = {"keep": plan.keep} if plan.filter == "upo" else {}
        verdict = apply_filter(plan.filter, chosen, rejected, **options)
        keep, flip, stat = verdict.keep, verdict.flip, verdict.statistic
    else:
        keep, flip, stat = np.ones(len(flat), bool), np.zeros(len(flat), bool), np.zeros(len(flat))
    built = []
    for (entry, pair), (c, r, rc, rr), k, f, s in zip(flat, sides, keep, flip, stat, strict=True):
        if f:
            c, r, rc, rr = r, c, rr, rc
        built.append(BuiltPair(entry.task.prompt, c, r, rc, rr, pair.rule, bool(k), bool(f), float(s)))
    result = PairBuild(plan, prompts, built)
    if db is not None:
        _store(db, result, flat, keep, flip)
    if out is not None:
        rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "rule": p.rule,
                 "chosen_reward": p.chosen_reward, "rejected_reward": p.rejected_reward} for p in result.kept]
        Path(out).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return result


def _store(db: Any, result: PairBuild, flat: Sequence[tuple[PromptPairs, IndexPair]], keep: Any, flip: Any) -> None:
    from app.workflows.store import save_request_run
    from storage.pairs import store_built_pairs

    run_of: dict[tuple[int, str], int] = {}
    for index, entry in enumerate(result.prompts):
        for role, (request, trace) in entry.traces.items():
            run_of[(index, role)] = save_request_run(db, request, trace)
    result.run_ids = list(run_of.values())
    refs = []
    position = {id(entry): i for i, entry in enumerate(result.prompts)}
    for (entry, pair), k, f in zip(flat, keep, flip, strict=True):
        if not k:
            continue
        i = position[id(entry)]
        chosen = (run_of[(i, "later")], entry.node_ids[pair.chosen])
        rejected = ((run_of[(i, "earlier")], entry.earlier[2][pair.rejected]) if entry.earlier
                    else (run_of[(i, "later")], entry.node_ids[pair.rejected]))
        refs.append((rejected, chosen) if f else (chosen, rejected))
    refs = list(dict.fromkeys(refs))  # grid:all: several cells can name one pair; it is one comparison
    if refs:
        ids = db.write(lambda s: store_built_pairs(s, refs, strategy=result.plan.strategy[:64], seed=result.plan.seed))
        result.comparison_ids = list(dict.fromkeys(ids))


def plan_from_inputs(*, model: str | None, reward: str | None, rule: str, prompt_set: str | None = None,
                     prompts: Sequence[str] = (), limit: int | None = None, db: Any = None, **options: Any) -> PairPlan:
    """A plan from what a user types: a stored or built-in prompt set (its model and reward are the defaults)
    or prompts given one by one; ``limit`` keeps the first prompts of a set."""
    tasks: list[Task] = []
    set_model = set_reward = None
    if prompt_set:
        from app.workflows.sweeps import resolve_prompt_set

        if db is not None:
            _, found = db.write(lambda s: resolve_prompt_set(s, prompt_set))
        else:
            from engines.prompts import builtin_names, builtin_prompt_set

            if prompt_set not in builtin_names():
                raise ConfigError(f"no built-in prompt set {prompt_set!r}; known: {', '.join(builtin_names())}")
            found = builtin_prompt_set(prompt_set)
        tasks += list(found.tasks)
        set_model, set_reward = found.model, found.reward
    tasks += [Task(prompt=p) for p in prompts if p.strip()]
    if limit is not None:
        if limit < 1:
            raise PairError(f"--limit must be at least 1, got {limit}")
        tasks = tasks[:limit]
    return PairPlan(model=(model or set_model or "embedded:smollm2"), reward=(reward or set_reward or "sentiment"),
                    rule=rule, tasks=tuple(tasks), **options)
