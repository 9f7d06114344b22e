"""FMTT's importance-weighted samples reach the reward-tilted density on the mixture toy.

Same toy, reward and bound as ``test_exactness.py`` (through ``test_psi_sampler.misfits``). The
toy's flow map integrates its exact probability-flow ODE (16 RK4 substeps here, to keep the
test short; the pushforward of N(0, 1) through it matches the mixture). Both weightings pass:
the paper's Jarzynski weights (∫λR dt, exact as the steps shrink; measured P(x > 0) = 0.717
at 100 steps against 0.760, inside the bound) and the discrete-time importance ratio (0.742).
Wrong variants fail: the Jarzynski weights with the denoiser's x̂0 in place of the flow map
(the cancellation of Proposition 2.2 needs a flow map: 0.61) and the unweighted search run read
as a sample (0.46).
"""

from __future__ import annotations

import pytest
import torch

from engines.errors import ConfigError
from engines.models.gaussian_mixture import GaussianMixtureDiffusion
from engines.rewards import build_reward
from engines.samplers.fmtt import FMTT
from engines.task import Task
from engines.trace import collect
from tests.diffusion.test_psi_sampler import misfits

N = 1000
LAM = 0.5


@pytest.fixture(scope="module")
def flow_model(mixture) -> GaussianMixtureDiffusion:  # noqa: ANN001
    model = GaussianMixtureDiffusion(mixture)
    model.flow_map_substeps = 16
    return model


def run(cls, model, reward, **params):  # noqa: ANN001, ANN003, ANN201
    sampler = cls(cls.Config(**({"particles": N, "lam": LAM, "steps": 100} | params)))
    trace = collect(sampler.run(Task(prompt=""), model, reward, rng=torch.Generator().manual_seed(0)))
    assert trace.done.status == "ok"
    return trace


class DenoiserLookAhead(FMTT):
    """The look-ahead read at Tweedie's x̂0(x_t) instead of the flow map's landing point."""

    def _look_ahead(self, ctx, x, alpha_bar):  # noqa: ANN001, ANN202
        model = ctx.model
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            eps = -((1 - alpha_bar) ** 0.5) * model.score(z, alpha_bar)
            x0 = (z - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5
            values = ctx.score_tensor(x0)
            (grad,) = torch.autograd.grad(values.sum(), z)
        return values.detach(), grad.detach()


@pytest.mark.parametrize("weights", ["jarzynski", "exact"])
def test_fmtt_weights_reach_the_tilted_density(flow_model, mixture, coordinate_reward, weights) -> None:  # noqa: ANN001
    trace = run(FMTT, flow_model, coordinate_reward, weights=weights)
    assert misfits(trace, mixture, LAM, particles=N) == []
    steps, flow = 100, flow_model.flow_map_nfe
    assert trace.done.cost["backward_passes"] == N * steps and trace.done.cost["backward_nfe"] == N * steps * flow
    assert trace.done.cost["nfe"] == N * (steps + steps * flow)  # a step and a look-ahead per step


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "weights"), [(DenoiserLookAhead, "jarzynski"), (FMTT, "none")], ids=["denoiser", "unweighted"])
def test_wrong_fmtt_variants_fail_the_check(flow_model, mixture, coordinate_reward, cls, weights) -> None:  # noqa: ANN001
    trace = run(cls, flow_model, coordinate_reward, weights=weights)
    assert misfits(trace, mixture, LAM, particles=N), f"{cls.__name__} with {weights} weights passed"


@pytest.mark.parametrize("weights", ["jarzynski", "exact", "none"])
def test_the_pick_is_the_highest_reward_whatever_the_weights(flow_model, coordinate_reward, weights) -> None:  # noqa: ANN001
    """As the docstring and the weights' help say: the weights are reported, the pick is the best reward."""
    trace = run(FMTT, flow_model, coordinate_reward, weights=weights, particles=8, steps=5)
    finals = [i for i, node in trace.nodes.items() if node.final]
    (pick,) = trace.done.picks
    assert trace.reward(pick) == max(trace.reward(i) for i in finals)


def test_fmtt_refuses_a_model_without_a_flow_map(digits_model) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="needs a model with a flow map") as info:
        FMTT().run(Task(prompt=""), digits_model, build_reward("digit:3"), rng=torch.Generator())
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="eta"):
        FMTT.Config(eta=0.0)
