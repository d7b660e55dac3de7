"""SQLite connections as every stampless store opens them (queue, review, delivery).

Autocommit mode (transactions are explicit: ``BEGIN IMMEDIATE`` where a claim must be
atomic), rows by column name, and a 30 s busy timeout so workers in several processes
wait for each other's short write transactions instead of failing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30


def connect(path: Path, *, wal: bool = False, synchronous: str | None = None) -> sqlite3.Connection:
    """A connection to the database at ``path`` (``wal`` also switches the file to WAL)."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    if synchronous is not None:
        conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


@contextmanager
def connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A short-lived connection, closed on exit (for stores used from many threads)."""
    conn = connect(path)
    try:
        yield conn
    finally:
        conn.close()
