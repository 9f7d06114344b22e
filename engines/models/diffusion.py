"""The step-level diffusion protocol every diffusion sampler talks to.

A :class:`DiffusionModel` exposes the reverse chain one step at a time, so that
samplers (best-of-N, Feynman-Kac steering, SVDD, tree search, noise
optimisation) can weigh, resample, branch or differentiate at every step:

- :meth:`~DiffusionModel.schedule` -- the K inference timesteps and their ᾱ;
- :meth:`~DiffusionModel.initial_noise` -- x_T for a batch of particles, drawn
  from a seeded CPU ``torch.Generator`` (the same seed gives the same noise on
  every device);
- :meth:`~DiffusionModel.predict` -- one network evaluation per particle: the
  noise estimate ε̂ and the predicted clean sample x̂0 (Tweedie's estimate),
  metered as ``nfe`` into a ``usage`` :class:`Cost`;
- :meth:`~DiffusionModel.step` -- x_{t-1} from x_t and a prediction (no network
  call), with the Gaussian transition it sampled from, and
  :func:`transition_log_prob` (or :meth:`Transition.log_prob`) for
  log N(x_{t-1}; μ, σ²I). η is one number for every step or a per-step schedule
  (one value per inference step, :data:`Eta`); a step with σ = 0 (η = 0, or the
  last step onto ᾱ = 1) is deterministic and has no transition density;
- :meth:`~DiffusionModel.decode` -- x0 (pixels or latents) to images in
  [-1, 1] (``decoder_passes`` says what one image costs: 0 in pixel space,
  one VAE pass for latent models; samplers meter it as ``decodes``); :meth:`~DiffusionModel.preview` a cheap look at an intermediate x̂0;
  :func:`images_to_data_uris` PNG data URIs for trace nodes, and
  :func:`image_from_data_uri` the tensor back from one.

Implementations: :class:`UNetDiffusion` (a diffusers ``UNet2DModel`` and the
scheduler config it was trained with; the embedded ``embedded:digits`` model is
one), ``engines.models.stable_diffusion`` (text-conditioned latent diffusion
with classifier-free guidance) and ``engines.models.gaussian_mixture`` (a toy
with an analytic score, for exactness tests).

The step is the generalised DDIM update (Song et al., 2021, eqs. 12 and 16),
written out here rather than delegated to ``scheduler.step`` because samplers
need the transition's mean and σ, not only its sample. With η = 1 it is the
DDPM ancestral step with the posterior variance β̃ (Ho et al., 2020); with
η = 0 it is deterministic DDIM. When the model clips x̂0, ε̂ is re-derived from
the clipped x̂0 (diffusers' ``use_clipped_model_output=True``), so that the
η = 1 step is exactly DDPM's posterior mean.

| code | paper (DDIM) | meaning |
|---|---|---|
| ``alpha_bar`` | α_t (ᾱ_t in DDPM) | cumulative signal level at timestep t |
| ``alpha_bar_prev`` | α_{t-1} | the level after the step |
| ``eps`` | ε_θ(x_t, t) | the noise estimate |
| ``x0`` | f_θ(x_t, t) | the predicted clean sample |
| ``std`` | σ_t(η) = η·√((1-α_{t-1})/(1-α_t))·√(1-α_t/α_{t-1}) | the step's noise scale |
| ``mean`` | √α_{t-1}·x̂0 + √(1-α_{t-1}-σ_t²)·ε̂ | the step's mean |
"""

from __future__ import annotations

import base64
import io
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from engines.errors import ConfigError, ModelLoadError
from engines.task import Task
from engines.trace import Cost

#: the step noise: one η for every step, or one per inference step (noisiest first)
Eta = float | Sequence[float]


def parse_etas(text: str, name: str = "eta_steps") -> tuple[float, ...]:
    """A per-step η schedule written as comma-separated numbers, each in [0, 1] (η > 1 has no DDIM
    step: σ would pass the DDPM posterior std); ``name`` is the field named in the one-line errors."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if any(not 0 <= v <= 1 for v in values):  # also refuses NaN
        raise ConfigError(f"every η in {name} must be between 0 and 1")
    return values


@dataclass(frozen=True)
class Schedule:
    """The K inference timesteps, noisiest first, and the ᾱ before and after each step."""

    timesteps: tuple[int, ...]
    alpha_bars: tuple[float, ...]
    alpha_bars_prev: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.timesteps) == len(self.alpha_bars) == len(self.alpha_bars_prev)) or not self.timesteps:
            raise ValueError("a schedule needs one timestep, ᾱ and previous ᾱ per step")

    def __len__(self) -> int:
        return len(self.timesteps)

    def eta_at(self, step: int, eta: Eta) -> float:
        """η of step ``step``: the number itself, or entry ``step`` of a per-step schedule."""
        if isinstance(eta, (int, float)):
            value = float(eta)
        else:
            if len(eta) != len(self):
                raise ValueError(f"a per-step η needs one value per step ({len(self)}), got {len(eta)}")
            value = float(eta[step])
        if not value >= 0:  # also refuses NaN
            raise ValueError(f"η must be >= 0, got {value}")
        return value

    def std(self, step: int, eta: Eta) -> float:
        """σ_t(η) of step ``step`` (0 when the step is deterministic)."""
        eta = self.eta_at(step, eta)
        a, a_prev = self.alpha_bars[step], self.alpha_bars_prev[step]
        if eta == 0 or a_prev >= 1.0:
            # ᾱ_prev = 1 (the last step of a schedule ending at t = 0) has σ = 0: x_{t-1} = x̂0.
            return 0.0
        return eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(max(1 - a / a_prev, 0.0))

    def stochastic(self, eta: Eta) -> tuple[bool, ...]:
        """Which steps draw noise (σ > 0) under ``eta``: the only ones with a transition log-prob."""
        return tuple(self.std(i, eta) > 0 for i in range(len(self)))


@dataclass(frozen=True)
class Prediction:
    """One network evaluation: ε̂ and x̂0, consistent with each other (x̂0 clipped when the model clips)."""

    eps: torch.Tensor
    x0: torch.Tensor


@dataclass(frozen=True)
class Transition:
    """One reverse step: x_{t-1} = mean + std·z."""

    sample: torch.Tensor
    mean: torch.Tensor
    std: float

    @property
    def stochastic(self) -> bool:
        return self.std > 0

    def log_prob(self, x_prev: torch.Tensor | None = None) -> torch.Tensor:
        """log N(x_prev; mean, σ²I) per particle (of this step's own sample when ``x_prev`` is None);
        differentiable in ``mean``. A deterministic step has no density: ValueError."""
        return transition_log_prob(self.sample if x_prev is None else x_prev, self.mean, self.std)


def transition_log_prob(x_prev: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x_prev; mean, std²·I), one value per particle (summed over all other dims)."""
    if std <= 0:
        raise ValueError("a deterministic step (σ = 0) has no transition density")
    d = x_prev[0].numel()
    sq = ((x_prev - mean) ** 2).flatten(1).sum(dim=1)
    return -0.5 * sq / std**2 - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


class DiffusionModel(ABC):
    """A diffusion model as samplers see it. Subclasses implement :meth:`_model_output`
    (and :meth:`schedule` when they have no diffusers scheduler)."""

    modality: ClassVar[str] = "image"
    name: str = "diffusion"
    #: shape of one particle x_t (C, H, W): latents for latent models
    sample_shape: tuple[int, ...] = ()
    #: shape of one decoded image (C, H, W)
    image_shape: tuple[int, ...] = ()
    default_steps: int = 50
    #: what the network outputs: "epsilon", "v_prediction" or "sample"
    prediction_type: str = "epsilon"
    clip_sample: bool = False
    clip_range: float = 1.0
    #: decoder network passes per decoded image: 0 where decoding is a clamp (pixel space),
    #: 1 for latent models with a VAE; samplers meter them as ``decodes``
    decoder_passes: int = 0
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    # -- schedule and noise ----------------------------------------------------------

    @abstractmethod
    def schedule(self, steps: int | None = None) -> Schedule:
        """The inference schedule with ``steps`` steps (the model's default when None)."""

    def initial_noise(self, n: int, rng: torch.Generator | None = None) -> torch.Tensor:
        """x_T ~ N(0, I) for ``n`` particles, drawn on the CPU so a seed means the same noise everywhere."""
        if n < 1:
            raise ConfigError(f"need at least one particle, got {n}")
        noise = torch.randn((n, *self.sample_shape), generator=rng, dtype=torch.float32)
        return noise.to(self.device, self.dtype)

    def randn_like(self, x: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(x.shape, generator=rng, dtype=torch.float32).to(x.device, x.dtype)

    # -- the network -------------------------------------------------------------------

    @property
    def nfe_per_sample(self) -> int:
        """Network evaluations one :meth:`predict` costs per particle (2 with classifier-free guidance)."""
        return 1

    def nfe_for(self, task: Task | None) -> int:
        """Network evaluations per particle per :meth:`predict` for this task."""
        return self.nfe_per_sample

    @abstractmethod
    def _model_output(self, x: torch.Tensor, t: int, task: Task | None) -> torch.Tensor:
        """The raw network output at timestep ``t`` (ε, v or x0 by ``prediction_type``)."""

    def predict(
        self,
        x: torch.Tensor,
        step: int,
        schedule: Schedule,
        task: Task | None = None,
        *,
        usage: Cost | None = None,
    ) -> Prediction:
        """ε̂ and x̂0 for a batch at inference step ``step`` (one network evaluation per particle)."""
        t = schedule.timesteps[step]
        out = self._model_output(x, t, task)
        if usage is not None:
            usage.add(nfe=x.shape[0] * self.nfe_for(task), model_calls=1)
        return self.prediction_from_output(x, out, schedule.alpha_bars[step])

    def prediction_from_output(self, x: torch.Tensor, out: torch.Tensor, alpha_bar: float) -> Prediction:
        a = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        elif self.prediction_type == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
            eps = a.sqrt() * out + (1 - a).sqrt() * x
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        else:
            raise ModelLoadError(f"unknown prediction_type {self.prediction_type!r}")
        if self.clip_sample:
            return self.prediction_from_x0(x, x0, alpha_bar)
        return Prediction(eps=eps, x0=x0)

    def prediction_from_x0(self, x: torch.Tensor, x0: torch.Tensor, alpha_bar: float) -> Prediction:
        """The prediction whose x̂0 is ``x0`` (clipped when the model clips), ε̂ re-derived from it."""
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        a = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return Prediction(eps=eps, x0=x0)

    # -- the step (no network call) ------------------------------------------------------

    def step(
        self,
        x: torch.Tensor,
        step: int,
        schedule: Schedule,
        pred: Prediction,
        *,
        eta: Eta = 1.0,
        rng: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> Transition:
        """x_{t-1} ~ N(mean, σ²I) by the generalised DDIM update (see the module table);
        ``eta`` is one η or a per-step schedule (:meth:`Schedule.eta_at`)."""
        if not 0 <= step < len(schedule):
            raise ValueError(f"step {step} is outside a {len(schedule)}-step schedule")
        a_prev = schedule.alpha_bars_prev[step]
        std = schedule.std(step, eta)
        direction = math.sqrt(max(1 - a_prev - std**2, 0.0))
        mean = math.sqrt(a_prev) * pred.x0 + direction * pred.eps
        if std == 0:
            return Transition(sample=mean, mean=mean, std=0.0)
        if noise is None:
            noise = self.randn_like(mean, rng)
        return Transition(sample=mean + std * noise, mean=mean, std=std)

    # -- images ------------------------------------------------------------------------

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], shape [B, *image_shape]."""
        return x0.clamp(-1, 1)

    def preview(self, x0: torch.Tensor) -> torch.Tensor:
        """A cheap image of an intermediate x̂0 (latent models approximate the decoder)."""
        return self.decode(x0)

    @property
    def preview_decoder_passes(self) -> int:
        """Decoder passes one :meth:`preview` costs per image (as :meth:`decode` unless overridden)."""
        return self.decoder_passes

    def to_data_uris(self, images: torch.Tensor) -> list[str | None]:
        return images_to_data_uris(images)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modality": self.modality,
            "sample_shape": list(self.sample_shape),
            "image_shape": list(self.image_shape),
            "default_steps": self.default_steps,
        }


def images_to_data_uris(images: torch.Tensor, min_size: int = 0) -> list[str | None]:
    """PNG ``data:`` URIs of a [B, C, H, W] batch in [-1, 1] (C = 1 grey, C = 3 RGB)."""
    from PIL import Image

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        return [None] * int(images.shape[0])
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    out: list[str | None] = []
    for img in pixels:
        array = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(array, mode="L" if img.shape[0] == 1 else "RGB")
        if min_size and min(pil.size) < min_size:
            scale = math.ceil(min_size / min(pil.size))
            pil = pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG", optimize=False)
        out.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


PNG_URI_PREFIX = "data:image/png;base64,"


def image_from_data_uri(uri: str) -> torch.Tensor:
    """The inverse of :func:`images_to_data_uris`: a PNG data URI as a [C, H, W] tensor in [-1, 1].

    Grey PNGs (modes L, LA, 1) give C = 1 and colour ones C = 3 (alpha dropped). A palette
    PNG (mode P) stores indices into its palette, not intensities: its pixels are read
    through the palette, and it gives C = 1 when every pixel's colour is grey, else C = 3.
    Anything that is not a PNG data URI is one :class:`ConfigError` line.
    """
    import binascii

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if not isinstance(uri, str) or not uri.startswith(PNG_URI_PREFIX):
        raise ConfigError("the image is not a PNG data URI")
    try:
        picture = Image.open(io.BytesIO(base64.b64decode(uri[len(PNG_URI_PREFIX):], validate=True)))
        picture.load()
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError):
        raise ConfigError("the image's PNG data URI does not decode to a PNG") from None
    if picture.mode == "P":
        colours = np.asarray(picture.convert("RGB"), dtype=np.float32)
        grey = bool((colours[..., 0] == colours[..., 1]).all() and (colours[..., 1] == colours[..., 2]).all())
        pixels = colours[..., 0] if grey else colours
    else:
        pixels = np.asarray(picture.convert("L" if picture.mode in ("L", "LA", "1") else "RGB"), dtype=np.float32)
    tensor = torch.from_numpy(pixels.copy())
    tensor = tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)
    return tensor / 127.5 - 1.0


# ---------------------------------------------------------------------------
# diffusers schedulers and pixel-space UNets


def schedule_from_scheduler(scheduler: Any, steps: int) -> Schedule:
    """A :class:`Schedule` from a diffusers scheduler (DDIM-style timesteps and ᾱ)."""
    total = int(scheduler.config.num_train_timesteps)
    if not 1 <= steps <= total:
        raise ConfigError(f"steps must be between 1 and {total}, got {steps}")
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    alphas = scheduler.alphas_cumprod.double()
    final = float(getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0)))
    alpha_bars = tuple(float(alphas[t]) for t in timesteps)
    prev = tuple(float(alphas[t]) for t in timesteps[1:]) + (final,)
    return Schedule(tuple(timesteps), alpha_bars, prev)


def ddim_scheduler_from_config(config: dict[str, Any]) -> Any:
    """A DDIM scheduler with the training noise schedule of any diffusers scheduler config."""
    from diffusers import DDIMScheduler

    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return DDIMScheduler.from_config(config)


class UNetDiffusion(DiffusionModel):
    """An unconditional pixel-space diffusion model: a diffusers ``UNet2DModel`` and its noise schedule."""

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        *,
        name: str = "unet",
        default_steps: int = 50,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        unet = unet.to(device) if unet.dtype == dtype else unet.to(device, dtype)
        self.unet = unet.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.name = name
        self.default_steps = default_steps
        self.device = torch.device(device)
        self.dtype = dtype
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (int(unet.config.in_channels), int(h), int(w))
        self.image_shape = self.sample_shape
        self.prediction_type = scheduler.config.prediction_type
        self.clip_sample = bool(scheduler.config.clip_sample)
        self.clip_range = float(getattr(scheduler.config, "clip_sample_range", 1.0))
        self._schedules: dict[int, Schedule] = {}

    def schedule(self, steps: int | None = None) -> Schedule:
        steps = steps or self.default_steps
        if steps not in self._schedules:
            self._schedules[steps] = schedule_from_scheduler(self.scheduler, steps)
        return self._schedules[steps]

    def _model_output(self, x: torch.Tensor, t: int, task: Task | None) -> torch.Tensor:
        timestep = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return self.unet(x, timestep).sample

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32, name: str | None = None
    ) -> UNetDiffusion:
        """Load ``unet/`` and ``scheduler/`` from a diffusers DDPM/DDIM pipeline folder."""
        from diffusers import UNet2DModel

        folder = Path(folder)
        try:
            unet = UNet2DModel.from_pretrained(folder, subfolder="unet", local_files_only=True, torch_dtype=dtype)
            config = _read_scheduler_config(folder)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load a UNet2DModel pipeline from {folder}: {_first_line(exc)}") from None
        default_steps = int(_read_json(folder / "samplescope.json").get("default_steps", 50))
        return cls(
            unet,
            ddim_scheduler_from_config(config),
            name=name or folder.name,
            default_steps=default_steps,
            device=device,
            dtype=dtype,
        )


def _read_json(path: Path) -> dict[str, Any]:
    import json

    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def _read_scheduler_config(folder: Path) -> dict[str, Any]:
    config = _read_json(folder / "scheduler" / "scheduler_config.json")
    if not config:
        raise ModelLoadError(f"{folder} has no scheduler/scheduler_config.json")
    return config


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

