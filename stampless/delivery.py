"""Delivery of outbox verdicts to the hall's webhook, at least once.

Each outbox file is POSTed as it is (the bytes written once) with an
``Idempotency-Key: <name>`` header (the request id, or the case id for a case verdict)
and, when ``[outbox.webhook] token`` is set, ``Authorization: Bearer <token>``. A 2xx
answer marks it delivered; anything else is retried with exponential backoff and
jitter until ``max_attempts``, after which it is marked ``gave_up`` and reported. Every
attempt is recorded in ``<var_dir>/delivery.db`` (table ``attempts``). A receiver may
see a verdict more than once (a crash between its 2xx and our record) and must dedupe
by the key; it never sees two different verdicts under one key, because the outbox never
rewrites one.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from loguru import logger

from stampless._sqlite import connection, prepare
from stampless.models import utcnow
from stampless.outbox import iter_verdicts, read_journal

if TYPE_CHECKING:
    from stampless.audit import AuditLog
    from stampless.config import Config, WebhookConfig

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    name         TEXT PRIMARY KEY,
    status       TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | gave_up
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    http_status  INTEGER,
    delivered_at REAL
);
CREATE TABLE IF NOT EXISTS attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          REAL NOT NULL,
    http_status INTEGER,
    ok          INTEGER NOT NULL,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_at);
-- How far each outbox journal file has been read (see stampless.outbox).
CREATE TABLE IF NOT EXISTS journal (
    file   TEXT PRIMARY KEY,
    offset INTEGER NOT NULL
);
"""

# The journal row that records that the whole outbox was listed at least once.
_LISTED = ""

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0


def backoff_s(attempt: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_MAX_S) -> float:
    """Exponential backoff with "full jitter" after ``attempt`` failures (attempt >= 1)."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    # Half fixed, half random: retries of many items spread out, none comes back at once.
    return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass
class DeliveryReport:
    delivered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    gave_up: list[str] = field(default_factory=list)


class Delivery:
    """Delivers outbox files to one webhook and records every attempt."""

    def __init__(
        self,
        db_path: Path,
        outbox_dir: Path,
        *,
        url: str,
        token: str | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 8,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        self.db_path = Path(db_path)
        self.outbox_dir = Path(outbox_dir)
        self.url = url
        self._token = token
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.audit: AuditLog | None = None  # set by from_config: deliveries join the chain
        # One delivery pass at a time per process: the scheduler job and the worker's
        # "deliver after completing" must not post the same file twice concurrently.
        self._pass_lock = threading.Lock()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        prepare(self.db_path, _SCHEMA)

    @classmethod
    def from_config(cls, config: Config) -> Delivery | None:
        """The configured delivery, or None when robot.toml has no ``[outbox.webhook]``."""
        hook: WebhookConfig | None = config.outbox.webhook
        if hook is None:
            return None
        token = None
        if hook.token:
            from stampless.vault import resolve_secret

            token = resolve_secret(hook.token, config=config).reveal()
        from stampless.audit import AuditLog

        delivery = cls(
            config.var_dir / "delivery.db",
            config.outbox_dir,
            url=hook.url,
            token=token,
            timeout_s=hook.timeout_s,
            max_attempts=hook.max_attempts,
        )
        delivery.audit = AuditLog(config.audit_dir, rotate_bytes=config.audit.rotate_bytes)
        return delivery

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return connection(self.db_path)

    def discover(self, *, full: bool = False) -> int:
        """Register outbox files not seen before as pending; how many were new.

        Reads the outbox journal from where the last pass stopped, so a pass costs what
        is new, not the size of the outbox. ``full`` lists the whole outbox as well (at
        start-up, and the first time: files a crash left unjournaled, or written before
        this delivery database existed).
        """
        with self._db() as db:
            offsets = {r["file"]: int(r["offset"]) for r in db.execute("SELECT * FROM journal")}
        if _LISTED not in offsets:
            full = True
        names, new_offsets = read_journal(self.outbox_dir, offsets)
        if full:
            names.extend(p.stem for p in iter_verdicts(self.outbox_dir))
        elif not names and new_offsets == offsets:
            return 0  # nothing new: no write transaction
        now = utcnow().timestamp()
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (name, next_at) VALUES (?, ?)",
                ((name, now) for name in names),
            )
            new = db.total_changes - before
            # Offsets only move forward: two processes may read the same lines, and the
            # INSERT OR IGNORE above makes that harmless.
            db.executemany(
                "INSERT INTO journal (file, offset) VALUES (?, ?) ON CONFLICT (file) "
                "DO UPDATE SET offset = max(offset, excluded.offset)",
                [*new_offsets.items(), *([(_LISTED, 0)] if full else [])],
            )
            db.execute("COMMIT")
        return new

    def deliver_pending(self, *, limit: int = 200, full_scan: bool = False) -> DeliveryReport:
        """One pass: register new outbox files, POST those due, record the outcomes."""
        report = DeliveryReport()
        with self._pass_lock:
            due = self.due(limit=limit, full_scan=full_scan)
            if not due:
                return report
            with httpx.Client(timeout=self.timeout_s) as client:
                for name, attempts in due:
                    self._post(client, name, attempts + 1, report)
        return report

    def due(self, *, limit: int = 200, full_scan: bool = False) -> list[tuple[str, int]]:
        """Register new outbox files, then the pending ones due now: (name, attempts so far)."""
        self.discover(full=full_scan)
        now = utcnow().timestamp()
        with self._db() as db:
            return [
                (r["name"], r["attempts"])
                for r in db.execute(
                    """SELECT name, attempts FROM deliveries WHERE status = 'pending'
                       AND next_at <= ? ORDER BY next_at LIMIT ?""",
                    (now, limit),
                )
            ]

    def _post(self, client: httpx.Client, name: str, attempt: int, report: DeliveryReport) -> None:
        path = self.outbox_dir / f"{name}.json"
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            self.record(name, attempt, None, ok=False, error="outbox file missing", final=True)
            report.gave_up.append(name)
            return
        headers = {"Content-Type": "application/json", "Idempotency-Key": name}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        status: int | None = None
        error: str | None = None
        try:
            response = client.post(self.url, content=body, headers=headers)
            status = response.status_code
            ok = 200 <= status < 300
            if not ok:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            ok = False
            error = exc.__class__.__name__
        final = not ok and attempt >= self.max_attempts
        self.record(name, attempt, status, ok=ok, error=error, final=final)
        if ok:
            report.delivered.append(name)
            if self.audit is not None:
                self.audit.append("delivered", request_id=name, attempt=attempt, http_status=status)
        elif final:
            logger.error(
                "Gave up delivering {} to the webhook after {} attempts ({}); check the "
                "receiver, then run 'stampless queue redeliver'.",
                name,
                attempt,
                error,
            )
            report.gave_up.append(name)
        else:
            report.failed.append(name)

    def record(
        self,
        name: str,
        attempt: int,
        status: int | None,
        *,
        ok: bool,
        error: str | None,
        final: bool,
    ) -> None:
        now = utcnow().timestamp()
        state = "delivered" if ok else ("gave_up" if final else "pending")
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO attempts (name, attempt, at, http_status, ok, error) "
                "VALUES (?,?,?,?,?,?)",
                (name, attempt, now, status, int(ok), error),
            )
            db.execute(
                """UPDATE deliveries SET status = ?, attempts = ?, http_status = ?,
                   next_at = ?, delivered_at = ? WHERE name = ?""",
                (
                    state,
                    attempt,
                    status,
                    now + backoff_s(attempt, self.backoff_base_s),
                    now if ok else None,
                    name,
                ),
            )
            db.execute("COMMIT")

    def status(self, name: str) -> str | None:
        """``pending``, ``delivered`` or ``gave_up`` for an outbox name; None if unknown."""
        with self._db() as db:
            row = db.execute("SELECT status FROM deliveries WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def attempts(self, name: str) -> list[dict[str, object]]:
        """Every recorded attempt for ``name``, oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT attempt, at, http_status, ok, error FROM attempts WHERE name = ? "
                "ORDER BY id",
                (name,),
            ).fetchall()
        return [dict(r) for r in rows]

    def redeliver(self, name: str) -> None:
        """Make a given-up (or delivered) file pending again, due now (operator's command)."""
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO deliveries (name, next_at) VALUES (?, ?)",
                (name, utcnow().timestamp()),
            )
            db.execute(
                "UPDATE deliveries SET status = 'pending', next_at = ? WHERE name = ?",
                (utcnow().timestamp(), name),
            )
