"""Fixtures for the diffusion tests: the toy mixture, tiny random pipelines, the embedded digits model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.models.gaussian_mixture import GaussianMixture, GaussianMixtureDiffusion
from engines.rewards.image import ImageReward
from tests.diffusion.tiny_parts import save_tiny_clip, save_tiny_stable_diffusion, save_tiny_unet_pipeline


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread():
    """These models are tiny: one thread is fastest, and far faster on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class CoordinateReward(ImageReward):
    """r(x) = x[0]: a linear, differentiable reward for the toy mixture (reads raw vectors)."""

    name = "x0"

    def score_tensor(self, task, images):  # noqa: ANN001, ANN201
        return images[:, 0]

    def score(self, task, candidates, *, usage=None):  # noqa: ANN001, ANN201
        return candidates[:, 0].tolist()

    def check_image_shape(self, shape) -> None:  # noqa: ANN001
        return None


@pytest.fixture(scope="session")
def mixture() -> GaussianMixture:
    return GaussianMixture(weights=(0.7, 0.3), means=((-2.0,), (2.0,)), stds=(0.5, 0.5))


@pytest.fixture(scope="session")
def toy_model(mixture: GaussianMixture) -> GaussianMixtureDiffusion:
    return GaussianMixtureDiffusion(mixture, default_steps=40)


@pytest.fixture()
def coordinate_reward() -> CoordinateReward:
    return CoordinateReward()


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_unet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_unet_pipeline(tmp_path_factory.mktemp("tiny-unet"))


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def digits_model():
    from engines.models import load_model

    return load_model("embedded:digits", device="cpu")


@pytest.fixture(scope="session")
def real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as [N, 1, 8, 8] tensors in [-1, 1], and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return images, torch.tensor(data.target)
