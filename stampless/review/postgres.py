"""The shared review store and reviewer accounts: the deployment's PostgreSQL database.

With ``[store] backend = "postgres"`` every machine's console reads and decides the same
items (table ``review_items``) and logs in the same reviewers (table ``reviewers``),
both created by ``stampless db migrate`` (``stampless._postgres``, migration 2). The
review items share the database with the work queue, so a decision settles the queue's
``review`` item in the decision's own transaction: either both happen or neither.

Connections are short-lived, one per call, as the SQLite store's are: the console
serves from threads, and a store opened for one question (the idempotency check, a
metrics scrape) must not leave a connection behind.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any

from stampless._postgres import check_schema, connect, translated
from stampless.queue.postgres import SETTLE, item_from_row
from stampless.review.abc import ReviewStore, Tx
from stampless.review.users import Session, User, UserStore

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import DictRow

    from stampless.queue.abc import QueueItem


class _PostgresTx(Tx):
    def __init__(self, db: psycopg.Connection[DictRow]) -> None:
        self.db = db

    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        return self.db.execute(sql.encode(), params).rowcount

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.db.execute(sql.encode(), params).fetchall()


class _Database:
    """Short-lived connections to the store, its schema checked once."""

    def __init__(self, url: str) -> None:
        self._url = url
        with closing(connect(url)) as db:
            check_schema(db)

    @contextmanager
    def transaction(self, action: str) -> Iterator[_PostgresTx]:
        with closing(connect(self._url)) as db, translated(action), db.transaction():
            yield _PostgresTx(db)


class PostgresReviewStore(ReviewStore):
    """:class:`ReviewStore` on a PostgreSQL database migrated by ``stampless db migrate``."""

    for_update = " FOR UPDATE"
    settle_sql = SETTLE

    def __init__(self, url: str) -> None:
        self._database = _Database(url)

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[Tx]:
        # Every write takes its row lock (FOR UPDATE, or the UPDATE's own) before it
        # reads what it checks, so read committed is enough.
        with self._database.transaction("using the review store") as tx:
            yield tx

    def _queue_item(self, row: Mapping[str, Any]) -> QueueItem:
        return item_from_row(row)


class PostgresUserStore(UserStore):
    """:class:`~stampless.review.users.UserStore` in the shared database's ``reviewers``."""

    def __init__(self, url: str, *, max_failed: int = 5, lockout_minutes: float = 15) -> None:
        super().__init__(max_failed=max_failed, lockout_minutes=lockout_minutes)
        self._database = _Database(url)

    @property
    def location(self) -> str:
        return "the shared PostgreSQL store"

    def all(self) -> list[User]:
        with self._database.transaction("listing the reviewers") as tx:
            rows = tx.rows("SELECT * FROM reviewers ORDER BY name", {})
        return [User.model_validate(r) for r in rows]

    def get(self, name: str) -> User | None:
        with self._database.transaction("reading a reviewer") as tx:
            row = tx.row("SELECT * FROM reviewers WHERE name = %(name)s", {"name": name})
        return None if row is None else User.model_validate(row)

    @contextmanager
    def _session(self, name: str) -> Iterator[Session]:
        with self._database.transaction("changing a reviewer") as tx:
            # The row lock cannot hold a name that has no row yet; this lock, for the
            # transaction, serializes two consoles creating (or failing on) one name.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('stampless reviewer ' || %(name)s))",
                {"name": name},
            )
            row = tx.row("SELECT * FROM reviewers WHERE name = %(name)s FOR UPDATE", {"name": name})
            users = {} if row is None else {name: User.model_validate(row)}

            def save(changed: dict[str, User]) -> None:
                for user in changed.values():
                    tx.execute(
                        """INSERT INTO reviewers (name, role, password_hash, created_at,
                               failed, locked_until, session_epoch)
                           VALUES (%(name)s, %(role)s, %(password_hash)s, %(created_at)s,
                               %(failed)s, %(locked_until)s, %(session_epoch)s)
                           ON CONFLICT (name) DO UPDATE SET role = excluded.role,
                               password_hash = excluded.password_hash,
                               created_at = excluded.created_at, failed = excluded.failed,
                               locked_until = excluded.locked_until,
                               session_epoch = excluded.session_epoch""",
                        user.model_dump(),
                    )

            yield users, save
