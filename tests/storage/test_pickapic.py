"""Image pairs export in the Pick-a-Pic layout."""

from __future__ import annotations

import base64
import io

import pyarrow.parquet as pq
from PIL import Image

from engines.trace import DoneEvent, NodeEvent, ScoreEvent, SelectEvent, Trace
from storage import add_vote, export, export_rows, make_comparisons, save_run


def png_uri(shade: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=shade).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_run(db) -> int:
    events = [NodeEvent(id="root", parent=None, text="a handwritten 3")]
    for i, shade in enumerate((20, 120, 240)):
        events.append(NodeEvent(id=f"n{i}", parent="root", depth=1, image=png_uri(shade), final=True))
        events.append(ScoreEvent(node=f"n{i}", reward="digit:3", value=shade / 255))
    events += [SelectEvent(nodes=["n2"]), DoneEvent(picks=["n2"], candidates=["n0", "n1", "n2"], cost={})]
    trace = Trace(events)
    return db.write(lambda s: save_run(s, trace=trace, task={"prompt": "a handwritten 3"}, model="embedded:digits",
                                       reward="digit:3", sampler="fk_steering", config={}, seed=0))


def test_image_votes_export_as_pickapic_rows(db, tmp_path):
    run_id = image_run(db)
    ids = db.write(lambda s: make_comparisons(s, run_id, "all_pairs"))
    outcomes = ["a", "tie", "both_bad"]
    for k, (cid, outcome) in enumerate(zip(ids, outcomes, strict=True)):
        db.write(lambda s, cid=cid, outcome=outcome, k=k: add_vote(
            s, comparison_id=cid, annotator="ada", outcome=outcome, idempotency_key=f"k{k}"))
    rows = db.read(lambda s: export_rows(s, "pickapic"))
    assert len(rows) == 2  # both_bad has no place in the layout
    decisive = next(r for r in rows if r["label_0"] != 0.5)
    assert sorted([decisive["label_0"], decisive["label_1"]]) == [0.0, 1.0]
    winner = decisive["image_0_uid"] if decisive["label_0"] == 1.0 else decisive["image_1_uid"]
    assert decisive["best_image_uid"] == winner
    tie = next(r for r in rows if r["label_0"] == 0.5)
    assert tie["label_1"] == 0.5 and tie["best_image_uid"] is None
    for row in rows:
        assert Image.open(io.BytesIO(row["jpg_0"])).size == (8, 8)
        assert row["caption"] == "a handwritten 3" and row["model_0"] == "fk_steering"
    path = tmp_path / "pairs.parquet"
    assert db.read(lambda s: export(s, "pickapic", path)) == 2
    table = pq.read_table(path)
    assert table.column_names[:5] == ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]
    jsonl = tmp_path / "pairs.jsonl"
    assert db.read(lambda s: export(s, "pickapic", jsonl)) == 2
    assert base64.b64decode(jsonl.read_text().split('"jpg_0": "')[1].split('"')[0])[:4] == b"\x89PNG"


def test_text_votes_do_not_appear_in_the_image_export(db):
    from tests.storage.storage_helpers import store_run

    run_id = store_run(db, ["good", "bad"], [1.0, 0.0])
    (cid,) = db.write(lambda s: make_comparisons(s, run_id, "max_min"))
    db.write(lambda s: add_vote(s, comparison_id=cid, annotator="ada", outcome="a", idempotency_key="t"))
    assert db.read(lambda s: export_rows(s, "pickapic")) == []
