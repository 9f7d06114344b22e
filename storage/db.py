"""The database handle: engine, sessions, write retries, migrations, checks.

``Database(url)`` owns one SQLAlchemy engine; nothing is global. Callers open
a session per user event and pass it to the repository functions::

    db = Database.open()                       # default URL, migrated to head
    vote = db.write(lambda s: add_vote(s, ...)) # one transaction, retried if locked
    runs = db.read(lambda s: list_runs(s))

The URL comes from the argument, else ``$SAMPLESCOPE_DB``, else a SQLite file
``samplescope.db`` in ``$SAMPLESCOPE_HOME`` (default
``$XDG_DATA_HOME/samplescope``, i.e. ``~/.local/share/samplescope``).

On SQLite every connection gets, at connect: ``journal_mode=WAL``,
``busy_timeout``, ``synchronous=NORMAL`` (durable across a process crash; WAL
keeps the file consistent) and ``foreign_keys=ON``. We take over
transaction control from the ``sqlite3`` driver (its implicit BEGIN runs too
late for a consistent read, see SQLAlchemy's "Serializable isolation /
Savepoints" recipe) and start write transactions with ``BEGIN IMMEDIATE``, so a
writer waits for the lock up front (honouring ``busy_timeout``) instead of
failing when a read transaction tries to become a write one. Whatever still
fails with "database is locked" (or, on PostgreSQL, a serialization failure or
deadlock) is retried with jittered exponential backoff in a new transaction.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from storage.errors import DatabaseBusy, InvalidInput
from storage.models import TABLES

T = TypeVar("T")

_WRITE_OPTION = "samplescope_write"
_PG_RETRY_CODES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def data_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("SAMPLESCOPE_HOME"):
        return Path(env["SAMPLESCOPE_HOME"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "samplescope"


def resolve_url(url: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The database URL: ``url``, else ``$SAMPLESCOPE_DB``, else the default SQLite file."""
    env = os.environ if env is None else env
    chosen = url or env.get("SAMPLESCOPE_DB")
    if chosen:
        try:
            make_url(chosen)
        except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends
            raise InvalidInput(f"not a database URL: {chosen!r} ({exc})") from None
        return chosen
    return f"sqlite:///{data_home(env) / 'samplescope.db'}"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a write is retried when the database is locked."""

    attempts: int = 12
    base_delay_s: float = 0.005
    max_delay_s: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("retry policy needs attempts >= 1 and 0 <= base_delay_s <= max_delay_s")


@dataclass(frozen=True)
class CheckReport:
    """What ``Database.check`` found: ``ok`` is False when ``problems`` is not empty."""

    url: str
    revision: str | None
    head: str
    counts: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def is_retryable(exc: BaseException) -> bool:
    """True for lock / serialization errors after which the whole transaction may be rerun."""
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        if (
            "database is locked" in message
            or "database is busy" in message
            or "database table is locked" in message
        ):
            return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
        return code in _PG_RETRY_CODES
    return False


class Database:
    """One database: an engine plus session, retry, migration and check helpers."""

    def __init__(
        self,
        url: str | None = None,
        *,
        busy_timeout_ms: int = 10_000,
        retry: RetryPolicy | None = None,
        echo: bool = False,
    ) -> None:
        self.url = resolve_url(url)
        self.retry = retry or RetryPolicy()
        self._jitter = random.Random()  # local: never touches the global random state
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            database = parsed.database or ""
            in_memory = database in ("", ":memory:") or "mode=memory" in self.url
            if not in_memory and not database.startswith("file:"):
                path = Path(database).expanduser()
                path.parent.mkdir(parents=True, exist_ok=True)
                self.url = parsed.set(database=str(path)).render_as_string(hide_password=False)
            kwargs["connect_args"] = {"check_same_thread": False}
            if in_memory:
                # one shared connection, so every session sees the same in-memory database
                # (for tests and single-threaded use; concurrent writers need a file)
                kwargs["poolclass"] = StaticPool
            else:
                kwargs["pool_size"] = 20  # concurrent writers wait on SQLite's lock, not the pool
                kwargs["max_overflow"] = 20
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(self.url, **kwargs)
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        if self.is_sqlite:
            self._install_sqlite_hooks(busy_timeout_ms)

    # -- construction ----------------------------------------------------------

    @classmethod
    def open(cls, url: str | None = None, **kwargs: Any) -> Database:
        """A database migrated to the newest schema (what the app and CLI use at start)."""
        db = cls(url, **kwargs)
        db.upgrade()
        return db

    def _install_sqlite_hooks(self, busy_timeout_ms: int) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
                cursor.execute("PRAGMA foreign_keys = ON")
            finally:
                cursor.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Any) -> None:
            write = conn.get_execution_options().get(_WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    # -- sessions ----------------------------------------------------------------

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success when ``write``; a read commits nothing."""
        bind = self._write_engine if write else self.engine
        with Session(bind, expire_on_commit=False) as session:
            try:
                yield session
                if write:
                    session.commit()
                # a read just closes: the connection's transaction is rolled back on return to the
                # pool, and loaded objects stay readable (rollback() would expire them)
            except BaseException:
                session.rollback()
                raise

    def write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one write transaction, retried from scratch while locked.

        ``fn`` must do all its reads and writes through the session it is given,
        so a retry repeats the whole unit of work. Returns after the commit.
        """
        return self._with_retry(fn, write=True)

    def read(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` in one read transaction (retried while locked)."""
        return self._with_retry(fn, write=False)

    def _with_retry(self, fn: Callable[[Session], T], *, write: bool) -> T:
        delay = self.retry.base_delay_s
        for attempt in range(1, self.retry.attempts + 1):
            try:
                with self.session(write=write) as session:
                    return fn(session)
            except DBAPIError as exc:
                if not is_retryable(exc):
                    raise
                if attempt == self.retry.attempts:
                    raise DatabaseBusy(
                        f"the database stayed locked through {attempt} attempts; try again"
                    ) from exc
                time.sleep(delay * (0.5 + self._jitter.random()))
                delay = min(delay * 2, self.retry.max_delay_s)
        raise AssertionError("unreachable")

    # -- migrations --------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> None:
        """Apply the Alembic migrations up to ``revision`` (idempotent).

        Raises :class:`storage.errors.SchemaError` when the database was migrated
        by a newer samplescope (a revision this code does not know).
        """
        from storage.migrate import upgrade

        upgrade(self._write_engine, revision)

    def revision(self) -> str | None:
        from storage.migrate import current_revision

        return current_revision(self.engine)

    # -- checks ------------------------------------------------------------------

    def check(self) -> CheckReport:
        """Integrity and foreign-key checks (SQLite), the schema revision and row counts."""
        from storage.migrate import head_revision

        problems: list[str] = []
        counts: dict[str, int] = {}
        revision = self.revision()
        head = head_revision()
        if revision != head:
            problems.append(f"schema revision is {revision or 'none'}, expected {head}")
        with self.engine.connect() as conn:
            if self.is_sqlite:
                rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check").fetchall()]
                if rows != ["ok"]:
                    problems.extend(f"integrity_check: {r}" for r in rows)
                for table, rowid, parent, fkid in conn.exec_driver_sql("PRAGMA foreign_key_check"):
                    problems.append(
                        f"foreign_key_check: {table} row {rowid} points at a missing {parent} (fk {fkid})"
                    )
            existing = set(inspect(conn).get_table_names())
            for table in TABLES:
                if table.name in existing:
                    counts[table.name] = int(
                        conn.execute(select(func.count()).select_from(table)).scalar_one()
                    )
                else:
                    problems.append(f"table {table.name} is missing")
        return CheckReport(url=self.safe_url, revision=revision, head=head, counts=counts, problems=problems)

    # -- misc ----------------------------------------------------------------------

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (for messages and logs)."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"
