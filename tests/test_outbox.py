"""The outbox writes each verdict once, atomically, and never changes it."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from stampless._version import __version__
from stampless.models import Tier, Verdict, VerdictKind, utcnow
from stampless.outbox import (
    OutboxConflict,
    has_verdict,
    iter_verdicts,
    read_verdict,
    recheck_name,
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
    # No temp files left behind.
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == ["REQ-1.json"]


def test_different_verdict_is_a_conflict(tmp_path: Path) -> None:
    write_verdict(tmp_path, make_verdict())
    before = (tmp_path / "REQ-1.json").read_bytes()
    with pytest.raises(OutboxConflict, match="never rewritten"):
        write_verdict(tmp_path, make_verdict(kind=VerdictKind.mismatch))
    assert (tmp_path / "REQ-1.json").read_bytes() == before


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
    assert [p.name for p in tmp_path.iterdir()] == ["REQ-1.json"]
