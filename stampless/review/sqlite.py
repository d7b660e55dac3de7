"""The embedded review store: one SQLite file (WAL), ``<var_dir>/review.db``.

The queue keeps a file of its own (``queue.db``), so a decision cannot settle the
queue's item in its own transaction: it settles it from the same call, in the queue's
file, just before the decision commits. A crash between the two leaves the queue's
item in ``review`` with its verdict in the outbox, where the deadline sweep finds it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from stampless._sqlite import connection, prepare
from stampless.errors import StamplessError
from stampless.models import Verdict
from stampless.review.abc import ReviewStore, Tx, create_table

if TYPE_CHECKING:
    from stampless.config import Config

# The file's table kept the name it had before PostgreSQL (where the queue's is "items").
_TABLE = "items"
_SCHEMA = create_table(_TABLE, "REAL", if_not_exists=True) + (
    f"CREATE INDEX IF NOT EXISTS items_pending ON {_TABLE} (status, deadline);\n"
)
_NAMED = re.compile(r"%\((\w+)\)s")


def _param(value: Any) -> Any:
    return value.timestamp() if isinstance(value, datetime) else value


class _SqliteTx(Tx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def _run(self, sql: str, params: Mapping[str, Any]) -> sqlite3.Cursor:
        named = {name: _param(value) for name, value in params.items()}
        return self._db.execute(_NAMED.sub(r":\1", sql), named)

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        return self._run(sql, params).rowcount

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [dict(zip(row.keys(), row, strict=True)) for row in self._run(sql, params)]


class SqliteReviewStore(ReviewStore):
    """The review queue in one SQLite file; safe to share between processes.

    ``queue_path`` is the deployment's queue file, whose ``review`` items decisions
    settle (None: no queue, as in a store opened on its own).
    """

    table = _TABLE

    def __init__(self, db_path: Path, *, queue_path: Path | None = None) -> None:
        self.db_path = Path(db_path)
        self.queue_path = queue_path
        prepare(self.db_path, _SCHEMA)

    @staticmethod
    def path_for(config: Config) -> Path:
        """Where the deployment's store lives: ``<var_dir>/review.db``."""
        return config.var_dir / "review.db"

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Tx]:
        # A short-lived connection per call: the console serves from threads and the
        # workers from other processes, and SQLite connections must not cross threads.
        with connection(self.db_path) as db:
            if not write:
                yield _SqliteTx(db)
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _settle_queue(self, tx: Tx, final: Verdict) -> bool:
        if self.queue_path is None or not self.queue_path.exists():
            return False
        from stampless.queue.abc import settle_reviewed
        from stampless.queue.sqlite import SqliteQueue

        try:
            queue = SqliteQueue(self.queue_path, {})
            try:
                return settle_reviewed(queue, final)
            finally:
                queue.close()
        except (StamplessError, sqlite3.Error) as exc:
            # The decision stands (its verdict is in the outbox already); the deadline
            # sweep settles the queue's item from there.
            logger.error("review: {} could not be settled in the queue: {}", final.request_id, exc)
            return False
