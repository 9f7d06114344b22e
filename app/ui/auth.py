"""Annotator accounts for ``samplescope serve --auth FILE``: names and scrypt-hashed passwords.

The file holds one JSON object per line: ``{"name", "salt", "hash", "n", "r", "p"}``
(hex salt and hash from ``hashlib.scrypt``). There are no default
credentials: ``samplescope users add NAME --auth FILE`` creates each user.
Passwords are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from pathlib import Path

from engines.errors import SamplescopeError

NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class AuthError(SamplescopeError):
    pass


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)


class UserStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        users = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                users[row["name"]] = row
            except (ValueError, KeyError):
                raise AuthError(f"{self.path}: line {number} is not a user record") from None
        return users

    def names(self) -> list[str]:
        return sorted(self._read())

    def add(self, name: str, password: str) -> None:
        if not NAME.fullmatch(name or ""):  # match() would let "ada\n" through ($ matches before a final newline)
            raise AuthError("user names are 1-64 letters, digits, or _ . @ -")
        if len(password or "") < 8:
            raise AuthError("passwords need at least 8 characters")
        users = self._read()
        if name in users:
            raise AuthError(f"user {name!r} already exists")
        salt = os.urandom(16)
        row = {"name": name, "salt": salt.hex(), "hash": _hash(password, salt, **SCRYPT).hex(), **SCRYPT}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        os.chmod(self.path, 0o600)

    def verify(self, name: str, password: str) -> bool:
        row = self._read().get(name or "")
        if row is None:
            _hash(password or "", b"0" * 16, **SCRYPT)  # same work for unknown names
            return False
        expected = bytes.fromhex(row["hash"])
        got = _hash(password or "", bytes.fromhex(row["salt"]), row["n"], row["r"], row["p"])
        return hmac.compare_digest(expected, got)

    def require_users(self) -> None:
        if not self.names():
            raise AuthError(f"no users in {self.path}; add one with: samplescope users add NAME --auth {self.path}")
