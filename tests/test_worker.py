"""The worker pool against a real HTTP "department" server, real SQLite, real processes.

The processor here is small but real: it looks each request up over HTTP on a server
started as a subprocess, which logs every access with its account and times (so account
exclusivity is checked from the server's side) and can be told to fail for one system.
The end-to-end tests with the real pipeline, Chromium and Tesseract are at the bottom.

This file is also a script (``python tests/test_worker.py worker|daemon ...``) so the
crash and shutdown tests can run a worker in a process of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from stampless._version import __version__
from stampless.cases import CaseStore
from stampless.circuit import CircuitBreaker
from stampless.config import (
    AccountConfig,
    Config,
    OutboxConfig,
    ProjectConfig,
    QueueConfig,
    StoreConfig,
    SystemConfig,
    TiersConfig,
)
from stampless.errors import (
    ConfigError,
    DepartmentUnavailable,
    InputError,
    SecretUnavailable,
)
from stampless.intake import Job, Route
from stampless.models import Request, Tier, Verdict, VerdictKind, utcnow
from stampless.outbox import JOURNAL_DIR, OutboxConflict, read_verdict, write_verdict
from stampless.queue import ItemState, WorkQueue, open_queue
from stampless.review.store import ReviewStore
from stampless.worker import Stats, WorkerOptions, WorkerPool, sweep_deadlines

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

LOOKUP_SERVER = r"""
import json, sys, time, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

log_path, down = sys.argv[1], set(filter(None, sys.argv[2].split(",")))
lock = threading.Lock()

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
        start = time.time()
        status = 503 if q.get("system") in down else 200
        if status == 200:
            time.sleep(float(q.get("sleep", "0")))
        end = time.time()
        with lock, open(log_path, "a") as fh:
            fh.write(json.dumps({**q, "start": start, "end": end, "status": status}) + "\n")
        body = json.dumps({"ok": status == 200}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("ready", srv.server_address[1], flush=True)
srv.serve_forever()
"""


class LookupServer:
    """The test's department server, as a subprocess on a free port."""

    def __init__(self, tmp: Path, down: str = "") -> None:
        self.log = tmp / "access.jsonl"
        script = tmp / "lookup_server.py"
        script.write_text(LOOKUP_SERVER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.log), down],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", "lookup server did not start"
        self.url = f"http://127.0.0.1:{line[1]}"

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def server(tmp_path: Path) -> Any:
    s = LookupServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


class HttpProcessor:
    """A real processor: looks the request up on the server, decides from its claim."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.calls = 0
        self._client: httpx.AsyncClient | None = None

    def _verdict(self, request: Request, kind: VerdictKind, **kw: Any) -> Verdict:
        now = utcnow()
        deadline = kw.pop("deadline", None)
        return Verdict(
            request_id=request.id,
            type=request.type,
            tier=Tier.robot,
            verdict=kind,
            received_at=kw.pop("received_at"),
            finished_at=now,
            deadline=deadline,
            sla_met=None if deadline is None else now <= deadline,
            attempts=kw.pop("attempts", 1),
            reasons=kw.pop("reasons", []),
            stampless_version=__version__,
            case_id=request.case_id,
        )

    async def process(self, job: Job) -> Verdict:
        request, account, attempt = job.request, job.account, job.attempt
        received_at, deadline = job.received_at, job.deadline
        self.calls += 1
        if request.claim.get("bad"):
            raise InputError(f"Request {request.id}: the claim is unreadable.")
        if request.claim.get("unset_secret"):
            raise SecretUnavailable("Secret env:NOPE is not set; export NOPE before starting.")
        if request.claim.get("unknown_type"):
            raise ConfigError("Unknown document type 'gone'; robot.toml defines: others.")
        params = {
            "system": request.claim.get("system", ""),
            "account": account or "",
            "id": request.id,
            "attempt": str(attempt),
            "sleep": str(request.claim.get("sleep", 0.05)),
        }
        if self._client is None:  # one client: building its TLS context is slow
            self._client = httpx.AsyncClient(timeout=30)
        try:
            r = await self._client.get(self.url + "/lookup", params=params)
        except httpx.HTTPError as exc:
            raise DepartmentUnavailable("The department system did not answer.") from exc
        if r.status_code >= 500:
            raise DepartmentUnavailable(
                f"Department system {params['system']} answered {r.status_code}."
            )
        kind = VerdictKind(request.claim.get("expect", "verified"))
        return self._verdict(
            request, kind, received_at=received_at, deadline=deadline, attempts=attempt
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def escalate(self, job: Job, *, reason: str) -> Verdict:
        return self._job_verdict(job, VerdictKind.needs_review, reason)

    async def fail(self, job: Job, *, reason: str) -> Verdict:
        return self._job_verdict(job, VerdictKind.error, reason)

    def _job_verdict(self, job: Job, kind: VerdictKind, reason: str) -> Verdict:
        return self._verdict(
            job.request,
            kind,
            reasons=[reason],
            received_at=job.received_at,
            deadline=job.deadline,
            attempts=job.attempt,
        )


class FileRouter:
    """Intake routing for the HTTP processor: the claim names the system; scans must exist."""

    def validate(self, request: Request, base_dir: Path) -> None:
        scan = request.scan_path(base_dir)
        if scan is not None and not scan.is_file():
            raise InputError(f"Request {request.id}: scan {request.scan} not found.")
        if request.claim.get("system") not in SYSTEMS:
            raise InputError(f"Request {request.id}: claim.system must name a known system.")

    def route(self, request: Request, base_dir: Path) -> Route:
        return Route(Tier.robot, str(request.claim["system"]))


SYSTEMS = {"civil_affairs": ["civil01", "civil02"], "market_supervision": ["market01", "market02"]}


def make_config(
    var: Path,
    *,
    robot_sla: float = 180,
    lease_s: float = 30,
    accounts: int | None = None,
    postgres: bool = False,
    outbox: Path | None = None,
) -> Config:
    """The test deployment: SYSTEMS' accounts (or ``accounts`` per system), its queue in
    var/ (or, with ``postgres``, the database of $STAMPLESS_DATABASE_URL), its outbox in
    var/ (or ``outbox``, a folder several machines share)."""
    names = SYSTEMS
    if accounts is not None:
        names = {name: [f"{name}{i:02}" for i in range(accounts)] for name in SYSTEMS}
    systems = {
        name: SystemConfig(
            url="http://127.0.0.1:1",
            robot=Path("robots/x.py"),
            selectors=Path("selectors/x.toml"),
            accounts=[
                AccountConfig(name=a, username=a, password="env:NOPE") for a in system_accounts
            ],
            circuit_failures=3,
            circuit_reset_s=60,
        )
        for name, system_accounts in names.items()
    }
    cfg = Config(
        project=ProjectConfig(var_dir=var),
        systems=systems,
        tiers=TiersConfig(robot=robot_sla),
        queue=QueueConfig(lease_s=lease_s, backoff_base_s=0.2, backoff_max_s=1.0),
        store=StoreConfig(backend="postgres", url="env:STAMPLESS_DATABASE_URL")
        if postgres
        else StoreConfig(),
        outbox=OutboxConfig(path=outbox),
    )
    cfg.root = var
    return cfg


def enqueue(
    queue: WorkQueue,
    config: Config,
    rid: str,
    system: str,
    *,
    tier: Tier = Tier.robot,
    case_id: str | None = None,
    **claim: Any,
) -> None:
    now = utcnow()
    req = Request(
        id=rid, type="marriage_certificate", claim={"system": system, **claim}, case_id=case_id
    )
    queue.enqueue(
        req,
        base_dir=config.var_dir / "spool" / rid,
        tier=tier,
        system=system,
        received_at=now,
        deadline=now + timedelta(seconds=config.tiers.sla_seconds(tier)),
    )


def make_pool(config: Config, queue: WorkQueue, url: str, **opts: Any) -> WorkerPool:
    options = WorkerOptions.from_config(config, **{"progress": False, "poll_s": 0.05, **opts})
    return WorkerPool(
        config,
        queue,
        HttpProcessor(url),
        options=options,
        review=ReviewStore.from_config(config),
        circuits=CircuitBreaker.from_config(config),
    )


def run_pool(pool: WorkerPool, timeout: float = 60) -> Stats:
    """Run the pool to the end in a fresh event loop, then close the processor's client."""

    async def main() -> Stats:
        try:
            return await asyncio.wait_for(pool.run(), timeout=timeout)
        finally:
            processor = pool.processor
            assert isinstance(processor, HttpProcessor)
            await processor.aclose()

    return asyncio.run(main())


def no_overlap_per_account(entries: list[dict[str, Any]]) -> int:
    """Assert no account served two lookups at once; return the peak parallelism."""
    by_account: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for e in entries:
        by_account[(e["system"], e["account"])].append((e["start"], e["end"]))
    for key, spans in by_account.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"account {key} served two lookups at once"
    events = sorted([(e["start"], 1) for e in entries] + [(e["end"], -1) for e in entries])
    peak = level = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    return peak


def test_verify_retries_once_per_attempt_and_stops_when_the_circuit_opens(
    tmp_path: Path,
) -> None:
    """`stampless verify`'s in-process retries: the queue's policy, one request per attempt
    (no second loop below it), each outcome told to the one breaker."""
    from stampless.retry import RetryPolicy, run_with_retries

    server = LookupServer(tmp_path, down="market_supervision")
    now = utcnow()

    def job(rid: str, system: str) -> Job:
        request = Request(id=rid, type="marriage_certificate", claim={"system": system})
        deadline = now + timedelta(seconds=60)
        return Job(request, tmp_path, Tier.robot, system, now, deadline)

    async def verify(one: Job, failures: int) -> Verdict:
        circuits = CircuitBreaker(None, limits={"market_supervision": (failures, 60)})
        policy = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)
        processor = HttpProcessor(server.url)
        try:
            return await run_with_retries(processor, one, policy=policy, circuits=circuits)
        finally:
            await processor.aclose()
            opened.append(circuits.is_open("market_supervision"))

    opened: list[bool] = []
    try:
        verdict = asyncio.run(verify(job("UP-1", "civil_affairs"), 5))
        assert verdict.verdict is VerdictKind.verified and verdict.attempts == 1
        with pytest.raises(DepartmentUnavailable):
            asyncio.run(verify(job("DOWN-1", "market_supervision"), 5))
        # The policy's three attempts, each one request: the old runtime loop made 3 each.
        assert [e["attempt"] for e in server.entries() if e["id"] == "DOWN-1"] == ["1", "2", "3"]
        with pytest.raises(DepartmentUnavailable):
            asyncio.run(verify(job("DOWN-2", "market_supervision"), 2))
        # The breaker opened after two failures: the third attempt was not sent.
        assert [e["attempt"] for e in server.entries() if e["id"] == "DOWN-2"] == ["1", "2"]
        assert opened == [False, False, True]
    finally:
        server.stop()


def test_pool_finishes_all_and_never_shares_an_account(tmp_path: Path, server: Any) -> None:
    config = make_config(tmp_path / "var")
    queue = open_queue(config)
    for i in range(24):
        system = "civil_affairs" if i % 2 else "market_supervision"
        enqueue(queue, config, f"R{i:02}", system, sleep=0.1)
    pool = make_pool(config, queue, server.url, workers=4, until_empty=True)
    stats = run_pool(pool)
    assert stats.done == 24 and stats.sla_met == 24
    assert queue.counts()[ItemState.done] == 24
    entries = server.entries()
    assert len(entries) == 24
    assert {e["account"] for e in entries} <= {a for v in SYSTEMS.values() for a in v}
    # Four accounts, four workers: different accounts really ran in parallel.
    assert no_overlap_per_account(entries) >= 2
    names = sorted(p.name for p in config.outbox_dir.iterdir() if p.name != JOURNAL_DIR)
    assert names == [f"R{i:02}.json" for i in range(24)]


def test_input_error_is_final_and_outbox_short_circuits(tmp_path: Path, server: Any) -> None:
    config = make_config(tmp_path / "var")
    queue = open_queue(config)
    enqueue(queue, config, "BAD", "civil_affairs", bad=True)
    # robot.toml cannot process this one (its type was removed): final at once, never
    # retried as if the department system were down.
    enqueue(queue, config, "NOTYPE", "market_supervision", unknown_type=True)
    config.queue.max_attempts = 2
    # Waited in the queue past its deadline: straight to a person, the robot never starts.
    late = Request(id="LATE", type="marriage_certificate", claim={"system": "civil_affairs"})
    queue.enqueue(
        late,
        base_dir=tmp_path,
        tier=Tier.robot,
        system="civil_affairs",
        received_at=utcnow() - timedelta(seconds=200),
        deadline=utcnow() - timedelta(seconds=20),
    )
    enqueue(queue, config, "DONE-BEFORE", "civil_affairs")
    # As if a crashed worker wrote the verdict but never marked the item done.
    now = utcnow()
    earlier = Verdict(
        request_id="DONE-BEFORE",
        type="marriage_certificate",
        tier=Tier.robot,
        verdict=VerdictKind.mismatch,
        received_at=now,
        finished_at=now,
        stampless_version=__version__,
    )
    write_verdict(config.outbox_dir, earlier)
    pool = make_pool(config, queue, server.url, workers=1, until_empty=True)
    run_pool(pool)
    bad = queue.get("BAD")
    assert bad is not None and bad.state is ItemState.failed and bad.attempts == 1
    assert "unreadable" in (bad.last_error or "")
    assert read_verdict(config.outbox_dir, "BAD").verdict is VerdictKind.error  # type: ignore[union-attr]
    before = queue.get("DONE-BEFORE")
    assert before is not None and before.state is ItemState.done
    assert before.verdict is VerdictKind.mismatch
    assert read_verdict(config.outbox_dir, "DONE-BEFORE") == earlier
    assert [e["id"] for e in server.entries()] == []  # none reached the department
    notype = queue.get("NOTYPE")
    assert notype is not None and notype.state is ItemState.failed and notype.attempts == 1
    assert "Unknown document type" in (notype.last_error or "")
    assert read_verdict(config.outbox_dir, "NOTYPE").verdict is VerdictKind.error  # type: ignore[union-attr]
    late_item = queue.get("LATE")
    assert late_item is not None and late_item.state is ItemState.review
    assert "waited in the queue" in (late_item.last_error or "")


def test_a_secret_that_stops_resolving_stops_the_pool_and_keeps_the_item(
    tmp_path: Path, server: Any
) -> None:
    """No item can succeed without the secret: the first one goes back untouched, no
    other is claimed, and run() raises, so 'stampless run' exits 2 at once."""
    config = make_config(tmp_path / "var")
    queue = open_queue(config)
    enqueue(queue, config, "NOSECRET", "market_supervision", unset_secret=True)
    for i in range(3):
        enqueue(queue, config, f"LATER{i}", "market_supervision", unset_secret=True)
    pool = make_pool(config, queue, server.url, workers=1, until_empty=True)
    started = time.monotonic()
    with pytest.raises(SecretUnavailable, match="NOPE"):
        run_pool(pool)
    assert time.monotonic() - started < 10
    processor = pool.processor
    assert isinstance(processor, HttpProcessor) and processor.calls == 1
    for rid in ("NOSECRET", "LATER0", "LATER1", "LATER2"):
        item = queue.get(rid)
        assert item is not None and item.state is ItemState.queued and item.attempts == 0, item
        assert read_verdict(config.outbox_dir, rid) is None
    assert ReviewStore.from_config(config).get("NOSECRET") is None


def test_down_system_retries_then_escalates_others_keep_going(tmp_path: Path) -> None:
    down = LookupServer(tmp_path, down="civil_affairs")
    try:
        config = make_config(tmp_path / "var", robot_sla=4)
        queue = open_queue(config)
        for i in range(3):
            enqueue(queue, config, f"CA{i}", "civil_affairs")
            enqueue(queue, config, f"MS{i}", "market_supervision")
        pool = make_pool(config, queue, down.url, workers=2, until_empty=True)
        stats = run_pool(pool)
        entries = down.entries()
    finally:
        down.stop()
    for i in range(3):
        ms = queue.get(f"MS{i}")
        assert ms is not None and ms.state is ItemState.done and ms.sla_met
        ca = queue.get(f"CA{i}")
        assert ca is not None and ca.state is ItemState.review, ca
        # Its attempt failed on the down system, or the circuit had opened before a worker
        # reached it (3 failures of the others) and it waited in the queue: which one is a
        # matter of timing, each is the reason a person is told.
        why = ca.last_error or ""
        assert "civil_affairs" in why or "waited in the queue" in why, why
    assert stats.retried >= 1 and stats.escalated == 3
    review = ReviewStore.from_config(config)
    # Each escalated before its 4 s deadline, not after it: the worker's own clock, so that
    # a slow start of the pool on a loaded machine does not count against the escalation.
    for i in range(3):
        escalated = review.get(f"CA{i}")
        assert escalated is not None and escalated.verdict.deadline is not None
        assert escalated.verdict.finished_at <= escalated.verdict.deadline, escalated.verdict
    item = review.get("CA0")
    assert item is not None and "deadline" in item.reason
    # The circuit opened after 3 failures and stopped the hammering.
    circuits = json.loads((config.var_dir / "health" / "circuits.json").read_text())
    assert circuits["civil_affairs"]["state"] == "open"
    civil_calls = [e for e in entries if e["system"] == "civil_affairs"]
    assert 3 <= len(civil_calls) <= 6
    assert not (config.outbox_dir / "CA0.json").exists()
    # A person decides: the decision itself finishes the queue item, no sweep needed.
    review.decide(
        "CA0", "alice", VerdictKind.verified, "Phoned the registry.", outbox_dir=config.outbox_dir
    )
    decided = queue.get("CA0")
    assert decided is not None and decided.state is ItemState.done
    assert decided.verdict is VerdictKind.verified and decided.sla_met is True
    # The sweep never reads the outbox: a verdict file dropped there by hand for an item
    # in review settles nothing, and the item still waits for a person, whose decision
    # then meets the file and is refused (it is no decision of theirs).
    waiting = review.get("CA1")
    assert waiting is not None
    dropped = waiting.verdict.model_copy(
        update={"verdict": VerdictKind.mismatch, "finished_at": utcnow()}
    )
    write_verdict(config.outbox_dir, dropped)
    swept = sweep_deadlines(queue, CaseStore.from_config(config))
    assert "settled" not in swept
    unsettled = queue.get("CA1")
    assert unsettled is not None and unsettled.state is ItemState.review
    with pytest.raises(OutboxConflict):
        review.decide("CA1", "alice", VerdictKind.verified, "ok", outbox_dir=config.outbox_dir)
    still = review.get("CA1")
    assert still is not None and still.status == "pending"


def test_lost_lease_stops_the_attempt(tmp_path: Path, server: Any) -> None:
    config = make_config(tmp_path / "var", lease_s=0.6)
    queue = open_queue(config)
    enqueue(queue, config, "HELD", "civil_affairs", sleep=1.5)
    pool = make_pool(config, queue, server.url, workers=1, until_empty=True)

    async def main() -> Stats:
        run = asyncio.create_task(pool.run())
        while queue.counts()[ItemState.claimed] == 0:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        # As if this worker had stalled past its lease: the item goes back to the queue.
        assert await asyncio.to_thread(queue.sweep_leases, now=utcnow() + timedelta(seconds=5))
        try:
            return await asyncio.wait_for(run, timeout=30)
        finally:
            processor = pool.processor
            assert isinstance(processor, HttpProcessor)
            await processor.aclose()

    started = time.monotonic()
    asyncio.run(main())
    item = queue.get("HELD")
    assert item is not None and item.state is ItemState.done and item.attempts == 2
    # The first attempt was stopped at the next heartbeat, not run to its end.
    assert time.monotonic() - started < 2 * 1.5 - 0.1  # two full attempts take 3 s or more
    assert [p.name for p in config.outbox_dir.iterdir() if p.name != JOURNAL_DIR] == ["HELD.json"]


# -- the crash test: a worker process killed with SIGKILL mid-item ------------------------


def _spawn_worker(var: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), "worker", str(var), url, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},
    )


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_item_finishes_once_later(tmp_path: Path, server: Any) -> None:
    var = tmp_path / "var"
    config = make_config(var, lease_s=1.5)
    queue = open_queue(config)
    enqueue(queue, config, "SLOW", "civil_affairs", sleep=1.0)
    for i in range(4):
        enqueue(queue, config, f"Q{i}", "market_supervision", sleep=0.05)
    first = _spawn_worker(var, server.url)
    try:
        _wait_for(
            lambda: (
                any(e["id"] == "SLOW" for e in server.entries())
                or (queue.get("SLOW").state is ItemState.claimed)
            ),  # type: ignore[union-attr]
            20,
            "the slow item to be claimed",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
        assert first.stdout is not None
        first.stdout.close()
    killed = queue.get("SLOW")
    assert killed is not None and killed.state is ItemState.claimed
    assert not (config.outbox_dir / "SLOW.json").exists()
    second = _spawn_worker(var, server.url, "--until-empty")
    try:
        out, _ = second.communicate(timeout=40)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, out
    item = queue.get("SLOW")
    assert item is not None and item.state is ItemState.done and item.attempts == 2
    files = sorted(p.name for p in config.outbox_dir.iterdir() if p.name != JOURNAL_DIR)
    assert files == ["Q0.json", "Q1.json", "Q2.json", "Q3.json", "SLOW.json"]
    assert read_verdict(config.outbox_dir, "SLOW").attempts == 2  # type: ignore[union-attr]
    assert queue.counts()[ItemState.done] == 5
    no_overlap_per_account(server.entries())


def _worker_main(argv: list[str]) -> int:
    """``worker VAR URL [--until-empty] [--default-lease] [--postgres] [--outbox DIR]
    [--accounts K] [--workers N]``: a pool with the HTTP processor.

    The lease is 1.5 s, or robot.toml's default with ``--default-lease``. ``--postgres``:
    the queue is the database of $STAMPLESS_DATABASE_URL (make_config tells the rest).
    """
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("var", type=Path)
    ap.add_argument("url")
    ap.add_argument("--until-empty", action="store_true")
    ap.add_argument("--default-lease", action="store_true")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--outbox", type=Path)
    ap.add_argument("--accounts", type=int)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    config = make_config(
        args.var,
        lease_s=QueueConfig().lease_s if args.default_lease else 1.5,
        accounts=args.accounts,
        postgres=args.postgres,
        outbox=args.outbox,
    )
    queue = open_queue(config)
    pool = make_pool(config, queue, args.url, workers=args.workers, until_empty=args.until_empty)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, pool.stop.set)
        print("ready", flush=True)
        try:
            await pool.run()
        finally:
            processor = pool.processor
            assert isinstance(processor, HttpProcessor)
            await processor.aclose()

    asyncio.run(main())
    return 0


def _daemon_main(argv: list[str]) -> int:
    """``daemon VAR URL GRACE_S [--postgres]``: ``stampless schedule`` with the HTTP
    processor. ``--postgres``: the queue of $STAMPLESS_DATABASE_URL, and one job,
    ``sweep`` (sweep_leases every second), whose runs the job ledger in VAR records."""
    from stampless.config import JobConfig
    from stampless.scheduler import Daemon

    var, url, grace = Path(argv[0]), argv[1], float(argv[2])
    config = make_config(var, lease_s=5, postgres="--postgres" in argv[3:])
    if "--postgres" in argv[3:]:
        config.jobs = {"sweep": JobConfig(kind="sweep_leases", every_s=1)}
    options = WorkerOptions.from_config(config, workers=2, progress=False, grace_s=grace)
    processor = HttpProcessor(url)
    daemon = Daemon(config, processor=processor, options=options)

    async def main() -> None:
        try:
            await daemon.serve()
        finally:
            await processor.aclose()

    asyncio.run(main())
    return 0


if __name__ == "__main__":
    mains = {"worker": _worker_main, "daemon": _daemon_main}
    sys.exit(mains[sys.argv[1]](sys.argv[2:]))


# -- end to end: stampless run, real pipeline, Chromium, Tesseract, fixture servers ------


@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.slow
def test_e2e_sigkill_fault_escalation_and_account_exclusivity(
    tmp_path: Path, fixture_servers_factory: Any
) -> None:
    from deployment_keys import signing_env

    from stampless.fixtures.accounts import fixture_env
    from stampless.fixtures.scans import generate

    servers = fixture_servers_factory(seed=7)
    # Market supervision is down for good; civil affairs works.
    servers.control("market_supervision", fault_rate=1.0, fault_kinds=["500"])
    var = tmp_path / "var"
    env = {
        **os.environ,
        **fixture_env(),
        **signing_env(),
        "OMP_THREAD_LIMIT": "1",
        "STAMPLESS__PROJECT__VAR_DIR": str(var),
        "STAMPLESS__TIERS__ROBOT": "150",
        "STAMPLESS__QUEUE__MAX_ATTEMPTS": "2",
        "STAMPLESS__QUEUE__LEASE_S": "4",
        "STAMPLESS__QUEUE__BACKOFF_BASE_S": "0.5",
        "STAMPLESS__QUEUE__BACKOFF_MAX_S": "4",
        "STAMPLESS__SYSTEMS__MARKET_SUPERVISION__CIRCUIT_FAILURES": "2",
        "STAMPLESS__SYSTEMS__MARKET_SUPERVISION__CIRCUIT_RESET_S": "2",
    }
    for system, url in servers.urls.items():
        env[f"STAMPLESS__SYSTEMS__{system.upper()}__URL"] = url
    scans = generate(
        tmp_path / "scans", "marriage_certificate", 2, 41, "easy", 0.0, 0.0, records_seed=7
    )
    scans += generate(
        tmp_path / "scans", "business_license", 2, 42, "easy", 0.0, 0.0, records_seed=7
    )
    requests = [p.with_suffix(".request.json") for p in scans]
    ids = [json.loads(p.read_text())["id"] for p in requests]
    civil_ids, market_ids = ids[:2], ids[2:]

    def cli(*args: str) -> list[str]:
        return [sys.executable, "-m", "stampless", "--config", str(REPO / "robot.toml"), *args]

    submitted = subprocess.run(
        cli("submit", *map(str, requests)), env=env, capture_output=True, text=True, timeout=60
    )
    assert submitted.returncode == 0, submitted.stderr
    config = load_config_for(var, env)
    queue = open_queue(config)

    first = subprocess.Popen(
        cli("run", "--workers", "2", "--no-progress"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Kill it while it holds a civil-affairs item and has logged in with its account.
        def busy() -> bool:
            held = [i for i in queue.list(states=[ItemState.claimed]) if i.request_id in civil_ids]
            accounts = {e.get("account") for e in servers.access_log("civil_affairs")}
            return any(i.account in accounts for i in held)

        _wait_for(busy, 90, "a civil-affairs item in progress")
        killed = {i.request_id for i in queue.list(states=[ItemState.claimed])}
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    second = subprocess.run(
        cli("run", "--workers", "2", "--until-empty", "--no-progress"),
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert second.returncode == 0, second.stderr[-2000:]

    review = ReviewStore.from_config(config)
    finished_civil = set()
    for rid in civil_ids:
        # Verified, or (OCR unsure) a machine decision for a person: never an escalation.
        item = queue.get(rid)
        assert item is not None and item.state in (ItemState.done, ItemState.review), item
        if item.state is ItemState.done:
            finished_civil.add(rid)
            assert item.sla_met
            verdict = read_verdict(config.outbox_dir, rid)
            assert verdict is not None and verdict.verdict is item.verdict
        else:
            pending = review.get(rid)
            assert pending is not None
            assert not any("could not finish" in r for r in pending.verdict.reasons)
    for rid in killed & set(civil_ids):
        item = queue.get(rid)
        assert item is not None and item.attempts >= 2
    # The department that is down: retried, then escalated to a person before the deadline.
    for rid in market_ids:
        item = queue.get(rid)
        assert item is not None and item.state is ItemState.review, item
        assert "market_supervision" in (item.last_error or "") or "answered" in (
            item.last_error or ""
        )
        assert item.finished_at is not None and item.finished_at <= item.deadline
        assert item.attempts == 2  # retries spent: escalated at once, not at the deadline
        pending = review.get(rid)
        assert pending is not None and "could not finish" in pending.verdict.reasons[0]
    outbox = sorted(p.name for p in config.outbox_dir.glob("*.json"))
    # Each run that stopped left a signed checkpoint of the audit chain's end beside them.
    verdicts = [name for name in outbox if not name.startswith("audit-checkpoint-")]
    assert verdicts == sorted(f"{rid}.json" for rid in finished_civil)  # exactly once each
    assert len(outbox) > len(verdicts)
    circuits = json.loads((var / "health" / "circuits.json").read_text())
    assert circuits["market_supervision"]["state"] in ("open", "half_open")
    # Never two sessions of one account at once: nobody was kicked out by a second login.
    log = servers.access_log("civil_affairs")
    assert log and not [e for e in log if e.get("outcome") == "kicked"]


def load_config_for(var: Path, env: dict[str, str]) -> Config:
    from stampless.config import load_config

    return load_config(REPO / "robot.toml", environ=env)
