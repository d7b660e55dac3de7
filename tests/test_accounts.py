"""A refused login is final for its account; an open circuit stops all traffic (issue 18).

The real chain: a SQLite queue, a worker pool, the robot runtime driving real Chromium,
and the emulated market-supervision system, whose access log counts every request and
every login POST it received. The processor is small: it runs the robot's lookup with
the account the queue gave the item (OCR has nothing to do with accounts).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_robot_runtime import write_project
from test_worker import HttpProcessor

from stampless.circuit import CircuitBreaker
from stampless.config import Config, load_config
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.records import records
from stampless.intake import Job
from stampless.models import Request, Tier, Verdict, VerdictKind, utcnow
from stampless.queue import WorkQueue, open_queue
from stampless.review.store import ReviewStore
from stampless.robot import RobotRuntime
from stampless.worker import Stats, WorkerOptions, WorkerPool

SYSTEM = "market_supervision"
KEYS = [r["credit_code"] for r in records("business_license", 7) if r["status"] == "valid"]


class LookupProcessor(HttpProcessor):
    """The robot's lookup with the queue's account; a found record is "verified"."""

    def __init__(self, config: Config, circuits: CircuitBreaker) -> None:
        super().__init__("")
        self.runtime = RobotRuntime(config, circuits=circuits, caller_retries=True)

    async def process(self, job: Job) -> Verdict:
        key = str(job.request.claim["credit_code"])
        await self.runtime.lookup(SYSTEM, key, account=job.account, deadline=job.deadline)
        return self._verdict(
            job.request, VerdictKind.verified, received_at=job.received_at, deadline=job.deadline
        )

    async def aclose(self) -> None:
        await self.runtime.close()


def _config(root: Path, urls: dict[str, str], *, circuit: bool = False) -> Config:
    path = write_project(root, urls, accounts_per_system=2)
    text = path.read_text(encoding="utf-8")
    if circuit:
        text = text.replace(
            f"[systems.{SYSTEM}]\n",
            f"[systems.{SYSTEM}]\ncircuit_failures = 2\ncircuit_reset_s = 60\n",
        )
    path.write_text(text + "\n[queue]\nlease_s = 60\nbackoff_base_s = 0.2\nbackoff_max_s = 0.5\n")
    return load_config(path)


def _enqueue(queue: WorkQueue, ids: range) -> None:
    now = utcnow()
    for n in ids:
        request = Request(id=f"ACC-{n}", type="business_license", claim={"credit_code": KEYS[n]})
        queue.enqueue(
            request,
            base_dir=Path("/nonexistent"),
            tier=Tier.robot,
            system=SYSTEM,
            received_at=now,
            deadline=now + timedelta(seconds=180),
        )


def _run(config: Config, queue: WorkQueue, *, stop_after: Any = None, workers: int = 3) -> Stats:
    circuits = CircuitBreaker.from_config(config)
    processor = LookupProcessor(config, circuits)
    options = WorkerOptions.from_config(
        config, workers=workers, until_empty=stop_after is None, progress=False, poll_s=0.05
    )
    pool = WorkerPool(
        config,
        queue,
        processor,
        options=options,
        review=ReviewStore.from_config(config),
        circuits=circuits,
    )

    async def main() -> Stats:
        watcher = None if stop_after is None else asyncio.create_task(stop_after(pool))
        try:
            return await asyncio.wait_for(pool.run(), timeout=240)
        finally:
            if watcher is not None:
                watcher.cancel()
            await processor.aclose()

    return asyncio.run(main())


def _login_posts(servers: Any, username: str) -> int:
    return sum(
        1
        for e in servers.access_log(SYSTEM)
        if e["path"] == "/login" and e["method"] == "POST" and e["account"] == username
    )


def _cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stampless", "--config", str(config.root / "robot.toml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "300"},
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_refused_account_gets_one_login_post_for_any_number_of_workers_and_items(
    fixture_servers_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fixture_servers_factory()
    for name, value in fixture_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MARKET01_PASSWORD", "not-the-password")
    config = _config(tmp_path, servers.urls)
    queue = open_queue(config)

    # Three workers, two accounts, eight items: market01 is refused once, and every item
    # is done by market02 without losing an attempt to the refusal.
    _enqueue(queue, range(8))
    stats = _run(config, queue)
    assert stats.done == 8 and stats.failed == 0 and stats.review == 0
    assert all(item.attempts == 1 for item in queue.list()), [i.attempts for i in queue.list()]
    assert _login_posts(servers, "market01") == 1
    assert _login_posts(servers, "market02") == 1
    states = {s.account: s for s in queue.account_states() if s.system == SYSTEM}
    assert not states["market01"].usable and "refused" in (states["market01"].reason or "")
    assert states["market02"].usable

    # Another pool (a new process would read the same table): still no second POST.
    _enqueue(queue, range(8, 12))
    assert _run(config, queue).done == 4
    assert _login_posts(servers, "market01") == 1
    listed = _cli(config, "accounts", "ls")
    assert listed.returncode == 0 and "disabled" in listed.stdout and "market01" in listed.stdout
    # A one-off lookup with that account is refused before anything is sent.
    refused = _cli(config, "lookup", "--type", "business_license", KEYS[0], "--account", "market01")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "accounts enable" in refused.stderr and "Traceback" not in refused.stderr
    assert _login_posts(servers, "market01") == 1

    # The operator fixes the password and clears the account: it logs in again.
    enabled = _cli(config, "accounts", "enable", SYSTEM, "market01")
    assert enabled.returncode == 0 and "usable again" in enabled.stdout
    assert _cli(config, "accounts", "enable", SYSTEM, "nobody").returncode == 2
    monkeypatch.setenv("MARKET01_PASSWORD", fixture_env()["MARKET01_PASSWORD"])
    _enqueue(queue, range(12, 14))
    assert _run(config, queue, workers=1).done == 2
    assert _login_posts(servers, "market01") == 2
    assert all(s.usable for s in queue.account_states())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_open_circuit_stops_all_traffic_logins_included(
    fixture_servers_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = fixture_servers_factory(fault_rate=1.0, fault_kinds="500")
    for name, value in fixture_env().items():
        monkeypatch.setenv(name, value)
    config = _config(tmp_path, servers.urls, circuit=True)
    queue = open_queue(config)
    _enqueue(queue, range(6))
    opened: dict[str, float] = {}

    async def stop_after(pool: WorkerPool) -> None:
        # Watch the pool's breaker; once open, keep the pool running 4 s more.
        while pool.circuits.snapshot().get(SYSTEM, {}).get("state") != "open":
            await asyncio.sleep(0.05)
        opened["at"] = float(pool.circuits.snapshot()[SYSTEM]["opened_at"])
        await asyncio.sleep(4)
        pool.stop.set()

    _run(config, queue, stop_after=stop_after)
    entries = servers.access_log(SYSTEM)
    assert entries and all(e["status"] == 500 for e in entries)
    before = [e for e in entries if e["start"] <= opened["at"]]
    # A request already on its way when the circuit opened may still start a moment later.
    after = [e for e in entries if e["start"] > opened["at"] + 0.5]
    print(f"circuit: {len(before)} requests before it opened, {len(after)} after")
    assert before and after == [], after
    assert time.time() - opened["at"] >= 4
