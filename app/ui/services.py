"""What the app's handlers share: the database, model settings, live runs' cancel flags.

One :class:`Services` is built by ``samplescope serve`` (or a test) and handed
to :func:`app.ui.build_demo`; there are no module globals. Models are loaded
once per process by :func:`engines.models.load_model`'s cache, never kept in
``gr.State``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engines.errors import SamplescopeError

log = logging.getLogger("samplescope.app")


@dataclass
class Services:
    db: Any  # storage.Database
    device: str = "auto"
    dtype: str = "fp32"
    users: Any = None  # app.ui.auth.UserStore when --auth is on
    update_interval: float = 0.3  # seconds between live view updates
    concurrency: int = 2  # sampler runs at once, shared by every tab
    default_model: str = "embedded:smollm2"
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)  # signs guest ids
    #: OpenAI-compatible inference servers (``samplescope serve --engine URL``), their models offered as openai:URL#NAME
    engines: list[str] = field(default_factory=list)
    _clients: dict[str, Any] = field(default_factory=dict)
    _cancels: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from app.ui.identity import GuestTokens

        self.guests = GuestTokens(self.secret)
        self.runs = RunQueue(self.concurrency)
        self._sign_in: tuple[Any, Any] | None = None  # (the user store, its SignInLimiter)

    @property
    def sign_in(self) -> Any:
        """``users.verify`` behind the failure limits (one limiter per user store), or None without --auth."""
        from app.ui.identity import SignInLimiter

        if self.users is None:
            return None
        if self._sign_in is None or self._sign_in[0] is not self.users:
            self._sign_in = (self.users, SignInLimiter(self.users.verify))
        return self._sign_in[1]

    def browser_state_secret(self) -> str:
        """The key Gradio encrypts the guest token in localStorage with: stable across restarts."""
        import hashlib
        import hmac

        return hmac.new(self.secret, b"samplescope browser state", hashlib.sha256).hexdigest()[:32]

    # -- cancellation: a flag per live run, checked by the sampler loop -------------

    def start_run(self) -> tuple[str, threading.Event]:
        token = uuid.uuid4().hex
        flag = threading.Event()
        with self._lock:
            self._cancels[token] = flag
        return token, flag

    def cancel(self, token: str | None) -> bool:
        with self._lock:
            flag = self._cancels.get(token or "")
        if flag is None:
            return False
        flag.set()
        return True

    def finish(self, token: str) -> None:
        with self._lock:
            self._cancels.pop(token, None)

    def live_runs(self) -> int:
        with self._lock:
            return len(self._cancels)

    # -- served engines --------------------------------------------------------------

    def engine_health(self) -> list[dict[str, Any]]:
        """One quick probe per engine: {"url", "ok", "models", "version", "error"}."""
        from engines.models.served.client import EngineClient

        out = []
        for url in self.engines:
            with self._lock:
                client = self._clients.get(url) or self._clients.setdefault(url, EngineClient(url, retries=0))
            out.append(client.health())
        return out

    def model_choices(self) -> list[str]:
        """Every model the pickers offer: each engine's served models first, then the built-in ones."""
        from app.ui.forms import model_choices

        served = []
        for row in self.engine_health():
            served += [f"openai:{row['url']}#{name}" for name in row["models"]] or [f"openai:{row['url']}"]
        return served + model_choices()

    def engine_markdown(self) -> str:
        """The engines' health for the page (server-given names escaped)."""
        import html

        lines = []
        for row in self.engine_health():
            if row["ok"]:
                models = ", ".join(f"`{html.escape(str(m))}`" for m in row["models"]) or "no models"
                version = f" (vLLM {html.escape(str(row['version']))})" if row["version"] else ""
                lines.append(f"● engine {html.escape(row['url'])}{version}: up, serving {models}")
            else:
                lines.append(f"○ engine {html.escape(row['url'])}: **down**: {html.escape(row['error'] or '')}")
        return "\n\n".join(lines)

    def preload(self, spec: str | None = None) -> None:
        from engines.models import load_model

        load_model(spec or self.default_model, device=self.device, dtype=self.dtype)


def error_message(exc: BaseException) -> str:
    """One line for the page: the user's error as is, anything else named but not dumped."""
    # storage's deliberate errors (not found, conflict, invalid input) are the user's too
    from storage.errors import StorageError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, SamplescopeError | StorageError | ValueError | KeyError | FileNotFoundError):
        return text
    log.exception("unexpected error in a handler")
    return f"internal error ({type(exc).__name__}): {text}"


class RunQueue:
    """First come, first served slots for sampler runs, with each waiting run's place in line.

    Explore's run handler and the /sample API take a slot here (at most ``slots`` runs at once),
    so a waiting run can show where it stands instead of a silent spinner. A waiting run holds a
    worker thread, so the line is capped (``max_waiting``): past it a run is refused with one line
    instead of starving the threads that serve votes.
    """

    def __init__(self, slots: int, max_waiting: int = 16) -> None:
        self.slots = max(1, int(slots))
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: list[object] = []
        self._running: set[object] = set()

    def enter(self) -> object:
        ticket = object()
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise SamplescopeError(f"the server is busy: {len(self._waiting)} runs are waiting; try again shortly")
            self._waiting.append(ticket)
        return ticket

    def _admit(self, ticket: object) -> bool:
        if ticket in self._running:
            return True
        if self._waiting and self._waiting[0] is ticket and len(self._running) < self.slots:
            self._waiting.pop(0)
            self._running.add(ticket)
            self._cond.notify_all()  # the next in line may fit too
            return True
        return False

    def start(self, ticket: object, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for this ticket's turn; True once it holds a slot."""
        with self._cond:
            return self._cond.wait_for(lambda: self._admit(ticket), timeout)

    def position(self, ticket: object) -> int:
        """1 for the next in line, 2 behind it, ...; 0 once running."""
        with self._cond:
            return 0 if ticket in self._running else self._waiting.index(ticket) + 1

    def running(self) -> int:
        with self._cond:
            return len(self._running)

    @contextlib.contextmanager
    def slot(self, stop: threading.Event | None = None, poll: float = 0.2) -> Iterator[bool]:
        """Hold a slot for the block: yields True once admitted, False if ``stop`` is set while waiting
        (a sweep's cells each take one, so they queue behind other users' runs instead of starving them)."""
        ticket = self.enter()
        try:
            while not self.start(ticket, timeout=poll):
                if stop is not None and stop.is_set():
                    yield False
                    return
            yield True
        finally:
            self.leave(ticket)

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def leave(self, ticket: object) -> None:
        with self._cond:
            self._running.discard(ticket)
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            self._cond.notify_all()
