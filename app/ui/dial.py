"""The direction dial of the Explore tab (Directional Preference Alignment, arXiv:2402.18571).

Two rewards and an angle θ make the reward ``direction:θ:R1,R2`` (v = (cos θ, sin θ), reward v·r):
moving the slider writes that spec into the Explore tab's reward box, so Run steers by it.
"Trace the front" runs the Explore tab's sampler, with its form's settings, prompt and seed,
once per angle (app/workflows/pareto.py, the one path the CLI's ``samplescope pareto`` takes
too) and draws each pick's (r1, r2) coloured by angle, the exact non-dominated points joined
(app/views/pareto.py). Progress is shown as angles done; the work holds one of the app's run
slots and stops at the next decode step when the page goes away.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.ui import forms
from app.ui.services import Services, error_message
from app.views.pareto import FRONT_HEADERS, front_figure, front_rows
from app.views.render import md_text
from app.views.trace import empty


def _error(message: str) -> str:
    return f"<span class='error-line'>⚠ {md_text(message, 600)}</span>"


class DirectionDial:
    def __init__(self, services: Services, explore: Any) -> None:
        self.services = services
        self.explore = explore
        with gr.Accordion("Direction dial (DPA): steer by v·r over two rewards, trace their Pareto front",
                          open=False, elem_id="dial"):
            with gr.Row():
                self.rewards = gr.Textbox("sentiment,length:20", label="Two rewards (R1,R2)", elem_id="dial-rewards",
                                          info="any outcome reward specs, e.g. sentiment,length:20")
                self.angle = gr.Slider(0, 90, value=45, step=1, label="Angle θ (degrees)", elem_id="dial-angle",
                                       info="0° = only R1, 90° = only R2; sets the Reward above to direction:θ:R1,R2")
            with gr.Row():
                self.angles = gr.Textbox("0:90:7", label="Angles to trace", elem_id="dial-angles",
                                         info="0,15,30 or START:STOP:COUNT in [0, 90]; one full run of the sampler above per angle, at its seed")
                self.trace_button = gr.Button("Trace the front", elem_id="dial-trace")
            self.status = gr.Markdown(elem_id="dial-status")
            self.plot = gr.Plot(label="Pareto front", elem_id="dial-plot")
            self.table = gr.Dataframe(headers=FRONT_HEADERS, interactive=False, wrap=True, label="Picks by angle",
                                      elem_id="dial-table")
        self._wire()

    def _wire(self) -> None:
        self.angle.change(self.spec, [self.angle, self.rewards], [self.explore.reward, self.status],
                           show_progress="hidden")
        e = self.explore
        inputs = [e.model, e.sampler, e.prompt, e.chat, e.seed, self.rewards, self.angles, *forms.all_inputs(e.forms)]
        self.trace_button.click(self.trace, inputs, [self.status, self.plot, self.table], concurrency_limit=None,
                                show_progress="hidden")

    def spec(self, angle, rewards):
        from engines.pareto import parse_reward_pair
        from engines.rewards.direction import direction_spec

        try:
            return {self.explore.reward: direction_spec(float(angle), parse_reward_pair(rewards or "")), self.status: ""}
        except Exception as exc:
            return {self.explore.reward: gr.update(), self.status: _error(error_message(exc))}

    def trace(self, model, sampler, prompt, chat, seed, rewards, angles, *values):
        import threading

        from app.workflows.pareto import trace_dial
        from engines.pareto import FrontResult, non_dominated, parse_reward_pair

        flag = threading.Event()  # set when the page goes away (Gradio closes this generator): the model stops
        try:
            params = forms.params_for(self.explore.forms, sampler, list(values))
            seed = forms.whole_number("Seed", seed)
            if not (prompt or "").strip():
                raise ValueError("write a prompt above first")
            names = parse_reward_pair(rewards or "")
            work = trace_dial(model=model or "", rewards=rewards or "", angles=angles or "", prompts=[prompt],
                              sampler=sampler, params=params, seed=seed, chat=bool(chat), device=self.services.device,
                              cancel=flag)
            ticket = self.services.runs.enter()
        except Exception as exc:  # bad input: one line, nothing else changes
            yield {self.status: _error(error_message(exc))}
            return
        points = []
        try:
            while not self.services.runs.start(ticket, timeout=0.5):
                yield {self.status: f"waiting for a free slot: {self.services.runs.position(ticket)} in line"}
            yield {self.status: f"loading {md_text(model)}…", self.plot: empty("Pareto front", "tracing…"), self.table: []}
            for done, total, item in work:
                if isinstance(item, FrontResult):
                    yield {self.status: f"traced {total} angles: {len(item.front)} on the front; "
                                        f"{int(item.cost.get('generated_tokens', 0))} tokens generated",
                           self.plot: front_figure(item.points, item.dimensions), self.table: front_rows(item.points)}
                    return
                points.append(item)
                front = set(non_dominated([p.values for p in points]))  # of the angles so far; the result's is final
                for i, point in enumerate(points):
                    point.on_front = i in front
                yield {self.status: f"tracing… {done} of {total} angles done", self.plot: front_figure(points, names),
                       self.table: front_rows(points)}
        except Exception as exc:
            yield {self.status: _error(error_message(exc))}
        finally:
            flag.set()
            self.services.runs.leave(ticket)
