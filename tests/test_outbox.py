"""The outbox writes each verdict once, atomically, and never changes it."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from deployment_keys import SIGNER

from stampless._version import __version__
from stampless.models import Tier, Verdict, VerdictKind, utcnow
from stampless.outbox import (
    JOURNAL_DIR,
    OutboxConflict,
    has_verdict,
    iter_verdicts,
    publish,
    read_verdict,
    recheck_name,
    verdict_bytes,
    write_verdict,
)


def make_verdict(rid: str = "REQ-1", kind: VerdictKind = VerdictKind.verified) -> Verdict:
    now = utcnow()
    return Verdict(
        request_id=rid,
        type="marriage_certificate",
        tier=Tier.robot,
        verdict=kind,
        received_at=now - timedelta(seconds=3),
        finished_at=now,
        deadline=now + timedelta(minutes=3),
        sla_met=True,
        stampless_version=__version__,
    )


def test_write_is_whole_and_idempotent(tmp_path: Path) -> None:
    v = make_verdict()
    path = write_verdict(tmp_path / "outbox", v)
    assert path == tmp_path / "outbox" / "REQ-1.json"
    assert json.loads(path.read_text())["verdict"] == "verified"
    mtime = path.stat().st_mtime_ns
    assert write_verdict(tmp_path / "outbox", v) == path
    assert path.stat().st_mtime_ns == mtime
    assert read_verdict(tmp_path / "outbox", "REQ-1") == v
    assert has_verdict(tmp_path / "outbox", "REQ-1")
    assert [p.name for p in iter_verdicts(tmp_path / "outbox")] == ["REQ-1.json"]
    # No temp files left behind; the file is journaled once for delivery.
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [".journal", "REQ-1.json"]
    (journal,) = (tmp_path / "outbox" / ".journal").iterdir()
    assert journal.read_text() == "REQ-1\n"


def test_different_verdict_is_a_conflict(tmp_path: Path) -> None:
    write_verdict(tmp_path, make_verdict())
    before = (tmp_path / "REQ-1.json").read_bytes()
    with pytest.raises(OutboxConflict, match="never rewritten"):
        write_verdict(tmp_path, make_verdict(kind=VerdictKind.mismatch))
    assert (tmp_path / "REQ-1.json").read_bytes() == before


def test_publish_signs_writes_once_and_reports_what_was_there(tmp_path: Path) -> None:
    first = publish(tmp_path, make_verdict(), signer=SIGNER)
    assert first.conflict is None and first.verdict.signature is not None
    assert read_verdict(tmp_path, "REQ-1") == first.verdict
    again = publish(tmp_path, first.verdict.model_copy(update={"signature": None}), signer=SIGNER)
    assert again.conflict is None and again.path == first.path  # the same bytes: a no-op
    other = publish(tmp_path, make_verdict(kind=VerdictKind.mismatch), signer=SIGNER)
    assert isinstance(other.conflict, OutboxConflict)
    assert other.verdict == first.verdict  # what the outbox holds, untouched
    with pytest.raises(OutboxConflict, match="not final"):
        publish(tmp_path, make_verdict(kind=VerdictKind.needs_review), signer=SIGNER)


def test_recheck_supersedes_under_new_name(tmp_path: Path) -> None:
    first = make_verdict()
    write_verdict(tmp_path, first)
    name = recheck_name("REQ-1", "20261122T000000")
    second = make_verdict(rid=name, kind=VerdictKind.not_found).model_copy(
        update={"supersedes": "REQ-1"}
    )
    write_verdict(tmp_path, second)
    assert read_verdict(tmp_path, name).supersedes == "REQ-1"  # type: ignore[union-attr]
    assert read_verdict(tmp_path, "REQ-1") == first


def test_needs_review_and_path_tricks_refused(tmp_path: Path) -> None:
    with pytest.raises(OutboxConflict, match="not final"):
        write_verdict(tmp_path, make_verdict(kind=VerdictKind.needs_review))
    with pytest.raises(OutboxConflict, match="safe file name"):
        write_verdict(tmp_path, make_verdict(), name="../evil")
    assert list(tmp_path.iterdir()) == []


def test_racing_writers_leave_one_file(tmp_path: Path) -> None:
    # Two distinct verdicts, four writers each: the first to land wins, its twins agree.
    verdicts = [make_verdict(kind=k) for k in (VerdictKind.verified, VerdictKind.mismatch)] * 4
    outcomes: list[str] = []

    def write(v: Verdict) -> None:
        try:
            write_verdict(tmp_path, v)
            outcomes.append("ok")
        except OutboxConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(v,)) for v in verdicts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(outcomes) == 8
    assert outcomes.count("conflict") == 4
    assert [p.name for p in tmp_path.iterdir() if p.name != JOURNAL_DIR] == ["REQ-1.json"]


# -- webhook delivery: a real receiver on 127.0.0.1 -----------------------------------------

RECEIVER = r"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log_path, fail_first = sys.argv[1], int(sys.argv[2])
lock = threading.Lock()
seen = {}      # Idempotency-Key -> times posted
accepted = {}  # Idempotency-Key -> body, deduplicated

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_POST(self):
        key = self.headers.get("Idempotency-Key")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            seen[key] = seen.get(key, 0) + 1
            fail = seen[key] <= fail_first
            if not fail:
                accepted.setdefault(key, body.decode())
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"key": key, "auth": self.headers.get("Authorization"),
                                     "status": 500 if fail else 200}) + "\n")
        self.send_response(500 if fail else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        with lock:
            body = json.dumps({"seen": seen, "accepted": accepted}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("ready", srv.server_address[1], flush=True)
srv.serve_forever()
"""


class Receiver:
    def __init__(self, tmp: Path, fail_first: int) -> None:
        import subprocess
        import sys

        script = tmp / "receiver.py"
        script.write_text(RECEIVER)
        self.log = tmp / "receiver.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(self.log), str(fail_first)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready"
        self.url = f"http://127.0.0.1:{line[1]}/hook"

    def state(self) -> dict:
        import httpx

        return httpx.get(self.url, timeout=5).json()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_webhook_sees_every_verdict_at_least_once(tmp_path: Path) -> None:
    import time

    from stampless.delivery import Delivery

    outbox = tmp_path / "outbox"
    names = [f"REQ-{i}" for i in range(5)]
    for name in names:
        write_verdict(outbox, make_verdict(rid=name))
    receiver = Receiver(tmp_path, fail_first=1)
    try:
        delivery = Delivery(
            tmp_path / "delivery.db",
            outbox,
            url=receiver.url,
            token="t0ken-for-test",
            max_attempts=5,
            backoff_base_s=0.05,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            delivery.deliver_pending()
            if all(delivery.status(n) == "delivered" for n in names):
                break
            time.sleep(0.05)
        state = receiver.state()
        # A second pass sends nothing more: delivered is recorded.
        assert delivery.deliver_pending().delivered == []
    finally:
        receiver.stop()
    assert all(delivery.status(n) == "delivered" for n in names)
    assert sorted(state["accepted"]) == names
    assert all(state["seen"][n] == 2 for n in names)  # one 500, then one 200
    for n in names:
        assert state["accepted"][n] == (outbox / f"{n}.json").read_text()
        tries = delivery.attempts(n)
        assert [t["http_status"] for t in tries] == [500, 200]
        assert [t["attempt"] for t in tries] == [1, 2]
    lines = [json.loads(x) for x in receiver.log.read_text().splitlines()]
    assert {x["auth"] for x in lines} == {"Bearer t0ken-for-test"}


def test_delivery_reads_the_journal_and_lists_the_outbox_only_when_asked(
    tmp_path: Path,
) -> None:
    from stampless.delivery import Delivery

    outbox = tmp_path / "outbox"
    write_verdict(outbox, make_verdict(rid="OLD-1"))
    (outbox / "OLD-2.json").write_bytes(verdict_bytes(make_verdict(rid="OLD-2")))  # unjournaled
    delivery = Delivery(tmp_path / "delivery.db", outbox, url="http://127.0.0.1:9/hook")
    assert delivery.discover() == 2  # the first pass lists the outbox
    assert delivery.discover() == 0
    write_verdict(outbox, make_verdict(rid="NEW-1"))
    # A crash between the rename and the journal line: only a listing finds it.
    (outbox / "LOST-1.json").write_bytes(verdict_bytes(make_verdict(rid="LOST-1")))
    assert delivery.discover() == 1
    assert delivery.status("NEW-1") == "pending" and delivery.status("LOST-1") is None
    # A journal line still being written is left for the next pass.
    journal = next((outbox / ".journal").glob("*.log"))
    with journal.open("ab") as fh:
        fh.write(b"HALF")
    assert delivery.discover() == 0
    with journal.open("ab") as fh:
        fh.write(b"-1\n")
    assert delivery.discover() == 1 and delivery.status("HALF-1") == "pending"
    assert delivery.discover(full=True) == 1 and delivery.status("LOST-1") == "pending"
    # An operator may redeliver a verdict delivery never registered.
    (outbox / "LOST-2.json").write_bytes(verdict_bytes(make_verdict(rid="LOST-2")))
    delivery.redeliver("LOST-2")
    assert delivery.status("LOST-2") == "pending"


def test_webhook_gives_up_after_max_attempts(tmp_path: Path) -> None:
    import socket

    from stampless.delivery import Delivery

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_verdict(tmp_path / "outbox", make_verdict(rid="REQ-X"))
    delivery = Delivery(
        tmp_path / "delivery.db",
        tmp_path / "outbox",
        url=f"http://127.0.0.1:{port}/hook",
        max_attempts=2,
        backoff_base_s=0.0,
        timeout_s=2,
    )
    first = delivery.deliver_pending()
    second = delivery.deliver_pending()
    assert first.failed == ["REQ-X"] and second.gave_up == ["REQ-X"]
    assert delivery.status("REQ-X") == "gave_up"
    assert [t["ok"] for t in delivery.attempts("REQ-X")] == [0, 0]
    delivery.redeliver("REQ-X")
    assert delivery.status("REQ-X") == "pending"
