"""Configuration errors are found before any work starts, and are final.

A secret robot.toml names that is not set stops ``run``, ``schedule`` and ``verify`` at
once with exit 2 and the fix, before an item is claimed or a browser started (it was
retried item after item as if the department system were down). ``stampless doctor``
checks robot.toml, its modules, its secrets and whether each system answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from deployment_keys import signing_env

from stampless.config import load_config
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.records import SYSTEMS
from stampless.fixtures.scans import generate
from stampless.queue import ItemState, open_queue

REPO = Path(__file__).resolve().parents[1]


def stampless(
    *args: str, env: dict[str, str], cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stampless", *args],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "300"},
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def env(tmp_path: Path, fixture_servers: Any) -> dict[str, str]:
    """The repository's robot.toml on the emulated systems, every secret set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STAMPLESS")}
    out = {
        **clean,
        **fixture_env(),
        **signing_env(),
        "STAMPLESS__PROJECT__VAR_DIR": str(tmp_path / "var"),
    }
    for system, url in fixture_servers.urls.items():
        out[f"STAMPLESS__SYSTEMS__{system.upper()}__URL"] = url
    return out


@pytest.fixture(scope="module")
def request_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scan = generate(
        tmp_path_factory.mktemp("scans"),
        "marriage_certificate",
        1,
        61,
        "easy",
        0.0,
        0.0,
        records_seed=7,
    )[0]
    return scan.with_suffix(".request.json")


def assert_one_line_naming(done: subprocess.CompletedProcess[str], variable: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert variable in lines[0] and "fixtures env" in lines[0], lines[0]


def test_run_refuses_to_start_without_a_secret(env: dict[str, str], request_file: Path) -> None:
    submitted = stampless("submit", str(request_file), env=env)
    assert submitted.returncode == 0, submitted.stderr
    del env["SOCIAL02_TOTP"]
    started = time.monotonic()
    done = stampless("run", "--until-empty", "--no-progress", env=env)
    assert time.monotonic() - started < 30
    assert_one_line_naming(done, "SOCIAL02_TOTP")
    config = load_config(REPO / "robot.toml", environ=env)
    queue = open_queue(config)
    try:
        (item,) = queue.list()
    finally:
        queue.close()
    assert item.state is ItemState.queued and item.attempts == 0  # never claimed
    assert not config.evidence_dir.exists() or not any(config.evidence_dir.iterdir())


def test_schedule_and_verify_refuse_too(env: dict[str, str], request_file: Path) -> None:
    del env["CIVIL02_PASSWORD"]
    assert_one_line_naming(stampless("schedule", env=env), "CIVIL02_PASSWORD")
    verify = stampless("verify", str(request_file), env=env)
    assert_one_line_naming(verify, "CIVIL02_PASSWORD")
    assert not (Path(env["STAMPLESS__PROJECT__VAR_DIR"]) / "evidence").exists()
    # `schedule --list` only reads: it needs no secret.
    assert stampless("schedule", "--list", env=env).returncode == 0


def test_doctor_checks_the_deployment_and_its_systems(env: dict[str, str], tmp_path: Path) -> None:
    healthy = stampless("doctor", "--json", env=env)
    assert healthy.returncode == 0, healthy.stdout
    report = json.loads(healthy.stdout)
    assert report["ok"] is True
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["secrets"]["ok"] and by_name["type marriage_certificate"]["ok"]
    reachable = [c for c in report["checks"] if c["group"] == "systems"]
    assert len(reachable) == len(SYSTEMS) and all("answered" in c["detail"] for c in reachable)

    del env["MARKET03_PASSWORD"]
    env["STAMPLESS__SYSTEMS__SOCIAL_SECURITY__URL"] = "http://127.0.0.1:9"  # nobody there
    broken = stampless("doctor", "--json", env=env)
    assert broken.returncode == 4
    checks = {c["name"]: c for c in json.loads(broken.stdout)["checks"]}
    assert not checks["env:MARKET03_PASSWORD"]["ok"]
    assert "fixtures env" in checks["env:MARKET03_PASSWORD"]["fix"]
    assert not checks["system social_security"]["ok"]
    assert "does not answer" in checks["system social_security"]["detail"]
    offline = json.loads(stampless("doctor", "--json", "--offline", env=env).stdout)
    assert not [c for c in offline["checks"] if c["group"] == "systems"]

    # A robot.toml that does not parse is a finding, not a traceback.
    project = tmp_path / "project"
    project.mkdir()
    (project / "robot.toml").write_text("[systems.x\n", encoding="utf-8")
    bad = stampless("doctor", env=env, cwd=project)
    assert bad.returncode == 4 and "Traceback" not in bad.stderr
    assert "not valid TOML" in bad.stdout


@pytest.mark.slow
def test_a_system_that_refuses_every_account_is_not_retried_item_by_item(
    fixture_servers_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong passwords for all of a system's accounts: one login POST per account, the
    accounts are marked unusable, and no item is retried; the items wait for the operator
    ('stampless accounts enable') or, near their deadline, go to a person."""
    import asyncio

    from test_accounts import SYSTEM, _config, _enqueue, _login_posts, _run

    servers = fixture_servers_factory()
    for name, value in fixture_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MARKET01_PASSWORD", "not-the-password")
    monkeypatch.setenv("MARKET02_PASSWORD", "not-this-one-either")
    config = _config(tmp_path, servers.urls)
    queue = open_queue(config)
    _enqueue(queue, range(6))

    async def stop_soon(pool: Any) -> None:
        await asyncio.sleep(15)
        pool.stop.set()

    _run(config, queue, stop_after=stop_soon)
    assert _login_posts(servers, "market01") == 1 and _login_posts(servers, "market02") == 1
    for item in queue.list():
        assert item.attempts <= 1 and item.state in (ItemState.queued, ItemState.review), item
    unusable = {s.account for s in queue.account_states() if s.system == SYSTEM and not s.usable}
    assert unusable == {"market01", "market02"}
