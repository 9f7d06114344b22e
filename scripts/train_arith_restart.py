"""Train the arith restart predictor: P(a fresh sample would beat this (partial) solution).

    python scripts/train_arith_restart.py                          # writes engines/assets/arith/restart/
    python scripts/train_arith_restart.py --quick --out /tmp/restart

The head behind ``adaptive_restart``'s ``arith`` predictor (Manvi, Singh & Ermon 2024,
arXiv:2410.02725: the policy's self-evaluation is trained on its own samples to predict
whether a restart would do better). Trained like the lab's ORM/PRM (``scripts/train_arith.py``,
whose policy and data helpers it reuses; the shipped policy, ORM and PRM are only read):

1. ``samples`` T=1 samples of the shipped policy on each of ``train_problems`` fresh problems,
   labelled by the exact final-answer check c_i;
2. the label of sample i: the leave-one-out estimate of P(a fresh sample is right and sample i
   is wrong) = (1 - c_i) · mean_{j≠i} c_j. Every token of the sample (the prompt's newline:
   the empty prefix; each completion token; the ``<eos>`` read when it is finished) carries it,
   so the BCE minimiser at a prefix is E[label | prefix] = P(restart better | prefix);
3. ``LlamaForTokenClassification`` (one label) from the policy's weights, BCE on those soft labels;
4. evaluation on held-out problems (8 samples each): at prefixes cut at 0, 25, 50, 75 and 100%
   of each completion, AUROC of q against the realised event "another sample of the problem is
   right and this one is wrong", Brier score and expected calibration error against the soft
   labels; written to ``metrics.json`` in the output folder and as a section of MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.models.arith import ASSETS, POLICY_DIR, load_hf  # noqa: E402
from engines.samplers.adaptive_restart import restart_input_ids  # noqa: E402
from engines.tasks.arith import eval_problems, generate_problem, reserved_expressions  # noqa: E402
from scripts.arith_data import pad_batch, sample_labelled  # noqa: E402
from scripts.train_arith import log, save, train_loop  # noqa: E402

CARD_HEADING = "## Restart predictor (`restart/`, `adaptive_restart`)"


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    train_problems: int = 1200
    samples: int = 4
    steps: int = 250
    batch: int = 64
    lr: float = 1e-3
    heldout_problems: int = 100
    heldout_samples: int = 8
    max_new_tokens: int = 96
    level_mix: tuple[tuple[str, float], ...] = (("easy", 0.2), ("medium", 0.5), ("hard", 0.3))

    def quick(self) -> Recipe:
        return replace(self, train_problems=100, steps=30, heldout_problems=20)


def soft_labels(correct: list[bool], per: int) -> list[float]:
    """(1 - c_i) · mean_{j≠i} c_j within each consecutive group of ``per`` samples."""
    out = []
    for start in range(0, len(correct), per):
        group = [float(c) for c in correct[start : start + per]]
        total = sum(group)
        out += [(1 - c) * (total - c) / (len(group) - 1) for c in group]
    return out


def encode(tokenizer, d: dict, label: float) -> tuple[list[int], list[float]]:
    """The finished input (prompt, completion, <eos>) with the label from the prompt's last token on."""
    ids = restart_input_ids(tokenizer, d["problem"].prompt, d["completion"], True)
    prompt_len = len(tokenizer(d["problem"].prompt, add_special_tokens=False)["input_ids"])
    return ids, [-100.0] * (prompt_len - 1) + [label] * (len(ids) - prompt_len + 1)


def batches(data: list[dict], labels: list[float], tokenizer, size: int, seed: int):
    rng = random.Random(seed)
    order = list(range(len(data)))
    while True:
        pick = rng.sample(order, size)
        encoded = [encode(tokenizer, data[i], labels[i]) for i in pick]
        ids, mask, _ = pad_batch([e[0] for e in encoded], None, tokenizer.pad_token_id)
        lab = torch.full(ids.shape, -100.0)
        for row, (_, lab_row) in enumerate(encoded):
            lab[row, : len(lab_row)] = torch.tensor(lab_row)
        yield ids, mask, lab


def loss_fn(model, batch) -> torch.Tensor:
    ids, mask, lab = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[..., 0]
    keep = lab != -100.0
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], lab[keep])


@torch.no_grad()
def predict(model, tokenizer, rows: list[list[int]]) -> list[float]:
    out: list[float] = []
    for start in range(0, len(rows), 256):
        part = rows[start : start + 256]
        ids, mask, _ = pad_batch(part, None, tokenizer.pad_token_id)
        p = torch.sigmoid(model(input_ids=ids, attention_mask=mask).logits[..., 0])
        out += [float(p[i, len(r) - 1]) for i, r in enumerate(part)]
    return out


def evaluate(model, tokenizer, data: list[dict], per: int) -> dict:
    """AUROC against the realised restart-better event, Brier and ECE against the soft labels, per cut."""
    from sklearn.metrics import roc_auc_score

    labels = soft_labels([d["correct"] for d in data], per)
    rng = random.Random(1)
    events = []
    for i, d in enumerate(data):  # a realised restart: another sample of the same problem
        group = range(i - i % per, i - i % per + per)
        j = rng.choice([k for k in group if k != i])
        events.append(int(data[j]["correct"] and not d["correct"]))
    out: dict = {}
    for cut in (0.0, 0.25, 0.5, 0.75, 1.0):
        rows = []
        for d in data:
            text = d["completion"]
            finished = cut == 1.0
            rows.append(restart_input_ids(tokenizer, d["problem"].prompt, text if finished else text[: int(cut * len(text))], finished))
        q = predict(model, tokenizer, rows)
        bins: dict[int, list[tuple[float, float]]] = {}
        for p, y in zip(q, labels, strict=True):
            bins.setdefault(min(int(p * 10), 9), []).append((p, y))
        ece = sum(abs(sum(p for p, _ in b) - sum(y for _, y in b)) for b in bins.values()) / len(q)
        out[f"{cut:.2f}"] = {
            "auroc": float(roc_auc_score(events, q)) if 0 < sum(events) < len(events) else float("nan"),
            "brier": sum((p - y) ** 2 for p, y in zip(q, labels, strict=True)) / len(q),
            "ece": ece,
            "mean_q": sum(q) / len(q),
            "mean_label": sum(labels) / len(labels),
        }
    out["events"] = sum(events)
    out["samples"] = len(data)
    return out


def card_section(metrics: dict) -> str:
    r = metrics["recipe"]
    ev = metrics["heldout"]
    rows = "\n".join(
        f"| {float(cut) * 100:.0f}% | {m['auroc']:.3f} | {m['brier']:.4f} | {m['ece']:.3f} | {m['mean_q']:.3f} | {m['mean_label']:.3f} |"
        for cut, m in ev.items() if isinstance(m, dict))
    return f"""{CARD_HEADING}

Trained by `python scripts/train_arith_restart.py` (seed {r['seed']}, CPU, {metrics['threads']} thread(s),
{metrics['total_wall_s']} s wall; the policy, ORM and PRM above are read, not retrained). Numbers from
`restart/metrics.json`.

- What it predicts: q = P(a fresh T=1 sample of the policy gets the final answer right while this
  (partial) solution's finished form does not) -- the paper's "would a restart do better" (Manvi, Singh
  & Ermon 2024, arXiv:2410.02725) under the final-answer check. `adaptive_restart` reads it at the last
  token of `prompt + text` (closed by `<eos>` when finished).
- Model: `LlamaForTokenClassification`, 1 label, from the policy's weights
  ({metrics['params']:,} parameters, {metrics['size_mb']:.1f} MB); {r['steps']} steps × {r['batch']}, lr {r['lr']}.
- Data: {r['samples']} T=1 samples on each of {r['train_problems']} fresh problems
  ({metrics['train_samples']} samples, {metrics['train_correct']} right). Label of sample i on every
  token: (1 - c_i) · mean over the problem's other samples of c_j (leave-one-out), so the BCE optimum at a
  prefix is P(restart better | prefix).
- Held out: {r['heldout_samples']} samples on each of the first {r['heldout_problems']} `arith` problems
  ({ev['samples']} samples; {ev['events']} where another sample of the problem is right and this one wrong).
  AUROC of q against that realised event; Brier and expected calibration error (10 bins) against the
  leave-one-out label, at prefixes cut at a share of each completion's characters:

| prefix | AUROC | Brier | ECE | mean q | mean label |
|---|---|---|---|---|---|
{rows}

Read the AUROC against 0.5 (no skill); the realised event is noisy even for a perfect predictor, so its
ceiling is below 1. Wall time depends on how busy the machine is (several jobs shared its 2 cores).
"""


def write_card(card: Path, section: str) -> None:
    text = card.read_text() if card.exists() else ""
    pattern = re.compile(re.escape(CARD_HEADING) + r".*?(?=\n## |\Z)", re.S)
    text = pattern.sub(lambda _: section.rstrip() + "\n", text) if CARD_HEADING in text else text.rstrip() + "\n\n" + section
    card.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS / "restart")
    parser.add_argument("--card", type=Path, default=None, help="model card to add the section to (default: next to --out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    recipe = Recipe(seed=args.seed)
    recipe = recipe.quick() if args.quick else recipe
    started = time.perf_counter()

    policy, tokenizer = load_hf(POLICY_DIR, "cpu", "causal")
    rng = random.Random(recipe.seed * 1000 + 21)
    exclude = reserved_expressions()
    levels, weights = zip(*recipe.level_mix, strict=True)
    problems = []
    while len(problems) < recipe.train_problems:
        problem = generate_problem(rng, rng.choices(levels, weights=weights)[0])
        if problem.expression not in exclude:
            problems.append(problem)
    gen = torch.Generator().manual_seed(recipe.seed * 1000 + 22)
    train = sample_labelled(policy, tokenizer, problems, recipe.samples, gen, recipe.max_new_tokens)
    labels = soft_labels([d["correct"] for d in train], recipe.samples)
    log(f"restart data: {len(train)} samples ({sum(d['correct'] for d in train)} right), {time.perf_counter() - started:.0f} s")

    from transformers import AutoConfig, LlamaForTokenClassification

    torch.manual_seed(recipe.seed + 13)
    config = AutoConfig.from_pretrained(str(POLICY_DIR), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    config.classifier_dropout = 0.0
    model = LlamaForTokenClassification.from_pretrained(str(POLICY_DIR), config=config)
    losses = train_loop(model, batches(train, labels, tokenizer, recipe.batch, recipe.seed + 14),
                        recipe.steps, recipe.lr, loss_fn, "restart")
    save(model, tokenizer, args.out)

    heldout = sample_labelled(policy, tokenizer, eval_problems("arith")[: recipe.heldout_problems],
                              recipe.heldout_samples, torch.Generator().manual_seed(recipe.seed * 1000 + 23),
                              recipe.max_new_tokens)
    metrics = {
        "recipe": asdict(recipe),
        "params": sum(p.numel() for p in model.parameters()),
        "size_mb": (args.out / "model.safetensors").stat().st_size / 1e6,
        "train_samples": len(train),
        "train_correct": sum(d["correct"] for d in train),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "heldout": evaluate(model, tokenizer, heldout, recipe.heldout_samples),
        "threads": args.threads,
        "quick": args.quick,
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_card(args.card or args.out.parent / "MODEL_CARD.md", card_section(metrics))
    log(f"done in {metrics['total_wall_s']} s: " + ", ".join(
        f"{cut} AUROC {m['auroc']:.3f} ECE {m['ece']:.3f}" for cut, m in metrics["heldout"].items() if isinstance(m, dict)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
