"""The manual-review queue: items a person must decide, kept in SQLite (WAL).

One row per request id (idempotent). An item is *pending* until a reviewer decides it;
opening it in the console *takes* it for a few minutes, so two reviewers never decide
the same item. The decision becomes a final :class:`~stampless.models.Verdict` written
to the outbox like any other, an audit entry ``reviewed`` naming the reviewer, and a
small sealed evidence bundle ``<evidence_dir>/<id>.review/`` beside the original one
(sealed bundles are immutable, so the decision never edits the robot's bundle; the
review bundle names the original manifest's SHA-256 instead).

"Ask for more" records a note, keeps the item pending and releases the claim.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger
from pydantic import BaseModel

from stampless._sqlite import connection, prepare
from stampless._version import __version__
from stampless.errors import InputError, StamplessError
from stampless.models import Request, Tier, Verdict, VerdictKind, utcnow

if TYPE_CHECKING:
    from stampless.audit import AuditLog
    from stampless.config import Config
    from stampless.signing import Signer

FINAL_DECISIONS = (VerdictKind.verified, VerdictKind.mismatch, VerdictKind.not_found)
REVIEW_SUFFIX = ".review"
MAX_REASON = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    request_id   TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    tier         TEXT NOT NULL,
    verdict      TEXT NOT NULL,
    request      TEXT NOT NULL,
    base_dir     TEXT,
    evidence     TEXT,
    reason       TEXT NOT NULL,
    deadline     REAL,
    received_at  REAL NOT NULL,
    added_at     REAL NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending',
    claimed_by   TEXT,
    claim_until  REAL,
    notes        TEXT NOT NULL DEFAULT '[]',
    decision     TEXT,
    decided_by   TEXT,
    decided_at   REAL,
    final        TEXT
);
CREATE INDEX IF NOT EXISTS items_pending ON items (status, deadline);
"""


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


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _dt(value: float | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, tz=utcnow().tzinfo)


class ReviewStore:
    """The review queue in one SQLite file; safe to share between processes."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        prepare(self.db_path, _SCHEMA)

    @staticmethod
    def path_for(config: Config) -> Path:
        """Where the deployment's store lives: ``<var_dir>/review.db``."""
        return config.var_dir / "review.db"

    @classmethod
    def from_config(cls, config: Config) -> ReviewStore:
        """The deployment's store, at :meth:`path_for` (created when missing)."""
        return cls(cls.path_for(config))

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        # A short-lived connection per call: the console serves from threads and the
        # workers from other processes, and SQLite connections must not cross threads.
        return connection(self.db_path)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front, so check-then-update is atomic."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- adding and reading ---------------------------------------------------------

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
        with self._write() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO items (request_id, type, tier, verdict, request, base_dir,"
                " evidence, reason, deadline, received_at, added_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    request.id,
                    verdict.type,
                    Tier(verdict.tier).value,
                    verdict.model_dump_json(),
                    request.model_dump_json(),
                    None if base_dir is None else str(base_dir),
                    verdict.evidence,
                    reason,
                    _ts(verdict.deadline),
                    verdict.received_at.timestamp(),
                    utcnow().timestamp(),
                ),
            )
            added = cur.rowcount == 1
        if added:
            logger.info("review: queued {} ({})", request.id, reason)
        return added

    def _item(self, row: sqlite3.Row) -> ReviewItem:
        final = row["final"]
        return ReviewItem(
            request_id=row["request_id"],
            type=row["type"],
            tier=Tier(row["tier"]),
            verdict=Verdict.model_validate_json(row["verdict"]),
            request=Request.model_validate_json(row["request"]),
            base_dir=None if row["base_dir"] is None else Path(row["base_dir"]),
            evidence=row["evidence"],
            reason=row["reason"],
            deadline=_dt(row["deadline"]),
            received_at=_dt(row["received_at"]),  # type: ignore[arg-type]
            added_at=_dt(row["added_at"]),  # type: ignore[arg-type]
            status=row["status"],
            claimed_by=row["claimed_by"],
            claim_until=_dt(row["claim_until"]),
            notes=[ReviewNote.model_validate(n) for n in json.loads(row["notes"])],
            decision=None if row["decision"] is None else VerdictKind(row["decision"]),
            decided_by=row["decided_by"],
            decided_at=_dt(row["decided_at"]),
            final=None if final is None else Verdict.model_validate_json(final),
        )

    def get(self, request_id: str) -> ReviewItem | None:
        """The item for a request id, pending or decided; None if never queued."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM items WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else self._item(row)

    def pending(self, now: datetime | None = None) -> list[ReviewItem]:
        """Items still to decide: overdue first, then by deadline (none last), then age."""
        now_ts = (now or utcnow()).timestamp()
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM items WHERE status = 'pending' ORDER BY"
                " CASE WHEN deadline IS NOT NULL AND deadline < ? THEN 0 ELSE 1 END,"
                " deadline IS NULL, deadline, added_at",
                (now_ts,),
            ).fetchall()
        return [self._item(r) for r in rows]

    def decided(self, since: datetime | None = None) -> list[ReviewItem]:
        """Decided items, oldest decision first (for the SLA figures)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM items WHERE status = 'decided' AND decided_at >= ?"
                " ORDER BY decided_at",
                (_ts(since) or 0.0,),
            ).fetchall()
        return [self._item(r) for r in rows]

    # -- claims -----------------------------------------------------------------------

    def take(self, request_id: str, reviewer: str, minutes: float) -> bool:
        """Claim a pending item for ``minutes``; False if someone else holds it (atomic).

        Taking an item you already hold extends your claim.
        """
        now = utcnow()
        with self._write() as db:
            cur = db.execute(
                "UPDATE items SET claimed_by = ?, claim_until = ?"
                " WHERE request_id = ? AND status = 'pending'"
                " AND (claimed_by IS NULL OR claimed_by = ? OR claim_until IS NULL"
                "      OR claim_until <= ?)",
                (
                    reviewer,
                    (now + timedelta(minutes=minutes)).timestamp(),
                    request_id,
                    reviewer,
                    now.timestamp(),
                ),
            )
            return cur.rowcount == 1

    def release(self, request_id: str, reviewer: str) -> None:
        """Give up a claim (only the holder's claim is released)."""
        with self._write() as db:
            db.execute(
                "UPDATE items SET claimed_by = NULL, claim_until = NULL"
                " WHERE request_id = ? AND claimed_by = ?",
                (request_id, reviewer),
            )

    def _locked_for(self, db: sqlite3.Connection, request_id: str, reviewer: str) -> ReviewItem:
        row = db.execute("SELECT * FROM items WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise InputError(f"No review item {request_id!r}; check the id in the queue.")
        item = self._item(row)
        if item.status != "pending":
            raise ReviewConflict(
                f"{request_id} was already decided by {item.decided_by}; reload the queue."
            )
        holder = item.held_by()
        if holder is not None and holder != reviewer:
            raise ReviewConflict(f"{request_id} is being reviewed by {holder}; pick another item.")
        return item

    # -- outcomes ---------------------------------------------------------------------

    def ask_more(self, request_id: str, reviewer: str, note: str) -> ReviewItem:
        """Record that more information is needed; the item stays pending, claim released."""
        note = note.strip()
        if not note:
            raise InputError("Give a reason: say what information is missing.")
        if len(note) > MAX_REASON:
            raise InputError(f"Shorten the note to at most {MAX_REASON} characters.")
        with self._write() as db:
            item = self._locked_for(db, request_id, reviewer)
            notes = [*item.notes, ReviewNote(at=utcnow(), reviewer=reviewer, text=note)]
            db.execute(
                "UPDATE items SET notes = ?, claimed_by = NULL, claim_until = NULL"
                " WHERE request_id = ?",
                (json.dumps([n.model_dump(mode="json") for n in notes]), request_id),
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
        """Decide an item: write the final verdict to the outbox and record who decided.

        ``decision`` is verified, mismatch or not_found; ``reason`` is required. The
        reviewer must hold the item or nobody may (a claim by someone else raises
        :class:`ReviewConflict`, as does an item already decided). ``audit`` is a
        :class:`stampless.audit.AuditLog`. ``signer`` signs the outbox verdict, and with
        ``evidence_dir`` the decision is also sealed as the bundle ``<evidence_dir>/<id>.review/``.
        """
        decision = VerdictKind(decision)
        if decision not in FINAL_DECISIONS:
            raise InputError("A decision is one of verified, mismatch or not_found.")
        reason = reason.strip()
        if not reason:
            raise InputError("Give a reason for the decision; it goes into the verdict.")
        if len(reason) > MAX_REASON:
            raise InputError(f"Shorten the reason to at most {MAX_REASON} characters.")
        from stampless.outbox import write_verdict

        with self._write() as db:
            item = self._locked_for(db, request_id, reviewer)
            now = utcnow()
            original = item.verdict
            final = original.model_copy(
                update={
                    "verdict": decision,
                    "reasons": [
                        *original.reasons,
                        f"reviewed by {reviewer}: {decision.value}: {reason}",
                    ],
                    "finished_at": now,
                    "sla_met": None if item.deadline is None else now <= item.deadline,
                    "decided_by": reviewer,
                    "stampless_version": __version__,
                }
            )
            final = Verdict.model_validate(final.model_dump())
            # The outbox write is atomic and refuses to overwrite; only if it succeeds
            # is the item marked decided (the transaction rolls back otherwise).
            write_verdict(outbox_dir, final, signer=signer)
            db.execute(
                "UPDATE items SET status = 'decided', decision = ?, decided_by = ?,"
                " decided_at = ?, final = ?, claimed_by = NULL, claim_until = NULL"
                " WHERE request_id = ?",
                (decision.value, reviewer, now.timestamp(), final.model_dump_json(), request_id),
            )
        logger.info("review: {} decided {} by {}", request_id, decision.value, reviewer)
        if audit is not None:
            audit.append(
                "reviewed",
                request_id=request_id,
                actor=reviewer,
                decision=decision.value,
                reason=reason,
                manifest_sha256=original.manifest_sha256,
            )
        if evidence_dir is not None and signer is not None:
            seal_review(evidence_dir, item, final, reason=reason, signer=signer)
        return final


def review_bundle_id(request_id: str) -> str:
    """The id of the bundle that holds a request's review decision: ``<id>.review``.

    Ids near the 128-character limit are shortened with a hash so the name stays valid.
    """
    if len(request_id) + len(REVIEW_SUFFIX) <= 128:
        return request_id + REVIEW_SUFFIX
    digest = hashlib.sha256(request_id.encode("utf-8")).hexdigest()[:16]
    return f"{request_id[:100]}-{digest}{REVIEW_SUFFIX}"


def seal_review(
    evidence_dir: Path, item: ReviewItem, final: Verdict, *, reason: str, signer: Signer
) -> Path | None:
    """Seal the decision as ``<evidence_dir>/<id>.review/`` referring to the original bundle."""
    from stampless.evidence import EvidenceBundle

    review_id = review_bundle_id(item.request_id)
    if EvidenceBundle.exists(evidence_dir, review_id):
        return None
    bundle = EvidenceBundle.open(evidence_dir, review_id)
    bundle.add_json(
        "decision.json",
        {
            "request_id": item.request_id,
            "decision": final.verdict.value,
            "reviewer": final.decided_by,
            "reason": reason,
            "decided_at": final.finished_at.isoformat(),
            "deadline": None if item.deadline is None else item.deadline.isoformat(),
            "sla_met": final.sla_met,
            "original_evidence": item.evidence,
            "original_manifest_sha256": item.verdict.manifest_sha256,
            "notes": [n.model_dump(mode="json") for n in item.notes],
        },
        kind="other",
        caption="the reviewer's decision",
    )
    bundle.set_meta(review_of=item.request_id, reviewer=final.decided_by)
    sealed = bundle.seal(signer, verdict=final)
    return Path(sealed.path)
