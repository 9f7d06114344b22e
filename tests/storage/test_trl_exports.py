"""The DPO and KTO exports train as they are in TRL's DPOTrainer and KTOTrainer (one real step, a tiny model).

Text exports carry no image columns (TRL reads any ``image`` key as a vision dataset and
KTOTrainer then refuses a text model); an export with image candidates keeps them.
"""

from __future__ import annotations

import pytest
from storage_helpers import store_run
from test_pickapic import image_run

from storage import add_vote, export, make_comparisons
from storage.exports import read_rows

pytestmark = pytest.mark.slow


def vote_all(db, comparisons, outcomes):
    for k, (cid, outcome) in enumerate(zip(comparisons, outcomes, strict=False)):
        db.write(lambda s, cid=cid, outcome=outcome, k=k: add_vote(
            s, comparison_id=cid, annotator=f"ann{k % 2}", outcome=outcome, idempotency_key=f"{cid}:{k}"))


@pytest.fixture
def text_votes(db):
    comparisons = []
    for k in range(3):
        run = store_run(db, [f"good answer {k}", f"bad answer {k}", f"so so {k}"], [0.9, 0.1, 0.5],
                        prompt=f"Say something nice {k}.")
        comparisons += db.write(lambda s, run=run: make_comparisons(s, run, "all_pairs"))
    vote_all(db, comparisons, ["a", "b", "tie", "both_bad", "a", "b", "a", "b", "a"])
    return comparisons


def test_text_exports_have_no_image_columns_and_image_exports_keep_them(db, text_votes, tmp_path):
    for fmt, columns in (("dpo", {"chosen_image", "rejected_image"}), ("kto", {"image"})):
        for suffix in (".jsonl", ".parquet"):
            path = tmp_path / f"{fmt}{suffix}"
            assert db.read(lambda s, fmt=fmt, path=path: export(s, fmt, path)) > 0
            rows = read_rows(path)
            assert rows and not columns & set(rows[0]), (fmt, suffix, sorted(rows[0]))
    run = image_run(db)
    (cid, *_) = db.write(lambda s: make_comparisons(s, run, "all_pairs"))
    vote_all(db, [cid], ["a"])
    for fmt, columns in (("dpo", {"chosen_image", "rejected_image"}), ("kto", {"image"})):
        path = tmp_path / f"mixed-{fmt}.parquet"
        db.read(lambda s, fmt=fmt, path=path: export(s, fmt, path))
        rows = read_rows(path)
        assert all(columns <= set(r) for r in rows)
        assert any(r[c] and r[c].startswith("data:image/png;base64,") for r in rows for c in columns)


def _train_one_step(kind: str, rows: list[dict], folder):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny import tiny_llama

    model_dir = tiny_llama(folder / "model", chat=False)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    before = [p.detach().clone() for p in model.parameters()]
    data = Dataset.from_list(rows)
    common = {"output_dir": str(folder / "out"), "max_steps": 1, "per_device_train_batch_size": 4, "report_to": [],
              "save_strategy": "no", "use_cpu": True, "logging_steps": 1, "learning_rate": 1e-2}
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=data, processing_class=tok)
    else:
        from trl import KTOConfig, KTOTrainer

        trainer = KTOTrainer(model=model, args=KTOConfig(**common), train_dataset=data, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))
    assert changed, "one optimiser step changed no weight"


@pytest.mark.parametrize("fmt", ["dpo", "kto"])
def test_the_export_trains_one_step_in_trl(db, text_votes, tmp_path, fmt):
    path = tmp_path / f"{fmt}.jsonl"
    db.read(lambda s: export(s, fmt, path))
    rows = read_rows(path)
    if fmt == "kto":
        assert {r["label"] for r in rows} == {True, False}
    _train_one_step(fmt, rows, tmp_path)
