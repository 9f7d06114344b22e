"""vas with a learned value head (``value=learned``): with a head whose q(s, a) is exact on a toy the
decoded law is the KL-regularised optimum p·exp(r/β)/Z, and the mean value misses it; the head's part
composes with the other reward parts' rollout values; its forward passes are metered and traced; the
shipped arith head decodes deterministically for a seed; TD(λ) recovers known values."""

from __future__ import annotations

import pytest
import torch

from engines.errors import ConfigError, ModelLoadError
from engines.models import load_model
from engines.models.value_head import ValueHeadSpec
from engines.rewards.base import Reward, WeightedSum
from engines.samplers.vas import VAS, exact_law
from engines.trace import CostEvent, collect
from scripts.train_arith_value import Episodes, fit_value, lambda_returns
from tests.engines.test_exactness import ALPHA, TASK, chi_square_p, tilted
from tests.engines.test_vas import DigitLength, decoded_law

#: runs per law test; at β = 0.3 the mean-value variant's law is far enough from the optimum for 600
#: (its chi-square non-centrality against the optimum, computed exactly on toy:abc, is about 180)
RUNS, BETA = 600, 0.3


class TwoAs(Reward):
    """r(x) = 1 when x holds at least two 'a', else 0 (a two-level reward, as the math verifier)."""

    name = "two_as"

    def score(self, task, candidates, *, usage=None):
        return [float(x.count("a") >= 2) for x in candidates]


class ExactHead:
    """A value head whose q(s, a) = P_p(r = 1 | s·a) is computed exactly on an enumerable toy model."""

    def __init__(self, model, reward: Reward) -> None:
        self.model, self.law = model, exact_law(model)
        self.spec = ValueHeadSpec(policy=model.name, reward=reward.name)
        self.reward = dict(zip(self.law, reward.score(TASK, list(self.law)), strict=True))
        self.calls: list[dict[int, float]] = []  # q of every candidate, per call

    def success_probabilities(self, prefix, tokens, *, usage=None):
        if usage is not None:
            usage.add(model_calls=1)
        out = []
        for a in tokens:
            key = self.model.decode(prefix + [a])
            texts = [key] if a == self.model.eos_token_id else [x for x in self.law if x.startswith(key)]
            mass = sum(self.law[x] for x in texts)
            out.append(sum(self.law[x] * self.reward[x] for x in texts) / mass)
        self.calls.append(dict(zip(tokens, out, strict=True)))
        return torch.tensor(out, dtype=torch.float64)


def learned(model, head_reward, **params) -> VAS:
    """vas(value=learned) whose head is exact for ``head_reward`` on ``model``."""
    head = ExactHead(model, head_reward)

    class WithExactHead(VAS):
        def value_head(self):
            return head

    return WithExactHead(VAS.Config(value="learned", candidates=0, max_new_tokens=8, **params))


def test_an_exact_head_decodes_the_kl_optimum():
    model, reward, beta = load_model("toy:abc"), TwoAs(), BETA
    counts = decoded_law(learned(model, reward, beta=beta), model, reward, runs=RUNS)
    assert chi_square_p(counts, tilted(model, reward, beta), RUNS) > ALPHA
    assert chi_square_p(counts, model.distribution(), RUNS) < ALPHA  # the test can tell the base law apart


def test_the_mean_value_of_an_exact_head_misses_the_kl_optimum():
    """The head's q used as the paper's mean value E[r | s, a] (a wrong variant of the soft rule)."""
    model, reward, beta = load_model("toy:abc"), TwoAs(), BETA
    counts = decoded_law(learned(model, reward, beta=beta, estimator="mean"), model, reward, runs=RUNS)
    assert chi_square_p(counts, tilted(model, reward, beta), RUNS) < ALPHA


def test_the_head_part_composes_with_rollout_values_of_the_other_parts():
    """A weighted sum of the head's reward and another: the head values its part (w·q, no reward call),
    rollouts value the other (reward calls), and the weights set at decoding time scale each."""
    model = load_model("toy:abc")
    reward = WeightedSum([(1.0, TwoAs()), (1.0, DigitLength())])
    sampler = learned(model, TwoAs(), beta=0.5, estimator="mean", rollouts=2, weights="2,0")
    head = sampler.value_head()
    trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(0)))
    nodes = [e for e in trace.events if e.kind == "node" and e.depth > 0]  # the decoded tokens
    assert nodes and len(head.calls) == len(nodes)
    for node, q in zip(nodes, head.calls, strict=True):  # weight 0 on the rolled-out part: the value is 2·q
        token = model.eos_token_id if node.text == "" else model.encode(node.text)[0]
        assert node.meta["value"] == pytest.approx(2 * q[token])
    evaluations = trace.done.metrics["value_evaluations"]
    assert evaluations > 0 and trace.done.cost["reward_calls"] == evaluations + 1  # rollouts of the other part only


def test_a_weighted_head_part_decodes_the_kl_optimum_of_the_weighted_reward():
    """w·r of a two-level r is two-level (w·lo, w·hi): its soft value is β·log((1−q)·e^(w·lo/β) + q·e^(w·hi/β)),
    not w times the soft value of r; with weight 2 the decoded law is p·exp(2r/β)/Z."""
    model, beta = load_model("toy:abc"), BETA
    reward = WeightedSum([(2.0, TwoAs())])
    counts = decoded_law(learned(model, TwoAs(), beta=beta), model, reward, runs=RUNS)
    assert chi_square_p(counts, tilted(model, reward, beta), RUNS) > ALPHA
    assert chi_square_p(counts, tilted(model, TwoAs(), beta), RUNS) < ALPHA  # the weight is not lost


def test_a_soft_head_value_mixed_with_rollout_parts_is_refused_in_one_line():
    """The soft value of a sum needs every part's reward on the same continuations; the head gives only q."""
    model = load_model("toy:abc")
    reward = WeightedSum([(1.0, TwoAs()), (1.0, DigitLength())])
    with pytest.raises(ConfigError, match="soft value of a weighted sum"):
        learned(model, TwoAs(), weights="1,1").run(TASK, model, reward, rng=torch.Generator())
    learned(model, TwoAs(), weights="1,0").check_inputs(TASK, model, reward)  # the other part weighs nothing
    learned(model, TwoAs(), estimator="mean", weights="1,1").check_inputs(TASK, model, reward)


def test_a_head_for_another_reward_or_model_is_refused_in_one_line(tmp_path):
    model = load_model("toy:abc")
    with pytest.raises(ConfigError, match="no such part"):
        learned(model, TwoAs()).run(TASK, model, DigitLength(), rng=torch.Generator())
    other = load_model("toy:ab2")
    with pytest.raises(ConfigError, match="this run's model"):
        learned(model, TwoAs()).run(TASK, other, TwoAs(), rng=torch.Generator())
    with pytest.raises(ModelLoadError, match="no value head in"):
        VAS(VAS.Config(value="learned", value_model=str(tmp_path))).run(TASK, model, TwoAs(), rng=torch.Generator())


def last_cost(trace) -> dict:
    return [e for e in trace.events if isinstance(e, CostEvent)][-1].cost


def counters(cost: dict) -> dict:
    """The cost counters a run meters (wall time keeps running after the last snapshot)."""
    return {k: v for k, v in cost.items() if k != "wall_seconds"}


def test_head_calls_are_metered_and_traced():
    model, reward = load_model("toy:abc"), TwoAs()
    sampler = learned(model, reward, beta=0.5)
    trace = collect(sampler.run(TASK, model, reward, rng=torch.Generator().manual_seed(1)))
    steps = trace.done.metrics["tokens"]
    assert trace.done.metrics["value_head_calls"] == steps
    assert trace.done.cost["model_calls"] == 2 * steps  # one policy forward and one head forward a token
    assert trace.done.cost["reward_calls"] == 1  # the decoded text's own score only
    assert counters(last_cost(trace)) == counters(trace.done.cost)


# -- the shipped arith head -----------------------------------------------------------------------


def test_the_arith_head_decodes_deterministically_and_meters_its_passes():
    from engines.prompts import builtin_prompt_set
    from engines.rewards import build_reward
    from engines.samplers import build_sampler

    model, reward = load_model("embedded:arith"), build_reward("math")
    task = builtin_prompt_set("arith").tasks[0]
    sampler = build_sampler("vas", {"value": "learned", "beta": 0.1, "max_new_tokens": 24})

    def run(seed: int):
        return collect(sampler.run(task, model, reward, rng=torch.Generator().manual_seed(seed)))

    first, again = run(0), run(0)
    assert [e for e in first.events if e.kind == "node"] == [e for e in again.events if e.kind == "node"]
    tokens = first.done.metrics["tokens"]
    assert first.done.metrics["value_head_calls"] == tokens
    assert first.done.cost["model_calls"] == 2 * tokens and first.done.cost["reward_calls"] == 1
    assert counters(last_cost(first)) == counters(first.done.cost)
    with pytest.raises(ConfigError, match="values 'embedded:arith'"):
        sampler.run(task, load_model("toy:abc"), reward, rng=torch.Generator())


# -- TD(λ) ------------------------------------------------------------------------------------------


def test_lambda_returns_are_monte_carlo_at_one_and_td0_at_zero():
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0]])
    reward, last = torch.tensor([1.0]), torch.tensor([3])
    assert lambda_returns(values, reward, last, lam=1.0).tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]
    assert lambda_returns(values, reward, last, lam=0.0)[0].tolist() == pytest.approx([0.2, 0.3, 0.4, 1.0, 0.0])
    g = lambda_returns(values, reward, last, lam=0.5, gamma=0.9)[0]
    assert float(g[2]) == pytest.approx(0.9 * (0.5 * 0.4 + 0.5 * 1.0))
    assert float(g[1]) == pytest.approx(0.9 * (0.5 * 0.3 + 0.5 * float(g[2])))


#: a synthetic problem: prompt token 4, then two tokens from {2, 3} (each 1/2), then the end token 1;
#: the reward is 1 with probability SUCCESS[(a1, a2)], so the value of every prefix is known exactly
SUCCESS = {(2, 2): 0.9, (2, 3): 0.5, (3, 2): 0.3, (3, 3): 0.1}


def synthetic_batches(size: int, gen: torch.Generator):
    while True:
        pairs = torch.randint(2, 4, (size, 2), generator=gen)
        p = torch.tensor([SUCCESS[(int(a), int(b))] for a, b in pairs])
        reward = (torch.rand(size, generator=gen) < p).float()
        ids = torch.cat([torch.full((size, 1), 4), pairs, torch.ones(size, 1, dtype=torch.long)], 1)
        yield Episodes(ids, torch.ones_like(ids), torch.zeros(size, dtype=torch.long),
                       torch.full((size,), 3), reward)


class PrefixHead(torch.nn.Module):
    """A tiny causal token-classification stand-in: the logit at t reads the prefix x_0..x_t (a sum of
    position-wise token embeddings, then an MLP), called like a transformers model."""

    def __init__(self, vocab: int = 5, width: int = 4, dim: int = 32) -> None:
        super().__init__()
        self.embed = torch.nn.Parameter(torch.randn(width, vocab, dim) * 0.5)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh(), torch.nn.Linear(dim, 1))

    def forward(self, input_ids, attention_mask=None):
        positions = torch.arange(input_ids.shape[1])[None, :].expand_as(input_ids)
        hidden = self.embed[positions, input_ids].cumsum(1)
        return type("Output", (), {"logits": self.mlp(hidden)})()


def test_td_lambda_recovers_the_values_of_a_synthetic_problem():
    torch.manual_seed(0)
    model = PrefixHead()
    fit_value(model, synthetic_batches(128, torch.Generator().manual_seed(0)), steps=200, lr=1e-2, lam=0.95)
    rows = torch.tensor([[4, a, b, 1] for a, b in SUCCESS])
    with torch.no_grad():
        v = torch.sigmoid(model(input_ids=rows).logits[..., 0])
    mean = sum(SUCCESS.values()) / 4
    first = {a: (SUCCESS[(a, 2)] + SUCCESS[(a, 3)]) / 2 for a in (2, 3)}
    for i, (a, b) in enumerate(SUCCESS):
        assert float(v[i, 0]) == pytest.approx(mean, abs=0.05)  # the prompt
        assert float(v[i, 1]) == pytest.approx(first[a], abs=0.05)
        assert float(v[i, 2]) == pytest.approx(SUCCESS[(a, b)], abs=0.05)
        assert float(v[i, 3]) == pytest.approx(SUCCESS[(a, b)], abs=0.05)  # the end token: E[r | text]


def test_the_shipped_head_comes_from_the_full_recipe_and_the_card_quotes_it():
    import json

    from engines.models.value_head import VALUE_DIR

    metrics = json.loads((VALUE_DIR / "metrics.json").read_text())
    assert not metrics["quick"] and (VALUE_DIR / "model.safetensors").stat().st_size < 4_000_000
    card = (VALUE_DIR.parent / "MODEL_CARD.md").read_text()
    assert f"| all | {metrics['heldout']['value']['all']['prefixes']} | {metrics['heldout']['value']['all']['auroc']:.3f} |" in card
