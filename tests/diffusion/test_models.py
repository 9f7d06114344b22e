"""Loading diffusion models: the embedded digits model, diffusers folders, Stable Diffusion specifics."""

from __future__ import annotations

import json

import pytest
import torch

from engines.errors import ModelLoadError
from engines.models import list_models, load_model
from engines.models.digits import load_heldout_check
from engines.models.stable_diffusion import StableDiffusionModel
from engines.task import Task
from engines.trace import Cost


def test_embedded_digits_is_listed_and_loads_once(digits_model) -> None:  # noqa: ANN001
    rows = {row["spec"]: row for row in list_models()}
    assert rows["embedded:digits"]["modality"] == "image"
    assert load_model("embedded:digits", device="cpu") is digits_model
    assert digits_model.sample_shape == digits_model.image_shape == (1, 8, 8)
    assert digits_model.clip_sample and digits_model.default_steps == len(digits_model.schedule())


def test_digits_samples_are_mostly_digits(digits_model) -> None:  # noqa: ANN001
    """The model card's claim, re-measured on 64 fresh samples."""
    from engines.models.digits import load_classifier

    rng = torch.Generator().manual_seed(123)
    sched = digits_model.schedule()
    x = digits_model.initial_noise(64, rng)
    with torch.no_grad():
        for i in range(len(sched)):
            x = digits_model.step(x, i, sched, digits_model.predict(x, i, sched), eta=1.0, rng=rng).sample
        images = digits_model.decode(x)
        confidence = load_classifier()(images).softmax(-1).max(-1).values
    assert (confidence > 0.9).float().mean() > 0.7
    recognised = load_heldout_check().recognise(images)
    assert sum(r is not None for r in recognised) / len(recognised) > 0.7


def test_heldout_check_rejects_noise_and_accepts_real_digits(real_digits) -> None:  # noqa: ANN001
    images, labels = real_digits
    check = load_heldout_check()
    names = check.recognise(images[:300])
    assert sum(n == int(lbl) for n, lbl in zip(names, labels[:300], strict=True)) / 300 > 0.9
    noise = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert all(n is None for n in check.recognise(noise))
    with pytest.raises(ValueError, match="8x8"):
        check.recognise(torch.zeros(1, 3, 8, 8))


def test_stable_diffusion_classifier_free_guidance(tiny_sd_folder) -> None:  # noqa: ANN001
    model = load_model(f"diffusers:{tiny_sd_folder}", device="cpu")
    assert isinstance(model, StableDiffusionModel)
    assert model.sample_shape == (4, 8, 8) and model.image_shape == (3, 16, 16)
    sched = model.schedule(4)
    x = model.initial_noise(2, torch.Generator().manual_seed(0))
    task = Task(prompt="a cat")
    usage = Cost()
    with torch.no_grad():
        guided = model.predict(x, 1, sched, task, usage=usage)
        assert usage.nfe == 4  # two UNet evaluations per particle
        t = sched.timesteps[1]
        cond = model._model_output(x, t, Task(prompt="a cat", meta={"guidance_scale": 1.0}))
        uncond = model._model_output(x, t, Task(prompt="a cat", meta={"guidance_scale": 0.0}))
        torch.testing.assert_close(guided.eps, uncond + 7.5 * (cond - uncond), atol=1e-5, rtol=1e-4)
        usage = Cost()
        model.predict(x, 1, sched, Task(prompt="a cat", meta={"guidance_scale": 1.0}), usage=usage)
        assert usage.nfe == 2
        other = model._model_output(x, t, Task(prompt="a dog", meta={"guidance_scale": 1.0}))
        assert not torch.allclose(cond, other)  # the prompt conditions the UNet
    assert len(model._embeddings) >= 2  # embeddings are cached per prompt
    with pytest.raises(ValueError):
        model.guidance_for(Task(prompt="x", meta={"guidance_scale": "lots"}))


def test_diffusers_scheme_errors(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ModelLoadError, match="hub") as info:
        load_model("diffusers:nobody-here/not-a-pipeline-xyz")
    assert "diffusers:/path/to/folder" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_model(f"diffusers:{tmp_path}")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="FluxPipeline"):
        load_model(f"diffusers:{tmp_path}")
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline folder"):
        load_model(f"diffusers:{tmp_path / 'missing' / 'deeper' / 'path'}")


def test_samplers_run_on_stable_diffusion(tiny_sd_folder, tiny_clip_folder) -> None:  # noqa: ANN001
    from engines.rewards import build_reward
    from engines.samplers import build_sampler
    from engines.trace import collect

    model = load_model(f"diffusers:{tiny_sd_folder}", device="cpu")
    reward = build_reward(f"clip:{tiny_clip_folder}")
    task = Task(prompt="a red square")
    for name, params in (
        ("fk_steering", {"particles": 3, "steps": 3, "resample_every": 1, "guidance": 1.0}),
        ("svdd", {"candidates": 2, "steps": 3}),
        ("reno", {"iterations": 2, "steps": 2}),
    ):
        trace = collect(build_sampler(name, params).run(task, model, reward, rng=torch.Generator().manual_seed(0)))
        assert trace.done.status == "ok", name
        final = trace.nodes[trace.selected[0]]
        assert final.final and final.image.startswith("data:image/png;base64,")
    # two UNet evaluations per particle and step with guidance
    assert trace.done.cost["nfe"] == 2 * 2 * 2


def test_digits_task_set_names_model_and_reward() -> None:
    from engines.tasks import TASK_SETS, get_task

    task = get_task("digits:3")
    assert task.meta == {"reward": "digit:3", "modality": "image"}
    assert TASK_SETS.get("digits").model == "embedded:digits"
    assert len(TASK_SETS.get("digits").tasks()) == 10
