"""What operators watch: /healthz, /readyz and /metrics on every long-running process.

Real processes on free ports: the reviewer console on waitress, ``intake serve``, and
``run --port``; each answered over HTTP, stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from deployment_keys import signing_env

from stampless.config import load_config
from stampless.fixtures.accounts import fixture_env
from stampless.intake import Intake, IntakeServer
from stampless.metrics import DECISIONS, exposition
from stampless.queue import open_queue

REPO = Path(__file__).resolve().parents[1]
TOKEN = "intake-token-for-tests"


def environment(tmp_path: Path) -> dict[str, str]:
    """The repository's robot.toml with a var/ of this test's, its secrets and a token."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STAMPLESS")}
    return {
        **clean,
        **fixture_env(),
        **signing_env(),
        "STAMPLESS__PROJECT__VAR_DIR": str(tmp_path / "var"),
        "STAMPLESS_TEST_INTAKE_TOKEN": TOKEN,
        "STAMPLESS__INTAKE__TOKEN": "env:STAMPLESS_TEST_INTAKE_TOKEN",
    }


@contextmanager
def serving(args: list[str], env: dict[str, str]) -> Iterator[str]:
    """``stampless ARGS`` running until the block ends; yields the URL of its 'ready' line
    (or, for ``run``, of its health port)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "stampless", "--config", str(REPO / "robot.toml"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if args[0] == "run":
            port = args[args.index("--port") + 1]
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    httpx.get(url + "/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        raise AssertionError("stampless run exited") from None
                    import time

                    time.sleep(0.1)
        else:
            line = proc.stdout.readline()
            assert line.startswith("ready "), line
            url = line.split()[1].rstrip("/")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        if proc.stdout is not None:
            proc.stdout.close()


def test_console_answers_health_readiness_and_metrics_on_waitress(tmp_path: Path) -> None:
    env = environment(tmp_path)
    with serving(["review", "serve", "--port", "0"], env) as url:
        health = httpx.get(url + "/healthz")
        assert health.status_code == 200 and health.json() == {"ok": True}
        assert health.headers["server"] == "stampless"  # waitress, not a development server
        # No reviewer account yet: nobody could decide anything.
        unready = httpx.get(url + "/readyz")
        assert unready.status_code == 503
        assert "a reviewer account" in unready.json()["problems"]
        added = subprocess.run(
            [sys.executable, "-m", "stampless", "--config", str(REPO / "robot.toml"),
             "review", "add-user", "ops", "--role", "admin"],
            input="a long enough password\n", env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert httpx.get(url + "/readyz").json() == {"ready": True, "problems": {}}
        metrics = httpx.get(url + "/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    text = metrics.text
    assert 'stampless_circuit_state{state="closed",system="civil_affairs"} 1.0' in text
    assert 'stampless_selector_fallbacks{system="social_security"} 0.0' in text
    assert "# TYPE stampless_stage_seconds histogram" in text


def test_intake_serve_takes_requests_and_counts_them(tmp_path: Path) -> None:
    from stampless.fixtures.scans import generate

    env = environment(tmp_path)
    scan = generate(tmp_path / "in", "marriage_certificate", 1, 71, "easy", 0.0, 0.0,
                    records_seed=7)[0]  # fmt: skip
    import base64

    request = json.loads(scan.with_suffix(".request.json").read_text(encoding="utf-8"))
    body = {
        "request": request,
        "scan_name": scan.name,
        "scan_base64": base64.b64encode(scan.read_bytes()).decode(),
    }
    with serving(["intake", "serve", "--port", "0"], env) as url:
        assert httpx.post(url + "/requests", json=body).status_code == 401
        posted = httpx.post(
            url + "/requests", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert posted.status_code == 201, posted.text
        assert httpx.get(url + "/readyz").status_code == 200
        text = httpx.get(url + "/metrics").text
    assert 'stampless_items{state="queued",tier="robot"} 1.0' in text


def test_workers_serve_health_on_their_port(tmp_path: Path) -> None:
    from ports import free_port_block

    env = environment(tmp_path)
    port = str(free_port_block(1))
    with serving(["run", "--workers", "1", "--no-progress", "--port", port, "--dev"], env) as url:
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/readyz").json()["ready"] is True
        text = httpx.get(url + "/metrics").text
    assert "# TYPE stampless_stage_seconds histogram" in text
    assert "process_cpu_seconds_total" in text  # this worker process's own figures


def test_health_port_without_a_token_takes_no_requests(tmp_path: Path) -> None:
    env = environment(tmp_path)
    del env["STAMPLESS__INTAKE__TOKEN"]
    config = load_config(REPO / "robot.toml", environ={**env, "STAMPLESS__INTAKE__PORT": "0"})
    queue = open_queue(config)
    server = IntakeServer(Intake(config, queue), None, ready_checks={"a pool": lambda: False})
    server.start()
    try:
        refused = httpx.post(server.url + "/requests", json={})
        assert refused.status_code == 404
        assert "[intake] token" in refused.json()["error"]
        not_ready = httpx.get(server.url + "/readyz")
        assert not_ready.status_code == 503 and "a pool" in not_ready.json()["problems"]
    finally:
        server.stop()
        queue.close()


def test_straight_through_ratio_counts_robot_decisions(tmp_path: Path) -> None:
    config = load_config(REPO / "robot.toml", environ=environment(tmp_path))
    for verdict in ("verified", "verified", "mismatch", "needs_review"):
        DECISIONS.labels("robot", verdict).inc()
    text = exposition(config).decode()
    line = next(x for x in text.splitlines() if x.startswith("stampless_ocr_straight_through"))
    ratio = float(line.split()[-1])
    assert 0 < ratio < 1  # others in this process may have counted decisions too
    assert 'stampless_decisions_total{tier="robot",verdict="needs_review"}' in text
