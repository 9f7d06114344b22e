"""Image rewards: digit classifier probability, ink, symmetry, CLIP score.

Every image reward takes a batch tensor ``images`` of shape [B, C, H, W] with
values in [-1, 1] (a list of [C, H, W] tensors is stacked) and returns one
float per image from :meth:`ImageReward.score`. Differentiable rewards
(``differentiable = True``) also offer :meth:`ImageReward.score_tensor`, which
returns the [B] tensor *with* its autograd graph, so gradient methods
(ReNO, guided proposals) can back-propagate into the images.

| spec | value | differentiable |
|---|---|---|
| ``digit:K`` | p(class K) under the embedded digit classifier (8x8 grey images) | yes |
| ``ink`` / ``ink:F`` | mean intensity in [0, 1] / −|mean intensity − F| | yes |
| ``symmetry`` / ``symmetry:v`` | 1 − mean |x − mirror(x)| / 2 (left-right / top-bottom) | yes |
| ``clip:PATH`` | cosine similarity of CLIP image and prompt embeddings | yes |

``clip:PATH`` loads a transformers ``CLIPModel`` and its tokenizer from a
local folder; its image preprocessing (resize, centre crop, normalise) is done
in torch so that it stays differentiable.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from engines.errors import ConfigError, ModelLoadError
from engines.rewards import REWARDS, RewardEnv, RewardFactory
from engines.rewards.base import Reward
from engines.task import Task
from engines.trace import Cost


def as_image_batch(candidates: Any) -> torch.Tensor:
    """A [B, C, H, W] float tensor from a batch tensor or a sequence of [C, H, W] tensors."""
    if isinstance(candidates, torch.Tensor):
        images = candidates
    elif isinstance(candidates, Sequence) and all(isinstance(c, torch.Tensor) for c in candidates) and candidates:
        images = torch.stack(list(candidates))
    else:
        raise ConfigError("image rewards score a [B, C, H, W] tensor of images in [-1, 1]")
    if images.dim() != 4:
        raise ConfigError(f"image rewards score [B, C, H, W] tensors, got shape {tuple(images.shape)}")
    return images.float() if not images.is_floating_point() else images


class ImageReward(Reward):
    """Base of image rewards: ``score`` is ``score_tensor`` without gradients."""

    modality: ClassVar[str] = "image"  # type: ignore[misc]
    differentiable: ClassVar[bool] = True

    def score(self, task: Task, candidates: Any, *, usage: Cost | None = None) -> list[float]:
        images = as_image_batch(candidates)
        with torch.no_grad():
            return [float(v) for v in self.score_tensor(task, images)]

    @abstractmethod
    def score_tensor(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        """The rewards of a [B, C, H, W] batch as a [B] tensor that keeps the autograd graph."""

    def check_image_shape(self, shape: Sequence[int]) -> None:
        """Raise ConfigError when images of ``shape`` (C, H, W) cannot be scored."""
        if len(shape) != 3:
            raise ConfigError(f"reward {self.name!r} scores images, but the model makes samples of shape {tuple(shape)}")


class DigitReward(ImageReward):
    """p(class K | image) under the embedded digit classifier."""

    def __init__(self, target: int) -> None:
        if not 0 <= target <= 9:
            raise ConfigError(f"digit:K needs K in 0..9, got {target}")
        self.target = target
        self.name = f"digit:{target}"

    def check_image_shape(self, shape: Sequence[int]) -> None:
        if tuple(shape) != (1, 8, 8):
            raise ConfigError(
                f"digit:{self.target} scores 8x8 grey digits (embedded:digits), but the model makes {tuple(shape)} images"
            )

    def score_tensor(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        from engines.models.digits import load_classifier

        images = as_image_batch(images)
        self.check_image_shape(images.shape[1:])
        classifier = load_classifier(images.device)
        return classifier(images.float()).softmax(dim=-1)[:, self.target]


class InkReward(ImageReward):
    """Mean intensity in [0, 1] (ink is bright), or closeness −|mean − target| to a target level."""

    def __init__(self, target: float | None = None) -> None:
        if target is not None and not 0 <= target <= 1:
            raise ConfigError(f"ink:F needs F in [0, 1], got {target}")
        self.target = target
        self.name = "ink" if target is None else f"ink:{target:g}"

    def score_tensor(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        level = ((as_image_batch(images) + 1) / 2).flatten(1).mean(dim=1)
        return level if self.target is None else -(level - self.target).abs()


class SymmetryReward(ImageReward):
    """Mirror symmetry: 1 − mean |x − flip(x)| / 2, in [0, 1] (1 is perfectly symmetric)."""

    def __init__(self, axis: str = "h") -> None:
        if axis not in ("h", "v"):
            raise ConfigError(f"symmetry:AXIS takes h (left-right mirror) or v (top-bottom), got {axis!r}")
        self.axis = axis
        self.name = "symmetry" if axis == "h" else "symmetry:v"

    def score_tensor(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        images = as_image_batch(images)
        mirrored = images.flip(dims=(3,) if self.axis == "h" else (2,))
        return 1 - (images - mirrored).abs().flatten(1).mean(dim=1) / 2


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipReward(ImageReward):
    """cos(CLIP image embedding, CLIP embedding of the task's prompt)."""

    def __init__(self, model: Any, tokenizer: Any, *, mean: Sequence[float] = _CLIP_MEAN, std: Sequence[float] = _CLIP_STD, name: str = "clip") -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.size = int(model.config.vision_config.image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.name = name
        self._text: dict[str, torch.Tensor] = {}

    def check_task(self, task: Task) -> None:
        if not task.prompt.strip():
            raise ValueError(f"reward {self.name!r} compares images with the prompt, and the prompt is empty")

    def check_image_shape(self, shape: Sequence[int]) -> None:
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise ConfigError(f"{self.name} scores grey or RGB images, but the model makes {tuple(shape)} samples")

    def _text_embedding(self, prompt: str, device: torch.device) -> torch.Tensor:
        if prompt not in self._text:
            tokens = self.tokenizer(
                [prompt], padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length, return_tensors="pt"
            )
            with torch.no_grad():
                emb = self.model.get_text_features(input_ids=tokens.input_ids.to(self.model.device))
            emb = getattr(emb, "pooler_output", emb)
            self._text[prompt] = F.normalize(emb.float(), dim=-1)
        return self._text[prompt].to(device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images to CLIP pixel values: resize the short side, centre-crop, normalise (differentiable)."""
        images = as_image_batch(images).float()
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        h, w = images.shape[2:]
        scale = self.size / min(h, w)
        size = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.size) // 2, (size[1] - self.size) // 2
        images = images[:, :, top : top + self.size, left : left + self.size]
        pixels = (images + 1) / 2
        return (pixels - self.mean.to(pixels.device)) / self.std.to(pixels.device)

    def score_tensor(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.model.device, self.model.dtype)
        emb = self.model.get_image_features(pixel_values=pixels)
        emb = getattr(emb, "pooler_output", emb)
        image_emb = F.normalize(emb.float(), dim=-1)
        return (image_emb * self._text_embedding(task.prompt, image_emb.device)).sum(dim=-1)


_clip_cache: dict[str, ClipReward] = {}
_clip_lock = threading.Lock()


def load_clip_reward(path: str, device: str = "cpu") -> ClipReward:
    """A CLIP reward from a local transformers folder (cached per folder and device)."""
    from transformers import AutoTokenizer, CLIPModel

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"clip:PATH needs a local CLIPModel folder; {path!r} is not a folder")
    key = f"{folder.resolve()}@{device}"
    with _clip_lock:
        if key not in _clip_cache:
            try:
                model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device)
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError) as exc:
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelLoadError(f"cannot load a CLIPModel from {folder}: {line}") from None
            mean, std = _CLIP_MEAN, _CLIP_STD
            pre = folder / "preprocessor_config.json"
            if pre.is_file():
                import json

                config = json.loads(pre.read_text())
                mean, std = config.get("image_mean", mean), config.get("image_std", std)
            _clip_cache[key] = ClipReward(model, tokenizer, mean=mean, std=std, name=f"clip:{path}")
        return _clip_cache[key]


def _digit(arg: str | None, env: RewardEnv) -> Reward:
    try:
        target = int(arg or "")
    except ValueError:
        raise ConfigError(f"digit:K needs an integer K in 0..9, got {arg!r}") from None
    return DigitReward(target)


def _ink(arg: str | None, env: RewardEnv) -> Reward:
    if arg is None:
        return InkReward()
    try:
        return InkReward(float(arg))
    except ValueError:
        raise ConfigError(f"ink:F needs a number F in [0, 1], got {arg!r}") from None


def _clip(arg: str | None, env: RewardEnv) -> Reward:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_clip_reward(arg or "", device=env.options.get("device", device))


REWARDS.add(
    "digit",
    RewardFactory(
        name="digit",
        kind="outcome",
        modality="image",
        help="probability of digit K under the embedded classifier (embedded:digits; differentiable)",
        build=_digit,
        arg="K",
        arg_required=True,
    ),
)
REWARDS.add(
    "ink",
    RewardFactory(
        name="ink",
        kind="outcome",
        modality="image",
        help="mean intensity in [0, 1]; ink:F rewards closeness to level F (differentiable)",
        build=_ink,
        arg="F",
    ),
)
REWARDS.add(
    "symmetry",
    RewardFactory(
        name="symmetry",
        kind="outcome",
        modality="image",
        help="mirror symmetry in [0, 1]; symmetry:v for top-bottom (differentiable)",
        build=lambda arg, env: SymmetryReward(arg or "h"),
        arg="h|v",
    ),
)
REWARDS.add(
    "clip",
    RewardFactory(
        name="clip",
        kind="outcome",
        modality="image",
        help="CLIP image-prompt cosine similarity from a local CLIPModel folder (differentiable)",
        build=_clip,
        arg="PATH",
        arg_required=True,
    ),
)
