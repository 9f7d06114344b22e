"""Train the value head that ``vas`` (``value=learned``) decodes with, on samples of the frozen arith policy.

    python scripts/train_arith_value.py                                 # writes engines/assets/arith/value/
    python scripts/train_arith_value.py --quick --out /tmp/value --no-card   # a smoke run

Value Augmented Sampling (Han et al. 2024, arXiv:2405.06639) learns the value of the *frozen*
policy p -- V(s, a) = E_p[r(y) | s·a], the expected reward of the text p completes from the prefix
s·a -- by TD(λ) on samples of p, and decodes from p(a | s)·exp(V(s, a)/β). This script:

1. draws T=1 samples of ``embedded:arith`` on fresh problems (never the task sets' problems) and
   labels each by the exact verifier, the ``math`` reward (1 if the final answer is right, else 0);
2. fits a ``LlamaForTokenClassification`` (one label, initialised from the policy's weights):
   sigmoid(logit at position t) = P(the policy's completion of the prefix ending in token t is
   right), the value of a {0, 1} reward. One output per token position, so one forward pass
   values every prefix of a text, and the last position of ``prefix + [a]`` is V(s, a);
3. by TD(λ) in its forward view (Sutton & Barto 2018, ch. 12.1, the offline λ-return algorithm
   with a semi-gradient): every position's target is the λ-return

       G_T = r (the text's reward, at its end token),   G_t = γ·((1-λ)·V(t+1) + λ·G_{t+1}),

   with V the head's own current predictions (no gradient through them) and γ = 1, λ = 0.95 --
   the values of the paper's public trainer (``gamma: float = 1``, ``lam: float = 0.95`` in
   idanshen/Value-Augmented-Sampling, vas_config.py). λ = 1 would be Monte-Carlo regression on
   the final label; λ < 1 bootstraps from the next prefix's value, which lowers the variance of
   the targets of early prefixes (a whole solution away from its label). The loss is the binary
   cross-entropy against the λ-return (a proper scoring rule: its minimiser is the target's
   expectation; the targets lie in [0, 1]);
4. measures the head on held-out samples of other problems: AUROC and Brier score of V at every
   prefix against the sample's exact outcome label (the on-policy outcome, whose expectation
   given the prefix is the true value), next to ``arith_orm``'s token-level probability (trained
   with the outcome label on every completion token, Cobbe et al. 2021: also a value estimate);
5. saves the head (fp16, with ``value_head.json``: the policy it values, the reward, the reward's
   two levels, λ, γ) and ``metrics.json`` into the folder, and writes its section of
   ``engines/assets/arith/MODEL_CARD.md`` (between markers, replaced on a rerun; rerun this script
   after ``scripts/train_arith.py``, which rewrites the card and the policy).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.models.arith import ASSETS, POLICY_DIR, load_hf, sample_completions  # noqa: E402
from engines.models.value_head import SPEC_FILE, VALUE_DIR, ValueHeadSpec  # noqa: E402
from engines.rewards.arith import ORM_DIR  # noqa: E402
from engines.rewards.verifiable import MathAnswer  # noqa: E402
from engines.tasks.arith import generate_problem, generate_problems, reserved_expressions  # noqa: E402
from scripts.arith_data import pad_batch, token_logits  # noqa: E402
from scripts.train_arith import log  # noqa: E402

CARD_BEGIN = "<!-- value head: written by scripts/train_arith_value.py -->"
CARD_END = "<!-- /value head -->"


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    train_problems: int = 2000
    samples_per_problem: int = 4
    heldout_problems: int = 300
    heldout_samples: int = 2
    steps: int = 400
    batch: int = 64
    lr: float = 1e-3
    td_lambda: float = 0.95
    gamma: float = 1.0
    max_new_tokens: int = 96
    level_mix: tuple[tuple[str, float], ...] = (("easy", 0.2), ("medium", 0.5), ("hard", 0.3))

    def quick(self) -> Recipe:
        return replace(self, train_problems=100, heldout_problems=40, steps=30)


# ---------------------------------------------------------------------------
# TD(λ): the part the tests check on a synthetic problem


@dataclass(frozen=True)
class Episodes:
    """A padded batch of episodes: ids [B, T], attention mask, and per row the first valued
    position (the prompt's last token: the state before the first generated token), the last
    (the end token, where the reward arrives) and the reward scaled to [0, 1]."""

    ids: torch.Tensor
    mask: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    reward: torch.Tensor

    def valued(self) -> torch.Tensor:
        """[B, T] bool: the positions that carry a value target."""
        pos = torch.arange(self.ids.shape[1])[None, :]
        return (pos >= self.first[:, None]) & (pos <= self.last[:, None])


def lambda_returns(values: torch.Tensor, reward: torch.Tensor, last: torch.Tensor, lam: float,
                   gamma: float = 1.0) -> torch.Tensor:
    """Forward-view λ-returns [B, T] of episodes whose only reward arrives at their last position:
    G_last = reward, G_t = γ·((1-λ)·values[t+1] + λ·G_{t+1}) before it (0 after it).
    λ = 1 gives the Monte-Carlo return γ^(last-t)·reward; λ = 0 the one-step TD target γ·values[t+1]."""
    if not 0 <= lam <= 1 or not 0 < gamma <= 1:
        raise ValueError(f"need 0 <= λ <= 1 and 0 < γ <= 1, got λ={lam}, γ={gamma}")
    rows, width = values.shape
    out = torch.zeros_like(values)
    following = torch.zeros(rows, dtype=values.dtype)
    for t in range(width - 1, -1, -1):
        bootstrap = values[:, t + 1] if t + 1 < width else torch.zeros(rows, dtype=values.dtype)
        inner = gamma * ((1 - lam) * bootstrap + lam * following)
        g = torch.where(t == last, reward.to(values.dtype), torch.where(t < last, inner, torch.zeros_like(inner)))
        out[:, t] = g
        following = g
    return out


def td_lambda_loss(model, batch: Episodes, lam: float, gamma: float) -> torch.Tensor:
    """Semi-gradient TD(λ): BCE of the head's logits against λ-returns built from its own current
    values (no gradient flows through the targets)."""
    logits = token_logits(model, batch.ids, batch.mask)
    with torch.no_grad():
        targets = lambda_returns(torch.sigmoid(logits.detach()), batch.reward, batch.last, lam, gamma)
    keep = batch.valued()
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], targets[keep])


def fit_value(model, batches: Iterator[Episodes], steps: int, lr: float, lam: float, gamma: float = 1.0,
              log: Callable[[str], None] = lambda line: None) -> list[float]:
    """``steps`` AdamW steps of :func:`td_lambda_loss` (cosine decay to a tenth of ``lr``); the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr / 10)
    model.train()
    losses: list[float] = []
    for step in range(steps):
        loss = td_lambda_loss(model, next(batches), lam, gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"value step {step + 1}/{steps} TD(λ) loss {statistics.fmean(losses[-100:]):.4f}")
    model.eval()
    return losses


# ---------------------------------------------------------------------------
# the arith data


def labelled_samples(policy, tokenizer, problems, per: int, generator, max_new_tokens: int) -> list[dict]:
    """``per`` T=1 completions of each problem, each with its ``math`` reward."""
    prompts = [p.prompt for p in problems for _ in range(per)]
    completions = sample_completions(policy, tokenizer, prompts, temperature=1.0, generator=generator,
                                     max_new_tokens=max_new_tokens)
    reward = MathAnswer()
    out = []
    for i, completion in enumerate(completions):
        problem = problems[i // per]
        (score,) = reward.score(problem.task(), [completion])
        out.append({"prompt": problem.prompt, "completion": completion, "reward": score, "group": i // per})
    return out


def episodes(tokenizer, rows: list[dict]) -> Episodes:
    """prompt + completion + <eos>: valued from the prompt's last token to the end token."""
    encoded, first = [], []
    for d in rows:
        prompt = tokenizer(d["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(d["completion"], add_special_tokens=False)["input_ids"]
        encoded.append(prompt + completion + [tokenizer.eos_token_id])
        first.append(len(prompt) - 1)
    ids, mask, _ = pad_batch(encoded, None, tokenizer.pad_token_id)
    return Episodes(ids, mask, torch.tensor(first), torch.tensor([len(e) - 1 for e in encoded]),
                    torch.tensor([float(d["reward"]) for d in rows]))


def batches(tokenizer, data: list[dict], size: int, seed: int) -> Iterator[Episodes]:
    rng = random.Random(seed)
    while True:
        yield episodes(tokenizer, rng.sample(data, size))


@torch.no_grad()
def prefix_predictions(model, tokenizer, data: list[dict]) -> tuple[list[float], list[int], list[str]]:
    """P(right) of ``model`` at every valued prefix of every sample, its sample's label, and where
    the prefix sits (``prompt``: nothing generated yet, ``end``: the complete text, else ``inside``)."""
    probs: list[float] = []
    labels: list[int] = []
    where: list[str] = []
    for start in range(0, len(data), 256):
        batch = episodes(tokenizer, data[start : start + 256])
        p = torch.sigmoid(token_logits(model, batch.ids, batch.mask))
        for row in range(len(batch.ids)):
            first, last = int(batch.first[row]), int(batch.last[row])
            probs += p[row, first : last + 1].tolist()
            labels += [int(batch.reward[row])] * (last - first + 1)
            where += ["prompt"] + ["inside"] * (last - first - 1) + ["end"]
    return probs, labels, where


def quality(probs: list[float], labels: list[int]) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    brier = statistics.fmean((p - y) ** 2 for p, y in zip(probs, labels, strict=True))
    base = statistics.fmean(labels)
    return {"auroc": float(roc_auc_score(labels, probs)), "brier": brier, "base_rate_brier": base * (1 - base),
            "prefixes": len(labels)}


def evaluate(value, orm, tokenizer, heldout: list[dict]) -> dict:
    """AUROC / Brier of the value head and of arith_orm's token-level P(right), pooled over all
    valued prefixes and split by where they sit."""
    out: dict = {}
    for name, model in (("value", value), ("arith_orm", orm)):
        probs, labels, where = prefix_predictions(model, tokenizer, heldout)
        out[name] = {"all": quality(probs, labels)}
        for part in ("prompt", "inside", "end"):
            idx = [i for i, w in enumerate(where) if w == part]
            out[name][part] = quality([probs[i] for i in idx], [labels[i] for i in idx])
    return out


# ---------------------------------------------------------------------------
# the card


def render_section(metrics: dict) -> str:
    r, ev = metrics["recipe"], metrics["heldout"]

    def row(part: str, label: str) -> str:
        v, o = ev["value"][part], ev["arith_orm"][part]
        return (f"| {label} | {v['prefixes']} | {v['auroc']:.3f} | {v['brier']:.4f} | {o['auroc']:.3f} | "
                f"{o['brier']:.4f} | {v['base_rate_brier']:.4f} |")

    return "\n".join([
        CARD_BEGIN,
        "## Value head (`value/`, for `vas` with `value=learned`)",
        "",
        f"Written by `python scripts/train_arith_value.py` (seed {r['seed']}, CPU, {metrics['threads']} thread(s), "
        f"{metrics['total_wall_s']:.0f} s wall on a shared, busy machine); rerun it after `scripts/train_arith.py`, which rewrites this card.",
        "",
        f"- What it is: `LlamaForTokenClassification`, one label, initialised from `policy/` "
        f"({metrics['params']:,} parameters, stored fp16, {metrics['size_mb']:.1f} MB); sigmoid(logit at token t) is "
        "the value V(s, a) of the prefix ending in that token: the probability that the frozen policy, continuing "
        "it at T=1, ends with the right answer (the `math` reward, levels 0 and 1). `value_head.json` names the "
        "policy, the reward and its levels.",
        f"- Data: {r['samples_per_problem']} T=1 samples of the frozen policy on each of {r['train_problems']} fresh "
        f"problems (levels {', '.join(f'{n} {w:.0%}' for n, w in r['level_mix'])}; {metrics['train_samples']} "
        f"samples, {metrics['train_right']} right), labelled by the `math` verifier; no task-set problem appears.",
        f"- Training: TD(λ) as in the VAS paper (Han et al. 2024): every prefix's target is the λ-return with "
        f"λ = {r['td_lambda']}, γ = {r['gamma']:g} (the paper's public trainer's values), bootstrapped from the head's "
        f"own current values, binary cross-entropy; {r['steps']} steps × {r['batch']} samples, AdamW lr {r['lr']}, "
        f"{metrics['train_s']:.0f} s. λ = 1 would regress every prefix on its sample's final label (Monte Carlo).",
        "",
        f"Held out: {r['heldout_samples']} samples on each of {r['heldout_problems']} other `arith`-level (medium) "
        f"problems ({metrics['heldout_samples']} samples, {metrics['heldout_right']} right). Each prefix is labelled by "
        "its own sample's exact outcome, whose expectation given the prefix is the true value; AUROC and Brier "
        "score of P(right) against it, next to `arith_orm`'s token-level probability (trained with the outcome "
        "label on every completion token, also a value estimate) and the Brier score of always answering the base "
        "rate:",
        "",
        "| prefixes | count | value AUROC | value Brier | `arith_orm` AUROC | `arith_orm` Brier | base-rate Brier |",
        "|---|---|---|---|---|---|---|",
        row("all", "all"),
        row("prompt", "the prompt only (nothing generated)"),
        row("inside", "inside the solution"),
        row("end", "the complete text (at `<eos>`)"),
        "",
        "At the prompt a value can only say how hard the problem is; inside the solution it can also read the "
        "lines so far. The pooled numbers mix both, as the outcome model's AUROC above does. `samplescope bench "
        "scaling --part adaptive` and the README's `vas` section measure what decoding with it buys.",
        CARD_END,
    ])


def write_card_section(card: Path, section: str) -> None:
    """Append the section to the card, or replace the one a previous run wrote."""
    text = card.read_text() if card.exists() else ""
    pattern = re.compile(re.escape(CARD_BEGIN) + r".*?" + re.escape(CARD_END), re.DOTALL)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    card.write_text(text.rstrip("\n") + "\n")


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=VALUE_DIR, help="output folder (default: the shipped head)")
    parser.add_argument("--card", type=Path, default=ASSETS / "MODEL_CARD.md")
    parser.add_argument("--no-card", action="store_true", help="leave the model card alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run (not the shipped recipe)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    recipe = Recipe(seed=args.seed)
    recipe = recipe.quick() if args.quick else recipe
    started = time.perf_counter()
    policy, tokenizer = load_hf(POLICY_DIR)

    reserved = reserved_expressions()
    heldout_problems = generate_problems(recipe.seed * 1000 + 21, "medium", recipe.heldout_problems, exclude=reserved)
    exclude = reserved | {p.expression for p in heldout_problems}
    rng = random.Random(recipe.seed * 1000 + 22)
    levels, weights = zip(*recipe.level_mix, strict=True)
    problems = []
    while len(problems) < recipe.train_problems:
        problem = generate_problem(rng, rng.choices(levels, weights=weights)[0])
        if problem.expression not in exclude:
            problems.append(problem)
    generator = torch.Generator().manual_seed(recipe.seed * 1000 + 23)
    train = labelled_samples(policy, tokenizer, problems, recipe.samples_per_problem, generator, recipe.max_new_tokens)
    heldout = labelled_samples(policy, tokenizer, heldout_problems, recipe.heldout_samples, generator,
                               recipe.max_new_tokens)
    right = sum(d["reward"] for d in train)
    log(f"{len(train)} training samples ({right:.0f} right), {len(heldout)} held out")

    from transformers import AutoConfig, LlamaForTokenClassification

    torch.manual_seed(recipe.seed + 31)
    config = AutoConfig.from_pretrained(str(POLICY_DIR), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    config.classifier_dropout = 0.0
    value = LlamaForTokenClassification.from_pretrained(str(POLICY_DIR), config=config)
    t = time.perf_counter()
    losses = fit_value(value, batches(tokenizer, train, recipe.batch, recipe.seed + 32), recipe.steps, recipe.lr,
                       recipe.td_lambda, recipe.gamma, log=log)
    train_s = time.perf_counter() - t

    orm, _ = load_hf(ORM_DIR, kind="sequence")
    heldout_metrics = evaluate(value, orm, tokenizer, heldout)
    log(f"held-out AUROC value {heldout_metrics['value']['all']['auroc']:.3f} "
        f"(arith_orm {heldout_metrics['arith_orm']['all']['auroc']:.3f}), Brier "
        f"{heldout_metrics['value']['all']['brier']:.4f} ({heldout_metrics['arith_orm']['all']['brier']:.4f})")

    args.out.mkdir(parents=True, exist_ok=True)
    value.half().save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    spec = ValueHeadSpec(policy="embedded:arith", reward="math", levels=(0.0, 1.0), td_lambda=recipe.td_lambda,
                         gamma=recipe.gamma)
    (args.out / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    metrics = {
        "recipe": asdict(recipe),
        "params": sum(p.numel() for p in value.parameters()),
        "size_mb": (args.out / "model.safetensors").stat().st_size / 1e6,
        "train_samples": len(train),
        "train_right": int(right),
        "heldout_samples": len(heldout),
        "heldout_right": int(sum(d["reward"] for d in heldout)),
        "heldout": heldout_metrics,
        "final_loss": statistics.fmean(losses[-50:]),
        "train_s": round(train_s, 1),
        "total_wall_s": round(time.perf_counter() - started, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "quick": args.quick,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if not args.no_card:
        write_card_section(args.card, render_section(metrics))
    log(f"done in {metrics['total_wall_s']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
