"""Exports (dpo, kto, battles; JSONL and Parquet) and the TRL preference import."""

from __future__ import annotations

import json

import pytest
from storage_helpers import dump, store_run

from storage import (
    Conflict,
    Database,
    InvalidInput,
    add_vote,
    compare_runs,
    export,
    export_rows,
    import_file,
    make_comparisons,
)
from storage.exports import ID_COLUMNS, read_rows
from storage.records import vote_records


def cast(db, cid, who, outcome, **kw):
    return db.write(
        lambda s: add_vote(
            s,
            comparison_id=cid,
            annotator=who,
            outcome=outcome,
            idempotency_key=f"{who}:{cid}:{outcome}:{kw.get('supersedes')}",
            **kw,
        )
    )


@pytest.fixture
def labelled(db):
    """Two samplers on one prompt, every outcome kind, a corrected vote, an image candidate."""
    r1 = store_run(
        db,
        ["good answer", "bad answer", "meh answer"],
        [0.9, 0.1, 0.5],
        sampler="best_of_n",
        model="m1",
        picks=[0],
    )
    r2 = store_run(db, ["smc answer", "smc other"], [0.7, 0.2], sampler="smc", model="m2", picks=[0])
    within = db.write(lambda s: make_comparisons(s, r1, "all_pairs"))
    across = db.write(lambda s: compare_runs(s, [r1, r2]))
    c = within + across  # 3 within best_of_n, 1 best_of_n vs smc
    cast(db, c[0], "ada", "a", rationale="clearer")
    first = cast(db, c[1], "ada", "b")
    cast(db, c[1], "ada", "a", supersedes=first.vote_id)  # changed her mind
    cast(db, c[2], "ada", "tie")
    cast(db, c[3], "ada", "both_bad")
    cast(db, c[0], "bob", "b")
    cast(db, c[1], "bob", "skip")
    cast(db, c[3], "bob", "b")
    return c


def test_dpo_rows_are_the_decisive_current_votes(db, labelled):
    rows = db.read(lambda s: export_rows(s, "dpo"))
    records = {(r.comparison_id, r.annotator): r for r in db.read(vote_records)}
    assert len(rows) == 4  # ada c0, ada c1 (revised to a), bob c0, bob c3
    for row in rows:
        rec = records[(row["comparison_id"], row["annotator"])]
        assert (row["chosen"], row["rejected"]) == (rec.winner.text, rec.loser.text)
        assert row["prompt"] == "Say something nice."
        assert row["chosen_shown_left"] == (rec.left.candidate_id == rec.winner.candidate_id)
    ada_c1 = next(r for r in rows if r["annotator"] == "ada" and r["comparison_id"] == labelled[1])
    assert ada_c1["vote_id"] == max(r["vote_id"] for r in rows if r["comparison_id"] == labelled[1])
    bob_c3 = next(r for r in rows if r["annotator"] == "bob")
    assert {bob_c3["chosen_sampler"], bob_c3["rejected_sampler"]} <= {"best_of_n", "smc"}
    assert next(r for r in rows if r["rationale"])["rationale"] == "clearer"


def test_kto_labels(db, labelled):
    rows = db.read(lambda s: export_rows(s, "kto"))
    by_vote: dict[int, list] = {}
    for row in rows:
        by_vote.setdefault(row["vote_id"], []).append(row)
    labels = {}
    for pair in by_vote.values():
        assert len(pair) == 2
        labels.setdefault(pair[0]["outcome"], set()).add(tuple(sorted(r["label"] for r in pair)))
    assert labels == {
        "a": {(False, True)},
        "b": {(False, True)},
        "tie": {(True, True)},
        "both_bad": {(False, False)},
    }
    assert "skip" not in {r["outcome"] for r in rows}
    assert set(rows[0]) >= {"prompt", "completion", "label"}


def test_battles_use_the_left_side_as_model_a(db, labelled):
    rows = db.read(lambda s: export_rows(s, "battles"))
    records = {r.vote_id: r for r in db.read(vote_records)}
    assert len(rows) == 6  # every current non-skip vote
    for row in rows:
        rec = records[row["vote_id"]]
        assert (row["model_a"], row["model_b"]) == (rec.left.sampler, rec.right.sampler)
        expected = {"tie": "tie", "both_bad": "tie (bothbad)"}.get(rec.outcome)
        if expected is None:
            expected = "model_a" if rec.winner.candidate_id == rec.left.candidate_id else "model_b"
        assert row["winner"] == expected and row["judge"] == rec.annotator
    by_model = db.read(lambda s: export_rows(s, "battles", by="model"))
    assert {r["model_a"] for r in by_model} | {r["model_b"] for r in by_model} == {"m1", "m2"}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("fmt", ["dpo", "kto", "battles"])
def test_files_hold_exactly_the_rows(db, labelled, tmp_path, fmt, suffix):
    path = tmp_path / "exports" / f"out{suffix}"
    n = db.read(lambda s: export(s, fmt, path))
    assert read_rows(path) == db.read(lambda s: export_rows(s, fmt)) and n > 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_empty_database_exports_empty_files(db, tmp_path):
    assert db.read(lambda s: export(s, "dpo", tmp_path / "e.parquet")) == 0
    assert read_rows(tmp_path / "e.parquet") == []


def strip_ids(rows):
    return [{k: v for k, v in row.items() if k not in ID_COLUMNS} for row in rows]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_import_export_gives_the_same_rows(db, labelled, tmp_path, suffix):
    first = tmp_path / f"first{suffix}"
    db.read(lambda s: export(s, "dpo", first))
    with Database.open(f"sqlite:///{tmp_path / 'fresh.db'}") as fresh:
        report = fresh.write(lambda s: import_file(s, first))
        assert (report.rows, report.votes_created, report.votes_existing) == (4, 4, 0)
        assert report.comparisons == 3  # ada and bob share comparison c0
        second = tmp_path / f"second{suffix}"
        fresh.read(lambda s: export(s, "dpo", second))
        assert strip_ids(read_rows(second)) == strip_ids(read_rows(first))
        # importing again stores nothing new
        again = fresh.write(lambda s: import_file(s, first))
        assert (again.votes_created, again.votes_existing, again.runs_created) == (0, 4, 0)
        assert strip_ids(fresh.read(lambda s: export_rows(s, "dpo"))) == strip_ids(read_rows(first))


def test_plain_trl_file_imports_under_the_import_annotator(db, tmp_path):
    path = tmp_path / "plain.jsonl"
    rows = [
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": "2+2?", "chosen": "four", "rejected": "5"},
        {"prompt": "capital of France?", "chosen": "Paris", "rejected": "Lyon \u2028 line sep"},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    report = db.write(lambda s: import_file(s, path))
    assert report.votes_created == 3 and report.runs_created == 2
    out = db.read(lambda s: export_rows(s, "dpo"))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in rows
    ]
    assert {r["annotator"] for r in out} == {"import"} and {r["chosen_sampler"] for r in out} == {"import"}


@pytest.mark.parametrize(
    "content,message",
    [
        (
            '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n',
            "row 2: rejected",
        ),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}\n', "identical"),
        (
            '{"prompt": [{"role": "user", "content": "p"}], "chosen": "a", "rejected": "b"}\n',
            "list of messages",
        ),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "rationale": "' + "x" * 2001 + '"}\n', "limit"),
        ('{"prompt": "p\\u0000", "chosen": "a", "rejected": "b"}\n', "NUL"),
        ('{"prompt": "p\\ud800", "chosen": "a", "rejected": "b"}\n', "UTF-8"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n', ":2: not JSON"),
        ("[1, 2]\n", "JSON object"),
        (
            '{"prompt": "p", "chosen": "a", "rejected": "b", "annotator": "x", "voted_at": "yesterday"}\n',
            "ISO",
        ),
        (
            '{"prompt": "p", "chosen": "a", "rejected": "b", "annotator": "x"}\n'
            '{"prompt": "p", "chosen": "b", "rejected": "a", "annotator": "x"}\n',
            "row 2: x already voted",
        ),
    ],
)
def test_bad_import_files_change_nothing(db, labelled, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    before = dump(db)
    with pytest.raises(Conflict if "already" in message else InvalidInput, match=message):
        db.write(lambda s: import_file(s, path))
    assert dump(db) == before


def test_bad_files_and_names(db, tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(InvalidInput, match=":2: not valid UTF-8"):
        db.write(lambda s: import_file(s, raw))
    with pytest.raises(InvalidInput, match=".jsonl or .parquet"):
        db.read(lambda s: export(s, "dpo", tmp_path / "out.csv"))
    with pytest.raises(InvalidInput, match="unknown export format"):
        db.read(lambda s: export(s, "sft", tmp_path / "out.jsonl"))
    with pytest.raises(FileNotFoundError):
        db.write(lambda s: import_file(s, tmp_path / "missing.jsonl"))


def test_exports_filter_by_modality_model_and_sampler(db, labelled):
    from engines.trace import DoneEvent, NodeEvent, SelectEvent, Trace
    from storage import cross_run_comparisons, save_run
    from storage.exports import RecordFilter

    def image_run(sampler: str, shade: int) -> int:
        import base64
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("L", (8, 8), color=shade).save(buffer, format="PNG")
        png = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        trace = Trace([NodeEvent(id="root", parent=None, text=""), NodeEvent(id="x", parent="root", depth=1, image=png, final=True),
                       SelectEvent(nodes=["x"]), DoneEvent(picks=["x"], candidates=["x"], cost={})])
        return db.write(lambda s: save_run(s, trace=trace, task={"prompt": "digit:3"}, model="digits", reward="digit:3",
                                           sampler=sampler, config={}, seed=0))

    runs = [image_run("best_of_n", 40), image_run("fk_steering", 200)]
    (image_pair,) = db.write(lambda s: cross_run_comparisons(s, runs))
    cast(db, image_pair, "ada", "a")

    def rows(fmt="dpo", **only):
        return db.read(lambda s: export_rows(s, fmt, only=RecordFilter(**only)))

    everything = rows()
    assert len(everything) == 5 and any(r["chosen_image"] for r in everything)  # the image pair mixed in, empty text
    text = rows(modality="text")
    assert len(text) == 4 and all(r["chosen"] for r in text) and "chosen_image" not in text[0]  # a text-only file
    assert [r["comparison_id"] for r in rows(modality="image")] == [image_pair]
    assert {r["comparison_id"] for r in rows(model="m2")} == {labelled[3]}  # m2 on one side of the cross-run pair
    assert {r["comparison_id"] for r in rows(sampler="smc")} == {labelled[3]}
    assert {r["comparison_id"] for r in rows(sampler="fk_steering")} == {image_pair}
    assert rows(sampler="nobody") == []
    assert {r["outcome"] for r in rows("kto", modality="text")} >= {"a", "tie", "both_bad"}
    with pytest.raises(InvalidInput, match="modality must be one of text, image"):
        RecordFilter(modality="audio")
