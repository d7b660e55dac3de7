"""Contract tests of the work queue, run against every backend (today: SQLite)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from stampless.errors import InputError
from stampless.models import Request, Tier, VerdictKind, utcnow
from stampless.queue import ItemState, LeaseLost, WorkQueue
from stampless.queue.sqlite import SqliteQueue

ACCOUNTS = {"civil_affairs": ["ca1", "ca2"], "market_supervision": ["ms1"]}


def sqlite_backend(path: Path) -> WorkQueue:
    return SqliteQueue(path / "queue.db", ACCOUNTS)


BACKENDS: dict[str, Callable[[Path], WorkQueue]] = {"sqlite": sqlite_backend}


@pytest.fixture(params=sorted(BACKENDS))
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkQueue]:
    q = BACKENDS[request.param](tmp_path)
    yield q
    q.close()


def add(
    q: WorkQueue,
    rid: str,
    *,
    system: str | None = "civil_affairs",
    priority: int = 0,
    sla_s: float = 180,
    tier: Tier = Tier.robot,
) -> bool:
    now = utcnow()
    req = Request(id=rid, type="marriage_certificate", claim={}, priority=priority)
    return q.enqueue(
        req,
        base_dir=Path("/spool") / rid,
        tier=tier,
        system=system,
        received_at=now,
        deadline=now + timedelta(seconds=sla_s),
    ).added


def test_enqueue_is_idempotent(queue: WorkQueue) -> None:
    assert add(queue, "R1")
    assert not add(queue, "R1", priority=9)
    item = queue.get("R1")
    assert item is not None and item.priority == 0 and item.state is ItemState.queued
    assert queue.counts()[ItemState.queued] == 1


def test_claim_order_deadline_then_priority(queue: WorkQueue) -> None:
    add(queue, "late", sla_s=600, system=None)
    add(queue, "low", sla_s=60, priority=0, system=None)
    add(queue, "high", sla_s=60, priority=5, system=None)
    # "low" and "high" have (almost) the same deadline; compare with one clock.
    order = []
    while (c := queue.claim("w", lease_s=30)) is not None:
        order.append(c.request_id)
    assert order[-1] == "late"
    assert set(order[:2]) == {"low", "high"}


def test_account_lock_held_for_lease(queue: WorkQueue) -> None:
    for rid in ("A", "B", "C"):
        add(queue, rid)
    a = queue.claim("w1", lease_s=30)
    b = queue.claim("w2", lease_s=30)
    assert a and b and {a.item.account, b.item.account} == {"ca1", "ca2"}
    assert queue.claim("w3", lease_s=30) is None  # both accounts busy
    queue.complete(
        a, state=ItemState.done, verdict=VerdictKind.verified, sla_met=True, finished_at=utcnow()
    )
    c = queue.claim("w3", lease_s=30)
    assert c is not None and c.item.account == a.item.account


def test_expired_lease_returns_item_and_fences_old_worker(queue: WorkQueue) -> None:
    add(queue, "A", system="market_supervision")
    first = queue.claim("dead", lease_s=30)
    assert first is not None
    later = utcnow() + timedelta(seconds=31)
    second = queue.claim("alive", lease_s=30, now=later)
    assert second is not None and second.request_id == "A" and second.item.attempts == 2
    with pytest.raises(LeaseLost):
        queue.complete(
            first,
            state=ItemState.done,
            verdict=VerdictKind.verified,
            sla_met=True,
            finished_at=utcnow(),
        )
    done = queue.complete(
        second, state=ItemState.done, verdict=VerdictKind.mismatch, sla_met=True, finished_at=later
    )
    assert done.state is ItemState.done and done.verdict is VerdictKind.mismatch


def test_fail_backs_off_and_release_gives_attempt_back(queue: WorkQueue) -> None:
    add(queue, "A")
    c = queue.claim("w", lease_s=30)
    assert c is not None
    retry_at = utcnow() + timedelta(seconds=60)
    item = queue.fail(c, error="Department down; retrying.", retry_at=retry_at)
    assert item.state is ItemState.queued and item.attempts == 1 and item.last_error
    assert queue.claim("w", lease_s=30) is None  # not before retry_at
    assert queue.retry("A").not_before is None
    c2 = queue.claim("w", lease_s=30)
    assert c2 is not None and c2.item.attempts == 2
    queue.release(c2)
    again = queue.get("A")
    assert again is not None and again.attempts == 1 and again.state is ItemState.queued
    # The account lock went with the release.
    assert queue.claim("w", lease_s=30) is not None


def test_skip_systems_unless_due(queue: WorkQueue) -> None:
    add(queue, "far", sla_s=600)
    assert queue.claim("w", lease_s=30, skip_systems={"civil_affairs"}) is None
    due_by = utcnow() + timedelta(seconds=700)
    c = queue.claim("w", lease_s=30, skip_systems={"civil_affairs"}, due_by=due_by)
    assert c is not None and c.request_id == "far"


def test_overdue_and_settle(queue: WorkQueue) -> None:
    add(queue, "M", tier=Tier.manual, sla_s=1)
    c = queue.claim("w", lease_s=30)
    assert c is not None
    queue.complete(c, state=ItemState.review, verdict=None, sla_met=None, finished_at=utcnow())
    assert queue.mark_overdue(now=utcnow() + timedelta(seconds=5)) == ["M"]
    assert queue.mark_overdue(now=utcnow() + timedelta(seconds=5)) == []
    assert [i.request_id for i in queue.list(states=[ItemState.review])] == ["M"]
    assert queue.settle("M", verdict=VerdictKind.verified, sla_met=False, finished_at=utcnow())
    item = queue.get("M")
    assert item is not None and item.state is ItemState.done and item.sla_met is False
    with pytest.raises(InputError):
        queue.retry("M")


def _claimer(path: str, n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    q = SqliteQueue(Path(path), ACCOUNTS)
    got = []
    for _ in range(n):
        c = q.claim(f"p{multiprocessing.current_process().pid}", lease_s=60)
        if c is not None:
            got.append((c.request_id, c.item.account))
    out.put(got)


def test_concurrent_processes_never_share_an_account(tmp_path: Path) -> None:
    q = sqlite_backend(tmp_path)
    for i in range(20):
        add(q, f"R{i}")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_claimer, args=(str(tmp_path / "queue.db"), 10, out)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=30) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    claimed = [c for r in results for c in r]
    # Two accounts, leases of 60 s, no completions: exactly two claims in all.
    assert len(claimed) == 2
    assert {acc for _, acc in claimed} == {"ca1", "ca2"}
