"""A real TRL ``GRPOTrainer`` run on the arith policy (CPU) driven by lab strategies through the bridge.

Checked: the strategy's drops reach TRL (dropped samples are masked rows with advantage 0,
degenerate Reinforce-Rej groups never in the batch), TRL's first gradient equals the lab's
update gradient on the same batch (and the unrescaled variant, which TRL alone would give,
does not), and the weights move.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

from engines.errors import ConfigError
from engines.training.policy import load_policy
from engines.training.prompts import load_prompts
from engines.training.rewards import training_reward
from engines.training.trl_bridge import StrategyBridge, strategy_reward
from engines.training.update import batch_loss

pytestmark = pytest.mark.slow
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


class _GradCapture:
    """Copies every parameter's gradient just before the first optimiser step (clipping is off)."""

    def __init__(self, model):
        from transformers import TrainerCallback

        capture = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                if capture.grads is None:
                    capture.grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]

        self.grads = None
        self.callback = Callback()


def _lab_grads(batch):
    """The lab update's gradient (engines.training.update.batch_loss) on a fresh copy of the initial weights,
    on-policy as TRL's first pass is: old log-probs recomputed by the same forward pass, so the ratio is 1
    (the sampler's KV-cached log-probs differ from a full forward pass by float error, a few 1e-4 per token)."""
    lab = load_policy("embedded:arith")
    model = lab.model
    with torch.no_grad():
        logps, _, _ = lab.token_logprobs(batch.rollouts)
    rollouts = [dataclasses.replace(r, logprobs=tuple(logps[i, : r.tokens].tolist())) for i, r in enumerate(batch.rollouts)]
    loss, _ = batch_loss(lab, dataclasses.replace(batch, rollouts=rollouts))
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _close(a, b, rtol=2e-3):
    """Relative L2 distance of two gradients (lists in parameter order) under ``rtol``."""
    assert [x.shape for x in a] == [y.shape for y in b]
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b, strict=True)) ** 0.5
    den = sum(float(y.pow(2).sum()) for y in b) ** 0.5
    return num <= rtol * den, num / max(den, 1e-30)


def _run(tmp_path, strategy, params, steps=1, seed=0):
    from engines.training.trl_bridge import StrategyGRPOTrainer

    policy = load_policy("embedded:arith")
    tasks = load_prompts("arith-train:medium:64")
    bridge = StrategyBridge(strategy, params, tasks=tasks, reward=training_reward("math"), seed=seed)
    args = bridge.grpo_config(
        str(tmp_path / "out"), learning_rate=1e-3, max_steps=steps, use_cpu=True, max_grad_norm=0.0, bf16=False,
        save_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    initial = copy.deepcopy(policy.model.state_dict())
    capture = _GradCapture(policy.model)
    trainer = StrategyGRPOTrainer(policy.model, bridge, args=args, processing_class=policy.tokenizer, callbacks=[capture.callback])
    trainer.train()
    return policy, bridge, trainer, initial, capture


def test_reinforce_rej_under_trl_drops_degenerate_groups_and_matches_the_lab_gradient(tmp_path):
    params = {"group_size": 4, "prompts_per_batch": 8, "max_new_tokens": 40}
    policy, bridge, trainer, initial, capture = _run(tmp_path, "reinforce_rej", params)
    groups = bridge.group_events()
    assert len(groups) == 8
    for g in groups:
        degenerate = max(g.rewards) == min(g.rewards)
        assert g.kept is not degenerate
        assert g.rule == (None if not degenerate else "all wrong" if max(g.rewards) == 0 else "all right")
    batch = bridge.batches[0]
    assert len(batch) == 4 * sum(g.kept for g in groups)
    assert any(not g.kept for g in groups) and any(g.kept for g in groups), "seed 0 draws both kinds"

    # What TRL trained on: the kept samples as live rows with the strategy's advantages, the rest masked, A = 0.
    rows = trainer._buffered_inputs[0]
    live = (rows["completion_mask"] * rows["tool_mask"]).sum(-1) > 0  # TRL pads tool_mask with 1s
    assert int(live.sum()) == len(batch)
    assert torch.all(rows["advantages"][~live] == 0)
    assert sorted(rows["advantages"][live].tolist()) == pytest.approx(sorted(batch.advantages), abs=1e-6)

    # TRL's gradient is the lab update's gradient on the same batch ...
    lab = _lab_grads(batch)
    ok, err = _close(capture.grads, lab)
    assert ok, f"TRL gradient differs from the lab's by {err:.2e}"
    # ... and not the one TRL gives with the dropped groups' tokens still counted (token mean over all drawn).
    drawn_tokens = bridge.budget.spent_tokens
    kept_tokens = sum(r.tokens for r in batch.rollouts)
    assert kept_tokens < drawn_tokens
    diluted = [g * kept_tokens / drawn_tokens for g in lab]
    assert not _close(capture.grads, diluted)[0]

    after = policy.model.state_dict()
    assert max(float((initial[k] - after[k]).abs().max()) for k in initial) > 0


def test_raft_under_trl_is_the_sft_gradient_with_sequence_mean(tmp_path):
    params = {"group_size": 4, "prompts_per_batch": 6, "max_new_tokens": 40, "aggregation": "sequence_mean"}
    policy, bridge, trainer, initial, capture = _run(tmp_path, "raft", params)
    assert trainer.loss_type == "grpo"
    batch = bridge.batches[0]
    assert batch.objective == "sft" and 0 < len(batch) < 24
    lab = _lab_grads(batch)
    ok, err = _close(capture.grads, lab)
    assert ok, f"TRL gradient differs from the lab's SFT gradient by {err:.2e}"
    # TRL's grpo loss averages over all 24 rows; without the bridge's rescale the step would shrink by kept / rows.
    assert not _close(capture.grads, [g * len(batch) / 24 for g in lab])[0]


def test_bridge_rejects_settings_that_would_change_the_strategy(tmp_path):
    tasks = load_prompts("arith-train:medium:8")
    bridge = StrategyBridge("grpo", {"group_size": 4, "prompts_per_batch": 2}, tasks=tasks, reward=training_reward("math"))
    for change, message in (
        ({"num_generations": 2, "per_device_train_batch_size": 8}, "num_generations"),
        ({"loss_type": "grpo"}, "loss_type"),
        ({"num_iterations": 2}, "on-policy"),
        ({"temperature": 0.7}, "temperature"),
    ):
        with pytest.raises(ConfigError, match=message):
            bridge.check(bridge.grpo_config(str(tmp_path), use_cpu=True, **change))
    tempered = StrategyBridge("grpo", {"group_size": 4, "prompts_per_batch": 2, "temperature": 0.7}, tasks=tasks,
                              reward=training_reward("math"))
    with pytest.raises(ConfigError, match="temperature 1"):  # TRL trains the tempered policy, the lab the untempered one
        tempered.check(tempered.grpo_config(str(tmp_path), use_cpu=True))
    with pytest.raises(ConfigError, match="generation"):
        StrategyBridge("grpo", tasks=tasks, reward=training_reward("math"), generation="sglang")
    with pytest.raises(ConfigError, match="empty"):
        StrategyBridge("grpo", tasks=[], reward=training_reward("math"))
    assert strategy_reward(["a", "b"], strategy_reward=[1.0, None]) == [1.0, None]


def test_samplescope_train_under_trl_uses_the_labs_optimiser_groups(tmp_path, capsys):
    """``samplescope train --trainer trl``: TRL's step runs the lab's optimiser (the output
    normalisation's gain at ``gain_learning_rate``, the rest at ``learning_rate``, no decay), so a
    recipe means the same under both trainers; the policy it saves loads as an ``hf:`` spec."""
    import json

    from app.cli import main

    code = main(["train", "--policy", "embedded:arith", "--strategy", "grpo", "--trainer", "trl",
                 "--set", "prompts_per_batch=4", "--set", "group_size=4", "--set", "max_new_tokens=40",
                 "--train-set", "learning_rate=1e-5", "--train-set", "gain_learning_rate=0.2",
                 "--train-set", "eval_every=0", "--budget", "updates=2", "--json", "--name", "trl-groups"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["trainer"] == "trl" and result["updates"] == 2
    assert result["learning_rates"] == [1e-5, 0.2]  # constant: no decay after two steps
    trained = load_policy(result["policy_spec"])
    start = load_policy("embedded:arith")
    gain_moves = [float((a - b).abs().max()) for a, b in zip(trained.logit_scale_parameters(), start.logit_scale_parameters(), strict=True)]
    gains = {id(p) for p in trained.logit_scale_parameters()}
    other_moves = [float((a - b).abs().max()) for a, b in zip(trained.model.parameters(), start.model.parameters(), strict=True)
                   if id(a) not in gains]
    # Adam's first steps move each weight by about its rate: the gain by ~0.2, nothing else by more than ~2e-5
    assert max(gain_moves) > 0.05, gain_moves
    assert max(other_moves) < 1e-4, max(other_moves)


def test_samplescope_train_under_trl_keeps_a_samples_budget_and_refuses_the_loops_budgets(tmp_path, capsys):
    """A samples budget caps what an over-sampling strategy draws under TRL (the run ends, like the
    lab loop, when the next batch no longer fits); tokens= and seconds= budgets are refused in one line."""
    import json

    from app.cli import main

    common = ["train", "--policy", "embedded:arith", "--strategy", "dynamic_sampling", "--trainer", "trl",
              "--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "max_new_tokens=24",
              "--train-set", "eval_every=0", "--json"]
    assert main([*common, "--budget", "samples=24", "--name", "trl-samples"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["samples"] <= 24, result  # max_steps alone (24 // 8 = 3 steps) would let it draw more
    assert result["updates"] <= 3 and result["status"] in ("ok", "budget")
    for budget in ("tokens=500", "seconds=60"):
        assert main([*common, "--budget", budget, "--name", "trl-refused"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "updates=N or samples=N" in err
