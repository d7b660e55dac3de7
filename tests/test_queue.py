"""Contract tests of the work queue, run against every backend: SQLite and PostgreSQL.

The PostgreSQL runs use a real server (conftest's ``postgres_url``: a schema of their own).
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from stampless.errors import InputError
from stampless.models import Request, Tier, VerdictKind, utcnow
from stampless.queue import ItemState, LeaseLost, WorkQueue
from stampless.queue.postgres import PostgresQueue
from stampless.queue.sqlite import SqliteQueue

ACCOUNTS = {"civil_affairs": ["ca1", "ca2"], "market_supervision": ["ms1"]}


def open_backend(backend: str, where: str) -> WorkQueue:
    """Open the store at ``where`` (a file, or a database URL) on ``backend``."""
    if backend == "postgres":
        return PostgresQueue(where, ACCOUNTS)
    return SqliteQueue(Path(where), ACCOUNTS)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """The backend under test and where its store is: every contract test runs on both."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("postgres_url")
    return "sqlite", str(tmp_path / "queue.db")


@pytest.fixture
def reopen(store: tuple[str, str]) -> Iterator[Callable[[], WorkQueue]]:
    """Open the test's store once more, as another process would."""
    opened: list[WorkQueue] = []

    def open_again() -> WorkQueue:
        opened.append(open_backend(*store))
        return opened[-1]

    yield open_again
    for q in opened:
        q.close()


@pytest.fixture
def queue(reopen: Callable[[], WorkQueue]) -> WorkQueue:
    return reopen()


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


def test_tally_counts_by_state_and_tier_with_sla_outcomes(queue: WorkQueue) -> None:
    for rid in ("A", "B", "C"):
        add(queue, rid)
    add(queue, "E", system=None, tier=Tier.instant)
    for met in (True, False):
        claim = queue.claim("w", lease_s=30)
        assert claim is not None
        queue.complete(
            claim, state=ItemState.done, verdict=VerdictKind.verified, sla_met=met,
            finished_at=utcnow(),
        )  # fmt: skip
    rows = {(t.state, t.tier): t for t in queue.tally()}
    done = [t for (state, _), t in rows.items() if state is ItemState.done]
    assert sum(t.items for t in done) == 2
    assert sum(t.sla_met for t in done) == 1 and sum(t.sla_missed for t in done) == 1
    assert sum(t.items for t in rows.values()) == 4
    assert sum(t.items for t in rows.values() if t.state is ItemState.queued) == 2


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


def test_renew_keeps_the_item_and_the_account(queue: WorkQueue) -> None:
    add(queue, "A", system="market_supervision")
    add(queue, "B", system="market_supervision")
    claim = queue.claim("w", lease_s=0.3)
    assert claim is not None
    renewed = queue.renew(claim, lease_s=60)
    assert renewed.expires > claim.expires
    import time

    time.sleep(0.4)  # past the first lease, within the renewed one
    assert queue.claim("other", lease_s=30) is None  # ms1 is still held
    assert queue.sweep_leases() == []
    queue.release(renewed)
    with pytest.raises(LeaseLost):
        queue.renew(renewed, lease_s=60)


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


def test_a_disabled_account_is_never_handed_out_until_enabled(
    queue: WorkQueue, reopen: Callable[[], WorkQueue]
) -> None:
    add(queue, "A")
    add(queue, "B")
    queue.disable_account("civil_affairs", "ca1", reason="The system refused the login.")
    queue.disable_account("civil_affairs", "ca1", reason="A later refusal.")  # first one kept
    a = queue.claim("w", lease_s=30)
    assert a is not None and a.item.account == "ca2"
    # ca1 is free but disabled, ca2 is busy: nothing to claim.
    assert queue.claim("w", lease_s=30) is None
    # Every process reads the same table.
    other = reopen()
    assert other.disabled_accounts("civil_affairs") == {"ca1": "The system refused the login."}
    states = {(s.system, s.account): s for s in other.account_states()}
    assert set(states) == {
        ("civil_affairs", "ca1"),
        ("civil_affairs", "ca2"),
        ("market_supervision", "ms1"),
    }
    assert (
        not states[("civil_affairs", "ca1")].usable and states[("civil_affairs", "ca1")].changed_at
    )
    assert (
        states[("civil_affairs", "ca2")].held_by == "A"
        and states[("market_supervision", "ms1")].usable
    )
    assert other.enable_account("civil_affairs", "ca1")
    assert not other.enable_account("civil_affairs", "ca1")  # already usable
    b = queue.claim("w", lease_s=30)
    assert b is not None and b.item.account == "ca1"


def test_a_system_without_a_usable_account_waits_until_due(queue: WorkQueue) -> None:
    add(queue, "far", system="market_supervision", sla_s=600)
    queue.disable_account("market_supervision", "ms1", reason="Refused.")
    assert queue.claim("w", lease_s=30) is None
    due_by = utcnow() + timedelta(seconds=700)
    c = queue.claim("w", lease_s=30, due_by=due_by)
    # Claimed to be escalated: with no account, so nothing can call the system.
    assert c is not None and c.request_id == "far" and c.item.account is None


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


def _claimer(store: tuple[str, str], n: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    q = open_backend(*store)
    got = []
    for _ in range(n):
        c = q.claim(f"p{multiprocessing.current_process().pid}", lease_s=60)
        if c is not None:
            got.append((c.request_id, c.item.account))
    out.put(got)


def test_concurrent_processes_never_share_an_account(
    queue: WorkQueue, store: tuple[str, str]
) -> None:
    for i in range(20):
        add(queue, f"R{i}")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(store, 10, out)) for _ in range(3)]
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


# -- intake: submit, inbox, HTTP -----------------------------------------------------------


def _intake(tmp_path: Path) -> tuple[Any, Any]:
    from test_worker import FileRouter, make_config

    from stampless.intake import Intake
    from stampless.queue import open_queue

    config = make_config(tmp_path / "var")
    queue = open_queue(config)
    return Intake(config, queue, router=FileRouter()), queue


def _request_file(folder: Path, rid: str, **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rid}.jpg").write_bytes(b"scan bytes " + rid.encode())
    body = {
        "id": rid,
        "type": "marriage_certificate",
        "claim": {"system": "civil_affairs"},
        "scan": f"{rid}.jpg",
        **extra,
    }
    path = folder / f"{rid}.json"
    path.write_text(json.dumps(body), encoding="utf-8")
    return path


def test_submit_spools_and_dedupes(tmp_path: Path) -> None:
    intake, queue = _intake(tmp_path)
    path = _request_file(tmp_path / "in", "REQ-A")
    [first] = intake.submit_files([path])
    assert first.added and "queued" in first.message
    item = queue.get("REQ-A")
    assert item is not None and item.base_dir == intake.spool_dir / "REQ-A"
    assert (item.base_dir / "scan.jpg").read_bytes() == b"scan bytes REQ-A"
    assert item.request.scan == "scan.jpg"
    deadline_s = (item.deadline - item.received_at).total_seconds()
    assert deadline_s == pytest.approx(180)
    [again] = intake.submit_files([path])
    assert not again.added
    assert again.message == "REQ-A already queued (state queued); nothing changed."
    assert len(queue.list()) == 1
    # One bad file among good ones: nothing at all is queued or spooled.
    good = _request_file(tmp_path / "in", "REQ-B")
    bad = _request_file(tmp_path / "in", "REQ-C", claim={"system": "nowhere"})
    with pytest.raises(InputError, match="REQ-C"):
        intake.submit_files([good, bad])
    assert queue.get("REQ-B") is None
    assert sorted(p.name for p in intake.spool_dir.iterdir()) == ["REQ-A"]
    trick = tmp_path / "in" / "trick.json"
    trick.write_text(json.dumps({"id": "../etc", "type": "x", "claim": {}}))
    with pytest.raises(InputError, match="id"):
        intake.submit_files([trick])


def test_inbox_moves_to_done_or_rejected(tmp_path: Path) -> None:
    from stampless.intake import poll_inbox

    intake, queue = _intake(tmp_path)
    inbox = tmp_path / "inbox"
    _request_file(inbox, "IN-1")
    (inbox / "broken.json").write_text("{not json")
    report = poll_inbox(intake, inbox, min_age_s=0)
    assert report.done == ["IN-1.json"] and report.rejected == ["broken.json"]
    assert (inbox / "done" / "IN-1.json").is_file()
    reason = (inbox / "rejected" / "broken.json.error.txt").read_text()
    assert "not valid JSON" in reason
    assert queue.get("IN-1") is not None
    assert sorted(p.name for p in inbox.glob("*.json")) == []
    # A file still being written (too young) waits for the next poll.
    _request_file(inbox, "IN-2")
    assert poll_inbox(intake, inbox, min_age_s=60).done == []
    assert queue.get("IN-2") is None


def test_http_intake_needs_token_and_is_idempotent(tmp_path: Path) -> None:
    import base64

    import httpx

    from stampless.intake import IntakeServer

    intake, queue = _intake(tmp_path)
    server = IntakeServer(intake, "s3cret-token").start()
    try:
        body = {
            "request": {
                "id": "WEB-1",
                "type": "marriage_certificate",
                "claim": {"system": "civil_affairs"},
            },
            "scan_base64": base64.b64encode(b"jpeg!").decode(),
            "scan_name": "photo.JPG",
        }
        url = server.url + "/requests"
        assert httpx.post(url, json=body, timeout=10).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(url, json=body, headers=wrong, timeout=10).status_code == 401
        auth = {"Authorization": "Bearer s3cret-token"}
        r1 = httpx.post(url, json=body, headers=auth, timeout=10)
        assert r1.status_code == 201 and r1.json()["added"] is True
        r2 = httpx.post(url, json=body, headers=auth, timeout=10)
        assert r2.status_code == 200 and "nothing changed" in r2.json()["message"]
        sneaky = {**body, "request": {**body["request"], "id": "WEB-2", "scan": "/etc/passwd"}}
        del sneaky["scan_base64"]
        r3 = httpx.post(url, json=sneaky, headers=auth, timeout=10)
        assert r3.status_code == 400 and "server paths" in r3.json()["error"]
        status = httpx.get(server.url + "/requests/WEB-1", headers=auth, timeout=10)
        assert status.json()["state"] == "queued"
    finally:
        server.stop()
    item = queue.get("WEB-1")
    assert item is not None and (item.base_dir / "scan.jpg").read_bytes() == b"jpeg!"
    assert queue.get("WEB-2") is None
    assert not any(p.name.startswith(".incoming") for p in intake.spool_dir.iterdir())


@pytest.mark.slow
def test_cli_submit_with_real_document_types(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from stampless.fixtures.scans import generate

    repo = Path(__file__).resolve().parents[1]
    [scan] = generate(tmp_path / "scans", "marriage_certificate", 1, 11, "easy", 0.0, 0.0)
    request = scan.with_suffix(".request.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "B-1", "type": "marriage_certificate", "claim": {}}))
    env = {**os.environ, "STAMPLESS__PROJECT__VAR_DIR": str(tmp_path / "var")}

    def run(*files: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stampless", "--config", str(repo / "robot.toml"), "submit"]
            + [str(f) for f in files],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    rejected = run(request, bad)
    assert rejected.returncode == 2, rejected.stderr
    assert len(rejected.stderr.strip().splitlines()) == 1 and "bad.json" in rejected.stderr
    assert not (tmp_path / "var" / "spool").exists() or not any(
        (tmp_path / "var" / "spool").iterdir()
    )
    ok = run(request)
    assert ok.returncode == 0, ok.stderr
    rid = json.loads(request.read_text())["id"]
    assert f"{rid} queued (robot tier" in ok.stdout
    dup = run(request)
    assert dup.returncode == 0 and "nothing changed" in dup.stdout
