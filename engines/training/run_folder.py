"""A training run's folder: its settings, checkpoints and events, shared by every training loop.

A run folder (``<runs folder>/<name>``) holds

- ``run.json``: the settings the run was started with (what ``--resume`` reads back);
- ``state.pt``: the latest checkpoint (weights, optimiser, generator state, spend, and how
  many events precede it);
- ``events.jsonl``: the run's events up to that checkpoint, one JSON object a line.

A checkpoint writes ``state.pt`` to a temporary file, appends its events, then renames the
state into place: the checkpoint counts once its events are written. A crash between the
two writes leaves extra event lines, which :meth:`RunFolder.open` drops on resume (it keeps
only as many as the state says), so a resumed run replays exactly what its checkpoint saw.
The text loop (:mod:`engines.training.loop`) and the diffusion loop
(:mod:`engines.training.diffusion.loop`) both keep their runs here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import torch

from engines.errors import ConfigError
from engines.trace import Event, event_to_dict


class RunFolder:
    @classmethod
    def locate(cls, name: str, *, runs_folder: Path | None, run_dir: Path | None, resume: bool) -> RunFolder:
        """The run's folder (``run_dir``, else ``runs_folder/name``), checked for ``resume`` (:meth:`check`)."""
        if run_dir is None:
            if runs_folder is None:
                raise ConfigError("a training run needs a folder for its checkpoints (runs_folder or run_dir)")
            run_dir = Path(runs_folder) / name
        folder = cls(run_dir, name)
        folder.check(resume=resume)
        return folder

    def __init__(self, run_dir: Path, name: str) -> None:
        self.run_dir = Path(run_dir)
        self.name = name
        self.state_file = self.run_dir / "state.pt"
        self.events_file = self.run_dir / "events.jsonl"
        self.config_file = self.run_dir / "run.json"
        self.written = 0

    def check(self, *, resume: bool) -> None:
        """One-line errors before any work: nothing to resume, or a run that already exists."""
        if resume and not self.state_file.exists():
            raise ConfigError(f"nothing to resume: no checkpoint in {self.run_dir}")
        if not resume and self.state_file.exists():
            raise ConfigError(f"run {self.name!r} exists in {self.run_dir}; pass --resume or another --name")

    def open(self, *, resume: bool, settings: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Start the folder (writing ``settings`` to run.json) or, on resume, return the last
        checkpoint's state and the stored events it covers."""
        self.check(resume=resume)
        if not resume:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.events_file.unlink(missing_ok=True)  # left by a run that died before its first checkpoint
            self.config_file.write_text(json.dumps(settings, indent=2))
            self.written = 0
            return None, []
        state = torch.load(self.state_file, weights_only=False)
        # lines past the checkpoint's count were written by a checkpoint that never completed
        lines = self.events_file.read_text().splitlines() if self.events_file.exists() else []
        stored = [json.loads(line) for line in lines if line.strip()][: state["events"]]
        self.events_file.write_text("".join(json.dumps(d) + "\n" for d in stored))
        self.written = len(stored)
        return state, stored

    def checkpoint(self, state: dict[str, Any], events: Sequence[Event]) -> None:
        """Write ``state`` (plus the event count) and append ``events``."""
        self.written += len(events)
        tmp = self.state_file.with_suffix(".tmp")
        torch.save({**state, "events": self.written}, tmp)
        with self.events_file.open("a") as fh:
            for event in events:
                fh.write(json.dumps(event_to_dict(event)) + "\n")
        tmp.replace(self.state_file)  # the checkpoint counts once its events are written


def recorded(generator: Generator[Event, None, Any], emit: Callable[[Event], Event]) -> Generator[Event, None, Any]:
    """Yield ``generator``'s events through ``emit`` (which keeps them for the next checkpoint)
    and return its return value: a strategy's batch, a scheme's loss."""
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        yield emit(event)
