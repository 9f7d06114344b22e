"""GenSelect: an LLM reads several candidates at once and names the best (listwise selection).

Toshniwal et al., 2025, "GenSelect: A Generative Approach to Best-of-N" (arXiv:2507.17797):
draw N candidates; a judge model is shown the problem and a *window* of W candidates,
numbered, and writes (reasoning, then) ``Judgment: i``. When N exceeds W the candidates
play a tournament: consecutive groups of W, each group's pick goes on to the next round,
until one is left (a group of one is a bye). To cancel position bias every group is judged
twice, in the given order and reversed (``both_orders``); the candidate named more often
wins the group, a split goes to the higher reward of the run's reward, then to the
earlier candidate.

The judge's output is untrusted text: :func:`parse_choice` reads only the last
``Judgment: <number>`` (also ``Best: ...`` / ``Answer: ...``, ``#3``, ``[3]``,
``Solution 3``) within the window's range; anything else counts as no vote, and a group
with no vote at all goes to the run's reward (the prune reason says so). The raw output
never enters the trace.

The judge is ``judge`` (a model spec: ``openai:URL`` for a served model, ``hf:...``, ...),
or the run's own model when empty; it decodes greedily at ``judge_temperature`` 0. Every
judge call is one reward call; its prompt and output tokens are reward tokens. Tests pass
a scripted judge (``GenSelect(config, judge=...)``, the :class:`ListwiseJudge` protocol).

Live view: each group's decision is a set of ``match`` events (the pick against every
other member, P = the share of the two orderings that named the pick) and ``prune``
events for the members that lost, so the bracket view shows the tournament.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Sequence
from typing import Any, Protocol

from engines.config import param
from engines.errors import ConfigError
from engines.models.base import SamplingParams
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.candidates import Candidate, draw_scored, open_root
from engines.task import Task
from engines.trace import Cost, Event, MatchEvent, PruneEvent, SelectEvent

PROMPT = (
    "You will be given a problem and {count} candidate solutions, numbered 1 to {count}. "
    "Compare them and decide which one is most likely correct.\n\n"
    "Problem:\n{problem}\n\n{solutions}\n\n"
    "Explain briefly, then end with a line 'Judgment: N', N the number of the best solution."
)
SYSTEM = "You are a careful, strict grader."
_CHOICE = re.compile(r"(?:judg(?:e)?ment|best|answer)\s*[:=\-]?\s*(?:is\s*)?(?:solution|candidate|response)?\s*[#\[(]?\s*(\d{1,4})",
                     re.IGNORECASE)


def parse_choice(output: str, count: int) -> int | None:
    """The 0-based candidate a judge's output names (its last ``Judgment: N``), or None
    when it names none, or a number outside 1..count."""
    if not isinstance(output, str):
        return None
    found = _CHOICE.findall(output[-20000:])  # a runaway output: only its tail can hold the verdict
    if not found:
        return None
    number = int(found[-1])
    return number - 1 if 1 <= number <= count else None


class ListwiseJudge(Protocol):
    name: str

    def judge(self, task: Task, candidates: Sequence[str], usage: Cost) -> str:
        """The judge's raw output for ``candidates`` shown in this order (untrusted)."""


class ModelJudge:
    """A text model as a listwise judge: the GenSelect prompt, decoded greedily (or at ``temperature``)."""

    def __init__(self, model: Any, max_tokens: int, temperature: float, rng: Any) -> None:
        if getattr(model, "modality", None) != "text":
            raise ConfigError("genselect's judge must be a text model")
        self.model, self.rng, self.name = model, rng, f"genselect:{model.name}"
        self.params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature)

    def prompt_ids(self, task: Task, candidates: Sequence[str]) -> list[int]:
        solutions = "\n\n".join(f"Solution {i + 1}:\n{c}" for i, c in enumerate(candidates))
        text = PROMPT.format(count=len(candidates), problem=task.prompt, solutions=solutions)
        return self.model.encode_task(Task(prompt=text, system=SYSTEM))

    def judge(self, task: Task, candidates: Sequence[str], usage: Cost) -> str:
        ids = self.prompt_ids(task, candidates)
        room = self.model.context_length
        if room is not None and len(ids) + self.params.max_new_tokens > room:
            raise ConfigError(f"the judge {self.model.name!r} holds {room} tokens; a window of {len(candidates)} candidates "
                              f"needs {len(ids)} + {self.params.max_new_tokens}: use a smaller window or a longer-context judge")
        spent = Cost()
        (gen,) = self.model.sample([ids], self.params, n=1, rng=self.rng, usage=spent)[0]
        usage.add(reward_tokens=spent.prefill_tokens + spent.cached_prompt_tokens + spent.generated_tokens,
                  requests=spent.requests)
        return gen.text


class GenSelectConfig(GenerationConfig):
    label = "GenSelect (listwise LLM selection)"
    paper = "Toshniwal et al. 2025, GenSelect: A Generative Approach to Best-of-N (arXiv:2507.17797)"
    summary = "A judge model reads a window of candidates and names the best; a tournament over windows when N is larger."

    n: int = param(8, label="N", min=1, max=1024, help="Candidates drawn.")
    window: int = param(4, label="Window", min=2, max=64, help="Candidates the judge reads at once.")
    both_orders: bool = param(True, label="Both orders", help="Judge every window forwards and reversed (cancels position bias).")
    judge: str = param("", label="Judge model", help="A model spec (openai:URL for a served judge); empty: the run's model.")
    judge_tokens: int = param(256, label="Judge tokens", min=1, max=8192, help="Most tokens the judge may write.", advanced=True)
    judge_temperature: float = param(0.0, label="Judge temperature", min=0.0, max=2.0, step=0.05, advanced=True, help="0 is greedy.")
    batch_size: int = param(16, label="Batch size", min=1, max=256, help="Candidates per model call.", advanced=True)


@SAMPLERS.register("genselect")
class GenSelect(Sampler):
    name = "genselect"
    Config = GenSelectConfig
    def __init__(self, config: GenSelectConfig | None = None, *, judge: ListwiseJudge | None = None) -> None:
        super().__init__(config)
        self._judge = judge

    def judge_for(self, ctx: RunContext) -> ListwiseJudge:
        if self._judge is not None:
            return self._judge
        cfg: GenSelectConfig = self.config  # type: ignore[assignment]
        from engines.models import load_model

        model = load_model(cfg.judge) if cfg.judge else ctx.model
        return ModelJudge(model, cfg.judge_tokens, cfg.judge_temperature, ctx.rng)

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: GenSelectConfig = self.config  # type: ignore[assignment]
        judge = self.judge_for(ctx)
        prefix, root = open_root(ctx)
        yield root
        found: list[Candidate] = []
        while len(found) < cfg.n:
            found += yield from draw_scored(ctx, prefix, min(cfg.batch_size, cfg.n - len(found)), cfg)
        alive, round_index, calls = found, 0, 0
        while len(alive) > 1:
            round_index += 1
            winners = []
            for start in range(0, len(alive), cfg.window):
                group = alive[start : start + cfg.window]
                if len(group) == 1:
                    winners.append(group[0])
                    continue
                best, made = yield from self._decide(ctx, judge, group, round_index)
                calls += made
                winners.append(best)
            alive = winners
            yield ctx.cost_event()
        ctx.metrics.update(rounds=round_index, judge_calls=calls)
        yield SelectEvent(nodes=[alive[0].id], reason=f"won {round_index} listwise round(s) judged by {judge.name}")

    def _decide(
        self, ctx: RunContext, judge: ListwiseJudge, group: list[Candidate], round_index: int
    ) -> Generator[Event, None, tuple[Candidate, int]]:
        """One window: the judge's pick (both orders when asked), its match and prune events."""
        cfg: GenSelectConfig = self.config  # type: ignore[assignment]
        orders = [list(range(len(group)))] + ([list(reversed(range(len(group))))] if cfg.both_orders else [])
        votes = [0] * len(group)
        for order in orders:
            ctx.check("reward_calls", "reward_tokens")  # cancel, or no reward call left
            output = judge.judge(ctx.task, [group[i].text for i in order], ctx.cost)
            ctx.cost.add(reward_calls=1)
            choice = parse_choice(output, len(group))
            if choice is not None:
                votes[order[choice]] += 1
        parsed = sum(votes)
        # most votes; a split (or no vote) goes to the run's reward, then to the earlier candidate
        best_index = max(range(len(group)), key=lambda i: (votes[i], group[i].reward or 0.0, -i))
        best = group[best_index]
        share = votes[best_index] / parsed if parsed else 0.5
        how = "no parseable judgment: the reward decided" if not parsed else f"{votes[best_index]} of {len(orders)} judgments"
        for i, other in enumerate(group):
            if i == best_index:
                continue
            yield MatchEvent(round=round_index, a=best.id, b=other.id, p_a=share, winner=best.id, reward=judge.name)
            yield PruneEvent(node=other.id, reason=f"lost listwise round {round_index} ({how})")
        return best, len(orders)
