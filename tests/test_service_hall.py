"""The service hall's approval system, its harvest and push robots, the loop they close.

The emulated hall is this module's own instance (``own_fixture_servers``): its tests
add applications and save materials, which the shared instance must not see.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deployment_keys import SIGNER, signing_env
from test_robot_runtime import REPO, write_project

from stampless.audit import write_checkpoint
from stampless.config import Config, load_config
from stampless.evidence import verify_bundle
from stampless.fixtures.accounts import accounts, fixture_env
from stampless.intake import Job
from stampless.models import VerdictKind
from stampless.outbox import publish
from stampless.pipeline import Pipeline
from stampless.queue import ItemState, open_queue
from stampless.scheduler import Daemon


def hall_state(servers: Any) -> list[dict[str, Any]]:
    """Every application of the hall as the hall itself records it."""
    return list(httpx.get(servers.url("service_hall") + "/_fixture/hall", timeout=10).json())


def hall_control(servers: Any, **body: Any) -> dict[str, Any]:
    answer = httpx.post(servers.url("service_hall") + "/_fixture/hall", json=body, timeout=10)
    answer.raise_for_status()
    return dict(answer.json())


def _login(client: httpx.Client) -> None:
    token = re.search(r'name="token" value="([^"]+)"', client.get("/login").text)
    assert token is not None
    account = accounts("service_hall")[0]
    answer = client.post(
        "/login",
        data={"token": token.group(1), "userCode": account.username, "userPwd": account.password},
    )
    assert answer.status_code == 302 and answer.headers["location"] == "/pending"


@pytest.fixture
def hall(own_fixture_servers: Any) -> Any:
    hall_control(own_fixture_servers, clear=True)
    return own_fixture_servers


def test_the_hall_lists_pending_applications_and_keeps_what_staff_save(hall: Any) -> None:
    with httpx.Client(base_url=hall.url("service_hall"), timeout=10) as client:
        assert client.get("/pending").headers["location"] == "/login"  # a session first
        _login(client)
        assert "暂无待办件" in client.get("/pending").text
        added = hall_control(hall, add=25, ago_s=120)["added"]
        first = client.get("/pending").text
        assert "待办件（共25件）" in first and 'id="lnkNext"' in first  # 20 a page
        assert added[0] in first and added[-1] not in first
        assert added[-1] in client.get("/pending?page=2").text
        state = {a["app_id"]: a for a in hall_state(hall)}
        app = state[added[0]]
        material = app["materials"][0]
        page = client.get(f"/application/{app['app_id']}").text
        assert "confirm('确认保存办理结果？')" in page and 'type="file"' in page
        assert material["key"] in page and material["claim"]["holder_id"] in page
        scans = [m["scan"] for a in state.values() for m in a["materials"]]
        assert any(scans) and not all(scans)  # some uploaded a scan, some are exempt
        assert ("查看扫描件" if material["scan"] else "未上传（免提交）") in page
        data = b"\x89PNG fetched certificate"
        saved = client.post(
            f"/application/{app['app_id']}/save",
            data={"materialId": material["mid"], "status": "1", "opinion": "核验通过 B-1"},
            files={"attachment": ("B-1.png", data, "image/png")},
        )
        assert saved.status_code == 302
        assert "保存成功" in client.get(saved.headers["location"]).text
    after = {a["app_id"]: a for a in hall_state(hall)}[app["app_id"]]
    done = after["materials"][0]
    assert done["status"] == "verified" and done["decided_at"] is not None
    assert [(u["name"], u["sha256"]) for u in done["uploads"]] == [
        ("B-1.png", hashlib.sha256(data).hexdigest())
    ]
    assert after["comments"] == [f"{material['mid']}：核验通过 B-1"]
    assert after["pending"] == any(m["status"] == "pending" for m in after["materials"])
    log = [e for e in hall.access_log("service_hall") if e["path"].endswith("/save")]
    assert log and log[-1]["account"] == "hall01" and log[-1]["method"] == "POST"


HALL = """
[systems.service_hall]
url = "{url}"
robot = "{repo}/robots/service_hall.py"
selectors = "{repo}/selectors/service_hall.toml"

[[systems.service_hall.accounts]]
name = "hall01"
username = "hall01"
password = "env:HALL01_PASSWORD"

[jobs.harvest]
kind = "robot"
system = "service_hall"
operation = "harvest"
every_s = 30

[delivery]
push = "service_hall"
"""


@pytest.fixture
def project(hall: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    for name, value in {**fixture_env(), **signing_env()}.items():
        monkeypatch.setenv(name, value)
    toml = write_project(tmp_path, hall.urls, accounts_per_system=1)
    with toml.open("a", encoding="utf-8") as out:
        out.write(HALL.format(url=hall.url("service_hall"), repo=REPO))
    yield load_config(toml)


def test_harvest_fetch_and_push_close_the_loop_once(hall: Any, project: Config) -> None:
    added = hall_control(hall, add=1, ago_s=90, exempt=True)["added"]
    daemon = Daemon(project, signer=SIGNER, http=False)
    report = daemon.run_job("harvest")
    state = {a["app_id"]: a for a in hall_state(hall)}
    wanted = {f"{a}.{m['mid']}": m for a in added for m in state[a]["materials"]}
    assert report is not None and sorted(report.queued) == sorted(wanted)
    for rid, material in wanted.items():
        item = daemon.queue.get(rid)
        assert item is not None and item.request.claim == material["claim"]
        assert item.request.fetch is not material["scan"]
        assert (item.request.scan is not None) is material["scan"]
        # The SLA clock started when the applicant applied, not when the robot saw it.
        hall_time = state[rid.split(".")[0]]["received_at"]
        assert abs(item.received_at.timestamp() - hall_time) < 1.0
    downloads = len(_scan_downloads(hall))
    again = daemon.run_job("harvest")  # a new process: the robot remembers nothing
    assert again is not None and again.count == 0 and again.refused == {}
    assert len(_scan_downloads(hall)) == downloads  # nothing known is fetched again
    exempt = next(
        rid
        for rid, m in wanted.items()
        if not m["scan"] and m["doc_type"] == "marriage_certificate"
    )
    item = daemon.queue.get(exempt)
    assert item is not None

    async def verify() -> Any:
        async with Pipeline(project, signer=SIGNER) as pipeline:
            return await pipeline.process(Job.from_item(item))

    verdict = asyncio.run(verify())
    assert verdict.verdict in (VerdictKind.verified, VerdictKind.needs_review), verdict.reasons
    if verdict.verdict is VerdictKind.needs_review:  # OCR doubted a name: a person decides
        verdict = verdict.model_copy(
            update={"verdict": VerdictKind.verified, "decided_by": "reviewer01"}
        )
    bundle = project.evidence_dir / exempt
    fetched = [p for p in bundle.iterdir() if p.name == f"{wanted[exempt]['key']}.png"]
    assert fetched and verify_bundle(bundle, trusted_keys=[SIGNER.public_key_b64]).ok

    # The final verdict goes back to the hall: the fetched certificate, the status, a
    # comment naming the bundle; the webhook's bookkeeping, the robot's hands.
    publish(project.outbox_dir, verdict, signer=SIGNER)
    write_checkpoint(project.audit_dir, project.outbox_dir, SIGNER)  # not a verdict: skipped
    pushed = daemon.run_job("push_outbox")
    assert pushed is not None and pushed.delivered == [exempt], pushed
    application, mid = exempt.rsplit(".", 1)
    after = next(a for a in hall_state(hall) if a["app_id"] == application)
    material = next(m for m in after["materials"] if m["mid"] == mid)
    assert material["status"] == "verified"
    digest = hashlib.sha256(fetched[0].read_bytes()).hexdigest()
    assert [(u["name"], u["sha256"]) for u in material["uploads"]] == [(f"{exempt}.png", digest)]
    assert any(exempt in c and "核验通过" in c for c in after["comments"])
    # A crash after the hall saved and before push.db did: the push runs again, and
    # finds its upload on the page instead of adding a second one.
    assert daemon.pusher is not None
    daemon.pusher.redeliver(exempt)
    again_pushed = daemon.run_job("push_outbox")
    assert again_pushed is not None and again_pushed.delivered == [exempt]
    after = next(a for a in hall_state(hall) if a["app_id"] == application)
    assert len(next(m for m in after["materials"] if m["mid"] == mid)["uploads"]) == 1
    pushes = sorted(p.name for p in project.evidence_dir.glob(f"PUSH-{exempt}-*"))
    assert len(pushes) == 2
    captions = (project.evidence_dir / pushes[0] / "manifest.json").read_text(encoding="utf-8")
    assert "before push" in captions and "after push" in captions
    assert "already pushed" in (project.evidence_dir / pushes[1] / "manifest.json").read_text()


def _scan_downloads(servers: Any) -> list[dict[str, Any]]:
    return [e for e in servers.access_log("service_hall") if "/scan/" in e["path"]]


@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.slow
def test_sigkill_mid_run_loses_no_application_and_uploads_nothing_twice(
    hall: Any, project: Config
) -> None:
    """The scheduler and its worker SIGKILLed while an item is being verified, then
    started again: every material still reaches the hall, each uploaded exactly once."""
    toml = project.root / "robot.toml"
    text = toml.read_text(encoding="utf-8").replace("every_s = 30", "every_s = 2")
    toml.write_text(text + "push_every_s = 2\n", encoding="utf-8")
    hall_control(hall, add=1, ago_s=10)
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    command = [sys.executable, "-m", "stampless", "--config", str(toml), "schedule"]
    command += ["--workers", "1", "--no-http", "--dev"]
    log = (project.root / "schedule.log").open("a")
    queue = open_queue(project)

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(command, stdout=log, stderr=log, text=True, env=env)

    daemon = start()
    try:
        deadline = time.monotonic() + 180
        while not queue.list(states=[ItemState.claimed]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert queue.list(states=[ItemState.claimed]), "no item was claimed"
        daemon.kill()  # mid-run: an item claimed, its browser open
        daemon.wait(timeout=30)
        daemon = start()
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            review = {i.request_id for i in queue.list(states=[ItemState.review])}
            waiting = [
                f"{a['app_id']}.{m['mid']}"
                for a in hall_state(hall)
                for m in a["materials"]
                if m["status"] == "pending" and f"{a['app_id']}.{m['mid']}" not in review
            ]
            if not waiting:
                break
            time.sleep(1)
        assert not waiting, f"never pushed back: {waiting}"
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    materials = [m for a in hall_state(hall) for m in a["materials"]]
    assert all(len(m["uploads"]) == (m["decided_at"] is not None) for m in materials)
