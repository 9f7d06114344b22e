"""The page's own HTTP calls, made by hand: what a browser (or an attacker with curl) sends to a Gradio app.

A :class:`PageSession` reads ``/config``, finds an event handler by the element that
triggers it, joins the queue (``POST /gradio_api/queue/join``) and reads the result from the
session's event stream (``GET /gradio_api/queue/data``, server-sent events). No gradio_client:
it calls private handlers exactly as the page does.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx


class GradioCallError(RuntimeError):
    pass


class PageSession:
    def __init__(self, base: str, http: httpx.Client | None = None, config: dict | None = None) -> None:
        self.base = base.rstrip("/") + "/"
        self.http = http or httpx.Client(timeout=60)
        self.config = config or self.http.get(self.base + "config").json()
        self.session_hash = uuid.uuid4().hex[:11]
        self.components = {c["id"]: c for c in self.config["components"]}

    def component_id(self, elem_id: str) -> int:
        for cid, comp in self.components.items():
            if comp.get("props", {}).get("elem_id") == elem_id:
                return cid
        raise KeyError(elem_id)

    def dependency(self, *, elem_id: str | None = None, event: str = "click", api_name: str | None = None) -> dict:
        target = None if elem_id is None else self.component_id(elem_id)
        for dep in self.config["dependencies"]:
            if api_name is not None and dep.get("api_name") == api_name:
                return dep
            if api_name is None and any(t[1] == event and (target is None or t[0] == target) for t in dep["targets"]):
                return dep
        raise KeyError(elem_id or api_name or event)

    def output_index(self, dep: dict, elem_id: str) -> int:
        return dep["outputs"].index(self.component_id(elem_id))

    def call(self, dep: dict, data: list[Any], *, trigger: int | None = None) -> list[Any]:
        """Run one handler as the page does; its last output values (a generator's final state)."""
        body = {"data": data, "fn_index": dep["id"], "session_hash": self.session_hash, "event_data": None,
                "trigger_id": trigger if trigger is not None else (dep["targets"][0][0] if dep["targets"] else None)}
        # ASCII JSON: any str goes through as the client sent it, lone surrogates included (as \\ud800 escapes)
        joined = self.http.post(self.base + "gradio_api/queue/join", content=json.dumps(body, allow_nan=True),
                                headers={"content-type": "application/json"})
        if joined.status_code != 200:
            raise GradioCallError(f"join refused: HTTP {joined.status_code} {joined.text[:200]}")
        event_id = joined.json()["event_id"]
        latest: list[Any] | None = None
        with self.http.stream("GET", self.base + "gradio_api/queue/data", params={"session_hash": self.session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event_id):
                    continue
                kind = msg.get("msg")
                if kind == "process_generating":
                    latest = _apply(latest, msg["output"].get("data", []))
                elif kind == "process_completed":
                    output = msg.get("output", {})
                    if not msg.get("success", False):
                        raise GradioCallError(output.get("error") or json.dumps(output)[:300])
                    data_out = output.get("data", [])
                    return _apply(latest, data_out) if latest is not None and _is_diff(data_out) else data_out
                elif kind == "close_stream":
                    break
        raise GradioCallError("the event stream ended without a result")


def _is_diff(values: list[Any]) -> bool:
    return any(isinstance(v, list) and v and isinstance(v[0], list) and v[0] and v[0][0] in ("replace", "append", "add", "delete") for v in values)


def _apply(previous: list[Any] | None, values: list[Any]) -> list[Any]:
    """Gradio streams a generator's later outputs as diffs against the previous ones."""
    if previous is None:
        return list(values)
    from gradio_client.utils import apply_diff

    return [apply_diff(p, v) for p, v in zip(previous, values, strict=False)]
