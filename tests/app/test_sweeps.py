"""Stored sweeps: cells linked to runs, resumed after a crash, a cancel or a kill without redoing a cell, exported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.workflows.sweeps import cell_rows, load_plan, parse_arms, run_stored, start

ROOT = Path(__file__).resolve().parents[2]


def _count(db, model) -> int:
    return db.read(lambda s: s.scalar(select(func.count()).select_from(model)))


def _start(db, **kw):
    values = {"arms": parse_arms("best_of_n,mcts", {"max_new_tokens": 8}), "levels": (1, 2, 4), "models": ["toy:abc"],
              "evaluate": "length", "prompts": 6}
    values.update(kw)
    return start(db, "open", **values)


def test_a_crashed_sweep_resumes_without_redoing_cells(db):
    from storage.models import Run, SweepCell

    sweep_id, plan = _start(db)
    total = len(plan.cells())
    assert total == 36
    first = []
    with pytest.raises(RuntimeError):
        for result in run_stored(db, sweep_id, plan, workers=2):
            first.append(result.key)
            if len(first) == 10:
                raise RuntimeError("the process dies here")
    stored = cell_rows(db, sweep_id)
    assert len(stored) == 10 == _count(db, Run) and {(c["arm"], c["level"], c["prompt"]) for c in stored} == {
        (k.arm, k.level, k.prompt) for k in first}
    runs_before = {(c["arm"], c["level"], c["prompt"]): c["run_id"] for c in stored}
    second = [r.key for r in run_stored(db, sweep_id, load_plan(db, sweep_id), workers=3)]
    assert len(second) == total - 10 and not set(second) & set(first)
    cells = cell_rows(db, sweep_id)
    assert len(cells) == total == _count(db, Run) == _count(db, SweepCell)
    assert all(runs_before[(c["arm"], c["level"], c["prompt"])] == c["run_id"] for c in cells if
               (c["arm"], c["level"], c["prompt"]) in runs_before)
    # a stored cell is its run: the run's seed, cost and sampler are the cell's
    from storage import load_run

    run = db.read(lambda s: load_run(s, cells[0]["run_id"]))
    assert run.seed == cells[0]["seed"] and run.source == "sweep"
    assert run.cost["generated_tokens"] == cells[0]["generated_tokens"]
    from storage.sweeps import list_sweeps

    (summary,) = db.read(list_sweeps)
    assert summary.status == "done" and summary.cells_done == total


def test_a_cancelled_sweep_keeps_its_finished_cells_and_resumes(db):
    sweep_id, plan = _start(db, levels=(1, 2, 4, 8))
    cancel = threading.Event()
    got = 0
    for _ in run_stored(db, sweep_id, plan, workers=2, cancel=cancel):
        got += 1
        if got == 5:
            cancel.set()
    kept = len(cell_rows(db, sweep_id))
    assert kept == got and got < len(plan.cells())
    from storage.sweeps import list_sweeps

    assert db.read(list_sweeps)[0].status == "cancelled"
    rest = list(run_stored(db, sweep_id, load_plan(db, sweep_id)))
    assert len(rest) + kept == len(plan.cells()) == len(cell_rows(db, sweep_id))


def test_a_killed_cli_sweep_resumes_without_redoing_cells(tmp_path):
    """The real command, killed with SIGKILL mid-way, then ``--resume``: every cell stored once, one run each."""
    from storage import Database
    from storage.models import Run, SweepCell

    prompts = tmp_path / "many.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(150)))
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    python = sys.executable
    subprocess.run([python, "-m", "app.cli", "prompts", "add", str(prompts), "--db", url], check=True, cwd=ROOT, env=env,
                   capture_output=True)
    command = [python, "-m", "app.cli", "sweep", "--prompts", "many", "--samplers", "best_of_n,mcts", "--sizes", "1,2,4",
               "--engine", "toy:abc", "--reward", "length", "--set", "max_new_tokens=8", "--workers", "2", "--db", url]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = Database.open(url)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _count(db, SweepCell) >= 30:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep finished before it could be killed: give it more cells"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _count(db, SweepCell)
    assert 30 <= killed_at < 900 and _count(db, Run) == killed_at  # a cell and its run are one transaction
    out = subprocess.run([python, "-m", "app.cli", "sweep", "--resume", "1", "--db", url, "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["cells"] == 900
    assert _count(db, SweepCell) == 900 == _count(db, Run)
    db.close()


def test_sweep_cells_export_as_csv_and_parquet(db, tmp_path):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from storage.sweeps import export_cells

    sweep_id, plan = _start(db, levels=(1, 2))
    list(run_stored(db, sweep_id, plan))
    rows = cell_rows(db, sweep_id)
    for name, read in (("cells.csv", pcsv.read_csv), ("cells.parquet", pq.read_table)):
        assert db.read(lambda s, n=name: export_cells(s, sweep_id, tmp_path / n)) == len(rows)
        table = read(tmp_path / name).to_pylist()
        assert [(r["arm"], r["level"], r["prompt"], r["run_id"]) for r in table] == [
            (r["arm"], r["level"], r["prompt"], r["run_id"]) for r in rows]
        assert [r["quality"] for r in table] == pytest.approx([r["quality"] for r in rows])


def test_cli_sweep_reports_points_and_refuses_bad_input(tmp_path, capsys):
    from app.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    args = ["sweep", "--prompts", "open", "--samplers", "best_of_n,mcts", "--budget", "generated_tokens=8,16",
            "--engine", "toy:abc", "--engine", "toy:binary", "--evaluate", "length", "--limit", "4", "--db", url, "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cells"] == 16 and len(result["points"]) == 4
    assert all(p["generated_tokens"] <= p["level"] for p in result["points"])
    for bad, message in ((["--budget", "tokens=1"], "unknown budget counter"), (["--sizes", "1,x"], "numbers"),
                         (["--samplers", "nope"], "unknown sampler")):
        argv = ["sweep", "--prompts", "open", "--samplers", "best_of_n", "--sizes", "1", "--db", url]
        for flag, value in zip(bad[::2], bad[1::2], strict=True):
            index = argv.index(flag) if flag in argv else None
            if index is None:
                argv = [a for a in argv if a not in ("--sizes", "1")] + [flag, value]
            else:
                argv[index + 1] = value
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    from storage import Database
    from storage.sweeps import list_sweeps

    database = Database.open(url)
    assert len(database.read(list_sweeps)) == 1  # the bad ones stored nothing
    database.close()


def test_the_runs_tab_downloads_a_self_contained_report(services):
    import gradio as gr

    from app.ui.runs import RunsTab
    from tests.app.helpers import XSS_SCRIPT, store_run

    run_id = store_run(services.db, [XSS_SCRIPT, "fine"], [0.2, 0.8], pick=1)
    with gr.Blocks():
        runs = RunsTab(services)
    path = runs.download_report(run_id)[runs.report_file]
    text = Path(path).read_text(encoding="utf-8")
    assert XSS_SCRIPT not in text and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in text
    assert "<script src" not in text and "Plotly.newPlot" in text and "Content-Security-Policy" in text
    assert runs.download_report(None)[runs.header] == "Pick a run first."
    assert runs.download_report(999)[runs.header].startswith("⚠ no run")


@pytest.mark.parametrize(("argv", "message"), [
    (["report", "sweep:99", "--out", "x.html"], "no sweep with id 99"),
    (["report", "run:99", "--out", "x.html"], "no run with id 99"),
    (["report", "bogus", "--out", "x.html"], "report takes run:ID, sweep:ID"),
    (["sweep", "--resume", "42"], "no sweep with id 42"),
    (["sweeps", "export", "99", "--out", "x.csv"], "no sweep with id 99"),
    (["sweep", "--prompts", "nope", "--samplers", "best_of_n", "--sizes", "1"], "no prompt set 'nope'"),
    (["sweep", "--prompts", "open", "--samplers", "cards", "--sizes", "1"], "has no size knob"),
    (["sweep", "--prompts", "digits", "--samplers", "mcts", "--sizes", "1"], "works on text, not on this set's image"),
])
def test_cli_bad_sweep_and_report_input_is_one_line(tmp_path, capsys, monkeypatch, argv, message):
    from app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--db", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "x.csv").exists()


def test_a_sampler_that_cannot_use_its_reward_fails_before_anything_is_stored(db):
    from engines.errors import ConfigError
    from storage.models import PromptSet, Sweep

    with pytest.raises(ConfigError, match="needs a reward of kind 'outcome'"):
        start(db, "open", arms=parse_arms("mcts,best_of_n@pairwise:length"), levels=(2,), models=["toy:abc"],
              evaluate="length", prompts=2)
    with pytest.raises(ConfigError, match="cannot judge one candidate"):
        start(db, "open", arms=parse_arms("best_of_n"), levels=(2,), models=["toy:abc"],
              evaluate="arith_steps", prompts=2)  # a process reward scores steps, not one candidate
    assert _count(db, Sweep) == 0 and _count(db, PromptSet) == 0


def test_a_sweep_report_escapes_prompts_picks_and_labels(db, tmp_path):
    from app.workflows.report import report_html
    from app.workflows.sweeps import add_prompt_set
    from engines.prompts import load_prompt_file
    from tests.app.helpers import XSS_PAYLOADS

    path = tmp_path / "xss.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in XSS_PAYLOADS), encoding="utf-8")
    add_prompt_set(db, load_prompt_file(path, name="xss"))
    sweep_id, plan = start(db, "xss", arms=parse_arms(["best_of_n", "mcts@length"], {"max_new_tokens": 8}), levels=(1, 2),
                           models=["toy:abc"], evaluate="length")
    list(run_stored(db, sweep_id, plan))
    text = report_html(db, "sweep", sweep_id)
    for payload in XSS_PAYLOADS[:2] + XSS_PAYLOADS[3:]:  # the markdown link is harmless text in HTML
        assert payload not in text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in text  # shown, escaped
    assert text.count('<script type="application/json"') == 1 + 2 * 1  # the sweep plot, each arm's tree
