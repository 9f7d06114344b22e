"""Steer or train? (engines.steer_or_train, ``samplescope steer-or-train``, ``report steer:NAME``) at tiny settings.

One DPOK update on the digits DDPM (2 samples, 4 denoising steps), best-of-N steering at sizes 1 and 2
and plain sampling from the fine-tuned model, 2 images per point: compute is counted alike (a fine-tuned
model's rows carry exactly its training NFE, backward NFE and seconds over the amortisation count; a
steering row only its own), every point has its interval and held-out shares, the report draws it, and
bad input is one line that runs nothing.
"""

from __future__ import annotations

import json

import pytest

from app.cli import main

pytestmark = pytest.mark.model

TINY = ["--samplers", "best_of_n", "--sizes", "1,2", "--schemes", "dpok", "--scheme-set", "dpok.batch_size=2",
        "--train-samples", "2", "--finetuned-sizes", "1", "--amortize", "4", "--prompts", "2", "--steps", "4"]


@pytest.mark.slow  # about 30 s on the shared, loaded 2-core machine: one training update, 6 sampled cells
def test_steer_or_train_counts_compute_alike_and_reports(tmp_path, capsys):
    assert main(["steer-or-train", "--name", "tiny", *TINY, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    trained = result["training"]["dpok"]
    assert trained["updates"] == 1 and trained["samples"] == 2 and trained["model_spec"].startswith("diffusers:")
    steering = [c for c in result["cells"] if c["arm"] == "best_of_n"]
    tuned = [c for c in result["cells"] if c["arm"] == "dpok + best_of_n"]
    assert len(steering) == 4 and len(tuned) == 2  # 2 sizes x 2 images; 1 size x 2 images
    for cell in steering:
        assert cell["nfe"] == cell["sampling_nfe"] == 4 * cell["level"] and cell["backward_nfe"] == 0
    for cell in tuned:
        assert cell["model"] == trained["model_spec"]
        assert cell["nfe"] == pytest.approx(cell["sampling_nfe"] + trained["nfe"] / 4)
        assert cell["backward_nfe"] == pytest.approx(trained["backward_nfe"] / 4) and trained["backward_nfe"] > 0
        assert cell["wall_seconds"] == pytest.approx(cell["sampling_seconds"] + trained["seconds"] / 4)
    for point in result["points"]:
        assert point["prompts"] == 2 and point["ci_low"] <= point["quality"] <= point["ci_high"]
        assert 0 <= point["heldout_digit"] <= 1 and point["heldout_target_low"] <= point["heldout_target"]

    out = tmp_path / "steer.html"
    assert main(["report", "steer:tiny", "--out", str(out)]) == 0
    page = out.read_text()
    assert "Quality against network evaluations per image" in page and "dpok + best_of_n" in page

    assert main(["steer-or-train", "--name", "tiny", *TINY]) == 2  # the name is taken: nothing overwritten
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--samplers", "beam_search"], "does not steer an image model"),
    (["--schemes", "nope"], "nope"),
    (["--scheme-set", "draft.k=2"], "SCHEME.KEY=VALUE for a scheme in --schemes"),
    (["--scheme-set", "dpok.kl_coef=lots"], "lots"),
    (["--amortize", "0"], "amortize_images must be at least 1"),
    (["--sizes", "1,two"], "--sizes takes whole numbers"),
    (["--name", "../x"], "must be letters"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert main(["steer-or-train", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
