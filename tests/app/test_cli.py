from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from app.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_json_on_a_toy_model(capsys):
    code, out, _ = run_cli(
        capsys, "sample", "--model", "toy:digits", "--reward", "math", "--answer", "7", "--prompt", "n?",
        "--sampler", "best_of_n", "--n", "5", "--seed", "2", "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert len(result["candidates"]) == 5
    assert {"id", "text", "reward"} <= set(result["candidates"][0])
    assert result["picks"] and result["picks"][0] in {c["id"] for c in result["candidates"]}
    assert result["cost"]["generated_tokens"] > 0
    again = json.loads(run_cli(capsys, "sample", "--model", "toy:digits", "--reward", "math", "--answer", "7", "--prompt", "n?", "--prompt", "n?",
                               "--n", "5", "--seed", "2", "--json")[1])
    assert again["candidates"] == result["candidates"]


def test_sample_human_output_and_set_params(capsys):
    code, out, _ = run_cli(capsys, "sample", "--model", "toy:abc", "--reward", "length", "--prompt", "go",
                           "--sampler", "knockout", "--set", "n=5", "--set", "stochastic=true")
    assert code == 0
    assert "status ok" in out and out.count("*") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "--prompt", "x", "--sampler", "nope", "--model", "toy:abc"], "unknown sampler"),
        (["sample", "--prompt", "x", "--n", "0", "--model", "toy:abc"], "n must be >= 1"),
        (["sample", "--prompt", "x", "--model", "toy:abc", "--reward", "math"], "reference answer"),
        (["sample", "--prompt", "   ", "--model", "toy:abc"], "prompt is empty"),
        (["sample", "--prompt", "x", "--model", "nope:x"], "unknown model scheme"),
        (["sample", "--prompt", "x", "--model", "toy:abc", "--set", "bogus"], "KEY=VALUE"),
        (["sample", "--prompt", "x", "--model", "toy:abc", "--set", "beam=3"], "unknown parameter"),
        (["sample", "--task", "open:999"], "out of range"),
        (["sample", "--task", "nosuchset:1"], "unknown task set"),
        (["sample", "--prompt", "x", "--model", "toy:abc", "--budget", "bananas=3"], "unknown budget"),
        (["sample", "--prompt", "x", "--model", "toy:abc", "--reward", "regex:("], "invalid regex"),
        (["sample", "--prompt", "x", "--model", "toy:abc", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("samplescope: error:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(capsys):
    code, _, err = run_cli(capsys, "sample", "--prompt", "x", "--model", "toy:abc", "--device", "cuda")
    assert code == 2 and "no CUDA GPU on this machine" in err and err.count("\n") == 1


def test_list_commands(capsys):
    for what in ("samplers", "rewards", "models", "tasks"):
        code, out, _ = run_cli(capsys, "list", what, "--json")
        assert code == 0 and json.loads(out)
    names = {row["name"] for row in json.loads(run_cli(capsys, "list", "samplers", "--json")[1])}
    assert {"best_of_n", "rejection", "majority", "weighted_majority", "best_of_majority", "knockout", "preference_pairs"} <= names


def test_console_script_help_and_usage_errors():
    result = subprocess.run([sys.executable, "-m", "app.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "sample" in result.stdout
    result = subprocess.run([sys.executable, "-m", "app.cli", "sample"], capture_output=True, text=True)
    assert result.returncode == 2 and "required" in result.stderr


def test_sample_save_then_runs_lists_it(capsys, tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    code, out, _ = run_cli(capsys, "sample", "--model", "toy:abc", "--reward", "length", "--prompt", "go",
                           "--n", "4", "--save", "--db", db, "--json")
    assert code == 0
    run_id = json.loads(out)["run_id"]
    code, out, _ = run_cli(capsys, "runs", "--json", "--db", db)
    runs = json.loads(out)
    assert code == 0 and any(r["id"] == run_id for r in (runs if isinstance(runs, list) else runs["runs"]))
