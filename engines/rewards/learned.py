"""Rewards learned from human votes: a Bradley-Terry head on frozen features.

A learned reward lives in a folder (``REWARDS_FOLDER/NAME``; the caller hands in the rewards
folder, ``RewardEnv.rewards_folder``: the app's is ``$SAMPLESCOPE_HOME/rewards``):

- ``card.json``: what it is (kind, modality, base model, featuriser, head
  shape, votes used, date, metrics);
- ``head.safetensors`` (``kind: head``): a :class:`BTHead` whose scalar output
  r(x) is the reward (``card.method``: ``bt``, or ``west-of-n``, ``gan-rm``, ``odin`` from
  ``engines.rewards.pair_learners``), a transformers sequence-classification folder
  ``model/`` (``kind: finetune``, trained by TRL's ``RewardTrainer``), or no weights at all
  (``kind: par``: Preference As Reward over the reward ``card.of``).

The Bradley-Terry model (Bradley & Terry, "Rank Analysis of Incomplete Block
Designs", Biometrika 1952; as a reward model: Ouyang et al. 2022, Stiennon et
al. 2020): P(a beats b) = sigma(r(a) - r(b)), r(x) = head(phi(prompt, x)) with
phi frozen features:

| featuriser | phi | base spec |
|---|---|---|
| ``text`` | mean-pooled last hidden state of ``prompt + "\\n\\n" + response`` (``TextModel.embed``) | any text model spec |
| ``digits`` | penultimate layer (128 units) of the embedded digit classifier | ``embedded:digits`` |
| ``clip`` | L2-normalised CLIP image embedding | ``clip:PATH`` |

Image featurisers are differentiable, so a learned image reward can steer
gradient samplers too. ``learned:NAME`` builds the reward; ``NAME`` may also be
a folder path. This module reads folders only: it never touches the database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.errors import ConfigError, ModelLoadError
from engines.rewards import REWARDS, RewardEnv, RewardFactory
from engines.rewards.base import Reward
from engines.rewards.image import ImageReward, as_image_batch
from engines.task import Task
from engines.trace import Cost

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CARD = "card.json"
HEAD = "head.safetensors"
IMAGE_BASES = ("embedded:digits", "clip:")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"reward name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def reward_folder(name_or_path: str, home: Path | None) -> Path:
    """The folder of a learned reward: a folder path, or a name under ``home`` (the caller's rewards
    folder: the app hands in ``$SAMPLESCOPE_HOME/rewards``; engines never work out the data folder)."""
    path = Path(name_or_path).expanduser()
    if ("/" in name_or_path or name_or_path.startswith(".")) and path.is_dir():
        return path
    check_name(name_or_path)
    if home is None:
        raise ConfigError(f"learned:{name_or_path} names a learned reward, but no rewards folder was given; "
                          "pass its folder path instead")
    return Path(home) / name_or_path


def list_learned(home: Path | None) -> list[dict[str, Any]]:
    """The cards of every learned reward in the rewards folder ``home``, by name (none without one)."""
    if home is None or not Path(home).is_dir():
        return []
    out = []
    for folder in sorted(Path(home).iterdir()):
        card = folder / CARD
        if folder.is_dir() and card.is_file():
            try:
                out.append(json.loads(card.read_text()))
            except (OSError, ValueError):
                continue
    return out


def image_base(base: str) -> bool:
    return base == "embedded:digits" or base.startswith("clip:")


# -- the head ---------------------------------------------------------------------


class BTHead(nn.Module):
    """r(x) = w . z + c (``hidden == 0``) or a one-hidden-layer MLP, on z = (x - mu) / sigma."""

    def __init__(self, input_dim: int, hidden: int = 0) -> None:
        super().__init__()
        if input_dim < 1 or hidden < 0:
            raise ConfigError(f"a head needs input_dim >= 1 and hidden >= 0, got {input_dim}, {hidden}")
        self.input_dim, self.hidden = input_dim, hidden
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("scale", torch.ones(input_dim))
        if hidden:
            self.net: nn.Module = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(input_dim, 1)

    def standardise_on(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.scale.copy_(features.std(0).clamp_min(1e-6) if len(features) > 1 else torch.ones(self.input_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features.float() - self.mean) / self.scale).squeeze(-1)

    def penalty(self) -> torch.Tensor:
        """Sum of squared weights (biases are not penalised)."""
        return sum((p**2).sum() for n, p in self.net.named_parameters() if n.endswith("weight"))


def save_head(head: BTHead, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(folder / HEAD))


def load_head(folder: Path, card: dict[str, Any]) -> BTHead:
    from safetensors.torch import load_file

    spec = card.get("head") or {}
    head = BTHead(int(spec.get("input_dim", 0)), int(spec.get("hidden", 0)))
    head.load_state_dict(load_file(str(folder / HEAD)))
    return head.eval().requires_grad_(False)


# -- featurisers ------------------------------------------------------------------


def pair_text(prompt: str, response: str) -> str:
    return f"{prompt}\n\n{response}"


class TextFeatures:
    """phi(prompt, response) = the text model's embedding of ``prompt\\n\\nresponse``."""

    modality = "text"
    name = "text"

    def __init__(self, model: Any, base: str) -> None:
        if not hasattr(model, "embed") or getattr(model, "modality", "text") != "text":
            raise ConfigError(f"base model {base!r} is not a text model with embeddings")
        self.model, self.base = model, base

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], *, usage: Cost | None = None) -> torch.Tensor:
        texts = [pair_text(p, r) for p, r in zip(prompts, responses, strict=True)]
        if not texts:
            return torch.zeros(0, 0)
        return self.model.embed(texts, usage=usage).float()


class DigitFeatures:
    """The embedded digit classifier's penultimate layer (128 ReLU units), differentiable."""

    modality = "image"
    name = "digits"
    base = "embedded:digits"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from engines.models.digits import load_classifier

        images = as_image_batch(images)
        if tuple(images.shape[1:]) != (1, 8, 8):
            raise ConfigError(f"the digit features take 8x8 grey images, got {tuple(images.shape[1:])}")
        net = load_classifier(images.device)
        return net.head[:3](net.features(images.float()))


class ClipFeatures:
    """L2-normalised CLIP image embeddings (the CLIP reward's preprocessing), differentiable."""

    modality = "image"
    name = "clip"

    def __init__(self, path: str) -> None:
        from engines.rewards.image import load_clip_reward

        self.clip = load_clip_reward(path)
        self.base = f"clip:{path}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.clip.preprocess(images).to(self.clip.model.device, self.clip.model.dtype)
        emb = self.clip.model.get_image_features(pixel_values=pixels)
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1)


def featuriser(base: str, load_model: Callable[..., Any] | None = None) -> Any:
    """The featuriser a base spec names (text model spec, ``embedded:digits`` or ``clip:PATH``)."""
    base = (base or "").strip()
    if base == "embedded:digits":
        return DigitFeatures()
    if base.startswith("clip:"):
        return ClipFeatures(base[5:])
    if load_model is None:
        from engines.models import load_model
    from engines.errors import SamplescopeError

    try:
        model = load_model(base)
    except (SamplescopeError, OSError, ValueError) as exc:  # unknown scheme or name, missing folder
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"unknown base model {base!r}: {line}") from None
    return TextFeatures(model, base)


# -- the rewards ------------------------------------------------------------------


class LearnedTextReward(Reward):
    """r(x) = head(phi(prompt, x)) for a head trained on text votes."""

    def __init__(self, head: BTHead, features: TextFeatures, name: str, card: dict[str, Any]) -> None:
        self.head, self.features, self.name, self.card = head, features, name, card

    @torch.inference_mode()
    def score(self, task: Task, candidates: Sequence[str], *, usage: Cost | None = None) -> list[float]:
        if not candidates:
            return []
        phi = self.features([task.prompt] * len(candidates), list(candidates), usage=usage)
        return [float(v) for v in self.head(phi)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base": self.card.get("base"), "metrics": self.card.get("metrics", {})}


class LearnedImageReward(ImageReward):
    """r(image) = head(phi(image)) for a head trained on image votes (differentiable)."""

    def __init__(self, head: BTHead, features: Any, name: str, card: dict[str, Any]) -> None:
        self.head, self.features, self.name, self.card = head, features, name, card

    def check_image_shape(self, shape: Sequence[int]) -> None:
        if isinstance(self.features, DigitFeatures) and tuple(shape) != (1, 8, 8):
            raise ConfigError(f"{self.name} scores 8x8 grey digits, but the model makes {tuple(shape)} images")

    def score_tensor(self, task: Task, images: torch.Tensor) -> torch.Tensor:
        images = as_image_batch(images)
        head = self.head.to(images.device)
        return head(self.features(images))


def read_card(folder: Path) -> dict[str, Any]:
    card = folder / CARD
    if not card.is_file():
        raise ModelLoadError(f"no learned reward at {folder} (train one: samplescope reward train --name NAME)")
    try:
        return json.loads(card.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{card} is not valid JSON: {exc}") from None


def load_learned(name_or_path: str, load_model: Callable[..., Any] | None = None, home: Path | None = None) -> Reward:
    """The reward stored in a learned-reward folder (a path, or a name under the rewards folder ``home``)."""
    folder = reward_folder(name_or_path, home)
    card = read_card(folder)
    name = f"learned:{name_or_path}"
    if card.get("kind") == "finetune":
        from engines.rewards.classifier import ClassifierReward, load_classifier

        model, tokenizer = load_classifier(str(folder / "model"))
        return ClassifierReward(model, tokenizer, name=name)
    if card.get("kind") == "par":  # Preference As Reward over another reward (engines/rewards/pair_learners.py)
        from engines.rewards.pair_learners import load_par

        return load_par(card, name, RewardEnv(load_model=load_model, rewards_folder=home))
    head = load_head(folder, card)
    features = featuriser(str(card.get("base", "")), load_model)
    if features.modality == "image":
        return LearnedImageReward(head, features, name, card)
    return LearnedTextReward(head, features, name, card)


def _learned(arg: str | None, env: RewardEnv) -> Reward:
    if not arg:
        raise ConfigError("learned needs a name: learned:NAME (samplescope list rewards shows them)")
    return load_learned(arg, env.loader(), env.rewards_folder)


REWARDS.add(
    "learned",
    RewardFactory(
        name="learned",
        kind="outcome",
        modality="text",
        help="a reward trained on stored votes (samplescope reward train); text or image by its card",
        build=_learned,
        arg="NAME",
        arg_required=True,
    ),
)
