"""Q-probes (Li et al. 2024): the soft pick's exact law, its limit, the three losses, the stored probe."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engines.errors import ConfigError
from engines.rewards.q_probe import (
    ProbeFit,
    fit_probe,
    probe_loss,
    soft_pick_law,
    soft_pick_weights,
    tilted_law,
)

P = [0.5, 0.3, 0.15, 0.05]
Q = [0.0, 1.0, 2.0, 3.0]


def total_variation(a, b) -> float:
    return 0.5 * sum(abs(x - y) for x, y in zip(a, b, strict=True))


def test_the_soft_pick_over_k_draws_follows_its_exact_law():
    """Draw k from p and pick by softmax(q / beta), 40,000 times: the pick counts fit soft_pick_law (chi-square);
    the law of a plain draw (p, what a wrong 'pick uniformly' variant gives) does not."""
    from scipy.stats import chisquare

    k, beta, runs = 3, 0.7, 40_000
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(torch.tensor(P), runs * k, replacement=True, generator=gen).view(runs, k)
    weights = torch.softmax(torch.tensor(Q)[draws] / beta, dim=1)  # softmax(q / beta) over each row's k draws
    picks = draws.gather(1, torch.multinomial(weights, 1, generator=gen)).squeeze(1)
    counts = torch.bincount(picks, minlength=len(P)).tolist()
    law = soft_pick_law(P, Q, k, beta)
    assert math.isclose(sum(law), 1.0, abs_tol=1e-12)
    assert chisquare(counts, [runs * x for x in law]).pvalue > 1e-3
    assert chisquare(counts, [runs * x for x in P]).pvalue < 1e-6


def test_the_soft_pick_tends_to_the_kl_constrained_optimum_as_k_grows():
    """The paper's Theorem 3.1: softmax picks among k draws -> p exp(q/beta)/Z. The exact law's distance to it
    falls with k; the argmax pick (beta -> 0) tends to the best outcome instead, far from the tilted law."""
    beta = 1.0
    target = tilted_law(P, Q, beta)
    distances = [total_variation(soft_pick_law(P, Q, k, beta), target) for k in (1, 4, 16, 64)]
    assert distances == sorted(distances, reverse=True) and distances[-1] < 0.02 < distances[0]
    assert total_variation(soft_pick_law(P, Q, 64, 0.0), target) > 0.3


def test_soft_pick_weights_and_bad_beta():
    assert soft_pick_weights([1.0, 1.0, 0.0], 0.0) == [0.5, 0.5, 0.0]
    w = soft_pick_weights([0.0, math.log(3.0)], 1.0)
    assert math.isclose(w[1], 0.75)
    with pytest.raises(ConfigError, match="beta"):
        soft_pick_weights([1.0], -1.0)


def synthetic(prompts: int, k: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of k samples per prompt, rewards 1 when a hidden direction scores them above 0.3 (noisy)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(prompts, k, dim, generator=gen) * 2 + 5  # offset and scale: the probe must standardise
    w = torch.linspace(-1, 1, dim)
    score = ((x - 5) / 2) @ w / w.norm() + 0.3 * torch.randn(prompts, k, generator=gen)
    return x, (score > 0.3).float()


def fitted(features, rewards, loss):
    items = list(fit_probe(features, rewards, ProbeFit(loss=loss, epochs=200, lr=0.05)))
    assert all(isinstance(v, float) for v in items[:-1]) and len(items) == 11  # ten progress losses, then the probe
    return items[-1]


@pytest.mark.parametrize("loss", ["pg", "mse", "ce"])
def test_each_loss_learns_a_probe_whose_pick_beats_one_sample_on_held_out_prompts(loss):
    train_x, train_r = synthetic(128, 8, 6, seed=1)
    test_x, test_r = synthetic(256, 8, 6, seed=2)
    head = fitted(train_x, train_r, loss)
    with torch.no_grad():
        q = head(test_x)
    picked = test_r.gather(1, q.argmax(1, keepdim=True)).mean().item()
    one_sample, oracle = test_r.mean().item(), test_r.max(1).values.mean().item()
    # one sample ~0.38, best of 8 by the hidden reward ~0.97: a useful probe closes most of that gap
    assert picked > one_sample + 0.6 * (oracle - one_sample)
    shuffled = head(test_x[torch.randperm(256, generator=torch.Generator().manual_seed(0))])
    assert test_r.gather(1, shuffled.argmax(1, keepdim=True)).mean().item() < one_sample + 0.2  # probes of other rows: chance


def test_the_pg_loss_is_minus_the_expected_reward_of_the_soft_pick():
    q = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert math.isclose(probe_loss(q, r, "pg").item(), -(0.25 + 0.5) / 2, rel_tol=1e-6)


def test_the_fit_is_seeded_and_bad_data_is_one_line():
    x, r = synthetic(16, 4, 3, seed=0)
    a, b = fitted(x, r, "pg"), fitted(x, r, "pg")
    assert torch.equal(a.net.weight, b.net.weight)
    for features, rewards, loss, message in [
        (x[:, :1], r[:, :1], "pg", "k >= 2"),
        (x, r[:, :2], "pg", "features"),
        (x.clone().fill_(math.nan), r, "mse", "NaN"),
        (x, r * 3, "ce", r"\[0, 1\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            list(fit_probe(features, rewards, ProbeFit(loss=loss)))
    with pytest.raises(ConfigError, match="unknown probe loss"):
        ProbeFit(loss="hinge")


def test_a_probe_trained_from_the_cli_is_a_learned_reward(capsys, tmp_path):
    """`samplescope reward probe` on the toy digits model: the folder's card names the policy as its base, the
    held-out pick metrics are there, learned:NAME scores with the probe, and a second probe of the same name
    is refused with one line and leaves the first untouched."""
    from app.cli import main
    from app.workflows.store import rewards_home
    from engines.rewards import RewardEnv, build_reward
    from engines.task import Task

    argv = ["reward", "probe", "--name", "p", "--model", "toy:digits", "--prompts", "arith-train:easy:12",
            "--heldout", "arith-fresh:easy:8", "--reward", "math", "--k", "4", "--max-new-tokens", "2",
            "--epochs", "30", "--json"]
    assert main(argv) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["base"] == "toy:digits" and card["trained_by"] == "q_probe" and card["probe"]["k"] == 4
    held = card["metrics"]["heldout"]
    assert held["prompts"] == 8 and held["one_sample"] <= held["oracle_pick"]
    assert held["probe_argmax_pick"] <= held["oracle_pick"]
    stored = (rewards_home() / "p" / "card.json").read_text()
    reward = build_reward("learned:p", RewardEnv(rewards_folder=rewards_home()))
    scores = reward.score(Task(prompt="Q: 1+1"), ["2", "22", "7"])
    assert len(scores) == 3 and scores[0] != scores[1]  # character counts differ, so do the probe's values
    assert main(argv) == 2
    assert "exists already" in capsys.readouterr().err
    assert (rewards_home() / "p" / "card.json").read_text() == stored


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--k": "1"}, "k >= 2"),
        ({"--reward": "pairwise:sentiment"}, "not a text outcome reward"),
        ({"--prompts": "arith-train:easy:0"}, "empty"),
        ({"--model": "nope:x"}, "nope"),
        ({"--name": "../x"}, "reward name"),
    ],
)
def test_bad_probe_input_is_one_line_and_stores_nothing(capsys, change, message):
    from app.cli import main
    from app.workflows.store import rewards_home

    args = {"--name": "p", "--model": "toy:digits", "--prompts": "arith-train:easy:4", "--reward": "math",
            "--k": "4", "--max-new-tokens": "2", "--epochs": "5"}
    args.update(change)
    code = main(["reward", "probe", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not rewards_home().exists() or not any(rewards_home().iterdir())


def toy_probe(model, weights):
    """A Q-probe on the toy model's bag-of-characters embedding, with set weights (a LearnedTextReward as
    `samplescope reward probe` stores it)."""
    from engines.rewards.learned import BTHead, LearnedTextReward, TextFeatures

    head = BTHead(len(weights))
    with torch.no_grad():
        head.net.weight.copy_(torch.tensor([weights]))
        head.net.bias.zero_()
    card = {"trained_by": "q_probe", "base": model.name, "kind": "head"}
    return LearnedTextReward(head.eval(), TextFeatures(model, model.name), "learned:toy-probe", card)


def test_the_q_probe_sampler_picks_by_the_exact_soft_pick_law():
    """On the enumerable toy (toy:ab2, 7 continuations), 3,000 seeded q_probe runs with k = 3: the picks fit
    soft_pick_law(p, Q, k, beta) by chi-square; a sampler that picked the argmax of Q would not."""
    from scipy.stats import chisquare

    from engines.models import load_model
    from engines.samplers import build_sampler
    from engines.task import Task
    from engines.trace import collect

    model = load_model("toy:ab2")
    probe = toy_probe(model, [1.0, -0.5])  # Q = #a - 0.5 #b
    p = model.distribution()
    total = sum(p.values())  # float32 tables: the law sums to 1 within 1e-7
    p = {t: v / total for t, v in p.items()}
    texts = sorted(p)
    q = probe.score(Task(prompt="x"), texts)
    k, beta, runs = 3, 0.8, 3000
    sampler = build_sampler("q_probe", {"n": k, "selection_temperature": beta, "max_new_tokens": 2})
    picks = {t: 0 for t in texts}
    for seed in range(runs):
        trace = collect(sampler.run(Task(prompt="x"), model, probe, rng=torch.Generator().manual_seed(seed)))
        picks[trace.nodes[trace.done.picks[0]].text] += 1
    law = soft_pick_law([p[t] for t in texts], q, k, beta)
    observed = [picks[t] for t in texts]
    assert chisquare(observed, [runs * x for x in law]).pvalue > 1e-3
    greedy = soft_pick_law([p[t] for t in texts], q, k, 0.0)  # the argmax of Q: a wrong variant
    smoothed = [(g + 1e-6) / (1 + 1e-6 * len(greedy)) for g in greedy]
    assert chisquare(observed, [runs * x for x in smoothed]).pvalue < 1e-6


def test_a_probe_fit_on_another_model_is_refused_in_one_line():
    from engines.models import load_model
    from engines.samplers import build_sampler
    from engines.task import Task

    probe = toy_probe(load_model("toy:ab2"), [1.0, -0.5])
    with pytest.raises(ConfigError, match="embeddings of 'toy:ab2'; this run's model is 'toy:abc'"):
        list(build_sampler("q_probe", {"n": 2}).run(Task(prompt="x"), load_model("toy:abc"), probe,
                                                    rng=torch.Generator().manual_seed(0)))
