"""The transformers text model on a tiny local Llama: sampling, scoring, caches, loading."""

from __future__ import annotations

import pytest
import torch

from engines.errors import ModelLoadError
from engines.models import load_model
from engines.models.base import SamplingParams
from engines.models.hf import TransformersTextModel
from engines.task import Task
from engines.trace import Cost


def test_loads_from_a_local_folder_by_spec(tiny_lm_dir):
    model = load_model(f"hf:{tiny_lm_dir}")
    assert model.describe()["parameters"] > 0
    assert load_model(f"hf:{tiny_lm_dir}") is model  # loaded once per process


def test_unreachable_hub_gives_one_line_that_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_model("hf:nobody/no-such-model-xyz")
    message = str(info.value)
    assert "\n" not in message and "hf:/path/to/folder" in message


def test_bad_specs():
    with pytest.raises(ModelLoadError, match="needs a scheme"):
        load_model("smollm2")
    with pytest.raises(Exception, match="unknown model scheme"):
        load_model("zip:foo")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("gguf:/no/such/file.gguf")


def test_chat_template_is_applied(tiny_lm):
    ids = tiny_lm.encode_task(Task(prompt="hi"))
    assert tiny_lm.decode(ids).endswith("assistant: ")
    raw = tiny_lm.encode_task(Task(prompt="hi", chat=False))
    assert tiny_lm.decode(raw) == "hi"


def test_sample_logprobs_agree_with_score(tiny_lm):
    prefix = tiny_lm.encode_task(Task(prompt="count"))
    gens = tiny_lm.sample([prefix], SamplingParams(max_new_tokens=12, temperature=1.0), n=4, rng=torch.Generator().manual_seed(0))[0]
    assert len(gens) == 4
    scored = tiny_lm.score([prefix] * 4, [g.token_ids for g in gens])
    for gen, lp in zip(gens, scored, strict=True):
        assert gen.text == tiny_lm.decode(gen.token_ids)
        assert lp == pytest.approx(gen.logprobs, abs=1e-4)
        # at temperature 1 without truncation the sampling law is the base law
        assert gen.sample_logprobs == pytest.approx(gen.logprobs, abs=1e-4)


def test_greedy_matches_transformers_generate(tiny_lm):
    prefix = tiny_lm.encode_task(Task(prompt="abc"))
    ours = tiny_lm.sample([prefix], SamplingParams(max_new_tokens=10, temperature=0))[0][0]
    ref = tiny_lm.model.generate(torch.tensor([prefix]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.token_ids == ref[0, len(prefix):].tolist()[: len(ours.token_ids)]


def test_batches_of_different_prefixes_equal_one_at_a_time(tiny_lm):
    prefixes = [tiny_lm.encode_task(Task(prompt=p)) for p in ["a", "a much longer prompt here", "mid size"]]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    together = tiny_lm.sample(prefixes, params, n=2)
    for prefix, row in zip(prefixes, together, strict=True):
        alone = tiny_lm.sample([prefix], params)[0][0]
        assert [g.token_ids for g in row] == [alone.token_ids] * 2
        assert row[0].logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_shared_prompt_is_prefilled_once(tiny_lm):
    prefix = tiny_lm.encode_task(Task(prompt="shared prompt"))
    usage = Cost()
    gens = tiny_lm.sample([prefix], SamplingParams(max_new_tokens=5), n=16, rng=torch.Generator().manual_seed(1), usage=usage)[0]
    assert usage.prefill_tokens <= len(prefix)
    assert usage.generated_tokens == sum(len(g.token_ids) for g in gens)


def test_prefix_store_reuse_gives_the_same_results_with_less_prefill(tiny_lm_dir):
    params = SamplingParams(max_new_tokens=6, temperature=0, keep_cache=True)
    outputs = {}
    for reuse in (False, True):
        model = TransformersTextModel.from_pretrained(str(tiny_lm_dir), name="t", reuse_prefixes=reuse)
        prefix = model.encode_task(Task(prompt="grow a tree"))
        usage = Cost()
        first = model.sample([prefix], params, usage=usage)[0][0]
        second = model.sample([prefix + first.token_ids], params, usage=usage)[0][0]
        outputs[reuse] = (first.token_ids, second.token_ids, second.logprobs, usage.prefill_tokens)
    assert outputs[True][:2] == outputs[False][:2]
    assert outputs[True][2] == pytest.approx(outputs[False][2], abs=1e-4)
    assert outputs[True][3] < outputs[False][3]


def test_stop_strings_end_generation(tiny_lm):
    prefix = tiny_lm.encode_task(Task(prompt="x"))
    gens = tiny_lm.sample([prefix], SamplingParams(max_new_tokens=40, temperature=1.5, stop=("e",)), n=8, rng=torch.Generator().manual_seed(3))[0]
    for gen in gens:
        if gen.finish_reason == "stop":
            assert gen.stop == "e" and gen.text.endswith("e") and "e" not in gen.text[:-1]
        else:
            assert "e" not in gen.text


def test_seeded_sampling_is_deterministic(tiny_lm):
    prefix = tiny_lm.encode_task(Task(prompt="seed"))
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9, top_k=20)
    a = tiny_lm.sample([prefix], params, n=3, rng=torch.Generator().manual_seed(7))
    b = tiny_lm.sample([prefix], params, n=3, rng=torch.Generator().manual_seed(7))
    assert [g.token_ids for g in a[0]] == [g.token_ids for g in b[0]]


def test_embeddings_and_context_limit(tiny_lm):
    emb = tiny_lm.embed(["hello", "world", "hello"])
    assert emb.shape[0] == 3 and torch.allclose(emb[0], emb[2])
    with pytest.raises(ValueError, match="context"):
        tiny_lm.sample([[5] * 500], SamplingParams(max_new_tokens=100))
