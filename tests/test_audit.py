"""The audit chain: any removed, reordered or edited line is named; writers never fork it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stampless.audit import GENESIS, AuditLog, entries_for, line_hash, verify_chain
from stampless.checksums import resident_id_check_char

WRITER = """
import sys
from pathlib import Path
from stampless.audit import AuditLog
log = AuditLog(Path(sys.argv[1]), rotate_bytes=4096)
print("ready", flush=True)
sys.stdin.readline()  # start together, so the writers really overlap
for i in range(int(sys.argv[3])):
    log.append("looked_up", request_id=f"{sys.argv[2]}-{i}", actor=sys.argv[2], n=i)
"""


def _fill(audit_dir: Path, n: int, *, rotate_bytes: int = 64 * 1024 * 1024) -> AuditLog:
    log = AuditLog(audit_dir, rotate_bytes=rotate_bytes)
    for i in range(n):
        log.append("received" if i % 2 == 0 else "verdict", request_id=f"REQ-{i % 3}", n=i)
    return log


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_chain_links_every_line(tmp_path: Path) -> None:
    _fill(tmp_path, 6)
    lines = _lines(tmp_path / "audit-000001.jsonl")
    assert len(lines) == 6
    first = json.loads(lines[0])
    assert first["seq"] == 1 and first["prev"] == GENESIS
    for before, after in itertools.pairwise(lines):
        assert json.loads(after)["prev"] == line_hash(before)
    report = verify_chain(tmp_path)
    assert report.ok and report.lines == 6 and report.last_seq == 6


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    _fill(tmp_path, 30, rotate_bytes=1024)
    files = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(files) >= 3
    last_of_first = _lines(files[0])[-1]
    assert json.loads(_lines(files[1])[0])["prev"] == line_hash(last_of_first)
    report = verify_chain(tmp_path)
    assert report.ok and report.lines == 30 and len(report.files) == len(files)


def test_a_new_day_starts_a_new_file(tmp_path: Path) -> None:
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    old = {
        "seq": 1,
        "ts": yesterday,
        "event": "received",
        "request_id": "R",
        "actor": "a",
        "data": {},
        "prev": GENESIS,
    }
    (tmp_path / "audit-000001.jsonl").write_text(json.dumps(old) + "\n")
    AuditLog(tmp_path).append("queued", request_id="R")
    second = tmp_path / "audit-000002.jsonl"
    assert second.exists()
    assert json.loads(_lines(second)[0])["seq"] == 2
    assert verify_chain(tmp_path).ok


def test_deleting_a_line_is_named(tmp_path: Path) -> None:
    _fill(tmp_path, 8)
    path = tmp_path / "audit-000001.jsonl"
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:4] + lines[5:]))
    report = verify_chain(tmp_path)
    assert not report.ok
    assert report.first_broken is not None
    assert (report.first_broken.file, report.first_broken.line) == ("audit-000001.jsonl", 5)
    assert "removed" in report.first_broken.reason


def test_editing_a_line_is_named(tmp_path: Path) -> None:
    _fill(tmp_path, 8)
    path = tmp_path / "audit-000001.jsonl"
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"n":2', b'"n":9')
    path.write_bytes(b"".join(lines))
    report = verify_chain(tmp_path)
    assert not report.ok and report.first_broken is not None
    assert report.first_broken.line == 3
    assert "edited" in report.first_broken.reason


def test_editing_or_removing_the_last_line_is_caught_by_head(tmp_path: Path) -> None:
    _fill(tmp_path, 5)
    path = tmp_path / "audit-000001.jsonl"
    original = path.read_bytes()
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1].replace(b'"n":4', b'"n":7'))
    report = verify_chain(tmp_path)
    assert not report.ok and report.first_broken is not None
    assert report.first_broken.line == 5 and "edited" in report.first_broken.reason

    path.write_bytes(b"".join(_lines_of(original)[:-1]))
    report = verify_chain(tmp_path)
    assert not report.ok and report.first_broken is not None
    assert "removed" in report.first_broken.reason


def _lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def test_reordering_and_removing_a_file_are_caught(tmp_path: Path) -> None:
    _fill(tmp_path, 30, rotate_bytes=1024)
    files = sorted(tmp_path.glob("audit-*.jsonl"))
    lines = _lines(files[0])
    lines[1], lines[2] = lines[2], lines[1]
    files[0].write_bytes(b"".join(lines))
    report = verify_chain(tmp_path)
    assert not report.ok and report.first_broken is not None
    assert report.first_broken.line == 2
    lines[1], lines[2] = lines[2], lines[1]
    files[0].write_bytes(b"".join(lines))
    assert verify_chain(tmp_path).ok

    files[1].unlink()
    report = verify_chain(tmp_path)
    assert not report.ok and report.first_broken is not None
    assert report.first_broken.file == files[2].name and report.first_broken.line == 1

    for f in tmp_path.glob("audit-*.jsonl"):
        f.unlink()
    report = verify_chain(tmp_path)
    assert not report.ok and report.first_broken is not None
    assert "no audit file" in report.first_broken.reason


def test_torn_tail_is_dropped_and_the_chain_continues(tmp_path: Path) -> None:
    log = _fill(tmp_path, 3)
    path = tmp_path / "audit-000001.jsonl"
    with path.open("ab") as f:
        f.write(b'{"seq":4,"ts":"2026-')  # a writer died mid-line
    assert not verify_chain(tmp_path).ok
    entry = log.append("queued", request_id="REQ-x")
    assert entry["seq"] == 4
    assert verify_chain(tmp_path).ok


def test_concurrent_writers_make_one_chain(tmp_path: Path) -> None:
    per_writer = 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), name, str(per_writer)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("w1", "w2")
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=60) == 0
    report = verify_chain(tmp_path)
    assert report.ok, report.first_broken
    assert report.lines == 2 * per_writer and report.last_seq == 2 * per_writer
    actors = []
    for path in sorted(tmp_path.glob("audit-*.jsonl")):
        actors += [json.loads(line)["actor"] for line in _lines(path)]
    # Both writers got turns in between each other, so the lock was really contended.
    switches = sum(a != b for a, b in itertools.pairwise(actors))
    assert actors.count("w1") == per_writer and switches >= 1


def test_data_never_holds_secrets_or_full_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stampless.vault import resolve_secret

    monkeypatch.setenv("STAMPLESS_AUDIT_PW", "audit-pass-9988")
    resolve_secret("env:STAMPLESS_AUDIT_PW")
    body = "32010219900101123"
    full_id = body + resident_id_check_char(body)
    AuditLog(tmp_path).append(
        "logged_in",
        request_id="REQ-1",
        account="civil-1",
        password="audit-pass-9988",
        note=f"typed audit-pass-9988 for {full_id}",
    )
    text = (tmp_path / "audit-000001.jsonl").read_text()
    assert "audit-pass-9988" not in text
    assert full_id not in text
    assert full_id[:6] in text and "civil-1" in text


def test_entries_for_and_since(tmp_path: Path) -> None:
    _fill(tmp_path, 9)
    got = entries_for(tmp_path, "REQ-1")
    assert [e["data"]["n"] for e in got] == [1, 4, 7]
    assert verify_chain(tmp_path, since=datetime.now(UTC) + timedelta(hours=1)).lines == 0
    assert verify_chain(tmp_path, since=datetime.now(UTC) - timedelta(hours=1)).lines == 9


def test_cli_audit_verify(tmp_path: Path) -> None:
    audit = tmp_path / "var" / "audit"
    _fill(audit, 6)
    (tmp_path / "robot.toml").write_text("", encoding="utf-8")
    env = {**os.environ}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stampless", "audit", "verify", "--since", "1d"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert "6 line(s)" in ok.stdout
    path = audit / "audit-000001.jsonl"
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    broken = run()
    assert broken.returncode == 1
    assert "audit-000001.jsonl:3" in broken.stdout


def test_a_damaged_last_line_does_not_stop_recording(tmp_path: Path) -> None:
    log = _fill(tmp_path, 3)
    path = tmp_path / "audit-000001.jsonl"
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:-1]) + b"garbage\n")
    entry = log.append("queued", request_id="REQ-9")
    assert entry["seq"] == 4
    report = verify_chain(tmp_path)
    assert not report.ok and report.first_broken is not None
    assert report.first_broken.line == 3
