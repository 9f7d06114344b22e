"""From stored votes to a learned reward: the one place the CLI and the Data tab train.

:func:`train_reward` is a generator: it checks everything first (name free,
votes usable, base model loads), then yields :class:`engines.rewards.bt_fit.Progress`
while it cross-validates and fits, and finally a :class:`Trained` summary after
the reward folder (``head.safetensors`` + ``card.json``) is written in one
rename. Bad input raises a one-line error and writes nothing.

Votes used: current votes (skips never); ``a``/``b`` are wins, ``tie`` a half
win each, ``both_bad`` is excluded (it says both are bad, not which is
better), and votes on side-swapped repeats are left out (they duplicate the
original pair; they measure consistency). ``min_agreement`` drops annotators
whose agreement with the others (or accuracy on gold pairs, where they voted
on any) is below it; the summary says how many votes that dropped.

``outside_option=True`` also reads the ``both_bad`` votes: the head is then fitted
jointly with an outside option's utility τ by the choice model of
:mod:`engines.rewards.outside_option` (Rho 2025), and the card's ``outside_option``
carries τ, or, with fewer "both bad" votes than its stated minimum, no τ and why; the
cross-validation metrics stay those of the Bradley-Terry fit on the a/b/tie votes.

Baselines on the same votes: each stored reward's agreement
(``storage.stats.reward_agreement``) and the annotators' agreement with each
other on comparisons several of them labelled (the ceiling a reward can reach).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.workflows.store import rewards_home
from engines.errors import ConfigError
from engines.models.diffusion import image_from_data_uri
from engines.rewards import RewardEnv, build_reward
from engines.rewards.base import Reward
from engines.rewards.bt_fit import (
    Accuracy,
    FitConfig,
    PairData,
    Progress,
    TrainResult,
    check_trainable,
    train,
)
from engines.rewards.learned import (
    CARD,
    check_name,
    featuriser,
    image_base,
    save_head,
)
from engines.rewards.outside_option import MIN_BOTH_BAD, fit_outside_option
from engines.task import Task
from storage.quality import quality_summary
from storage.records import vote_records
from storage.stats import reward_agreement

FILTER_KEYS = ("annotator", "strategy", "model", "sampler", "reward", "prompt")
OUTCOME_Y = {"a": 1.0, "b": 0.0, "tie": 0.5}
DEFAULT_TEXT_BASE = "embedded:smollm2"
DEFAULT_IMAGE_BASE = "embedded:digits"


@dataclass(frozen=True)
class Example:
    prompt: str
    a: str  # text, or a PNG data URI for images
    b: str
    y: float
    outcome: str
    annotator: str
    comparison_id: int


@dataclass
class Trained:
    name: str
    folder: Path
    card: dict[str, Any]


def parse_filter(spec: str | None) -> dict[str, str]:
    """``KEY=VALUE[,KEY=VALUE]`` over annotator, strategy, model, sampler, reward, prompt (substring)."""
    out: dict[str, str] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in FILTER_KEYS:
            raise ConfigError(f"vote filter takes KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}; got {item.strip()!r}")
        out[key] = value.strip()
    return out


def matches(record: Any, wanted: dict[str, str]) -> bool:
    for key, value in wanted.items():
        if key == "annotator" and record.annotator != value:
            return False
        if key == "strategy" and record.strategy != value:
            return False
        if key == "prompt" and value not in record.prompt:
            return False
        if key in ("model", "sampler") and value not in (getattr(record.a, key), getattr(record.b, key)):
            return False
        if key == "reward" and value not in (record.a.reward_name, record.b.reward_name):
            return False
    return True


def select_votes(
    records: Sequence[Any], quality: dict[str, Any], *, votes: str | None = None, min_agreement: float | None = None,
    both_bad: bool = False,
) -> tuple[list[Any], dict[str, Any]]:
    """The records to train on and what was left out (counts)."""
    wanted = parse_filter(votes)
    repeats = set(quality.get("repeat_ids", ()))
    chosen = [r for r in records if matches(r, wanted)]
    dropped_annotators: list[str] = []
    if min_agreement is not None:
        if not 0 <= min_agreement <= 1:
            raise ConfigError(f"min agreement must be between 0 and 1, got {min_agreement}")
        for row in quality.get("annotators", []):
            score = row.get("gold_accuracy") if row.get("gold_accuracy") is not None else row.get("agreement")
            if score is not None and score < min_agreement:
                dropped_annotators.append(row["annotator"])
    by_dropped = [r for r in chosen if r.annotator in dropped_annotators]
    kept = [r for r in chosen if r.annotator not in dropped_annotators]
    readable = (*OUTCOME_Y, "both_bad") if both_bad else tuple(OUTCOME_Y)
    usable = [r for r in kept if r.outcome in readable and r.comparison_id not in repeats]
    counts = {
        "matched": len(chosen),
        "used": len(usable),
        "decisive": sum(r.outcome in ("a", "b") for r in usable),
        "ties": sum(r.outcome == "tie" for r in usable),
        "both_bad_excluded": 0 if both_bad else sum(r.outcome == "both_bad" for r in kept),
        "both_bad_used": sum(r.outcome == "both_bad" for r in usable),
        "repeats_excluded": sum(r.comparison_id in repeats for r in kept),
        "dropped_annotators": dropped_annotators,
        "dropped_votes": len(by_dropped),
        "filter": votes or "",
        "min_agreement": min_agreement,
    }
    return usable, counts


def featurise(examples: Sequence[Example], features: Any, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every example's two candidates (each distinct input computed once)."""
    keys: dict[tuple[str, str], int] = {}
    for ex in examples:
        for body in (ex.a, ex.b):
            keys.setdefault((ex.prompt if modality == "text" else "", body), len(keys))
    items = list(keys)
    if modality == "text":
        rows = [features([p for p, _ in items[i : i + 64]], [t for _, t in items[i : i + 64]]) for i in range(0, len(items), 64)]
    else:
        with torch.no_grad():
            rows = [features(torch.stack([image_from_data_uri(u) for _, u in items[i : i + 64]])) for i in range(0, len(items), 64)]
    table = torch.cat(rows).float()
    ia = [keys[(ex.prompt if modality == "text" else "", ex.a)] for ex in examples]
    ib = [keys[(ex.prompt if modality == "text" else "", ex.b)] for ex in examples]
    return table[ia], table[ib]


def ceiling(records: Sequence[Any]) -> dict[str, Any]:
    """How often two annotators agree on a comparison both voted decisively on (all pairs of votes)."""

    by_comparison: dict[int, list[str]] = {}
    for r in records:
        if r.outcome in ("a", "b"):
            by_comparison.setdefault(r.comparison_id, []).append(r.outcome)
    agree = pairs = 0
    for outcomes in by_comparison.values():
        a, b = outcomes.count("a"), outcomes.count("b")
        agree += a * (a - 1) // 2 + b * (b - 1) // 2
        pairs += len(outcomes) * (len(outcomes) - 1) // 2

    return asdict(Accuracy.of(agree, pairs))


def train_reward(
    db: Any,
    name: str,
    *,
    votes: str | None = None,
    base: str | None = None,
    hidden: int = 0,
    group_by: str = "prompt",
    min_agreement: float | None = None,
    config: FitConfig | None = None,
    load_model: Callable[..., Any] | None = None,
    outside_option: bool = False,
) -> Iterator[Progress | Trained]:
    """Train ``learned:NAME`` on the stored votes (see the module docstring)."""

    check_name(name)
    folder = rewards_home() / name
    if folder.exists():
        raise ConfigError(f"a learned reward named {name!r} exists already ({folder}); pick another name")
    if group_by not in ("prompt", "annotator"):
        raise ConfigError(f"group votes by prompt or annotator, not {group_by!r}")
    config = config or FitConfig(hidden=hidden)
    records = db.read(vote_records)
    quality = db.read(quality_summary)
    usable, counts = select_votes(records, quality, votes=votes, min_agreement=min_agreement, both_bad=outside_option)
    images = [bool(r.a.image and r.b.image) for r in usable]
    modality = "image" if usable and all(images) else "text"
    if usable and any(images) and not all(images):
        raise ConfigError("the votes mix image and text pairs; pick one kind with --votes (e.g. model=embedded:digits)")
    examples = [
        Example(
            prompt=r.prompt,
            a=r.a.image if modality == "image" else r.a.text,
            b=r.b.image if modality == "image" else r.b.text,
            y=OUTCOME_Y.get(r.outcome, 0.5),  # both_bad (outside option only) is not a pair outcome
            outcome=r.outcome,
            annotator=r.annotator,
            comparison_id=r.comparison_id,
        )
        for r in usable
    ]
    paired = [i for i, ex in enumerate(examples) if ex.outcome in OUTCOME_Y]
    groups = np.array([examples[i].prompt if group_by == "prompt" else examples[i].annotator for i in paired], dtype=object)
    y = torch.tensor([examples[i].y for i in paired], dtype=torch.float32)
    # the cheap checks before any model is loaded
    check_trainable(PairData(torch.zeros(len(y), 1), torch.zeros(len(y), 1), y, groups), [examples[i].outcome for i in paired])
    base = (base or (DEFAULT_IMAGE_BASE if modality == "image" else DEFAULT_TEXT_BASE)).strip()
    if image_base(base) != (modality == "image"):
        raise ConfigError(f"base model {base!r} does not take {modality} candidates")
    features = featuriser(base, load_model)
    xa_all, xb_all = featurise(examples, features, modality)
    xa, xb = xa_all[paired], xb_all[paired]
    data = PairData(xa, xb, y, groups)
    result: TrainResult | None = None
    for item in train(data, config):
        if isinstance(item, TrainResult):
            result = item
        else:
            yield item
    assert result is not None
    head, outside = result.head, None
    if outside_option:
        head, outside = fit_outside(name, xa_all, xb_all, [ex.outcome for ex in examples], config, result.head)
    card = {
        "name": name,
        "kind": "head",
        "modality": modality,
        "base": base,
        "featuriser": features.name,
        "head": {"input_dim": int(xa.shape[1]), "hidden": config.hidden},
        "ties": "half-win (Bradley-Terry with y = 1/2)" if config.ties == "half"
        else "Davidson (1970) tie model, nu fitted (metrics.davidson_nu)",
        "votes": counts,
        "cross_validation": {"grouped_by": group_by, "folds": len(result.folds)},
        "fit": {"epochs": config.epochs, "lr": config.lr, "l2": config.l2, "seed": config.seed},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": {
            **result.metrics(),
            "baselines": reward_agreement(usable),
            "annotator_ceiling": ceiling(usable),
        },
    }
    if outside is not None:
        card["outside_option"] = outside
    write_folder(folder, card, lambda tmp: save_head(head, tmp))
    yield Trained(name=name, folder=folder, card=card)


def fit_outside(name: str, xa: torch.Tensor, xb: torch.Tensor, outcomes: list[str], config: FitConfig,
                bt_head: Any) -> tuple[Any, dict[str, Any]]:
    """The head to save and the card's ``outside_option``: the choice-model head and τ when the
    votes hold at least MIN_BOTH_BAD "both bad" ones, else the Bradley-Terry head, no τ, and why."""
    both_bad = outcomes.count("both_bad")
    entry: dict[str, Any] = {"model": "multinomial logit over (a, b, outside option), Rho 2025 (arXiv:2510.04087)",
                             "both_bad_votes": both_bad, "minimum": MIN_BOTH_BAD, "tau": None}
    if both_bad < MIN_BOTH_BAD:
        entry["message"] = (f"learned:{name} has {both_bad} 'both bad' votes, below the minimum of {MIN_BOTH_BAD}: "
                            "no outside option (mini_n falls back to its fixed threshold)")
        return bt_head, entry
    fit = fit_outside_option(xa, xb, outcomes, hidden=config.hidden, lr=config.lr, l2=config.l2, seed=config.seed)
    entry.update(tau=fit.tau, nll=fit.nll, both_bad_rate=fit.both_bad_rate, predicted_both_bad_rate=fit.predicted_both_bad_rate)
    return fit.head, entry


def write_folder(folder: Path, card: dict[str, Any], write_weights: Callable[[Path], None]) -> None:
    """Write weights and card into a temp folder beside ``folder``, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write_weights(tmp)
        (tmp / CARD).write_text(json.dumps(card, indent=2, default=str))
        if folder.exists():
            raise ConfigError(f"a learned reward named {folder.name!r} appeared meanwhile; pick another name")
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def run_training(db: Any, name: str, **kwargs: Any) -> Trained:
    """:func:`train_reward` to the end (tests, scripts)."""
    out = None
    for item in train_reward(db, name, **kwargs):
        if isinstance(item, Trained):
            out = item
    assert out is not None
    return out


def reward_scorer(spec: str, load_model: Callable[..., Any] | None = None) -> Callable[[str, Sequence[tuple[str, str | None]]], list[float]]:
    """A ``storage.pairs`` scorer from a reward spec (``uncertain:NAME`` uses ``learned:NAME``)."""

    reward = build_reward(spec, RewardEnv(load_model=load_model, rewards_folder=rewards_home()))
    if not isinstance(reward, Reward):
        raise ConfigError(f"{spec!r} is a {reward.kind} reward; uncertain pairs need an outcome reward")

    def score(prompt: str, contents: Sequence[tuple[str, str | None]]) -> list[float]:
        if reward.modality == "image":
            if not all(image for _, image in contents):
                raise ConfigError(f"{spec} scores images, and these candidates have none")
            return reward.score(Task(prompt=prompt), torch.stack([image_from_data_uri(image) for _, image in contents]))
        return reward.score(Task(prompt=prompt), [text for text, _ in contents])

    return score
