"""Training the rewards of ``engines.rewards.pair_learners`` into ``learned:NAME`` folders (CLI: ``samplescope
reward learn METHOD``). Everything is checked before any model loads; the folder is written in one rename.

- ``west-of-n``: the stored text votes (as ``reward train`` selects them) are the human pairs; each voted
  prompt gets a pool of ``pool_n`` samples from ``pool_model`` (default: the base model); ``rounds`` of
  best-vs-worst self-training (``pick="random"``: the random-pair control, kept for comparisons).
- ``odin``: the stored text votes, length = the base model's token count; the content head is saved.
- ``gan-rm``: ``targets`` is a JSONL/CSV/Parquet file of (prompt, response) rows, the few hundred samples
  of what good looks like; the model outputs are ``pool_n`` samples per target prompt from ``pool_model``.
- ``par``: ``of`` is the reward to shape; ``references`` an optional file of (prompt, response) rows, and
  with ``answer_as_reference`` the task's reference answer stands in where a prompt has none stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from app.workflows.reward_training import (
    DEFAULT_TEXT_BASE,
    OUTCOME_Y,
    Example,
    Trained,
    featurise,
    select_votes,
    write_folder,
)
from app.workflows.store import rewards_home
from engines.errors import ConfigError
from engines.rewards.bt_fit import FitConfig, PairData, check_trainable
from engines.rewards.learned import CARD, TextFeatures, check_name, featuriser, image_base, save_head
from engines.task import Task
from storage.quality import quality_summary
from storage.records import vote_records

METHODS = ("west-of-n", "odin", "gan-rm", "par")


def _free_folder(name: str):
    check_name(name)
    folder = rewards_home() / name
    if folder.exists():
        raise ConfigError(f"a learned reward named {name!r} exists already ({folder}); pick another name")
    return folder


def _text_votes(db: Any, votes: str | None, min_agreement: float | None) -> tuple[list[Example], dict[str, Any]]:
    usable, counts = select_votes(db.read(vote_records), db.read(quality_summary), votes=votes, min_agreement=min_agreement)
    if any(r.a.image or r.b.image for r in usable):
        raise ConfigError("this method learns from text votes; pick text pairs with --votes (e.g. model=NAME)")
    examples = [Example(r.prompt, r.a.text, r.b.text, OUTCOME_Y[r.outcome], r.outcome, r.annotator, r.comparison_id)
                for r in usable]
    y = torch.tensor([ex.y for ex in examples])
    check_trainable(PairData(torch.zeros(len(y), 1), torch.zeros(len(y), 1), y, np.zeros(len(y), dtype=object)),
                    [ex.outcome for ex in examples])
    return examples, counts


def _pairs_file(path: str | None, what: str) -> dict[str, list[str]]:
    """prompt -> responses from a file with ``prompt`` and ``response`` columns."""
    from engines.prompts import read_rows

    if not path:
        return {}
    out: dict[str, list[str]] = {}
    for i, row in enumerate(read_rows(path)):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise ConfigError(f"{what} row {i + 1}: needs text columns 'prompt' and 'response'")
        out.setdefault(row["prompt"], []).append(row["response"])
    return out


def _sample(model: Any, prompts: Sequence[str], n: int, seed: int) -> dict[str, list[str]]:
    from engines.models.base import SamplingParams

    rng = torch.Generator().manual_seed(seed)
    params = SamplingParams(max_new_tokens=64)
    out: dict[str, list[str]] = {}
    for start in range(0, len(prompts), 32):  # one batched call per 32 prompts
        part = list(prompts[start : start + 32])
        rows = model.sample([model.encode_task(Task(prompt=p)) for p in part], params, n=n, rng=rng)
        out.update({p: [g.text for g in row] for p, row in zip(part, rows, strict=True)})
    return out


def learn_reward(db: Any, method: str, name: str, *, base: str | None = None, votes: str | None = None,
                 min_agreement: float | None = None, pool_model: str | None = None, pool_n: int = 16, rounds: int = 2,
                 pick: str = "west", targets: str | None = None, of: str | None = None, references: str | None = None,
                 answer_as_reference: bool = False, seed: int = 0,
                 load_model: Callable[..., Any] | None = None) -> Trained:
    """Train ``learned:NAME`` by ``method`` (see the module docstring); bad input raises one line, writes nothing."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    folder = _free_folder(name)
    if pool_n < 2 or rounds < 1:
        raise ConfigError(f"pools need >= 2 samples and West-of-N >= 1 round, got {pool_n} and {rounds}")
    card: dict[str, Any] = {"name": name, "modality": "text", "method": method,
                            "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    if method == "par":
        if not of:
            raise ConfigError("PAR shapes another reward: give it with --of SPEC")
        refs = _pairs_file(references, "references")
        if not refs and not answer_as_reference:
            raise ConfigError("PAR needs references: --references FILE (prompt, response rows) or --answer-as-reference")
        card.update(kind="par", of=of, references=refs, answer_as_reference=answer_as_reference,
                    paper="Fu et al. 2025, Reward Shaping to Mitigate Reward Hacking in RLHF (arXiv:2502.18770)")
        from engines.rewards import RewardEnv
        from engines.rewards.pair_learners import load_par

        load_par(card, f"learned:{name}", RewardEnv(load_model=load_model, rewards_folder=rewards_home()))  # checks `of`
        write_folder(folder, card, lambda tmp: None)
        return Trained(name=name, folder=folder, card=card)

    from engines.rewards import pair_learners as pl

    base = (base or DEFAULT_TEXT_BASE).strip()
    if image_base(base):
        raise ConfigError(f"{method} learns text rewards here; {base!r} is an image base")
    target_rows = _pairs_file(targets, "targets") if method == "gan-rm" else {}
    if method == "gan-rm" and not target_rows:
        raise ConfigError("GAN-RM needs target samples: --targets FILE with prompt and response columns")
    examples, counts = _text_votes(db, votes, min_agreement) if method in ("west-of-n", "odin") else ([], {})
    features = featuriser(base, load_model)
    assert isinstance(features, TextFeatures)
    config = FitConfig(seed=seed)
    if method == "west-of-n":
        xa, xb = featurise(examples, features, "text")
        human = PairData(xa, xb, torch.tensor([ex.y for ex in examples]), np.array([ex.prompt for ex in examples], dtype=object))
        model = features.model if not pool_model else (load_model or _loader())(pool_model)
        pools = _sample(model, sorted({ex.prompt for ex in examples}), pool_n, seed)
        pool_x = list(torch.split(_embed(features, pools), [len(t) for t in pools.values()]))
        head, synthetic = pl.west_of_n(human, pool_x, rounds=rounds, pick=pick, config=config, seed=seed)
        card.update(votes=counts, synthetic_pairs=synthetic, pick=pick, pool={"model": pool_model or base, "n": pool_n},
                    paper="Pace et al. 2024, West-of-N (arXiv:2401.12086)")
    elif method == "odin":
        xa, xb = featurise(examples, features, "text")
        data = PairData(xa, xb, torch.tensor([ex.y for ex in examples]), np.zeros(len(examples), dtype=object))
        lengths = [torch.tensor([float(len(features.model.encode(getattr(ex, side)))) for ex in examples]) for side in ("a", "b")]
        head, size = pl.fit_odin(data, *lengths, seed=seed)
        x, length = torch.cat([xa, xb]), torch.cat(lengths)
        with torch.no_grad():
            card.update(votes=counts, metrics={"pearson_content_length": float(pl.pearson(head(x), length)),
                                               "pearson_length_head_length": float(pl.pearson(size(x), length))},
                        paper="Chen et al. 2024, ODIN (arXiv:2402.07319)")
    else:
        model = features.model if not pool_model else (load_model or _loader())(pool_model)
        outputs = _sample(model, sorted(target_rows), pool_n, seed)
        target, generated = _embed(features, target_rows), _embed(features, outputs)
        head = pl.fit_gan_rm(target, generated, seed=seed)
        card.update(targets=sum(len(r) for r in target_rows.values()), generated=len(generated),
                    pool={"model": pool_model or base, "n": pool_n},
                    paper="Liu et al. 2025, GAN-RM (arXiv:2506.13846)")
    card.update(kind="head", base=base, featuriser=features.name, head={"input_dim": int(head.input_dim), "hidden": head.hidden})
    card.setdefault("metrics", {})
    write_folder(folder, card, lambda tmp: save_head(head, tmp))
    assert (folder / CARD).is_file()
    return Trained(name=name, folder=folder, card=card)


def _embed(features: TextFeatures, rows: dict[str, list[str]]) -> torch.Tensor:
    """Features of every (prompt, response), 64 to a call (one call per prompt is many times slower)."""
    pairs = [(p, r) for p, responses in rows.items() for r in responses]
    return torch.cat([features([p for p, _ in pairs[i : i + 64]], [r for _, r in pairs[i : i + 64]])
                      for i in range(0, len(pairs), 64)])


def _loader() -> Callable[..., Any]:
    from engines.models import load_model

    return load_model
