"""The update on the real arith policy: what the rollout recorded is what the update recomputes, and one
step moves a sample's log-prob the way its objective says.

- ratio 1 at the first step: the log-probs :meth:`HFPolicy.rollout` records (left padding, explicit
  position ids, KV cache, stop at ``<eos>`` or at the token cap) equal those
  :meth:`HFPolicy.token_logprobs` recomputes (right padding, one forward pass), for prompts of
  different lengths in one batch, finished and cut-off rollouts, and tree continuations;
- one SFT step raises the sample's log-prob; one PG step with A > 0 raises it, with A < 0 lowers it;
- the k3 KL term alone pulls a perturbed policy back toward its reference;
- the policy is in eval mode (no dropout: the same forward twice gives the same log-probs) and fp32;
- the held-out prompts are fresh (none in the training prompts or a task set) and formatted as the
  training prompts are;
- the separate learning rate reaches the output normalisation's gain alone, and scaling that gain
  scales the logits (it is the inverse sampling temperature).
"""

from __future__ import annotations

import pytest
import torch

from engines.training.base import Rollout, TrainingBatch, token_weights
from engines.training.policy import load_policy
from engines.training.prompts import load_prompts
from engines.training.update import apply_update, batch_loss


@pytest.fixture(scope="module")
def arith():
    return load_policy("embedded:arith")


@pytest.fixture()
def policy(arith):
    state = {k: v.clone() for k, v in arith.state_dict().items()}
    yield arith
    arith.load_state_dict(state)


def _recorded(rollouts):
    width = max(r.tokens for r in rollouts)
    old = torch.zeros(len(rollouts), width)
    for i, r in enumerate(rollouts):
        old[i, : r.tokens] = torch.tensor(r.logprobs)
    return old


def _prompts(n: int) -> list[str]:
    tasks = load_prompts("arith-train:easy:40")[: n // 2] + load_prompts("arith-train:hard:40")[: n - n // 2]
    return [t.prompt for t in tasks]


@pytest.mark.parametrize("max_new_tokens", [96, 12])
def test_recorded_logprobs_equal_the_recomputed_ones(policy, max_new_tokens):
    prompts = _prompts(16)
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    rollouts = policy.rollout(prompts, temperature=1.0, max_new_tokens=max_new_tokens, rng=torch.Generator().manual_seed(3))
    if max_new_tokens == 12:
        assert not all(r.finished for r in rollouts)  # cut-off rollouts (no <eos>) are in the batch
    else:
        assert all(r.finished and r.completion_ids[-1] == policy.eos_id for r in rollouts)
    with torch.no_grad():
        logps, _, mask = policy.token_logprobs(rollouts)
    old = _recorded(rollouts)
    assert mask.sum() == sum(r.tokens for r in rollouts)
    assert torch.allclose(logps * mask, old * mask, atol=1e-4)


def test_tempered_rollouts_record_the_untempered_logprobs(policy):
    rollouts = policy.rollout(_prompts(8), temperature=0.5, max_new_tokens=96, rng=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logps, _, mask = policy.token_logprobs(rollouts)
    assert torch.allclose(logps * mask, _recorded(rollouts) * mask, atol=1e-4)


def test_tree_continuations_record_the_policy_logprobs(policy):
    newline = policy.encode("\n")[0]
    rng = torch.Generator().manual_seed(5)
    first = policy.rollout(_prompts(6), temperature=1.0, max_new_tokens=96, rng=rng)
    prefixes = [r.prompt_ids + r.completion_ids[:3] for r in first]
    rollouts = policy.extend(prefixes, temperature=1.0, max_new_tokens=96, rng=rng, stop_ids=[newline])
    assert any(r.completion_ids[-1] == newline for r in rollouts)
    with torch.no_grad():
        logps, _, mask = policy.token_logprobs(rollouts)
    assert torch.allclose(logps * mask, _recorded(rollouts) * mask, atol=1e-4)


def _batch(rollouts, advantages, objective="pg"):
    return TrainingBatch(
        rollouts=list(rollouts), rewards=[0.0] * len(rollouts), advantages=list(advantages),
        sample_weights=[1.0] * len(rollouts), token_weights=token_weights(rollouts, [1.0] * len(rollouts), "token_mean"),
        objective=objective,
    )


def test_first_step_is_on_policy(policy):
    rollouts = policy.rollout(_prompts(8), temperature=1.0, max_new_tokens=96, rng=torch.Generator().manual_seed(6))
    _, metrics = batch_loss(policy, _batch(rollouts, [1.0, -1.0] * 4), clip_eps=0.2)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["clip_fraction"] == 0.0


def _sample_logprob(policy, rollout: Rollout) -> float:
    with torch.no_grad():
        logps, _, mask = policy.token_logprobs([rollout])
    return float((logps * mask).sum())


def _one_wrong_sample(policy) -> Rollout:
    # a sample the policy finds unlikely (an arithmetic slip), so a step has room to move it either way
    rollouts = policy.rollout(_prompts(16), temperature=1.0, max_new_tokens=96, rng=torch.Generator().manual_seed(7))
    return min(rollouts, key=lambda r: sum(r.logprobs))


@pytest.mark.parametrize(("objective", "advantage", "direction"), [("sft", 0.0, 1), ("pg", 1.0, 1), ("pg", -1.0, -1)])
def test_one_step_moves_the_sample_logprob_its_way(policy, objective, advantage, direction):
    rollout = _one_wrong_sample(policy)
    before = _sample_logprob(policy, rollout)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-4, weight_decay=0.0)
    metrics = apply_update(policy, optimizer, _batch([rollout], [advantage], objective))
    after = _sample_logprob(policy, rollout)
    assert metrics["grad_norm"] > 0
    assert direction * (after - before) > 0.01


def test_kl_term_pulls_toward_the_reference(policy):
    reference = policy.frozen_copy()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    rollouts = policy.rollout(_prompts(8), temperature=1.0, max_new_tokens=96, rng=torch.Generator().manual_seed(8))
    batch = _batch(rollouts, [0.0] * len(rollouts))
    _, before = batch_loss(policy, batch, reference=reference, kl_coef=1.0)
    for _ in range(3):  # normalised gradient steps, small against the perturbation (L2 norm ~0.9): the policy is sharp along its gradients
        loss, _ = batch_loss(policy, batch, reference=reference, kl_coef=1.0)
        grads = torch.autograd.grad(loss, list(policy.parameters()))
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        with torch.no_grad():
            for p, g in zip(policy.parameters(), grads, strict=True):
                p.sub_(1e-3 * g / norm)
    _, after = batch_loss(policy, batch, reference=reference, kl_coef=1.0)
    assert before["kl"] > 0
    assert after["kl"] < 0.5 * before["kl"]


def test_policy_is_deterministic_fp32_without_dropout(policy):
    assert not policy.model.training
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    rollouts = policy.rollout(_prompts(4), temperature=1.0, max_new_tokens=96, rng=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, _, _ = policy.token_logprobs(rollouts)
        b, _, _ = policy.token_logprobs(rollouts)
    assert torch.equal(a, b)


def test_held_out_prompts_are_fresh_and_formatted_as_the_training_prompts():
    from engines.tasks import TASK_SETS

    train = load_prompts("arith-train")
    fresh = load_prompts("arith-fresh")
    reserved = {t.prompt for name in ("arith", "arith-easy", "arith-hard") for t in TASK_SETS.get(name).tasks()}
    assert len(fresh) == 200
    assert not {t.prompt for t in fresh} & ({t.prompt for t in train} | reserved)
    for task in (train[0], fresh[0]):
        assert task.prompt.startswith("Q: ") and task.prompt.endswith("\n") and task.chat is False


def test_the_gain_learning_rate_reaches_the_output_gain_alone_and_that_gain_is_the_inverse_temperature(policy):
    names = {id(p): n for n, p in policy.model.named_parameters()}
    rest, gains = policy.parameter_groups(1e-5, 0.2)
    assert [names[id(p)] for p in gains["params"]] == ["model.norm.weight"] and gains["lr"] == 0.2
    assert len(rest["params"]) + 1 == len(list(policy.parameters())) and rest["lr"] == 1e-5
    assert len(policy.parameter_groups(1e-5, None)) == 1
    ids = torch.tensor([policy.encode("Q: 3+4*5-2\n4*5=20\n")])
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits
        policy.model.model.norm.weight.mul_(2.0)
        doubled = policy.model(input_ids=ids).logits
    assert torch.allclose(doubled, 2.0 * logits, atol=1e-4)  # sampling at T=1 after the gain doubles = T=0.5 before
