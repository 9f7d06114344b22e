"""Formats written once: chat-template prompt ids, reward-model input text, the Math-Shepherd
PRM text, PNG data URIs back to tensors, and the JSON Lines rule. Each test pins the one
function and checks that both of its former callers now give the same answer."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

from engines.errors import ConfigError
from engines.jsonl import JsonLinesError, parse_json_lines
from engines.models.chat import reward_model_text, task_ids, text_ids
from engines.models.diffusion import image_from_data_uri, images_to_data_uris
from engines.rewards.shepherd import ShepherdFormat, single_token_id
from engines.task import Task
from tests.tiny import CHAT, char_tokenizer


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- chat-template prompt ids -------------------------------------------------------------------


def test_task_ids_use_the_chat_template_with_the_generation_prompt():
    tok = char_tokenizer(CHAT)
    task = Task(prompt="2+3?", system="be brief")
    assert task_ids(tok, task) == _ids(tok, "<s>system: be brief\n<s>user: 2+3?\n<s>assistant: ")
    assert task_ids(tok, Task(prompt="2+3?", chat=False)) == _ids(tok, "2+3?")  # a raw task skips the template


def test_task_ids_without_a_template_are_the_raw_prompt_with_the_bos_the_tokenizer_asks_for():
    tok = char_tokenizer(None)
    assert task_ids(tok, Task(prompt="hi")) == _ids(tok, "hi")
    tok.add_bos_token = True
    assert task_ids(tok, Task(prompt="hi")) == [tok.bos_token_id, *_ids(tok, "hi")]
    assert text_ids(tok, "hi") == _ids(tok, "hi")  # raw text never gains special tokens


def test_in_process_and_locally_tokenised_served_models_encode_tasks_alike(tiny_lm_dir):
    from engines.models import load_model
    from engines.models.served.tokens import LocalTokenizer

    model = load_model(f"hf:{tiny_lm_dir}")
    served = LocalTokenizer(model.tokenizer, "local", len(model.tokenizer))
    for task in (Task(prompt="2+3?"), Task(prompt="2+3?", system="s"), Task(prompt="2+3?", chat=False)):
        assert served.encode_task(task) == model.encode_task(task) == task_ids(model.tokenizer, task)


# -- reward-model input ----------------------------------------------------------------------


def test_reward_model_text_is_the_conversation_or_prompt_newline_response():
    assert reward_model_text(char_tokenizer(CHAT), "p", "r") == "<s>user: p\n<s>assistant: r\n"
    assert reward_model_text(char_tokenizer(None), "p", "r") == "p\nr"
    assert reward_model_text(None, "p", "r") == "p\nr"  # a served RM whose tokenizer is not here


def test_in_process_and_served_reward_models_build_the_same_input():
    from engines.rewards.classifier import ClassifierReward
    from engines.rewards.served import ServedClassifierReward

    for tok in (char_tokenizer(CHAT), char_tokenizer(None)):
        here = ClassifierReward(torch.nn.Linear(1, 1), tok, "rm")._text("2+3?", "5")
        there = ServedClassifierReward(None, "m", tok, "rm")._input("2+3?", "5")
        assert there == list(tok(here)["input_ids"])
    assert ServedClassifierReward(None, "m", None, "rm")._input("2+3?", "5") == "2+3?\n5"


# -- Math-Shepherd ---------------------------------------------------------------------------


def test_shepherd_text_puts_the_tag_after_every_stripped_step():
    fmt = ShepherdFormat(step_tag="#", good="+", bad="-")
    assert fmt.text("2+3*4?", ["3*4=12\n", "  2+12=14\n", "so 14"]) == "2+3*4?\n3*4=12 #\n2+12=14 #\nso 14 #\n"
    assert ShepherdFormat() == ShepherdFormat(step_tag="ки", good="+", bad="-")  # Math-Shepherd's own tokens
    with pytest.raises(ConfigError, match="step tag"):
        fmt.text("p", ["a # b\n"])
    with pytest.raises(ConfigError, match="2 step tags for 3 steps"):
        fmt.check_scores([0.5, 0.5], ["a", "b", "c"])
    with pytest.raises(ConfigError, match="non-empty"):
        ShepherdFormat(step_tag=" ")


def test_shepherd_tokens_must_be_single_tokens():
    tok = char_tokenizer(None)
    assert ShepherdFormat(step_tag="#", good="+", bad="-").token_ids(tok) == tuple(_ids(tok, c)[0] for c in "#+-")
    with pytest.raises(ConfigError, match="not a single token"):
        single_token_id(tok, "ab")


def test_in_process_and_served_prms_read_the_same_tokens():
    from engines.rewards.served import ServedShepherdPRM
    from engines.rewards.steps import ShepherdPRM

    tok = char_tokenizer(None)
    here = ShepherdPRM(torch.nn.Linear(1, 1), tok, step_tag="#", good="+", bad="-", name="p")
    there = ServedShepherdPRM(None, "m", tok, step_tag="#", good="+", bad="-", name="p")
    assert here.format == there.format and (here.tag_id, here.good_id, here.bad_id) == (there.tag_id, there.good_id, there.bad_id)


# -- PNG data URIs ---------------------------------------------------------------------------


def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_png_data_uris_round_trip_grey_and_colour():
    grey = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    colour = torch.linspace(-1, 1, 48).view(1, 3, 4, 4)
    for batch in (grey, colour):
        back = image_from_data_uri(images_to_data_uris(batch)[0])
        assert back.shape == batch.shape[1:] and torch.allclose(back, batch[0], atol=1 / 127.5)


def test_palette_pngs_are_read_through_their_palette():
    from PIL import Image

    indices = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    grey = Image.fromarray(indices, mode="P")
    grey.putpalette([255, 255, 255, 0, 0, 0, 128, 128, 128, 64, 64, 64])  # index 0 is white, not black
    out = image_from_data_uri(_png(grey))
    assert out.shape == (1, 2, 2)
    assert ((out[0] + 1) * 127.5).round().tolist() == [[255, 0], [128, 64]]  # intensities, not indices

    colour = Image.fromarray(indices, mode="P")
    colour.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
    out = image_from_data_uri(_png(colour))
    assert out.shape == (3, 2, 2)
    assert ((out[:, 0, 0] + 1) * 127.5).round().tolist() == [255, 0, 0]
    assert ((out[:, 1, 1] + 1) * 127.5).round().tolist() == [10, 20, 30]


def test_bad_png_data_uris_are_one_line():
    for bad in ("", "data:image/jpeg;base64,AAAA", "data:image/png;base64,@@@@", "data:image/png;base64,AAAA"):
        with pytest.raises(ConfigError, match="PNG data URI"):
            image_from_data_uri(bad)


def test_sweeps_and_reward_training_decode_pngs_with_the_shared_function():
    import app.workflows.reward_training as training
    import engines.sweep as sweep

    assert training.image_from_data_uri is image_from_data_uri and sweep.image_from_data_uri is image_from_data_uri


# -- JSON Lines ------------------------------------------------------------------------------


def test_json_lines_read_crlf_and_lf_alike():
    rows = [{"prompt": "a"}, {"prompt": "b\u2028c"}]
    lf = b'{"prompt": "a"}\n\n{"prompt": "b\xe2\x80\xa8c"}\n'
    crlf = lf.replace(b"\n", b"\r\n")
    assert parse_json_lines(lf) == parse_json_lines(crlf) == rows  # U+2028 in a string is not a line break
    assert parse_json_lines(lf.rstrip(b"\n")) == rows  # no final newline


def test_json_lines_name_the_bad_line_counting_newlines():
    cases = [
        (b'{"a": 1}\r\n{"a": 2}\r\n{"a"\r\n', 3, "json"),
        (b'{"a": 1}\n\n[1]\n', 3, "object"),
        (b'{"a": 1}\n{"a": "\xff"}\n', 2, "utf-8"),
        (b'{"a": 1}\r{"a": 2}\n', 1, "json"),  # a lone \r is not a line break
    ]
    for data, line, reason in cases:
        with pytest.raises(JsonLinesError) as caught:
            parse_json_lines(data)
        assert (caught.value.line, caught.value.reason) == (line, reason)


def test_prompt_files_and_preference_imports_read_by_the_same_rule(tmp_path):
    from engines.prompts import PromptSetError
    from engines.prompts import read_rows as read_prompt_rows
    from storage.errors import InvalidInput
    from storage.exports import read_rows as read_import_rows

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\r\n{"prompt": "q", "chosen": "c", "rejected": "d"}\r\n')
    assert read_prompt_rows(path) == read_import_rows(path) == parse_json_lines(path.read_bytes())
    path.write_bytes(b'{"prompt": "p"}\r{"prompt": "q"}\n')
    with pytest.raises(PromptSetError, match="rows.jsonl line 1: not valid JSON"):
        read_prompt_rows(path)
    with pytest.raises(InvalidInput, match=":1: not JSON"):
        read_import_rows(path)


# -- adaptive resampling (SMC over steps and FK steering) -------------------------------------


def test_adaptive_resampling_resamples_only_below_the_ess_threshold():
    from engines.samplers.particles import adaptive_resample, effective_sample_size, resample

    even = [0.0, 0.0, 0.0, 0.0]
    kept = adaptive_resample(even, ["a", "b", "c", "d"], step=3, threshold=0.5, method="systematic", rng=None)
    assert not kept.resampled and kept.ancestors == [0, 1, 2, 3] and kept.log_evidence == 0.0
    assert [(e.kind, e.resampled, e.step, e.ess) for e in kept.events] == [("resample", False, 3, 4.0)]

    skewed = [0.0, -30.0, -30.0, -30.0]  # ESS ≈ 1 < 0.5·4
    done = adaptive_resample(skewed, ["a", "b", "c", "d"], step=1, threshold=0.5, method="systematic",
                             rng=torch.Generator().manual_seed(0), prune_reason="gone")
    assert done.resampled and done.ancestors == [0, 0, 0, 0]
    assert done.ess == pytest.approx(effective_sample_size(skewed))
    assert done.log_evidence == pytest.approx(torch.logsumexp(torch.tensor(skewed, dtype=torch.float64), 0).item() - np.log(4))
    assert [(e.kind, getattr(e, "node", None)) for e in done.events] == [("resample", None), ("prune", "b"), ("prune", "c"), ("prune", "d")]
    assert all(e.reason == "gone" for e in done.events[1:])

    # the draw is particles.resample's, from the same generator state
    weights = [0.0, -1.0, -0.5, -2.0]
    forced = adaptive_resample(weights, list("abcd"), step=0, threshold=0.0, method="multinomial",
                               rng=torch.Generator().manual_seed(7), force=True)
    assert forced.resampled and forced.ancestors == resample(weights, "multinomial", torch.Generator().manual_seed(7)).tolist()
    assert not adaptive_resample(skewed, list("abcd"), step=0, threshold=0.5, method="systematic", rng=None, allowed=False).resampled


def test_adaptive_resampling_prunes_a_repeated_node_once():
    from engines.samplers.particles import adaptive_resample

    step = adaptive_resample([0.0, -40.0, -40.0], ["a", "b", "b"], step=2, threshold=1.0, method="systematic",
                             rng=torch.Generator().manual_seed(0))
    assert step.ancestors == [0, 0, 0] and [e.node for e in step.events[1:]] == ["b"]
