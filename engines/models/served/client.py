"""HTTP client for an OpenAI-compatible inference server (vLLM, SGLang, llama.cpp's server).

Contract
--------
- :class:`EngineClient` ``(base_url)``: ``base_url`` ends in ``/v1`` (or is the
  server's root; ``/v1`` is added). ``post`` / ``get`` send one request with a
  timeout; connection errors, read timeouts and 5xx answers are retried with
  exponential backoff (``retries`` times, ``backoff`` · 2^k seconds), 4xx
  answers are not (they are the caller's mistake and would fail again).
- Every failure is an :class:`EngineError`: one line that names the server and
  says what went wrong (unreachable, wrong model name, context overflow,
  unsupported parameter, a dead engine), never a traceback or an HTML page.
- ``map(fn, items)`` runs ``fn`` over ``items`` on a bounded thread pool
  (``max_in_flight`` requests at once), so one batch of prefixes becomes many
  requests in flight that the server batches together; results keep order and
  the first error is raised after every in-flight request has finished.
- Cancel: while a run's :mod:`engines.models.watch` carries a cancel flag, ``map`` waits on its
  requests a tenth of a second at a time; once the flag is set it drops the queued ones, shuts
  the sockets of those in flight (the server sees the client go and aborts them: vLLM frees the
  sequence) and raises :class:`~engines.errors.Cancelled`. Such requests use a connection each
  (no keep-alive), so that each has a socket of its own to shut.
- ``metrics()`` reads the server's Prometheus ``/metrics`` (root, not ``/v1``)
  into ``{name: value}`` summed over labels; vLLM's prefix-cache counters are
  ``vllm:prefix_cache_queries_total`` / ``vllm:prefix_cache_hits_total`` (tokens)
  and ``vllm:prompt_tokens_total``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import httpx

from engines.errors import Cancelled, EngineError
from engines.models.watch import current as current_watch

T = TypeVar("T")
R = TypeVar("R")


#: per worker thread: (sockets, cancel flag) of the cancellable map its request belongs to (None outside one)
_IN_FLIGHT = threading.local()


class EngineUnavailable(EngineError):
    """The server cannot be reached (or stopped answering) after the retries."""


_DEAD = ("EngineDeadError", "EngineCore encountered an issue", "engine is dead")
_CONTEXT = re.compile(r"maximum context length|context length|max_model_len|too long|exceeds", re.I)


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        raise EngineError(f"engine URL {url!r} must start with http:// or https://")
    return url if url.endswith("/v1") else url + "/v1"


class EngineClient:
    """One server: its base URL, a pooled HTTP client, retries and a bounded request pool."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_in_flight: int = 32,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = normalise_url(base_url)
        self.root_url = self.base_url[: -len("/v1")]
        self.retries, self.backoff = retries, backoff
        self.max_in_flight = max_in_flight
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=max_in_flight + 4, max_keepalive_connections=max_in_flight)
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout), limits=limits, headers=headers,
            transport=transport,
        )
        self._thread_prefix = f"engine-{id(self):x}"
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix=self._thread_prefix)
        self._dead: str | None = None
        self._lock = threading.Lock()

    # -- requests -----------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._send("POST", self.base_url + path, body)

    def get(self, path: str, *, root: bool = False) -> dict[str, Any]:
        return self._send("GET", (self.root_url if root else self.base_url) + path, None)

    def _send(self, method: str, url: str, body: dict[str, Any] | None) -> dict[str, Any]:
        if self._dead is not None and not self._revived():
            raise EngineUnavailable(self._dead)
        last = ""
        run = getattr(_IN_FLIGHT, "run", None)
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            if run is not None and run[1].is_set():  # an abandoned request is not retried
                raise Cancelled("run cancelled")
            try:
                response = self._http.request(method, url, json=body, **self._abandonable())
            except httpx.TimeoutException:
                last = f"the server at {self.root_url} did not answer within the timeout"
                continue
            except httpx.TransportError as exc:
                last = f"cannot reach the server at {self.root_url} ({type(exc).__name__}); is it running?"
                continue
            if response.status_code >= 500:
                last = self._describe(response)
                if any(sign in response.text for sign in _DEAD):
                    self._mark_dead(f"the engine at {self.root_url} died (EngineDeadError); restart the server")
                    raise EngineUnavailable(self._dead or last)
                continue
            if response.status_code >= 400:
                raise EngineError(self._describe(response))
            try:
                return response.json()
            except json.JSONDecodeError:
                raise EngineError(f"the server at {self.root_url} answered {url} with non-JSON") from None
        raise EngineUnavailable(last)

    def _abandonable(self) -> dict[str, Any]:
        """Request options that let a cancelled map shut this request's socket (inside a cancellable map only)."""
        run = getattr(_IN_FLIGHT, "run", None)
        if run is None:
            return {}
        sockets = run[0]

        def trace(name: str, info: dict[str, Any]) -> None:
            if name == "connection.connect_tcp.complete" and info.get("return_value") is not None:
                sock = info["return_value"].get_extra_info("socket")
                if sock is not None:
                    sockets.append(sock)

        return {"headers": {"Connection": "close"}, "extensions": {"trace": trace}}

    def _revived(self) -> bool:
        """Whether a server marked dead answers again (restarted); one quick probe, no retries."""
        try:
            alive = self._http.get(self.base_url + "/models", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False
        if alive:
            with self._lock:
                self._dead = None
        return alive

    def _mark_dead(self, message: str) -> None:
        with self._lock:
            self._dead = message

    def _describe(self, response: httpx.Response) -> str:
        try:
            data = response.json()
            error = data.get("error", data) if isinstance(data, dict) else data
            message = error.get("message") if isinstance(error, dict) else str(error)
            message = message or data.get("detail") or response.text
        except (json.JSONDecodeError, AttributeError):
            message = response.text or response.reason_phrase
        line = " ".join(str(message).split())[:300]
        if response.status_code == 404 and "model" in line.lower():
            return f"the server at {self.root_url} has no such model: {line}"
        if response.status_code == 400 and _CONTEXT.search(line):
            return f"context overflow at {self.root_url}: {line}"
        return f"the server at {self.root_url} refused the request (HTTP {response.status_code}): {line}"

    # -- concurrency ------------------------------------------------------------------

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        items = list(items)
        # inside one of our own workers (a request that fans out again): run in place, so a full pool cannot deadlock
        if threading.current_thread().name.startswith(self._thread_prefix):
            return [fn(item) for item in items]
        watch = current_watch()
        if watch is not None and watch.cancel is not None and items:  # even one request: it may run for minutes
            return self._map_cancellable(fn, items, watch.cancel)
        if len(items) <= 1:
            return [fn(item) for item in items]
        futures = [self._pool.submit(fn, item) for item in items]
        results, first_error = [], None
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 (re-raised below, after the others finish)
                first_error = first_error or exc
                results.append(None)
        if first_error is not None:
            raise first_error
        return results

    def _map_cancellable(self, fn: Callable[[T], R], items: list[T], cancel: threading.Event) -> list[R]:
        sockets: list[Any] = []  # of the requests in flight, filled by their connections' trace hook

        def run(item: T) -> R:
            _IN_FLIGHT.run = (sockets, cancel)
            try:
                if cancel.is_set():
                    raise Cancelled("run cancelled")
                return fn(item)
            finally:
                _IN_FLIGHT.run = None

        futures = [self._pool.submit(run, item) for item in items]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            if cancel.is_set() and pending:
                for future in pending:
                    future.cancel()
                for sock in list(sockets):  # the server reads EOF and aborts the request
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                raise Cancelled("run cancelled")
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        return [f.result() for f in futures]

    # -- server facts -------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        return list(self.get("/models").get("data", []))

    def metrics(self) -> dict[str, float]:
        """Prometheus counters and gauges, summed over label sets (empty when /metrics is absent)."""
        try:
            response = self._http.get(self.root_url + "/metrics")
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"cannot reach the server at {self.root_url} ({type(exc).__name__})") from None
        if response.status_code != 200:
            return {}
        return parse_prometheus(response.text)

    def health(self) -> dict[str, Any]:
        """{"url", "ok", "models", "version", "error"} from one quick probe (no retries)."""
        out: dict[str, Any] = {"url": self.base_url, "ok": False, "models": [], "version": None, "error": None}
        try:
            response = self._http.get(self.base_url + "/models", timeout=3.0)
            response.raise_for_status()
            out["models"] = [m.get("id") for m in response.json().get("data", [])]
            out["ok"] = True
            version = self._http.get(self.root_url + "/version", timeout=3.0)
            if version.status_code == 200:
                out["version"] = version.json().get("version")
        except (httpx.HTTPError, ValueError) as exc:
            out["error"] = f"cannot reach {self.root_url} ({type(exc).__name__})"
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)")


def parse_prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match:
            try:
                value = float(match.group(3))
            except ValueError:
                continue
            out[match.group(1)] = out.get(match.group(1), 0.0) + value
    return out
