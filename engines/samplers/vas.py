"""Value Augmented Sampling: token-by-token decoding tilted by a value function.

Han, Shenfeld, Srivastava, Kim & Agrawal 2024, "Value Augmented Sampling for Language Model
Alignment and Personalization" (arXiv:2405.06639); the decoding rule as in TRL's VAS docs
("VAS Trainer": a logits processor re-weights the top-k tokens of the frozen policy by a value
model). At every step, with p the frozen policy's next-token distribution (at the run's
temperature / top-p / top-k) and A the tokens that get a value (``value=rollouts``: the
``candidates`` most likely tokens of p, the paper's top-k, 8 by default; ``value=exact``: every token
p can draw),

    π(a | s) = p(a | s) · exp(V(s, a) / β) / Z(s),      a ∈ A,

where V(s, a) is the value of continuing the prefix s with the token a. The paper learns V by
TD(λ) on samples of the frozen policy (the *mean* value E_p[r | s, a]) and composes several
rewards at decoding time by a weighted sum of their values, Σ_i w_i V_i (personalisation
without retraining). β is the KL strength (the paper's β is its inverse).

With the *soft* value V(s, a) = β · log E_p[exp(r(y)/β) | s, a] the rule is exact: the decoded
law is the KL-regularised optimum p(y) · exp(r(y)/β) / Z, because the soft values telescope
(the soft-RL identity; Rafailov et al. 2024, "From r to Q*"). The mean value is the paper's
approximation to it (exact only as β → ∞). ``estimator`` picks one.

Where V comes from (``value``), each evaluation metered through the run context:

- ``rollouts`` (any model, any outcome reward): Monte-Carlo, ``rollouts`` continuations of
  s·a drawn from p and scored by the run's reward; the soft value is β·log-mean-exp(r/β) of
  them (consistent, biased low at finite rollouts). A candidate that ends the text (the end
  token, or the last allowed token) is scored once. Costs generated tokens, model calls and
  one reward call per scored text and reward part.
- ``exact`` (enumerable toy models with ``distribution()``): every complete text is scored
  once per run (reward calls = their number) and V is summed exactly over the continuations.
- ``learned`` (the paper's way): a value head trained by TD(λ) on samples of the frozen policy
  (:mod:`engines.models.value_head`; ``value_model`` is its folder, empty for the shipped arith
  head of ``scripts/train_arith_value.py``) gives q(s, a), the probability that the policy's
  completion of s·a reaches the higher of its reward's two levels (lo, hi), for the
  ``candidates`` most likely tokens in one batched forward pass, metered as one model call (and
  the tokens it reads as prefill tokens), no reward call. The mean value is lo + (hi - lo)·q; the
  soft value of a two-level reward is a function of q too, β·log((1 - q)·e^(lo/β) + q·e^(hi/β)),
  so with an exact q the rule decodes the KL optimum exactly (as β → 0, p(y | r(y) = hi)). The
  head values the reward part it was trained for (its ``value_head.json`` names it, e.g.
  ``math``, times its weight: a two-level reward with levels w·lo, w·hi); the run's other reward
  parts, if any, are valued by rollouts as above, with the mean value only (the soft value of a
  sum needs every part's reward on the same continuations, which the head does not give).

Composition: when the run's reward is a weighted sum (``0.5*sentiment+1*length:20``) or a preference
direction (``direction:30:sentiment,length:20``, weights its unit vector) every part scores the
same rollouts (or enumerated texts), each continuation's Σ_i w_i r_i is formed and valued once:
the soft value β·log E[exp(Σ_i w_i r_i / β)] (the KL optimum of the weighted reward; the sum of the
parts' soft values is not) or the mean value, which is Σ_i w_i V_i (the paper's composition).
The weights are taken from the reward or set here (``weights``, one per part) to re-personalise at
decoding time. The decoded text is scored once at the end by the run's reward.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.models.sampling import warp
from engines.models.value_head import VALUE_DIR, ValueHead
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.candidates import open_root
from engines.task import Task
from engines.trace import Event, NodeEvent, ScoreEvent, SelectEvent

#: an enumerable model's exact law over complete texts, and each text's reward per reward part
Enumerated = tuple[dict[str, float], list[dict[str, float]]]


class VASConfig(GenerationConfig):
    label = "Value Augmented Sampling"
    paper = "Han et al. 2024, Value Augmented Sampling for Language Model Alignment and Personalization (arXiv:2405.06639)"
    summary = ("Decode token by token from p(a|s)·exp(V(s,a)/β) over the top-k tokens, V the value of each "
               "candidate token (Monte-Carlo rollouts of the run's reward, exact on a toy, or a value head trained by "
               "TD(λ) on the frozen policy's samples); several rewards "
               "combined by per-reward weights.")

    beta: float = param(1.0, label="β (KL strength)", min=1e-4, max=1e4, step=0.01,
                        help="π ∝ p·exp(V/β): small β follows the value, large β the model.")
    value: str = param("rollouts", label="Value source", choices=("rollouts", "exact", "learned"),
                       help="rollouts: Monte-Carlo continuations scored by the reward; exact: enumerate a toy model; "
                            "learned: a value head trained by TD(λ) on the frozen policy's samples.")
    value_model: str = param("", label="Value head",
                             help="value=learned: the value head's folder (empty: the embedded arith head, which values "
                                  "the math reward of embedded:arith).")
    estimator: str = param("soft", label="Value", choices=("soft", "mean"),
                           help="soft: β·log E[exp(r/β)] (exact KL-optimum); mean: E[r] (the paper's learned value).")
    rollouts: int = param(4, label="Rollouts per token", min=1, max=256,
                          help="Continuations drawn per candidate token to estimate its value.")
    candidates: int = param(8, label="Valued tokens", min=0, max=100000,
                            help="value=rollouts / learned: the most likely tokens that get a value (0: every token p can "
                                 "draw, which on a 49k-token vocabulary is 49k rollout sets per step).")
    weights: str = param("", label="Reward weights",
                         help="Comma-separated weights of the reward's parts (a weighted-sum reward); empty keeps its own.")

    def validate(self) -> None:
        super().validate()
        if self.temperature == 0:
            raise ConfigError("vas needs a stochastic policy (temperature > 0): the rule reweights its probabilities")
        parse_weights(self.weights)


def parse_weights(text: str) -> list[float] | None:
    """The comma list of per-reward weights, or None when empty; a bad number is refused in one line."""
    if not text.strip():
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"reward weights must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"reward weights must be finite, got {text!r}")
    return weights


def reward_parts(reward: Any, weights: list[float] | None) -> list[tuple[float, Any]]:
    """(w_i, r_i) of the run's reward: a weighted sum's parts, else the reward itself with weight 1;
    ``weights`` (one per part) replace the reward's own."""
    if hasattr(reward, "vector"):  # a preference direction v · r (DPA): its unit vector's coordinates
        parts = list(zip(reward.vector, reward.rewards, strict=True))
    else:
        parts = list(getattr(reward, "parts", None) or [(1.0, reward)])
    if weights is None:
        return parts
    if len(weights) != len(parts):
        raise ConfigError(f"{len(weights)} reward weights given, but reward {reward.name!r} has {len(parts)} part(s)")
    return [(w, r) for w, (_, r) in zip(weights, parts, strict=True)]


def aggregate(values: torch.Tensor, beta: float, estimator: str) -> torch.Tensor:
    """Value estimates from reward samples [..., m]: β·log-mean-exp(r/β) (soft) or the mean."""
    if estimator == "mean":
        return values.mean(-1)
    return beta * (torch.logsumexp(values / beta, -1) - math.log(values.shape[-1]))


_LAWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def exact_law(model: Any) -> dict[str, float]:
    """``model.distribution()``, computed once per toy model object (a toy's law never changes)."""
    if model not in _LAWS:
        _LAWS[model] = model.distribution()
    return _LAWS[model]


@SAMPLERS.register("vas")
class VAS(Sampler):
    name = "vas"
    Config = VASConfig

    def check_inputs(self, task: Task, model: Any, reward: Any) -> None:
        super().check_inputs(task, model, reward)
        cfg: VASConfig = self.config  # type: ignore[assignment]
        parts = reward_parts(reward, parse_weights(cfg.weights))
        if cfg.value == "learned":
            head = self.value_head()
            if head.spec.policy != getattr(model, "name", None):
                raise ConfigError(f"the value head values {head.spec.policy!r}'s samples; this run's model is "
                                  f"{getattr(model, 'name', model)!r}")
            if not any(r.name == head.spec.reward for _, r in parts):
                raise ConfigError(f"the value head values the reward {head.spec.reward!r}; reward {reward.name!r} "
                                  "has no such part")
            if cfg.estimator == "soft" and any(w != 0 and r.name != head.spec.reward for w, r in parts):
                raise ConfigError("the soft value of a weighted sum needs every part on the same rollouts, which the "
                                  "head's part has not: use estimator=mean, or the head's reward alone")
        if cfg.value != "exact":
            return
        if not hasattr(model, "distribution"):
            raise ConfigError(f"value=exact enumerates a toy model; {getattr(model, 'name', model)!r} cannot be "
                              "enumerated (use value=rollouts)")
        # the enumerated law is the model's own: untruncated, at temperature 1, every text finished
        if (cfg.temperature, cfg.top_p, cfg.top_k, cfg.min_new_tokens) != (1.0, 1.0, 0, 0):
            raise ConfigError("value=exact values the model's own law: use temperature 1, top_p 1, top_k 0, min_new_tokens 0")
        if cfg.max_new_tokens < model.horizon + 1:
            raise ConfigError(f"value=exact needs max_new_tokens >= {model.horizon + 1} (the toy's horizon and its end token)")

    # -- values (overridable, so tests can define deliberately wrong variants) ----------------------

    def values(self, ctx: RunContext, prefix: list[int], response: list[int], tokens: list[int],
               table: Enumerated | None) -> torch.Tensor:
        """V(s, a) of each candidate token a after ``response``: Σ_i w_i V_i."""
        if table is not None:
            return self.exact_values(ctx, table, response, tokens)
        parts = self.parts(ctx)
        total = torch.zeros(len(tokens), dtype=torch.float64)
        if self.config.value == "learned":  # type: ignore[attr-defined]
            head = self.value_head()
            learned = [w for w, r in parts if r.name == head.spec.reward]
            parts = [(w, r) for w, r in parts if r.name != head.spec.reward]
            total += self.learned_values(ctx, head, prefix + response, tokens, weight=sum(learned))
        if parts:
            total += self.rollout_values(ctx, prefix, response, tokens, parts)
        return total

    def value_head(self) -> ValueHead:
        """The learned value head (``value_model``; loaded once per process)."""
        return ValueHead.from_pretrained(self.config.value_model or VALUE_DIR)  # type: ignore[attr-defined]

    def learned_values(self, ctx: RunContext, head: ValueHead, prefix: list[int], tokens: list[int],
                       weight: float = 1.0) -> torch.Tensor:
        """The head's mean or soft value of each candidate for ``weight`` times its reward (a two-level
        reward too, levels w·lo and w·hi), from its q(s, a) (one metered forward pass)."""
        cfg: VASConfig = self.config  # type: ignore[assignment]
        q = head.success_probabilities(prefix, tokens, usage=ctx.cost).clamp(0.0, 1.0)
        ctx.metrics["value_head_calls"] = ctx.metrics.get("value_head_calls", 0) + 1
        lo, hi = (weight * level for level in head.spec.levels)
        if cfg.estimator == "mean":
            return lo + (hi - lo) * q
        # β·log((1-q)·e^(lo/β) + q·e^(hi/β)), the soft value of a two-level reward, computed stably
        beta = self.soft_value_beta()
        both = torch.stack([(1 - q).log() + lo / beta, q.log() + hi / beta])
        return beta * torch.logsumexp(both, 0)

    def soft_value_beta(self) -> float:
        """The β inside the exact soft value: the rule's own β (anything else misses the optimum)."""
        return self.config.beta  # type: ignore[attr-defined]

    def rollout_values(self, ctx: RunContext, prefix: list[int], response: list[int], tokens: list[int],
                       parts: list[tuple[float, Any]]) -> torch.Tensor:
        cfg: VASConfig = self.config  # type: ignore[assignment]
        model, left = ctx.model, cfg.max_new_tokens - len(response) - 1
        # per candidate: the texts whose rewards estimate its value (one if it ends the text)
        texts: list[list[str]] = []
        open_rows = [i for i, a in enumerate(tokens) if a != model.eos_token_id and left > 0]
        for a in tokens:
            ended = a == model.eos_token_id or left == 0
            texts.append([model.decode(response + [a])] if ended else [])
        if open_rows:
            sampling = cfg.sampling(max_new_tokens=left, min_new_tokens=max(cfg.min_new_tokens - len(response) - 1, 0))
            drawn = ctx.generate([prefix + response + [tokens[i]] for i in open_rows], sampling, n=cfg.rollouts)
            for i, gens in zip(open_rows, drawn, strict=True):
                texts[i] = [model.decode(response + [tokens[i]] + g.token_ids) for g in gens]
        flat = [t for row in texts for t in row]
        # each text's Σ_i w_i r_i, aggregated once: the soft value of a sum is not the sum of soft values
        combined = torch.zeros(len(flat), dtype=torch.float64)
        for weight, reward in parts:
            combined += weight * torch.tensor(ctx.score(flat, reward=reward), dtype=torch.float64)
        total = torch.zeros(len(tokens), dtype=torch.float64)
        start = 0
        for i, row in enumerate(texts):
            total[i] = aggregate(combined[start:start + len(row)], cfg.beta, cfg.estimator)
            start += len(row)
        ctx.metrics["value_evaluations"] = ctx.metrics.get("value_evaluations", 0) + len(flat) * len(parts)
        return total

    def exact_values(self, ctx: RunContext, table: Enumerated, response: list[int], tokens: list[int]) -> torch.Tensor:
        """V(s, a) summed over every complete text that continues s·a, under the model's exact law."""
        cfg: VASConfig = self.config  # type: ignore[assignment]
        law, rewards = table
        weights = [w for w, _ in self.parts(ctx)]
        total = torch.zeros(len(tokens), dtype=torch.float64)
        for i, a in enumerate(tokens):
            key = ctx.model.decode(response + [a])
            matches = [key] if a == ctx.model.eos_token_id else [x for x in law if x.startswith(key)]
            p = torch.tensor([law[x] for x in matches], dtype=torch.float64)
            # each text's Σ_i w_i r_i first: the soft value of a sum is not the sum of soft values
            r = torch.tensor([sum(w * rewards[part][x] for part, w in enumerate(weights)) for x in matches],
                             dtype=torch.float64)
            if cfg.estimator == "mean":
                v = (p * r).sum() / p.sum()
            else:  # β·log E_p[exp(Σ_i w_i r_i / β) | s·a]
                beta = self.soft_value_beta()
                v = beta * (torch.logsumexp(r / beta + p.log(), 0) - p.sum().log())
            total[i] = float(v)
        return total

    def enumerate(self, ctx: RunContext) -> Enumerated:
        """The toy's exact law and every text's reward per part, scored once per run (metered)."""
        law = exact_law(ctx.model)
        texts = list(law)
        rewards = [dict(zip(texts, ctx.score(texts, reward=r), strict=True)) for _, r in self.parts(ctx)]
        ctx.metrics["value_evaluations"] = len(texts) * len(rewards)
        return law, rewards

    def parts(self, ctx: RunContext) -> list[tuple[float, Any]]:
        return reward_parts(ctx.reward, parse_weights(self.config.weights))  # type: ignore[attr-defined]

    # -- the algorithm ---------------------------------------------------------------------------------

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: VASConfig = self.config  # type: ignore[assignment]
        prefix, root = open_root(ctx)
        yield root
        if ctx.remaining("generated_tokens") < cfg.max_new_tokens:
            raise BudgetExhausted("budget exhausted: generated_tokens (no room for a whole decoded text)")
        response: list[int] = []
        parent, logprob = "root", 0.0
        eos = ctx.model.eos_token_id
        table = self.enumerate(ctx) if cfg.value == "exact" else None
        for t in range(cfg.max_new_tokens):
            ctx.check()
            base = ctx.model.next_token_logprobs([prefix + response], usage=ctx.cost)[0].float()
            if t < cfg.min_new_tokens and eos is not None:
                base = base.clone()
                base[eos] = float("-inf")
            policy = warp(base, cfg.sampling())
            tokens = [int(a) for a in torch.nonzero(torch.isfinite(policy)).flatten()]
            if cfg.value != "exact" and 0 < cfg.candidates < len(tokens):
                # A = the `candidates` most likely tokens under p (the paper's top-k), in token order
                top = torch.topk(policy[tokens], cfg.candidates).indices.tolist()
                tokens = sorted(tokens[i] for i in top)
            values = self.values(ctx, prefix, response, tokens, table)
            tilted = (policy[tokens].double() + values / cfg.beta).softmax(-1)
            pick = int(torch.multinomial(tilted.float(), 1, generator=ctx.rng))
            token = tokens[pick]
            ctx.spend("generated_tokens", 1)  # the rollouts may have used the room the decoded text had
            before = ctx.model.decode(response)
            response.append(token)
            text = ctx.model.decode(response)
            # the node holds the text this token added (a token decoded alone can lose a leading space)
            piece = text[len(before):] if text.startswith(before) else ctx.model.decode([token])
            logprob += float(base[token])
            final = token == eos or t == cfg.max_new_tokens - 1
            node = NodeEvent(
                id=ctx.new_id(), parent=parent, depth=t + 1, text=piece, tokens=1,
                logprob=float(base[token]), final=final,
                meta={"value": float(values[pick]), "p": math.exp(float(policy[token])), "pi": float(tilted[pick]),
                      "candidates": len(tokens)},
            )
            parent = node.id
            yield node
            yield ctx.cost_event()
            if final:
                break
        (value,) = ctx.score([ctx.model.decode(response)])
        yield ScoreEvent(node=parent, reward=ctx.reward.name, value=value)
        ctx.metrics.update(tokens=len(response), logprob=logprob)
        yield ctx.cost_event()
        yield SelectEvent(nodes=[parent], reason=f"decoded by p·exp(V/β), β={cfg.beta:g}, {cfg.value} {cfg.estimator} value")
