"""Train the ZIP-RC joint head of the reasoning lab: P(final reward, remaining tokens | prefix).

    python scripts/train_ziprc_arith.py                               # writes engines/assets/arith/ziprc/
    python scripts/train_ziprc_arith.py --quick --out /tmp/arith/ziprc  # a smoke run

ZIP-RC (Manvi et al. 2025, arXiv:2512.01457; the authors' ``src/train_ziprc_joint_head.py``
read for the recipe) trains, at every token of the policy's own rollouts, one softmax over
the joint cells (reward bin × remaining-length bin), with the cross-entropy of the cell the
rollout really reached. Here, as the ORM and PRM of ``scripts/train_arith.py`` are trained:

1. the shipped policy (``engines/assets/arith/policy``, not retrained) samples at T=1 on fresh
   problems (none of the task sets' or the held-out set's), labelled by the exact final-answer
   check (reward 0/1) and by how many tokens each sample still generated from every prefix
   (its ``<eos>`` included);
2. a ``LlamaForTokenClassification`` initialised from the policy's weights with 2 × L labels
   (one per cell) learns the cell at every position that reads a prefix (prompt's newline
   through the last token before ``<eos>``);
3. held-out prefixes of samples of other problems measure it: AUROC and calibration of
   P(right), MAE and interval coverage of the remaining length. The numbers go into
   ``ziprc.json`` next to the weights and into a section of ``MODEL_CARD.md``.

Length bins: 4 tokens wide from 1 to 64, then one bin 65..96 (the sampling cap). Arith
solutions are about 28 tokens, so linear bins keep a bin's representative value (the mean
training label in it) within 2 tokens of any length in it; the paper's doubling bins
(0-255, 256-511, ...) are for 32k-token traces where relative error is what matters.
Runs on CPU with one thread in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.models.arith import ASSETS, POLICY_DIR, load_hf  # noqa: E402
from engines.tasks.arith import generate_problem, reserved_expressions  # noqa: E402
from scripts.arith_data import sample_labelled  # noqa: E402
from scripts.train_arith import log, train_loop  # noqa: E402

EDGES = [*range(1, 66, 4), 97]  # [1,5), [5,9), ..., [61,65), [65,97)
REWARDS = [0.0, 1.0]
LEVELS = (("easy", 0.2), ("medium", 0.5), ("hard", 0.3))  # the policy's and reward models' mix
CARD_HEADING = "## ZIP-RC joint head (`ziprc/`)"


def length_bin(remaining: int) -> int:
    return min(int(np.searchsorted(EDGES, remaining, side="right")) - 1, len(EDGES) - 2)


def problems(seed: int, count: int, exclude: set[str]) -> list:
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        p = generate_problem(rng, rng.choices([n for n, _ in LEVELS], weights=[w for _, w in LEVELS])[0])
        if p.expression not in exclude:
            exclude.add(p.expression)
            out.append(p)
    return out


def encode(tokenizer, d: dict, max_new_tokens: int) -> tuple[list[int], list[int], list[int]]:
    """(ids, cell label per position or -100, remaining tokens per labelled position).

    Position prompt_len-1+t reads the prefix with t generated tokens; the sample generated
    ``total`` tokens (its ``<eos>`` included unless it hit the cap), so t runs 0..total-1."""
    prompt = tokenizer(d["problem"].prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(d["completion"], add_special_tokens=False)["input_ids"]
    total = len(completion) if len(completion) >= max_new_tokens else len(completion) + 1
    ids = prompt + completion[: total - 1]
    labels = [-100] * (len(prompt) - 1)
    remaining = [total - t for t in range(total)]
    labels += [int(d["correct"]) * (len(EDGES) - 1) + length_bin(r) for r in remaining]
    return ids, labels, remaining


def batches(tokenizer, data: list[dict], size: int, seed: int, max_new_tokens: int):
    from scripts.arith_data import pad_batch

    rng = random.Random(seed)
    encoded = [encode(tokenizer, d, max_new_tokens)[:2] for d in data]
    while True:
        part = rng.sample(encoded, size)
        yield pad_batch([e[0] for e in part], [e[1] for e in part], tokenizer.pad_token_id)


def loss_fn(model, batch):
    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def length_values(train: list[dict], tokenizer, max_new_tokens: int) -> list[float]:
    """Each bin's representative: the mean training label in it (its midpoint when empty)."""
    sums, counts = np.zeros(len(EDGES) - 1), np.zeros(len(EDGES) - 1)
    for d in train:
        for r in encode(tokenizer, d, max_new_tokens)[2]:
            sums[length_bin(r)] += r
            counts[length_bin(r)] += 1
    mids = [(a + b - 1) / 2 for a, b in zip(EDGES[:-1], EDGES[1:], strict=True)]
    return [float(s / c) if c else m for s, c, m in zip(sums, counts, mids, strict=True)]


@torch.no_grad()
def evaluate(model, tokenizer, heldout: list[dict], values: list[float], train_mean_total: float, max_new_tokens: int) -> dict:
    """Per held-out prefix: P(right) against the outcome, E[remaining] against the truth."""
    from sklearn.metrics import roc_auc_score

    from scripts.arith_data import pad_batch

    p_right, outcome, first, mean_len, truth, covered, top_bin, baseline = [], [], [], [], [], [], [], []
    lengths = np.array(values)
    for begin in range(0, len(heldout), 64):  # causal: one forward reads every prefix of a sample
        part = heldout[begin : begin + 64]
        encoded = [encode(tokenizer, d, max_new_tokens) for d in part]
        ids, mask, _ = pad_batch([e[0] for e in encoded], None, tokenizer.pad_token_id)
        probs = model(input_ids=ids, attention_mask=mask).logits.double().softmax(-1)
        for row, (d, (ids_row, _, remaining)) in enumerate(zip(part, encoded, strict=True)):
            read = len(ids_row) - len(remaining)  # position of t = 0: the prompt's last token
            for t, r in enumerate(remaining):
                joint = probs[row, read + t].reshape(len(REWARDS), -1).numpy()
                p_right.append(float(joint[1].sum()))
                outcome.append(int(d["correct"]))
                first.append(t == 0)
                pmf = joint.sum(0)
                mean_len.append(float(pmf @ lengths))
                truth.append(r)
                cdf = np.cumsum(pmf)
                lo, hi = int(np.searchsorted(cdf, 0.1)), int(np.searchsorted(cdf, 0.9))
                covered.append(lo <= length_bin(r) <= hi)
                top_bin.append(int(pmf.argmax()) == length_bin(r))
                baseline.append(max(train_mean_total - t, 1.0))
    p, y, first_mask = np.array(p_right), np.array(outcome), np.array(first)
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, edges) - 1, 0, 9)
    ece = sum(abs(p[which == b].mean() - y[which == b].mean()) * (which == b).mean() for b in range(10) if (which == b).any())
    truth_a = np.array(truth, dtype=float)
    return {
        "heldout_samples": len(heldout),
        "heldout_right": int(sum(d["correct"] for d in heldout)),
        "prefixes": len(p),
        "reward_auroc": float(roc_auc_score(y, p)),
        "reward_auroc_at_prompt": float(roc_auc_score(y[first_mask], p[first_mask])),
        "reward_auroc_after_prompt": float(roc_auc_score(y[~first_mask], p[~first_mask])),
        "reward_ece": float(ece),
        "mean_p_right": float(p.mean()),
        "share_right": float(y.mean()),
        "length_mae": float(np.abs(np.array(mean_len) - truth_a).mean()),
        "length_mae_baseline": float(np.abs(np.array(baseline) - truth_a).mean()),
        "length_interval80_coverage": float(np.mean(covered)),
        "length_top_bin_accuracy": float(np.mean(top_bin)),
    }


def render_section(m: dict, values: list[float]) -> str:
    e = m["eval"]
    return f"""{CARD_HEADING}

Trained by `python scripts/train_ziprc_arith.py` (seed {m['seed']}, CPU, {m['threads']} thread; {m['cpu_seconds']:.0f} s of
CPU, {m['seconds']:.0f} s wall on a shared machine) for the `zip_rc` sampler (ZIP-RC, Manvi et al. 2025, arXiv:2512.01457). The policy is the shipped
`policy/`, not retrained. Its own T=1 samples on {m['train_problems']} fresh problems ({m['train_samples']} samples,
{m['train_right']} right; the task sets' problems excluded) give, at every prefix, the cell (final answer right or
not) × (tokens still generated, `<eos>` included) that the sample really reached.

| folder | architecture | training |
|---|---|---|
| `ziprc/` | `LlamaForTokenClassification`, {2 * (len(EDGES) - 1)} labels = 2 rewards × {len(EDGES) - 1} length bins, one softmax over the joint, from the policy's weights; read at the prefix's last token | {m['steps']} steps × {m['batch']} samples, cross-entropy of the reached cell at every prefix, AdamW lr {m['lr']}; {m['train_cpu_seconds']:.0f} s CPU |

Length bins: 4 tokens wide from 1 to 64, then 65-96; each bin stands for the mean training length in it
({', '.join(f'{v:.1f}' for v in values[:3])}, ..., {values[-1]:.1f}). Arith solutions are about 28 tokens, so linear
bins keep any length within 2 tokens of its bin's value; the paper's doubling bins suit 32k-token traces.

On {e['prefixes']} held-out prefixes ({e['heldout_samples']} samples of other problems, {e['heldout_right']} right):
- P(right) = the joint's reward marginal: AUROC **{e['reward_auroc']:.3f}** against the final answer
  ({e['reward_auroc_at_prompt']:.3f} read at the prompt alone, {e['reward_auroc_after_prompt']:.3f} after it: as for
  `orm/`, most of the skill is knowing which problems are hard, which says when to stop but not which of one
  problem's samples to keep);
  expected calibration error {e['reward_ece']:.3f} (10 bins; mean P(right) {e['mean_p_right']:.3f}, share right
  {e['share_right']:.3f}).
- Remaining tokens: MAE of E[remaining] **{e['length_mae']:.2f}** tokens (a baseline that knows only the mean
  training length and the tokens so far: {e['length_mae_baseline']:.2f}); the true length falls in the central
  80% interval of the predicted law {e['length_interval80_coverage']:.1%} of the time (bins are discrete, so
  above 80% is expected); the most likely bin is right {e['length_top_bin_accuracy']:.1%} of the time.

Like `orm/`, it is a second forward over the prefix, not reserved logits of the policy (the paper's zero
overhead): the sampler meters every prefix it reads as a reward call.
"""


def write_card(card: Path, section: str) -> None:
    """Replace this script's section of the card (or append it): the rest is train_arith.py's."""
    text = card.read_text() if card.exists() else ""
    if CARD_HEADING in text:
        head, _, rest = text.partition(CARD_HEADING)
        tail = rest[rest.find("\n## ") + 1:] if "\n## " in rest else ""
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    card.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ASSETS / "ziprc", help="output folder (default: the shipped asset)")
    parser.add_argument("--card", type=Path, default=None, help="model card to update (default: MODEL_CARD.md next to --out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run (not the shipped recipe)")
    parser.add_argument("--card-only", action="store_true", help="re-render the card section from --out's ziprc.json")
    args = parser.parse_args(argv)
    if args.card_only:
        saved = json.loads((args.out / "ziprc.json").read_text())
        write_card(args.card or args.out.parent / "MODEL_CARD.md", render_section(saved["metrics"], saved["length_values"]))
        return 0
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    started, cpu_started = time.perf_counter(), time.process_time()
    train_n, heldout_n, per, steps, batch, lr, cap = (1000, 200, 4, 300, 64, 1e-3, 96)
    if args.quick:
        train_n, heldout_n, steps = 60, 30, 20

    policy, tokenizer = load_hf(POLICY_DIR)
    exclude = set(reserved_expressions())
    train_problems = problems(args.seed * 1000 + 21, train_n, exclude)
    heldout_problems = problems(args.seed * 1000 + 22, heldout_n, exclude)
    generator = torch.Generator().manual_seed(args.seed * 1000 + 23)
    train = sample_labelled(policy, tokenizer, train_problems, per, generator, cap)
    heldout = sample_labelled(policy, tokenizer, heldout_problems, 2, generator, cap)
    log(f"data: {len(train)} samples ({sum(d['correct'] for d in train)} right), {len(heldout)} held out")

    from transformers import AutoConfig, LlamaForTokenClassification

    torch.manual_seed(args.seed + 31)
    config = AutoConfig.from_pretrained(str(POLICY_DIR), num_labels=len(REWARDS) * (len(EDGES) - 1),
                                        pad_token_id=tokenizer.pad_token_id)
    config.classifier_dropout = 0.0
    model = LlamaForTokenClassification.from_pretrained(str(POLICY_DIR), config=config)
    t, cpu_t = time.perf_counter(), time.process_time()
    losses = train_loop(model, batches(tokenizer, train, batch, args.seed + 32, cap), steps, lr, loss_fn, "ziprc")
    train_seconds, train_cpu = time.perf_counter() - t, time.process_time() - cpu_t
    values = length_values(train, tokenizer, cap)
    result = evaluate(model, tokenizer, heldout, values,
                      float(np.mean([encode(tokenizer, d, cap)[2][0] for d in train])), cap)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    metrics = {"seed": args.seed, "threads": args.threads, "quick": args.quick, "train_problems": train_n,
               "train_samples": len(train), "train_right": int(sum(d["correct"] for d in train)), "steps": steps,
               "batch": batch, "lr": lr, "final_loss": float(np.mean(losses[-50:])), "train_seconds": train_seconds,
               "train_cpu_seconds": train_cpu, "seconds": time.perf_counter() - started,
               "cpu_seconds": time.process_time() - cpu_started, "eval": result}
    (args.out / "ziprc.json").write_text(json.dumps(
        {"reward_values": REWARDS, "length_edges": EDGES, "length_values": values, "metrics": metrics}, indent=2) + "\n")
    write_card(args.card or args.out.parent / "MODEL_CARD.md", render_section(metrics, values))
    log(f"reward AUROC {result['reward_auroc']:.3f}, ECE {result['reward_ece']:.3f}; length MAE {result['length_mae']:.2f} "
        f"(baseline {result['length_mae_baseline']:.2f}); {metrics['cpu_seconds']:.0f} s CPU, "
        f"{metrics['seconds']:.0f} s wall; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
