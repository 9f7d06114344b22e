"""Value Augmented Sampling on enumerable toys: with the exact soft value the decoded law is the
KL-regularised optimum p·exp(r/β)/Z; the mean value (the paper's approximation) and a β mismatch
are told apart; values are metered; reward weights compose."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from engines.errors import ConfigError
from engines.models import load_model
from engines.rewards.base import WeightedSum
from engines.samplers import build_sampler
from engines.samplers.vas import VAS
from engines.trace import Budget, collect
from tests.engines.test_exactness import ALPHA, TASK, chi_square_p, pick_counts, tilted
from tests.engines.toys import CountA, DigitValue

RUNS = 1500
WRONG_RUNS = 400


def decoded_law(sampler, model, reward, runs: int = RUNS, seed: int = 7) -> Counter:
    return pick_counts(sampler, model, reward, runs, seed)


def test_exact_soft_value_decodes_the_kl_optimum():
    model, reward, beta = load_model("toy:abc"), CountA(), 0.5
    sampler = build_sampler("vas", {"value": "exact", "beta": beta, "max_new_tokens": 8})
    counts = decoded_law(sampler, model, reward)
    assert chi_square_p(counts, tilted(model, reward, beta), RUNS) > ALPHA
    assert chi_square_p(counts, model.distribution(), RUNS) < ALPHA  # the test can tell the base law apart


def test_mean_value_misses_the_kl_optimum():
    """The paper's mean value E[r | s, a] in place of the soft value: not the tilted law."""
    model, reward, beta = load_model("toy:abc"), CountA(), 0.5
    sampler = build_sampler("vas", {"value": "exact", "estimator": "mean", "beta": beta, "max_new_tokens": 8})
    counts = decoded_law(sampler, model, reward)
    assert chi_square_p(counts, tilted(model, reward, beta), RUNS) < ALPHA


class BetaMismatch(VAS):
    """Soft values computed at 2β but the rule tilts by exp(V/β): a wrong variant."""

    def soft_value_beta(self):
        return 2 * self.config.beta


def test_beta_mismatch_misses_the_kl_optimum():
    model, reward, beta = load_model("toy:abc"), CountA(), 0.5
    sampler = BetaMismatch(VAS.Config(value="exact", beta=beta, max_new_tokens=8))
    counts = decoded_law(sampler, model, reward)
    assert chi_square_p(counts, tilted(model, reward, beta), RUNS) < ALPHA


def test_rollout_values_are_metered_and_reach_the_optimum_with_many_rollouts():
    """Monte-Carlo soft values from the run's reward: every scored rollout is a reward call,
    and with many rollouts per token the decoded law is close to p·exp(r/β)/Z on toy:ab2."""
    model, reward, beta = load_model("toy:ab2"), CountA(), 1.0
    sampler = build_sampler("vas", {"beta": beta, "rollouts": 100, "max_new_tokens": 4})
    trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(0)))
    evaluations = trace.done.metrics["value_evaluations"]
    assert evaluations > 100
    assert trace.done.cost["reward_calls"] == evaluations + 1  # + the decoded text's own score
    counts = decoded_law(sampler, model, reward, runs=300, seed=3)
    assert chi_square_p(counts, tilted(model, reward, beta), 300) > ALPHA


def test_reward_weights_compose_values_at_decoding_time():
    """A weighted sum's parts are valued separately and combined with the weights given at decoding
    time: weights (1, 0) decode as if the reward were its first part alone (mean values are linear)."""
    model, beta = load_model("toy:abc"), 0.5
    both = WeightedSum([(1.0, CountA()), (1.0, DigitLength())])
    alone = build_sampler("vas", {"value": "exact", "estimator": "mean", "beta": beta, "max_new_tokens": 8})
    reweighted = build_sampler("vas", {"value": "exact", "estimator": "mean", "beta": beta, "max_new_tokens": 8,
                                       "weights": "1,0"})
    a = decoded_law(alone, model, CountA(), runs=50, seed=1)
    b = decoded_law(reweighted, model, both, runs=50, seed=1)
    assert a == b
    trace = collect(reweighted.run(TASK, model, both, rng=torch.Generator().manual_seed(0)))
    assert trace.done.metrics["value_evaluations"] == 2 * len(model.distribution())  # each text, each part


class DigitLength(CountA):
    name = "length"

    def score(self, task, candidates, *, usage=None):
        return [float(len(x)) for x in candidates]


class PerPartSoftValues(VAS):
    """Σ_i w_i·β·log E[exp(r_i/β)]: each part's soft value on its own, then weighted (a wrong variant:
    the soft value of a sum is not the sum of soft values)."""

    def exact_values(self, ctx, table, response, tokens):
        law, rewards = table
        beta, total = self.config.beta, torch.zeros(len(tokens), dtype=torch.float64)
        for i, a in enumerate(tokens):
            key = ctx.model.decode(response + [a])
            matches = [key] if a == ctx.model.eos_token_id else [x for x in law if x.startswith(key)]
            p = torch.tensor([law[x] for x in matches], dtype=torch.float64)
            for part, (weight, _) in enumerate(self.parts(ctx)):
                r = torch.tensor([rewards[part][x] for x in matches], dtype=torch.float64)
                total[i] += weight * float(beta * (torch.logsumexp(r / beta + p.log(), 0) - p.sum().log()))
        return total


def test_weighted_reward_soft_value_decodes_the_kl_optimum_of_the_sum():
    """A two-part weighted reward with the exact soft value decodes p·exp(Σ_i w_i r_i/β)/Z: the weighted
    rewards are summed per text before the soft value; summing the parts' soft values does not."""
    model, beta = load_model("toy:abc"), 0.5
    reward = WeightedSum([(1.0, CountA()), (-1.0, DigitLength())])
    params = {"value": "exact", "beta": beta, "max_new_tokens": 8}
    law = tilted(model, reward, beta)
    counts = decoded_law(build_sampler("vas", params), model, reward)
    assert chi_square_p(counts, law, RUNS) > ALPHA
    wrong = decoded_law(PerPartSoftValues(VAS.Config(**params)), model, reward, runs=WRONG_RUNS)
    assert chi_square_p(wrong, law, WRONG_RUNS) < ALPHA


def test_rollout_soft_values_value_the_weighted_sum_of_each_rollout():
    """r − r is 0 on every rollout, so its soft value is 0 at every token; the sum of the parts' soft
    values, β·log E[e^(r/β)] + β·log E[e^(−r/β)], is positive wherever the rollouts' rewards differ."""
    model = load_model("toy:abc")
    reward = WeightedSum([(1.0, CountA()), (-1.0, CountA())])
    sampler = build_sampler("vas", {"beta": 0.5, "rollouts": 4, "max_new_tokens": 8})
    trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(0)))
    values = [e.meta["value"] for e in trace.events if e.kind == "node" and e.depth > 0]
    assert values and all(v == 0 for v in values)
    evaluations = trace.done.metrics["value_evaluations"]
    assert trace.done.cost["reward_calls"] == evaluations + 1  # every rollout scored by each part, + the pick


def test_bad_inputs_are_refused_in_one_line():
    model = load_model("toy:abc")
    with pytest.raises(ConfigError, match="comma-separated"):
        build_sampler("vas", {"weights": "1,x"})
    with pytest.raises(ConfigError, match="part"):
        build_sampler("vas", {"weights": "1,2"}).run(TASK, model, CountA(), rng=torch.Generator())
    with pytest.raises(ConfigError, match="temperature"):
        build_sampler("vas", {"temperature": 0.0})
    with pytest.raises(ConfigError, match="top_k 0"):
        build_sampler("vas", {"value": "exact", "top_k": 2}).run(TASK, model, CountA(), rng=torch.Generator())
    with pytest.raises(ConfigError, match="max_new_tokens >= 5"):
        build_sampler("vas", {"value": "exact", "max_new_tokens": 3}).run(TASK, model, CountA(), rng=torch.Generator())


def test_budget_stops_before_a_text_that_cannot_be_finished():
    model = load_model("toy:digits")
    trace = collect(build_sampler("vas", {"max_new_tokens": 3}).run(
        TASK, model, DigitValue(), budget=Budget(generated_tokens=20), rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "budget" and trace.done.cost["generated_tokens"] <= 20


def test_decoded_tokens_never_pass_the_generated_tokens_cap():
    """The rollouts spend generated tokens too: a decoded token is refused, not counted past the cap, when
    they have used the room (toy:abc at these caps passed them by one token)."""
    model = load_model("toy:abc")
    sampler = build_sampler("vas", {"max_new_tokens": 3, "rollouts": 2, "candidates": 2})
    for cap, seed in ((4, 1), (6, 0), (7, 1)):
        trace = collect(sampler.run(TASK, model, CountA(), budget=Budget(generated_tokens=cap),
                                    rng=torch.Generator().manual_seed(seed)))
        assert trace.done.status == "budget" and trace.done.cost["generated_tokens"] <= cap


def test_a_preference_direction_is_valued_per_reward():
    """direction:W1,W2:R1,R2 is composed like a weighted sum, its unit vector as the weights."""
    from engines.rewards.direction import DirectionReward
    from engines.samplers.vas import reward_parts

    first, second = CountA(), DigitLength()
    parts = reward_parts(DirectionReward([3.0, 4.0], [first, second]), None)
    assert [(round(w, 6), r) for w, r in parts] == [(0.6, first), (0.8, second)]
    assert reward_parts(DirectionReward([3.0, 4.0], [first, second]), [1.0, 0.0]) == [(1.0, first), (0.0, second)]
