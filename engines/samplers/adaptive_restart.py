"""Adaptive restart: a predictor of P(a restart would do better) decides, mid-generation and
after each batch, whether to continue a candidate, prune it, or sample more.

Manvi, Singh & Ermon, 2024, "Adaptive Inference-Time Compute: LLMs Can Predict if They Can
Do Better, Even Mid-Generation" (arXiv:2410.02725). The paper's self-evaluation is one token
the policy emits after the question "Would you do better if you started over?"; its
probability is trained on the policy's own samples to equal the chance that a fresh sample
beats the current (partial) response. Here the predictor is pluggable (:class:`RestartPredictor`):

- ``oracle`` (toy models): exact by enumeration of the toy's sequence law at the temperatures
  the run uses, and of the run's reward on every sequence;
- ``arith`` (``embedded:arith``): a small token-classification head trained like the lab's
  ORM/PRM on exact labels (``scripts/train_arith_restart.py``, ``engines/assets/arith/restart``,
  MODEL_CARD.md), under the final-answer check at T=1 whatever the run's reward.

| paper | here |
|---|---|
| P(win) = 1 - P(restart better), ties count as wins | ``q`` = P(r(fresh) > r(finished form of this prefix)) |
| adaptive sampling: batches of exponentially growing size, stop once the best so far is predicted good enough | batch sizes ``batch_growth``^r (1, 2, 4, ...); stop when q(best) <= ``stop_threshold`` |
| early pruning after a fixed number of tokens (64 / 128 there) | at ``checkpoint_tokens`` every unfinished sample with q > ``prune_threshold`` is pruned |
| temperature annealing: the first samples, which are often the only ones, near greedy; later ones more diverse | T_k = T + (T_1 - T)·γ^k for the k-th sample drawn (k = samples before its batch): ``first_temperature`` T_1, ``temperature`` T, ``anneal_rate`` γ |

The full text of the paper was not reachable from this lab's search tool: the batch growth,
the stop rule on the best sample's P(win), pruning at a token checkpoint and the direction of
the annealing (low temperature first, diversity later) follow its abstract and method as
summarised there; the geometric form of the schedule is this module's. Setting
``first_temperature`` above ``temperature`` gives the opposite schedule (later samples cooler).

Decisions as utility maximisation (tests/engines/test_adaptive_restart.py checks every one
against a brute-force enumeration on a toy): continuing a prefix is worth its win probability
against a restart, 1 - q, and pruning it is worth 1 - τ_prune (the win probability asked of a
prefix worth finishing): prune iff q > τ_prune. Another batch is worth its myopic gain
E[max(r', r_best)] - r_best, which for a 0/1 reward is exactly q(best); at a price of τ_stop
per sample in reward units the run samples more iff q(best) > τ_stop.

Every prediction is metered as one reward call (the predictor is a scoring model like a PRM;
the oracle is charged the same so budgets compare); the run's reward scores finished samples,
and the pick is the best of them by that reward.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.arith import ASSETS, load_hf
from engines.models.base import Generation
from engines.models.sampling import warp
from engines.rewards.arith import _pad_right, orm_input_ids
from engines.rewards.base import Reward
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.task import Task
from engines.trace import Cost, Event, NodeEvent, PruneEvent, ScoreEvent, SelectEvent

RESTART_DIR = ASSETS / "restart"
PREDICTION = "p_restart_better"


# ---------------------------------------------------------------------------
# predictors


@dataclass(frozen=True)
class Prefix:
    """A candidate so far (completion text, no prompt), whether it is finished, the temperature
    its tokens were drawn at (its continuation's law) and the one a restart would be drawn at."""

    text: str
    finished: bool
    temperature: float
    restart_temperature: float


class RestartPredictor(Reward):
    """q(x) = P(a fresh sample scores strictly higher than x's finished form), one per :class:`Prefix`.

    A :class:`Reward` over prefixes so :meth:`RunContext.score` meters it like any scoring model.
    """

    name = PREDICTION

    def score(self, task: Task, candidates: Sequence[Any], *, usage: Cost | None = None) -> list[float]:
        return self.predict(task, [c for c in candidates if isinstance(c, Prefix)], usage=usage)

    @abstractmethod
    def predict(self, task: Task, prefixes: Sequence[Prefix], *, usage: Cost | None = None) -> list[float]:
        """q for each prefix, in order."""


class OraclePredictor(RestartPredictor):
    """Exact q on an enumerable toy model: the laws of the continuation and of a restart are
    enumerated token by token with the model's own warp (temperature, top-k, top-p), and the
    run's reward is evaluated once on every complete sequence (not metered: the oracle is the
    knowledge a perfect predictor would have)."""

    def __init__(self, model: Any, reward: Reward, params: Any) -> None:
        if not hasattr(model, "distribution"):
            raise ConfigError(f"the oracle predictor needs an enumerable toy model, not {getattr(model, 'name', model)!r}")
        self.model, self.reward, self.params = model, reward, params
        self._rewards: dict[str, float] | None = None

    def law(self, text: str, temperature: float) -> dict[str, float]:
        """P(finished text = y | the text so far is ``text``) at ``temperature``."""
        import dataclasses

        params = dataclasses.replace(self.params, temperature=temperature)
        out: dict[str, float] = {}

        def walk(ids: list[int], prob: float) -> None:
            logits = self.model.logits(ids)[None]
            if temperature == 0:  # greedy, as the models' own draw
                probs = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
            else:
                probs = warp(logits, params).exp()
            for token, p in enumerate(probs[0].tolist()):
                if p <= 0:
                    continue
                if token == self.model.eos_token_id:
                    key = self.model.decode(ids)
                    out[key] = out.get(key, 0.0) + prob * p
                else:
                    walk([*ids, token], prob * p)

        walk([self.model.bos_id, *self.model.encode(text)], 1.0)
        return out

    def predict(self, task: Task, prefixes: Sequence[Prefix], *, usage: Cost | None = None) -> list[float]:
        if self._rewards is None:
            texts = list(self.model.distribution())
            self._rewards = dict(zip(texts, self.reward.score(task, texts), strict=True))
        rewards, out = self._rewards, []
        for prefix in prefixes:
            restart = self.law("", prefix.restart_temperature)

            def beaten(value: float, restart: dict[str, float] = restart) -> float:
                return math.fsum(p for y, p in restart.items() if rewards[y] > value)

            if prefix.finished:
                out.append(beaten(rewards[prefix.text]))
            else:
                cont = self.law(prefix.text, prefix.temperature)
                out.append(math.fsum(p * beaten(rewards[y]) for y, p in cont.items()))
        return out


def restart_input_ids(tokenizer: Any, prompt: str, text: str, finished: bool) -> list[int]:
    """The head's input: ``prompt + text``, closed by ``<eos>`` (trailing whitespace dropped) when
    finished, as the ORM reads it; q is read at the last position. Shared with the training script."""
    if finished:
        return orm_input_ids(tokenizer, prompt, text)
    return list(tokenizer(prompt + text, add_special_tokens=False)["input_ids"])


class ArithRestartHead(RestartPredictor):
    """The trained arith head (``LlamaForTokenClassification``, one label): q = sigmoid(logit) at
    the last position; adds the tokens it reads to ``usage.reward_tokens``. Trained at T=1
    against the final-answer check: the prefixes' temperatures are not inputs."""

    def __init__(self, folder=RESTART_DIR, device: str = "cpu") -> None:
        self.folder, self.device = folder, device

    @torch.no_grad()
    def predict(self, task: Task, prefixes: Sequence[Prefix], *, usage: Cost | None = None) -> list[float]:
        if not prefixes:
            return []
        model, tokenizer = load_hf(self.folder, self.device, "token")
        limit = int(model.config.max_position_embeddings)
        rows = [restart_input_ids(tokenizer, task.prompt, p.text, p.finished)[:limit] for p in prefixes]
        ids, mask = _pad_right(rows, tokenizer.pad_token_id)
        logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits[..., 0].float().cpu()
        if usage is not None:
            usage.add(reward_tokens=sum(len(r) for r in rows))
        return [float(torch.sigmoid(logits[i, len(r) - 1])) for i, r in enumerate(rows)]


PREDICTORS = ("auto", "oracle", "arith")


def build_predictor(choice: str, model: Any, reward: Reward, cfg: GenerationConfig) -> RestartPredictor:
    """``auto``: the oracle on toy models, the trained head on ``embedded:arith``."""
    name = str(getattr(model, "name", ""))
    if choice == "auto":
        choice = "oracle" if hasattr(model, "distribution") else "arith" if name == "embedded:arith" else ""
        if not choice:
            raise ConfigError(f"adaptive_restart has a predictor for toy models (oracle) and embedded:arith, not {name!r}")
    if choice == "oracle":
        return OraclePredictor(model, reward, cfg.sampling())
    if name != "embedded:arith":
        raise ConfigError(f"the arith restart head reads embedded:arith samples, not {name!r}")
    return ArithRestartHead()


# ---------------------------------------------------------------------------
# the sampler


class AdaptiveRestartConfig(GenerationConfig):
    label = "Adaptive restart (P(restart better))"
    paper = ("Manvi, Singh & Ermon 2024, Adaptive Inference-Time Compute: LLMs Can Predict if They Can Do Better, "
             "Even Mid-Generation (arXiv:2410.02725)")
    summary = ("Sample in growing batches with annealed temperature; prune partial samples a restart would likely "
               "beat; stop once a restart is unlikely to beat the best.")
    size_field = "max_samples"

    max_samples: int = param(16, label="Max samples", min=1, max=1024, help="Most samples started (pruned ones count).")
    batch_growth: int = param(2, label="Batch growth", min=1, max=8,
                              help="Batch r holds growth^r samples (1, 2, 4, ...; 1 = one at a time).")
    stop_threshold: float = param(0.1, label="Stop at P(restart better) ≤", min=0.0, max=1.0, step=0.01,
                                  help="Stop once a restart beats the best so far with at most this probability.")
    checkpoint_tokens: int = param(16, label="Checkpoint (tokens)", min=0, max=4096,
                                   help="Predict on unfinished samples after this many tokens (0: no pruning).")
    prune_threshold: float = param(0.5, label="Prune at P(restart better) >", min=0.0, max=1.0, step=0.01,
                                   help="Prune an unfinished sample a restart would beat with more than this probability.")
    first_temperature: float = param(0.0, label="First temperature", min=0.0, max=5.0, step=0.05,
                                     help="Temperature of the first sample; later ones approach Temperature.")
    anneal_rate: float = param(0.5, label="Anneal rate γ", min=0.0, max=1.0, step=0.05,
                               help="T_k = T + (T_first - T)·γ^k for the k-th sample (0: only the first differs).")
    predictor: str = param("auto", label="Predictor", choices=PREDICTORS,
                           help="auto: exact oracle on toy models, the trained head on embedded:arith.")

    def temperature_at(self, k: int) -> float:
        """The annealed temperature of a batch whose first sample is the k-th drawn (k from 0)."""
        return self.temperature + (self.first_temperature - self.temperature) * self.anneal_rate**k


@dataclass
class Sample:
    id: str
    ids: list[int]
    text: str
    temperature: float
    finished: bool = False
    reward: float | None = None


@SAMPLERS.register("adaptive_restart")
class AdaptiveRestart(Sampler):
    name = "adaptive_restart"
    Config = AdaptiveRestartConfig
    #: score events this sampler adds besides the run's reward (the predictor's q)
    side_scores: ClassVar[tuple[str, ...]] = (PREDICTION,)

    def check_inputs(self, task: Task, model: Any, reward: Any) -> None:
        super().check_inputs(task, model, reward)
        build_predictor(self.config.predictor, model, reward, self.config)  # type: ignore[attr-defined]

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: AdaptiveRestartConfig = self.config  # type: ignore[assignment]
        predictor = build_predictor(cfg.predictor, ctx.model, ctx.reward, cfg)
        prompt_ids = ctx.model.encode_task(ctx.task)
        yield ctx.root(ctx.task.prompt, len(prompt_ids))
        finished: list[Sample] = []
        drawn = rounds = pruned = 0
        temperatures: list[float] = []
        stopped, forced = False, None
        while drawn < cfg.max_samples and not stopped:
            size = min(cfg.batch_growth**rounds, cfg.max_samples - drawn)
            temperature = cfg.temperature_at(drawn)
            temperatures.append(temperature)
            batch = yield from self._draw(ctx, cfg, prompt_ids, size, temperature)
            drawn, rounds = drawn + len(batch), rounds + 1
            restart_t = cfg.temperature_at(drawn)
            running = [s for s in batch if not s.finished]
            if running:
                q = yield from _predict(ctx, predictor, running, restart_t)
                keep = [s for s, v in zip(running, q, strict=True) if v <= cfg.prune_threshold]
                if not keep and not finished and not any(s.finished for s in batch) and drawn >= cfg.max_samples:
                    # the last batch and nothing finished: its most promising sample is kept, so the run has a pick
                    keep = [min(zip(running, q, strict=True), key=lambda sv: sv[1])[0]]
                    forced = keep[0].id
                for s, v in zip(running, q, strict=True):
                    if s not in keep:
                        pruned += 1
                        yield PruneEvent(node=s.id, reason=f"P(restart better) {v:.3f} > {cfg.prune_threshold:g}")
                yield from self._finish(ctx, cfg, keep)
                batch = [s for s in batch if s.finished]
            if batch:
                values = ctx.score([s.text for s in batch])
                for s, v in zip(batch, values, strict=True):
                    s.reward = v
                    yield ScoreEvent(node=s.id, reward=ctx.reward.name, value=v)
                finished += batch
            yield ctx.cost_event()
            if finished and drawn < cfg.max_samples:
                best = _best(finished)
                (q_best,) = yield from _predict(ctx, predictor, [best], restart_t)
                stopped = q_best <= cfg.stop_threshold
        ctx.metrics.update(samples=drawn, rounds=rounds, pruned=pruned, finished=len(finished),
                           stopped_early=stopped, temperatures=temperatures, kept_for_a_pick=forced)
        best = _best(finished)
        why = "a restart is unlikely to beat it" if stopped else f"all {drawn} samples drawn"
        yield SelectEvent(nodes=[best.id], reason=f"best of {len(finished)} finished by reward; {why}")

    def _draw(self, ctx: RunContext, cfg: AdaptiveRestartConfig, prompt_ids: list[int], size: int,
              temperature: float) -> Generator[Event, None, list[Sample]]:
        """``size`` samples up to the checkpoint (or to the end when there is none)."""
        checkpoint = cfg.checkpoint_tokens if 0 < cfg.checkpoint_tokens < cfg.max_new_tokens else cfg.max_new_tokens
        size = min(size, ctx.affordable(size, checkpoint))
        if size == 0:
            raise BudgetExhausted("budget exhausted: no room for another sample")
        params = cfg.sampling(max_new_tokens=checkpoint, temperature=temperature)
        out = []
        for gen in ctx.generate([prompt_ids], params, n=size)[0]:
            done = gen.finish_reason == "eos" or checkpoint == cfg.max_new_tokens
            sample = Sample(ctx.new_id(), prompt_ids + gen.token_ids, gen.text, temperature, finished=done)
            out.append(sample)
            yield _node(sample.id, "root", 1, gen, done, temperature)
        return out

    def _finish(self, ctx: RunContext, cfg: AdaptiveRestartConfig, keep: list[Sample]) -> Iterator[Event]:
        """Run the kept samples to the end, one continuation each (at the temperature they began with)."""
        if not keep:
            return
        rest = cfg.max_new_tokens - cfg.checkpoint_tokens
        if ctx.affordable(len(keep), rest) < len(keep):
            raise BudgetExhausted("budget exhausted: no room to finish the kept samples")
        by_temperature: dict[float, list[Sample]] = {}
        for s in keep:
            by_temperature.setdefault(s.temperature, []).append(s)
        for temperature, group in by_temperature.items():
            params = cfg.sampling(max_new_tokens=rest, temperature=temperature)
            for s, (gen,) in zip(group, ctx.generate([s.ids for s in group], params), strict=True):
                child = ctx.new_id()
                yield _node(child, s.id, 2, gen, True, temperature)
                s.id, s.ids, s.text, s.finished = child, s.ids + gen.token_ids, s.text + gen.text, True


def _node(node_id: str, parent: str, depth: int, gen: Generation, final: bool, temperature: float) -> NodeEvent:
    return NodeEvent(id=node_id, parent=parent, depth=depth, text=gen.text, tokens=len(gen.token_ids),
                     logprob=gen.logprob, final=final, meta={"finish": gen.finish_reason, "temperature": temperature})


def _best(samples: list[Sample]) -> Sample:
    """Highest reward; ties go to the earliest."""
    return max(samples, key=lambda s: (s.reward, -samples.index(s)))


def _predict(ctx: RunContext, predictor: RestartPredictor, samples: list[Sample],
             restart_temperature: float) -> Generator[Event, None, list[float]]:
    """q of each sample, one metered reward call each, traced as a score named ``p_restart_better``."""
    prefixes = [Prefix(s.text, s.finished, s.temperature, restart_temperature) for s in samples]
    values = ctx.score(prefixes, reward=predictor)
    for s, v in zip(samples, values, strict=True):
        yield ScoreEvent(node=s.id, reward=PREDICTION, value=v, partial=not s.finished)
    return values
