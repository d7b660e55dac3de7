"""The work queue's interface: what a backend must do, written on each method.

Workers talk only to :class:`WorkQueue`, so the shared PostgreSQL backend
(``queue/postgres.py``, ``[store] backend = "postgres"``) replaces the embedded SQLite one
(``queue/sqlite.py``) without touching them. Every backend must pass the contract tests
in ``tests/test_queue.py``.

Life of an item::

    enqueue -> queued --claim--> claimed --complete--> done | review | failed
                  ^                 |
                  +--- fail(retry_at) / release / lease expired ---+

Accounts: a claim takes one of the system's accounts whose lock is free and which is
not disabled. ``disable_account`` (a refused login) takes an account out of use for
every worker and process until ``enable_account`` (``stampless accounts enable``).

``attempts`` counts claims. ``release`` (graceful shutdown) gives the attempt back;
``fail`` and an expired lease keep it. ``done``, ``review`` and ``failed`` are terminal
for the queue, except that a reviewer's decision settles a ``review`` item as ``done``
(:func:`settlement`, in the decision's own transaction: the review store shares the
queue's database on every backend, and nothing reads the outbox to settle an item).
The ``overdue`` flag is set by the deadline sweep on items still unfinished after their
deadline.
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from loguru import logger
from pydantic import BaseModel, ConfigDict

from stampless.errors import StamplessError
from stampless.models import Request, Tier, Verdict, VerdictKind, utcnow


class ItemState(StrEnum):
    queued = "queued"
    claimed = "claimed"
    done = "done"  # a final verdict is in the outbox
    review = "review"  # waiting for a person in the review store
    failed = "failed"  # finished with an "error" verdict


TERMINAL_STATES = frozenset({ItemState.done, ItemState.review, ItemState.failed})


class LeaseLost(StamplessError):
    """The claim's lease expired and the item went back to the queue (or to another worker)."""


class QueueItem(BaseModel):
    """One request in the queue, with its scheduling and outcome fields."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    type: str
    tier: Tier
    priority: int
    system: str | None
    case_id: str | None
    base_dir: Path
    request: Request
    state: ItemState
    received_at: datetime
    deadline: datetime
    not_before: datetime | None = None
    attempts: int = 0
    account: str | None = None
    lease_owner: str | None = None
    lease_expires: datetime | None = None
    last_error: str | None = None
    verdict: VerdictKind | None = None
    sla_met: bool | None = None
    finished_at: datetime | None = None
    overdue: bool = False
    supersedes: str | None = None
    # SHA-256 of the request's content (stampless.idempotency.request_digest); None for
    # items queued before digests were kept.
    content_sha256: str | None = None


class Claim(BaseModel):
    """A worker's hold on one item: the item as claimed plus the lease token that proves it."""

    model_config = ConfigDict(frozen=True)

    item: QueueItem
    token: str
    worker: str
    expires: datetime

    @property
    def request_id(self) -> str:
        return self.item.request_id


class AccountState(BaseModel):
    """One service account as the queue sees it (``stampless accounts ls``)."""

    model_config = ConfigDict(frozen=True)

    system: str
    account: str
    usable: bool
    reason: str | None = None  # why it was disabled: a user-facing message, never a secret
    changed_at: datetime | None = None  # when it was last disabled or enabled
    held_by: str | None = None  # the request whose claim holds the account now


class Tally(BaseModel):
    """How many items of one tier are in one state; of those finished, the SLA outcomes."""

    state: ItemState
    tier: Tier
    items: int
    sla_met: int = 0
    sla_missed: int = 0


class EnqueueResult(BaseModel):
    """What ``enqueue`` did: ``added`` is False when the id was already known."""

    added: bool
    item: QueueItem


class WorkQueue(ABC):
    """A durable queue of verification requests with leases and per-account locks."""

    @abstractmethod
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
        """Add ``request`` in state queued, unless its id is already known.

        The request id is the idempotency key: a second enqueue of the same id changes
        nothing (whatever its state) and returns ``added=False`` with the stored item,
        whose ``content_sha256`` the caller compares with its own to refuse a known id
        sent with other content. ``base_dir`` is where the request's files live (the
        spool folder).
        """

    @abstractmethod
    def claim(
        self,
        worker: str,
        *,
        lease_s: float,
        skip_systems: Collection[str] = (),
        due_by: datetime | None = None,
        now: datetime | None = None,
    ) -> Claim | None:
        """Atomically take the next runnable item, or return None.

        Runnable: state queued and ``not_before`` passed. Order: earliest deadline, then
        highest priority, then oldest. An item with a ``system`` also needs one of that
        system's accounts whose lock is free and which is not disabled; the claim takes
        that lock together with the lease, both expiring at ``now + lease_s``, so two
        workers never hold one account at once. Items without a system need no account.
        Items of ``skip_systems`` (circuit open) are passed over unless their deadline is
        at or before ``due_by`` (so they can be escalated). Items of a system whose every
        account is disabled are passed over the same way, and when due are claimed with
        ``account`` None (the worker escalates them without calling the system). The
        claim counts one attempt. Expired leases are returned to the queue first.
        """

    @abstractmethod
    def renew(self, claim: Claim, *, lease_s: float) -> Claim:
        """Extend the lease and the account lock; raise :class:`LeaseLost` if lost."""

    @abstractmethod
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
        """Finish the item in a terminal ``state`` and free the account lock.

        Raises :class:`LeaseLost` if the claim's token no longer holds the item (the
        caller's outbox write is idempotent, so the other holder's result stands).
        """

    @abstractmethod
    def fail(self, claim: Claim, *, error: str, retry_at: datetime) -> QueueItem:
        """Give the item back for a retry at ``retry_at`` (attempt kept, error recorded).

        ``error`` is a user-facing message and must hold no secret. Raises LeaseLost.
        """

    @abstractmethod
    def release(self, claim: Claim, *, retry_at: datetime | None = None) -> None:
        """Give the item back untouched (shutdown, circuit open): the attempt is not
        counted. Quietly does nothing if the lease was already lost."""

    @abstractmethod
    def disable_account(self, system: str, account: str, *, reason: str) -> None:
        """Take ``account`` of ``system`` out of use until :meth:`enable_account`.

        From then on no claim, in any process, hands it out. ``reason`` is a
        user-facing message without secrets. Disabling a disabled account keeps its
        first reason and time.
        """

    @abstractmethod
    def enable_account(self, system: str, account: str) -> bool:
        """Put a disabled account back in use; True if it was disabled."""

    @abstractmethod
    def account_states(self) -> builtins.list[AccountState]:
        """Every account the queue knows (robot.toml's, and any disabled one), by system
        and name, each usable or disabled (with why and since when) and who holds it."""

    def disabled_accounts(self, system: str) -> dict[str, str]:
        """The disabled accounts of ``system``: account name -> why."""
        return {
            s.account: s.reason or ""
            for s in self.account_states()
            if s.system == system and not s.usable
        }

    @abstractmethod
    def get(self, request_id: str) -> QueueItem | None:
        """The item with this id, or None."""

    @abstractmethod
    def list(
        self,
        *,
        states: Iterable[ItemState] | None = None,
        type: str | None = None,
        case_id: str | None = None,
        limit: int = 1000,
    ) -> builtins.list[QueueItem]:
        """Items, filtered; overdue first, then by deadline."""

    @abstractmethod
    def counts(self) -> dict[ItemState, int]:
        """How many items are in each state (every state present, zero if none)."""

    @abstractmethod
    def tally(self) -> builtins.list[Tally]:
        """Items counted by state and tier (only pairs that occur), each with how many
        finished within their promised time and how many did not (for /metrics)."""

    @abstractmethod
    def sweep_leases(self, *, now: datetime | None = None) -> builtins.list[str]:
        """Return items whose lease expired to queued (attempt kept); their ids."""

    @abstractmethod
    def mark_overdue(self, *, now: datetime | None = None) -> builtins.list[str]:
        """Flag unfinished (queued, claimed, review) items past their deadline; new ids."""

    @abstractmethod
    def settle(
        self, request_id: str, *, verdict: VerdictKind, sla_met: bool | None, finished_at: datetime
    ) -> bool:
        """Mark a ``review`` item ``done`` once its decision is in the outbox; True if changed."""

    @abstractmethod
    def retry(self, request_id: str) -> QueueItem:
        """Make a queued item waiting for its back-off runnable now (operator's command).

        Raises InputError for an unknown id or an item that is not queued (a finished
        item's verdict is never changed; re-check it under a new id instead).
        """

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake``, from another thread, whenever an item may have become claimable
        (queued, given back, an account freed or enabled); return a function that stops
        listening. None (the default): the backend has no such events, and workers poll.

        A wake is a hint, not a promise: the claim that follows may find nothing, and an
        item whose back-off ends sends no event, so workers still claim now and then.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release the backend's resources."""


def answers(verdict: Verdict, item: QueueItem) -> bool:
    """True when ``verdict`` was made for this item's content (or either is from before
    digests were kept, when a crash after the outbox write is the likely story)."""
    if verdict.request_sha256 is None or item.content_sha256 is None:
        return True
    return verdict.request_sha256 == item.content_sha256


class Settlement(BaseModel):
    """What a reviewer's final verdict makes of the queue's ``review`` item."""

    verdict: VerdictKind
    sla_met: bool | None
    finished_at: datetime


def settlement(final: Verdict, item: QueueItem) -> Settlement:
    """How ``final`` (a reviewer's decision) settles ``item``: its verdict, within the
    item's deadline or not; an ``error`` when the decision was made for other content
    under the same id (a race the worker's check missed), never reported as this
    request's verdict."""
    if not answers(final, item):
        from stampless.idempotency import refuse_conflict

        logger.error("{}", refuse_conflict(item.request_id, "in the outbox"))
        return Settlement(verdict=VerdictKind.error, sla_met=None, finished_at=utcnow())
    return Settlement(
        verdict=final.verdict,
        sla_met=final.finished_at <= item.deadline,
        finished_at=final.finished_at,
    )


def settle_reviewed(queue: WorkQueue, final: Verdict) -> bool:
    """Settle the queue's ``review`` item that ``final`` decides; True if it changed."""
    item = queue.get(final.request_id)
    if item is None or item.state is not ItemState.review:
        return False
    return queue.settle(item.request_id, **settlement(final, item).model_dump())
