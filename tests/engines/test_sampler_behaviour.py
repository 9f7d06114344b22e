"""One behaviour suite that every registered text sampler must pass.

The tests take a ``backend`` fixture (model, task, rewards, how traces are
compared); here it is the toy model (no network). tests/engines/test_served.py
imports these tests and overrides ``backend`` with a real vLLM server.
"""

from __future__ import annotations

import threading

import pytest
import torch

from engines.models import load_model
from engines.rewards.base import ScalarAsPairwise
from engines.samplers import SAMPLERS, build_sampler
from engines.task import Task
from engines.trace import Budget, Trace, collect
from tests.engines.toys import DigitValue

TEXT_SAMPLERS = [name for name, cls in SAMPLERS.items() if "text" in cls.modalities]
TASK = Task(prompt="pick a number", answer="7")


def reward_for(name: str, outcome=None):
    outcome = outcome or DigitValue()
    kind = SAMPLERS.get(name).reward_kind
    if kind == "outcome":
        return outcome
    if kind == "pairwise":
        return ScalarAsPairwise(outcome, tau=0.05)
    from engines.rewards.steps import OutcomeAsStep  # step-level samplers: the value of the digits so far

    return OutcomeAsStep(outcome)


class ToyBackend:
    """The toy digits model; subclasses point the suite at another model."""

    task = TASK

    def model(self):
        return load_model("toy:digits")

    def reward(self, name: str):
        return reward_for(name)

    def comparable(self, trace: Trace) -> list[dict]:
        return comparable(trace)


@pytest.fixture
def backend():
    return ToyBackend()


def small_config(name: str, **extra) -> dict:
    fields = {s.name for s in SAMPLERS.get(name).Config.specs()}
    small = {"n": 6, "max_new_tokens": 3, "rollouts": 1, "particles": 6, "beams": 2, "expand": 3, "simulations": 6,
             "max_tokens": 4, "interval": 1, "block_size": 2, "mcmc_steps": 2, "step": "tokens", "max_steps": 3,
             "final_tokens": 8, "prefix_tokens": 1, "judge_tokens": 16}
    params = {k: v for k, v in small.items() if k in fields}
    params.update(extra)
    return params


def run(name: str, backend=None, seed: int = 0, budget: Budget | None = None, cancel=None, **extra) -> Trace:
    backend = backend or ToyBackend()
    sampler = build_sampler(name, small_config(name, **extra))
    rng = torch.Generator().manual_seed(seed)
    return collect(start(sampler, backend, backend.model(), backend.reward(name), budget=budget, rng=rng, cancel=cancel))


def start(sampler, backend, model, reward, **kwargs):
    """``sampler.run`` on the backend; a served backend whose model the sampler refuses in one line
    (deepconf needs token confidences that only in-process models report) skips, saying why."""
    from engines.errors import ConfigError

    try:
        return sampler.run(backend.task, model, reward, **kwargs)
    except ConfigError as exc:
        if type(backend) is ToyBackend:  # on the toy model every sampler must run
            raise
        pytest.skip(f"{sampler.name} refuses {getattr(model, 'name', model)}: {exc}")


def comparable(trace: Trace) -> list[dict]:
    rows = []
    for event in trace.to_list():
        if event["kind"] in ("cost", "done"):
            event = {k: v for k, v in event.items() if k != "cost"}
            event.pop("metrics", None)
        rows.append(event)
    return rows


@pytest.mark.parametrize("name", TEXT_SAMPLERS)
def test_same_seed_same_trace(name, backend):
    assert backend.comparable(run(name, backend, seed=3)) == backend.comparable(run(name, backend, seed=3))


@pytest.mark.parametrize("name", TEXT_SAMPLERS)
def test_ends_with_exactly_one_done(name, backend):
    trace = run(name, backend)
    kinds = [e.kind for e in trace.events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert trace.done.status == "ok"
    assert set(trace.done.picks) <= set(trace.nodes)
    for pick in trace.done.picks:
        assert trace.nodes[pick].final


FLAT = [n for n in TEXT_SAMPLERS if "n" in {s.name for s in SAMPLERS.get(n).Config.specs()} and SAMPLERS.get(n).reward_kind != "step"]


@pytest.mark.parametrize("name", FLAT)
def test_exactly_n_candidates(name, backend):
    trace = run(name, backend)
    assert len(trace.candidates) == 6


@pytest.mark.parametrize("name", TEXT_SAMPLERS)
def test_generated_token_budget_is_never_passed(name, backend):
    trace = run(name, backend, budget=Budget(generated_tokens=7))
    assert trace.done.cost["generated_tokens"] <= 7
    # either the budget stopped it, or the whole run fit (then it finished normally with a pick)
    assert trace.done.status == "budget" or (trace.done.status == "ok" and trace.done.picks)
    tight = run(name, backend, budget=Budget(generated_tokens=1))
    assert tight.done.status == "budget" and tight.done.cost["generated_tokens"] == 0


@pytest.mark.parametrize("name", TEXT_SAMPLERS)
def test_cancel_before_start_stops_at_once(name, backend):
    cancel = threading.Event()
    cancel.set()
    trace = run(name, backend, cancel=cancel)
    assert trace.done.status == "cancelled"
    assert trace.done.cost["generated_tokens"] == 0


class CountingModel:
    """The toy model, counting the sample/score calls made after a cancel flag went up."""

    def __init__(self, model, flag):
        self.model, self.flag, self.calls_after_cancel = model, flag, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def sample(self, *args, **kwargs):
        self.calls_after_cancel += self.flag.is_set()
        return self.model.sample(*args, **kwargs)


@pytest.mark.parametrize("name", TEXT_SAMPLERS)
def test_cancel_mid_run_stops_within_a_step(name, backend):
    cancel = threading.Event()
    model = CountingModel(backend.model(), cancel)
    fields = {s.name for s in SAMPLERS.get(name).Config.specs()}
    sampler = build_sampler(name, small_config(name, **{k: v for k, v in {"n": 36, "batch_size": 4}.items() if k in fields}))
    trace = Trace()
    for event in start(sampler, backend, model, backend.reward(name), rng=torch.Generator().manual_seed(0), cancel=cancel):
        trace.append(event)
        if event.kind == "node" and event.parent is not None:
            cancel.set()
    assert trace.done.status in ("cancelled", "ok")
    assert model.calls_after_cancel == 0  # the flag is honoured before any further model call


@pytest.mark.parametrize("name", TEXT_SAMPLERS)
def test_trace_json_round_trip(name, backend):
    trace = run(name, backend)
    assert Trace.from_json(trace.to_json()).to_list() == trace.to_list()


@pytest.mark.parametrize("name", TEXT_SAMPLERS)
def test_costs_are_counted(name, backend):
    cost = run(name, backend).done.cost
    assert cost["generated_tokens"] > 0 and cost["model_calls"] > 0 and cost["reward_calls"] > 0
    assert cost["wall_seconds"] >= 0


def test_empty_prompt_and_wrong_reward_are_refused():
    from engines.errors import ConfigError

    model = load_model("toy:digits")
    with pytest.raises(ConfigError, match="empty"):
        build_sampler("best_of_n").run(Task(prompt="  "), model, DigitValue())
    with pytest.raises(ConfigError, match="pairwise"):
        build_sampler("best_of_n").run(TASK, model, ScalarAsPairwise(DigitValue()))


# -- learned:NAME, a reward trained on votes, in every text sampler -------------------------------


@pytest.fixture(scope="module")
def learned_folder(tmp_path_factory):
    """A BT head on the toy model's embeddings, fitted to votes that follow DigitValue."""
    import json

    import numpy as np

    from engines.rewards.bt_fit import FitConfig, PairData, run_to_end
    from engines.rewards.learned import save_head

    model = load_model("toy:digits")
    gen = torch.Generator().manual_seed(0)
    texts = [str(int(v)) for v in torch.randint(0, 100, (120,), generator=gen)]
    a, b = texts[:60], texts[60:]
    embed = lambda xs: model.embed([f"{TASK.prompt}\n\n{x}" for x in xs])  # noqa: E731
    y = torch.tensor([1.0 if int(x) > int(z) else 0.0 if int(x) < int(z) else 0.5 for x, z in zip(a, b, strict=True)])
    result = run_to_end(PairData(embed(a), embed(b), y, np.arange(60) // 2), FitConfig(epochs=60, curve=(1.0,)))
    folder = tmp_path_factory.mktemp("learned") / "digits-votes"
    folder.mkdir()
    save_head(result.head, folder)
    card = {"name": "digits-votes", "kind": "head", "modality": "text", "base": "toy:digits",
            "head": {"input_dim": result.head.input_dim, "hidden": 0}}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


def learned_reward_for(name: str, folder):
    from engines.rewards import build_reward
    from engines.rewards.steps import OutcomeAsStep

    kind = SAMPLERS.get(name).reward_kind
    if kind == "pairwise":
        return build_reward(f"pairwise:learned:{folder}")
    reward = build_reward(f"learned:{folder}")
    return reward if kind == "outcome" else OutcomeAsStep(reward)


@pytest.mark.parametrize("name", TEXT_SAMPLERS)
def test_learned_reward_drives_every_text_sampler(name, learned_folder):
    model = load_model("toy:digits")

    def go(seed):
        sampler = build_sampler(name, small_config(name))
        rng = torch.Generator().manual_seed(seed)
        return collect(sampler.run(TASK, model, learned_reward_for(name, learned_folder), rng=rng))

    first = go(4)
    assert first.done.status == "ok" and first.done.picks
    assert comparable(first) == comparable(go(4))
    assert first.done.cost["reward_calls"] > 0
    if SAMPLERS.get(name).reward_kind == "pairwise":  # P(a beats b) = sigmoid(r_a - r_b) of the learned reward
        assert any(e.kind == "match" for e in first.events)
    else:
        side = getattr(SAMPLERS.get(name), "side_scores", ())  # a sampler's own predictions, not the reward
        scores = [e for e in first.events if e.kind == "score" and e.reward not in side]
        assert scores and all("learned:" in e.reward for e in scores)


def test_learned_reward_ranks_like_the_votes_it_learned(learned_folder):
    from engines.rewards import build_reward

    reward = build_reward(f"learned:{learned_folder}")
    texts = ["3", "15", "42", "97"]
    values = reward.score(TASK, texts)
    assert values == sorted(values)  # the votes preferred larger numbers
    picked = collect(build_sampler("best_of_n", small_config("best_of_n")).run(
        TASK, load_model("toy:digits"), reward, rng=torch.Generator().manual_seed(2)))
    cands = [picked.nodes[c].text for c in picked.done.candidates]
    best = picked.nodes[picked.done.picks[0]].text
    assert reward.score(TASK, [best])[0] == max(reward.score(TASK, cands))
