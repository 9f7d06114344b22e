"""Train the embedded digits model: a small DDPM, its reward classifier and the held-out check.

    python scripts/train_digits.py               # writes engines/assets/digits/
    python scripts/train_digits.py --steps 300 --out /tmp/digits   # a quick smoke run

Data: scikit-learn's 1,797 8x8 digits (pixel values 0..16 scaled to [-1, 1]),
split once, stratified and seeded, into ``train`` (75%: the DDPM and the reward
classifier learn from it) and ``heldout`` (25%: the reference set of the
k-NN held-out check, and the classifier's test set). Everything is seeded; on
a 2-core CPU the default run takes a few minutes.

Outputs (in ``--out``): a diffusers pipeline folder (``model_index.json``,
``unet/``, ``scheduler/``), ``classifier.safetensors``, ``heldout.safetensors``,
``samples.png``, ``metrics.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engines.models.diffusion import UNetDiffusion, ddim_scheduler_from_config  # noqa: E402
from engines.models.digits import (  # noqa: E402
    DEFAULT_STEPS,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    DigitCNN,
    HeldoutCheck,
)


def load_data(seed: int) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 8.0 - 1.0
    x_train, x_held, y_train, y_held = train_test_split(
        images, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    as_t = torch.from_numpy
    return {
        "x_train": as_t(x_train).unsqueeze(1),
        "y_train": as_t(y_train).long(),
        "x_held": as_t(x_held).unsqueeze(1),
        "y_held": as_t(y_held).long(),
    }


def train_ddpm(x: torch.Tensor, steps: int, batch: int, seed: int, lr: float) -> tuple[torch.nn.Module, list[float]]:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET_CONFIG)
    ema = copy.deepcopy(unet).requires_grad_(False)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_at(i: int) -> float:  # linear warm-up, then cosine decay to 10%
        if i < warmup:
            return (i + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    started = time.perf_counter()
    for i in range(steps):
        index = torch.randint(0, x.shape[0], (batch,), generator=gen)
        x0 = x[index]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        xt = noise_scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + i) / (10 + i))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if (i + 1) % 100 == 0 or i + 1 == steps:
            recent = sum(losses[-100:]) / len(losses[-100:])
            print(f"ddpm step {i + 1}/{steps}  loss {recent:.4f}  {time.perf_counter() - started:.0f}s", flush=True)
    return ema.eval(), losses


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int
) -> tuple[DigitCNN, list[float]]:
    torch.manual_seed(seed)
    net = DigitCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        net.train()
        order = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for start in range(0, x.shape[0], 64):
            index = order[start : start + 64]
            loss = F.cross_entropy(net(x[index]), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss) * len(index)
        losses.append(total / x.shape[0])
    return net.eval(), losses


def calibrate_check(data: dict[str, torch.Tensor], k: int, quantile: float) -> tuple[HeldoutCheck, dict]:
    """k-NN over the held-out digits; the distance cut passes ``quantile`` of the (unseen) train digits."""
    refs = data["x_held"].reshape(data["x_held"].shape[0], -1)
    check = HeldoutCheck(references=refs, labels=data["y_held"], threshold=math.inf, k=k)
    dist, label = check.distances(data["x_train"])
    check.threshold = float(torch.quantile(dist, quantile))
    stats = {
        "k": k,
        "threshold": check.threshold,
        "real_digits_passing": float((dist <= check.threshold).float().mean()),
        "knn_accuracy_on_train_split": float((label == data["y_train"]).float().mean()),
    }
    return check, stats


@torch.no_grad()
def evaluate_samples(
    unet: torch.nn.Module, classifier: DigitCNN, check: HeldoutCheck, n: int, seed: int
) -> tuple[torch.Tensor, dict]:
    model = UNetDiffusion(unet, ddim_scheduler_from_config(SCHEDULER_CONFIG), default_steps=DEFAULT_STEPS)
    schedule = model.schedule()
    gen = torch.Generator().manual_seed(seed)
    x = model.initial_noise(n, gen)
    for i in range(len(schedule)):
        pred = model.predict(x, i, schedule)
        x = model.step(x, i, schedule, pred, eta=1.0, rng=gen).sample
    images = model.decode(x)
    probs = classifier(images).softmax(-1)
    conf, cls = probs.max(-1)
    recognised = check.recognise(images)
    passing = [r is not None for r in recognised]
    agree = [r == int(c) for r, c in zip(recognised, cls, strict=True)]
    confident = conf > 0.9
    stats = {
        "samples": n,
        "steps": len(schedule),
        "eta": 1.0,
        "classifier_confident_share": float(confident.float().mean()),
        "classifier_class_histogram": torch.bincount(cls[confident], minlength=10).tolist(),
        "heldout_check_pass_share": float(np.mean(passing)),
        "classifier_and_check_agree_share": float(np.mean(agree)),
    }
    return images, stats


def save_grid(images: torch.Tensor, path: Path, columns: int = 16, scale: int = 4) -> None:
    from PIL import Image

    n = images.shape[0]
    rows = math.ceil(n / columns)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    grid = np.zeros((rows * 9 + 1, columns * 9 + 1), dtype=np.uint8) + 60
    for i in range(n):
        r, c = divmod(i, columns)
        grid[1 + r * 9 : 1 + r * 9 + 8, 1 + c * 9 : 1 + c * 9 + 8] = pixels[i]
    img = Image.fromarray(grid, mode="L")
    img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST).save(path)


def write_card(out: Path, metrics: dict) -> None:
    d, c, h, s = metrics["ddpm"], metrics["classifier"], metrics["heldout_check"], metrics["samples"]
    hist = ", ".join(f"{i}: {v}" for i, v in enumerate(s["classifier_class_histogram"]))
    text = f"""# embedded:digits

A small DDPM on scikit-learn's 8x8 handwritten digits, its reward classifier
(`digit:K`), and an independent held-out check, all trained by
`python scripts/train_digits.py --seed {metrics["seed"]}` in {metrics["train_seconds"]:.0f} s on a
{metrics["machine"]}.

## Data
scikit-learn `load_digits`: 1,797 grey 8x8 images, pixel values 0..16 scaled
to [-1, 1] (ink is +1). One stratified, seeded split: **train** {d["images"]} images
(the DDPM and the classifier), **held-out** {c["test_images"]} images (the reference
set of the held-out check and the classifier's test set).

## DDPM (`unet/`, `scheduler/`: a diffusers `DDPMPipeline` folder)
- `UNet2DModel`, block channels (32, 64), `DownBlock2D` + `AttnDownBlock2D`, one
  layer per block, 8 norm groups: {d["parameters"]:,} parameters.
- Noise schedule: `DDPMScheduler`, 1000 steps, `squaredcos_cap_v2`, ε-prediction,
  x̂0 clipped to [-1, 1]. Sampling uses DDIM timesteps ({DEFAULT_STEPS} by default) with η = 1
  (ancestral DDPM steps).
- Training: {d["steps"]} steps of batch {d["batch"]}, AdamW lr {d["lr"]} (warm-up, cosine decay), EMA
  weights (decay up to 0.999). Loss (ε MSE): first 100 steps {d["loss_first100"]:.4f}, last 100 steps
  {d["loss_last100"]:.4f}.

## Reward classifier (`classifier.safetensors`, `DigitCNN`)
Three conv layers and two linear layers, {c["parameters"]:,} parameters, {c["epochs"]} epochs of Adam on the
train split. Accuracy on the {c["test_images"]} held-out digits: **{c["test_accuracy"]:.1%}**.

## Held-out check (`heldout.safetensors`, `HeldoutCheck`)
A {h["k"]}-nearest-neighbour vote over the held-out digits (Euclidean, pixel space),
with a distance cut at the {metrics["check_quantile"]:.0%} quantile of the train digits' mean
{h["k"]}-NN distance ({h["threshold"]:.3f}). It shares nothing with the classifier and has no
gradient, so images that fool the classifier without looking like digits fail it.
On the train split (digits it never saw): {h["real_digits_passing"]:.1%} pass the cut, k-NN accuracy
{h["knn_accuracy_on_train_split"]:.1%}.

## Samples ({s["samples"]} images, sampling seed {metrics["seed"] + 1}, {s["steps"]} steps, η = 1)
- Recognised confidently by the classifier (max probability > 0.9): **{s["classifier_confident_share"]:.1%}**;
  confident samples per class: {hist}.
- Pass the held-out check: **{s["heldout_check_pass_share"]:.1%}**; the check names the classifier's
  class: {s["classifier_and_check_agree_share"]:.1%}.

![samples](samples.png)
"""
    (out / "MODEL_CARD.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "engines" / "assets" / "digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500, help="DDPM optimiser steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--classifier-epochs", type=int, default=30)
    parser.add_argument("--check-quantile", type=float, default=0.98)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this small model, and on a shared CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import DDPMPipeline, DDPMScheduler
    from safetensors.torch import save_file

    started = time.perf_counter()
    data = load_data(args.seed)
    unet, ddpm_losses = train_ddpm(data["x_train"], args.steps, args.batch_size, args.seed, args.lr)
    classifier, cls_losses = train_classifier(data["x_train"], data["y_train"], args.classifier_epochs, args.seed)
    with torch.no_grad():
        test_acc = float((classifier(data["x_held"]).argmax(-1) == data["y_held"]).float().mean())
    check, check_stats = calibrate_check(data, k=5, quantile=args.check_quantile)
    images, sample_stats = evaluate_samples(unet, classifier, check, args.samples, args.seed + 1)
    elapsed = time.perf_counter() - started

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out, safe_serialization=True)
    (out / "samplescope.json").write_text(json.dumps({"default_steps": DEFAULT_STEPS}, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, out / "classifier.safetensors")
    save_file(
        {
            "references": check.references.contiguous(),
            "labels": check.labels.contiguous(),
            "threshold": torch.tensor(check.threshold),
            "k": torch.tensor(check.k),
        },
        out / "heldout.safetensors",
    )
    save_grid(images[:128], out / "samples.png")
    import platform

    metrics = {
        "seed": args.seed,
        "train_seconds": elapsed,
        "machine": f"{torch.get_num_threads()}-thread CPU ({platform.machine()}), torch {torch.__version__}",
        "check_quantile": args.check_quantile,
        "ddpm": {
            "images": int(data["x_train"].shape[0]),
            "parameters": sum(p.numel() for p in unet.parameters()),
            "steps": args.steps,
            "batch": args.batch_size,
            "lr": args.lr,
            "loss_first100": float(np.mean(ddpm_losses[:100])),
            "loss_last100": float(np.mean(ddpm_losses[-100:])),
        },
        "classifier": {
            "parameters": sum(p.numel() for p in classifier.parameters()),
            "epochs": args.classifier_epochs,
            "final_train_loss": cls_losses[-1],
            "test_images": int(data["x_held"].shape[0]),
            "test_accuracy": test_acc,
        },
        "heldout_check": check_stats,
        "samples": sample_stats,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_card(out, metrics)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
