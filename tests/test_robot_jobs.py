"""Scheduled robot jobs: a deployment's own operation, its ledger, ``schedule --list``.

Real Chromium against the shared emulated civil-affairs system (read only), real SQLite.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deployment_keys import SIGNER, signing_env
from test_robot_runtime import REPO, write_project

from stampless.config import load_config
from stampless.errors import ConfigError
from stampless.evidence import verify_bundle
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.records import records
from stampless.jobs import JobLedger
from stampless.scheduler import Daemon, configured_jobs

KEY = records("marriage_certificate", 7)[3]["cert_no"]

ROBOT = f"""
from stampless import Record, operation
from stampless.loader import load_attribute

Base = load_attribute({str(REPO / "robots" / "civil_affairs.py")!r}, "ROBOT")


class JobRobot(Base):
    @operation(returns="records")
    async def pick(self, page, job):
        return [await self.lookup(page, {KEY!r})]

    @operation(returns="requests")
    async def wrong(self, page, job):
        return ["not a submission"]

    async def plain(self, page, job):
        return None


ROBOT = JobRobot
"""

JOBS = """
[jobs.pick]
kind = "robot"
system = "civil_affairs"
operation = "pick"
every_s = 3600

[jobs.wrong]
kind = "robot"
system = "civil_affairs"
operation = "wrong"
account = "civil02"
every_s = 3600
"""


@pytest.fixture
def project(tmp_path: Path, fixture_servers: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in {**fixture_env(), **signing_env()}.items():
        monkeypatch.setenv(name, value)
    toml = write_project(tmp_path, fixture_servers.urls, accounts_per_system=2)
    (tmp_path / "job_robot.py").write_text(ROBOT, encoding="utf-8")
    text = toml.read_text(encoding="utf-8").replace(
        str(REPO / "robots" / "civil_affairs.py"), str(tmp_path / "job_robot.py")
    )
    toml.write_text(text + JOBS, encoding="utf-8")
    return toml


def test_robot_job_runs_its_operation_and_list_shows_the_outcome(project: Path) -> None:
    config = load_config(project)
    daemon = Daemon(config, signer=SIGNER, http=False)
    report = daemon.run_job("pick")
    assert report is not None and report.summary() == "1 record(s)"
    kept = json.loads((config.var_dir / "jobs" / "pick" / "records.json").read_text())
    assert [r["key"] for r in kept] == [KEY]
    assert kept[0]["fields"]["cert_no"] == KEY
    # The run's evidence is a sealed, signed bundle like a lookup's.
    assert report.bundle is not None and report.bundle.startswith("JOB-pick-")
    assert verify_bundle(
        config.evidence_dir / report.bundle, trusted_keys=[SIGNER.public_key_b64]
    ).ok
    # A value that is not what the operation declares fails the run, with a reason.
    assert daemon.run_job("wrong") is None
    last = daemon.ledger.last("wrong")
    assert last is not None and last.outcome == "failed"
    assert "returns='requests'" in last.detail and "Submission" in last.detail
    listed = subprocess.run(
        [sys.executable, "-m", "stampless", "schedule", "--list"],
        capture_output=True,
        text=True,
        cwd=project.parent,
        timeout=60,
        env={**os.environ, "OMP_THREAD_LIMIT": "1"},
    )
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "ok: 1 record(s)" in rows["pick"]
    assert "failed: The civil_affairs robot's operation wrong" in rows["wrong"]


def test_ledger_one_run_at_a_time_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    ledger = JobLedger(tmp_path / "jobs.db")
    first = ledger.begin("harvest", lease_s=60)
    assert first is not None
    assert ledger.begin("harvest", lease_s=60) is None  # no overlap, even in one process
    assert ledger.begin("other", lease_s=60) is not None  # leases are per job
    # The holder is SIGKILLed mid-run: its lease is taken over at once, its run abandoned.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_out())
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        conn.execute(
            "UPDATE job_leases SET holder = substr(holder, 1, instr(holder, ':')) || ? "
            "WHERE job = 'harvest'",
            (dead.stdout.strip(),),
        )
    second = ledger.begin("harvest", lease_s=60)
    assert second is not None and second != first
    runs = ledger.runs("harvest")
    assert [r.outcome for r in runs] == [None, "abandoned"]
    ledger.end("harvest", second, "ok", "3 queued")
    assert ledger.last("harvest").outcome == "ok"  # type: ignore[union-attr]
    assert ledger.begin("harvest", lease_s=60) is not None


def _out() -> dict[str, Any]:
    return {"capture_output": True, "text": True, "timeout": 30, "check": True}


def test_robot_job_configuration_errors_say_what_to_set(project: Path) -> None:
    config = load_config(project)
    config.jobs["pick"].operation = None
    with pytest.raises(ConfigError, match="set 'system' and 'operation'"):
        configured_jobs(config)
    config.jobs["pick"].operation = "plain"
    daemon = Daemon(config, signer=SIGNER, http=False)
    assert daemon.run_job("pick") is None
    detail = daemon.ledger.last("pick").detail  # type: ignore[union-attr]
    assert "has no operation 'plain'" in detail and "@operation(returns=...)" in detail
