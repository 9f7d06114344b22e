"""The outside-option reward (Rho 2025): votes drawn from a known choice model with a known
acceptability threshold; the fit recovers the threshold; mini_n uses it, or falls back and says so."""

from __future__ import annotations

import math
import random

import pytest
import torch

from engines.rewards.outside_option import MIN_BOTH_BAD, fit_outside_option
from tests.rewards.simulated import counts, digits, hidden_reward

#: the true acceptability threshold on the hidden reward, and the temperature of the annotator's choices
TRUE_TAU, TEMPERATURE = 0.6, 0.5
#: the stated bound: the threshold read off the fitted model, on the hidden reward's scale
BOUND = 0.25


def choose(rng: random.Random, a: str, b: str, tau: float = TRUE_TAU) -> str:
    """One vote from the multinomial logit over (a, b, both bad) with utilities r/T and τ/T."""
    u = [hidden_reward(a) / TEMPERATURE, hidden_reward(b) / TEMPERATURE, tau / TEMPERATURE]
    top = max(u)
    weights = [math.exp(x - top) for x in u]
    return rng.choices(["a", "b", "both_bad"], weights=weights)[0]


def synthetic_votes(rng: random.Random, n: int, tau: float = TRUE_TAU) -> tuple[list[str], list[str], list[str]]:
    pairs = [(digits(rng), digits(rng)) for _ in range(n)]
    return [a for a, _ in pairs], [b for _, b in pairs], [choose(rng, a, b, tau) for a, b in pairs]


def recovered_threshold(head, tau: float, rng: random.Random) -> tuple[float, float]:
    """The fitted τ on the hidden reward's scale (r̂ regressed on r over fresh texts: r̂ ≈ α r + β,
    so r̂ = τ̂ where r = (τ̂ - β) / α), and how often r̂ ≥ τ̂ agrees with r ≥ τ on those texts."""
    texts = [digits(rng) for _ in range(2000)]
    truth = torch.tensor([hidden_reward(t) for t in texts])
    with torch.no_grad():
        fitted = head(torch.stack([counts(t) for t in texts]))
    alpha = float(((truth - truth.mean()) * (fitted - fitted.mean())).sum() / ((truth - truth.mean()) ** 2).sum())
    beta = float(fitted.mean()) - alpha * float(truth.mean())
    agree = float(((fitted >= tau) == (truth >= TRUE_TAU)).float().mean())
    return (tau - beta) / alpha, agree


def fit(a: list[str], b: list[str], outcomes: list[str]):
    return fit_outside_option(torch.stack([counts(t) for t in a]), torch.stack([counts(t) for t in b]), outcomes,
                              l2=1e-3, epochs=200)


def test_the_fitted_outside_option_recovers_the_true_threshold():
    rng = random.Random(0)
    a, b, outcomes = synthetic_votes(rng, 1000)
    result = fit(a, b, outcomes)
    threshold, agree = recovered_threshold(result.head, result.tau, random.Random(1))
    assert abs(threshold - TRUE_TAU) < BOUND, threshold
    assert agree > 0.9
    assert result.predicted_both_bad_rate == pytest.approx(result.both_bad_rate, abs=0.02)


def test_a_different_true_threshold_moves_the_fit_with_it():
    """The recovered τ follows the truth (a fit that ignored the both-bad votes could not)."""
    high = fit(*synthetic_votes(random.Random(2), 1000, tau=1.6))
    threshold, _ = recovered_threshold(high.head, high.tau, random.Random(3))
    assert abs(threshold - 1.6) < BOUND, threshold


def test_both_bad_read_as_a_tie_misses_the_threshold():
    """The wrong variant: both-bad counted as a tie gives no level at all (a Bradley-Terry head);
    reading τ off it as the midpoint of the both-bad pairs' fitted rewards misses the truth."""
    rng = random.Random(0)
    a, b, outcomes = synthetic_votes(rng, 1000)
    wrong = fit(a, b, ["tie" if o == "both_bad" else o for o in outcomes][:-1] + ["both_bad"])  # one left so it fits
    threshold, _ = recovered_threshold(wrong.head, wrong.tau, random.Random(1))
    assert abs(threshold - TRUE_TAU) > BOUND


def test_too_few_both_bad_votes_is_a_stated_minimum():
    assert MIN_BOTH_BAD == 20


# -- from a database of votes to mini_n ---------------------------------------------------------


def fill_choices(db, *, prompts: int, per_prompt: int, seed: int = 0, both_bad_cap: int | None = None) -> int:
    """Store runs of digit strings and one vote per comparison drawn by :func:`choose`; prompts carry
    no digits (the toy featuriser counts digits in prompt and response). ``both_bad_cap`` turns
    "both bad" votes past that many into skips. Returns the number of "both bad" votes stored."""
    from storage import add_vote, make_comparisons
    from storage.votes import present
    from tests.storage.storage_helpers import store_run

    rng, stored = random.Random(seed), 0
    for k in range(prompts):
        texts = [digits(rng) for _ in range(8)]
        prompt = f"prompt {chr(97 + k % 26)}{chr(97 + k // 26)}"
        run_id = store_run(db, texts, [float(len(set(t))) for t in texts], prompt=prompt, seed=k, reward="distinct")
        for cid in db.write(lambda s, r=run_id: make_comparisons(s, r, "all_pairs", max_pairs=per_prompt, seed=seed)):
            shown = db.read(lambda s, c=cid: present(s, c))
            a, b = (shown.left, shown.right) if shown.left_side == "a" else (shown.right, shown.left)
            outcome = choose(rng, a.text, b.text)
            if outcome == "both_bad":
                if both_bad_cap is not None and stored >= both_bad_cap:
                    outcome = "skip"
                else:
                    stored += 1
            db.write(lambda s, c=cid, o=outcome: add_vote(s, comparison_id=c, annotator="sim", outcome=o,
                                                          idempotency_key=f"sim-{seed}-{c}"))
    return stored


def mini_n_on(reward_spec: str, **params):
    from app.workflows.store import rewards_home
    from engines.models import load_model
    from engines.rewards import RewardEnv, build_reward
    from engines.samplers import build_sampler
    from engines.task import Task
    from engines.trace import collect

    reward = build_reward(reward_spec, RewardEnv(rewards_folder=rewards_home()))
    sampler = build_sampler("mini_n", {"n": 8, "mini_n": 2, "max_new_tokens": 2, **params})
    return collect(sampler.run(Task(prompt="prompt zz"), load_model("toy:digits"), reward, rng=torch.Generator().manual_seed(0)))


@pytest.mark.slow
def test_trained_from_stored_votes_mini_n_stops_at_the_learned_threshold(db, capsys):
    from app.cli import main
    from app.workflows.store import rewards_home
    from engines.rewards.learned import load_learned

    both_bad = fill_choices(db, prompts=30, per_prompt=20)
    assert both_bad >= MIN_BOTH_BAD
    url = str(db.engine.url)
    assert main(["reward", "train", "--name", "oo", "--base", "toy:digits", "--outside-option", "--folds", "2",
                 "--epochs", "60", "--db", url]) == 0
    out = capsys.readouterr().out
    assert f"from {both_bad} 'both bad' votes" in out
    reward = load_learned("oo", home=rewards_home())
    entry = reward.card["outside_option"]
    assert entry["both_bad_votes"] == both_bad and entry["tau"] is not None
    threshold, agree = recovered_threshold(lambda x: reward.head(x), entry["tau"], random.Random(5))
    assert abs(threshold - TRUE_TAU) < BOUND and agree > 0.9, (threshold, agree)
    trace = mini_n_on("learned:oo", threshold=123.0)
    assert trace.done.metrics["tau_source"] == "outside_option" and trace.done.metrics["tau"] == entry["tau"]
    picks = [e for e in trace.events if e.kind == "select"]
    assert "learned from" in picks[-1].reason


def test_fewer_both_bad_votes_than_the_minimum_fall_back_to_the_threshold(db, capsys):
    from app.cli import main
    from app.workflows.store import rewards_home
    from engines.rewards.learned import read_card

    fill_choices(db, prompts=10, per_prompt=10, both_bad_cap=MIN_BOTH_BAD - 1)
    assert main(["reward", "train", "--name", "few", "--base", "toy:digits", "--outside-option", "--folds", "2",
                 "--epochs", "30", "--db", str(db.engine.url)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "'both bad' votes" in line]
    assert said == [f"learned:few has {MIN_BOTH_BAD - 1} 'both bad' votes, below the minimum of {MIN_BOTH_BAD}: "
                    "no outside option (mini_n falls back to its fixed threshold)"]
    entry = read_card(rewards_home() / "few")["outside_option"]
    assert entry["tau"] is None and entry["both_bad_votes"] == MIN_BOTH_BAD - 1
    trace = mini_n_on("learned:few", threshold=0.25)
    metrics = trace.done.metrics
    assert metrics["tau_source"] == "threshold" and metrics["tau"] == 0.25
    note = metrics["tau_note"]
    assert "\n" not in note and f"{MIN_BOTH_BAD - 1} 'both bad' votes, below the minimum of {MIN_BOTH_BAD}" in note
    assert note in [e for e in trace.events if e.kind == "select"][-1].reason


def test_a_reward_without_an_outside_option_uses_the_threshold_and_says_so():
    trace = mini_n_on("length", threshold=2.0)
    assert trace.done.metrics["tau_source"] == "threshold"
    assert "no learned outside option" in trace.done.metrics["tau_note"]


def test_outside_option_is_refused_for_a_fine_tune_in_one_line(db, capsys):
    from app.cli import main

    assert main(["reward", "train", "--name", "ft", "--kind", "finetune", "--outside-option", "--db", str(db.engine.url)]) != 0
    err = capsys.readouterr().err.strip()
    assert "--outside-option trains a head" in err and "\n" not in err
