"""The one retry layer: whether a failed attempt is tried again, when, and when not.

A :class:`~stampless.errors.SystemFailure` is tried again with exponential backoff and
jitter (``[queue] backoff_base_s``, ``backoff_max_s``) while attempts remain (``[queue]
max_attempts``) and a retry can still finish before the job's deadline. The queue's
workers apply :class:`RetryPolicy` through the queue (the item goes back with
``not_before``; another worker may take it); ``stampless verify`` applies the same policy
in its own process (:func:`run_with_retries`). Nothing below retries: the robot runtime
makes one attempt per call (logging in again when the system logged it out), and the
pipeline one per job, so a request meets at most ``max_attempts`` lookups, not the
product of two nested loops.

Each attempt's outcome goes to the department system's circuit breaker
(:meth:`stampless.circuit.CircuitBreaker.record`), the one breaker of the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from loguru import logger

from stampless.delivery import backoff_s
from stampless.errors import SystemFailure
from stampless.models import utcnow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stampless.circuit import CircuitBreaker
    from stampless.config import Config
    from stampless.intake import Job
    from stampless.models import Verdict
    from stampless.worker import Processor

T = TypeVar("T")
DEFAULT_ESTIMATE_S = 5.0  # how long an attempt takes, before any was timed


@dataclass(frozen=True)
class Retry:
    """What to do after a failed attempt: ``at`` None means give up, for ``why``."""

    at: datetime | None
    delay_s: float
    why: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is tried again (robot.toml's ``[queue]``)."""

    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        q = config.queue
        return cls(q.max_attempts, q.backoff_base_s, q.backoff_max_s)

    def delay_s(self, attempt: int) -> float:
        """The back-off after ``attempt`` failures, with jitter."""
        return backoff_s(attempt, self.backoff_base_s, self.backoff_max_s)

    def after(
        self,
        error: SystemFailure,
        *,
        attempt: int,
        deadline: datetime,
        margin_s: float,
        now: datetime | None = None,
    ) -> Retry:
        """The retry after attempt number ``attempt`` failed with ``error``.

        ``margin_s``: how long an attempt is expected to take; a retry that could not
        finish before ``deadline`` is not made.
        """
        delay = self.delay_s(attempt)
        at = (now or utcnow()) + timedelta(seconds=delay)
        if not error.retryable:
            # A bug in the robot (or a selector that matches several elements) fails the
            # same way every time.
            return Retry(None, delay, "Not retried")
        if attempt >= self.max_attempts or too_late(deadline, margin_s, at):
            return Retry(None, delay, "No time or attempts left")
        return Retry(at, delay)


def too_late(deadline: datetime, margin_s: float, when: datetime) -> bool:
    """Whether an attempt started at ``when`` and taking ``margin_s`` ends past ``deadline``."""
    return when + timedelta(seconds=margin_s) >= deadline


def expected_s(window_s: float) -> float:
    """An attempt's expected time before any was timed: capped at a quarter of the SLA
    window, so a short SLA still leaves room for a retry."""
    return min(DEFAULT_ESTIMATE_S, 0.25 * window_s)


async def retried(
    attempt: Callable[[int], Awaitable[T]],
    *,
    policy: RetryPolicy,
    deadline: datetime,
    margin_s: float,
    what: str,
    first: int = 1,
    failed: Callable[[SystemFailure], bool] | None = None,
) -> T:
    """``attempt(n)`` for n = ``first``, ``first`` + 1, ... until one returns, or the policy
    gives up and the last failure is raised. ``failed`` sees each failure first; when it
    answers True the failure is raised at once. ``what`` names the work in the log."""
    number = first
    while True:
        try:
            return await attempt(number)
        except SystemFailure as exc:
            retry = policy.after(exc, attempt=number, deadline=deadline, margin_s=margin_s)
            if (failed is not None and failed(exc)) or retry.at is None:
                raise
            logger.info(
                "{}: attempt {} failed ({}); retrying in {:.1f} s.",
                what,
                number,
                exc,
                retry.delay_s,
            )
            await asyncio.sleep(retry.delay_s)
            number += 1


async def run_with_retries(
    processor: Processor, job: Job, *, policy: RetryPolicy, circuits: CircuitBreaker
) -> Verdict:
    """Process ``job`` in this process, retried as :class:`RetryPolicy` says, each
    attempt's outcome told to the system's circuit breaker.

    The last failure is raised when the policy gives up, or at once when the circuit
    opens (the next attempt would not reach the system either); ``stampless verify``
    exits 4 with it. Business outcomes are verdicts; input errors are raised at once.
    """
    system = job.system

    def failed(exc: SystemFailure) -> bool:
        if system is None:
            return False
        circuits.record(system, exc, deadline=job.deadline)
        return circuits.is_open(system)

    verdict = await retried(
        lambda number: processor.process(dataclasses.replace(job, attempt=number)),
        policy=policy,
        deadline=job.deadline,
        margin_s=expected_s((job.deadline - job.received_at).total_seconds()),
        what=job.id,
        first=job.attempt,
        failed=failed,
    )
    if system is not None:
        circuits.record(system, None, deadline=job.deadline)
    return verdict
