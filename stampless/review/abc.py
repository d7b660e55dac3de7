"""The review store's interface: what a backend must do, and the logic every backend shares.

The manual-review queue holds the items a person must decide. One row per request id
(idempotent). An item is *pending* until a reviewer decides it; opening it in the
console *takes* it for a few minutes, so two reviewers never decide the same item. The
decision becomes a final :class:`~stampless.models.Verdict` written to the outbox like
any other, settles the work queue's item (state ``review`` -> ``done``), adds an audit
entry ``reviewed`` naming the reviewer, and seals a small evidence bundle
``<evidence_dir>/<id>.review/`` beside the original one (sealed bundles are immutable,
so the decision never edits the robot's bundle; the review bundle names the original
manifest's SHA-256 instead). "Ask for more" records a note, keeps the item pending and
releases the claim.

Backends: ``review/sqlite.py`` (the embedded default, table ``review_items`` in
``<var_dir>/queue.db``) and ``review/postgres.py`` (``[store] backend = "postgres"``,
the same table in the deployment's shared database). On both the review items share
the database with the work queue, so a decision, its outbox file and the settlement of
the queue's item are one transaction: nothing polls the outbox to learn of a decision.
The public methods below are written once, here, over a few primitives a backend
provides (:meth:`ReviewStore._transaction`, :meth:`ReviewStore._queue_item`); their SQL
is written once too, in psycopg's ``%(name)s`` style that the SQLite backend translates.
Every backend passes the contract tests in ``tests/test_review_store.py``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from loguru import logger
from pydantic import BaseModel

from stampless._version import __version__
from stampless.errors import InputError, StamplessError
from stampless.models import Request, Tier, Verdict, VerdictKind, utcnow

if TYPE_CHECKING:
    from stampless.audit import AuditLog
    from stampless.config import Config
    from stampless.queue.abc import QueueItem
    from stampless.signing import Signer

FINAL_DECISIONS = (VerdictKind.verified, VerdictKind.mismatch, VerdictKind.not_found)
MAX_REASON = 2000

# The review items' columns: (name, SQL type, constraint). "time" is each backend's own
# type for an instant (epoch seconds in SQLite, timestamptz in PostgreSQL).
COLUMNS = (
    ("request_id", "text", "PRIMARY KEY"),
    ("type", "text", "NOT NULL"),
    ("tier", "text", "NOT NULL"),
    ("verdict", "text", "NOT NULL"),
    ("request", "text", "NOT NULL"),
    ("base_dir", "text", ""),
    ("evidence", "text", ""),
    ("reason", "text", "NOT NULL"),
    ("deadline", "time", ""),
    ("received_at", "time", "NOT NULL"),
    ("added_at", "time", "NOT NULL"),
    ("status", "text", "NOT NULL DEFAULT 'pending'"),
    ("claimed_by", "text", ""),
    ("claim_until", "time", ""),
    ("notes", "text", "NOT NULL DEFAULT '[]'"),
    ("decision", "text", ""),
    ("decided_by", "text", ""),
    ("decided_at", "time", ""),
    ("final", "text", ""),
)


def create_table(name: str, time_type: str, *, if_not_exists: bool = False) -> str:
    """The ``CREATE TABLE`` statement of the review items, with ``time_type`` for instants."""
    columns = ",\n    ".join(
        f"{column} {time_type if kind == 'time' else kind} {rule}".rstrip()
        for column, kind, rule in COLUMNS
    )
    exists = "IF NOT EXISTS " if if_not_exists else ""
    return f"CREATE TABLE {exists}{name} (\n    {columns}\n);\n"


class ReviewNote(BaseModel):
    """A reviewer's request for more information, kept on the item."""

    at: datetime
    reviewer: str
    text: str


class ReviewItem(BaseModel):
    """One request waiting for (or decided by) a person."""

    request_id: str
    type: str
    tier: Tier
    verdict: Verdict
    request: Request
    base_dir: Path | None
    evidence: str | None
    reason: str
    deadline: datetime | None
    received_at: datetime
    added_at: datetime
    status: str
    claimed_by: str | None
    claim_until: datetime | None
    notes: list[ReviewNote]
    decision: VerdictKind | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    final: Verdict | None = None

    def overdue(self, now: datetime | None = None) -> bool:
        """True when the deadline has passed and the item is still pending."""
        now = now or utcnow()
        return self.status == "pending" and self.deadline is not None and self.deadline < now

    def seconds_left(self, now: datetime | None = None) -> float | None:
        """Seconds until the deadline (negative when overdue), None without a deadline."""
        if self.deadline is None:
            return None
        return (self.deadline - (now or utcnow())).total_seconds()

    def held_by(self, now: datetime | None = None) -> str | None:
        """The reviewer whose claim on the item has not expired, if any."""
        if self.claimed_by and self.claim_until and self.claim_until > (now or utcnow()):
            return self.claimed_by
        return None


class ReviewConflict(StamplessError):
    """Another reviewer holds the item, or it was already decided."""

    exit_code = InputError.exit_code


def _instant(value: Any) -> datetime | None:
    # SQLite keeps epoch seconds, PostgreSQL timestamptz: both read back as aware UTC.
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value, tz=UTC)


def _item(row: Mapping[str, Any]) -> ReviewItem:
    data = dict(row)
    for name, kind, _ in COLUMNS:
        if kind == "time":
            data[name] = _instant(row[name])
    data["verdict"] = Verdict.model_validate_json(row["verdict"])
    data["request"] = Request.model_validate_json(row["request"])
    data["notes"] = json.loads(row["notes"])
    data["final"] = None if row["final"] is None else Verdict.model_validate_json(row["final"])
    return ReviewItem.model_validate(data)


def _written(text: str, what: str, missing: str) -> str:
    """A reviewer's text, stripped; ``missing`` says what to write when there is none."""
    text = text.strip()
    if not text:
        raise InputError(missing)
    if len(text) > MAX_REASON:
        raise InputError(f"Shorten {what} to at most {MAX_REASON} characters.")
    return text


class Tx(ABC):
    """One transaction of a backend: statements in psycopg's ``%(name)s`` style."""

    @abstractmethod
    def execute(self, sql: str, params: Mapping[str, Any]) -> int:
        """Run one statement; the number of rows it changed."""

    @abstractmethod
    def rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run one query; its rows, by column name."""

    def row(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None


class ReviewStore(ABC):
    """The review queue; every method is safe to call from many threads and processes.

    Open the deployment's store with :meth:`from_config` (``[store] backend``).
    """

    # The items' table, and what locks a row read in a write transaction (SQLite's
    # write transactions lock the whole file, so it needs nothing).
    table: ClassVar[str] = "review_items"
    for_update: ClassVar[str] = ""
    # The queue's own statement that settles a ``review`` item (WorkQueue.settle).
    settle_sql: ClassVar[str]

    @classmethod
    def from_config(cls, config: Config) -> ReviewStore:
        """The deployment's store: PostgreSQL with ``[store] backend = "postgres"``,
        else the queue's file, ``<var_dir>/queue.db`` (created when missing; the items
        of an older ``<var_dir>/review.db`` are moved into it)."""
        if config.store.backend == "postgres":
            from stampless._postgres import database_url
            from stampless.review.postgres import PostgresReviewStore

            return PostgresReviewStore(database_url(config))
        from stampless.review.sqlite import SqliteReviewStore

        return SqliteReviewStore(
            SqliteReviewStore.path_for(config),
            legacy_path=SqliteReviewStore.legacy_path_for(config),
        )

    @classmethod
    def existing(cls, config: Config) -> ReviewStore | None:
        """The deployment's store, or None when an embedded one was never created (for
        readers that must not create it)."""
        if config.store.backend == "sqlite":
            from stampless.review.sqlite import SqliteReviewStore

            paths = (SqliteReviewStore.path_for(config), SqliteReviewStore.legacy_path_for(config))
            if not any(path.exists() for path in paths):
                return None
        return cls.from_config(config)

    # -- what a backend provides ---------------------------------------------------------

    @abstractmethod
    def _transaction(self, *, write: bool = True) -> AbstractContextManager[Tx]:
        """A transaction; with ``write``, one that serializes with every other writer from
        its first statement, so check-then-update is atomic. Committed on exit, rolled
        back when the block raises."""

    @abstractmethod
    def _queue_item(self, row: Mapping[str, Any]) -> QueueItem:
        """The work queue's item of one of its ``items`` rows, as the queue reads it."""

    def _settle_queue(self, tx: Tx, final: Verdict) -> bool:
        """Settle the work queue's ``review`` item for ``final`` (a reviewer's decision)
        inside ``tx``: the queue shares the store's database. True if it changed."""
        from stampless.queue.abc import settlement

        row = tx.row(
            f"SELECT * FROM items WHERE request_id = %(id)s AND state = 'review'{self.for_update}",  # noqa: S608
            {"id": final.request_id},
        )
        if row is None:
            return False
        outcome = settlement(final, self._queue_item(row))
        return (
            tx.execute(self.settle_sql, {"request_id": final.request_id, **outcome.model_dump()})
            == 1
        )

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release the backend's resources."""

    # -- adding and reading ------------------------------------------------------------

    def add(
        self,
        verdict: Verdict,
        *,
        request: Request,
        base_dir: Path | None = None,
        reason: str,
    ) -> bool:
        """Queue a needs_review verdict for a person; True if added, False if already there."""
        if verdict.request_id != request.id:
            raise InputError(
                f"The verdict is for {verdict.request_id!r} but the request is {request.id!r}; "
                "pass the request the verdict was made for."
            )
        row = {
            "request_id": request.id,
            "type": verdict.type,
            "tier": Tier(verdict.tier).value,
            "verdict": verdict.model_dump_json(),
            "request": request.model_dump_json(),
            "base_dir": None if base_dir is None else str(base_dir),
            "evidence": verdict.evidence,
            "reason": reason,
            "deadline": verdict.deadline,
            "received_at": verdict.received_at,
            "added_at": utcnow(),
        }
        with self._transaction() as tx:
            added = tx.execute(
                f"INSERT INTO {self.table} ({', '.join(row)})"  # noqa: S608 - names are ours
                f" VALUES ({', '.join(f'%({name})s' for name in row)})"
                " ON CONFLICT (request_id) DO NOTHING",
                row,
            )
        if added:
            logger.info("review: queued {} ({})", request.id, reason)
        return added == 1

    def get(self, request_id: str) -> ReviewItem | None:
        """The item for a request id, pending or decided; None if never queued."""
        with self._transaction(write=False) as tx:
            row = tx.row(
                f"SELECT * FROM {self.table} WHERE request_id = %(id)s",  # noqa: S608
                {"id": request_id},
            )
        return None if row is None else _item(row)

    def pending(self, now: datetime | None = None) -> list[ReviewItem]:
        """Items still to decide: overdue first, then by deadline (none last), then age."""
        with self._transaction(write=False) as tx:
            rows = tx.rows(
                f"SELECT * FROM {self.table} WHERE status = 'pending' ORDER BY"  # noqa: S608
                " CASE WHEN deadline IS NOT NULL AND deadline < %(now)s THEN 0 ELSE 1 END,"
                " deadline IS NULL, deadline, added_at",
                {"now": now or utcnow()},
            )
        return [_item(r) for r in rows]

    def decided(self, since: datetime | None = None) -> list[ReviewItem]:
        """Decided items, oldest decision first (for the SLA figures)."""
        with self._transaction(write=False) as tx:
            rows = tx.rows(
                f"SELECT * FROM {self.table} WHERE status = 'decided'"  # noqa: S608
                " AND decided_at >= %(since)s ORDER BY decided_at",
                {"since": since or datetime.fromtimestamp(0, tz=UTC)},
            )
        return [_item(r) for r in rows]

    # -- claims ------------------------------------------------------------------------

    def take(self, request_id: str, reviewer: str, minutes: float) -> bool:
        """Claim a pending item for ``minutes``; False if someone else holds it (atomic).

        Taking an item you already hold extends your claim.
        """
        now = utcnow()
        with self._transaction() as tx:
            changed = tx.execute(
                f"UPDATE {self.table} SET claimed_by = %(who)s, claim_until = %(until)s"  # noqa: S608
                " WHERE request_id = %(id)s AND status = 'pending'"
                " AND (claimed_by IS NULL OR claimed_by = %(who)s OR claim_until IS NULL"
                "      OR claim_until <= %(now)s)",
                {
                    "who": reviewer,
                    "until": now + timedelta(minutes=minutes),
                    "id": request_id,
                    "now": now,
                },
            )
        return changed == 1

    def release(self, request_id: str, reviewer: str) -> None:
        """Give up a claim (only the holder's claim is released)."""
        with self._transaction() as tx:
            tx.execute(
                f"UPDATE {self.table} SET claimed_by = NULL, claim_until = NULL"  # noqa: S608
                " WHERE request_id = %(id)s AND claimed_by = %(who)s",
                {"id": request_id, "who": reviewer},
            )

    def _locked_for(self, tx: Tx, request_id: str, reviewer: str) -> ReviewItem:
        row = tx.row(
            f"SELECT * FROM {self.table} WHERE request_id = %(id)s{self.for_update}",  # noqa: S608
            {"id": request_id},
        )
        if row is None:
            raise InputError(f"No review item {request_id!r}; check the id in the queue.")
        item = _item(row)
        if item.status != "pending":
            raise ReviewConflict(
                f"{request_id} was already decided by {item.decided_by}; reload the queue."
            )
        holder = item.held_by()
        if holder is not None and holder != reviewer:
            raise ReviewConflict(f"{request_id} is being reviewed by {holder}; pick another item.")
        return item

    # -- outcomes ----------------------------------------------------------------------

    def ask_more(self, request_id: str, reviewer: str, note: str) -> ReviewItem:
        """Record that more information is needed; the item stays pending, claim released."""
        note = _written(note, "the note", "Give a reason: say what information is missing.")
        with self._transaction() as tx:
            item = self._locked_for(tx, request_id, reviewer)
            notes = [*item.notes, ReviewNote(at=utcnow(), reviewer=reviewer, text=note)]
            tx.execute(
                f"UPDATE {self.table} SET notes = %(notes)s, claimed_by = NULL,"  # noqa: S608
                " claim_until = NULL WHERE request_id = %(id)s",
                {"notes": json.dumps([n.model_dump(mode="json") for n in notes]), "id": request_id},
            )
        result = self.get(request_id)
        assert result is not None
        return result

    def decide(
        self,
        request_id: str,
        reviewer: str,
        decision: VerdictKind,
        reason: str,
        *,
        outbox_dir: Path,
        audit: AuditLog | None = None,
        evidence_dir: Path | None = None,
        signer: Signer | None = None,
    ) -> Verdict:
        """Decide an item: write the final verdict to the outbox, record who decided and
        settle the work queue's item, all in one transaction.

        ``decision`` is verified, mismatch or not_found; ``reason`` is required. The
        reviewer must hold the item or nobody may (a claim by someone else raises
        :class:`ReviewConflict`, as does an item already decided). The queue's item
        (state ``review``) becomes ``done`` in the decision's transaction: the queue
        shares the store's database on every backend. ``audit`` is a
        :class:`stampless.audit.AuditLog`. ``signer`` signs the outbox verdict, and with
        ``evidence_dir`` the decision is also sealed as the bundle
        ``<evidence_dir>/<id>.review/``.

        The outbox file is written inside the transaction, before the commit: a crash
        between the two leaves the file (final, maybe delivered already) and the item
        still pending. Deciding the item again then finds its own interrupted decision
        in the outbox and records that one, as it stands, instead of polling for it;
        when the new decision differs, the recorded one is the delivered one and
        :class:`ReviewConflict` says so after it is recorded.
        """
        decision = VerdictKind(decision)
        if decision not in FINAL_DECISIONS:
            raise InputError("A decision is one of verified, mismatch or not_found.")
        reason = _written(
            reason, "the reason", "Give a reason for the decision; it goes into the verdict."
        )
        from stampless.outbox import publish
        from stampless.review.store import seal_review

        with self._transaction() as tx:
            item = self._locked_for(tx, request_id, reviewer)
            now = utcnow()
            original = item.verdict
            final = original.model_copy(
                update={
                    "verdict": decision,
                    "reasons": [*original.reasons, _decision_reason(reviewer, decision, reason)],
                    "finished_at": now,
                    "sla_met": None if item.deadline is None else now <= item.deadline,
                    "decided_by": reviewer,
                    "stampless_version": __version__,
                }
            )
            final = Verdict.model_validate(final.model_dump())
            # The outbox write is atomic and refuses to overwrite; only if it succeeds
            # (or finds this item's interrupted decision) is the item marked decided
            # (the transaction rolls back otherwise).
            published = publish(outbox_dir, final, signer=signer)
            conflict = published.conflict
            if conflict is not None and not _decision_of(published.verdict, original):
                raise conflict
            interrupted = conflict is not None
            if interrupted:
                final = published.verdict.model_copy(update={"signature": None})
                reason = _reason_in(final)
            decided_by = final.decided_by or reviewer
            tx.execute(
                f"UPDATE {self.table} SET status = 'decided', decision = %(decision)s,"  # noqa: S608
                " decided_by = %(who)s, decided_at = %(at)s, final = %(final)s,"
                " claimed_by = NULL, claim_until = NULL WHERE request_id = %(id)s",
                {
                    "decision": final.verdict.value,
                    "who": decided_by,
                    "at": final.finished_at,
                    "final": final.model_dump_json(),
                    "id": request_id,
                },
            )
            settled = self._settle_queue(tx, final)
        logger.info(
            "review: {} decided {} by {}{}{}",
            request_id,
            final.verdict.value,
            decided_by,
            " (recorded from the outbox after an interruption)" if interrupted else "",
            "; its queue item is done" if settled else "",
        )
        if audit is not None:
            audit.append(
                "reviewed",
                request_id=request_id,
                actor=decided_by,
                decision=final.verdict.value,
                reason=reason,
                manifest_sha256=original.manifest_sha256,
            )
        if evidence_dir is not None and signer is not None:
            seal_review(evidence_dir, item, final, reason=reason, signer=signer)
        if interrupted and (final.verdict is not decision or decided_by != reviewer):
            raise ReviewConflict(
                f"{request_id} was already decided {final.verdict.value} by "
                f"{decided_by}, and that verdict was delivered before an interruption; "
                "it stands. Reload the queue."
            )
        return final


def _decision_reason(reviewer: str, decision: VerdictKind, reason: str) -> str:
    return f"reviewed by {reviewer}: {decision.value}: {reason}"


def _reason_in(final: Verdict) -> str:
    """The reviewer's reason written into a decided verdict (its last reason)."""
    prefix = _decision_reason(final.decided_by or "", final.verdict, "")
    last = final.reasons[-1] if final.reasons else ""
    return last.removeprefix(prefix) or last


def _decision_of(found: Verdict, original: Verdict) -> bool:
    """True when ``found`` (in the outbox) is a reviewer's decision on ``original``: only
    :meth:`ReviewStore.decide` writes one, and on a pending item only an interrupted
    decide (file written, transaction lost) can have."""
    return (
        found.decided_by is not None
        and found.request_id == original.request_id
        and found.received_at == original.received_at
        and found.request_sha256 == original.request_sha256
        and found.manifest_sha256 == original.manifest_sha256
    )
