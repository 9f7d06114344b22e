"""The embedded digits model (``embedded:digits``): a small DDPM on scikit-learn's 8x8 digits.

Everything here is trained by ``scripts/train_digits.py`` (seeded, a few
minutes on a CPU) and shipped in ``engines/assets/digits/``:

- ``unet/`` and ``scheduler/``: a diffusers pipeline folder (``UNet2DModel``,
  cosine ``DDPMScheduler`` config), loaded as a :class:`UNetDiffusion`;
- ``classifier.safetensors``: :class:`DigitCNN`, the reward ``digit:K``'s
  classifier, trained on the same split as the DDPM;
- ``heldout.safetensors``: the reference digits of :class:`HeldoutCheck`, an
  independent k-nearest-neighbour recogniser over digits that neither the DDPM
  nor the classifier saw. It is not differentiable and shares no weights with
  the reward, so an image that fools the classifier (reward hacking) without
  looking like a digit fails it;
- ``MODEL_CARD.md`` and ``metrics.json``: data, steps, loss, accuracies.

Images are [B, 1, 8, 8] tensors in [-1, 1] (ink is +1, background -1).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engines.errors import ModelLoadError
from engines.models import EMBEDDED, EmbeddedModel, LoadOptions
from engines.models.diffusion import UNetDiffusion

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "digits"

#: the UNet the training script builds (FINDINGS.md: 0.70M parameters work at 8x8)
UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}

#: the training noise schedule (the sampler uses it through a DDIM scheduler)
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "set_alpha_to_one": True,
    "timestep_spacing": "leading",
}

DEFAULT_STEPS = 25


class DigitCNN(nn.Module):
    """A small CNN over 8x8 digits in [-1, 1]; logits over the ten classes."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class HeldoutCheck:
    """Is it a digit, and which? A k-NN vote over held-out real digits, with a distance cut.

    An image is *recognised* as digit ``label`` when the mean Euclidean distance
    to its ``k`` nearest reference digits is at most ``threshold`` (calibrated
    so that a set share of real digits pass) and ``label`` wins the vote.
    """

    references: torch.Tensor  # [M, 64] in [-1, 1]
    labels: torch.Tensor  # [M]
    threshold: float
    k: int = 5

    def distances(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean distance to the k nearest references, the k-NN vote) per image."""
        flat = images.detach().float().reshape(images.shape[0], -1).cpu()
        if flat.shape[1] != self.references.shape[1]:
            raise ValueError(f"the held-out check reads 8x8 digits, got images of shape {tuple(images.shape[1:])}")
        d = torch.cdist(flat, self.references)
        nearest, index = d.topk(self.k, dim=1, largest=False)
        votes = torch.nn.functional.one_hot(self.labels[index], 10).sum(dim=1)
        return nearest.mean(dim=1), votes.argmax(dim=1)

    def recognise(self, images: torch.Tensor) -> list[int | None]:
        """The digit each image is recognised as, or None when it is too far from every real digit."""
        dist, label = self.distances(images)
        return [int(lbl) if float(dd) <= self.threshold else None for dd, lbl in zip(dist, label, strict=True)]


_lock = threading.Lock()
_classifiers: dict[str, DigitCNN] = {}
_check: list[HeldoutCheck] = []


def _require(path: Path) -> Path:
    if not path.exists():
        raise ModelLoadError(f"{path} is missing; rebuild the digits assets with: python scripts/train_digits.py")
    return path


def load_classifier(device: str | torch.device = "cpu") -> DigitCNN:
    """The reward classifier (cached per device, eval mode, gradients off for its weights)."""
    from safetensors.torch import load_file

    key = str(device)
    with _lock:
        if key not in _classifiers:
            net = DigitCNN()
            net.load_state_dict(load_file(_require(ASSETS / "classifier.safetensors")))
            net.requires_grad_(False)
            _classifiers[key] = net.to(device).eval()
        return _classifiers[key]


def load_heldout_check() -> HeldoutCheck:
    from safetensors.torch import load_file

    with _lock:
        if not _check:
            data = load_file(_require(ASSETS / "heldout.safetensors"))
            _check.append(
                HeldoutCheck(
                    references=data["references"].float(),
                    labels=data["labels"].long(),
                    threshold=float(data["threshold"]),
                    k=int(data["k"]),
                )
            )
        return _check[0]


def load_digits(options: LoadOptions) -> UNetDiffusion:
    _require(ASSETS / "unet")
    return UNetDiffusion.from_pretrained(
        ASSETS, device=options.torch_device(), dtype=options.torch_dtype(), name="embedded:digits"
    )


EMBEDDED.add(
    "digits",
    EmbeddedModel(
        name="digits",
        modality="image",
        description="a 0.7M-parameter DDPM on scikit-learn's 8x8 digits (reward: digit:K)",
        load=load_digits,
    ),
)
