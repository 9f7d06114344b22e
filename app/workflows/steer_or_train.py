"""Steer or train? (engines.steer_or_train) for the CLI and the offline report.

:func:`run_and_store` runs a plan, its fine-tuning runs in the data folder's ``training/``,
and writes the result as JSON to ``training/steer-or-train/NAME.json``; ``samplescope report
steer:NAME`` renders it (:func:`steer_or_train_page`): quality against NFE, backward passes and
wall seconds per delivered image (training amortised, the amount stated), the held-out k-NN check
against NFE (which arm hacks the reward), every point with its 95% bootstrap interval, the
training runs and the plan.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from app.views.sweep import sweep_figure
from app.workflows.store import training_home
from engines.errors import ConfigError
from engines.steer_or_train import SteerOrTrainPlan, SteerOrTrainResult, run_steer_or_train
from engines.training.loop import NAME_CHARS

FOLDER = "steer-or-train"
COUNTERS = (("nfe", "network evaluations"), ("backward_nfe", "evaluations back-propagated"),
            ("wall_seconds", "wall seconds"))


def result_path(name: str) -> Path:
    if not name or not set(name) <= NAME_CHARS:
        raise ConfigError(f"name {name!r} must be letters, digits, '.', '_' or '-'")
    return training_home() / FOLDER / f"{name}.json"


def run_and_store(plan: SteerOrTrainPlan, *, progress: Any = None) -> tuple[SteerOrTrainResult, Path]:
    path = result_path(plan.name)
    if path.exists():
        raise ConfigError(f"a steer-or-train result named {plan.name!r} exists; give another --name")
    result = run_steer_or_train(plan, training_home(), progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_dict(), indent=1, default=str), encoding="utf-8")
    return result, path


def load_result(name: str) -> SteerOrTrainResult:
    path = result_path(name)
    if not path.is_file():
        raise ConfigError(f"no steer-or-train result named {name!r} (samplescope steer-or-train --name {name})")
    return SteerOrTrainResult.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _checked(points: list[dict[str, Any]], check: str) -> list[dict[str, Any]]:
    """The points with the held-out check's share as the y value (and its interval)."""
    return [{**p, "quality": p[check], "ci_low": p[f"{check}_low"], "ci_high": p[f"{check}_high"]}
            for p in points if p.get(check) is not None]


def point_table(points: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    def r(v: Any) -> Any:
        return None if v is None else round(float(v), 4)

    headers = ["arm", "size", "images", "quality", "CI low", "CI high", "still a digit", "read as target", "NFE",
               "backward NFE", "backward passes", "wall s"]
    rows = [[p["arm"], p["level"], p["prompts"], r(p["quality"]), r(p["ci_low"]), r(p["ci_high"]), r(p.get("heldout_digit")),
             r(p.get("heldout_target")), r(p["nfe"]), r(p["backward_nfe"]), r(p["backward_passes"]), r(p["wall_seconds"])]
            for p in points]
    return headers, rows


def steer_or_train_page(result: SteerOrTrainResult):
    from app.workflows.report import Page, _table

    plan, points = result.plan, result.points()
    page = Page(f"samplescope steer or train? {plan.name}: {plan.reward}")
    page.text(f"Steering samplers on the base model ({', '.join(plan.samplers) or 'none'}) against models fine-tuned "
              f"with {', '.join(plan.schemes) or 'none'} ({plan.train_samples} training samples each), then best-of-N on "
              f"them. Compute is per delivered image; a fine-tuned model's training compute is spread over "
              f"{plan.amortize_images} generated images. Quality is the evaluation reward "
              f"({plan.evaluate or plan.reward}) of each image, {plan.prompts} images per point, 95% bootstrap intervals.")
    for counter, label in COUNTERS:
        page.heading(f"Quality against {label} per image")
        page.figure(sweep_figure(points, counter))
    page.heading("Held-out k-NN check against network evaluations (read as the target digit)")
    page.text("A reward that rises while this share does not is being hacked: the images please the classifier "
              "without looking like the real digits it was trained on.")
    page.figure(sweep_figure(_checked(points, "heldout_target"), "nfe"))
    page.heading("Points")
    headers, rows = point_table(points)
    page.raw(_table(headers, rows))
    page.heading("Fine-tuning runs")
    page.raw(_table(["scheme", "status", "updates", "samples", "NFE", "backward NFE", "backward passes", "seconds", "model"],
                    [[s, t["status"], t["updates"], t["samples"], t["nfe"], t["backward_nfe"], t["backward_passes"],
                      round(t["seconds"], 2), t["model_spec"]] for s, t in result.training.items()]))
    page.heading("The plan")
    page.raw(f"<pre>{html.escape(json.dumps(plan.as_dict(), indent=2, ensure_ascii=False, default=str))}</pre>")
    return page
