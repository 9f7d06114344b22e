"""Best of mini-N in-loop: the budget in sequential rounds, with an early exit once one is good enough.

Rho, 2025, "A Contextual Quality Reward Model for Reliable and Efficient Best-of-N
Sampling" (arXiv:2510.04087), its adaptive inference strategy: the budget of N samples
is split into L = ⌈N / m⌉ rounds of m ("mini-N"); after each round the best candidate so
far is compared with a calibrated acceptability threshold τ, and the run stops as soon
as it clears it. If no round clears τ the pick is the best of all N (plain best-of-N).

In the paper τ is the utility of the *outside option*, learned with the reward from votes
that reject both responses. The lab trains one: ``samplescope reward train --name NAME
--outside-option`` fits the head and τ together from the stored votes, "both bad" ones
included (:mod:`engines.rewards.outside_option`). With ``tau_from = outside_option`` (the
default) and the run's reward such a ``learned:NAME``, τ is the learned one, provided the
fit saw at least the stated minimum of "both bad" votes
(:data:`engines.rewards.outside_option.MIN_BOTH_BAD`). Otherwise (another reward, too few
votes, or ``tau_from = threshold``) τ is ``threshold``, a number on whatever reward the
run uses (a verifier's 1.0, an ORM probability, ...): calibrate it on that reward (e.g. a
quantile of its values on right answers). Either way the run says which τ it used and why:
``metrics.tau``, ``metrics.tau_source`` and a one-line ``metrics.tau_note``, repeated in
the pick's reason.

The law this implies (tests/engines/test_adaptive_exactness.py checks it): with i.i.d.
draws from the proposal q and s = P_q(r(y) ≥ τ), a round clears with π = 1 - (1 - s)^m,
so the stopping round R has P(R = l) = (1 - π)^(l-1) π for l < L and
P(R = L) = (1 - π)^(L-1); the expected number of candidates drawn is m·E[R] (the last
round is shorter when m does not divide N) and the expected generated tokens are
E[candidates]·E_q[tokens per candidate] (a round's lengths do not depend on whether
it runs).

Symbols: N = ``n``, m = ``mini_n``, τ = ``threshold`` or the learned outside option.
"""

from __future__ import annotations

from collections.abc import Iterator

from engines.config import param
from engines.rewards.outside_option import outside_option_of
from engines.samplers import SAMPLERS
from engines.samplers.base import GenerationConfig, RunContext, Sampler
from engines.samplers.candidates import Candidate, argmax, draw_scored, open_root
from engines.trace import Event, SelectEvent


class MiniNConfig(GenerationConfig):
    label = "Best of mini-N in-loop"
    paper = "Rho 2025, A Contextual Quality Reward Model for Reliable and Efficient Best-of-N Sampling (arXiv:2510.04087)"
    summary = "Draw mini-N at a time; stop once the best so far clears the acceptability threshold, else best of all N."

    n: int = param(16, label="N (budget)", min=1, max=1024, help="Most candidates the run may draw.")
    mini_n: int = param(4, label="Mini-N", min=1, max=256, help="Candidates per round; the exit test runs after each round.")
    threshold: float = param(1.0, label="Acceptability τ", min=-1e9, max=1e9, step=0.01,
                             help="Stop once a candidate's reward reaches this (on the run's reward; 1.0 = a verifier's right).")
    tau_from: str = param("outside_option", label="τ from", choices=("outside_option", "threshold"),
                          help="outside_option: the τ learned with a learned:NAME reward from 'both bad' votes "
                               "(reward train --outside-option), where there is one; else, or with threshold, the number above.")

    def rounds(self) -> int:
        return -(-self.n // self.mini_n)


@SAMPLERS.register("mini_n")
class MiniN(Sampler):
    name = "mini_n"
    Config = MiniNConfig

    def steps(self, ctx: RunContext) -> Iterator[Event]:
        cfg: MiniNConfig = self.config  # type: ignore[assignment]
        tau, source, note = acceptability(cfg, ctx.reward)
        ctx.metrics.update(tau=tau, tau_source=source, tau_note=note)
        prefix, root = open_root(ctx)
        yield root
        found: list[Candidate] = []
        stopped_at = None
        for round_index in range(1, cfg.rounds() + 1):
            batch = yield from draw_scored(ctx, prefix, min(cfg.mini_n, cfg.n - len(found)), cfg)
            found += batch
            best = argmax(found)
            if best.reward is not None and best.reward >= tau:
                stopped_at = round_index
                break
        rounds = stopped_at or cfg.rounds()
        ctx.metrics.update(rounds=rounds, early_exit=stopped_at is not None, candidates=len(found))
        best = argmax(found)
        reason = (f"cleared τ={tau:g} in round {stopped_at} of {cfg.rounds()}" if stopped_at
                  else f"no round cleared τ={tau:g}: best of all {len(found)}")
        yield SelectEvent(nodes=[best.id], reason=f"{reason} ({note})")


def acceptability(cfg: MiniNConfig, reward) -> tuple[float, str, str]:
    """(τ, where it came from, one line saying so): the learned outside option of the run's
    reward where ``tau_from`` asks for it and the fit saw enough "both bad" votes, else ``threshold``."""
    fixed = f"τ={cfg.threshold:g} is the fixed threshold on {getattr(reward, 'name', 'the reward')}"
    if cfg.tau_from == "threshold":
        return cfg.threshold, "threshold", fixed
    option = outside_option_of(reward)
    if option is None:
        return cfg.threshold, "threshold", f"{fixed}: it has no learned outside option (reward train --outside-option)"
    if not option.usable:
        return cfg.threshold, "threshold", f"{fixed}: {option.why_not()}"
    assert option.tau is not None
    return option.tau, "outside_option", f"τ={option.tau:.3g} is {option.reward}'s outside option, learned from {option.both_bad} 'both bad' votes"
