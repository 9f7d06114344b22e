"""Input fuzzing: the CLI, the /sample API and the import path, fed random and adversarial values.

Every bad input must be one line (exit 2 on the CLI, a gr.Error from the API, one
InvalidInput/exit 2 from an import), never a traceback, and the database must be
byte-for-byte unchanged where nothing should be written. Random cases come from a seeded
generator, so a failure names a reproducible case.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from tests.app.helpers import launched, open_db

ROOT = Path(__file__).resolve().parents[2]

ADVERSARIAL = [
    "", " ", "\t\n", "nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "2.5", "99999999999999999999999",
    "\x00", "a\x00b", "\x1b[2J\x1b[H", "\u202e\u200b", "\ud800", os.fsdecode(b"\xff\xfe\xc3"), "🙂" * 50,
    "x" * 20_000, "{}", "[]", "null", "true", "../../../../etc/passwd", ":", "toy:", "hf:", "nope:x",
    "regex:(", "length:abc", "length:1e309", "<script>alert(1)</script>", "'; DROP TABLE votes; --",
    "%s%s%n", "${HOME}", "$(reboot)", "toy:abc\n", " toy:abc",
]
OPTIONS = ["--model", "--reward", "--sampler", "--n", "--seed", "--set", "--budget", "--answer", "--task", "--prompt"]
SAFE = {"--model": "toy:abc", "--reward": "length", "--sampler": "best_of_n"}


def digest(path: Path) -> str:
    """The database file and its WAL, byte for byte."""
    h = hashlib.sha256()
    for p in (path, path.with_name(path.name + "-wal")):
        h.update(p.read_bytes() if p.exists() else b"-")
    return h.hexdigest()


def one_line_error(code: int, err: str) -> bool:
    return code == 2 and err.startswith("samplescope: error:") and err.count("\n") == 1 and "Traceback" not in err


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def saved_db(tmp_path):
    path = tmp_path / "fuzz.db"
    open_db(path).close()
    return path


def _random_argv(rng: random.Random) -> list[str]:
    argv = ["sample", "--model", "toy:abc", "--reward", "length", "--prompt", "go"]
    for _ in range(rng.randint(1, 3)):
        option = rng.choice(OPTIONS)
        value = rng.choice(ADVERSARIAL) if rng.random() < 0.8 else "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(1, 30)))
        if option in ("--set", "--budget"):
            key = rng.choice(["n", "temperature", "max_new_tokens", "generated_tokens", "wall_seconds", "bogus", value])
            value = f"{key}={value}"
        if option in ("--prompt", "--task"):
            argv = [a for a in argv if a not in ("--prompt", "go")]
        argv += [option, value]
    return argv


@pytest.mark.parametrize("case", range(80))
def test_random_sample_commands_answer_in_one_line_and_write_nothing(capsys, saved_db, case):
    rng = random.Random(case)
    argv = _random_argv(rng) + ["--save", "--db", f"sqlite:///{saved_db}", "--json"]
    before = digest(saved_db)
    code, out, err = cli(capsys, argv)
    assert "Traceback" not in err, (argv, err)
    if code == 0:  # the random values happened to be valid: a stored run, parseable output
        assert json.loads(out)["run_id"] >= 1
    else:
        assert one_line_error(code, err), (argv, code, err)
        assert digest(saved_db) == before, argv


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prompt", os.fsdecode(b"caf\xe9 \xff")], "not valid UTF-8"),
        (["--prompt", "x", "--n", "3", "--sampler", "cards"], "no size parameter"),
        (["--prompt", "x", "--n", "3", "--set", "n=4"], "given twice"),
        (["--prompt", "x", "--seed", "99999999999999999999999"], "seed must be"),
        (["--prompt", "x", "--budget", "generated_tokens=nan"], "budget generated_tokens"),
        (["--prompt", "x", "--budget", "wall_seconds=inf"], "finite"),
        (["--prompt", "x", "--set", "n=1e309"], "n"),
        (["--prompt", "x\x00y"], "NUL"),
        (["--prompt-file", "/nonexistent/prompt.txt"], "No such file"),
        (["--prompt", "x" * 2_000, "--model", "TINY"], "the model's context is 512 tokens"),
        (["--prompt", "x" * 100_000, "--model", "TINY"], "far beyond the model's context of 512"),
    ],
)
def test_adversarial_sample_commands(capsys, saved_db, tiny_lm_dir, argv, message):
    argv = [f"hf:{tiny_lm_dir}" if a == "TINY" else a for a in argv]
    base = ["sample", "--reward", "length", "--save", "--db", f"sqlite:///{saved_db}"]
    if "--model" not in argv:
        base += ["--model", "toy:abc"]
    before = digest(saved_db)
    code, _, err = cli(capsys, base + argv)
    assert one_line_error(code, err) and message in err, err
    assert digest(saved_db) == before


@pytest.mark.parametrize("argv", [["--port", "99999"], ["--port", "-1"], ["--port", "0"], ["--port", "http"],
                                  ["--port", "1e3"], ["--concurrency", "0"], ["--concurrency", "100000"]])
def test_bad_serve_options_are_one_line(capsys, saved_db, argv):
    before = digest(saved_db)
    code, _, err = cli(capsys, ["serve", "--no-preload", "--model", "toy:abc", "--db", f"sqlite:///{saved_db}", *argv])
    assert one_line_error(code, err), err
    assert digest(saved_db) == before


@pytest.mark.slow
def test_real_undecodable_argv_bytes_stdin_and_prompt_files(tmp_path, tiny_lm_dir):
    """The process boundary itself: argv bytes that are not UTF-8, a prompt on stdin, prompt files."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "app.cli", "sample", "--model", "toy:abc", "--reward", "length", "--n", "2", "--json"]
    bad = subprocess.run([*cmd, "--prompt", b"caf\xe9 \xff\xfe"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    err = bad.stderr.decode("utf-8", "replace")
    assert bad.returncode == 2 and err.count("\n") == 1 and "not valid UTF-8" in err, err

    good = subprocess.run([*cmd, "--prompt", "-"], cwd=ROOT, env=env, input="from stdin ✓".encode(), capture_output=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["task"]["prompt"] == "from stdin ✓"

    (tmp_path / "p.txt").write_bytes(b"from a file\nsecond line")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    big = tmp_path / "big.txt"
    big.write_text("word " * 200_000, encoding="utf-8")  # 1 MB: beyond any shell's argument limit
    ok = subprocess.run([*cmd, "--prompt-file", str(tmp_path / "p.txt")], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["task"]["prompt"] == "from a file\nsecond line"
    for path, model, message in ((tmp_path / "bad.txt", "toy:abc", "is not UTF-8"),
                                 (big, f"hf:{tiny_lm_dir}", "beyond the model's context")):
        done = subprocess.run([*cmd, "--model", model, "--prompt-file", str(path)], cwd=ROOT, env=env,
                              capture_output=True, timeout=120)
        err = done.stderr.decode()
        assert done.returncode == 2 and err.count("\n") == 1 and message in err, err


# -- the /sample API -------------------------------------------------------------------------------------------

API_BAD = [
    # model, reward, sampler, prompt, params, answer, seed, budget
    ("toy:abc", "length", "best_of_n", 42, {}, None, 0, None),
    ("toy:abc", "length", "best_of_n", ["go"], {}, None, 0, None),
    ("toy:abc", "length", "best_of_n", None, {}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", [1, 2], None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", "n=3", None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {"n": "many"}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {"n": 10**30}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {"n": [3]}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {"n": {"$gt": 1}}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {"temperature": -1}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {"bogus": 1}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {}, None, -5, None),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 2**70, None),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 1.5, None),
    ("toy:abc", "length", "best_of_n", "go", {}, None, "seven", None),
    ("toy:abc", "length", "best_of_n", "go", {}, None, True, None),
    ("toy:abc", "length", "best_of_n", "\ud800", {}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "a\x00b", {}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "", {}, None, 0, None),
    ("toy:" + "a" * 5000, "length", "best_of_n", "go", {}, None, 0, None),
    ("toy:abc", "length", 7, "go", {}, None, 0, None),
    ("toy:abc", ["length"], "best_of_n", "go", {}, None, 0, None),
    ({"spec": "toy:abc"}, "length", "best_of_n", "go", {}, None, 0, None),
    ("../../etc/passwd", "length", "best_of_n", "go", {}, None, 0, None),
    ("hf:/nonexistent/folder", "length", "best_of_n", "go", {}, None, 0, None),
    ("toy:abc", "regex:(", "best_of_n", "go", {}, None, 0, None),
    ("toy:abc", "length", "cards", "go", {"n": 3}, None, 0, None),
    ("toy:abc", "length", "<script>", "go", {}, None, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {}, {"answer": 1}, 0, None),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 0, {"generated_tokens": 2.5}),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 0, {"generated_tokens": -1}),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 0, {"generated_tokens": True}),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 0, {"tokens": 5}),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 0, {"wall_seconds": "nan"}),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 0, [1]),
    ("toy:abc", "length", "best_of_n", "go", {}, None, 0, "generated_tokens=5"),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from gradio_client import Client

    from app.ui.services import Services

    path = tmp_path_factory.mktemp("api") / "api.db"
    db = open_db(path)
    with launched(Services(db=db, default_model="toy:abc")) as url:
        yield Client(url, verbose=False), path, url
    db.close()


def _api_rng_cases(n: int) -> list[tuple]:
    rng = random.Random(1234)
    values = [*ADVERSARIAL, None, 0, -1, 1.5, 10**20, [], {}, [None], {"a": None}, True]
    cases = []
    for _ in range(n):
        case = ["toy:abc", "length", "best_of_n", "go", {"n": 2, "max_new_tokens": 2}, None, 0, None]
        for slot in rng.sample(range(8), rng.randint(1, 3)):
            value = rng.choice(values)
            if slot == 4 and rng.random() < 0.6:
                value = {rng.choice(["n", "temperature", "max_new_tokens", "bogus", str(value)[:20]]): value}
            case[slot] = value
        cases.append(tuple(case))
    return cases


@pytest.mark.parametrize("args", API_BAD + _api_rng_cases(40))
def test_sample_api_bad_and_random_requests(api, args):
    from bench.gradio_http import GradioCallError, PageSession

    _, path, url = api
    page = PageSession(url)  # raw HTTP: what any client can send, lone surrogates and NaN included
    before = digest(path)
    try:
        (result,) = page.call(page.dependency(api_name="sample"), list(args))
    except GradioCallError as exc:
        text = str(exc)
        assert "\n" not in text and "Traceback" not in text and "internal error" not in text, (args, text)
        assert digest(path) == before, args
        return
    # the random values happened to be valid: a stored run came back
    assert args not in API_BAD, f"accepted: {args!r:.200}"
    assert result["status"] in ("ok", "budget") and result["run_id"] >= 1


def test_sample_api_n_is_the_samplers_size(api):
    from storage import load_run

    client, path, _ = api
    result = client.predict("toy:abc", "length", "smc", "go", {"n": 3, "max_new_tokens": 4}, None, 1, api_name="/sample")
    assert result["params"]["particles"] == 3 and "n" not in result["params"]
    db = open_db(path)
    try:
        assert db.read(lambda s: load_run(s, result["run_id"])).config["particles"] == 3
    finally:
        db.close()


# -- the import path -------------------------------------------------------------------------------------------

def _import_rows(rng: random.Random) -> str:
    values = [*ADVERSARIAL, None, 0, 1.5, [], {}, True, float("nan"), 10**30]
    lines = []
    for _ in range(rng.randint(1, 4)):
        row = {"prompt": "p", "chosen": "a", "rejected": "b"}
        for key in rng.sample(["prompt", "chosen", "rejected", "annotator", "voted_at", "rationale", "chosen_image",
                               "rejected_image", "strategy", "unknown_key"], rng.randint(1, 3)):
            row[key] = rng.choice(values)
        lines.append(json.dumps(row, allow_nan=True))
    if rng.random() < 0.2:
        lines.insert(rng.randint(0, len(lines)), rng.choice(["not json", "[1]", "{", "\x00", '"x"']))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", range(60))
def test_random_import_files_are_one_line_and_atomic(capsys, saved_db, tmp_path, case):
    rng = random.Random(case)
    path = tmp_path / "in.jsonl"
    if rng.random() < 0.15:
        path.write_bytes(bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 200))))
    else:
        path.write_text(_import_rows(rng), encoding="utf-8", errors="surrogatepass")
    before = digest(saved_db)
    code, out, err = cli(capsys, ["import", str(path), "--db", f"sqlite:///{saved_db}", "--json"])
    assert "Traceback" not in err, err
    if code == 0:
        assert json.loads(out)["rows"] >= 1
    else:
        assert one_line_error(code, err), (path.read_bytes()[:300], err)
        assert digest(saved_db) == before
