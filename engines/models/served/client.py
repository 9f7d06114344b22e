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
- ``metrics()`` reads the server's Prometheus ``/metrics`` (root, not ``/v1``)
  into ``{name: value}`` summed over labels; vLLM's prefix-cache counters are
  ``vllm:prefix_cache_queries_total`` / ``vllm:prefix_cache_hits_total`` (tokens)
  and ``vllm:prompt_tokens_total``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from engines.errors import EngineError

T = TypeVar("T")
R = TypeVar("R")


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
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._http.request(method, url, json=body)
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
        if len(items) <= 1 or threading.current_thread().name.startswith(self._thread_prefix):
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
