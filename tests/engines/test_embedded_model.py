"""The real embedded SmolLM2-135M-Instruct: loads from the package, offline, and behaves."""

from __future__ import annotations

import pytest
import torch

from engines.models.base import SamplingParams
from engines.rewards import build_reward
from engines.samplers import build_sampler
from engines.task import Task
from engines.trace import collect

pytestmark = pytest.mark.model


def test_loads_offline_from_the_package(smollm2):
    info = smollm2.describe()
    assert info["parameters"] > 130_000_000 and info["chat_template"]


def test_a_chat_prompt_gets_a_sensible_reply(smollm2):
    ids = smollm2.encode_task(Task(prompt="What is the capital of France? Answer in one sentence."))
    reply = smollm2.sample([ids], SamplingParams(max_new_tokens=24, temperature=0))[0][0]
    assert "Paris" in reply.text


def test_best_of_8_with_sentiment_picks_the_maximum(smollm2):
    reward = build_reward("sentiment")
    sampler = build_sampler("best_of_n", {"n": 8, "max_new_tokens": 24})
    trace = collect(sampler.run(Task(prompt="Describe a sunny day."), smollm2, reward, rng=torch.Generator().manual_seed(0)))
    rewards = {i: trace.reward(i) for i in trace.candidates}
    assert len(rewards) == 8
    assert rewards[trace.done.picks[0]] == max(rewards.values())
    assert trace.done.cost["prefill_tokens"] < 2 * len(smollm2.encode_task(Task(prompt="Describe a sunny day.")))
