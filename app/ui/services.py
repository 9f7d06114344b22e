"""What the app's handlers share: the database, model settings, live runs' cancel flags.

One :class:`Services` is built by ``samplescope serve`` (or a test) and handed
to :func:`app.ui.build_demo`; there are no module globals. Models are loaded
once per process by :func:`engines.models.load_model`'s cache, never kept in
``gr.State``.
"""

from __future__ import annotations

import logging
import threading
import uuid
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
    #: OpenAI-compatible inference servers (``samplescope serve --engine URL``), their models offered as openai:URL#NAME
    engines: list[str] = field(default_factory=list)
    _clients: dict[str, Any] = field(default_factory=dict)
    _cancels: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        from engines.models.served_client import EngineClient

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
