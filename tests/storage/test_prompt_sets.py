"""Prompt sets from real files (written by pandas, pyarrow and datasets), stored once, bad files refused."""

from __future__ import annotations

import json

import pytest

from engines.prompts import PromptSetError, builtin_prompt_set, load_prompt_file
from tests.storage.storage_helpers import dump as snapshot

ROWS = [
    {"question": "What is 2+2?", "solution": "4", "sys": "Be brief."},
    {"question": "Name a <b>colour</b>.", "solution": None, "sys": "Be kind."},
    {"question": "Spell 007 backwards.", "solution": "700", "sys": None},
]


@pytest.fixture
def db(tmp_path):
    from storage import Database

    database = Database.open(f"sqlite:///{tmp_path / 'p.db'}")
    yield database
    database.close()


def _write(tmp_path, kind: str):
    import pandas as pd

    frame = pd.DataFrame(ROWS)
    if kind == "jsonl":
        path = tmp_path / "set.jsonl"
        frame.to_json(path, orient="records", lines=True)
    elif kind == "csv":
        path = tmp_path / "set.csv"
        frame.to_csv(path, index=False)
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "set.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif kind == "disk":
        from datasets import Dataset

        path = tmp_path / "saved"
        Dataset.from_list(ROWS).save_to_disk(str(path))
    elif kind == "cache":  # what load_dataset leaves in its cache: NAME-train.arrow shards
        from datasets import load_dataset

        source = tmp_path / "raw.jsonl"
        frame.to_json(source, orient="records", lines=True)
        ds = load_dataset("json", data_files=str(source), split="train", cache_dir=str(tmp_path / "hf-cache"))
        from pathlib import Path

        path = Path(ds.cache_files[0]["filename"]).parent
        source.unlink()
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "disk", "cache"])
def test_each_format_loads_the_right_rows(tmp_path, kind):
    path = _write(tmp_path, kind)
    prompts = load_prompt_file(path, name="mine", prompt_col="question", answer_col="solution", system_col="sys")
    assert [t.prompt for t in prompts.tasks] == [r["question"] for r in ROWS]
    assert [t.answer for t in prompts.tasks] == ["4", None, "700"]
    assert [t.system for t in prompts.tasks] == ["Be brief.", "Be kind.", None]
    assert len(prompts) == 3 and prompts.name == "mine"


def test_the_same_content_is_stored_once_and_found_by_name(tmp_path, db):
    from app.workflows.sweeps import resolve_prompt_set
    from storage.prompt_sets import list_prompt_sets, save_prompt_set

    a = load_prompt_file(_write(tmp_path, "csv"), name="mine", prompt_col="question", answer_col="solution")
    b = load_prompt_file(_write(tmp_path, "parquet"), name="again", prompt_col="question", answer_col="solution")
    assert a.content_hash() == b.content_hash()  # same rows from two formats
    first, created = db.write(lambda s: save_prompt_set(s, a))
    second, created_again = db.write(lambda s: save_prompt_set(s, b))
    assert created and not created_again and first == second
    assert [s.name for s in db.read(list_prompt_sets)] == ["mine"]
    set_id, loaded = db.read(lambda s: resolve_prompt_set(s, "mine"))
    assert set_id == first and loaded.tasks == a.tasks[:0] + tuple(
        type(t)(**{**t.as_dict(), "name": f"mine:{i}"}) for i, t in enumerate(a.tasks))


def test_builtin_sets_go_through_the_same_path(db):
    from app.workflows.sweeps import resolve_prompt_set

    for name in ("open", "arith", "digits"):
        set_id, loaded = db.write(lambda s, n=name: resolve_prompt_set(s, n))
        assert [t.prompt for t in loaded.tasks] == [t.prompt for t in builtin_prompt_set(name).tasks]
        again, _ = db.write(lambda s, n=name: resolve_prompt_set(s, n))
        assert again == set_id
    _, digits = db.read(lambda s: resolve_prompt_set(s, "digits"))
    assert digits.modality == "image" and digits.tasks[3].meta["reward"] == "digit:3"


BAD = [
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": "fine"\n', "bad.jsonl line 2: not valid JSON"),
    ("bad.jsonl", '{"prompt": "ok"}\n["a list"]\n', "bad.jsonl line 2: expected a JSON object"),
    ("empty.jsonl", '{"prompt": "ok"}\n{"prompt": "   "}\n', "empty.jsonl row 2: empty prompt in column 'prompt'"),
    ("col.csv", "text,answer\nhello,1\n", "col.csv: no column 'prompt' (columns: answer, text)"),
    ("short.csv", "prompt,answer\nhello,1\nonly\n", "short.csv row 2: fewer cells"),
    ("long.csv", "prompt,answer\nhello,1,2\n", "long.csv row 1: more cells"),
    ("nothing.csv", "", "nothing.csv: the file is empty"),
    ("broken.parquet", "PAR1 this is not parquet", "broken.parquet: not a readable Parquet file"),
    ("notes.txt", "prompt\n", "notes.txt: unknown format .txt"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD)
def test_bad_files_fail_with_one_line_naming_the_row(tmp_path, db, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptSetError) as info:
        load_prompt_file(path)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "content"), [(n, c) for n, c, _ in BAD[:4]])
def test_the_cli_refuses_a_bad_file_and_stores_nothing(tmp_path, capsys, name, content):
    from app.cli import main
    from storage import Database

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    database = Database.open(url)
    before = snapshot(database)
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert main(["prompts", "add", str(path), "--db", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samplescope: error:") and len(err.splitlines()) == 1
    assert snapshot(database) == before
    database.close()


def test_the_cli_adds_and_lists_a_set(tmp_path, capsys):
    from app.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    path = _write(tmp_path, "jsonl")
    assert main(["prompts", "add", str(path), "--name", "qa", "--prompt-col", "question", "--db", url, "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["prompts"] == 3 and added["created"]
    assert main(["prompts", "list", "--db", url, "--json"]) == 0
    names = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert names["qa"]["size"] == 3 and not names["qa"]["builtin"] and names["arith"]["builtin"]
    # a different file under a taken name is refused
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "new"}\n')
    assert main(["prompts", "add", str(other), "--name", "qa", "--prompt-col", "question", "--db", url]) == 2
    assert "already stored as 'qa'" in capsys.readouterr().err
    assert main(["prompts", "add", str(other), "--name", "arith", "--prompt-col", "question", "--db", url]) == 2
    assert "'arith' is a built-in prompt set" in capsys.readouterr().err
