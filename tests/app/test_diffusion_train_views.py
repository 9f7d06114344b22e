"""The diffusion training views (app.views.diffusion_train) from scripted events: no model, no browser."""

from __future__ import annotations

import base64

from app.views import diffusion_train as views
from engines.trace import DoneEvent, EvalEvent, GroupEvent, NodeEvent, UpdateEvent

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def batch(step: int, rewards, advantages=(), images=None, **meta):
    root = f"u{step}"
    ids = [f"{root}.s{i}" for i in range(len(rewards))]
    images = images or [PNG] * len(rewards)
    return [NodeEvent(id=root, parent=None),
            *(NodeEvent(id=i, parent=root, depth=1, image=img, final=True) for i, img in zip(ids, images, strict=True)),
            GroupEvent(step=step, prompt=root, nodes=ids, rewards=list(rewards), advantages=list(advantages), meta=meta)]


def fold(events):
    view = views.DiffusionTrainingView()
    changed = [view.add(e) for e in events]
    return view, changed


def test_grids_keep_the_first_batch_and_the_newest_and_refuse_other_uris():
    hostile = 'javascript:alert(1)"><script>'
    view, _ = fold([*batch(0, [0.1, 0.3], chain_steps=4, stochastic_steps=[0, 1]),
                    *batch(1, [0.9, 0.7], images=[PNG, hostile], chain_steps=4, stochastic_steps=[0, 1])])
    html = views.sample_grids(view)
    assert "mean reward 0.200" in html and "mean reward 0.800" in html and "update 2's batch" in html
    assert html.count("<img") == 3 and "script" not in html and "javascript" not in html


def test_rollout_marks_steps_and_credits_each_sample_per_step():
    group = batch(0, [0.2, 0.8], [-0.6, 0.6], chain_steps=5, stochastic_steps=[1, 3],
                  sample_step_advantages=[[-0.6, -0.1], [0.6, 0.1]])
    view, _ = fold(group)
    fig = views.rollout_figure(view)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["deterministic step (no log-prob)"].x) == [0, 2, 4]
    assert list(by_name["stochastic step (draws noise)"].x) == [1, 3]
    assert list(by_name["advantage"].y) == [0.6, 0.1]  # the best sample (reward 0.8)'s own credits
    assert "sample 2, reward 0.800; 2/5 steps stochastic" in fig.layout.title.text


def test_step_advantages_fall_back_to_the_one_stochastic_step_and_to_none():
    one = batch(0, [0.2, 0.8], [-1.0, 1.0], chain_steps=3, stochastic_steps=[2])[-1]
    assert views.step_advantages(one, 1) == {2: 1.0}
    gradient = batch(0, [0.2, 0.8], [], chain_steps=3, stochastic_steps=[0, 1, 2], differentiated_steps=[2])
    view, _ = fold(gradient)
    assert views.step_advantages(view.latest, 1) == {}
    names = [t.name for t in views.rollout_figure(view).data]
    assert "back-propagated through" in names and "advantage" not in names


def test_curves_status_and_what_changes_a_figure():
    view, changed = fold([
        EvalEvent(step=0, metrics={"reward_mean": 0.1, "heldout_digit": 0.9, "heldout_target": 0.1}),
        *batch(0, [0.1, 0.2], chain_steps=2, stochastic_steps=[0]),
        UpdateEvent(step=1, metrics={"loss": 0.5, "kl": 0.01, "reward_mean": 0.15, "spent_samples": 2, "spent_nfe": 6,
                                     "spent_backward_nfe": 2}),
    ])
    assert changed == [True, False, False, False, True, True]  # an image node alone draws nothing
    fig = views.diffusion_curves(view)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["Reward", "Held-out k-NN check", "KL to the base model", "Loss"]
    assert {t.name for t in fig.data} == {"batch", "evaluation samples", "still a digit", "read as the target", "KL", "loss"}
    assert views.diffusion_status(view, 1.0, running=True).startswith("running… 1 updates, 2 samples, 6 NFE, 2 backward NFE")
    view.add(DoneEvent(picks=[], candidates=[], status="cancelled", message="<b>stop</b>", cost={},
                       metrics={"updates": 1, "samples": 2, "nfe": 6, "backward_nfe": 2}))
    done = views.diffusion_status(view, 2.0, running=False)
    assert done.startswith("**cancelled**: 1 updates") and "<b>" not in done


def test_empty_views_say_so():
    view = views.DiffusionTrainingView()
    assert "no batch drawn yet" in views.sample_grids(view)
    assert views.rollout_figure(view).layout.annotations[0].text == "no batch drawn yet"
    assert views.diffusion_curves(view).layout.annotations[0].text == "no update yet"
