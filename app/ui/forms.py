"""Parameter forms generated from sampler configs, and the choices the pickers offer.

Every registered sampler gets a group of inputs built from its config's
:class:`~engines.config.ParamSpec` list (sliders for bounded numbers, number
boxes, checkboxes, dropdowns for choices, a text box for optional values),
shown only while that sampler is selected. A new sampler therefore needs no
UI code: registering it is enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from engines.config import ParamSpec
from engines.errors import ConfigError


@dataclass
class SamplerForm:
    name: str
    group: Any
    specs: list[ParamSpec]
    inputs: list[Any]


def _input(spec: ParamSpec, prefix: str) -> Any:
    info = spec.help or None
    elem = f"{prefix}-{spec.name}"
    if spec.optional:
        return gr.Textbox(value="" if spec.default is None else str(spec.default), label=f"{spec.label} (optional)", info=info, elem_id=elem)
    if spec.type == "bool":
        return gr.Checkbox(value=bool(spec.default), label=spec.label, info=info, elem_id=elem)
    if spec.type == "choice":
        return gr.Dropdown(choices=list(spec.choices or ()), value=spec.default, label=spec.label, info=info, elem_id=elem)
    if spec.type in ("int", "float"):
        bounded = spec.min is not None and spec.max is not None and (spec.max - spec.min) <= 10_000
        if bounded:
            step = spec.step or (1 if spec.type == "int" else (spec.max - spec.min) / 100)
            return gr.Slider(spec.min, spec.max, value=spec.default, step=step, label=spec.label, info=info, elem_id=elem)
        return gr.Number(value=spec.default, label=spec.label, info=info, precision=0 if spec.type == "int" else None, elem_id=elem)
    return gr.Textbox(value=str(spec.default), label=spec.label, info=info, elem_id=elem)


def build_forms(samplers: list[tuple[str, Any]], selected: str, prefix: str) -> list[SamplerForm]:
    """One group of inputs per sampler; only ``selected``'s group starts visible."""
    forms = []
    for name, cls in samplers:
        specs = cls.Config.specs()
        with gr.Group(visible=name == selected) as group:
            gr.Markdown(f"**{cls.Config.label}** — {cls.Config.summary}  \n<small>{cls.Config.paper}</small>")
            basic = [s for s in specs if not s.advanced]
            advanced = [s for s in specs if s.advanced]
            inputs = {s.name: _input(s, f"{prefix}-{name}") for s in basic}
            if advanced:
                with gr.Accordion("Advanced", open=False):
                    inputs.update({s.name: _input(s, f"{prefix}-{name}") for s in advanced})
        forms.append(SamplerForm(name, group, specs, [inputs[s.name] for s in specs]))
    return forms


def all_inputs(forms: list[SamplerForm]) -> list[Any]:
    return [component for form in forms for component in form.inputs]


def params_for(forms: list[SamplerForm], sampler: str, values: list[Any]) -> dict[str, Any]:
    """The typed parameters of ``sampler`` from the flat list of every form's values."""
    offset = 0
    for form in forms:
        if form.name == sampler:
            mine = values[offset : offset + len(form.specs)]
            return {spec.name: _typed(spec, value) for spec, value in zip(form.specs, mine, strict=True)}
        offset += len(form.specs)
    raise ConfigError(f"unknown sampler {sampler!r}")


def _typed(spec: ParamSpec, value: Any) -> Any:
    if spec.optional and (value is None or str(value).strip() == ""):
        return None
    try:
        if spec.type == "int":
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if spec.type == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{spec.label} must be a{'n integer' if spec.type == 'int' else ' number'}, got {value!r}") from None
    if spec.type == "bool":
        return bool(value)
    return value


def visibility(forms: list[SamplerForm], sampler: str) -> dict[Any, Any]:
    return {form.group: gr.update(visible=form.name == sampler) for form in forms}


def model_choices() -> list[str]:
    from engines.models import list_models

    return [row["spec"] for row in list_models()]


def reward_choices() -> list[str]:
    from app.workflows.store import rewards_home
    from engines.rewards import list_rewards

    out = []
    examples = {"regex": "regex:^\\d+$", "keywords": "keywords:sun,sea", "length": "length:20", "rm": None, "pairwise": "pairwise:sentiment"}
    for row in list_rewards(rewards_home()):
        name = row["name"]
        if row["arg"] and name in examples:
            if examples[name]:
                out.append(examples[name])
            if name == "length":
                out.append("length")
        elif not row["arg"] or name in ("judge", "judge_pairwise"):
            out.append(name)
    return out


def task_choices(limit: int = 25) -> list[tuple[str, str]]:
    from engines.tasks import TASK_SETS

    out = []
    for name, task_set in TASK_SETS.items():
        for i, task in enumerate(task_set.tasks()[:limit]):
            text = " ".join(task.prompt.split())
            out.append((f"{name}:{i} — {text[:60]}", f"{name}:{i}"))
    return out
