"""Image rewards: digit probability, ink, symmetry, CLIP; specs, gradients and errors."""

from __future__ import annotations

import pytest
import torch

from engines.errors import ConfigError, ModelLoadError
from engines.rewards import REWARDS, build_reward
from engines.rewards.image import ClipReward, DigitReward, InkReward, SymmetryReward
from engines.task import Task

TASK = Task(prompt="a red square")


def test_image_rewards_are_registered_and_say_they_are_differentiable() -> None:
    for name in ("digit", "ink", "symmetry", "clip"):
        factory = REWARDS.get(name)
        assert factory.modality == "image" and factory.kind == "outcome"
    for reward in (build_reward("digit:3"), build_reward("ink"), build_reward("symmetry:v")):
        assert reward.modality == "image" and reward.differentiable


def test_digit_reward_reads_real_digits(real_digits) -> None:  # noqa: ANN001
    images, labels = real_digits
    probs = torch.stack([torch.tensor(DigitReward(k).score(TASK, images)) for k in range(10)], dim=1)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(images)), atol=1e-4, rtol=0)
    # the classifier saw 75% of these digits; it must read nearly all of them
    assert (probs.argmax(1) == labels).float().mean() > 0.97


def test_digit_reward_has_gradients_and_checks_shapes() -> None:
    reward = build_reward("digit:7")
    images = torch.zeros(2, 1, 8, 8, requires_grad=True)
    values = reward.score_tensor(TASK, images)
    (grad,) = torch.autograd.grad(values.sum(), images)
    assert values.shape == (2,) and grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="8x8"):
        reward.score(TASK, torch.zeros(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="8x8"):
        reward.check_image_shape((3, 16, 16))
    for bad in ("digit:11", "digit:x"):
        with pytest.raises(ConfigError):
            build_reward(bad)
    with pytest.raises(ConfigError, match="argument"):
        build_reward("digit")


def test_ink_and_symmetry_values() -> None:
    blank = -torch.ones(1, 1, 8, 8)
    half = blank.clone()
    half[..., :4] = 1.0  # left half inked
    assert InkReward().score(TASK, torch.cat([blank, half])) == pytest.approx([0.0, 0.5])
    assert InkReward(0.25).score(TASK, half) == pytest.approx([-0.25])
    assert SymmetryReward().score(TASK, torch.cat([blank, half])) == pytest.approx([1.0, 0.0])
    assert SymmetryReward("v").score(TASK, half) == pytest.approx([1.0])
    rgb = torch.rand(2, 3, 16, 16, requires_grad=True) * 2 - 1
    (grad,) = torch.autograd.grad(SymmetryReward().score_tensor(TASK, rgb).sum(), rgb)
    assert grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        build_reward("ink:2")
    with pytest.raises(ConfigError):
        build_reward("symmetry:diagonal")
    with pytest.raises(ConfigError, match="B, C, H, W"):
        InkReward().score(TASK, torch.zeros(8, 8))


def test_weighted_sums_of_image_rewards() -> None:
    reward = build_reward("0.5*ink + 0.5*symmetry")
    half = -torch.ones(1, 1, 8, 8)
    half[..., :4] = 1.0
    assert reward.modality == "image"
    assert reward.score(TASK, half) == pytest.approx([0.25])


def test_clip_reward_from_a_tiny_random_clip(tiny_clip_folder) -> None:  # noqa: ANN001
    reward = build_reward(f"clip:{tiny_clip_folder}")
    assert isinstance(reward, ClipReward) and reward.differentiable
    assert build_reward(f"clip:{tiny_clip_folder}") is reward  # loaded once
    images = (torch.rand(3, 3, 24, 20) * 2 - 1).requires_grad_(True)
    values = reward.score_tensor(TASK, images)
    assert values.shape == (3,) and torch.all(values.abs() <= 1 + 1e-5)
    (grad,) = torch.autograd.grad(values.sum(), images)
    assert grad.abs().sum() > 0
    assert reward.score(TASK, images.detach()) == pytest.approx(values.tolist(), abs=1e-5)
    assert reward.preprocess(images).shape == (3, 3, 16, 16)
    other = reward.score(Task(prompt="a blue circle"), images.detach())
    assert other != pytest.approx(values.tolist(), abs=1e-6)  # the prompt matters
    grey = reward.score(TASK, torch.zeros(1, 1, 16, 16))
    assert len(grey) == 1
    with pytest.raises(ValueError, match="prompt"):
        reward.check_task(Task(prompt="  "))


def test_clip_reward_errors_are_one_line(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ModelLoadError, match="not a folder"):
        build_reward(f"clip:{tmp_path / 'missing'}")
    with pytest.raises(ModelLoadError, match="cannot load a CLIPModel") as info:
        build_reward(f"clip:{tmp_path}")
    assert "\n" not in str(info.value)
