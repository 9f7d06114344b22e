"""Power-distribution sampling by Metropolis-Hastings ("Reasoning with Sampling").

Karan & Du, 2025, "Reasoning with Sampling: Your Base Model is Smarter Than
You Think" (arXiv:2510.14901). The target is the base model's power
distribution π(x) ∝ p(x)^α (α > 1 sharpens p over *whole sequences*, unlike
low-temperature decoding, which sharpens each next token). The sequence is
built in blocks of B tokens; after each block, ``mcmc_steps`` MH moves
refresh it: pick a position t uniformly among the L current tokens, resample
the suffix from t to the block's end with the proposal q (the base model at
``temperature``, by default 1/α), and accept x' with probability

    A = min(1, [p(x')^α · q(x_{≥t} | x_{<t}) · 1/L'] / [p(x)^α · q(x'_{≥t} | x_{<t}) · 1/L])

(the 1/L terms are the probabilities of choosing t; they matter when an
end-of-text makes lengths differ). p and q of every token come from the
sampler itself (``Generation.logprobs`` / ``sample_logprobs``), so a move
costs only the suffix's generation; the shared prefix's KV cache is reused.

The target, relative to the *base model* p (the proposal's temperature is
corrected for by the q terms): within block b the chain targets
π_b(x) ∝ p(x)^α over the sequences truncated at the block's end e_b (complete
ones, and prefixes of exactly e_b tokens). As in the reference code
(aakaran/reasoning-with-sampling), the run stops after the block in which the
state ends on end-of-text. So with one block covering the whole answer the
output follows p^α over complete sequences; with several blocks, a chain mixed
within each block outputs the *blockwise* law

    P(x) = Σ_{b ≥ b(x)} Π_{b' < b} (1 - π_{b'}(ended)) · π_b(x),

b(x) the first block whose end covers x and its end-of-text: shorter answers
weigh more than under p^α (the tests enumerate both laws).

Symbols: α = ``alpha``, B = ``block_size``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from engines.config import param
from engines.errors import BudgetExhausted, ConfigError
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.candidates import open_root
from engines.trace import AcceptEvent, Event, NodeEvent, ScoreEvent, SelectEvent


class PowerMCMCConfig(GenerationConfig):
    size_field = None
    label = "Power sampling (MCMC)"
    paper = "Karan & Du 2025, Reasoning with Sampling: Your Base Model is Smarter Than You Think (arXiv:2510.14901)"
    summary = ("Metropolis-Hastings over blocks targeting p(x)^α of the base model per block "
               "(one block: p^α over answers; several: the blockwise law, see the docs).")

    temperature: float = param(0.25, label="Proposal temperature", min=0.01, max=5.0, step=0.05, help="The paper uses 1/α.")
    alpha: float = param(4.0, label="α", min=1.0, max=100.0, step=0.5, help="Target p^α over whole sequences.")
    block_size: int = param(16, label="Block size (B)", min=1, max=4096, help="Tokens added before each round of MH moves.")
    mcmc_steps: int = param(4, label="MH steps per block", min=0, max=1000, help="Suffix-resampling moves after each block.")


@dataclass
class _State:
    id: str
    tokens: list[int]
    lp: list[float]  # base log p of each token
    lq: list[float]  # proposal log q of each token
    ended: bool


@SAMPLERS.register("power_mcmc")
class PowerMCMC(Sampler):
    name = "power_mcmc"
    Config = PowerMCMCConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: PowerMCMCConfig = self.config  # type: ignore[assignment]
        prompt, root = open_root(ctx)
        yield root
        state = _State("root", [], [], [], False)
        accepted = proposals = 0
        blocks = math.ceil(cfg.max_new_tokens / cfg.block_size)
        for block in range(1, blocks + 1):
            end = min(block * cfg.block_size, cfg.max_new_tokens)
            if not state.ended and len(state.tokens) < end:
                state = yield from self._propose(ctx, cfg, prompt, state, len(state.tokens), end, block)
            for _ in range(cfg.mcmc_steps):
                length = len(state.tokens)
                t = self.position(length, end - cfg.block_size, ctx.rng)
                new = yield from self._propose(ctx, cfg, prompt, state, t, end, block)
                log_a = (
                    cfg.alpha * (sum(new.lp[t:]) - sum(state.lp[t:]))
                    + (sum(state.lq[t:]) - sum(new.lq[t:]))
                    + math.log(length) - math.log(len(new.tokens))
                )
                p = math.exp(min(0.0, log_a))
                ok = float(torch.rand((), generator=ctx.rng)) < p
                proposals += 1
                accepted += ok
                yield AcceptEvent(node=new.id, accepted=ok, probability=p, step=proposals, current=state.id)
                if ok:
                    state = new
            ctx.metrics.update(acceptance_rate=accepted / proposals if proposals else 0.0, proposals=proposals)
            yield ctx.cost_event()
            if state.ended:
                break
        final = NodeEvent(
            id=ctx.new_id(), parent="root", depth=1, text=ctx.model.decode(state.tokens), tokens=len(state.tokens),
            logprob=sum(state.lp), final=True, meta={"from": state.id, "alpha": cfg.alpha},
        )
        yield final
        (value,) = ctx.score([final.text])
        yield ScoreEvent(node=final.id, reward=ctx.reward.name, value=value)
        yield SelectEvent(nodes=[final.id], reason=f"chain state after {proposals} MH moves")

    @staticmethod
    def position(length: int, block_start: int, rng: torch.Generator) -> int:
        """The MH move's resampling point t, uniform over all L current tokens (as the
        paper and its code: earlier blocks are refreshed too)."""
        return int(torch.randint(length, (1,), generator=rng))

    def _propose(self, ctx: RunContext, cfg: PowerMCMCConfig, prompt: list[int], state: _State, t: int, end: int, block: int):
        """Keep state's first t tokens and sample the rest up to ``end`` from the proposal."""
        budget = end - t
        if ctx.affordable(1, budget) < 1:
            raise BudgetExhausted("budget exhausted: no room for another proposal")
        (gen,) = ctx.generate([prompt + state.tokens[:t]], cfg.sampling(max_new_tokens=budget, min_new_tokens=0, keep_cache=True))[0]
        if "sample_logprobs" in gen.meta:  # a served model that cannot give the proposal's log-probs
            raise ConfigError(f"power MCMC needs the proposal's log-probs: {gen.meta['sample_logprobs']}")
        new = _State(
            id=ctx.new_id(),
            tokens=state.tokens[:t] + gen.token_ids,
            lp=state.lp[:t] + gen.logprobs,
            lq=state.lq[:t] + gen.sample_logprobs,
            ended=gen.finish_reason == "eos",
        )
        yield NodeEvent(
            id=new.id, parent="root", depth=block, text=ctx.model.decode(new.tokens), tokens=len(gen.token_ids),
            logprob=sum(new.lp), meta={"resampled_from": t, "block": block},
        )
        return new
