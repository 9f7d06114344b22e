"""Stable-Diffusion-style pipelines, and the ``diffusers:PATH_OR_ID`` model scheme.

:class:`StableDiffusionModel` is latent diffusion conditioned on text: a
``UNet2DConditionModel`` denoises VAE latents given CLIP text embeddings, with
classifier-free guidance (Ho & Salimans, 2022):

    ε̂ = ε_θ(x_t, ∅) + w · (ε_θ(x_t, c) − ε_θ(x_t, ∅))

where c is the task's prompt, ∅ the negative prompt (empty by default) and w
the guidance scale (``task.meta["guidance_scale"]`` or the model's default,
7.5). With w > 1 every prediction evaluates the UNet twice per particle, and
``nfe`` counts both. Text embeddings are computed once per prompt and cached.

Latents decode through ``AutoencoderKL`` (``latents / scaling_factor``): one
decoder pass per image (``decoder_passes = 1``), which samplers meter as
``decodes`` -- FK steering decodes N images at every potential step, SVDD N·M
per step, on top of the network evaluations. Intermediate previews skip the VAE: for 4-channel latents they use the usual
linear latent-to-RGB approximation of SD 1.x/2.x latents (close enough for a
thumbnail, free to compute); other latent widths decode through the VAE.

``diffusers:PATH_OR_ID`` loads a pipeline folder (``model_index.json`` with
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) or a
hub id (from the local cache first, then the hub). A ``UNet2DModel`` pipeline
(DDPM/DDIM) loads as :class:`UNetDiffusion`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from engines.errors import ConfigError, ModelLoadError
from engines.models import SCHEMES, LoadOptions
from engines.models.diffusion import (
    DiffusionModel,
    Schedule,
    UNetDiffusion,
    _first_line,
    _read_json,
    _read_scheduler_config,
    ddim_scheduler_from_config,
    schedule_from_scheduler,
)
from engines.task import Task

# Linear map from SD 1.x/2.x latents (already multiplied by the VAE scaling factor) to RGB in about [-1, 1].
_LATENT_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


class StableDiffusionModel(DiffusionModel):
    """Text-to-image latent diffusion with classifier-free guidance, one step at a time."""

    def __init__(
        self,
        *,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        name: str = "stable-diffusion",
        guidance_scale: float = 7.5,
        default_steps: int = 50,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if guidance_scale < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {guidance_scale}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet, self.vae, self.text_encoder = (
            _place(module, self.device, dtype) for module in (unet, vae, text_encoder)
        )
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.name = name
        self.guidance_scale = float(guidance_scale)
        self.default_steps = default_steps
        self.prediction_type = scheduler.config.prediction_type
        self.clip_sample = False  # latents are not bounded
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (int(unet.config.in_channels), int(h), int(w))
        self.image_shape = (int(vae.config.out_channels), int(h) * self.vae_scale, int(w) * self.vae_scale)
        self._schedules: dict[int, Schedule] = {}
        self._embeddings: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    # -- conditioning ------------------------------------------------------------------

    def guidance_for(self, task: Task | None) -> float:
        if task is None:
            return self.guidance_scale
        value = task.meta.get("guidance_scale", self.guidance_scale)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"guidance_scale must be a number, got {value!r}") from None
        if value < 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {value}")
        return value

    def nfe_for(self, task: Task | None) -> int:
        return 2 if self.guidance_for(task) > 1 else 1

    @property
    def nfe_per_sample(self) -> int:
        return 2 if self.guidance_scale > 1 else 1

    @torch.no_grad()
    def _encode(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(
            [text],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids).last_hidden_state.to(self.dtype)

    def embeddings(self, task: Task | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional, unconditional) text embeddings, each [1, L, D], cached per prompt."""
        prompt = task.prompt if task is not None else ""
        negative = str(task.meta.get("negative_prompt", "")) if task is not None else ""
        key = (prompt, negative)
        with self._lock:
            if key not in self._embeddings:
                self._embeddings[key] = (self._encode(prompt), self._encode(negative))
            return self._embeddings[key]

    # -- the protocol --------------------------------------------------------------------

    def schedule(self, steps: int | None = None) -> Schedule:
        steps = steps or self.default_steps
        if steps not in self._schedules:
            self._schedules[steps] = schedule_from_scheduler(self.scheduler, steps)
        return self._schedules[steps]

    def _model_output(self, x: torch.Tensor, t: int, task: Task | None) -> torch.Tensor:
        cond, uncond = self.embeddings(task)
        scale = self.guidance_for(task)
        n = x.shape[0]
        timestep = torch.full((n,), t, device=x.device, dtype=torch.long)
        if scale <= 1:
            # w = 1 is the conditional model; w = 0 the unconditional one.
            context = (cond if scale == 1 else uncond).expand(n, -1, -1)
            return self.unet(x, timestep, encoder_hidden_states=context).sample
        context = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])
        out = self.unet(torch.cat([x, x]), torch.cat([timestep, timestep]), encoder_hidden_states=context).sample
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(x0.to(self.dtype) / self.scaling_factor).sample
        return images.float().clamp(-1, 1)

    decoder_passes = 1

    @property
    def preview_decoder_passes(self) -> int:
        return 0 if self.sample_shape[0] == _LATENT_RGB.shape[0] else 1

    def preview(self, x0: torch.Tensor) -> torch.Tensor:
        if x0.shape[1] != _LATENT_RGB.shape[0]:
            return self.decode(x0)
        rgb = torch.einsum("bchw,cr->brhw", x0.float(), _LATENT_RGB.to(x0.device))
        return rgb.clamp(-1, 1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "guidance_scale": self.guidance_scale}

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32, name: str | None = None
    ) -> StableDiffusionModel:
        """Load the five parts of a Stable-Diffusion pipeline folder."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        folder = Path(folder)
        try:
            unet = UNet2DConditionModel.from_pretrained(
                folder, subfolder="unet", local_files_only=True, torch_dtype=dtype
            )
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True, torch_dtype=dtype)
            text_encoder = CLIPTextModel.from_pretrained(
                folder / "text_encoder", local_files_only=True, dtype=dtype
            )
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
            scheduler = ddim_scheduler_from_config(_read_scheduler_config(folder))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load a Stable Diffusion pipeline from {folder}: {_first_line(exc)}") from None
        extra = _read_json(folder / "samplescope.json")
        return cls(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            name=name or folder.name,
            guidance_scale=float(extra.get("guidance_scale", 7.5)),
            default_steps=int(extra.get("default_steps", 50)),
            device=device,
            dtype=dtype,
        )


def _place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a frozen, eval-mode module to ``device`` (casting only when its dtype differs)."""
    module = module.to(device) if module.dtype == dtype else module.to(device, dtype)
    return module.eval().requires_grad_(False)


def resolve_pipeline_folder(path_or_id: str) -> Path:
    """A local pipeline folder, or a hub id fetched from the local cache or the hub (one-line error otherwise)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
        raise ModelLoadError(f"{path_or_id!r} is not a diffusers pipeline folder (nor a hub id like org/name)")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]
    try:
        return Path(snapshot_download(path_or_id, local_files_only=True, allow_patterns=patterns))
    except Exception:  # noqa: BLE001 - not cached: try the hub below
        pass
    try:
        return Path(snapshot_download(path_or_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - any hub failure is one line for the user
        raise ModelLoadError(
            f"cannot fetch {path_or_id!r} from the Hugging Face hub ({type(exc).__name__}); "
            f"download the pipeline elsewhere and pass diffusers:/path/to/folder"
        ) from None


def load_diffusers(path_or_id: str, options: LoadOptions) -> DiffusionModel:
    """The ``diffusers:`` scheme: a Stable Diffusion pipeline or a UNet2DModel (DDPM/DDIM) pipeline."""
    folder = resolve_pipeline_folder(path_or_id)
    index = _read_json(folder / "model_index.json")
    if not index:
        raise ModelLoadError(f"{folder} has no model_index.json; is it a diffusers pipeline folder?")
    kind = str(index.get("_class_name", ""))
    unet_class = (index.get("unet") or [None, None])[1]
    common = {"device": options.torch_device(), "dtype": options.torch_dtype(), "name": f"diffusers:{path_or_id}"}
    if unet_class == "UNet2DConditionModel" and "text_encoder" in index:
        return StableDiffusionModel.from_pretrained(folder, **common)
    if unet_class == "UNet2DModel":
        return UNetDiffusion.from_pretrained(folder, **common)
    raise ModelLoadError(
        f"{path_or_id!r} is a {kind or 'unknown'} pipeline; samplescope loads Stable Diffusion "
        "(UNet2DConditionModel + VAE + CLIP text encoder) and UNet2DModel pipelines"
    )


SCHEMES.add("diffusers", load_diffusers)
