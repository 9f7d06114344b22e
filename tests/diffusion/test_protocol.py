"""The diffusion-model protocol, checked the same way for every implementation.

One shared test class (as diffusers' ``SchedulerCommonTest``), subclassed for
the Gaussian-mixture toy, the embedded digits model, a tiny random UNet2DModel
pipeline and a tiny random Stable Diffusion pipeline.
"""

from __future__ import annotations

import math

import pytest
import torch

from engines.models import load_model
from engines.models.diffusion import DiffusionModel, transition_log_prob
from engines.task import Task
from engines.trace import Cost

TASK = Task(prompt="a cat")


class DiffusionProtocolTests:
    steps = 8

    @pytest.fixture()
    def model(self) -> DiffusionModel:  # every subclass overrides this fixture with its own model
        pytest.fail(f"{type(self).__name__} must override the `model` fixture")

    def test_schedule_runs_from_noise_to_data(self, model: DiffusionModel) -> None:
        sched = model.schedule(self.steps)
        assert len(sched) == self.steps
        assert list(sched.timesteps) == sorted(sched.timesteps, reverse=True)
        for a, a_prev in zip(sched.alpha_bars, sched.alpha_bars_prev, strict=True):
            assert 0 < a < a_prev <= 1
        assert sched.std(self.steps - 1, 1.0) == pytest.approx(0.0) or sched.alpha_bars_prev[-1] < 1

    def test_initial_noise_is_seeded(self, model: DiffusionModel) -> None:
        a = model.initial_noise(3, torch.Generator().manual_seed(7))
        b = model.initial_noise(3, torch.Generator().manual_seed(7))
        c = model.initial_noise(3, torch.Generator().manual_seed(8))
        assert a.shape == (3, *model.sample_shape)
        assert torch.equal(a, b) and not torch.equal(a, c)

    def test_predict_meters_nfe_and_is_consistent(self, model: DiffusionModel) -> None:
        sched = model.schedule(self.steps)
        x = model.initial_noise(4, torch.Generator().manual_seed(0))
        usage = Cost()
        with torch.no_grad():
            pred = model.predict(x, 2, sched, TASK, usage=usage)
        assert usage.nfe == 4 * model.nfe_for(TASK)
        assert pred.eps.shape == pred.x0.shape == x.shape
        a = sched.alpha_bars[2]
        # x_t = √ᾱ·x̂0 + √(1-ᾱ)·ε̂ holds for the returned pair (clipped or not)
        rebuilt = math.sqrt(a) * pred.x0 + math.sqrt(1 - a) * pred.eps
        torch.testing.assert_close(rebuilt, x, atol=1e-4, rtol=1e-4)

    def test_step_is_the_gaussian_it_reports(self, model: DiffusionModel) -> None:
        sched = model.schedule(self.steps)
        x = model.initial_noise(2, torch.Generator().manual_seed(1))
        with torch.no_grad():
            pred = model.predict(x, 1, sched, TASK)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float32).to(x)
        tr = model.step(x, 1, sched, pred, eta=1.0, noise=noise)
        assert tr.std == pytest.approx(sched.std(1, 1.0)) and tr.std > 0
        torch.testing.assert_close(tr.sample, tr.mean + tr.std * noise)
        expected = torch.distributions.Normal(tr.mean.double(), tr.std).log_prob(tr.sample.double()).flatten(1).sum(1)
        torch.testing.assert_close(transition_log_prob(tr.sample.double(), tr.mean.double(), tr.std), expected)
        deterministic = model.step(x, 1, sched, pred, eta=0.0)
        assert deterministic.std == 0 and torch.equal(deterministic.sample, deterministic.mean)
        with pytest.raises(ValueError):
            transition_log_prob(deterministic.sample, deterministic.mean, 0.0)

    def test_chain_is_deterministic_per_seed_and_decodes(self, model: DiffusionModel) -> None:
        def run(seed: int) -> torch.Tensor:
            rng = torch.Generator().manual_seed(seed)
            sched = model.schedule(self.steps)
            x = model.initial_noise(2, rng)
            with torch.no_grad():
                for i in range(len(sched)):
                    x = model.step(x, i, sched, model.predict(x, i, sched, TASK), eta=1.0, rng=rng).sample
                return model.decode(x)

        first, again, other = run(0), run(0), run(1)
        assert torch.equal(first, again) and not torch.equal(first, other)
        assert first.shape == (2, *model.image_shape)
        uris = model.to_data_uris(first)
        assert len(uris) == 2
        if len(model.image_shape) == 3:
            assert first.min() >= -1 and first.max() <= 1
            assert all(u.startswith("data:image/png;base64,") for u in uris)
            preview = model.preview(torch.zeros((1, *model.sample_shape)))
            assert preview.shape[:2] == (1, model.image_shape[0])
            assert model.to_data_uris(preview)[0].startswith("data:image/png;base64,")


class UNetSchedulerAgreement:
    """For diffusers-backed models: the step equals ``DDIMScheduler.step`` (clipped ε re-derived)."""

    def test_step_matches_diffusers_ddim(self, model: DiffusionModel) -> None:
        from diffusers import DDIMScheduler

        reference = DDIMScheduler.from_config(model.scheduler.config)
        reference.set_timesteps(self.steps)
        sched = model.schedule(self.steps)
        x = model.initial_noise(2, torch.Generator().manual_seed(3))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(x)
        for i in (0, self.steps // 2, self.steps - 1):
            t = sched.timesteps[i]
            with torch.no_grad():
                out = model._model_output(x, t, TASK)
                pred = model.prediction_from_output(x, out, sched.alpha_bars[i])
            for eta in (0.0, 1.0):
                ours = model.step(x, i, sched, pred, eta=eta, noise=noise).sample
                theirs = reference.step(
                    out, t, x, eta=eta, use_clipped_model_output=True, variance_noise=noise if eta else None
                ).prev_sample
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


class TestGaussianMixtureProtocol(DiffusionProtocolTests):
    @pytest.fixture()
    def model(self, toy_model) -> DiffusionModel:  # noqa: ANN001
        return toy_model

    def test_exact_score_matches_autograd(self, toy_model) -> None:  # noqa: ANN001
        x = torch.linspace(-4, 4, 9, dtype=torch.float64).unsqueeze(1).requires_grad_(True)
        a = 0.3
        mix = toy_model.mixture
        density = sum(
            w * torch.exp(-((x - math.sqrt(a) * m[0]) ** 2) / (2 * (a * s**2 + 1 - a))) / math.sqrt(a * s**2 + 1 - a)
            for w, m, s in zip(mix.weights, mix.means, mix.stds, strict=True)
        )
        (grad,) = torch.autograd.grad(torch.log(density).sum(), x)
        torch.testing.assert_close(toy_model.score(x.detach(), a), grad)

    def test_unguided_chain_samples_the_mixture(self, toy_model) -> None:  # noqa: ANN001
        n = 20000
        rng = torch.Generator().manual_seed(0)
        sched = toy_model.schedule(100)
        x = toy_model.initial_noise(n, rng)
        for i in range(len(sched)):
            x = toy_model.step(x, i, sched, toy_model.predict(x, i, sched), eta=1.0, rng=rng).sample
        p = toy_model.mixture.mass_above(0.0)
        assert abs(float((x[:, 0] > 0).double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)


class TestDigitsProtocol(DiffusionProtocolTests, UNetSchedulerAgreement):
    @pytest.fixture()
    def model(self, digits_model) -> DiffusionModel:  # noqa: ANN001
        return digits_model


class TestTinyUNetPipelineProtocol(DiffusionProtocolTests, UNetSchedulerAgreement):
    @pytest.fixture()
    def model(self, tiny_unet_folder) -> DiffusionModel:  # noqa: ANN001
        return load_model(f"diffusers:{tiny_unet_folder}", device="cpu")


class TestTinyStableDiffusionProtocol(DiffusionProtocolTests, UNetSchedulerAgreement):
    @pytest.fixture()
    def model(self, tiny_sd_folder) -> DiffusionModel:  # noqa: ANN001
        return load_model(f"diffusers:{tiny_sd_folder}", device="cpu")
