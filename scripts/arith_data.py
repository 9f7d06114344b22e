"""Data plumbing for ``scripts/train_arith.py``: padding, the policy's labelled samples,
the reward models' token labels, their losses and batched scoring.

Label conventions (the exact checks live in :mod:`engines.tasks.arith`):

- outcome model: the final-answer label (``is_correct``) on every completion token and on
  the ``<eos>`` that inference reads -- token-level outcome supervision as in Cobbe et al.
  2021, "Training Verifiers to Solve Math Word Problems";
- process model: prefix validity (``on_track``: can the text still become a fully valid
  solution?) on every token -- the Math-Shepherd label with a perfect completer -- so each
  step's newline, where inference reads, carries that step's ``arith_steps`` label.
"""

from __future__ import annotations

import random

import torch

from engines.models.arith import sample_completions
from engines.rewards.arith import orm_input_ids, prm_input_ids
from engines.tasks.arith import check_steps, is_correct, on_track, split_steps


def pad_batch(rows: list[list[int]], labels: list[list[int]] | None, pad: int):
    """Right-padded (ids, attention mask, labels or None); label padding is -100."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), -100, dtype=torch.long) if labels is not None else None
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        if lab is not None:
            lab[i, : len(row)] = torch.tensor(labels[i])
    return ids, mask, lab


def sample_labelled(model, tokenizer, problems, samples: int, generator, max_new_tokens: int) -> list[dict]:
    """``samples`` T=1 completions per problem (consecutive), with their exact labels."""
    prompts = [p.prompt for p in problems for _ in range(samples)]
    owners = [p for p in problems for _ in range(samples)]
    completions = sample_completions(
        model, tokenizer, prompts, temperature=1.0, generator=generator, max_new_tokens=max_new_tokens
    )
    out = []
    for problem, completion in zip(owners, completions, strict=True):
        steps = split_steps(completion)
        out.append(
            {
                "problem": problem,
                "completion": completion,
                "correct": is_correct(completion, problem.answer),
                "steps": steps,
                "step_labels": check_steps(problem, steps),
            }
        )
    return out


def _prompt_len(tokenizer, prompt: str) -> int:
    return len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


def orm_encode(tokenizer, d: dict) -> tuple[list[int], list[int], list[int]]:
    """(ids, labels, [read position]): the outcome label on every completion token and <eos>."""
    ids = orm_input_ids(tokenizer, d["problem"].prompt, d["completion"])
    prompt_len = _prompt_len(tokenizer, d["problem"].prompt)
    return ids, [-100] * prompt_len + [int(d["correct"])] * (len(ids) - prompt_len), [len(ids) - 1]


def prm_encode(tokenizer, d: dict) -> tuple[list[int], list[int], list[int]]:
    """(ids, labels, step read positions): ``on_track`` on every token; the prompt's newline
    is labelled 1 (the empty prefix is on track, and an empty step is read there)."""
    prompt = d["problem"].prompt
    ids, positions = prm_input_ids(tokenizer, prompt, d["steps"])
    prompt_len = _prompt_len(tokenizer, prompt)
    track = on_track(d["problem"], "".join(step + "\n" for step in d["steps"]))
    if len(track) != len(ids) - prompt_len:
        raise ValueError("the character tokenizer must give one token per character")
    return ids, [-100] * (prompt_len - 1) + [1] + [int(x) for x in track], positions


def dense_batches(encode, data: list[dict], tokenizer, groups: int, per_group: int, seed: int):
    """Endless batches of ``groups`` problems with their ``per_group`` samples each
    (``data`` holds each problem's samples consecutively)."""
    rng = random.Random(seed)
    blocks = [data[i : i + per_group] for i in range(0, len(data), per_group)]
    while True:
        encoded = [encode(tokenizer, d) for block in rng.sample(blocks, groups) for d in block]
        ids, mask, labels = pad_batch([e[0] for e in encoded], [e[1] for e in encoded], tokenizer.pad_token_id)
        read = torch.zeros_like(mask, dtype=torch.bool)
        for row, (_, _, positions) in enumerate(encoded):
            read[row, positions] = True
        yield ids, mask, labels, read, torch.arange(groups).repeat_interleave(per_group)


def token_logits(model, ids, mask) -> torch.Tensor:
    """[B, T] logits of the one-label head at every position (a sequence head pools only the last)."""
    if type(model).__name__.endswith("ForSequenceClassification"):
        return model.score(model.model(input_ids=ids, attention_mask=mask).last_hidden_state)[..., 0]
    return model(input_ids=ids, attention_mask=mask).logits[..., 0]


def dense_loss(model, batch, pairwise: bool = False) -> torch.Tensor:
    """BCE on every labelled token, plus BCE on the positions inference reads, plus (``pairwise``)
    a Bradley-Terry term -log σ(s_right - s_wrong) over every right/wrong pair of samples of one
    problem: best-of-N only needs the order within a problem, and such pairs carry nothing that
    merely predicts how hard a problem is."""
    ids, mask, labels, read, group = batch
    logits = token_logits(model, ids, mask)
    keep = labels != -100
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    loss = bce(logits[keep], labels[keep].float()) + bce(logits[read], labels[read].float())
    if pairwise:
        score, right = logits[read], labels[read] == 1  # one read position per sample
        pairs = (group[:, None] == group[None, :]) & right[:, None] & ~right[None, :]
        if pairs.any():
            loss = loss + torch.nn.functional.softplus(-(score[:, None] - score[None, :])[pairs]).mean()
    return loss


@torch.no_grad()
def orm_scores(model, tokenizer, data: list[dict]) -> list[float]:
    out: list[float] = []
    for start in range(0, len(data), 256):
        rows = [orm_encode(tokenizer, d)[0] for d in data[start : start + 256]]
        ids, mask, _ = pad_batch(rows, None, tokenizer.pad_token_id)
        out += model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    return out


@torch.no_grad()
def prm_step_predictions(model, tokenizer, data: list[dict]) -> tuple[list[float], list[int]]:
    """Per step of every sample with steps: (P(on track) at its newline, its exact label)."""
    probs: list[float] = []
    labels: list[int] = []
    usable = [d for d in data if d["steps"]]
    for start in range(0, len(usable), 256):
        encoded = [prm_encode(tokenizer, d) for d in usable[start : start + 256]]
        ids, mask, _ = pad_batch([e[0] for e in encoded], None, tokenizer.pad_token_id)
        p = torch.sigmoid(model(input_ids=ids, attention_mask=mask).logits[..., 0])
        for row, (_, lab, positions) in enumerate(encoded):
            probs += [float(p[row, i]) for i in positions]
            labels += [lab[i] for i in positions]
    return probs, labels


@torch.no_grad()
def policy_logprobs(model, tokenizer, data: list[dict]) -> list[float]:
    """log p(completion + <eos> | prompt) under the policy: a reference ranking for the card."""
    out: list[float] = []
    for start in range(0, len(data), 256):
        part = data[start : start + 256]
        rows = [orm_encode(tokenizer, d)[0] for d in part]
        ids, mask, _ = pad_batch(rows, None, tokenizer.pad_token_id)
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
        token_lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
        for row, d in enumerate(part):
            first = _prompt_len(tokenizer, d["problem"].prompt) - 1
            out.append(float(token_lp[row, first : len(rows[row]) - 1].sum()))
    return out
