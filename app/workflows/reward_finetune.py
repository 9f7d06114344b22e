"""``reward train --kind finetune``: a sequence-classification reward model trained by TRL.

The field's standard recipe (Ouyang et al. 2022; TRL's ``RewardTrainer``, the
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected)): the base causal LM
gets a scalar head (``AutoModelForSequenceClassification``, ``num_labels=1``)
and all its weights are trained on the decisive votes as (prompt, chosen,
rejected) rows; no training loop is written here. Ties carry no chosen side
and are left out (the card says how many); both-bad and skips as for heads.

The rows are conversational (user prompt, assistant reply) when the base
tokenizer has a chat template, else plain ``prompt + "\\n" + reply``: the same
text ``rm:`` / ``learned:`` scores (``engines.rewards.classifier``).

Evaluation: a prompt- (or annotator-) grouped hold-out split (20% of the
groups, scikit-learn ``GroupShuffleSplit``): a model fitted on the rest is
scored on the held-out decisive votes (accuracy, Wilson 95% interval); the
stored model is then fitted on every vote. One split, not k folds: each fit
trains the whole network.

Base: ``hf:FOLDER`` / a folder with a transformers causal LM, or
``embedded:smollm2`` (its cached safetensors conversion). Meant for a GPU;
the tests run it on CPU with a tiny local model.
"""

from __future__ import annotations

import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from sklearn.model_selection import GroupShuffleSplit
from transformers import AutoTokenizer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import RewardConfig, RewardTrainer

from app.workflows.reward_training import Trained, ceiling, select_votes, write_folder
from app.workflows.store import rewards_home
from engines.errors import ConfigError, ModelLoadError
from engines.models.embedded import convert, converted_folder, smollm2_gguf
from engines.rewards.bt_fit import MIN_VOTES, Accuracy, Progress
from engines.rewards.classifier import ClassifierReward
from engines.rewards.learned import check_name
from engines.task import Task
from storage.quality import quality_summary
from storage.records import vote_records
from storage.stats import reward_agreement


def base_folder(base: str | None) -> Path:
    base = (base or "embedded:smollm2").strip()
    if base == "embedded:smollm2":
        gguf = smollm2_gguf()
        folder = converted_folder(gguf)
        if not (folder / "config.json").exists():
            convert(gguf, folder)
        return folder
    path = Path(base[3:] if base.startswith("hf:") else base).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"unknown base model {base!r} for a fine-tune: give hf:/path/to/folder (a transformers model) or embedded:smollm2"
        )
    return path


def _rows(records: list[Any], chat: bool) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        chosen, rejected = (r.a.text, r.b.text) if r.outcome == "a" else (r.b.text, r.a.text)
        if chat:
            rows.append({"prompt": [{"role": "user", "content": r.prompt}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            rows.append({"prompt": r.prompt + "\n", "chosen": chosen, "rejected": rejected})
    return rows


def _fit(folder: Path, rows: list[dict[str, Any]], out: Path, epochs: int, seed: int, events: queue.Queue) -> Any:
    """Train with TRL's RewardTrainer; returns (model, tokenizer). Log lines go to ``events``."""

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    class Report(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            if (logs or {}).get("loss") is not None:  # the closing summary has train_loss only
                events.put(("log", state.global_step, state.max_steps, logs["loss"]))

    config = RewardConfig(
        output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=1e-4,
        logging_steps=1, save_strategy="no", report_to="none", seed=seed, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), max_length=512, log_level="error",
    )
    trainer = RewardTrainer(model=str(folder), args=config, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, callbacks=[Report()])

    trainer.remove_callback(PrinterCallback)  # log lines go to the progress events, not stdout
    trainer.train()
    model = trainer.model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _run_fit(*args: Any) -> Iterator[tuple[str, Any]]:
    """Run :func:`_fit` in a thread, yielding its log events and finally ("done", result)."""
    events: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = _fit(*args, events)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            events.put(("end", None, None, None))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while True:
        kind, step, total, loss = events.get()
        if kind == "end":
            break
        yield "log", (step, total, loss)
    thread.join()
    if "error" in box:
        raise box["error"]
    yield "done", box["result"]


def finetune_reward(
    db: Any,
    name: str,
    *,
    votes: str | None = None,
    base: str | None = None,
    group_by: str = "prompt",
    min_agreement: float | None = None,
    epochs: int = 1,
    seed: int = 0,
) -> Iterator[Progress | Trained]:
    """Fine-tune ``learned:NAME`` with TRL (see the module docstring); progress, then the summary."""

    check_name(name)
    folder = rewards_home() / name
    if folder.exists():
        raise ConfigError(f"a learned reward named {name!r} exists already ({folder}); pick another name")
    if epochs < 1:
        raise ConfigError("a fine-tune needs at least one epoch")
    records = db.read(vote_records)
    usable, counts = select_votes(records, db.read(quality_summary), votes=votes, min_agreement=min_agreement)
    if any(r.a.image or r.b.image for r in usable):
        raise ConfigError("a fine-tune learns from text votes; train image votes with --kind head")
    decisive = [r for r in usable if r.outcome in ("a", "b")]
    if len(decisive) < MIN_VOTES:
        raise ConfigError(f"too few votes to train on: {len(decisive)} decisive (a/b) votes, need at least {MIN_VOTES}")
    if len({r.outcome for r in usable}) < 2:
        raise ConfigError(f"every vote has the same outcome ({decisive[0].outcome!r}); a reward cannot be learned from one outcome")
    groups = np.array([r.prompt if group_by == "prompt" else r.annotator for r in decisive], dtype=object)
    if len(set(groups.tolist())) < 2:
        raise ConfigError("the votes come from one group only; a held-out split needs at least two prompts (or annotators)")
    source = base_folder(base)

    chat = bool(getattr(AutoTokenizer.from_pretrained(str(source)), "chat_template", None))
    train_ix, test_ix = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=seed).split(decisive, groups=groups))
    with tempfile.TemporaryDirectory(prefix="samplescope-finetune-") as work:
        stages = [("holdout", [decisive[i] for i in train_ix]), ("final", decisive)]
        models: dict[str, Any] = {}
        for index, (stage, chosen) in enumerate(stages):
            for kind, payload in _run_fit(source, _rows(chosen, chat), Path(work) / stage, epochs, seed):
                if kind == "log":
                    step, total, loss = payload
                    frac = (index + (step / total if total else 0.0)) / len(stages)
                    yield Progress("cv" if stage == "holdout" else "final", 1 if stage == "holdout" else 0, 1, step,
                                   float(loss) if loss is not None else float("nan"), None, frac)
                else:
                    models[stage] = payload
        model, tokenizer = models["holdout"]
        scorer = ClassifierReward(model, tokenizer, name="holdout")
        correct = 0
        for i in test_ix:
            r = decisive[i]
            ra, rb = scorer.score(Task(prompt=r.prompt), [r.a.text, r.b.text])
            correct += (ra > rb) if r.outcome == "a" else (rb > ra)
        heldout = Accuracy.of(int(correct), len(test_ix))
        final_model, final_tokenizer = models["final"]
        card = {
            "name": name,
            "kind": "finetune",
            "modality": "text",
            "base": base or "embedded:smollm2",
            "featuriser": None,
            "trainer": "trl.RewardTrainer",
            "ties": "left out (a reward trainer row needs a chosen and a rejected reply)",
            "votes": {**counts, "ties_excluded": counts["ties"], "used": len(decisive)},
            "cross_validation": {"grouped_by": group_by, "folds": 1, "split": "GroupShuffleSplit 80/20"},
            "fit": {"epochs": epochs, "lr": 1e-4, "batch_size": 8, "seed": seed},
            "metrics": {
                "heldout": asdict(heldout),
                "learning_curve": [],
                "baselines": reward_agreement(usable),
                "annotator_ceiling": ceiling(usable),
            },
        }

        card["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")

        def save(tmp: Path) -> None:
            final_model.save_pretrained(str(tmp / "model"))
            final_tokenizer.save_pretrained(str(tmp / "model"))

        write_folder(folder, card, save)
    yield Trained(name=name, folder=folder, card=card)


def run_finetune(db: Any, name: str, **kwargs: Any) -> Trained:
    out = None
    for item in finetune_reward(db, name, **kwargs):
        if isinstance(item, Trained):
            out = item
    assert out is not None
    return out

