"""The embedded review store: a table in the deployment's SQLite file, ``queue.db``.

The review items live beside the work queue's (table ``review_items`` in
``<var_dir>/queue.db``, created by the queue's schema, ``queue/sqlite.py``), as they
share the PostgreSQL database in ``review/postgres.py``: a decision settles the queue's
``review`` item in the decision's own transaction, so either both happen or neither.

Stores from before kept the items in a file of their own, ``<var_dir>/review.db``.
Opening the store moves them into ``queue.db`` once (:func:`import_review_db`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger

from stampless._sqlite import BUSY_TIMEOUT_S, connection, named
from stampless.errors import SystemFailure
from stampless.models import Verdict, utcnow
from stampless.queue.abc import QueueItem
from stampless.queue.sqlite import SETTLE, SqliteQueue, open_store
from stampless.review.abc import COLUMNS, ReviewStore, Tx

if TYPE_CHECKING:
    from stampless.config import Config

LEGACY_NAME = "review.db"
MIGRATED_SUFFIX = ".migrated"


class _SqliteTx(Tx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        return self._db.execute(*named(sql, params)).rowcount

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [dict(row) for row in self._db.execute(*named(sql, params))]


class SqliteReviewStore(ReviewStore):
    """The review queue in the deployment's SQLite file; safe to share between processes.

    ``db_path`` is the queue's file (``queue.db``). ``legacy_path``: a ``review.db`` from
    before, whose items are moved into ``db_path`` on open (see :func:`import_review_db`).
    """

    settle_sql: ClassVar[str] = SETTLE

    def __init__(self, db_path: Path, *, legacy_path: Path | None = None) -> None:
        self.db_path = Path(db_path)
        open_store(self.db_path)
        if legacy_path is not None:
            import_review_db(self, Path(legacy_path))

    @staticmethod
    def path_for(config: Config) -> Path:
        """Where the deployment's store lives: the queue's file."""
        return config.queue_path

    @staticmethod
    def legacy_path_for(config: Config) -> Path:
        """Where stores from before kept the review items: ``<var_dir>/review.db``."""
        return config.var_dir / LEGACY_NAME

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Tx]:
        # A short-lived connection per call: the console serves from threads and the
        # workers from other processes, and SQLite connections must not cross threads.
        with connection(self.db_path, synchronous="FULL") as db:
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

    def _queue_item(self, row: Mapping[str, Any]) -> QueueItem:
        return SqliteQueue._item(row)


# A row from review.db: copied as it is, except that a decision recorded there is never
# lost to a pending copy made by an earlier, interrupted import.
_NAMES = [name for name, _, _ in COLUMNS]
_IMPORT = (
    f"INSERT INTO review_items ({', '.join(_NAMES)})"  # noqa: S608 - names are ours
    f" VALUES ({', '.join(f'%({n})s' for n in _NAMES)})"
    " ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{n} = excluded.{n}" for n in _NAMES[1:])
    + " WHERE review_items.status = 'pending' AND excluded.status = 'decided'"
)


def import_review_db(store: SqliteReviewStore, legacy: Path) -> int:
    """Move the items of ``legacy`` (a ``review.db`` from before) into ``store``, once.

    In order, so that a crash anywhere leaves what the next open completes, and no
    decision is ever lost: (1) ``legacy`` is write-locked, so a process still running
    the old code cannot decide an item while it is copied; (2) its rows are copied into
    ``queue.db`` in one transaction, which also settles the queue items whose decision
    the old two-file store recorded but never settled; (3) ``legacy`` is renamed aside
    (``review.db.migrated``), still locked. A crash before (3) leaves ``legacy`` in
    place, and the next open copies it again: the copy is idempotent and never turns a
    decided item back to pending. Returns the number of rows read.
    """
    try:
        inode = legacy.stat().st_ino
        # mode=rw: never create the file when another process has just moved it aside.
        old = sqlite3.connect(
            f"{legacy.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S
        )
    except (FileNotFoundError, sqlite3.OperationalError):
        if legacy.exists():
            raise
        return 0
    old.isolation_level = None
    old.row_factory = sqlite3.Row
    try:
        with closing(old):
            old.execute("BEGIN IMMEDIATE")
            if _inode(legacy) != inode:
                return 0  # another process imported it while this one waited for the lock
            found = old.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'items'"
            ).fetchone()
            rows = [dict(r) for r in old.execute("SELECT * FROM items")] if found else []
            with store._transaction() as tx:
                for row in rows:
                    tx.execute(_IMPORT, {n: row.get(n) for n in _NAMES})
                settled = _settle_decided(store, tx)
            aside = _set_aside(legacy)
            old.execute("ROLLBACK")
    except sqlite3.Error as exc:
        raise SystemFailure(
            f"Cannot move the review items of {legacy} into {store.db_path} ({exc}); "
            "stop every stampless process of the deployment and start one again."
        ) from exc
    for suffix in ("-wal", "-shm"):
        _move(Path(f"{legacy}{suffix}"), Path(f"{aside}{suffix}"))
    logger.info(
        "review: moved {} review items from {} into {} ({} queue items settled); the old "
        "file is kept as {}",
        len(rows),
        legacy,
        store.db_path,
        settled,
        aside.name,
    )
    return len(rows)


def _settle_decided(store: SqliteReviewStore, tx: Tx) -> int:
    # The old store settled the queue's file in a transaction of its own, which a crash
    # or a busy queue could miss; the database itself now says what is left to settle.
    rows = tx.rows(
        "SELECT r.final FROM review_items r JOIN items q USING (request_id)"
        " WHERE r.status = 'decided' AND q.state = 'review' AND r.final IS NOT NULL",
        {},
    )
    return sum(store._settle_queue(tx, Verdict.model_validate_json(r["final"])) for r in rows)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _set_aside(legacy: Path) -> Path:
    aside = legacy.with_name(legacy.name + MIGRATED_SUFFIX)
    if aside.exists():  # a second review.db, restored from a backup: keep both copies
        aside = aside.with_name(f"{aside.name}.{utcnow().strftime('%Y%m%dT%H%M%S')}")
    legacy.replace(aside)
    return aside


def _move(source: Path, target: Path) -> None:
    with suppress(FileNotFoundError):  # SQLite removed it when the last connection closed
        source.replace(target)
