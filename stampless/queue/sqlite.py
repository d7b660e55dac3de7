"""The embedded queue backend: one SQLite file in WAL mode, safe across processes.

Every state change is one ``BEGIN IMMEDIATE`` transaction, so a claim (lease plus
account lock) either happens whole or not at all, and a worker killed at any moment
leaves the file consistent. Times are stored as UTC epoch seconds so SQL can compare
and sort them.

The file is the deployment's embedded store, as the PostgreSQL database is the shared
one: it also holds the review store's table (``review_items``, ``review/sqlite.py``), so
a reviewer's decision settles its queue item in the decision's own transaction.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stampless._sqlite import connect, named, prepare, retry_locked
from stampless.errors import InputError, SystemFailure
from stampless.models import Request, Tier, VerdictKind, utcnow
from stampless.queue.abc import (
    AccountState,
    Claim,
    EnqueueResult,
    ItemState,
    LeaseLost,
    QueueItem,
    Tally,
    WorkQueue,
)
from stampless.review.abc import create_table

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS items (
    request_id    TEXT PRIMARY KEY,
    type          TEXT NOT NULL,
    tier          TEXT NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    system        TEXT,
    case_id       TEXT,
    base_dir      TEXT NOT NULL,
    request       TEXT NOT NULL,
    state         TEXT NOT NULL,
    received_at   REAL NOT NULL,
    deadline      REAL NOT NULL,
    not_before    REAL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    account       TEXT,
    lease_token   TEXT,
    lease_owner   TEXT,
    lease_expires REAL,
    last_error    TEXT,
    verdict       TEXT,
    sla_met       INTEGER,
    finished_at   REAL,
    overdue       INTEGER NOT NULL DEFAULT 0,
    supersedes    TEXT,
    updated_at    REAL NOT NULL,
    content_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS items_runnable ON items (state, deadline, priority);
CREATE INDEX IF NOT EXISTS items_case ON items (case_id);
CREATE TABLE IF NOT EXISTS account_locks (
    system      TEXT NOT NULL,
    account     TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    lease_token TEXT NOT NULL,
    expires     REAL NOT NULL,
    PRIMARY KEY (system, account)
);
CREATE TABLE IF NOT EXISTS accounts (
    system      TEXT NOT NULL,
    account     TEXT NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    reason      TEXT,
    changed_at  REAL NOT NULL,
    PRIMARY KEY (system, account)
);
"""
    + (
        # The review store's items (review.abc.COLUMNS), as in PostgreSQL's migration 2.
        create_table("review_items", "REAL", if_not_exists=True)
        + "CREATE INDEX IF NOT EXISTS review_items_pending ON review_items (status, deadline);\n"
    )
)

# A reviewed item's settlement (WorkQueue.settle), also run by the review store inside a
# decision's transaction (stampless.review.sqlite); psycopg's style, as the review
# store's SQL is written (stampless._sqlite.named).
SETTLE = """UPDATE items SET state = 'done', verdict = %(verdict)s, sla_met = %(sla_met)s,
    finished_at = %(finished_at)s, updated_at = (julianday('now') - 2440587.5) * 86400.0
    WHERE request_id = %(request_id)s AND state = 'review'"""

# Columns added after the first release: (name, SQL type), added to older files on open.
_ADDED_COLUMNS = (("content_sha256", "TEXT"),)

# How many runnable candidates one claim looks at before giving up; the ones skipped
# are waiting for a busy account, so looking further rarely finds more.
_CLAIM_SCAN = 200


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def _at(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=UTC)


def _add_columns(db: sqlite3.Connection) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(items)")}
    for name, sql_type in _ADDED_COLUMNS:
        if name in have:
            continue
        try:
            db.execute(f"ALTER TABLE items ADD COLUMN {name} {sql_type}")
        except sqlite3.OperationalError as exc:
            # Another process opening the same file added it first.
            if "duplicate column" not in str(exc):
                raise


def open_store(path: Path) -> None:
    """Create the embedded store at ``path``, or bring an older file's schema up to date
    (the queue opens it, and so does the review store, whichever comes first)."""
    try:
        prepare(path, _SCHEMA)
        with closing(connect(path)) as db:
            retry_locked(lambda: _add_columns(db))
    except sqlite3.Error as exc:
        raise SystemFailure(
            f"Cannot open the queue database {path} ({exc}); check the folder's "
            "permissions and free space."
        ) from exc


class SqliteQueue(WorkQueue):
    """:class:`WorkQueue` on one SQLite file.

    ``accounts`` maps each department system to its account names (from robot.toml);
    a claim for an item of a system not listed needs no account.
    """

    def __init__(self, path: Path, accounts: Mapping[str, Sequence[str]]) -> None:
        self.path = Path(path)
        self.accounts = {system: tuple(names) for system, names in accounts.items()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        open_store(self.path)

    # -- connections -------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        # One connection per thread and per process: sqlite3 connections must not cross
        # threads, and a forked child must not reuse its parent's.
        key = (os.getpid(), threading.get_ident())
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "key", None) != key:
            conn = connect(self.path, wal=True, synchronous="FULL")
            self._local.conn = conn
            self._local.key = key
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise SystemFailure(
                f"The queue database {self.path} is busy or unavailable ({exc}); try again."
            ) from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- rows --------------------------------------------------------------------------

    @staticmethod
    def _item(row: sqlite3.Row | Mapping[str, Any]) -> QueueItem:
        return QueueItem(
            request_id=row["request_id"],
            type=row["type"],
            tier=Tier(row["tier"]),
            priority=row["priority"],
            system=row["system"],
            case_id=row["case_id"],
            base_dir=Path(row["base_dir"]),
            request=Request.model_validate_json(row["request"]),
            state=ItemState(row["state"]),
            received_at=_at(row["received_at"]),
            deadline=_at(row["deadline"]),
            not_before=_dt(row["not_before"]),
            attempts=row["attempts"],
            account=row["account"],
            lease_owner=row["lease_owner"],
            lease_expires=_dt(row["lease_expires"]),
            last_error=row["last_error"],
            verdict=VerdictKind(row["verdict"]) if row["verdict"] else None,
            sla_met=None if row["sla_met"] is None else bool(row["sla_met"]),
            finished_at=_dt(row["finished_at"]),
            overdue=bool(row["overdue"]),
            supersedes=row["supersedes"],
            content_sha256=row["content_sha256"],
        )

    def _row(self, db: sqlite3.Connection, request_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(
            "SELECT * FROM items WHERE request_id = ?", (request_id,)
        ).fetchone()
        return row

    # -- the interface -----------------------------------------------------------------

    def enqueue(
        self,
        request: Request,
        *,
        base_dir: Path,
        tier: Tier,
        system: str | None,
        received_at: datetime,
        deadline: datetime,
        supersedes: str | None = None,
        content_sha256: str | None = None,
    ) -> EnqueueResult:
        now = utcnow().timestamp()
        with self._tx() as db:
            cur = db.execute(
                """INSERT OR IGNORE INTO items (request_id, type, tier, priority, system,
                   case_id, base_dir, request, state, received_at, deadline, supersedes,
                   updated_at, content_sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    request.id,
                    request.type,
                    Tier(tier).value,
                    request.priority,
                    system,
                    request.case_id,
                    str(base_dir),
                    request.model_dump_json(),
                    ItemState.queued.value,
                    received_at.timestamp(),
                    deadline.timestamp(),
                    supersedes,
                    now,
                    content_sha256,
                ),
            )
            row = self._row(db, request.id)
        assert row is not None
        return EnqueueResult(added=cur.rowcount == 1, item=self._item(row))

    def _expire(self, db: sqlite3.Connection, now: float) -> builtins.list[str]:
        ids = [
            r[0]
            for r in db.execute(
                "SELECT request_id FROM items WHERE state = 'claimed' AND lease_expires < ?",
                (now,),
            )
        ]
        if ids:
            db.executemany(
                """UPDATE items SET state = 'queued', lease_token = NULL, lease_owner = NULL,
                   lease_expires = NULL, account = NULL,
                   last_error = COALESCE(last_error, 'The worker holding it stopped.'),
                   updated_at = ? WHERE request_id = ?""",
                [(now, rid) for rid in ids],
            )
        db.execute("DELETE FROM account_locks WHERE expires < ?", (now,))
        return ids

    def claim(
        self,
        worker: str,
        *,
        lease_s: float,
        skip_systems: Collection[str] = (),
        due_by: datetime | None = None,
        now: datetime | None = None,
    ) -> Claim | None:
        t = (now or utcnow()).timestamp()
        due = _ts(due_by)
        expires = t + lease_s
        token = uuid.uuid4().hex
        with self._tx() as db:
            self._expire(db, t)
            busy: set[tuple[str, str]] = {
                (r[0], r[1]) for r in db.execute("SELECT system, account FROM account_locks")
            }
            disabled: set[tuple[str, str]] = {
                (r[0], r[1])
                for r in db.execute("SELECT system, account FROM accounts WHERE disabled = 1")
            }
            rows = db.execute(
                """SELECT request_id, system, deadline FROM items
                   WHERE state = 'queued' AND (not_before IS NULL OR not_before <= ?)
                   ORDER BY deadline, priority DESC, received_at LIMIT ?""",
                (t, _CLAIM_SCAN),
            ).fetchall()
            for row in rows:
                system = row["system"]
                not_due = due is None or row["deadline"] > due
                if system in skip_systems and not_due:
                    continue
                account: str | None = None
                if system is not None and system in self.accounts:
                    usable = [a for a in self.accounts[system] if (system, a) not in disabled]
                    if not usable and not_due:
                        continue  # every account refused: it waits for an operator, or escalation
                    free = [a for a in usable if (system, a) not in busy]
                    if usable and not free:
                        continue
                    account = free[0] if free else None
                if account is not None:
                    db.execute(
                        "INSERT INTO account_locks VALUES (?,?,?,?,?)",
                        (system, account, row["request_id"], token, expires),
                    )
                db.execute(
                    """UPDATE items SET state = 'claimed', attempts = attempts + 1,
                       account = ?, lease_token = ?, lease_owner = ?, lease_expires = ?,
                       updated_at = ? WHERE request_id = ?""",
                    (account, token, worker, expires, t, row["request_id"]),
                )
                claimed = self._row(db, row["request_id"])
                assert claimed is not None
                return Claim(
                    item=self._item(claimed), token=token, worker=worker, expires=_at(expires)
                )
        return None

    def _held(self, db: sqlite3.Connection, claim: Claim) -> sqlite3.Row:
        row = self._row(db, claim.request_id)
        if row is None or row["state"] != "claimed" or row["lease_token"] != claim.token:
            raise LeaseLost(
                f"The lease on {claim.request_id} expired and the item went back to the queue."
            )
        return row

    def _unlock(self, db: sqlite3.Connection, claim: Claim) -> None:
        db.execute("DELETE FROM account_locks WHERE lease_token = ?", (claim.token,))

    def renew(self, claim: Claim, *, lease_s: float) -> Claim:
        t = utcnow().timestamp()
        expires = t + lease_s
        with self._tx() as db:
            self._held(db, claim)
            db.execute(
                "UPDATE items SET lease_expires = ?, updated_at = ? WHERE request_id = ?",
                (expires, t, claim.request_id),
            )
            db.execute(
                "UPDATE account_locks SET expires = ? WHERE lease_token = ?",
                (expires, claim.token),
            )
        return claim.model_copy(update={"expires": _dt(expires)})

    def complete(
        self,
        claim: Claim,
        *,
        state: ItemState,
        verdict: VerdictKind | None,
        sla_met: bool | None,
        finished_at: datetime,
        error: str | None = None,
    ) -> QueueItem:
        if state not in (ItemState.done, ItemState.review, ItemState.failed):
            raise ValueError(f"complete() needs a terminal state, not {state}")
        t = utcnow().timestamp()
        with self._tx() as db:
            self._held(db, claim)
            db.execute(
                """UPDATE items SET state = ?, verdict = ?, sla_met = ?, finished_at = ?,
                   last_error = COALESCE(?, last_error), lease_token = NULL,
                   lease_owner = NULL, lease_expires = NULL, not_before = NULL,
                   updated_at = ? WHERE request_id = ?""",
                (
                    state.value,
                    None if verdict is None else VerdictKind(verdict).value,
                    None if sla_met is None else int(sla_met),
                    finished_at.timestamp(),
                    error,
                    t,
                    claim.request_id,
                ),
            )
            self._unlock(db, claim)
            row = self._row(db, claim.request_id)
        assert row is not None
        return self._item(row)

    def fail(self, claim: Claim, *, error: str, retry_at: datetime) -> QueueItem:
        t = utcnow().timestamp()
        with self._tx() as db:
            self._held(db, claim)
            db.execute(
                """UPDATE items SET state = 'queued', last_error = ?, not_before = ?,
                   lease_token = NULL, lease_owner = NULL, lease_expires = NULL,
                   account = NULL, updated_at = ? WHERE request_id = ?""",
                (error, retry_at.timestamp(), t, claim.request_id),
            )
            self._unlock(db, claim)
            row = self._row(db, claim.request_id)
        assert row is not None
        return self._item(row)

    def release(self, claim: Claim, *, retry_at: datetime | None = None) -> None:
        t = utcnow().timestamp()
        with self._tx() as db:
            try:
                self._held(db, claim)
            except LeaseLost:
                return
            db.execute(
                """UPDATE items SET state = 'queued', attempts = MAX(attempts - 1, 0),
                   not_before = ?, lease_token = NULL, lease_owner = NULL,
                   lease_expires = NULL, account = NULL, updated_at = ?
                   WHERE request_id = ?""",
                (_ts(retry_at), t, claim.request_id),
            )
            self._unlock(db, claim)

    def disable_account(self, system: str, account: str, *, reason: str) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO accounts (system, account, disabled, reason, changed_at)
                   VALUES (?, ?, 1, ?, ?)
                   ON CONFLICT (system, account) DO UPDATE SET
                   reason = CASE WHEN disabled = 1 THEN reason ELSE excluded.reason END,
                   changed_at = CASE WHEN disabled = 1 THEN changed_at
                                ELSE excluded.changed_at END,
                   disabled = 1""",
                (system, account, reason, utcnow().timestamp()),
            )

    def enable_account(self, system: str, account: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                """UPDATE accounts SET disabled = 0, reason = NULL, changed_at = ?
                   WHERE system = ? AND account = ? AND disabled = 1""",
                (utcnow().timestamp(), system, account),
            )
        return cur.rowcount == 1

    def account_states(self) -> builtins.list[AccountState]:
        db = self._db()
        rows = {(r["system"], r["account"]): r for r in db.execute("SELECT * FROM accounts")}
        held = {
            (r["system"], r["account"]): r["request_id"]
            for r in db.execute("SELECT system, account, request_id FROM account_locks")
        }
        names = {(system, a) for system, accounts in self.accounts.items() for a in accounts}
        out = []
        for system, account in sorted(names | set(rows)):
            row = rows.get((system, account))
            out.append(
                AccountState(
                    system=system,
                    account=account,
                    usable=row is None or not row["disabled"],
                    reason=None if row is None else row["reason"],
                    changed_at=None if row is None else _at(row["changed_at"]),
                    held_by=held.get((system, account)),
                )
            )
        return out

    def get(self, request_id: str) -> QueueItem | None:
        row = self._row(self._db(), request_id)
        return None if row is None else self._item(row)

    def list(
        self,
        *,
        states: Iterable[ItemState] | None = None,
        type: str | None = None,
        case_id: str | None = None,
        limit: int = 1000,
    ) -> builtins.list[QueueItem]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if states is not None:
            wanted = [ItemState(s).value for s in states]
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            args += wanted
        if type is not None:
            where.append("type = ?")
            args.append(type)
        if case_id is not None:
            where.append("case_id = ?")
            args.append(case_id)
        sql = "SELECT * FROM items"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY overdue DESC, deadline, priority DESC LIMIT ?"
        args.append(limit)
        return [self._item(r) for r in self._db().execute(sql, args)]

    def counts(self) -> dict[ItemState, int]:
        out = dict.fromkeys(ItemState, 0)
        for state, n in self._db().execute("SELECT state, COUNT(*) FROM items GROUP BY state"):
            out[ItemState(state)] = n
        return out

    def tally(self) -> builtins.list[Tally]:
        rows = self._db().execute(
            """SELECT state, tier, COUNT(*), COALESCE(SUM(sla_met = 1), 0),
                      COALESCE(SUM(sla_met = 0), 0)
               FROM items GROUP BY state, tier ORDER BY state, tier"""
        )
        return [
            Tally(state=ItemState(s), tier=Tier(t), items=n, sla_met=met, sla_missed=missed)
            for s, t, n, met, missed in rows
        ]

    def sweep_leases(self, *, now: datetime | None = None) -> builtins.list[str]:
        with self._tx() as db:
            return self._expire(db, (now or utcnow()).timestamp())

    def mark_overdue(self, *, now: datetime | None = None) -> builtins.list[str]:
        t = (now or utcnow()).timestamp()
        with self._tx() as db:
            ids = [
                r[0]
                for r in db.execute(
                    """SELECT request_id FROM items WHERE overdue = 0 AND deadline < ?
                       AND state IN ('queued', 'claimed', 'review')""",
                    (t,),
                )
            ]
            db.executemany(
                "UPDATE items SET overdue = 1, updated_at = ? WHERE request_id = ?",
                [(t, rid) for rid in ids],
            )
        return ids

    def settle(
        self, request_id: str, *, verdict: VerdictKind, sla_met: bool | None, finished_at: datetime
    ) -> bool:
        params = {
            "verdict": VerdictKind(verdict).value,
            "sla_met": sla_met,
            "finished_at": finished_at,
            "request_id": request_id,
        }
        with self._tx() as db:
            cur = db.execute(*named(SETTLE, params))
        return cur.rowcount == 1

    def retry(self, request_id: str) -> QueueItem:
        with self._tx() as db:
            row = self._row(db, request_id)
            if row is None:
                raise InputError(f"No queued request {request_id}; check the id with 'queue ls'.")
            if row["state"] != "queued":
                raise InputError(
                    f"{request_id} is {row['state']}, not waiting; a finished verdict is never "
                    "changed, so submit a re-check under a new id instead."
                )
            db.execute(
                "UPDATE items SET not_before = NULL, updated_at = ? WHERE request_id = ?",
                (utcnow().timestamp(), request_id),
            )
            row = self._row(db, request_id)
        assert row is not None
        return self._item(row)
