"""The worker loop: claim -> pipeline -> outbox or review -> complete.

One process runs N asyncio tasks that share one processor (the
:class:`~stampless.pipeline.Pipeline`, hence one browser); OCR runs in threads, so two
tasks keep two cores busy. Per item:

* a verdict already in the outbox (a crash after writing it) completes the item
  without running it again; so does an item already in the review store;
* a :class:`~stampless.errors.SystemFailure` is retried with exponential backoff and
  jitter while a retry can still finish before the deadline and attempts remain (the one
  retry layer, :class:`stampless.retry.RetryPolicy`; nothing below it retries);
  otherwise the item is *escalated*: robot and manual tiers go to the review store with
  what was gathered, instant-tier items get an ``error`` verdict;
* an :class:`~stampless.errors.InputError` is final: an ``error`` verdict (so is a
  :class:`~stampless.errors.ConfigError` met for one item: a type or system robot.toml
  does not define, a task module that does not load);
* a secret that stops resolving (:class:`~stampless.errors.SecretUnavailable`) stops
  the pool: the item goes back untouched and :meth:`WorkerPool.run` raises it, so
  ``run`` and ``schedule`` exit 2 (they check every secret before starting, too);
* the circuit breaker of the item's department system is consulted before, and told
  after; items of a system whose circuit is open wait in the queue, and are escalated
  when their deadline comes near (the pipeline's robot runtime asks the same breaker
  before every attempt and login, so an open circuit stops all traffic);
* a refused login (:class:`~stampless.errors.LoginRejected`) disables the account in the
  queue's account table and gives the item back without using an attempt, so another
  account takes it; items of a system with no usable account left wait like those of
  an open circuit;
* the lease (and the account lock) is renewed while the item runs; a killed process
  simply stops renewing, and the item runs again elsewhere once the lease expires;
* on shutdown, running items get ``grace_s`` to finish, then are released (the attempt
  is given back) and nothing half-done is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from stampless.cases import CaseStore
from stampless.circuit import CircuitBreaker
from stampless.delivery import Delivery
from stampless.errors import (
    BusinessError,
    InputError,
    LoginRejected,
    SecretUnavailable,
    StamplessError,
    SystemFailure,
)
from stampless.idempotency import refuse_conflict
from stampless.intake import Job
from stampless.models import Tier, Verdict, VerdictKind, utcnow
from stampless.outbox import publish, read_verdict
from stampless.queue import Claim, ItemState, LeaseLost, QueueItem, WorkQueue
from stampless.queue.abc import answers, settle_reviewed
from stampless.retry import DEFAULT_ESTIMATE_S, RetryPolicy, expected_s, too_late

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.review.store import ReviewStore
    from stampless.signing import Signer


class Processor(Protocol):
    """What a worker needs from the pipeline (:class:`stampless.pipeline.Pipeline`)."""

    async def process(self, job: Job) -> Verdict:
        """The job's verdict, evidence sealed; InputError (final) or SystemFailure (retried)."""
        ...

    async def escalate(self, job: Job, *, reason: str) -> Verdict:
        """A needs_review verdict with what the attempts gathered, for a person."""
        ...

    async def fail(self, job: Job, *, reason: str) -> Verdict:
        """An ``error`` verdict."""
        ...


@dataclass
class WorkerOptions:
    """How the pool runs; defaults come from robot.toml's ``[queue]``."""

    workers: int = 2
    until_empty: bool = False
    poll_s: float = 0.2
    # With a queue that sends events (PostgreSQL's NOTIFY), workers claim when woken and
    # otherwise only this often: an item whose back-off ends sends no event.
    event_poll_s: float = 1.0
    lease_s: float = 15.0
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    grace_s: float = 20.0
    maintenance_s: float = 5.0
    progress: bool | None = None  # None: a live display when stdout is a terminal
    progress_every_s: float = 10.0

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> WorkerOptions:
        q = config.queue
        opts = cls(
            lease_s=q.lease_s,
            max_attempts=q.max_attempts,
            backoff_base_s=q.backoff_base_s,
            backoff_max_s=q.backoff_max_s,
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(opts, key, value)
        return opts


@dataclass
class Stats:
    """What this process did, for the progress display and the benchmark."""

    started: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    review: int = 0
    retried: int = 0
    escalated: int = 0
    released: int = 0
    sla_met: int = 0
    sla_missed: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.review

    def rate_per_min(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return self.finished * 60.0 / elapsed


def worker_name(n: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:w{n}"


class WorkerPool:
    """N workers on one queue, sharing one processor (one browser) in this process."""

    def __init__(
        self,
        config: Config,
        queue: WorkQueue,
        processor: Processor,
        *,
        options: WorkerOptions | None = None,
        review: ReviewStore | None = None,
        circuits: CircuitBreaker | None = None,
        delivery: Delivery | None = None,
        cases: CaseStore | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.config = config
        # Signs each verdict as it goes to the outbox (production always passes one).
        self.signer = signer
        self.queue = queue
        self.processor = processor
        self.options = options or WorkerOptions.from_config(config)
        self.retry = RetryPolicy(
            self.options.max_attempts, self.options.backoff_base_s, self.options.backoff_max_s
        )
        if review is None:
            from stampless.review.store import ReviewStore

            review = ReviewStore.from_config(config)
        self.review = review
        self.circuits = circuits or CircuitBreaker.from_config(config)
        self.delivery = delivery
        self.cases = cases or CaseStore.from_config(config)
        self.outbox_dir = config.outbox_dir
        self.stats = Stats()
        self.stop = asyncio.Event()
        self._estimates: dict[str | None, float] = {}
        self._running: dict[str, Claim] = {}
        self._delivery_task: asyncio.Task[None] | None = None
        self._delivery_again = False
        self._fatal: StamplessError | None = None  # why the pool stopped itself
        self._wake = asyncio.Event()  # set when the queue says an item may be claimable
        self._idle_s = self.options.poll_s
        from stampless.audit import AuditLog

        self.audit = AuditLog(config.audit_dir, rotate_bytes=config.audit.rotate_bytes)

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> Stats:
        """Run until ``self.stop`` is set (or the queue is empty with ``until_empty``)."""
        opts = self.options
        loop = asyncio.get_running_loop()

        def wake() -> None:  # from the queue's listener thread
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._wake.set)

        stop_listening = self.queue.listen(wake)
        if stop_listening is not None:
            self._idle_s = max(opts.poll_s, opts.event_poll_s)
        workers = [
            asyncio.create_task(self._worker(n), name=f"worker-{n}")
            for n in range(max(opts.workers, 1))
        ]
        helpers = [asyncio.create_task(self._maintenance(), name="maintenance")]
        if self.delivery is not None:
            # Once per start: verdicts a crash left out of the outbox journal.
            self._kick_delivery(full_scan=True)
        progress = _Progress(self) if _want_progress(opts) else None
        helpers.append(asyncio.create_task(self._report(progress), name="progress"))
        try:
            await self._wait_until_finished(workers)
        finally:
            self.stop.set()
            await self._drain(workers)
            for h in helpers:
                h.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if self._delivery_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._delivery_task, timeout=opts.grace_s)
            if progress is not None:
                progress.close()
            if stop_listening is not None:
                await asyncio.to_thread(stop_listening)
            self._log_progress()
        if self._fatal is not None:
            raise self._fatal
        return self.stats

    def _stop_for(self, exc: StamplessError) -> None:
        """Stop taking work because of ``exc``, which :meth:`run` raises once drained."""
        if self._fatal is None:
            logger.error("Stopping the workers: {}", exc)
            self._fatal = exc
        self.stop.set()

    async def _wait_until_finished(self, workers: list[asyncio.Task[None]]) -> None:
        stop_wait = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait([stop_wait, *workers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        for w in workers:
            if w.done() and not w.cancelled() and w.exception() is not None:
                raise w.exception()  # type: ignore[misc]

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Give running items ``grace_s`` to finish, then cancel (they release their items)."""
        pending = [w for w in workers if not w.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.options.grace_s)
            for w in still:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, n: int) -> None:
        name = worker_name(n)
        opts = self.options
        while not self.stop.is_set():
            # Cleared before the claim, so a wake that comes during it is not lost.
            self._wake.clear()
            # In a thread: a claim is a write transaction, and its fsync must not stall
            # the other workers' browser pages on the event loop.
            claim = await asyncio.to_thread(self._claim, name)
            if claim is None:
                if opts.until_empty and self._queue_empty():
                    self.stop.set()
                    return
                await self._idle()
                continue
            if self.stop.is_set():  # shutdown began while claiming: hand it straight back
                self._release(claim, "shutdown")
                return
            self._running[claim.request_id] = claim
            try:
                with logger.contextualize(request_id=claim.request_id):
                    await self.handle(claim)
            except asyncio.CancelledError:
                self._release(claim, "shutdown")
                raise
            except LeaseLost as exc:
                logger.warning("{}", exc)
            except Exception as exc:
                # A bug in one item must not kill the worker: the item backs off and
                # counts the attempt, so a poison item ends in escalation, not a loop.
                logger.exception("Worker {} failed on {}: {}", name, claim.request_id, exc)
                self._fail_internal(claim, exc)
            finally:
                self._running.pop(claim.request_id, None)

    async def _idle(self) -> None:
        """Wait until the queue wakes us, the pool stops, or the idle time has passed."""
        waits = [asyncio.create_task(self.stop.wait()), asyncio.create_task(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=self._idle_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _queue_empty(self) -> bool:
        counts = self.queue.counts()
        return counts[ItemState.queued] == 0 and counts[ItemState.claimed] == 0

    def _claim(self, name: str) -> Claim | None:
        opts = self.options
        # Items of a system whose circuit is open stay queued unless their deadline is
        # close enough that only escalation can still meet it.
        due_by = utcnow() + timedelta(seconds=self._margin(None) + 2 * opts.poll_s)
        claim = self.queue.claim(
            name, lease_s=opts.lease_s, skip_systems=self.circuits.blocked(), due_by=due_by
        )
        if claim is not None:
            item = claim.item
            self.audit.append(
                "claimed",
                request_id=item.request_id,
                worker=name,
                attempt=item.attempts,
                account=item.account,
            )
        return claim

    def _account_refused(self, claim: Claim, exc: LoginRejected) -> None:
        item = claim.item
        if item.system is not None and item.account is not None:
            # The runtime has done so already; once more in case it had no table to write.
            self.queue.disable_account(item.system, item.account, reason=str(exc))
            logger.error("{}: account {} disabled: {}", item.system, item.account, exc)
        self._release(claim, "account refused at login")

    def _fail_internal(self, claim: Claim, exc: Exception) -> None:
        delay = self.retry.delay_s(claim.item.attempts)
        try:
            self.queue.fail(
                claim,
                error=f"Internal error ({exc.__class__.__name__}); see the log and report it.",
                retry_at=utcnow() + timedelta(seconds=delay),
            )
        except StamplessError as again:
            logger.warning("Could not hand {} back: {}", claim.request_id, again)
        if claim.item.system:
            self.circuits.cancel_trial(claim.item.system)

    def _release(self, claim: Claim, why: str) -> None:
        try:
            self.queue.release(claim)
        except StamplessError as exc:
            logger.warning("Could not release {}: {}", claim.request_id, exc)
            return
        if claim.item.system:
            self.circuits.cancel_trial(claim.item.system)
        self.stats.released += 1
        self.audit.append("released", request_id=claim.request_id, reason=why)

    # -- one item ------------------------------------------------------------------------

    async def handle(self, claim: Claim) -> None:
        """Run one claimed item to a terminal state, a scheduled retry, or a release."""
        item = claim.item
        opts = self.options
        existing = read_verdict(self.outbox_dir, item.request_id)
        if existing is not None:
            if not answers(existing, item):
                self._refuse_conflict(claim, "in the outbox")
                return
            logger.info("{} already has a verdict in the outbox; not run again.", item.request_id)
            self._complete(claim, existing)
            return
        waiting = self.review.get(item.request_id)
        if waiting is not None:
            if not answers(waiting.verdict, item):
                # The reviewer's decision would settle this item: it must be for this content.
                self._refuse_conflict(claim, "waiting for a reviewer")
                return
            self.queue.complete(
                claim, state=ItemState.review, verdict=None, sla_met=None, finished_at=utcnow()
            )
            self._settle_if_decided(item.request_id)
            return
        if item.attempts > opts.max_attempts:
            await self._give_up(claim, f"it failed {item.attempts - 1} times ({item.last_error})")
            return
        if item.tier is not Tier.instant and self._too_late(item, utcnow()):
            # The robot refuses to run past the deadline, and an attempt that cannot end
            # in time only burns an account and the department's patience: a person
            # takes it from here.
            late = utcnow() >= item.deadline
            why = "its deadline passed" if late else "too little time was left before its deadline"
            why += " while it waited in the queue"
            if item.last_error:
                why += f" (last attempt: {item.last_error})"
            await self._give_up(claim, why)
            return
        system = item.system
        if system is not None and item.account is None and system in self.config.systems:
            # Claimed only to be escalated: every account of the system was refused.
            await self._give_up(
                claim,
                f"every account of department system {system} was refused at login and is "
                "disabled ('stampless accounts ls')",
            )
            return
        if system is not None and not self.circuits.allow(system):
            if self._too_late(item, utcnow()):
                await self._give_up(claim, f"department system {system} is down (circuit open)")
            else:
                self.queue.release(claim, retry_at=utcnow() + timedelta(seconds=1))
            return
        verdict = await self._run(claim)
        if verdict is not None:
            await self._finish(claim, verdict)

    async def _run(self, claim: Claim) -> Verdict | None:
        item = claim.item
        started = time.monotonic()
        attempt = asyncio.ensure_future(self.processor.process(Job.from_item(item)))
        heartbeat = asyncio.create_task(self._heartbeat(claim, attempt))
        try:
            verdict = await attempt
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if heartbeat.done() and not heartbeat.cancelled() and me and not me.cancelling():
                # The heartbeat stopped the attempt: the lease (and the account) went to
                # another worker, so this one must not touch the account any more.
                raise LeaseLost(
                    f"The lease on {item.request_id} was lost while it ran; the attempt was "
                    "stopped and the item runs again elsewhere."
                ) from None
            raise
        except LoginRejected as exc:
            # The account, not the system: never again with these credentials, and the
            # item goes to another account without losing an attempt.
            if item.system is not None:
                self.circuits.cancel_trial(item.system)
            self._account_refused(claim, exc)
            return None
        except SystemFailure as exc:
            if item.system is not None:
                self.circuits.record(item.system, exc, deadline=item.deadline)
            await self._retry_or_give_up(claim, exc)
            return None
        except SecretUnavailable as exc:
            # No item can succeed until an operator sets the secret, and none is to blame:
            # give this one back untouched and stop taking work (run/schedule exit 2).
            if item.system is not None:
                self.circuits.cancel_trial(item.system)
            self._release(claim, "a secret robot.toml names does not resolve")
            self._stop_for(exc)
            return None
        except (InputError, BusinessError) as exc:
            # Final, never retried as an outage: the request is wrong, or robot.toml cannot
            # process it (an unknown type or system, a task module that does not load).
            return await self.processor.fail(Job.from_item(item), reason=str(exc))
        except StamplessError:
            raise
        except Exception as exc:
            # A bug in a stage: count the attempt and back off like a system failure
            # (releasing would spin on the same item until its deadline).
            logger.opt(exception=exc).error(
                "{}: internal error in the pipeline: {}", item.request_id, exc.__class__.__name__
            )
            if item.system is not None:
                self.circuits.cancel_trial(item.system)
            failure = SystemFailure(
                f"Internal error ({exc.__class__.__name__}); see the log and report it."
            )
            await self._retry_or_give_up(claim, failure)
            return None
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await heartbeat
        if item.system is not None:
            self.circuits.record(item.system, None, deadline=item.deadline)
        self._learn(item.system, time.monotonic() - started)
        return verdict

    async def _heartbeat(self, claim: Claim, attempt: asyncio.Future[Verdict]) -> None:
        """Renew the lease every third of it; if it was lost, stop the attempt."""
        every = max(self.options.lease_s / 3, 0.05)
        while True:
            await asyncio.sleep(every)
            try:
                claim = await asyncio.to_thread(
                    self.queue.renew, claim, lease_s=self.options.lease_s
                )
            except LeaseLost:
                logger.warning("Lost the lease on {} while running it.", claim.request_id)
                attempt.cancel()
                return

    def _margin(self, system: str | None, item: QueueItem | None = None) -> float:
        """How long an attempt is expected to take (a running average per system).

        Before anything was learned, the default is capped at a quarter of the item's
        SLA, so a short SLA still leaves room for a retry.
        """
        learned = self._estimates.get(system)
        if learned is not None:
            return learned
        if item is None:
            return DEFAULT_ESTIMATE_S
        return expected_s((item.deadline - item.received_at).total_seconds())

    def _learn(self, system: str | None, seconds: float) -> None:
        old = self._estimates.get(system)
        new = seconds if old is None else 0.8 * old + 0.2 * seconds
        self._estimates[system] = new
        self._estimates[None] = max(self._estimates.get(None, 0.0) * 0.8 + 0.2 * seconds, 0.5)

    def _too_late(self, item: QueueItem, when: datetime) -> bool:
        return too_late(item.deadline, self._margin(item.system, item), when)

    async def _retry_or_give_up(self, claim: Claim, exc: SystemFailure) -> None:
        """The one retry layer (:mod:`stampless.retry`), through the queue: the item goes
        back with ``not_before``, or, when the policy gives up, to a person."""
        item = claim.item
        retry = self.retry.after(
            exc,
            attempt=item.attempts,
            deadline=item.deadline,
            margin_s=self._margin(item.system, item),
        )
        delay = retry.delay_s
        if retry.at is None:
            # Not retryable (a bug in the robot fails the same way every time): a person
            # gets the item now, with the reason; out of time or attempts: escalated.
            logger.warning("{}: {} {}; escalating.", item.request_id, exc, retry.why)
            await self._give_up(claim, str(exc))
            return
        self.queue.fail(claim, error=str(exc), retry_at=retry.at)
        self.stats.retried += 1
        self.audit.append(
            "retried",
            request_id=item.request_id,
            attempt=item.attempts,
            delay_s=round(delay, 2),
            error=str(exc),
        )
        logger.info(
            "{}: attempt {} failed ({}); retrying in {:.1f} s.",
            item.request_id,
            item.attempts,
            exc,
            delay,
        )

    async def _give_up(self, claim: Claim, why: str) -> None:
        # why is a user-facing message (never a secret): it is kept as the last error.
        """Robot and manual tiers go to a person; instant-tier items end in an error."""
        item = claim.item
        job = Job.from_item(item)
        if item.tier is Tier.instant:
            verdict = await self.processor.fail(job, reason=f"Could not verify in time: {why}")
        else:
            verdict = await self.processor.escalate(
                job, reason=f"The robot could not finish before the deadline: {why}"
            )
            self.stats.escalated += 1
        await self._finish(claim, verdict, error=why)

    async def _finish(self, claim: Claim, verdict: Verdict, *, error: str | None = None) -> None:
        item = claim.item
        if item.supersedes and verdict.supersedes is None:
            verdict = verdict.model_copy(update={"supersedes": item.supersedes})
        if verdict.verdict is VerdictKind.needs_review:
            reason = verdict.reasons[0] if verdict.reasons else "A person must decide."
            self.review.add(verdict, request=item.request, base_dir=item.base_dir, reason=reason)
            self.queue.complete(
                claim,
                state=ItemState.review,
                verdict=None,
                sla_met=None,
                finished_at=verdict.finished_at,
                error=error,
            )
            self.stats.review += 1
            logger.info("{} sent to manual review: {}", item.request_id, reason)
            self._settle_if_decided(item.request_id)
            return
        published = publish(self.outbox_dir, verdict, signer=self.signer)
        # On a conflict another holder of an expired lease wrote first, and its verdict
        # stands, unless `stampless verify` raced it with other content under this id.
        if published.conflict is not None and not answers(published.verdict, item):
            self._refuse_conflict(claim, "in the outbox")
            return
        self._complete(claim, published.verdict, error=error)

    def _settle_if_decided(self, request_id: str) -> None:
        """Settle an item just marked ``review`` whose decision is already made: a
        reviewer quick enough to decide before it was marked found nothing to settle."""
        decided = self.review.get(request_id)
        if decided is not None and decided.final is not None:
            settle_reviewed(self.queue, decided.final)

    def _refuse_conflict(self, claim: Claim, where: str) -> None:
        """Fail an item whose id `stampless verify` answered (``where``) for other content:
        that verdict is not this request's, and one id never holds two."""
        self.queue.complete(
            claim,
            state=ItemState.failed,
            verdict=VerdictKind.error,
            sla_met=None,
            finished_at=utcnow(),
            error=str(refuse_conflict(claim.item.request_id, where)),
        )
        self.stats.failed += 1

    def _complete(self, claim: Claim, verdict: Verdict, *, error: str | None = None) -> None:
        item = claim.item
        met = verdict.finished_at <= item.deadline
        state = ItemState.failed if verdict.verdict is VerdictKind.error else ItemState.done
        self.queue.complete(
            claim,
            state=state,
            verdict=verdict.verdict,
            sla_met=met,
            finished_at=verdict.finished_at,
            error=error
            or (verdict.reasons[0] if state is ItemState.failed and verdict.reasons else None),
        )
        if state is ItemState.failed:
            self.stats.failed += 1
        else:
            self.stats.done += 1
        if met:
            self.stats.sla_met += 1
        else:
            self.stats.sla_missed += 1
        self.stats.latencies.append((verdict.finished_at - item.received_at).total_seconds())
        if item.case_id:
            try:
                self.cases.settle(item.case_id)
            except StamplessError as exc:
                logger.error("Case {} could not be settled: {}", item.case_id, exc)
        self._kick_delivery()

    # -- background ----------------------------------------------------------------------

    def _kick_delivery(self, *, full_scan: bool = False) -> None:
        if self.delivery is None:
            return
        if self._delivery_task is not None and not self._delivery_task.done():
            self._delivery_again = True
            return
        self._delivery_task = asyncio.create_task(self._deliver(full_scan))

    async def _deliver(self, full_scan: bool) -> None:
        assert self.delivery is not None
        while True:
            self._delivery_again = False
            try:
                await asyncio.to_thread(self.delivery.deliver_pending, full_scan=full_scan)
                full_scan = False
            except Exception as exc:
                logger.error("Webhook delivery failed: {}", exc)
            if not self._delivery_again:
                return

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(self.options.maintenance_s)
            try:
                sweep_deadlines(self.queue, self.cases)
            except Exception as exc:
                logger.error("Deadline sweep failed: {}", exc)

    async def _report(self, progress: _Progress | None) -> None:
        every = 0.5 if progress is not None else self.options.progress_every_s
        while True:
            await asyncio.sleep(every)
            if progress is not None:
                progress.update()
            else:
                self._log_progress()

    def snapshot(self) -> dict[str, Any]:
        """Counts from the queue plus this process's rate and SLA risk."""
        counts = self.queue.counts()
        now = utcnow()
        at_risk = 0
        for item in self.queue.list(states=[ItemState.queued, ItemState.claimed], limit=5000):
            sla = self.config.tiers.sla_seconds(item.tier)
            if (item.deadline - now).total_seconds() < 0.25 * sla:
                at_risk += 1
        return {
            "done": counts[ItemState.done],
            "failed": counts[ItemState.failed],
            "review": counts[ItemState.review],
            "remaining": counts[ItemState.queued] + counts[ItemState.claimed],
            "running": counts[ItemState.claimed],
            "rate": self.stats.rate_per_min(),
            "at_risk": at_risk,
            "down": ", ".join(sorted(self.circuits.blocked())) or "none",
        }

    def _log_progress(self) -> None:
        s = self.snapshot()
        logger.info(
            "progress: done {done}, failed {failed}, in review {review}, remaining "
            "{remaining}, {rate:.1f}/min, SLA at risk {at_risk}, systems down: {down}",
            **s,
        )


def sweep_deadlines(queue: WorkQueue, cases: CaseStore) -> dict[str, list[str]]:
    """Flag overdue items and settle finished cases (the scheduled job).

    It settles no reviewed item: a decision settles its queue item in its own
    transaction (:meth:`stampless.review.abc.ReviewStore.decide`), and the outbox is
    never read to learn of one. A verdict file that appears in the outbox for an item in
    ``review`` by any other road leaves the item waiting for a reviewer, whose decision
    then meets that file (docs/review.md).
    """
    overdue = queue.mark_overdue()
    for rid in overdue:
        logger.warning("{} is past its deadline without a final verdict (overdue).", rid)
    return {"overdue": overdue, "cases": cases.settle_all()}


def _want_progress(opts: WorkerOptions) -> bool:
    if opts.progress is not None:
        return opts.progress
    return sys.stdout.isatty()


class _Progress:
    """The live progress table (rich) shown when stdout is a terminal."""

    def __init__(self, pool: WorkerPool) -> None:
        from rich.live import Live

        self.pool = pool
        self.live = Live(self._table(), refresh_per_second=2, transient=False)
        self.live.start()

    def _table(self) -> Any:
        from rich.table import Table

        s = self.pool.snapshot() if hasattr(self, "pool") else {}
        table = Table(title="stampless run", show_header=True)
        columns = ("done", "failed", "in review", "remaining", "per min", "SLA at risk", "down")
        for col in columns:
            table.add_column(col, justify="right")
        if s:
            table.add_row(
                str(s["done"]),
                str(s["failed"]),
                str(s["review"]),
                str(s["remaining"]),
                f"{s['rate']:.1f}",
                f"[red]{s['at_risk']}[/red]" if s["at_risk"] else "0",
                s["down"],
            )
        return table

    def update(self) -> None:
        self.live.update(self._table())

    def close(self) -> None:
        self.update()
        self.live.stop()
