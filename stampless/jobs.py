"""Scheduled jobs' runs: one at a time per job and deployment, each with its outcome.

:class:`JobLedger` keeps ``<var_dir>/jobs.db``: a lease per running job and a row per
run (start, end, outcome, what it did). The scheduler asks for the lease before every
run, so a job never overlaps itself, not across threads, not across two daemons on one
``var/``, and not after a restart: a lease whose holder process died (a SIGKILL) is
taken over at once, one whose holder lives is honoured until it expires.
``stampless schedule --list`` shows each job's last run from here.

:class:`RobotJob` runs a ``kind = "robot"`` job: the deployment's own robot operation
on a logged-in page (:meth:`stampless.robot.RobotRuntime.operate`), its evidence sealed
as a bundle ``JOB-<name>-<time>``, and what it returned put to use: submissions go
through intake (idempotent by request id, the SLA clock started at the time each
submission gives), records are written to ``<var_dir>/jobs/<name>/records.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from stampless._files import write_atomic
from stampless._logging import scrub
from stampless._sqlite import connect, prepare, retry_locked
from stampless.errors import StamplessError
from stampless.models import Record, utcnow

if TYPE_CHECKING:
    import sqlite3

    from stampless.config import Config, JobConfig
    from stampless.intake import Intake
    from stampless.robot import RobotRuntime, Submission
    from stampless.signing import Signer

KEEP_RUNS = 200  # rows kept per job: enough for a day of a 5-minute job
SCHEMA = """
CREATE TABLE IF NOT EXISTS job_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    holder TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    outcome TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS job_runs_by_job ON job_runs (job, id);
-- Requests a robot job took in, by the system they came from (where a push takes the
-- verdict back to).
CREATE TABLE IF NOT EXISTS taken_in (
    request_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    system TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_leases (
    job TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
"""


@dataclass
class JobRun:
    """One run of a job as the ledger keeps it."""

    job: str
    started: datetime
    ended: datetime | None
    outcome: str | None  # ok, failed, abandoned (its process died); None while running
    detail: str


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(holder: str) -> bool:
    """Whether the process holding a lease still runs (on another host: assume it does)."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobLedger:
    """Leases and run history of the scheduled jobs (``<var_dir>/jobs.db``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        prepare(path, SCHEMA)

    @classmethod
    def from_config(cls, config: Config) -> JobLedger:
        return cls(config.var_dir / "jobs.db")

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with closing(connect(self.path)) as conn:
            yield conn

    def begin(self, job: str, *, lease_s: float) -> int | None:
        """Start a run of ``job`` and return its id; None while another run holds it.

        A lease left by a dead process ends that run as ``abandoned`` and is taken over.
        """
        holder, now = _holder(), time.time()

        def attempt() -> int | None:
            with self._conn() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT run_id, holder, until FROM job_leases WHERE job = ?", (job,)
                    ).fetchone()
                    if row is not None:
                        if row["until"] > now and _alive(row["holder"]):
                            conn.execute("ROLLBACK")
                            return None
                        conn.execute(
                            "UPDATE job_runs SET ended = ?, outcome = 'abandoned', detail = ? "
                            "WHERE id = ? AND ended IS NULL",
                            (utcnow().isoformat(), "its process stopped", row["run_id"]),
                        )
                    cur = conn.execute(
                        "INSERT INTO job_runs (job, holder, started, detail) VALUES (?, ?, ?, '')",
                        (job, holder, utcnow().isoformat()),
                    )
                    run_id = int(cur.lastrowid or 0)
                    conn.execute(
                        "INSERT OR REPLACE INTO job_leases (job, run_id, holder, until) "
                        "VALUES (?, ?, ?, ?)",
                        (job, run_id, holder, now + lease_s),
                    )
                    conn.execute("COMMIT")
                    return run_id
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

        return retry_locked(attempt)

    def end(self, job: str, run_id: int, outcome: str, detail: str) -> None:
        """Record how run ``run_id`` ended and give its lease back."""

        def attempt() -> None:
            with self._conn() as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "UPDATE job_runs SET ended = ?, outcome = ?, detail = ? WHERE id = ?",
                    (utcnow().isoformat(), outcome, detail[:500], run_id),
                )
                conn.execute("DELETE FROM job_leases WHERE job = ? AND run_id = ?", (job, run_id))
                conn.execute(
                    "DELETE FROM job_runs WHERE job = ? AND id <= ?", (job, run_id - KEEP_RUNS)
                )
                conn.execute("COMMIT")

        retry_locked(attempt)

    def note_taken_in(self, request_id: str, job: str, system: str) -> None:
        """Remember that job ``job`` took ``request_id`` in from ``system``."""
        with self._conn() as conn:
            retry_locked(
                lambda: conn.execute(
                    "INSERT OR IGNORE INTO taken_in (request_id, job, system, at) "
                    "VALUES (?, ?, ?, ?)",
                    (request_id, job, system, utcnow().isoformat()),
                )
            )

    def taken_from(self, request_id: str) -> str | None:
        """The system a robot job took ``request_id`` in from, or None."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT system FROM taken_in WHERE request_id = ?", (request_id,)
            ).fetchone()
        return None if row is None else str(row["system"])

    def runs(self, job: str, *, limit: int = 20) -> list[JobRun]:
        """The newest runs of ``job`` first (a running one included)."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT * FROM job_runs WHERE job = ? ORDER BY id DESC LIMIT ?", (job, limit)
            ).fetchall()
        return [
            JobRun(
                job=r["job"],
                started=datetime.fromisoformat(r["started"]),
                ended=datetime.fromisoformat(r["ended"]) if r["ended"] else None,
                outcome=r["outcome"],
                detail=r["detail"] or "",
            )
            for r in rows
        ]

    def last(self, job: str) -> JobRun | None:
        """The newest run of ``job`` (running or finished), or None."""
        found = self.runs(job, limit=1)
        return found[0] if found else None


def summarize(result: Any) -> str:
    """What a job did, in a few words for ``schedule --list`` and the log."""
    if result is None:
        return "-"
    if isinstance(result, RobotJobReport):
        return result.summary()
    if isinstance(result, list | tuple | set):
        return f"{len(result)} item(s)"
    if isinstance(result, dict):
        return ", ".join(
            f"{k} {len(v) if isinstance(v, list | tuple) else v}" for k, v in result.items()
        )
    return scrub(str(result))[:200]


@dataclass
class RobotJobReport:
    """What one run of a robot job did."""

    returned: str  # requests, records or nothing
    count: int = 0
    queued: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    bundle: str | None = None

    def summary(self) -> str:
        if self.returned == "requests":
            text = f"{len(self.queued)} queued, {len(self.known)} known"
            return text + (f", {len(self.refused)} refused" if self.refused else "")
        if self.returned == "records":
            return f"{self.count} record(s)"
        return "done"


class _Context:
    """The :class:`stampless.robot.JobContext` a robot operation gets."""

    def __init__(self, name: str, intake: Intake) -> None:
        self._name = name
        self._intake = intake

    @property
    def name(self) -> str:
        return self._name

    def known(self, request_id: str) -> bool:
        from stampless.outbox import read_verdict

        if self._intake.queue.get(request_id) is not None:
            return True
        return read_verdict(self._intake.config.outbox_dir, request_id) is not None


class RobotJob:
    """Runs one ``kind = "robot"`` job on a robot runtime (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        name: str,
        job: JobConfig,
        intake: Intake,
        signer: Signer | None,
        ledger: JobLedger,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.name = name
        self.job = job
        self.intake = intake
        self.signer = signer

    @property
    def folder(self) -> Path:
        return self.config.var_dir / "jobs" / self.name

    async def run(self, runtime: RobotRuntime) -> RobotJobReport:
        from stampless.evidence import EvidenceBundle

        assert self.job.system is not None and self.job.operation is not None
        returns = runtime.require_operation(self.job.system, self.job.operation)
        started = utcnow()
        bundle = None
        if self.signer is not None:
            stamp = started.strftime("%Y%m%dT%H%M%S%f")
            bundle = EvidenceBundle.open(self.config.evidence_dir, f"JOB-{self.name}-{stamp}")
            bundle.set_meta(purpose="job", job=self.name, operation=self.job.operation)
        report = RobotJobReport(returned=returns)
        try:
            result = await runtime.operate(
                self.job.system,
                self.job.operation,
                _Context(self.name, self.intake),
                account=self.job.account,
                evidence=bundle,
                deadline=started + timedelta(seconds=self.job.timeout_s),
            )
            if returns == "requests":
                self._submit([r for r in result or [] if not isinstance(r, Record)], report)
            elif returns == "records":
                self._keep_records([r for r in result or [] if isinstance(r, Record)], report)
        except BaseException as exc:
            if bundle is not None and self.signer is not None:
                bundle.seal(self.signer, verdict={"job": self.name, "error": scrub(str(exc))})
            raise
        if bundle is not None and self.signer is not None:
            sealed = bundle.seal(
                self.signer, verdict={"job": self.name, "outcome": report.summary()}
            )
            report.bundle = sealed.path.name
        return report

    def _submit(self, submissions: list[Submission], report: RobotJobReport) -> None:
        """Each submission through intake, one at a time: a bad one never stops the rest."""
        report.count = len(submissions)
        for sub in submissions:
            rid = sub.request.id
            staging = self.folder / "staging" / rid
            try:
                request = sub.request
                if sub.scan is not None:
                    staging.mkdir(parents=True, exist_ok=True)
                    name = "scan" + sub.scan.suffix.lower()
                    shutil.copyfile(sub.scan, staging / name)
                    request = request.model_copy(update={"scan": name})
                data = request.model_dump(mode="json", exclude_none=True)
                prepared = self.intake.prepare_data(data, staging, f"job {self.name}")
                outcome = self.intake.submit_prepared(prepared, received_at=sub.received_at)[0]
            except (StamplessError, OSError) as exc:
                report.refused[rid] = scrub(str(exc))
                logger.warning("Job {}: request {} not taken in: {}", self.name, rid, exc)
                continue
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            assert self.job.system is not None
            self.ledger.note_taken_in(rid, self.name, self.job.system)
            (report.queued if outcome.added else report.known).append(rid)

    def _keep_records(self, records: list[Record], report: RobotJobReport) -> None:
        report.count = len(records)
        self.folder.mkdir(parents=True, exist_ok=True)
        data = [r.model_dump(mode="json") for r in records]
        write_atomic(self.folder / "records.json", json.dumps(data, ensure_ascii=False, indent=1))
