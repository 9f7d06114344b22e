"""Who is voting: guest ids issued and signed by the server, and rate-limited sign-in.

A guest gets an id the server makes (``guest-`` and 12 random hex digits) with
an HMAC-SHA256 tag under the server's secret, ``ID.TAG``; the browser keeps the
token (localStorage) so a reload is the same guest, and every vote is checked
against the tag. A client can replay its own token but cannot make one for
another guest, and whatever else it sends is refused. Under ``--auth`` the
signed-in name is the only identity: a guest token means nothing there.

The secret lives in ``$SAMPLESCOPE_HOME/secret`` (made on first use, mode 0600)
so guests keep their ids across restarts; tests pass their own.

Sign-in attempts are limited per name and overall, over a sliding window: once
a name has failed ``per_name`` times in ``window`` seconds, its next attempts
are refused without checking the password until the window has moved on; the
same for all names together at ``overall`` failures (password spraying).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

GUEST = re.compile(r"guest-[0-9a-f]{12}")
TOKEN = re.compile(r"(guest-[0-9a-f]{12})\.([0-9a-f]{64})")


class GuestTokens:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the guest-token secret needs at least 16 bytes")
        self._secret = secret

    def _tag(self, guest: str) -> str:
        return hmac.new(self._secret, guest.encode("ascii"), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        guest = f"guest-{secrets.token_hex(6)}"
        return f"{guest}.{self._tag(guest)}"

    def verify(self, token: object) -> str | None:
        """The guest id a token was issued for, or None for anything the server did not sign."""
        if not isinstance(token, str) or len(token) > 100:
            return None
        match = TOKEN.fullmatch(token)
        if match is None or not hmac.compare_digest(match.group(2), self._tag(match.group(1))):
            return None
        return match.group(1)


def load_secret(home: Path) -> bytes:
    """The server's secret in ``home/secret``, made (0600) on first use."""
    path = home / "secret"
    if path.exists():
        data = bytes.fromhex(path.read_text(encoding="ascii").strip())
        if len(data) >= 16:
            return data
    home.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(data.hex())
    return data


class SignInLimiter:
    """Wraps ``verify(name, password) -> bool``; refuses attempts beyond the failure limits."""

    def __init__(self, verify: Callable[[str, str], bool], *, per_name: int = 5, overall: int = 50,
                 window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._verify = verify
        self.per_name, self.overall, self.window = per_name, overall, window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()
        self.refused = 0

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def limited(self, name: str) -> bool:
        now = self._clock()
        with self._lock:
            mine = self._failures.get(name, deque())
            self._trim(mine, now)
            self._trim(self._all, now)
            return len(mine) >= self.per_name or len(self._all) >= self.overall

    def __call__(self, name: str, password: str) -> bool:
        name = str(name or "")[:200]
        if self.limited(name):
            with self._lock:
                self.refused += 1
            return False
        ok = bool(self._verify(name, password))
        if not ok:
            now = self._clock()
            with self._lock:
                self._failures.setdefault(name, deque()).append(now)
                self._all.append(now)
                if len(self._failures) > 10_000:  # bounded memory under a flood of made-up names
                    for key in list(self._failures):
                        self._trim(self._failures[key], now)
                        if not self._failures[key]:
                            del self._failures[key]
        return ok
