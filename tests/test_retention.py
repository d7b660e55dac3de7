"""Retention: ``stampless evidence prune`` leaves signed tombstones, and what depended on the
bundles still verifies (the outbox verdicts through their tombstones, the audit chain)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_evidence import build_bundle

from stampless.audit import AuditLog, verify_chain
from stampless.config import load_config
from stampless.evidence import BundleExists, EvidenceBundle
from stampless.models import Request, Tier, Verdict, VerdictKind, utcnow
from stampless.outbox import publish
from stampless.retention import TOMBSTONE, _finish_interrupted, prune, read_tombstone
from stampless.review.store import ReviewStore
from stampless.signing import Signer, fingerprint


def _deployment(tmp_path: Path, signer: Signer) -> Path:
    """A project whose outbox holds signed verdicts of three sealed bundles, one of them
    waiting for a reviewer, with their reports, spooled requests and audit lines."""
    (tmp_path / "robot.toml").write_text(
        f'[evidence]\ntrusted_keys = ["{fingerprint(signer.public_key_b64)}"]\nretention = "30d"\n',
        encoding="utf-8",
    )
    config = load_config(tmp_path / "robot.toml")
    audit = AuditLog(config.audit_dir)
    for rid, kind in (("OLD-1", "verified"), ("OLD-2", "mismatch"), ("WAIT-1", "verified")):
        sealed = build_bundle(config.evidence_dir, rid, signer, verdict=kind)
        audit.append("verdict", request_id=rid, manifest_sha256=sealed.manifest_sha256)
        (config.var_dir / "reports").mkdir(parents=True, exist_ok=True)
        (config.var_dir / "reports" / f"{rid}.html").write_text("<img src=data:...>")
        (config.var_dir / "spool" / rid).mkdir(parents=True)
        (config.var_dir / "spool" / rid / "scan.png").write_bytes(b"scan")
        now = utcnow()
        verdict = Verdict(
            request_id=rid,
            type="marriage_certificate",
            tier=Tier.robot,
            verdict=VerdictKind(kind if rid != "WAIT-1" else "needs_review"),
            evidence=str(sealed.path),
            manifest_sha256=sealed.manifest_sha256,
            received_at=now,
            finished_at=now,
            stampless_version="test",
        )
        if rid == "WAIT-1":
            request = Request(id=rid, type="marriage_certificate", claim={})
            ReviewStore.from_config(config).add(verdict, request=request, reason="unsure")
        else:
            publish(config.outbox_dir, verdict, signer=signer)
    return config.var_dir


def test_prune_leaves_signed_tombstones_and_everything_verifies(
    tmp_path: Path,
    cli,
) -> None:
    signer = Signer.generate()
    var = _deployment(tmp_path, signer)
    config = load_config(tmp_path / "robot.toml")
    before = {
        p.name: sum(f.stat().st_size for f in p.rglob("*")) for p in config.evidence_dir.iterdir()
    }

    dry = cli("evidence", "prune", "--older-than", "0d", "--dry-run", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert [json.loads(line)["request_id"] for line in dry.stdout.splitlines()] == [
        "OLD-1",
        "OLD-2",
    ]
    assert not read_tombstone(config.evidence_dir / "OLD-1")  # a dry run removes nothing

    # Not old enough under the configured 30 days: nothing goes.
    assert prune(config, signer, older_than=config.evidence.retention_delta, reason="r") == []
    later = utcnow().replace(year=utcnow().year + 1)
    retention = config.evidence.retention_delta
    pruned = prune(config, signer, older_than=retention, reason="retention 30d", now=later)
    assert [p.request_id for p in pruned] == ["OLD-1", "OLD-2"]  # WAIT-1 waits for a person
    for rid in ("OLD-1", "OLD-2"):
        folder = config.evidence_dir / rid
        assert sorted(p.name for p in folder.iterdir()) == [TOMBSTONE]
        tomb = read_tombstone(folder)
        assert tomb is not None and tomb["reason"] == "retention 30d"
        assert {f["name"] for f in tomb["files"]} >= {"scan.png", "verdict.json"}
        assert (folder / TOMBSTONE).stat().st_size < before[rid] / 4
        assert not (var / "reports" / f"{rid}.html").exists()
        assert not (var / "spool" / rid).exists()
        with pytest.raises(BundleExists):  # the id never gets new evidence
            EvidenceBundle.open(config.evidence_dir, rid)
        ok = cli("evidence", "verify", rid, cwd=tmp_path)
        assert ok.returncode == 0 and ok.stdout.startswith(f"PRUNED {rid}"), ok.stdout + ok.stderr
    assert (config.evidence_dir / "WAIT-1" / "manifest.json").is_file()
    assert (var / "spool" / "WAIT-1").is_dir()
    chain = verify_chain(config.audit_dir)
    assert chain.ok
    lines = next(config.audit_dir.glob("*.jsonl")).read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines].count("evidence_pruned") == 2

    shown = cli("evidence", "show", "OLD-1", cwd=tmp_path)
    assert shown.returncode == 2 and "was removed at" in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1
    # A tombstone edited after signing, or one naming another bundle, fails.
    tomb_path = config.evidence_dir / "OLD-2" / TOMBSTONE
    tomb = json.loads(tomb_path.read_text())
    tomb["reason"] = "a request of the applicant"
    tomb_path.write_text(json.dumps(tomb))
    bad = cli("evidence", "verify", "OLD-2", "--json", cwd=tmp_path)
    assert bad.returncode == 1 and json.loads(bad.stdout)["problems"], bad.stdout


def test_a_prune_cut_short_is_finished_by_the_next(tmp_path: Path) -> None:
    signer = Signer.generate()
    evidence = tmp_path / "evidence"
    build_bundle(evidence, "A", signer)
    build_bundle(evidence, "B", signer)
    # A: the tombstone folder was made and the bundle moved aside, the swap not done.
    (evidence / "A").rename(evidence / ".A.pruned")
    (evidence / ".A.tombstone").mkdir()
    (evidence / ".A.tombstone" / TOMBSTONE).write_text("{}")
    # B: moved aside before its tombstone was written: the bundle must come back.
    (evidence / "B").rename(evidence / ".B.pruned")
    _finish_interrupted(evidence)
    assert sorted(p.name for p in evidence.iterdir()) == ["A", "B"]
    assert (evidence / "A" / TOMBSTONE).is_file()
    assert (evidence / "B" / "manifest.json").is_file()
