"""Contract tests of the review store and the reviewer accounts, run against every backend.

SQLite (the review items in ``queue.db`` with the queue's, accounts in a JSON file) and
PostgreSQL (one database for review items, accounts and the queue: conftest's
``postgres_url``, a real server). Each store is opened again for every "process" or
"machine", as the console and the workers of a deployment open it. The console itself
is driven in ``tests/test_review.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from deployment_keys import SIGNER

from stampless.audit import AuditLog, entries_for
from stampless.config import Config
from stampless.errors import InputError
from stampless.models import Request, Tier, Verdict, VerdictKind, utcnow
from stampless.outbox import OutboxConflict, read_verdict, write_verdict
from stampless.queue import ItemState, WorkQueue
from stampless.queue.postgres import PostgresQueue
from stampless.queue.sqlite import SqliteQueue
from stampless.review.abc import ReviewStore, create_table
from stampless.review.postgres import PostgresReviewStore, PostgresUserStore
from stampless.review.sqlite import SqliteReviewStore
from stampless.review.store import ReviewConflict
from stampless.review.users import AccountLocked, FileUserStore, LoginFailed, UserStore


@dataclass
class Backend:
    """Opens the test's stores on one backend, each call as another process would."""

    name: str
    where: str  # the database URL, or the folder of the SQLite files
    opened: list[Any] = field(default_factory=list)

    def _keep(self, store: Any) -> Any:
        self.opened.append(store)
        return store

    def review(self) -> ReviewStore:
        if self.name == "postgres":
            return self._keep(PostgresReviewStore(self.where))
        return SqliteReviewStore(Path(self.where) / "queue.db")

    def queue(self) -> WorkQueue:
        if self.name == "postgres":
            return self._keep(PostgresQueue(self.where, {}))
        return self._keep(SqliteQueue(Path(self.where) / "queue.db", {}))

    def users(self, **limits: Any) -> UserStore:
        if self.name == "postgres":
            return PostgresUserStore(self.where, **limits)
        return FileUserStore(Path(self.where) / "users.json", **limits)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backend under test: every contract test runs on both."""
    if request.param == "postgres":
        opened = Backend("postgres", request.getfixturevalue("postgres_url"))
    else:
        opened = Backend("sqlite", str(tmp_path))
    yield opened
    for store in opened.opened:
        store.close()


def needs_review(rid: str, deadline_in: timedelta | None, **update: Any) -> tuple[Verdict, Request]:
    """A manual-tier request and its needs_review verdict, as a worker escalates them."""
    now = utcnow()
    request = Request(id=rid, type="social_security_record", claim={"person_name": "苏晨"})
    verdict = Verdict(
        request_id=rid,
        type=request.type,
        tier=Tier.manual,
        verdict=VerdictKind.needs_review,
        received_at=now,
        finished_at=now,
        deadline=None if deadline_in is None else now + deadline_in,
        stampless_version="test",
        **update,
    )
    return verdict, request


def _escalate(
    queue: WorkQueue, store: ReviewStore, rid: str, deadline_in: timedelta, **update: Any
) -> None:
    """What a worker does with a needs_review verdict: review item, queue item in review."""
    verdict, request = needs_review(rid, deadline_in, **update)
    queue.enqueue(
        request,
        base_dir=Path("/spool") / rid,
        tier=Tier.manual,
        system=None,
        received_at=verdict.received_at,
        deadline=verdict.deadline or utcnow(),
        content_sha256="content-of-" + rid,
    )
    claim = queue.claim("worker-1", lease_s=60)
    assert claim is not None and claim.request_id == rid
    assert store.add(verdict, request=request, reason="manual tier")
    queue.complete(claim, state=ItemState.review, verdict=None, sla_met=None, finished_at=utcnow())


def test_pending_puts_overdue_first_and_add_is_idempotent(backend: Backend) -> None:
    store = backend.review()
    for rid, minutes in (("A", 20), ("B", -1), ("C", None), ("D", 5), ("E", -10)):
        v, r = needs_review(rid, None if minutes is None else timedelta(minutes=minutes))
        assert store.add(v, request=r, reason="manual tier")
    v, r = needs_review("A", timedelta(minutes=1))
    assert not backend.review().add(v, request=r, reason="again")
    pending = backend.review().pending()
    assert [i.request_id for i in pending] == ["E", "B", "D", "A", "C"]
    assert [i.overdue() for i in pending] == [True, True, False, False, False]
    first = pending[3]
    assert first.reason == "manual tier" and first.verdict.request_id == "A"
    assert first.deadline is not None and first.deadline.tzinfo is not None
    v, r = needs_review("F", None)
    with pytest.raises(InputError, match="the request is 'A'"):
        store.add(v, request=Request(id="A", type=r.type, claim={}), reason="mixed up")


def test_take_is_atomic_across_processes(backend: Backend, tmp_path: Path) -> None:
    store = backend.review()
    v, r = needs_review("RACE-1", timedelta(minutes=5))
    store.add(v, request=r, reason="manual tier")
    names = [f"reviewer{i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: backend.review().take("RACE-1", n, 5), names))
    assert results.count(True) == 1
    winner = names[results.index(True)]
    item = store.get("RACE-1")
    assert item is not None and item.held_by() == winner
    assert store.take("RACE-1", winner, 5)  # one's own claim is extended
    loser = next(n for n in names if n != winner)
    with pytest.raises(ReviewConflict, match=f"being reviewed by {winner}"):
        store.decide("RACE-1", loser, VerdictKind.verified, "looks fine", outbox_dir=tmp_path)
    store.release("RACE-1", loser)  # not the holder: changes nothing
    assert not store.take("RACE-1", loser, 5)
    store.release("RACE-1", winner)
    assert store.take("RACE-1", loser, 5)


def test_ask_more_keeps_the_item_pending_and_releases_it(backend: Backend) -> None:
    store = backend.review()
    v, r = needs_review("MORE-1", timedelta(minutes=5))
    store.add(v, request=r, reason="manual tier")
    assert store.take("MORE-1", "alice", 5)
    with pytest.raises(InputError, match="missing"):
        store.ask_more("MORE-1", "alice", "   ")
    with pytest.raises(ReviewConflict):
        backend.review().ask_more("MORE-1", "bob", "bob may not: alice holds it")
    item = store.ask_more("MORE-1", "alice", "the scan's second page is missing")
    assert item.status == "pending" and item.held_by() is None
    assert [(n.reviewer, n.text) for n in item.notes] == [
        ("alice", "the scan's second page is missing")
    ]
    assert backend.review().take("MORE-1", "bob", 5)


def test_a_decision_settles_its_queue_item(backend: Backend, tmp_path: Path) -> None:
    store, queue = backend.review(), backend.queue()
    _escalate(queue, store, "SET-1", timedelta(minutes=5))
    _escalate(queue, store, "SET-2", timedelta(minutes=-1))
    before = utcnow()
    final = store.decide(
        "SET-1", "alice", VerdictKind.verified, "the record matches", outbox_dir=tmp_path
    )
    # No sweep and no outbox read: the decision itself made the queue's item done.
    item = backend.queue().get("SET-1")
    assert item is not None and item.state is ItemState.done
    assert item.verdict is VerdictKind.verified and item.sla_met is True
    assert item.finished_at == final.finished_at and final.finished_at >= before
    store.decide("SET-2", "alice", VerdictKind.mismatch, "wrong name", outbox_dir=tmp_path)
    late = queue.get("SET-2")
    assert late is not None and late.state is ItemState.done and late.sla_met is False
    # Decided items are listed for the SLA figures, and never decided twice.
    assert [i.request_id for i in store.decided(since=before)] == ["SET-1", "SET-2"]
    assert store.pending() == []
    with pytest.raises(ReviewConflict, match="already decided by alice"):
        store.decide("SET-1", "bob", VerdictKind.mismatch, "second thoughts", outbox_dir=tmp_path)


def test_a_decision_on_other_content_settles_its_item_as_an_error(
    backend: Backend, tmp_path: Path
) -> None:
    store, queue = backend.review(), backend.queue()
    # The review item was made for other content than the queue's item under that id.
    _escalate(queue, store, "RACE-2", timedelta(minutes=5), request_sha256="something-else")
    final = store.decide("RACE-2", "alice", VerdictKind.verified, "ok", outbox_dir=tmp_path)
    assert final.verdict is VerdictKind.verified
    item = queue.get("RACE-2")
    assert item is not None and item.state is ItemState.done
    assert item.verdict is VerdictKind.error


def test_a_refused_outbox_write_rolls_the_decision_back(backend: Backend, tmp_path: Path) -> None:
    outbox, evidence, audit_dir = tmp_path / "outbox", tmp_path / "evidence", tmp_path / "audit"
    store, queue = backend.review(), backend.queue()
    for rid in ("D-1", "D-2"):
        _escalate(queue, store, rid, timedelta(minutes=-1))
    # Another verdict already sits in the outbox under D-2's id: the decision must not
    # be recorded, its queue item not settled, and the item stays pending for a person.
    other, _ = needs_review("D-2", None)
    write_verdict(outbox, other.model_copy(update={"verdict": VerdictKind.error}))
    with pytest.raises(OutboxConflict):
        store.decide("D-2", "alice", VerdictKind.verified, "ok", outbox_dir=outbox)
    item = store.get("D-2")
    assert item is not None and item.status == "pending" and item.decided_by is None
    queued = queue.get("D-2")
    assert queued is not None and queued.state is ItemState.review
    with pytest.raises(InputError):
        store.decide("D-1", "alice", VerdictKind.verified, "  ", outbox_dir=outbox)
    with pytest.raises(InputError):
        store.decide("D-1", "alice", VerdictKind.needs_review, "x", outbox_dir=outbox)
    final = store.decide(
        "D-1",
        "alice",
        VerdictKind.not_found,
        "no such person in the register",
        outbox_dir=outbox,
        audit=AuditLog(audit_dir),
        evidence_dir=evidence,
        signer=SIGNER,
    )
    assert final.decided_by == "alice" and final.sla_met is False  # decided after the deadline
    written = read_verdict(outbox, "D-1")
    assert written is not None and written.verdict is VerdictKind.not_found
    assert [e["actor"] for e in entries_for(audit_dir, "D-1")] == ["alice"]
    assert (evidence / "D-1.review" / "manifest.json").is_file()
    assert [i.request_id for i in backend.review().pending()] == ["D-2"]


def test_an_interrupted_decision_is_recorded_from_its_own_outbox_file(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = tmp_path / "outbox"
    store, queue = backend.review(), backend.queue()
    for rid in ("CUT-1", "CUT-2"):
        _escalate(queue, store, rid, timedelta(minutes=5))

    def crash(*_: Any) -> bool:
        raise KeyboardInterrupt  # the process dies between the outbox write and the commit

    with monkeypatch.context() as patch:
        patch.setattr(type(store), "_settle_queue", crash)
        for rid in ("CUT-1", "CUT-2"):
            with pytest.raises(KeyboardInterrupt):
                store.decide(rid, "alice", VerdictKind.verified, "matches", outbox_dir=outbox)
    # One transaction: neither the decision nor the queue's settlement happened, only
    # the outbox file, written before the commit.
    for rid in ("CUT-1", "CUT-2"):
        item, queued = backend.review().get(rid), queue.get(rid)
        assert item is not None and item.status == "pending"
        assert queued is not None and queued.state is ItemState.review
        assert read_verdict(outbox, rid) is not None
    # The reviewer's retry records the decision the outbox holds and settles the queue.
    final = backend.review().decide(rid, "alice", VerdictKind.verified, "again", outbox_dir=outbox)
    assert final == read_verdict(outbox, "CUT-2")
    assert final.reasons[-1] == "reviewed by alice: verified: matches"
    # Another reviewer's different decision cannot replace the delivered one: it is
    # recorded as delivered, and the second reviewer is told.
    with pytest.raises(ReviewConflict, match="already decided verified by alice"):
        backend.review().decide(
            "CUT-1", "bob", VerdictKind.mismatch, "wrong name", outbox_dir=outbox
        )
    for rid in ("CUT-1", "CUT-2"):
        decided, settled = backend.review().get(rid), queue.get(rid)
        assert decided is not None and decided.status == "decided"
        assert decided.decided_by == "alice" and decided.decision is VerdictKind.verified
        assert settled is not None and settled.state is ItemState.done
        assert settled.verdict is VerdictKind.verified


# -- the embedded store's review.db from before -----------------------------------------------


def _old_review_db(tmp_path: Path) -> Path:
    """A ``review.db`` as stores before kept it (table ``items``): OLD-1 pending, OLD-2
    decided; and a queue.db whose OLD-2 the old two-file store never settled."""
    scratch = SqliteReviewStore(tmp_path / "scratch" / "queue.db")
    queue = SqliteQueue(tmp_path / "var" / "queue.db", {})
    for rid in ("OLD-1", "OLD-2"):
        _escalate(queue, scratch, rid, timedelta(minutes=5))
    queue.close()
    scratch.decide("OLD-2", "alice", VerdictKind.verified, "ok", outbox_dir=tmp_path / "outbox")
    old = tmp_path / "var" / "review.db"
    with closing(sqlite3.connect(old)) as db:
        db.executescript(create_table("items", "REAL"))
        db.execute("ATTACH ? AS scratch", (str(scratch.db_path),))
        db.execute("INSERT INTO items SELECT * FROM scratch.review_items")
        db.commit()
    return old


def _opened(var: Path) -> SqliteReviewStore:
    return SqliteReviewStore(var / "queue.db", legacy_path=var / "review.db")


def _moved(var: Path) -> None:
    """What every open after the move sees: both items in queue.db, OLD-2 settled."""
    store, queue = _opened(var), SqliteQueue(var / "queue.db", {})
    assert [i.request_id for i in store.pending()] == ["OLD-1"]
    decided = store.get("OLD-2")
    assert decided is not None and decided.decided_by == "alice"
    settled = queue.get("OLD-2")
    assert settled is not None and settled.state is ItemState.done
    queue.close()


def test_an_old_review_db_moves_into_queue_db_once(tmp_path: Path) -> None:
    old = _old_review_db(tmp_path)
    var = old.parent
    _moved(var)
    assert not old.exists() and (var / "review.db.migrated").is_file()
    _moved(var)  # a second open finds nothing to move
    assert sorted(p.name for p in var.glob("review.db*")) == ["review.db.migrated"]
    assert ReviewStore.existing(_config_for(var)) is not None


def test_a_move_cut_short_before_the_rename_is_completed_by_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stampless.review import sqlite as embedded

    old = _old_review_db(tmp_path)
    var = old.parent

    def crash(_: Path) -> Path:
        raise KeyboardInterrupt  # killed after the copy committed, before the rename

    with monkeypatch.context() as patch:
        patch.setattr(embedded, "_set_aside", crash)
        with pytest.raises(KeyboardInterrupt):
            _opened(var)
    assert old.exists()
    # Meanwhile a reviewer decides OLD-1 in queue.db: copying review.db again must not
    # turn it back to pending.
    SqliteReviewStore(var / "queue.db").decide(
        "OLD-1", "bob", VerdictKind.mismatch, "wrong name", outbox_dir=tmp_path / "outbox"
    )
    store = _opened(var)
    assert not old.exists() and (var / "review.db.migrated").is_file()
    again = store.get("OLD-1")
    assert again is not None and again.decided_by == "bob"
    assert store.pending() == []


def _config_for(var: Path) -> Config:
    return Config.model_validate({"project": {"var_dir": str(var)}})


# -- reviewer accounts ------------------------------------------------------------------------


@pytest.mark.slow  # argon2 is slow on purpose: six hashes
def test_accounts_keep_only_hashes_and_lock_out(backend: Backend) -> None:
    users = backend.users(max_failed=2, lockout_minutes=10)
    users.add("erin", "erin-password-1", "admin")
    stored = users.get("erin")
    assert stored is not None and stored.password_hash.startswith("$argon2")
    assert "erin-password-1" not in stored.model_dump_json()
    if isinstance(users, FileUserStore):
        assert users.path.stat().st_mode & 0o777 == 0o600
        assert "erin-password-1" not in users.path.read_text()
    other = backend.users(max_failed=2, lockout_minutes=10)  # another machine's console
    assert other.authenticate("erin", "erin-password-1").role.value == "admin"
    with pytest.raises(LoginFailed):
        users.authenticate("erin", "wrong")
    with pytest.raises(AccountLocked):
        other.authenticate("erin", "wrong again")  # the count is shared
    with pytest.raises(AccountLocked):
        users.authenticate("erin", "erin-password-1")
    with pytest.raises(LoginFailed):
        users.authenticate("nobody", "whatever-it-is")
    with pytest.raises(InputError, match="exists already"):
        users.add("erin", "another-password", "reviewer")
    with pytest.raises(InputError, match="role"):
        users.add("frank", "frank-password", "boss")
    assert [u.name for u in other.all()] == ["erin"]


def test_one_name_is_created_once_and_sessions_end_everywhere(backend: Backend) -> None:
    def create(n: int) -> str:
        try:
            backend.users().add("gina", f"gina-password-{n}", "reviewer")
        except InputError:
            return "refused"
        return "created"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(create, range(4)))
    assert sorted(outcomes) == ["created", "refused", "refused", "refused"]
    users = backend.users()
    epoch = _epoch(users.get, "gina")
    backend.users().end_sessions("gina")
    assert _epoch(users.get, "gina") == epoch + 1
    users.add("gina", "gina-new-password", "admin", replace=True)
    assert _epoch(backend.users().get, "gina") == epoch + 2


def _epoch(get: Callable[[str], Any], name: str) -> int:
    user = get(name)
    assert user is not None
    return int(user.session_epoch)
