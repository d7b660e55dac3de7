"""The shared queue backend: one PostgreSQL database for every machine of a deployment.

A claim is the ``SELECT … FOR UPDATE SKIP LOCKED`` pattern that Procrastinate and
pgqueuer use, with one step they lack: the item must also get one free account of its
system. Both the item row and the account row are taken with ``SKIP LOCKED``, so
claimers never wait for each other, and the account lock *is* the claimed item: a unique
index on ``(system, account)`` over claimed items (``stampless._postgres``) makes a second
holder of one account impossible, whatever this code does. Each claim takes a fencing
token from a sequence (the lease token), larger than every earlier one.

Leases are measured on the database's clock (unless a caller passes ``now``), so the
machines' clocks only matter for deadlines. Every change that may make an item
claimable sends a NOTIFY on :data:`CHANNEL`; :meth:`PostgresQueue.listen` lets workers
wake on it instead of polling.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stampless._postgres import check_schema, connect, translated
from stampless.errors import InputError, SystemFailure
from stampless.models import Request, Tier, VerdictKind
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

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import DictRow

# The NOTIFY channel: its payload is the item's system ("" for none).
CHANNEL = "stampless_queue"

# As in the SQLite backend: candidates one claim looks at before giving up.
_CLAIM_SCAN = 200

_CLEAR_LEASE = "lease_token = NULL, lease_owner = NULL, lease_expires = NULL"

# A reviewed item's settlement (WorkQueue.settle), also run by the review store inside a
# decision's transaction (stampless.review.postgres).
SETTLE = """UPDATE items SET state = 'done', verdict = %(verdict)s, sla_met = %(sla_met)s,
    finished_at = %(finished_at)s, updated_at = clock_timestamp()
    WHERE request_id = %(request_id)s AND state = 'review'"""


def item_from_row(row: Mapping[str, Any]) -> QueueItem:
    """The queue item of an ``items`` row."""
    data = {name: row[name] for name in QueueItem.model_fields if name in row}
    data["request"] = Request.model_validate_json(row["request"])
    return QueueItem.model_validate(data)


class _SecondHolder(Exception):
    """The database refused a claim that would have held an account twice."""


def _lost(request_id: str) -> LeaseLost:
    return LeaseLost(f"The lease on {request_id} expired and the item went back to the queue.")


class PostgresQueue(WorkQueue):
    """:class:`WorkQueue` on a PostgreSQL database migrated by ``stampless db migrate``.

    ``accounts`` maps each department system to its account names (robot.toml); they are
    registered in the ``accounts`` table on open, in the order a claim prefers them.
    """

    def __init__(self, url: str, accounts: Mapping[str, Sequence[str]]) -> None:
        self._url = url
        self.accounts = {system: tuple(names) for system, names in accounts.items()}
        self._local = threading.local()
        self._opened: list[psycopg.Connection[DictRow]] = []
        self._opened_lock = threading.Lock()
        pairs = [(s, a) for s, names in self.accounts.items() for a in names]
        try:
            db = self._db()
            check_schema(db)
            with translated("registering the service accounts"):
                db.execute(
                    """INSERT INTO accounts (system, account)
                       SELECT * FROM unnest(%s::text[], %s::text[]) ON CONFLICT DO NOTHING""",
                    ([s for s, _ in pairs], [a for _, a in pairs]),
                )
        except BaseException:
            self.close()  # a command that stops here must not leave a connection open
            raise

    # -- connections -------------------------------------------------------------------

    def _db(self) -> psycopg.Connection[DictRow]:
        # One connection per thread and per process, as in the SQLite backend: a
        # connection serializes its users, and a forked child must not share its parent's.
        key = (os.getpid(), threading.get_ident())
        conn: psycopg.Connection[DictRow] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken or getattr(self._local, "key", None) != key:
            conn = connect(self._url)
            self._local.conn, self._local.key = conn, key
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    @contextmanager
    def _tx(self, action: str) -> Iterator[psycopg.Connection[DictRow]]:
        db = self._db()
        with translated(action), db.transaction():
            yield db

    def close(self) -> None:
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            if not conn.closed:
                conn.close()
        self._local.conn = None

    @staticmethod
    def _notify(db: psycopg.Connection[DictRow], system: str | None) -> None:
        db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, system or ""))

    def _get(self, db: psycopg.Connection[DictRow], request_id: str) -> QueueItem | None:
        row = db.execute("SELECT * FROM items WHERE request_id = %s", (request_id,)).fetchone()
        return None if row is None else item_from_row(row)

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
        with self._tx("queueing a request") as db:
            added = db.execute(
                """INSERT INTO items (request_id, type, tier, priority, system, case_id,
                   base_dir, request, state, received_at, deadline, supersedes, updated_at,
                   content_sha256)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'queued', %s, %s, %s,
                           clock_timestamp(), %s)
                   ON CONFLICT (request_id) DO NOTHING""",
                (
                    request.id,
                    request.type,
                    Tier(tier).value,
                    request.priority,
                    system,
                    request.case_id,
                    str(base_dir),
                    request.model_dump_json(),
                    received_at,
                    deadline,
                    supersedes,
                    content_sha256,
                ),
            ).rowcount
            if added:
                self._notify(db, system)
            item = self._get(db, request.id)
        assert item is not None
        return EnqueueResult(added=added == 1, item=item)

    def _expire(self, db: psycopg.Connection[DictRow], now: datetime | None) -> builtins.list[str]:
        # SKIP LOCKED: a row another claimer is expiring (or its holder renewing) is left
        # to it rather than waited for. One statement, NOTIFY included: a claim's round
        # trips are most of its time.
        rows = db.execute(
            f"""WITH expired AS (
                    UPDATE items SET state = 'queued', {_CLEAR_LEASE}, account = NULL,
                    last_error = COALESCE(last_error, 'The worker holding it stopped.'),
                    updated_at = clock_timestamp()
                    WHERE request_id IN (
                        SELECT request_id FROM items
                        WHERE state = 'claimed'
                          AND lease_expires < COALESCE(%(now)s::timestamptz, now())
                        FOR UPDATE SKIP LOCKED)
                    RETURNING request_id, system)
                SELECT request_id, pg_notify(%(channel)s, COALESCE(system, '')) FROM expired""",  # noqa: S608
            {"now": now, "channel": CHANNEL},
        ).fetchall()
        return [row["request_id"] for row in rows]

    def claim(
        self,
        worker: str,
        *,
        lease_s: float,
        skip_systems: Collection[str] = (),
        due_by: datetime | None = None,
        now: datetime | None = None,
    ) -> Claim | None:
        for _ in range(3):
            try:
                return self._claim(worker, lease_s, skip_systems, due_by, now)
            except _SecondHolder:
                continue
        return None

    def _claim(
        self,
        worker: str,
        lease_s: float,
        skip_systems: Collection[str],
        due_by: datetime | None,
        now: datetime | None,
    ) -> Claim | None:
        import psycopg

        with self._tx("claiming an item") as db:
            self._expire(db, now)
            # Lease times count from the transaction's start on the database's clock
            # (now()), unless the caller gives its own.
            candidates = db.execute(
                """WITH off AS (SELECT system, array_agg(account) AS accounts
                                FROM accounts WHERE disabled GROUP BY system)
                   SELECT i.request_id, i.system, i.deadline,
                          COALESCE(off.accounts, '{}') AS disabled,
                          COALESCE(%(now)s::timestamptz, now()) AS t
                   FROM items i LEFT JOIN off ON off.system = i.system
                   WHERE i.state = 'queued'
                     AND (i.not_before IS NULL
                          OR i.not_before <= COALESCE(%(now)s::timestamptz, now()))
                   ORDER BY i.deadline, i.priority DESC, i.received_at LIMIT %(scan)s""",
                {"now": now, "scan": _CLAIM_SCAN},
            ).fetchall()
            no_free: set[str] = set()
            for row in candidates:
                system: str | None = row["system"]
                not_due = due_by is None or row["deadline"] > due_by
                if system in skip_systems and not_due:
                    continue
                usable: builtins.list[str] = []
                if system is not None and system in self.accounts:
                    usable = [a for a in self.accounts[system] if a not in row["disabled"]]
                    if (not usable and not_due) or system in no_free:
                        continue  # every account refused (waits for an operator) or busy
                locked = db.execute(
                    """SELECT 1 FROM items WHERE request_id = %s AND state = 'queued'
                       FOR UPDATE SKIP LOCKED""",
                    (row["request_id"],),
                ).fetchone()
                if locked is None:
                    continue  # another claimer has it
                try:
                    claimed = self._take(db, row, usable, worker, lease_s)
                except psycopg.errors.UniqueViolation:
                    # The constraint caught a second holder of an account: the whole
                    # transaction is void, so the claim starts again.
                    raise _SecondHolder from None
                if claimed is None:
                    assert system is not None
                    no_free.add(system)
                    continue
                item = item_from_row(claimed)
                assert item.lease_expires is not None
                return Claim(
                    item=item,
                    token=str(claimed["lease_token"]),
                    worker=worker,
                    expires=item.lease_expires,
                )
        return None

    def _take(
        self,
        db: psycopg.Connection[DictRow],
        row: Mapping[str, Any],
        usable: Sequence[str],
        worker: str,
        lease_s: float,
    ) -> dict[str, Any] | None:
        """Claim the locked item ``row`` with one free account of ``usable`` (none when
        empty); None when every usable account is busy."""
        tried: builtins.list[str] = []
        while True:
            account = None
            if usable:
                free = db.execute(
                    """SELECT a.account FROM accounts a
                       WHERE a.system = %(system)s AND a.account = ANY(%(usable)s)
                         AND NOT a.disabled AND a.account <> ALL(%(tried)s)
                         AND NOT EXISTS (SELECT 1 FROM items c WHERE c.state = 'claimed'
                                         AND c.system = a.system AND c.account = a.account)
                       ORDER BY array_position(%(usable)s, a.account)
                       LIMIT 1 FOR UPDATE OF a SKIP LOCKED""",
                    {"system": row["system"], "usable": list(usable), "tried": tried},
                ).fetchone()
                if free is None:
                    return None
                account = free["account"]
            # The NOT EXISTS runs on a fresh snapshot: the account query's may predate a
            # claim committed just before we locked the account's row.
            claimed = db.execute(
                """UPDATE items SET state = 'claimed', attempts = attempts + 1,
                   account = %(account)s, lease_token = nextval('lease_fence'),
                   lease_owner = %(worker)s,
                   lease_expires = %(t)s::timestamptz + make_interval(secs => %(lease_s)s),
                   updated_at = clock_timestamp()
                   WHERE request_id = %(rid)s
                     AND NOT EXISTS (SELECT 1 FROM items c WHERE c.state = 'claimed'
                                     AND c.system = %(system)s AND c.account = %(account)s)
                   RETURNING *""",
                {
                    "account": account,
                    "worker": worker,
                    "t": row["t"],
                    "lease_s": lease_s,
                    "rid": row["request_id"],
                    "system": row["system"],
                },
            ).fetchone()
            if claimed is not None or account is None:
                return claimed
            tried.append(account)

    @staticmethod
    def _token(claim: Claim) -> int:
        try:
            return int(claim.token)
        except ValueError:
            raise _lost(claim.request_id) from None

    def _finish(
        self, claim: Claim, action: str, assignments: str, args: Sequence[Any]
    ) -> QueueItem:
        """Apply ``assignments`` to the item the claim holds, freeing its account."""
        with self._tx(action) as db:
            row = db.execute(
                # Only constant fragments are formatted in; values are parameters.
                f"""UPDATE items SET {assignments}, {_CLEAR_LEASE},
                    updated_at = clock_timestamp()
                    WHERE request_id = %s AND state = 'claimed' AND lease_token = %s
                    RETURNING *""",  # noqa: S608
                (*args, claim.request_id, self._token(claim)),
            ).fetchone()
            if row is None:
                raise _lost(claim.request_id)
            self._notify(db, claim.item.system)
        return item_from_row(row)

    def renew(self, claim: Claim, *, lease_s: float) -> Claim:
        with self._tx("renewing a lease") as db:
            row = db.execute(
                """UPDATE items SET lease_expires = clock_timestamp() + make_interval(secs => %s),
                   updated_at = clock_timestamp()
                   WHERE request_id = %s AND state = 'claimed' AND lease_token = %s
                   RETURNING lease_expires""",
                (lease_s, claim.request_id, self._token(claim)),
            ).fetchone()
        if row is None:
            raise _lost(claim.request_id)
        return claim.model_copy(update={"expires": row["lease_expires"]})

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
        return self._finish(
            claim,
            "finishing an item",
            """state = %s, verdict = %s, sla_met = %s, finished_at = %s,
               last_error = COALESCE(%s, last_error), not_before = NULL""",
            (
                state.value,
                None if verdict is None else VerdictKind(verdict).value,
                sla_met,
                finished_at,
                error,
            ),
        )

    def fail(self, claim: Claim, *, error: str, retry_at: datetime) -> QueueItem:
        return self._finish(
            claim,
            "giving an item back for a retry",
            "state = 'queued', last_error = %s, not_before = %s, account = NULL",
            (error, retry_at),
        )

    def release(self, claim: Claim, *, retry_at: datetime | None = None) -> None:
        try:
            self._finish(
                claim,
                "releasing an item",
                """state = 'queued', attempts = GREATEST(attempts - 1, 0), not_before = %s,
                   account = NULL""",
                (retry_at,),
            )
        except LeaseLost:
            return

    def disable_account(self, system: str, account: str, *, reason: str) -> None:
        with self._tx("disabling an account") as db:
            db.execute(
                """INSERT INTO accounts AS a (system, account, disabled, reason, changed_at)
                   VALUES (%s, %s, true, %s, clock_timestamp())
                   ON CONFLICT (system, account) DO UPDATE SET
                   reason = CASE WHEN a.disabled THEN a.reason ELSE excluded.reason END,
                   changed_at = CASE WHEN a.disabled THEN a.changed_at
                                ELSE excluded.changed_at END,
                   disabled = true""",
                (system, account, reason),
            )

    def enable_account(self, system: str, account: str) -> bool:
        with self._tx("enabling an account") as db:
            changed = db.execute(
                """UPDATE accounts SET disabled = false, reason = NULL,
                   changed_at = clock_timestamp()
                   WHERE system = %s AND account = %s AND disabled""",
                (system, account),
            ).rowcount
            if changed:
                self._notify(db, system)
        return changed == 1

    def account_states(self) -> builtins.list[AccountState]:
        with self._tx("listing the accounts") as db:
            # Rows only registered by another machine's robot.toml and never disabled are
            # that machine's business, as in the SQLite backend.
            rows = {(r["system"], r["account"]): r for r in db.execute("SELECT * FROM accounts")}
            held = {
                (r["system"], r["account"]): r["request_id"]
                for r in db.execute(
                    """SELECT system, account, request_id FROM items
                       WHERE state = 'claimed' AND account IS NOT NULL"""
                )
            }
        names = {(s, a) for s, accounts in self.accounts.items() for a in accounts}
        names |= {key for key, row in rows.items() if row["changed_at"] is not None}
        out = []
        for system, account in sorted(names):
            row = rows.get((system, account))
            out.append(
                AccountState(
                    system=system,
                    account=account,
                    usable=row is None or not row["disabled"],
                    reason=None if row is None else row["reason"],
                    changed_at=None if row is None else row["changed_at"],
                    held_by=held.get((system, account)),
                )
            )
        return out

    def get(self, request_id: str) -> QueueItem | None:
        with translated("reading an item"):
            return self._get(self._db(), request_id)

    def list(
        self,
        *,
        states: Iterable[ItemState] | None = None,
        type: str | None = None,
        case_id: str | None = None,
        limit: int = 1000,
    ) -> builtins.list[QueueItem]:
        with translated("listing items"):
            rows = (
                self._db()
                .execute(
                    """SELECT * FROM items
                   WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s))
                     AND (%(type)s::text IS NULL OR type = %(type)s)
                     AND (%(case)s::text IS NULL OR case_id = %(case)s)
                   ORDER BY overdue DESC, deadline, priority DESC LIMIT %(limit)s""",
                    {
                        "states": None if states is None else [ItemState(s).value for s in states],
                        "type": type,
                        "case": case_id,
                        "limit": limit,
                    },
                )
                .fetchall()
            )
        return [item_from_row(r) for r in rows]

    def counts(self) -> dict[ItemState, int]:
        out = dict.fromkeys(ItemState, 0)
        with translated("counting items"):
            for r in self._db().execute("SELECT state, COUNT(*) AS n FROM items GROUP BY state"):
                out[ItemState(r["state"])] = r["n"]
        return out

    def tally(self) -> builtins.list[Tally]:
        with translated("counting items"):
            rows = (
                self._db()
                .execute(
                    """SELECT state, tier, COUNT(*) AS items,
                          COUNT(*) FILTER (WHERE sla_met) AS sla_met,
                          COUNT(*) FILTER (WHERE NOT sla_met) AS sla_missed
                   FROM items GROUP BY state, tier ORDER BY state, tier"""
                )
                .fetchall()
            )
        return [Tally.model_validate(r) for r in rows]

    def sweep_leases(self, *, now: datetime | None = None) -> builtins.list[str]:
        with self._tx("sweeping expired leases") as db:
            return self._expire(db, now)

    def mark_overdue(self, *, now: datetime | None = None) -> builtins.list[str]:
        with self._tx("marking overdue items") as db:
            rows = db.execute(
                """UPDATE items SET overdue = true, updated_at = clock_timestamp()
                   WHERE NOT overdue AND deadline < COALESCE(%s::timestamptz, now())
                     AND state IN ('queued', 'claimed', 'review')
                   RETURNING request_id""",
                (now,),
            ).fetchall()
        return [r["request_id"] for r in rows]

    def settle(
        self, request_id: str, *, verdict: VerdictKind, sla_met: bool | None, finished_at: datetime
    ) -> bool:
        with self._tx("settling a reviewed item") as db:
            changed = db.execute(
                SETTLE,
                {
                    "request_id": request_id,
                    "verdict": VerdictKind(verdict).value,
                    "sla_met": sla_met,
                    "finished_at": finished_at,
                },
            ).rowcount
        return changed == 1

    def retry(self, request_id: str) -> QueueItem:
        with self._tx("retrying an item") as db:
            row = db.execute(
                "SELECT state, system FROM items WHERE request_id = %s FOR UPDATE", (request_id,)
            ).fetchone()
            if row is None:
                raise InputError(f"No queued request {request_id}; check the id with 'queue ls'.")
            if row["state"] != "queued":
                raise InputError(
                    f"{request_id} is {row['state']}, not waiting; a finished verdict is "
                    "never changed, so submit a re-check under a new id instead."
                )
            db.execute(
                """UPDATE items SET not_before = NULL, updated_at = clock_timestamp()
                   WHERE request_id = %s""",
                (request_id,),
            )
            self._notify(db, row["system"])
            item = self._get(db, request_id)
        assert item is not None
        return item

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from a thread of its own) on every NOTIFY of the queue.

        A lost connection (a database restart, a network cut) is opened again after a
        second; ``wake`` is called then too, since notifications sent meanwhile are lost.
        """
        conn = connect(self._url)  # the first one here, so a wrong URL fails the caller
        stop = threading.Event()

        def run() -> None:
            import psycopg

            listening: psycopg.Connection[DictRow] | None = conn
            while not stop.is_set():
                try:
                    if listening is None:
                        listening = connect(self._url)
                    listening.execute(f"LISTEN {CHANNEL}")
                    while not stop.is_set():
                        # The timeout only bounds how long stopping takes.
                        for _ in listening.notifies(timeout=0.5):
                            wake()
                except (psycopg.Error, SystemFailure):
                    if listening is not None:
                        listening.close()
                    listening = None
                    if not stop.is_set():
                        wake()  # what was sent meanwhile is lost: claim once to see
                        stop.wait(1.0)
            if listening is not None:
                listening.close()

        thread = threading.Thread(target=run, name="queue-listen", daemon=True)
        thread.start()

        def cancel() -> None:
            stop.set()
            thread.join(timeout=5)

        return cancel
