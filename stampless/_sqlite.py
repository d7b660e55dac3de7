"""SQLite connections as every stampless store opens them (queue, review, delivery).

Autocommit mode (transactions are explicit: ``BEGIN IMMEDIATE`` where a claim must be
atomic), rows by column name, and a 30 s busy timeout so workers in several processes
wait for each other's short write transactions instead of failing.

Opening a store is where processes started together collide: the switch to WAL and
the schema need a write lock, and SQLite answers "database is locked" at once, without
waiting out the busy timeout, when two connections would otherwise deadlock (one holds
a read lock and wants to write while the other writes). :func:`connect` sets the busy
timeout first and retries the switch, and :func:`prepare` retries the schema, with
jittered back-off, so twenty processes starting on one var/ all start.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

BUSY_TIMEOUT_S = 30

T = TypeVar("T")


_NAMED = re.compile(r"%\((\w+)\)s")


def named(sql: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A statement written in psycopg's ``%(name)s`` style, for sqlite3: ``:name``
    placeholders, and instants as the UTC epoch seconds the stores keep."""
    values = {k: v.timestamp() if isinstance(v, datetime) else v for k, v in params.items()}
    return _NAMED.sub(r":\1", sql), values


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def retry_locked(action: Callable[[], T], *, timeout_s: float = BUSY_TIMEOUT_S) -> T:
    """Run ``action`` again while SQLite says the database is locked, up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(random.uniform(delay / 2, delay))
        delay = min(delay * 2, 0.25)


def _switch_to_wal(conn: sqlite3.Connection) -> None:
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    if mode != "wal":
        raise sqlite3.OperationalError(f"database is locked (the journal mode stayed {mode})")


def connect(path: Path, *, wal: bool = False, synchronous: str | None = None) -> sqlite3.Connection:
    """A connection to the database at ``path`` (``wal`` also switches the file to WAL)."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    # Before anything that locks: the WAL switch below must wait like everything else.
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    if wal:
        try:
            retry_locked(lambda: _switch_to_wal(conn))
        except BaseException:
            conn.close()
            raise
    if synchronous is not None:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def prepare(path: Path, schema: str) -> None:
    """Create (or open) the store at ``path`` in WAL mode with ``schema``, retrying locks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(connect(path, wal=True)) as conn:
        retry_locked(lambda: conn.executescript(schema))


@contextmanager
def connection(path: Path, *, synchronous: str | None = None) -> Iterator[sqlite3.Connection]:
    """A short-lived connection, closed on exit (for stores used from many threads)."""
    conn = connect(path, synchronous=synchronous)
    try:
        yield conn
    finally:
        conn.close()
