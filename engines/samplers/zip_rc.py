"""ZIP-RC: continue, prune or start samples by a predicted joint law of final reward and remaining length.

Manvi, Hong, Seyde, Labonne, Lechner & Levine, 2025, "ZIP-RC: Optimizing Test-Time Compute via
Zero-Overhead Joint Reward-Cost Prediction" (arXiv:2512.01457); the objective and its terms
follow the authors' code (github.com/rohinmanvi/ZIP-RC, ``src/zip_offline_prune_7.py``,
``_choose_action``), read, not copied.

At a prefix the predictor gives the joint law p(R, T) of the sample's final reward R and the
tokens T it still has to generate (in the paper: reserved logits of the policy's own forward).
Continuations of one prefix are i.i.d. given the prefix and samples are independent, so the
law of a *set* of samples run to completion is a product, and the sampling utility of a set is

    U = E[max reward of the kept samples] - α · E[Σ remaining tokens] / ℓ - β · E[max remaining tokens] / ℓ

(the value term over finished samples, whose reward is known, and the samples that run on; the
two cost terms over the samples that run on: total compute and latency, since samples run in
parallel). ℓ is the predicted length of a fresh sample at the prompt, so α is the price of
one average sample's compute and β of its wall time, in units of the reward (the paper's code
divides the costs by a per-sample length in the same way).

Every ``interval`` tokens the controller picks the meta-action that maximises U: which live
prefixes to continue (the others are pruned), how many new samples to start from the prompt
(i.i.d. with the prompt's predicted law), or to stop (continue nothing, start nothing) and
return the best finished sample. It enumerates every subset of the live prefixes and every
count of new samples (at most ``width`` running, at most ``samples`` started in all), a
superset of the authors' two-ordering search. E[max] of independent discrete variables is
Σ_v v·(Π_i F_i(v) - Π_i F_i(v⁻)) (their order-statistic identity).

| paper / code | here |
|---|---|
| joint over (reward bins, length bins) | :class:`JointPrediction` (``rewards`` × ``lengths``) |
| ``c_pt`` (per-token compute), ``c_seq`` (latency) | α = ``compute_cost``, β = ``latency_cost`` |
| ``norm_tokens_per_sample`` | ℓ, the predicted mean length at the prompt |
| keep set S / prune now / start K | ``continue`` / pruned / ``new`` in each decision (``metrics["decisions"]``) |

Predictors (``predictor``): ``oracle`` on enumerable toy models (the exact law by enumerating
every completion and scoring it with the run's reward, free: a test instrument); ``arith_head``
on the reasoning lab, a small joint head trained by ``scripts/train_ziprc_arith.py`` (stored in
``engines/assets/arith/ziprc``) that predicts the ``math`` verifier's 0/1 and the remaining
tokens. The head is a second model here, not reserved logits of the policy, so it is not free:
each prefix it reads is metered as a reward call and its tokens as reward tokens. Finished
samples are scored by the run's reward; the pick is the best of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from engines.config import param
from engines.errors import BudgetExhausted, Cancelled, ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.task import Task
from engines.trace import Event, NodeEvent, PruneEvent, ScoreEvent, SelectEvent

HEAD_DIR = Path(__file__).resolve().parents[1] / "assets" / "arith" / "ziprc"


class ZipRCConfig(GenerationConfig):
    label = "ZIP-RC (reward-cost meta-actions)"
    paper = "Manvi et al. 2025, ZIP-RC: Zero-overhead Joint Reward-Cost Prediction (arXiv:2512.01457)"
    summary = ("Predict each prefix's joint law of final reward and remaining length; every few tokens continue, "
               "prune or start samples to maximise E[max reward] - α·compute - β·latency.")
    size_field: ClassVar[str | None] = "samples"

    samples: int = param(16, label="Max samples", min=1, max=1024, help="Most samples the run may start.")
    width: int = param(4, label="Max running", min=1, max=10, help="Most samples generating at once (every subset is searched).")
    interval: int = param(4, label="Decide every (tokens)", min=1, max=4096, help="Tokens each sample generates between decisions.")
    compute_cost: float = param(0.05, label="Compute cost α", min=0.0, max=100.0, step=0.01,
                                help="Reward given up per average sample's worth of generated tokens.")
    latency_cost: float = param(0.05, label="Latency cost β", min=0.0, max=100.0, step=0.01,
                                help="Reward given up per average sample's length of waiting (the longest running sample).")
    predictor: str = param("auto", label="Predictor", choices=("auto", "oracle", "arith_head"),
                           help="oracle: exact law on toy models; arith_head: the trained joint head (embedded:arith); auto picks.")


# ---------------------------------------------------------------------------
# predictions and the utility


@dataclass(frozen=True)
class JointPrediction:
    """p(R = rewards[i], T = lengths[j]) = joint[i, j]; both supports ascending."""

    rewards: np.ndarray
    lengths: np.ndarray
    joint: np.ndarray

    @property
    def reward_pmf(self) -> np.ndarray:
        return self.joint.sum(axis=1)

    @property
    def length_pmf(self) -> np.ndarray:
        return self.joint.sum(axis=0)

    @property
    def mean_reward(self) -> float:
        return float(self.reward_pmf @ self.rewards)

    @property
    def mean_length(self) -> float:
        return float(self.length_pmf @ self.lengths)


def expected_max(variables: Sequence[tuple[np.ndarray, np.ndarray, int]], floor: float | None = None) -> float:
    """E[max] of independent discrete variables, each (support ascending, pmf, copies), and a constant ``floor``.

    Σ_v v·(F(v) - F(v⁻)) with F the product of the CDFs on the union of supports; 0 when empty.
    """
    if not variables and floor is None:
        return 0.0
    support = np.unique(np.concatenate([s for s, _, _ in variables] + ([np.array([floor])] if floor is not None else [])))
    cdf = np.ones_like(support) if floor is None else (support >= floor).astype(float)
    for values, pmf, copies in variables:
        inclusive = np.cumsum(pmf)[np.searchsorted(values, support, side="right") - 1]
        inclusive = np.where(support < values[0], 0.0, inclusive)
        cdf = cdf * np.minimum(inclusive, 1.0) ** copies
    return float(support @ np.diff(cdf, prepend=0.0))


@dataclass(frozen=True)
class Action:
    keep: tuple[int, ...]  # indexes of the live prefixes that continue
    new: int  # samples started from the prompt
    utility: float
    value: float
    compute: float
    latency: float


def utility(live: Sequence[JointPrediction], root: JointPrediction, best_finished: float | None,
            keep: Sequence[int], new: int, alpha: float, beta: float, scale: float) -> Action:
    """U of continuing ``keep`` and starting ``new`` fresh samples (see the module docstring)."""
    running = [(live[i], 1) for i in keep] + ([(root, new)] if new else [])
    value = expected_max([(p.rewards, p.reward_pmf, c) for p, c in running], best_finished)
    compute = sum(c * p.mean_length for p, c in running)
    latency = expected_max([(p.lengths, p.length_pmf, c) for p, c in running])
    total = value - alpha * compute / scale - beta * latency / scale
    return Action(tuple(keep), new, total, value, compute, latency)


def best_action(live: Sequence[JointPrediction], root: JointPrediction, best_finished: float | None,
                can_start: int, width: int, alpha: float, beta: float, scale: float) -> Action:
    """The meta-action of highest utility over every subset of ``live`` and every count of new samples.

    Ties go to the first in enumeration order (subsets by bitmask, then fewer new samples). Keeping
    nothing is allowed only when a finished sample exists (the run must return something).
    """
    best: Action | None = None
    for mask in range(1 << len(live)):
        keep = [i for i in range(len(live)) if mask >> i & 1]
        for new in range(0, min(can_start, width - len(keep)) + 1):
            if best_finished is None and not keep and not new:
                continue
            action = utility(live, root, best_finished, keep, new, alpha, beta, scale)
            if best is None or action.utility > best.utility + 1e-12:
                best = action
    if best is None:
        raise BudgetExhausted("no sample may run and none has finished")
    return best


# ---------------------------------------------------------------------------
# predictors


class OraclePredictor:
    """The exact joint law on a toy model: every completion of the prefix enumerated (samples are
    cut at ``max_new_tokens``), scored by the run's reward. Free (not metered): a test instrument."""

    def __init__(self, ctx: RunContext, max_new_tokens: int) -> None:
        self.model, self.reward, self.task, self.limit = ctx.model, ctx.reward, ctx.task, max_new_tokens
        self._scores: dict[str, float] = {}

    def _completions(self, generated: tuple[int, ...], prob: float, out: list) -> None:
        if len(generated) == self.limit:
            out.append((prob, generated, len(generated)))
            return
        logp = self.model.logits([self.model.bos_id, *generated]).double().log_softmax(-1)
        for token, lp in enumerate(logp.tolist()):
            if lp == -math.inf:
                continue
            if token == self.model.eos_id:
                out.append((prob * math.exp(lp), generated, len(generated) + 1))
            else:
                self._completions((*generated, token), prob * math.exp(lp), out)

    def predict(self, ctx: RunContext, generated: Sequence[Sequence[int]]) -> list[JointPrediction]:
        out = []
        for ids in generated:
            completions: list = []
            self._completions(tuple(ids), 1.0, completions)
            texts = [self.model.decode(c) for _, c, _ in completions]
            fresh = sorted({t for t in texts if t not in self._scores})
            if fresh:
                self._scores.update(zip(fresh, (float(v) for v in self.reward.score(self.task, fresh)), strict=True))
            rewards = np.array(sorted({self._scores[t] for t in texts}))
            lengths = np.array(sorted({total - len(ids) for _, _, total in completions}), dtype=float)
            joint = np.zeros((len(rewards), len(lengths)))
            for (p, _, total), text in zip(completions, texts, strict=True):
                joint[np.searchsorted(rewards, self._scores[text]), np.searchsorted(lengths, total - len(ids))] += p
            out.append(JointPrediction(rewards, lengths, joint / joint.sum()))
        return out


def load_head(folder: Path = HEAD_DIR) -> tuple[Any, Any, dict]:
    """(model, tokenizer, bins) of a trained joint head: ``ziprc.json`` holds the reward values and length bins."""
    from engines.models.arith import load_hf

    if not (folder / "ziprc.json").exists():
        raise ConfigError(f"no ZIP-RC head in {folder}; run `python scripts/train_ziprc_arith.py` to build it")
    model, tokenizer = load_hf(folder, "cpu", "token")
    return model, tokenizer, json.loads((folder / "ziprc.json").read_text())


def head_joints(model: Any, tokenizer: Any, bins: dict, rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """[B, V, L] joint laws read at the last token of each row of ids (softmax over all V×L cells)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row))
        mask[i, : len(row)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
    return last.double().softmax(-1).reshape(len(rows), len(bins["reward_values"]), -1)


class ArithHeadPredictor:
    """The trained joint head on the reasoning lab; metered as one reward call per prefix it reads."""

    def __init__(self, ctx: RunContext, max_new_tokens: int) -> None:
        self.model, self.tokenizer, self.bins = load_head()
        self.rewards = np.array(self.bins["reward_values"], dtype=float)
        self.lengths = np.array(self.bins["length_values"], dtype=float)
        self.prompt = ctx.task.prompt
        self.decode = ctx.model.decode
        self.limit = int(self.model.config.max_position_embeddings)

    def predict(self, ctx: RunContext, generated: Sequence[Sequence[int]]) -> list[JointPrediction]:
        if len(generated) > ctx.remaining("reward_calls"):
            raise BudgetExhausted("budget exhausted: reward_calls")
        ctx.check("reward_calls", "reward_tokens")
        rows = [self.tokenizer(self.prompt + self.decode(ids), add_special_tokens=False)["input_ids"][: self.limit]
                for ids in generated]
        joints = head_joints(self.model, self.tokenizer, self.bins, rows).numpy()
        ctx.cost.add(reward_calls=len(rows), reward_tokens=sum(len(r) for r in rows))
        return [JointPrediction(self.rewards, self.lengths, j) for j in joints]


# ---------------------------------------------------------------------------
# the sampler


@dataclass
class Sample:
    id: str
    ids: list[int]  # generated so far
    text: str = ""
    prediction: JointPrediction | None = None
    reward: float | None = None
    done: bool = False


@SAMPLERS.register("zip_rc")
class ZipRC(Sampler):
    name = "zip_rc"
    Config = ZipRCConfig

    def check_inputs(self, task: Task, model: Any, reward: Any) -> None:
        super().check_inputs(task, model, reward)
        self._predictor_kind(model)

    def _predictor_kind(self, model: Any) -> str:
        cfg: ZipRCConfig = self.config  # type: ignore[assignment]
        kind = cfg.predictor
        enumerable = all(hasattr(model, a) for a in ("distribution", "logits", "bos_id", "eos_id"))  # a toy model
        if kind == "auto":
            kind = "oracle" if enumerable else "arith_head" if model.name == "embedded:arith" else ""
            if not kind:
                raise ConfigError(f"zip_rc has no predictor for {model.name!r}: set predictor=arith_head for an arith "
                                  "policy, or use a toy model")
        if kind == "oracle":
            if not enumerable:
                raise ConfigError("the oracle predictor enumerates completions: it needs a toy model")
            if (cfg.temperature, cfg.top_p, cfg.top_k, cfg.min_new_tokens) != (1.0, 1.0, 0, 0):
                raise ConfigError("the oracle predictor knows the model's own law: temperature 1, top_p 1, top_k 0, "
                                  "min_new_tokens 0")
        if kind == "arith_head" and model.name != "embedded:arith":
            raise ConfigError(f"the arith joint head reads embedded:arith samples, not {model.name!r}")
        return kind

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: ZipRCConfig = self.config  # type: ignore[assignment]
        predictor_cls = OraclePredictor if self._predictor_kind(ctx.model) == "oracle" else ArithHeadPredictor
        predictor = predictor_cls(ctx, cfg.max_new_tokens)
        prompt = ctx.model.encode_task(ctx.task)
        yield ctx.root(ctx.task.prompt, len(prompt))
        (root,) = predictor.predict(ctx, [[]])
        scale = max(root.mean_length, 1.0)
        live: list[Sample] = []
        finished: list[Sample] = []
        started = 0
        decisions: list[dict[str, Any]] = []
        ctx.metrics.update(decisions=decisions, predicted_reward=root.mean_reward, predicted_length=root.mean_length)
        while True:
            best = max((s.reward for s in finished), default=None)
            action = best_action([s.prediction for s in live], root, best, cfg.samples - started, cfg.width,
                                 cfg.compute_cost, cfg.latency_cost, scale)
            keep = [live[i] for i in action.keep]
            kept = {id(s) for s in keep}
            decisions.append({"live": [s.id for s in live], "best_finished": best, "started": started,
                              "continue": [s.id for s in keep], "new": action.new, "utility": action.utility,
                              "value": action.value, "compute": action.compute, "latency": action.latency})
            for s in live:
                if id(s) not in kept:
                    yield PruneEvent(node=s.id, reason=f"ZIP-RC: the best meta-action (utility {action.utility:.3g}) drops it "
                                                       f"(E[r]={s.prediction.mean_reward:.2f}, E[T]={s.prediction.mean_length:.1f})")
            if not keep and not action.new:
                break
            fresh = [Sample(id="root", ids=[]) for _ in range(action.new)]
            started += action.new
            grown = self._grow(ctx, prompt, keep + fresh, cfg)
            done = [child for _, child, _ in grown if child.done]
            live = [child for _, child, _ in grown if not child.done]
            try:  # the predictions go on the live nodes; if predicting stops the run, the tokens are still traced
                for s, p in zip(live, predictor.predict(ctx, [s.ids for s in live]) if live else [], strict=True):
                    s.prediction = p
            except (BudgetExhausted, Cancelled):
                for parent, child, gen in grown:
                    yield self._node(parent, child, gen, cfg)
                raise
            for parent, child, gen in grown:
                yield self._node(parent, child, gen, cfg)
            if done:
                for s, value in zip(done, ctx.score([s.text for s in done]), strict=True):
                    s.reward = value
                    yield ScoreEvent(node=s.id, reward=ctx.reward.name, value=value)
                finished += done
            yield ctx.cost_event()
        pick = max(finished, key=lambda s: s.reward)  # ties: the first finished
        ctx.metrics.update(samples=started, finished=len(finished), decisions_made=len(decisions))
        yield SelectEvent(nodes=[pick.id], reason=f"best of {len(finished)} finished after {len(decisions)} decisions "
                                                  f"(stopped: continuing or starting had lower utility)")

    @staticmethod
    def _node(parent: Sample, child: Sample, gen: Any, cfg: ZipRCConfig) -> NodeEvent:
        """The grown segment as a node; a live one carries its predicted E[reward] and E[remaining tokens]."""
        prediction = {} if child.prediction is None else {"E[reward]": round(child.prediction.mean_reward, 6),
                                                          "E[remaining tokens]": round(child.prediction.mean_length, 3)}
        return NodeEvent(id=child.id, parent=parent.id, depth=-(-len(child.ids) // cfg.interval), text=gen.text,
                         tokens=len(gen.token_ids), logprob=gen.logprob, final=child.done,
                         meta={"finish": gen.finish_reason, **prediction})

    def _grow(self, ctx: RunContext, prompt: list[int], samples: list[Sample], cfg: ZipRCConfig
              ) -> list[tuple[Sample, Sample, Any]]:
        """Every sample generates up to ``interval`` more tokens (never past ``max_new_tokens``), one model
        call per distinct allowance; returns (sample, grown sample, generation) for each."""
        room = ctx.model.context_length
        groups: dict[tuple[int, int], list[Sample]] = {}
        for s in samples:
            allowance = min(cfg.interval, cfg.max_new_tokens - len(s.ids))
            if room is not None:
                allowance = min(allowance, room - len(prompt) - len(s.ids))
            if allowance <= 0:
                raise BudgetExhausted(f"context full: {len(prompt) + len(s.ids)} tokens of the model's {room}")
            groups.setdefault((allowance, max(0, min(allowance, cfg.min_new_tokens - len(s.ids)))), []).append(s)
        out: list[tuple[Sample, Sample, Any]] = []
        for (allowance, min_left), group in groups.items():
            if ctx.affordable(len(group), allowance) < len(group):
                raise BudgetExhausted("budget exhausted: no room for the chosen samples")
            params = cfg.sampling(max_new_tokens=allowance, keep_cache=True, min_new_tokens=min_left)
            generations = ctx.generate([prompt + s.ids for s in group], params)
            for s, (gen,) in zip(group, generations, strict=True):
                child = Sample(id=ctx.new_id(), ids=s.ids + list(gen.token_ids), text=s.text + gen.text)
                child.done = gen.finish_reason == "eos" or len(child.ids) >= cfg.max_new_tokens
                out.append((s, child, gen))
        return out
