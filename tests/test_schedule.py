"""The scheduler daemon: jobs from robot.toml, a persistent job store, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_worker import (
    HERE,
    LookupServer,
    enqueue,
    make_config,
    make_pool,
    run_pool,
)

from stampless.outbox import JOURNAL_DIR, read_verdict
from stampless.queue import ItemState, open_queue
from stampless.scheduler import recheck

ROBOT_TOML = """
[project]
var_dir = "var"

[types.business_license]
task = "{repo}/tasks/business_license.py"
tier = "robot"

[jobs.poll]
kind = "poll_inbox"
every_s = 30

[jobs.sweep]
kind = "sweep_leases"
every_s = 15

[jobs.nightly]
kind = "recheck"
type = "business_license"
cron = "0 2 * * *"
older_than_days = 30
"""


def stampless(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stampless", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},
    )


@pytest.mark.slow
def test_schedule_list_and_job_store_persists(tmp_path: Path) -> None:
    repo = HERE.parents[1]
    (tmp_path / "robot.toml").write_text(ROBOT_TOML.format(repo=repo))
    first = stampless("schedule", "--list", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = {line.split()[0]: line for line in first.stdout.splitlines() if line.strip()}
    assert {"poll", "sweep", "nightly"} <= set(lines)
    assert "02:00:00" in lines["nightly"] and "recheck" in lines["nightly"]
    assert (tmp_path / "var" / "scheduler.db").is_file()
    time.sleep(1.1)
    second = stampless("schedule", "--list", cwd=tmp_path)
    lines2 = {line.split()[0]: line for line in second.stdout.splitlines() if line.strip()}
    # Stored jobs keep their next run time across restarts (interval jobs included).
    # (Compared word by word: the table's padding follows its widest cell.)
    assert lines2["poll"].split() == lines["poll"].split()
    assert lines2["nightly"].split() == lines["nightly"].split()
    # A job removed from robot.toml leaves the store.
    (tmp_path / "robot.toml").write_text(
        ROBOT_TOML.format(repo=repo).replace(
            '[jobs.sweep]\nkind = "sweep_leases"', '[jobs.x]\nkind = "sweep_leases"'
        )
    )
    third = stampless("schedule", "--list", cwd=tmp_path)
    names = {line.split()[0] for line in third.stdout.splitlines() if line.strip()}
    assert "sweep" not in names and "x" in names


def test_bad_job_config_exits_2(tmp_path: Path) -> None:
    (tmp_path / "robot.toml").write_text('[jobs.bad]\nkind = "sweep_leases"\n')
    result = stampless("schedule", "--list", cwd=tmp_path)
    assert result.returncode == 2
    assert "exactly one of every_s or cron" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_recheck_supersedes_and_never_rewrites(tmp_path: Path, server: Any) -> None:
    config = make_config(tmp_path / "var")
    queue = open_queue(config)
    enqueue(queue, config, "LIC-1", "market_supervision")
    run_pool(make_pool(config, queue, server.url, workers=1, until_empty=True))
    first = read_verdict(config.outbox_dir, "LIC-1")
    assert first is not None
    assert recheck(queue, config, "marriage_certificate", 30) == []  # too recent
    later = recheck(queue, config, "marriage_certificate", -1)  # everything is "old"
    assert len(later) == 1 and later[0].startswith("LIC-1.recheck-")
    assert recheck(queue, config, "marriage_certificate", -1) == []  # already on its way
    run_pool(make_pool(config, queue, server.url, workers=1, until_empty=True))
    second = read_verdict(config.outbox_dir, later[0])
    assert second is not None and second.supersedes == "LIC-1"
    assert read_verdict(config.outbox_dir, "LIC-1") == first


@pytest.fixture
def server(tmp_path: Path) -> Any:
    s = LookupServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def _daemon(var: Path, url: str, grace: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), "daemon", str(var), url, str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},
    )


def _sigterm_when_running(proc: subprocess.Popen[str], queue: Any) -> str:
    try:
        end = time.monotonic() + 20
        while queue.counts()[ItemState.claimed] < 2:
            assert time.monotonic() < end, "the daemon never claimed two items"
            assert proc.poll() is None, "the daemon died"
            time.sleep(0.02)
        # A claim is written a moment before its worker starts the item, and an item
        # claimed as shutdown begins is rightly handed back unstarted. Signal once the two
        # items are surely running (each takes 1 s on the server), so they must finish.
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_sigterm_finishes_or_releases_and_writes_nothing_half(tmp_path: Path, server: Any) -> None:
    # Grace long enough: the two running items finish, the rest stay queued.
    var = tmp_path / "var"
    config = make_config(var)
    queue = open_queue(config)
    for i in range(4):
        enqueue(queue, config, f"T{i}", "civil_affairs", sleep=1.0)
    started = time.monotonic()
    out = _sigterm_when_running(_daemon(var, server.url, grace=10), queue)
    assert time.monotonic() - started < 30
    assert "SIGTERM received" in out
    counts = queue.counts()
    assert counts[ItemState.claimed] == 0, out[-3000:]
    # The running items finished (normally two; more only if this test was descheduled
    # for a second), the rest never started.
    assert counts[ItemState.done] >= 2, (counts, out[-3000:])
    assert counts[ItemState.done] + counts[ItemState.queued] == 4, counts
    outbox = sorted(p.name for p in config.outbox_dir.iterdir() if p.name != JOURNAL_DIR)
    assert len(outbox) == counts[ItemState.done] and not any(n.startswith(".") for n in outbox)
    for item in queue.list(states=[ItemState.queued]):
        assert item.attempts == 0  # never started, nothing counted

    # Grace too short: the running items are released, their attempt given back.
    var2 = tmp_path / "var2"
    config2 = make_config(var2)
    queue2 = open_queue(config2)
    for i in range(2):
        enqueue(queue2, config2, f"U{i}", "civil_affairs", sleep=3.0)
    out2 = _sigterm_when_running(_daemon(var2, server.url, grace=0.2), queue2)
    assert queue2.counts()[ItemState.queued] == 2, out2[-3000:]
    assert all(i.attempts == 0 for i in queue2.list())
    assert not config2.outbox_dir.exists() or list(config2.outbox_dir.iterdir()) == []
