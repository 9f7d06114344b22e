"""Parameter forms generated from sampler configs, and the choices the pickers offer.

Every registered sampler gets a group of inputs built from its config's
:class:`~engines.config.ParamSpec` list (sliders for bounded numbers, number
boxes, checkboxes, dropdowns for choices, a text box for optional values),
shown only while that sampler is selected. A new sampler therefore needs no
UI code: registering it is enough.

Forms show what applies to the chosen model: the sampler picker offers only
samplers for the model's modality (text or image), and a sampler that serves
both (best-of-N) hides the other modality's fields (decoding fields for a
diffusion model, denoising steps for a language model).

Numbers are typed into plain number boxes and checked on the server against
the config's range, so a value out of range is refused with one line in the
page's words ("Temperature must be at least 0, got -3") instead of being
clamped by a slider in the browser.
"""

from __future__ import annotations

import dataclasses
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
    modalities: tuple[str, ...] = ("text",)
    #: per input (in ``specs`` order): the modalities it applies to
    applies: list[tuple[str, ...]] | None = None


def field_modalities(name: str, sampler_modalities: tuple[str, ...]) -> tuple[str, ...]:
    """The modalities a config field applies to: decoding fields are text's, denoising fields the image's."""
    from engines.samplers.base import GenerationConfig
    from engines.samplers.diffusion_common import DiffusionConfig

    if name in {f.name for f in dataclasses.fields(GenerationConfig)}:
        return ("text",)
    if name in {f.name for f in dataclasses.fields(DiffusionConfig)}:
        return ("image",)
    return tuple(sampler_modalities)


def _range(spec: ParamSpec) -> str:
    if spec.min is not None and spec.max is not None:
        return f"{spec.min:g} to {spec.max:g}"
    if spec.min is not None:
        return f"at least {spec.min:g}"
    if spec.max is not None:
        return f"at most {spec.max:g}"
    return ""


def _input(spec: ParamSpec, prefix: str, visible: bool = True) -> Any:
    elem = f"{prefix}-{spec.name}"
    bounds = _range(spec) if spec.type in ("int", "float") else ""
    info = " ".join(part for part in (spec.help, f"({bounds})" if bounds else "") if part) or None
    if spec.optional:
        return gr.Textbox(value="" if spec.default is None else str(spec.default), label=f"{spec.label} (optional)", info=info, elem_id=elem, visible=visible)
    if spec.type == "bool":
        return gr.Checkbox(value=bool(spec.default), label=spec.label, info=info, elem_id=elem, visible=visible)
    if spec.type == "choice":
        return gr.Dropdown(choices=list(spec.choices or ()), value=spec.default, label=spec.label, info=info, elem_id=elem, visible=visible)
    if spec.type in ("int", "float"):
        # a number box without minimum/maximum: a slider would clamp -3 to 0 in the browser without a word;
        # params_for refuses an out-of-range value by the field's label instead
        step = spec.step or (1 if spec.type == "int" else None)
        return gr.Number(value=spec.default, label=spec.label, info=info, precision=0 if spec.type == "int" else None,
                         step=step or 0.01, elem_id=elem, visible=visible)
    return gr.Textbox(value=str(spec.default), label=spec.label, info=info, elem_id=elem, visible=visible)


def build_forms(samplers: list[tuple[str, Any]], selected: str, prefix: str, modality: str = "text") -> list[SamplerForm]:
    """One group of inputs per sampler; only ``selected``'s group starts visible, with ``modality``'s fields."""
    forms = []
    for name, cls in samplers:
        specs = cls.Config.specs()
        modalities = tuple(getattr(cls, "modalities", ("text",)))
        with gr.Group(visible=name == selected) as group:
            gr.Markdown(f"**{cls.Config.label}** — {cls.Config.summary}  \n<small>{cls.Config.paper}</small>")
            basic = [s for s in specs if not s.advanced]
            advanced = [s for s in specs if s.advanced]
            shown = {s.name: modality in field_modalities(s.name, modalities) for s in specs}
            inputs = {s.name: _input(s, f"{prefix}-{name}", shown[s.name]) for s in basic}
            if advanced:
                with gr.Accordion("Advanced", open=False):
                    inputs.update({s.name: _input(s, f"{prefix}-{name}", shown[s.name]) for s in advanced})
        forms.append(SamplerForm(name, group, specs, [inputs[s.name] for s in specs], modalities,
                                 [field_modalities(s.name, modalities) for s in specs]))
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
    """``value`` as the field's type, refused in the form's words (its label) when it is not one or out of range."""
    if spec.optional and (value is None or str(value).strip() == ""):
        return None
    if spec.type == "bool":
        return bool(value)
    if spec.type not in ("int", "float"):
        return value
    try:
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError
        if spec.type == "int":
            if not number.is_integer():
                raise ValueError
            number = int(number)
    except (TypeError, ValueError):
        raise ConfigError(f"{spec.label} must be a{' whole' if spec.type == 'int' else ''} number, got {value!r}") from None
    if spec.min is not None and number < spec.min:
        raise ConfigError(f"{spec.label} must be at least {spec.min:g}, got {number:g}")
    if spec.max is not None and number > spec.max:
        raise ConfigError(f"{spec.label} must be at most {spec.max:g}, got {number:g}")
    return number


def whole_number(label: str, value: Any) -> int:
    """A whole number >= 0 from a number box (empty is 0), refused by ``label`` otherwise."""
    if value is None or str(value).strip() == "":
        return 0
    try:
        number = float(value)
        if not number.is_integer():
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{label} must be a whole number, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{label} must be at least 0, got {number:g}")
    return int(number)


def visibility(forms: list[SamplerForm], sampler: str) -> dict[Any, Any]:
    return {form.group: gr.update(visible=form.name == sampler) for form in forms}


def model_modality(spec: str | None) -> str:
    """"text" or "image" for a model spec, without loading it: built-in models say theirs, diffusers: is image."""
    spec = (spec or "").strip()
    for row in _listed_models():
        if row["spec"] == spec:
            return row["modality"]
    return "image" if spec.startswith("diffusers:") else "text"


def _listed_models() -> list[dict[str, str]]:
    from engines.models import list_models

    return list_models()


def sampler_choices(modality: str) -> list[tuple[str, str]]:
    """(label, name) of every registered sampler that runs on ``modality``."""
    from engines.samplers import SAMPLERS

    return [(cls.Config.label, name) for name, cls in SAMPLERS.items() if modality in getattr(cls, "modalities", ("text",))]


def fit_to_model(forms: list[SamplerForm], sampler_picker: Any, model: str, sampler: str) -> dict[Any, Any]:
    """Updates that make the forms show what applies to ``model``: its samplers, and their fields for its modality.

    The chosen sampler stays when it runs on the model; otherwise the first one that does is chosen.
    """
    modality = model_modality(model)
    choices = [(label, name) for label, name in sampler_choices(modality) if any(f.name == name for f in forms)]
    names = [name for _, name in choices]
    chosen = sampler if sampler in names else (names[0] if names else sampler)
    updates: dict[Any, Any] = {sampler_picker: gr.update(choices=choices, value=chosen), **visibility(forms, chosen)}
    for form in forms:
        for component, applies in zip(form.inputs, form.applies or [form.modalities] * len(form.inputs), strict=True):
            updates[component] = gr.update(visible=modality in applies)
    return updates


def form_outputs(forms: list[SamplerForm]) -> list[Any]:
    """Every component :func:`fit_to_model` updates, besides the sampler picker."""
    return [f.group for f in forms] + all_inputs(forms)


def model_choices() -> list[str]:
    return [row["spec"] for row in _listed_models()]


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
