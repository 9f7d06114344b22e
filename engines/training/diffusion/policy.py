"""Trainable diffusion policies: a pixel-space UNet pipeline loaded from a model spec, with its own weights.

``load_diffusion_policy(spec)`` accepts ``embedded:digits`` (or ``digits``) and
``diffusers:FOLDER`` (a local ``UNet2DModel`` pipeline folder, e.g. one this lab trained)
and returns a fresh :class:`UNetPolicy` whose UNet trains (never the shared, cached
inference copy). :meth:`UNetPolicy.save` writes a diffusers pipeline folder (``unet/``,
``scheduler/``, ``model_index.json``, ``samplescope.json``) that loads as the model spec
``diffusers:FOLDER`` everywhere (Explore, ``samplescope sample``, sweeps, further training).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch

from engines.errors import ConfigError, ModelLoadError
from engines.models.diffusion import UNetDiffusion


class UNetPolicy(UNetDiffusion):
    """A :class:`UNetDiffusion` whose UNet has gradients on, and the folder it came from."""

    trainable = True
    source: Path | None = None

    def __init__(self, unet: Any, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(unet, scheduler, **kwargs)
        self.unet.requires_grad_(True)  # eval mode stays: no dropout in rollouts or updates

    def parameters(self):
        return self.unet.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.unet.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.unet.load_state_dict(state)

    def frozen_copy(self) -> UNetDiffusion:
        """The KL reference: a copy that does not train."""
        return UNetDiffusion(copy.deepcopy(self.unet), self.scheduler, name=f"{self.name}@ref",
                             default_steps=self.default_steps, device=self.device, dtype=self.dtype)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(str(folder / "unet"))
        if self.source is not None:
            for name in ("scheduler", "model_index.json", "samplescope.json"):
                src = self.source / name
                if src.is_dir():
                    shutil.copytree(src, folder / name, dirs_exist_ok=True)
                elif src.is_file():
                    shutil.copy2(src, folder / name)


def load_diffusion_policy(spec: str, *, device: str = "cpu") -> UNetPolicy:
    """A fresh trainable policy from ``embedded:digits`` / ``digits`` or ``diffusers:FOLDER``."""
    spec = (spec or "").strip()
    scheme, _, rest = spec.partition(":")
    if spec in ("digits", "embedded:digits"):
        from engines.models.digits import ASSETS

        folder = ASSETS
    elif scheme == "diffusers" and rest:
        folder = Path(rest).expanduser()
        if not (folder / "unet").is_dir():
            raise ModelLoadError(f"policy {spec!r}: no UNet2DModel pipeline folder at {folder} (training needs a local folder)")
    else:
        raise ConfigError(f"policy {spec!r} cannot be trained here: diffusion training needs embedded:digits or diffusers:FOLDER")
    policy = UNetPolicy.from_pretrained(folder, device=device, name=spec)
    policy.source = folder
    return policy
