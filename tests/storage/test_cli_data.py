"""The data subcommands of the samplescope CLI, end to end on a SQLite file."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from storage_helpers import store_run

import app.cli
from storage import Database, add_vote, compare_runs


@pytest.fixture
def cli(monkeypatch, capsys):
    # only our module: the branch may lack the other command modules
    monkeypatch.setattr(app.cli, "COMMAND_MODULES", ("app.commands.data",))

    def run(*argv):
        code = app.cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with Database.open(url) as db:
        r1 = store_run(db, ["x1"], [1.0], sampler="best_of_n", model="m1")
        r2 = store_run(db, ["y1"], [0.0], sampler="smc", model="m2")
        [cid] = db.write(lambda s: compare_runs(s, [r1, r2]))
        for who, outcome in (("ada", "a"), ("bob", "b")):
            db.write(
                lambda s, w=who, o=outcome: add_vote(
                    s, comparison_id=cid, annotator=w, outcome=o, idempotency_key=w
                )
            )
    return url


def test_runs_lists_and_filters(cli, url):
    code, out, _ = cli("runs", "--db", url)
    assert code == 0 and "best_of_n" in out and "smc" in out
    code, out, _ = cli("runs", "--json", "--sampler", "smc", "--db", url)
    rows = json.loads(out)
    assert code == 0 and [r["sampler"] for r in rows] == ["smc"] and rows[0]["model"] == "m2"


def test_runs_reads_the_url_from_the_environment(cli, url, monkeypatch):
    monkeypatch.setenv("SAMPLESCOPE_DB", url)
    code, out, _ = cli("runs", "--json")
    assert code == 0 and len(json.loads(out)) == 2


def test_export_then_import_into_another_database(cli, url, tmp_path):
    out_file = tmp_path / "prefs.jsonl"
    code, out, _ = cli("export", "--format", "dpo", "--out", str(out_file), "--db", url)
    assert code == 0 and out.strip() == f"wrote 2 dpo rows to {out_file}"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, out, _ = cli("import", str(out_file), "--json", "--db", other)
    assert code == 0 and json.loads(out)["votes_created"] == 2
    code, out, _ = cli("export", "--format", "battles", "--out", str(tmp_path / "b.parquet"), "--db", other)
    assert code == 0 and "wrote 2 battles rows" in out


def test_stats_human_and_json(cli, url):
    code, out, _ = cli("stats", "--db", url, "--bootstrap", "10")
    assert code == 0 and "Bradley-Terry" in out and "Cohen's kappa" in out and "left side wins" in out
    code, out, _ = cli("stats", "--json", "--db", url, "--bootstrap", "10", "--by", "model")
    data = json.loads(out)
    assert data["votes"] == 2 and {p["name"] for p in data["ranking"]["players"]} == {"m1", "m2"}


def test_db_upgrade_and_check(cli, tmp_path, url):
    from storage.migrate import head_revision

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, out, _ = cli("db", "upgrade", "--db", fresh)
    assert code == 0 and f"empty -> {head_revision()}" in out  # the newest migration, whichever it is
    code, out, _ = cli("db", "upgrade", "--db", fresh)
    assert code == 0 and f"already at {head_revision()}" in out
    code, out, _ = cli("db", "check", "--json", "--db", url)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["counts"]["votes"] == 2


def test_db_check_fails_on_a_broken_database(cli, tmp_path, url):
    db = Database(url)
    raw = db.engine.raw_connection()  # orphan a candidate behind the database's back
    try:
        raw.execute("PRAGMA foreign_keys = OFF")
        raw.execute(
            "INSERT INTO candidates (run_id, node_id, text, tokens, picked, meta) "
            "VALUES (999, 'x', 't', 0, 0, '{}')"
        )
        raw.commit()
    finally:
        raw.close()
    db.close()
    code, out, err = cli("db", "check", "--db", url)
    assert code == 1 and "foreign_key_check" in err and "problem(s) found" in out
    code, _, err = cli("db", "check", "--db", f"sqlite:///{tmp_path / 'missing.db'}")
    assert code == 2 and "no database at" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (("export", "--format", "dpo", "--out", "x.csv"), ".jsonl or .parquet"),
        (("import", "missing.jsonl"), "no such file"),
        (("runs", "--limit", "0"), "limit must be"),
        (("stats", "--bootstrap", "-1"), "bootstrap must be"),
        (("runs", "--db", "not a url"), "not a database URL"),
        (("runs", "--db", "postgresql+psycopg2://nobody@127.0.0.1:1/none"), "database error"),
    ],
)
def test_bad_input_exits_2_with_one_line(cli, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_import_file_exits_2_and_writes_nothing(cli, url, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p"}\n', encoding="utf-8")
    code, _, err = cli("import", str(bad), "--db", url)
    assert code == 2 and "row 2" in err
    with Database(url) as db, db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM votes")).scalar() == 2


def test_export_and_stats_take_the_repeat_and_gold_policies(cli, url, tmp_path):
    from storage.quality import make_repeats, mark_gold
    from storage.records import vote_records

    with Database.open(url) as db:
        cid = db.read(vote_records)[0].comparison_id
        [repeat] = db.write(lambda s: make_repeats(s, [cid]))
        db.write(lambda s: add_vote(s, comparison_id=repeat, annotator="ada", outcome="b", idempotency_key="ada-r"))
    out_file = tmp_path / "b.jsonl"
    for argv, rows in ((), 2), (("--repeats", "all"), 3), (("--repeats", "consistent"), 1):
        code, out, _ = cli("export", "--format", "battles", "--out", str(out_file), "--db", url, *argv)
        assert code == 0 and f"wrote {rows} battles row" in out, argv
    code, out, _ = cli("stats", "--db", url, "--bootstrap", "0")
    assert code == 0 and "1 left out by --repeats original" in out
    with Database.open(url) as db:
        db.write(lambda s: mark_gold(s, cid, "a"))
    code, out, _ = cli("export", "--format", "battles", "--out", str(out_file), "--db", url, "--no-gold")
    assert code == 0 and "wrote 0 battles rows" in out
    with pytest.raises(SystemExit) as exit_:
        cli("export", "--format", "dpo", "--out", str(out_file), "--db", url, "--repeats", "twice")
    assert exit_.value.code == 2


def test_export_filters_by_modality_model_and_sampler(cli, url, tmp_path):
    out_file = tmp_path / "f.jsonl"
    for flags, rows in ((("--modality", "text"), 2), (("--modality", "image"), 0), (("--model", "m2"), 2),
                        (("--sampler", "smc"), 2), (("--sampler", "knockout"), 0)):
        code, out, _ = cli("export", "--format", "dpo", "--out", str(out_file), *flags, "--db", url)
        assert code == 0 and out.strip() == f"wrote {rows} dpo row{'s' if rows != 1 else ''} to {out_file}", flags
    with pytest.raises(SystemExit):  # argparse refuses an unknown modality with its one-line usage error
        cli("export", "--format", "dpo", "--out", str(out_file), "--modality", "audio", "--db", url)
