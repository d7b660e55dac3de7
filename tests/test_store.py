"""The shared PostgreSQL store beyond the queue contract (tests/test_queue.py runs that on
both backends): the constraint behind the account lock, fencing tokens, LISTEN/NOTIFY,
migrations, ``[store]`` settings and the commands that read the shared store.

Everything here runs on a real server (conftest's ``postgres_server``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from deployment_keys import SIGNER
from test_review_store import needs_review

from stampless._postgres import SCHEMA_VERSION, migrate, schema_version
from stampless.config import load_config
from stampless.errors import ConfigError
from stampless.fixtures.postgres import PostgresServer
from stampless.models import Request, Tier, VerdictKind, utcnow
from stampless.queue import ItemState, WorkQueue
from stampless.queue.postgres import PostgresQueue
from stampless.review.postgres import PostgresReviewStore, PostgresUserStore

ACCOUNTS = {"market_supervision": ["ms1"]}


def add(queue: WorkQueue, rid: str) -> None:
    now = utcnow()
    queue.enqueue(
        Request(id=rid, type="business_license", claim={}),
        base_dir=Path("/spool") / rid,
        tier=Tier.robot,
        system="market_supervision",
        received_at=now,
        deadline=now + timedelta(minutes=3),
    )


@pytest.fixture
def pg_queue(postgres_url: str) -> PostgresQueue:
    q = PostgresQueue(postgres_url, ACCOUNTS)
    yield q  # type: ignore[misc]
    q.close()


def test_the_database_refuses_a_second_holder_of_an_account(
    pg_queue: PostgresQueue, postgres_url: str
) -> None:
    add(pg_queue, "A")
    add(pg_queue, "B")
    claim = pg_queue.claim("w1", lease_s=30)
    assert claim is not None and claim.item.account == "ms1"
    # Whatever code writes the table, a second claimed item on ms1 cannot exist.
    with (
        psycopg.connect(postgres_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UniqueViolation, match="items_one_holder_per_account"),
    ):
        conn.execute(
            """UPDATE items SET state = 'claimed', account = 'ms1',
               lease_token = nextval('lease_fence'), lease_expires = now()
               WHERE request_id = 'B'"""
        )


def test_every_claim_takes_a_larger_fencing_token(pg_queue: PostgresQueue) -> None:
    add(pg_queue, "A")
    first = pg_queue.claim("dead", lease_s=30)
    assert first is not None
    second = pg_queue.claim("alive", lease_s=30, now=utcnow() + timedelta(seconds=31))
    assert second is not None and second.request_id == "A"
    assert int(second.token) > int(first.token)
    pg_queue.release(first)  # the fenced-off holder changes nothing
    item = pg_queue.get("A")
    assert item is not None and item.lease_owner == "alive" and item.attempts == 2


def test_a_worker_wakes_on_notify(pg_queue: PostgresQueue, postgres_url: str) -> None:
    woken = threading.Event()
    stop = pg_queue.listen(woken.set)
    assert stop is not None
    try:
        other = PostgresQueue(postgres_url, ACCOUNTS)  # another machine's intake
        for attempt in range(50):  # LISTEN runs in the listener's thread: wait until it does
            woken.clear()
            add(other, f"N{attempt}")
            if woken.wait(0.2):
                break
        assert woken.is_set()
        woken.clear()
        start = time.monotonic()
        add(other, "LAST")
        assert woken.wait(5)
        assert time.monotonic() - start < 2
        # The server drops the listener's connection: it listens again on a new one.
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            cut = conn.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE query = 'LISTEN stampless_queue' AND pid <> pg_backend_pid()"""
            ).fetchall()
        assert len(cut) == 1
        for attempt in range(100):
            woken.clear()
            add(other, f"AFTER{attempt}")
            if woken.wait(0.2) and attempt > 0:  # the first wake may be the reconnect's own
                break
        assert attempt < 99
        other.close()
    finally:
        stop()


def test_migrations_apply_once_whoever_runs_them(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("migrate_race")
    applied: list[int] = []

    def run() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            applied.extend(m.version for m in migrate(conn))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(applied) == list(range(1, SCHEMA_VERSION + 1))
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        assert migrate(conn) == []


def test_a_database_of_the_queue_alone_upgrades_to_the_review_store(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database("migrate_upgrade")
    request = Request(id="BEFORE-UPGRADE", type="business_license", claim={})
    with psycopg.connect(url, autocommit=True) as conn:
        assert [m.version for m in migrate(conn, upto=1)] == [1]
        # An item queued by the stampless that knew only the queue.
        conn.execute(
            """INSERT INTO items (request_id, type, tier, base_dir, request, state,
               received_at, deadline, updated_at)
               VALUES (%s, %s, 'robot', '/spool', %s, 'queued', now(), now(), now())""",
            (request.id, request.type, request.model_dump_json()),
        )
    for opening in (lambda: PostgresQueue(url, ACCOUNTS), lambda: PostgresReviewStore(url)):
        with pytest.raises(ConfigError, match="run 'stampless db migrate'"):
            opening()
    with psycopg.connect(url, autocommit=True) as conn:
        assert [m.version for m in migrate(conn)] == list(range(2, SCHEMA_VERSION + 1))
    store = PostgresReviewStore(url)
    assert store.pending() == []
    upgraded = PostgresQueue(url, ACCOUNTS)
    item = upgraded.get("BEFORE-UPGRADE")
    upgraded.close()
    assert item is not None and item.state.value == "queued"


def _project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "robot.toml").write_text(
        """[project]
var_dir = "var"

[store]
backend = "postgres"
url = "env:STAMPLESS_DATABASE_URL"

[systems.market_supervision]
url = "http://127.0.0.1:9"
robot = "robots/market_supervision.py"
selectors = "selectors/market_supervision.toml"
accounts = [{ name = "ms1", username = "u", password = "env:MS1_PASSWORD" }]
""",
        encoding="utf-8",
    )
    return folder


def test_store_settings_are_checked(tmp_path: Path) -> None:
    toml = tmp_path / "robot.toml"
    toml.write_text('[store]\nbackend = "postgres"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="needs url"):
        load_config(toml, environ={})
    toml.write_text(
        '[store]\nbackend = "postgres"\nurl = "postgresql://u:pw@db/x"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="reference to a secret") as err:
        load_config(toml, environ={})
    assert "pw@db" not in str(err.value)
    config = load_config(
        _project(tmp_path / "p") / "robot.toml",
        environ={"STAMPLESS__STORE__SHARED_DIR": "/mnt/shared"},
    )
    assert config.store.backend == "postgres" and config.store.shared_dir == Path("/mnt/shared")
    # What every machine must see goes to the shared folder; a path of its own still wins.
    assert config.evidence_dir == Path("/mnt/shared/evidence")
    assert config.outbox_dir == Path("/mnt/shared/outbox")
    # Each machine's audit chain in it, under its name; the SQLite files' paths in var/.
    assert config.audit_dir == Path("/mnt/shared/audit") / str(config.audit_writer)
    assert config.queue_path == config.var_dir / "queue.db"
    own = config.with_overrides({"outbox.path": "/srv/outbox"})
    assert own.outbox_dir == Path("/srv/outbox") and own.evidence_dir == config.evidence_dir


def test_commands_read_the_shared_store(
    postgres_server: PostgresServer, cli, tmp_path: Path
) -> None:
    url = postgres_server.create_database("cli_store")
    project = _project(tmp_path / "project")
    env = {"STAMPLESS_DATABASE_URL": url, "STAMPLESS__PROJECT__VAR_DIR": str(tmp_path / "var")}

    unmigrated = cli("queue", "ls", "--json", cwd=project, env=env)
    assert unmigrated.returncode == 2
    assert "stampless db migrate" in unmigrated.stderr
    assert len(unmigrated.stderr.strip().splitlines()) == 1

    from stampless.doctor import _store
    from stampless.vault import secret_references

    config = load_config(project / "robot.toml", environ={**env, **os.environ})
    assert ("store.url", "env:STAMPLESS_DATABASE_URL") in secret_references(config)
    [before] = _store(config)
    assert not before.ok and before.fix == "stampless db migrate"

    first = cli("db", "migrate", cwd=project, env=env)
    assert first.returncode == 0, first.stderr
    assert "Applied migration 1" in first.stdout
    again = cli("db", "migrate", "--json", cwd=project, env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["applied"] == []
    status = cli("db", "status", "--json", cwd=project, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["version"] == SCHEMA_VERSION
    [after] = _store(config)
    assert after.ok and f"schema version {SCHEMA_VERSION}" in after.detail

    # Another machine queues an item and holds the account; this one's commands see both.
    other = PostgresQueue(url, ACCOUNTS)
    add(other, "SHARED-1")
    assert other.claim("machine-b", lease_s=60) is not None
    other.close()
    listed = cli("queue", "ls", "--json", cwd=project, env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["request_id"] == "SHARED-1" and row["lease_owner"] == "machine-b"
    accounts = cli("accounts", "ls", cwd=project, env=env)
    assert accounts.returncode == 0 and "SHARED-1" in accounts.stdout
    # An item another machine sent to a person waits in this machine's review queue too.
    escalated, request = needs_review("SHARED-2", None)
    PostgresReviewStore(url).add(escalated, request=request, reason="a near miss")
    waiting = cli("review", "ls", "--json", cwd=project, env=env)
    assert waiting.returncode == 0, waiting.stderr
    [row] = [json.loads(line) for line in waiting.stdout.splitlines()]
    assert row["request_id"] == "SHARED-2" and row["reason"] == "a near miss"

    no_secret = cli("queue", "ls", cwd=project, env={**env, "STAMPLESS_DATABASE_URL": ""})
    assert no_secret.returncode == 2
    assert "STAMPLESS_DATABASE_URL" in no_secret.stderr
    # Nothing fell back to SQLite.
    assert not (tmp_path / "var" / "queue.db").exists()
    assert not (tmp_path / "var" / "review.db").exists()


@contextlib.contextmanager
def _console_of(machine: Path) -> Iterator[str]:
    """The reviewer console of one machine (a var/ of its own) on the shared store
    (``STAMPLESS_DATABASE_URL``), served on a free port of 127.0.0.1; its base URL."""
    from ports import serving

    from stampless.review.app import create_app

    environ = {
        "STAMPLESS__STORE__SHARED_DIR": str(machine.parent / "shared"),
        "STAMPLESS__STORE__MACHINE": machine.name,
        "STAMPLESS__REVIEW__LANGUAGE": "en",
    }
    config = load_config(_project(machine) / "robot.toml", environ=environ)
    # One cookie-signing key for every console, as docs/review.md asks of several.
    key = machine.parent / "session.key"
    if not key.exists():
        key.write_bytes(os.urandom(32))
    (config.var_dir / "review").mkdir(parents=True, exist_ok=True)
    (config.var_dir / "review" / "session.key").write_bytes(key.read_bytes())
    with serving(create_app(config, signer=SIGNER)) as base:
        yield base


def _log_in(base: str, name: str, password: str) -> tuple[httpx.Client, str]:
    """A browser's session on a console, logged in, and its CSRF token."""
    client = httpx.Client(base_url=base, timeout=30)
    form = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert form is not None
    data = {"name": name, "password": password, "csrf_token": form.group(1)}
    assert client.post("/login", data=data).status_code == 302
    page = client.get("/")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert page.status_code == 200 and token is not None
    return client, token.group(1)


def test_consoles_on_two_machines_share_items_accounts_and_settle_the_queue(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAMPLESS_DATABASE_URL", postgres_url)  # what [store] url names
    queue = PostgresQueue(postgres_url, {})
    store = PostgresReviewStore(postgres_url)
    verdict, request = needs_review("BOTH-1", timedelta(minutes=5))
    queue.enqueue(
        request,
        base_dir=Path("/spool"),
        tier=Tier.manual,
        system=None,
        received_at=verdict.received_at,
        deadline=verdict.received_at + timedelta(minutes=5),
    )
    claim = queue.claim("machine-c", lease_s=60)
    assert claim is not None
    store.add(verdict, request=request, reason="a person decides")
    queue.complete(claim, state=ItemState.review, verdict=None, sla_met=None, finished_at=utcnow())
    # One account, made from machine a, logs in on both machines' consoles.
    PostgresUserStore(postgres_url).add("alice", "alice-password-1", "reviewer")
    PostgresUserStore(postgres_url).add("bob", "bob-password-1", "reviewer")
    with (
        _console_of(tmp_path / "a") as a,
        _console_of(tmp_path / "b") as b,
    ):
        alice, token = _log_in(b, "alice", "alice-password-1")
        bob, _ = _log_in(a, "bob", "bob-password-1")
        assert "BOTH-1" in bob.get("/").text  # machine a's queue shows what c escalated
        assert alice.get("/item/BOTH-1").status_code == 200  # alice takes it on machine b
        held = bob.get("/item/BOTH-1")
        assert held.status_code == 409 and "alice" in held.text  # bob sees it on machine a
        decided = alice.post(
            "/item/BOTH-1/decide",
            data={"action": "verified", "reason": "phoned the registry", "csrf_token": token},
        )
        assert decided.status_code == 302
        alice.close()
        bob.close()
    # The decision itself finished the queue's item: no sweep ran, nobody read the outbox.
    item = queue.get("BOTH-1")
    queue.close()
    assert item is not None and item.state is ItemState.done
    assert item.verdict is VerdictKind.verified and item.sla_met is True
    decision = store.get("BOTH-1")
    assert decision is not None and decision.decided_by == "alice"
    assert (tmp_path / "shared" / "outbox" / "BOTH-1.json").is_file()


# -- many machines: worker processes with their own var/, one shared store ---------------


@pytest.mark.slow
def test_three_machines_share_the_queue_through_sigkills(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 worker processes, each with a var/ of its own (a "machine"), share the queue in
    PostgreSQL and an outbox folder; one is SIGKILLed twice mid-run and restarted.
    Every request ends with exactly one verdict, no account ever serves two lookups at
    once (the server's access log says so), and each machine's audit chain verifies."""
    import os
    import signal
    import subprocess
    import sys

    from test_worker import (
        LookupServer,
        _wait_for,
        enqueue,
        make_config,
        no_overlap_per_account,
    )

    from stampless.audit import verify_chain
    from stampless.outbox import JOURNAL_DIR, read_verdict
    from stampless.queue import ItemState, open_queue

    count, accounts = 300, 3
    monkeypatch.setenv("STAMPLESS_DATABASE_URL", postgres_url)
    shared = tmp_path / "shared" / "outbox"
    config = make_config(tmp_path / "intake", accounts=accounts, postgres=True, outbox=shared)
    queue = open_queue(config)
    for i in range(count):
        system = "civil_affairs" if i % 2 else "market_supervision"
        enqueue(queue, config, f"S{i:03}", system, sleep=0.02)
    server = LookupServer(tmp_path)
    script = Path(__file__).with_name("test_worker.py")

    def start(n: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(script), "worker", str(tmp_path / f"machine{n}"), server.url,
             "--until-empty", "--postgres", "--outbox", str(shared),
             "--accounts", str(accounts), "--workers", "3"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        )  # fmt: skip

    def finished() -> int:
        counts = queue.counts()
        return sum(counts[s] for s in (ItemState.done, ItemState.review, ItemState.failed))

    procs = [start(n) for n in range(3)]
    try:
        for threshold in (count // 4, count // 2):
            _wait_for(lambda t=threshold: finished() >= t, 120, f"{threshold} verdicts")
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=10)
            procs[0] = start(0)
        for p in procs:
            p.wait(timeout=180)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        server.stop()
    items = queue.list(limit=count + 1)
    assert len(items) == count
    assert {i.state for i in items} == {ItemState.done}
    # A writer killed mid-write leaves at most its hidden temporary file, never a
    # half-written verdict (the outbox renames a complete file into place).
    files = sorted(
        p.name for p in shared.iterdir() if p.name != JOURNAL_DIR and not p.name.startswith(".")
    )
    assert files == [f"S{i:03}.json" for i in range(count)]
    verdicts = [read_verdict(shared, f"S{i:03}") for i in range(count)]
    assert all(v is not None and v.verdict == "verified" for v in verdicts)
    entries = server.entries()
    assert {e["id"] for e in entries} == {f"S{i:03}" for i in range(count)}
    no_overlap_per_account(entries)
    for n in range(3):
        assert verify_chain(tmp_path / f"machine{n}" / "audit").ok
    queue.close()


def test_idle_workers_wake_on_notify_not_on_a_timer(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 60 s timers, only the NOTIFY can get an item claimed at once."""
    import asyncio

    from test_worker import HttpProcessor, LookupServer, enqueue, make_config, make_pool

    from stampless.queue import ItemState, open_queue

    monkeypatch.setenv("STAMPLESS_DATABASE_URL", postgres_url)
    config = make_config(tmp_path / "var", postgres=True)
    server = LookupServer(tmp_path)
    queue = open_queue(config)
    pool = make_pool(config, queue, server.url, workers=2, poll_s=60, event_poll_s=60)
    intake = open_queue(config)  # another machine's intake
    waited: list[float] = []

    async def main() -> None:
        run = asyncio.create_task(pool.run())
        await asyncio.sleep(1.0)  # both workers found nothing and are idle
        for rid in ("W1", "W2"):
            start = time.monotonic()
            await asyncio.to_thread(enqueue, intake, config, rid, "civil_affairs", sleep=0)
            while (item := queue.get(rid)) is None or item.state is not ItemState.done:
                await asyncio.sleep(0.02)
                assert time.monotonic() - start < 20, "the idle workers were not woken"
            waited.append(time.monotonic() - start)
        pool.stop.set()
        await run
        processor = pool.processor
        assert isinstance(processor, HttpProcessor)
        await processor.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()
        intake.close()
        queue.close()
    assert max(waited) < 10  # far below the 60 s timer, even on a loaded machine


def test_audit_verify_checks_every_machines_chain(cli, tmp_path: Path) -> None:
    """Under [store] shared_dir each machine writes its own chain and checkpoints it into
    the shared outbox under its name; `audit verify` checks them all, each against its
    own checkpoint, and names the machine whose chain was cut."""
    from stampless.audit import AuditLog, write_checkpoint
    from stampless.signing import Signer

    shared = tmp_path / "shared"
    project = tmp_path / "project"
    project.mkdir()
    (project / "robot.toml").write_text(
        f'[store]\nshared_dir = "{shared}"\n\n[project]\nvar_dir = "{tmp_path / "var"}"\n',
        encoding="utf-8",
    )
    signer = Signer.generate()
    for machine, lines in (("m1", 3), ("m2", 5)):
        config = load_config(project / "robot.toml", environ={"STAMPLESS__STORE__MACHINE": machine})
        assert config.audit_dir == shared / "audit" / machine
        log = AuditLog(config.audit_dir)
        for n in range(lines):
            log.append("queued", request_id=f"{machine}-R{n}")
        path = write_checkpoint(
            config.audit_dir, config.outbox_dir, signer, writer=config.audit_writer
        )
        assert path is not None and path.parent == shared / "outbox"
    names = sorted(p.name for p in (shared / "outbox").glob("audit-checkpoint-*.json"))
    assert names == [
        "audit-checkpoint-m1-000000000003.json",
        "audit-checkpoint-m2-000000000005.json",
    ]

    env = {"STAMPLESS__STORE__MACHINE": "m1"}
    ok = cli("audit", "verify", "--json", cwd=project, env=env)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and [c["writer"] for c in report["chains"]] == ["m1", "m2"]
    assert [c["checkpoint"]["seq"] for c in report["chains"]] == [3, 5]

    # Cut the last two lines of m2's chain and rewrite its HEAD to match: only the
    # checkpoint in the shared outbox still knows, and says so for m2.
    from stampless.audit import _write_head, line_hash

    [chain] = (shared / "audit" / "m2").glob("audit-*.jsonl")
    kept = chain.read_bytes().splitlines(keepends=True)[:3]
    chain.write_bytes(b"".join(kept))
    _write_head(shared / "audit" / "m2", 3, line_hash(kept[-1].rstrip(b"\n")))
    cut = cli("audit", "verify", cwd=project, env=env)
    assert cut.returncode == 1
    assert cut.stdout.startswith("BROKEN m2: ") and "seq 5" in cut.stdout
    assert "cut off" in cut.stdout


def test_one_machine_leads_the_schedule_and_another_takes_over(postgres_url: str) -> None:
    """The schedule's lock: one holder; a stopped leader hands over; a leader whose
    connection the server cuts stops leading, then leads again once it can."""
    from stampless._postgres import Leadership

    key = 4242  # not the schedule's own: tests share one database
    events: list[str] = []

    def leader(name: str) -> Leadership:
        return Leadership(
            postgres_url,
            on_gain=lambda: events.append(f"{name}+"),
            on_loss=lambda: events.append(f"{name}-"),
            key=key,
            retry_s=0.1,
        ).start()

    def wait_for(what: list[str]) -> None:
        end = time.monotonic() + 10
        while events != what:
            assert time.monotonic() < end, f"{events} never became {what}"
            time.sleep(0.02)

    a = leader("a")
    wait_for(["a+"])
    b = leader("b")
    time.sleep(0.5)  # b tried several times meanwhile
    assert events == ["a+"] and a.leading and not b.leading
    a.stop()
    wait_for(["a+", "a-", "b+"])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND objid = %s""",
            (key,),
        )
    wait_for(["a+", "a-", "b+", "b-", "b+"])
    b.stop()
    assert events[-1] == "b-" and not b.leading


@pytest.mark.slow
def test_the_schedule_fires_on_one_machine_and_moves_when_it_dies(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `stampless schedule` daemons on one PostgreSQL store: a 1 s job runs only on
    the first; SIGKILLed, the second takes the schedule over."""
    import os
    import signal
    import subprocess
    import sys

    from test_worker import LookupServer

    from stampless.jobs import JobLedger

    monkeypatch.setenv("STAMPLESS_DATABASE_URL", postgres_url)
    server = LookupServer(tmp_path)
    script = Path(__file__).with_name("test_worker.py")

    def start(machine: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), "daemon", str(tmp_path / machine), server.url, "5",
             "--postgres"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def runs(machine: str) -> int:
        path = tmp_path / machine / "jobs.db"
        return len(JobLedger(path).runs("sweep", limit=1000)) if path.exists() else 0

    def wait_until(check: object, what: str) -> None:
        end = time.monotonic() + 30
        while not check():  # type: ignore[operator]
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.1)

    a = start("a")
    b = None
    try:
        wait_until(lambda: runs("a") >= 1, "the first daemon to run the job")
        b = start("b")
        time.sleep(3)  # the job is due every second: only a runs it
        assert runs("a") >= 3 and runs("b") == 0
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=10)
        wait_until(lambda: runs("b") >= 2, "the second daemon to take the schedule over")
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        server.stop()
