"""An outside-option reward: what is *good enough*, learned from "both bad" votes.

Rho, 2025, "A Contextual Quality Reward Model for Reliable and Efficient Best-of-N
Sampling" (arXiv:2510.04087): pairwise votes only say which response is better; adding an
outside option to the choice ("neither is acceptable"), as in discrete choice models,
lets a reward model learn what is acceptable too. Each vote is a choice from the menu
{a, b, 0}, 0 the outside option, under the multinomial logit (McFadden's conditional
logit; Bradley-Terry is its two-item case):

    P(a) = e^{r(a)} / Z,   P(b) = e^{r(b)} / Z,   P(both bad) = e^{τ} / Z,
    Z = e^{r(a)} + e^{r(b)} + e^{τ},

with r the reward head on the candidates' features and τ the outside option's utility,
fitted together by maximum likelihood (full-batch Adam, L2 on the head's weights as in
:mod:`engines.rewards.bt_fit`). A tie is half a win for each side (the lab's Bradley-Terry
convention): its log-likelihood is ½ log P(a) + ½ log P(b). The outside option fixes the
level that plain Bradley-Terry leaves free, so r(y) - τ is identified and

    y is acceptable  ⇔  r(y) ≥ τ  ⇔  P(y is chosen over the outside option alone) ≥ ½,

the early-exit test of best-of-mini-N in-loop (:mod:`engines.samplers.mini_n`). The paper
makes the outside option depend on the prompt (a *contextual* threshold); here τ is one
number per reward (the lab's heads see prompt and response together, so a prompt-dependent
level can still enter through r).

τ is used only when the fit saw at least :data:`MIN_BOTH_BAD` "both bad" votes (a stated
floor, not a power calculation: with fewer, τ rests on a handful of choices). Below it
the card records why, and mini_n falls back to its fixed threshold and says so.

Symbols: r = the head, τ = ``tau``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engines.errors import ConfigError

#: "both bad" votes a fit needs before its τ is used
MIN_BOTH_BAD = 20
#: the vote outcomes the choice model reads, and their index in the menu (a, b, outside option)
CHOICES = {"a": 0, "b": 1, "both_bad": 2}


@dataclass(frozen=True)
class OutsideOption:
    """What a learned reward's card says about its outside option."""

    tau: float | None
    both_bad: int
    minimum: int
    reward: str

    @property
    def usable(self) -> bool:
        return self.tau is not None and self.both_bad >= self.minimum

    def why_not(self) -> str:
        """One line: why this τ cannot be used (empty when it can)."""
        if self.usable:
            return ""
        return (f"{self.reward} was trained on {self.both_bad} 'both bad' votes, below the minimum of {self.minimum} "
                "for an outside-option threshold")


def outside_option_of(reward: Any) -> OutsideOption | None:
    """The outside option a reward was trained with (its card's ``outside_option``), or None."""
    card = getattr(reward, "card", None)
    entry = card.get("outside_option") if isinstance(card, dict) else None
    if not isinstance(entry, dict):
        return None
    tau = entry.get("tau")
    return OutsideOption(tau=None if tau is None else float(tau), both_bad=int(entry.get("both_bad_votes", 0)),
                         minimum=int(entry.get("minimum", MIN_BOTH_BAD)), reward=str(getattr(reward, "name", "the reward")))


def choice_codes(outcomes: Sequence[str]) -> torch.Tensor:
    """Each vote's index in the menu (0 a, 1 b, 2 both bad), 3 for a tie."""
    codes = []
    for outcome in outcomes:
        if outcome != "tie" and outcome not in CHOICES:
            raise ConfigError(f"the outside-option model reads a, b, tie and both_bad votes, not {outcome!r}")
        codes.append(3 if outcome == "tie" else CHOICES[outcome])
    return torch.tensor(codes, dtype=torch.long)


def choice_nll(ra: torch.Tensor, rb: torch.Tensor, tau: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """-log P(vote) per vote under the multinomial logit over (a, b, outside option); ties
    (code 3) are half-wins: -(log P(a) + log P(b)) / 2."""
    logp = torch.stack([ra, rb, tau.expand_as(ra)], dim=-1).log_softmax(-1)
    chosen = logp.gather(-1, codes.clamp(max=2)[:, None]).squeeze(-1)
    return -torch.where(codes == 3, (logp[:, 0] + logp[:, 1]) / 2, chosen)


@dataclass(frozen=True)
class OutsideFit:
    head: Any  # engines.rewards.learned.BTHead
    tau: float
    nll: float  # mean negative log-likelihood per vote at the end of the fit
    both_bad_rate: float  # share of votes that were "both bad"
    predicted_both_bad_rate: float  # the fitted model's mean P(both bad) on the same pairs


def fit_outside_option(xa: torch.Tensor, xb: torch.Tensor, outcomes: Sequence[str], *, hidden: int = 0,
                       epochs: int = 300, lr: float = 0.1, l2: float = 1e-2, seed: int = 0) -> OutsideFit:
    """The head r and the outside option's utility τ that maximise the choice likelihood of the votes."""
    from engines.rewards.bt_fit import FitConfig, PairData, init_head

    if len(outcomes) != len(xa) or xa.shape != xb.shape:
        raise ConfigError("outside option: features of a, b and the outcomes must have one row per vote")
    codes = choice_codes(outcomes)
    if "both_bad" not in outcomes:
        raise ConfigError("no 'both bad' votes: the outside option cannot be fitted without them")
    import numpy as np

    data = PairData(xa, xb, torch.zeros(len(outcomes)), np.zeros(len(outcomes), dtype=object))
    head = init_head(data, FitConfig(hidden=hidden), seed)
    tau = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([*head.net.parameters(), tau], lr=lr)
    head.train()
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = choice_nll(head(xa), head(xb), tau, codes).mean() + 0.5 * l2 * head.penalty()
        loss.backward()
        optimiser.step()
    head.eval().requires_grad_(False)
    with torch.no_grad():
        ra, rb = head(xa), head(xb)
        nll = float(choice_nll(ra, rb, tau.detach(), codes).mean())
        p_out = torch.stack([ra, rb, tau.detach().expand_as(ra)], -1).softmax(-1)[:, 2]
    return OutsideFit(head=head, tau=float(tau.detach()), nll=nll,
                      both_bad_rate=sum(o == "both_bad" for o in outcomes) / len(outcomes),
                      predicted_both_bad_rate=float(p_out.mean()))
