"""What a model's inner loop checks between steps: the run's cancel flag and its progress hook.

A model call can be long (a batch of 8 x 512 tokens is hundreds of decode steps), and the sampler
that made it only regains control when it returns. So the run installs a :class:`Watch` for the
duration of each step of the sampler (:func:`watching`, used by :func:`engines.runner.stream`), and
a model's loop calls :func:`decode_step` once per decode step (or per request it waits on):

- it raises :class:`~engines.errors.Cancelled` once the run's cancel flag is set, so a cancelled
  run stops within one decode step instead of at the sampler's next model call;
- it hands the run's live :class:`~engines.trace.Cost` to the progress hook, so a viewer can show
  the tokens generated so far while the batch is still decoding.

Without a watch installed (a model used on its own, a test) :func:`decode_step` does nothing.
The watch lives in a :class:`contextvars.ContextVar`: each thread and each context sees its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engines.errors import Cancelled
from engines.trace import Cost


@dataclass(frozen=True)
class Watch:
    cancel: threading.Event | None = None
    #: called with the run's live cost after each decode step; must be cheap (it rate-limits itself)
    progress: Callable[[Cost], None] | None = None

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


_CURRENT: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("samplescope_watch", default=None)


@contextlib.contextmanager
def watching(watch: Watch | None) -> Iterator[None]:
    token = _CURRENT.set(watch)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> Watch | None:
    return _CURRENT.get()


def decode_step(usage: Cost | None) -> None:
    """Report progress, then stop the call if the run was cancelled (between two decode steps)."""
    watch = _CURRENT.get()
    if watch is None:
        return
    if watch.progress is not None and usage is not None:
        watch.progress(usage)
    if watch.cancelled():
        raise Cancelled("run cancelled")
