"""``stampless schedule``: the scheduler, the workers and the HTTP intake in one process.

Jobs come from robot.toml's ``[jobs.NAME]`` tables (``kind`` and ``every_s`` or
``cron``); without any, the defaults below run. APScheduler 3 keeps them in its own
SQLAlchemy job store (``<var_dir>/scheduler.db``), so next run times survive restarts
and a nightly job missed while the daemon was down runs once when it comes back
(``coalesce``, within ``misfire_grace_time``). A job whose trigger is unchanged keeps its
stored schedule; a changed or new one is (re)added; one removed from robot.toml is
removed from the store.

Job kinds: ``poll_inbox``, ``recheck`` (re-verify finished items of ``type`` whose last
check is older than ``older_than_days``; the new result supersedes the first),
``sweep_leases``, ``sweep_deadlines`` (overdue flags and case verdicts),
``deliver_outbox``, ``push_outbox`` (:mod:`stampless.push`; added by itself when
``[delivery] push`` is set), ``audit_checkpoint`` and ``prune_evidence`` (bundles past
``[evidence] retention`` give way to signed tombstones, :mod:`stampless.retention`),
and ``robot``: the deployment's own robot operation (``system``, ``operation``), run by
:class:`stampless.jobs.RobotJob` on a logged-in page of one of the system's accounts.

Every run takes the job's lease in :class:`stampless.jobs.JobLedger` first: one run at a
time per job and deployment, and each run's outcome kept for ``schedule --list``.

With ``[store] backend = "postgres"`` several machines may run ``stampless schedule``;
only the one holding the schedule's advisory lock (:class:`stampless._postgres.Leadership`)
runs the jobs, so each fires once per deployment, and another takes over within
seconds when it stops or dies.

SIGTERM or SIGINT stops the daemon gracefully: no new claims, running items get the
grace period to finish or are released, the scheduler waits for running jobs.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from stampless._logging import scrub
from stampless.circuit import CircuitBreaker
from stampless.config import JobConfig
from stampless.errors import ConfigError, StamplessError
from stampless.jobs import JobLedger, JobRun, summarize
from stampless.models import utcnow

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.base import BaseScheduler

    from stampless.config import Config
    from stampless.delivery import Delivery, DeliveryReport
    from stampless.intake import Intake
    from stampless.jobs import RobotJobReport
    from stampless.push import Pusher
    from stampless.queue import WorkQueue
    from stampless.robot import RobotRuntime
    from stampless.signing import Signer
    from stampless.worker import Processor, WorkerOptions, WorkerPool

DEFAULT_JOBS: dict[str, JobConfig] = {
    "poll_inbox": JobConfig(kind="poll_inbox", every_s=30),
    "sweep_leases": JobConfig(kind="sweep_leases", every_s=15),
    "sweep_deadlines": JobConfig(kind="sweep_deadlines", every_s=10),
    "deliver_outbox": JobConfig(kind="deliver_outbox", every_s=20),
    "audit_checkpoint": JobConfig(kind="audit_checkpoint", every_s=300),
}
T = TypeVar("T")
RECHECK_BATCH = 500
# A run missed while the daemon was down happens once when it is back (within an hour).
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600}


@dataclass
class JobInfo:
    """One scheduled job as ``stampless schedule --list`` shows it."""

    name: str
    kind: str
    trigger: str
    next_run: datetime | None
    last_run: JobRun | None = None


def configured_jobs(config: Config) -> dict[str, JobConfig]:
    """robot.toml's jobs (or the defaults), each checked to have exactly one trigger."""
    jobs = dict(config.jobs or DEFAULT_JOBS)
    if config.delivery.push is not None and not any(j.kind == "push_outbox" for j in jobs.values()):
        config.system_config(config.delivery.push)
        jobs["push_outbox"] = JobConfig(kind="push_outbox", every_s=config.delivery.push_every_s)
    for name, job in jobs.items():
        if (job.every_s is None) == (job.cron is None):
            raise ConfigError(
                f"robot.toml: [jobs.{name}] needs exactly one of every_s or cron; set one."
            )
        if job.kind == "recheck" and not job.type:
            raise ConfigError(
                f"robot.toml: [jobs.{name}] is a recheck; set 'type' to the type to re-check."
            )
        if job.type is not None:
            config.type_config(job.type)
        if job.kind == "robot":
            if not job.system or not job.operation:
                raise ConfigError(
                    f"robot.toml: [jobs.{name}] is a robot job; set 'system' and 'operation' "
                    "(a method of that system's robot marked @operation)."
                )
            config.system_config(job.system)
        elif job.system or job.operation or job.account:
            raise ConfigError(
                f"robot.toml: [jobs.{name}] sets system/operation/account, which only "
                'kind = "robot" jobs take; remove them or change the kind.'
            )
    return jobs


def _trigger(name: str, job: JobConfig) -> Any:
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if job.cron is not None:
        try:
            return CronTrigger.from_crontab(job.cron, timezone="UTC")
        except ValueError as exc:
            raise ConfigError(
                f"robot.toml: [jobs.{name}] cron {job.cron!r} is not a crontab line ({exc})."
            ) from None
    assert job.every_s is not None
    return IntervalTrigger(seconds=job.every_s, timezone="UTC")


def _describe(job: JobConfig | None, trigger: Any) -> str:
    if job is None:
        return str(trigger)
    return f"cron {job.cron}" if job.cron else f"every {job.every_s:g} s"


# The running daemon, looked up by the job function: APScheduler's SQLAlchemy store
# pickles a job as a reference to a module-level function plus its arguments, so the job
# carries only its name and finds the live objects here.
_ACTIVE: Daemon | None = None
_ACTIVE_LOCK = threading.Lock()


def run_job(name: str) -> None:
    """Entry point of every stored job: run job ``name`` of the active daemon."""
    daemon = _ACTIVE
    if daemon is None:
        logger.warning("Job {} fired with no daemon running; skipped.", name)
        return
    daemon.run_job(name)


class Daemon:
    """The long-running process: scheduler, workers, HTTP intake."""

    def __init__(
        self,
        config: Config,
        *,
        queue: WorkQueue | None = None,
        processor: Processor | None = None,
        options: WorkerOptions | None = None,
        signer: Signer | None = None,
        http: bool = True,
    ) -> None:
        """``http``: serve the HTTP intake (or, without a token, the health port) here."""
        from stampless.cases import CaseStore
        from stampless.delivery import Delivery
        from stampless.intake import Intake
        from stampless.queue import open_queue

        self.config = config
        self.jobs = configured_jobs(config)
        self.queue = queue or open_queue(config)
        self.processor = processor
        self.options = options
        # Signs outbox verdicts and audit checkpoints; the CLI refuses to start without.
        self.signer = signer
        self.http = http
        self.intake: Intake = Intake(config, self.queue)
        self.delivery: Delivery | None = Delivery.from_config(config)
        self.cases = CaseStore.from_config(config)
        self._review: Any = None
        self.pool: WorkerPool | None = None
        self.ledger = JobLedger.from_config(config)
        # Robot jobs run their coroutines on the serving loop, in the pipeline's browser.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runtime: RobotRuntime | None = None
        self._runtime_owned = False
        self._serving: Processor | None = None
        self.pusher: Pusher | None = None
        self.scheduler = self._make_scheduler()

    @property
    def review(self) -> Any:
        if self._review is None:
            from stampless.review.store import ReviewStore

            self._review = ReviewStore.from_config(self.config)
        return self._review

    def _store_url(self) -> str:
        db = self.config.var_dir / "scheduler.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"

    def _make_scheduler(self) -> BackgroundScheduler:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        return BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=self._store_url())},
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults=JOB_DEFAULTS,
            timezone="UTC",
        )

    def sync_jobs(self, scheduler: BaseScheduler | None = None) -> None:
        """Make the job store match robot.toml (unchanged jobs keep their next run time)."""
        scheduler = scheduler or self.scheduler
        stored = {job.id: job for job in scheduler.get_jobs()}
        for name, job in self.jobs.items():
            trigger = _trigger(name, job)
            old = stored.pop(name, None)
            if old is not None and str(old.trigger) == str(trigger) and old.args == (name,):
                continue
            scheduler.add_job(
                run_job,
                trigger=trigger,
                args=[name],
                id=name,
                name=f"{name} ({job.kind})",
                replace_existing=True,
            )
        for stale in stored:
            scheduler.remove_job(stale)

    def list_jobs(self) -> list[JobInfo]:
        """The jobs with their next run times, after syncing the store with robot.toml.

        Uses a paused AsyncIOScheduler on the same store: it runs nothing and has no
        thread, so listing can never fire a job while it shuts down.
        """
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        async def collect() -> list[JobInfo]:
            scheduler = AsyncIOScheduler(
                jobstores={"default": SQLAlchemyJobStore(url=self._store_url())},
                job_defaults=JOB_DEFAULTS,
                timezone="UTC",
            )
            scheduler.start(paused=True)
            try:
                self.sync_jobs(scheduler)
                return [
                    JobInfo(
                        name=j.id,
                        kind=self.jobs[j.id].kind if j.id in self.jobs else "?",
                        trigger=_describe(self.jobs.get(j.id), j.trigger),
                        next_run=j.next_run_time,
                        last_run=self.ledger.last(j.id),
                    )
                    for j in sorted(scheduler.get_jobs(), key=lambda j: j.id)
                ]
            finally:
                scheduler.shutdown(wait=False)

        return asyncio.run(collect())

    # -- jobs ----------------------------------------------------------------------------

    def run_job(self, name: str) -> Any:
        """Run job ``name`` now, in the calling thread; returns what it did.

        Nothing runs while another run of the job holds its lease (here or in another
        process); the run's outcome is kept in the job ledger either way.
        """
        job = self.jobs.get(name)
        if job is None:
            logger.warning("Job {} is not in robot.toml any more; skipped.", name)
            return None
        run_id = self.ledger.begin(name, lease_s=job.timeout_s + 60)
        if run_id is None:
            logger.info("Job {}: the previous run is still going; this run is skipped.", name)
            return None
        try:
            if job.kind == "robot":
                result = self.job_robot(name, job)
            else:
                result = getattr(self, f"job_{job.kind}")(job)
        except Exception as exc:
            logger.opt(exception=not isinstance(exc, StamplessError)).error(
                "Job {} ({}) failed: {}", name, job.kind, exc
            )
            self.ledger.end(name, run_id, "failed", scrub(str(exc)))
            return None
        self.ledger.end(name, run_id, "ok", summarize(result))
        logger.debug("Job {} ({}) done: {}", name, job.kind, result)
        return result

    def job_robot(self, name: str, job: JobConfig) -> RobotJobReport:
        """The deployment's robot operation (:class:`stampless.jobs.RobotJob`)."""
        from stampless.jobs import RobotJob

        runner = RobotJob(self.config, name, job, self.intake, self.signer, self.ledger)
        return self._with_runtime(runner.run, job.timeout_s)

    def job_push_outbox(self, job: JobConfig) -> DeliveryReport | None:
        """Final verdicts pushed back to ``[delivery] push`` (:mod:`stampless.push`)."""
        from stampless.push import Pusher

        if self.pusher is None:
            self.pusher = Pusher.for_config(self.config, self.ledger)
        pusher = self.pusher
        if pusher is None:
            return None
        return self._with_runtime(lambda rt: pusher.push_pending(rt, self.signer), job.timeout_s)

    def _with_runtime(self, step: Callable[[RobotRuntime], Awaitable[T]], timeout_s: float) -> T:
        """Run ``step`` on the serving loop's browser when the daemon runs, else (a
        one-off run) in a browser of its own, closed afterwards."""
        loop = self._loop
        if loop is not None and loop.is_running():

            async def shared() -> T:
                return await step(await self._shared_runtime())

            return asyncio.run_coroutine_threadsafe(shared(), loop).result(timeout=timeout_s + 60)

        async def once() -> T:
            from stampless.robot import RobotRuntime

            async with RobotRuntime(self.config, accounts=self.queue) as runtime:
                return await step(runtime)

        return asyncio.run(once())

    async def _shared_runtime(self) -> RobotRuntime:
        if self._runtime is None:
            from stampless.pipeline import Pipeline

            if isinstance(self._serving, Pipeline):
                self._runtime = await self._serving.runtime()
            else:
                from stampless.robot import RobotRuntime

                self._runtime = RobotRuntime(self.config, accounts=self.queue)
                self._runtime_owned = True
        return self._runtime

    def job_poll_inbox(self, job: JobConfig) -> Any:
        from stampless.intake import poll_inbox

        return poll_inbox(self.intake, self.config.inbox_dir)

    def job_sweep_leases(self, job: JobConfig) -> list[str]:
        ids = self.queue.sweep_leases()
        for rid in ids:
            logger.warning("{}: its worker stopped; back in the queue.", rid)
        return ids

    def job_sweep_deadlines(self, job: JobConfig) -> dict[str, list[str]]:
        from stampless.worker import sweep_deadlines

        return sweep_deadlines(self.queue, self.cases)

    def job_deliver_outbox(self, job: JobConfig) -> Any:
        if self.delivery is None:
            return None
        return self.delivery.deliver_pending()

    def job_audit_checkpoint(self, job: JobConfig) -> Path | None:
        """Sign the audit chain's end into the outbox (the webhook takes it off the machine)."""
        from stampless.audit import write_checkpoint

        if self.signer is None:
            logger.warning("Job audit_checkpoint skipped: the daemon runs without a signer.")
            return None
        return write_checkpoint(
            self.config.audit_dir,
            self.config.outbox_dir,
            self.signer,
            writer=self.config.audit_writer,
        )

    def job_recheck(self, job: JobConfig) -> list[str]:
        return recheck(self.queue, self.config, job.type or "", job.older_than_days or 0.0)

    def job_prune_evidence(self, job: JobConfig) -> list[str]:
        """Bundles past ``[evidence] retention`` give way to signed tombstones."""
        from stampless.retention import prune

        retention = self.config.evidence.retention
        delta = self.config.evidence.retention_delta
        if self.signer is None or retention is None or delta is None:
            logger.warning("Job prune_evidence skipped: no [evidence] retention or no signer.")
            return []
        pruned = prune(self.config, self.signer, older_than=delta, reason=f"retention {retention}")
        return [p.request_id for p in pruned]

    # -- running -------------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT: scheduler threads, HTTP intake, the worker pool."""
        global _ACTIVE
        from stampless.intake import IntakeServer
        from stampless.worker import WorkerOptions, WorkerPool

        processor = self.processor
        owned = None
        # One breaker: the pool keeps it, the robot runtime obeys it (logins included).
        circuits = CircuitBreaker.from_config(self.config)
        if processor is None:
            from stampless.pipeline import Pipeline

            owned = Pipeline(self.config, circuits=circuits, signer=self.signer)
            processor = await owned.__aenter__()
        options = self.options or WorkerOptions.from_config(self.config)
        self.pool = WorkerPool(
            self.config,
            self.queue,
            processor,
            options=options,
            review=self.review,
            delivery=self.delivery,
            cases=self.cases,
            circuits=circuits,
            signer=self.signer,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_soon, sig)
        self._serving = processor
        self._loop = loop
        with _ACTIVE_LOCK:
            _ACTIVE = self
        pool = self.pool
        server = (
            IntakeServer.from_config(
                self.intake,
                ready_checks={
                    "the scheduler": lambda: bool(self.scheduler.running),
                    "the worker pool": lambda: not pool.stop.is_set(),
                },
            )
            if self.http
            else None
        )
        leadership = None
        if self.config.store.backend == "postgres":
            # Many machines, one schedule: jobs run only where the lock is held.
            from stampless._postgres import Leadership, database_url

            self.scheduler.start(paused=True)
            leadership = Leadership(
                database_url(self.config), on_gain=self._lead, on_loss=self._follow
            ).start()
        else:
            self.scheduler.start()
        try:
            self.sync_jobs()
            if server is not None:
                server.start()
            logger.info(
                "stampless schedule: {} workers, {} jobs; SIGTERM stops gracefully.",
                options.workers,
                len(self.jobs),
            )
            print("ready", flush=True)  # for supervisors and tests waiting on startup
            if options.workers > 0:
                await self.pool.run()
            else:  # the scheduler alone: workers run as their own processes (`run`)
                await self.pool.stop.wait()
        finally:
            if server is not None:
                server.stop()
            if leadership is not None:
                await asyncio.to_thread(leadership.stop)
            # Let running jobs finish: a delivery or sweep is never cut in half.
            await asyncio.to_thread(self.scheduler.shutdown, True)
            with _ACTIVE_LOCK:
                _ACTIVE = None
            self._loop = None
            if self._runtime is not None and self._runtime_owned:
                await self._runtime.close()  # its own browser, not the pipeline's
            self._runtime, self._runtime_owned, self._serving = None, False, None
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if owned is not None:
                await owned.__aexit__(None, None, None)
            logger.info("stampless schedule stopped.")

    def _lead(self) -> None:
        logger.info("This machine now runs the deployment's schedule.")
        self.scheduler.resume()

    def _follow(self) -> None:
        logger.warning(
            "This machine no longer runs the deployment's schedule (its database "
            "connection failed); it will take it again when it can."
        )
        self.scheduler.pause()

    def _stop_soon(self, sig: signal.Signals) -> None:
        logger.info("{} received; finishing running items, then stopping.", sig.name)
        if self.pool is not None:
            self.pool.stop.set()


def recheck(queue: WorkQueue, config: Config, type_name: str, older_than_days: float) -> list[str]:
    """Queue re-checks of finished ``type_name`` items last checked before the cut-off.

    Each re-check is a new item ``<id>.recheck-<time>`` whose verdict supersedes the
    original; the original verdict is never changed.
    """
    from stampless.intake import enqueue_recheck
    from stampless.outbox import recheck_name
    from stampless.queue import ItemState
    from stampless.retention import read_tombstone

    now = utcnow()
    cutoff = now - timedelta(days=older_than_days)
    items = queue.list(states=[ItemState.done], type=type_name, limit=100_000)
    latest: dict[str, datetime] = {}
    for item in items:
        root = item.supersedes or item.request_id
        latest[root] = max(latest.get(root, item.received_at), item.received_at)
    for item in queue.list(states=[ItemState.queued, ItemState.claimed], type=type_name):
        if item.supersedes:
            latest[item.supersedes] = now  # a re-check is already on its way
    added: list[str] = []
    stamp = now.strftime("%Y%m%dT%H%M%S")
    for item in items:
        if item.supersedes is not None or latest[item.request_id] > cutoff:
            continue
        if read_tombstone(config.evidence_dir / item.request_id) is not None:
            continue  # its spooled request went with its evidence (retention)
        new_id = recheck_name(item.request_id, stamp)
        if enqueue_recheck(queue, config, item, new_id, now=now):
            added.append(new_id)
        if len(added) >= RECHECK_BATCH:
            break
    if added:
        logger.info("Re-check of {}: {} items queued.", type_name, len(added))
    return added
