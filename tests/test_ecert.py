"""The instant tier: Ed25519 e-certificates as JSON files and as QR codes on scans.

Real keys, real signatures, real rendered and degraded scans with QR codes printed by
zxing-cpp and read back by it; the end-to-end case runs ``stampless verify``.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from deployment_keys import signing_env
from PIL import Image, ImageFilter

from stampless.config import Config, IssuerConfig
from stampless.ecert import (
    find_ecert_in_scan,
    issue_ecert,
    public_key_b64,
    refresh_revocations,
    to_qr_text,
    verify_ecert,
    verify_instant,
    write_revocation_list,
)
from stampless.errors import SystemFailure
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.ecerts import claim_of, ecert_fields, ecert_scan, tamper
from stampless.fixtures.records import records
from stampless.models import FieldStatus, Request, VerdictKind, utcnow

ROOT = Path(__file__).resolve().parents[1]
MC = "marriage_certificate"
BL = "business_license"


@dataclass
class Issuers:
    civil: Ed25519PrivateKey
    market: Ed25519PrivateKey
    config: Config
    revocations: Path


@pytest.fixture()
def issuers(tmp_path: Path) -> Issuers:
    civil, market = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    rl = tmp_path / "civil-revoked.json"
    write_revocation_list(rl, "civil_affairs", [])
    config = Config(
        issuers={
            "civil_affairs": IssuerConfig(
                public_key=public_key_b64(civil), revocation_list=rl, types=[MC]
            ),
            "market_supervision": IssuerConfig(public_key=public_key_b64(market)),
        },
        root=tmp_path,
    )
    return Issuers(civil, market, config, rl)


def _marriage() -> dict[str, str]:
    return records(MC)[0]


def _check(issuers: Issuers, envelope: Any, claim: dict[str, str] | None = None) -> Any:
    record = _marriage()
    return verify_ecert(
        envelope, config=issuers.config, doc_type=MC, claim=claim or claim_of(MC, record)
    )


# -- JSON e-certificates ------------------------------------------------------------------------


def test_genuine_json_is_verified_field_by_field(issuers: Issuers, tmp_path: Path) -> None:
    record = _marriage()
    env = issue_ecert(issuers.civil, "civil_affairs", MC, ecert_fields(record), serial="S-1")
    path = tmp_path / "cert.json"
    path.write_text(json.dumps(env, ensure_ascii=False, indent=2), encoding="utf-8")
    request = Request(id="EC-1", type=MC, claim=claim_of(MC, record), ecert=path.name)
    decision = verify_instant(request, base_dir=tmp_path, config=issuers.config)
    assert decision.verdict is VerdictKind.verified
    assert {f.name for f in decision.fields} == set(request.claim)
    assert all(f.status is FieldStatus.match and f.record for f in decision.fields)
    # The same certificate as a QR text and as bytes verifies too.
    assert _check(issuers, to_qr_text(env)).verdict is VerdictKind.verified
    assert _check(issuers, path.read_bytes()).verdict is VerdictKind.verified


def test_one_changed_byte_is_rejected(issuers: Issuers) -> None:
    env = issue_ecert(issuers.civil, "civil_affairs", MC, ecert_fields(_marriage()))
    text = json.dumps(env, ensure_ascii=False).encode("utf-8")
    # Every byte of the signed values and of the signature, changed in turn.
    payload_values = [text.index(v.encode()) for v in env["payload"]["fields"].values()]
    sig_at = text.index(env["signature"].encode())
    positions = [p + i for p in payload_values for i in range(3)] + [sig_at + 5, sig_at + 40]
    for pos in positions:
        changed = bytearray(text)
        changed[pos] = ord("7") if changed[pos] != ord("7") else ord("8")
        decision = _check(issuers, bytes(changed))
        assert decision.verdict is VerdictKind.mismatch, pos
    # The forger's edit that keeps the JSON valid names the signature as the reason.
    forged = tamper(env, "holder_name")
    decision = _check(issuers, forged)
    assert decision.verdict is VerdictKind.mismatch
    assert "signature does not verify" in decision.reasons[0]
    # A changed character in the compact QR form is rejected too.
    qr = to_qr_text(env)
    flipped = qr[:60] + ("A" if qr[60] != "A" else "B") + qr[61:]
    assert _check(issuers, flipped).verdict is VerdictKind.mismatch


def test_wrong_issuer_is_rejected(issuers: Issuers) -> None:
    fields = ecert_fields(_marriage())
    # Signed by market supervision's key while claiming to be civil affairs.
    env = issue_ecert(issuers.market, "civil_affairs", MC, fields)
    assert "signature does not verify" in _check(issuers, env).reasons[0]
    # Signed correctly by an issuer that robot.toml does not register.
    stranger = Ed25519PrivateKey.generate()
    env = issue_ecert(stranger, "tax_bureau", MC, fields)
    decision = _check(issuers, env)
    assert decision.verdict is VerdictKind.mismatch and "not a department" in decision.reasons[0]
    # A registered issuer signing a type it does not issue.
    env = issue_ecert(issuers.market, "market_supervision", MC, fields)
    assert _check(issuers, env).verdict is VerdictKind.verified  # no types restriction
    issuers.config.issuers["market_supervision"].types = [BL]
    decision = _check(issuers, env)
    assert (
        decision.verdict is VerdictKind.mismatch
        and "not registered as an issuer" in (decision.reasons[0])
    )


def test_revoked_is_rejected_and_the_list_reloads_when_it_changes(issuers: Issuers) -> None:
    env = issue_ecert(issuers.civil, "civil_affairs", MC, ecert_fields(_marriage()), serial="R-9")
    assert _check(issuers, env).verdict is VerdictKind.verified
    time.sleep(0.01)  # a new mtime for the rewritten list
    write_revocation_list(issuers.revocations, "civil_affairs", ["R-1", "R-9"])
    assert refresh_revocations(issuers.config) == {"civil_affairs": 2}
    decision = _check(issuers, env)
    assert decision.verdict is VerdictKind.mismatch and "revoked" in decision.reasons[0]
    # A list that cannot be read is a system failure (retried), never a silent pass.
    issuers.revocations.write_text("{not json", encoding="utf-8")
    with pytest.raises(SystemFailure):
        _check(issuers, env)


def test_expired_and_future_certificates_are_rejected(issuers: Issuers) -> None:
    fields = ecert_fields(_marriage())
    now = utcnow()
    env = issue_ecert(
        issuers.civil,
        "civil_affairs",
        MC,
        fields,
        issued_at=now - timedelta(days=400),
        expires_at=now - timedelta(days=1),
    )
    decision = _check(issuers, env)
    assert decision.verdict is VerdictKind.mismatch and "expired" in decision.reasons[0]
    env = issue_ecert(issuers.civil, "civil_affairs", MC, fields, issued_at=now + timedelta(days=2))
    assert "future" in _check(issuers, env).reasons[0]


def test_claim_that_differs_from_the_certificate(issuers: Issuers) -> None:
    record = _marriage()
    env = issue_ecert(issuers.civil, "civil_affairs", MC, ecert_fields(record))
    claim = claim_of(MC, record)
    claim["holder_name"] = claim["holder_name"][:-1] + "某"
    decision = _check(issuers, env, claim)
    assert decision.verdict is VerdictKind.mismatch
    status = {f.name: f.status for f in decision.fields}
    assert status["holder_name"] is FieldStatus.mismatch
    assert status["cert_no"] is FieldStatus.match
    reason = {f.name: f.reason for f in decision.fields}
    assert reason["holder_name"] == "holder_name differs from the signed e-certificate."
    assert reason["cert_no"] is None
    # A date claimed as printed on paper compares equal to the ISO date signed.
    claim = claim_of(MC, record)
    y, m, d = claim["registered_on"].split("-")
    claim["registered_on"] = f"{y}年{m}月{d}日"
    assert _check(issuers, env, claim).verdict is VerdictKind.verified


def test_malformed_envelopes_are_rejected_not_crashing(issuers: Issuers) -> None:
    for bad in (b"", b"{}", b"[1]", "stampless-ecert:!!!", b"\xff\xfe", {"payload": {}}):
        assert _check(issuers, bad).verdict is VerdictKind.mismatch


# -- QR codes on scans ---------------------------------------------------------------------------


@pytest.mark.slow
def test_qr_on_scans_genuine_tampered_absent_unreadable(issuers: Issuers, tmp_path: Path) -> None:
    civil = issuers.civil
    record = _marriage()
    genuine = issue_ecert(civil, "civil_affairs", MC, ecert_fields(record))
    scans = {
        "genuine": ecert_scan(MC, record, genuine, seed=1, difficulty="normal"),
        "tampered": ecert_scan(MC, record, tamper(genuine, "holder_id"), seed=2),
    }
    # A business licence carries only its URL QR code: not an e-certificate.
    scans["licence"] = ecert_scan(BL, records(BL)[0], None, seed=3)
    # The genuine scan with its QR code smudged beyond reading.
    smudged = scans["genuine"].copy()
    w, h = smudged.size
    box = (0, h // 2, w // 2, h)
    smudged.paste(smudged.crop(box).filter(ImageFilter.GaussianBlur(12)), box[:2])
    scans["smudged"] = smudged
    verdicts = {}
    for name, image in scans.items():
        path = tmp_path / f"{name}.jpg"
        image.save(path, quality=85)
        assert isinstance(image, Image.Image)
        doc_type = BL if name == "licence" else MC
        claim = claim_of(doc_type, record if doc_type == MC else records(BL)[0])
        request = Request(id=f"QR-{name}", type=doc_type, claim=claim, scan=path.name)
        decision = verify_instant(request, base_dir=tmp_path, config=issuers.config)
        verdicts[name] = decision.verdict
        if name in ("licence", "smudged"):
            assert find_ecert_in_scan(path) is None
            assert "No readable e-certificate QR code" in decision.reasons[0]
    assert verdicts == {
        "genuine": VerdictKind.verified,
        "tampered": VerdictKind.mismatch,
        "licence": VerdictKind.needs_review,
        "smudged": VerdictKind.needs_review,
    }


# -- the CLI and the pipeline, end to end ----------------------------------------------------


@pytest.mark.slow
def test_issue_ecert_cli_and_stampless_verify(tmp_path: Path) -> None:
    env = {
        **os.environ,
        **fixture_env(),  # robot.toml's secrets: verify checks them all before it starts
        **signing_env(),
        "OMP_THREAD_LIMIT": "1",
        "STAMPLESS__PROJECT__VAR_DIR": str(tmp_path / "var"),
    }

    def stampless(
        *args: str, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stampless", "--config", str(ROOT / "robot.toml"), *args],
            capture_output=True,
            text=True,
            env={**env, **(extra or {})},
            timeout=120,
        )

    done = stampless(
        "fixtures",
        "issue-ecert",
        "--issuer",
        "civil_affairs",
        "--type",
        MC,
        "--key-out",
        str(tmp_path / "keys"),
        "--out",
        str(tmp_path / "out"),
        "--count",
        "2",
        "--revocation-list",
        str(tmp_path / "revoked.json"),
        "--tampered",
    )
    assert done.returncode == 0, done.stderr
    key_file = tmp_path / "keys" / "civil_affairs.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    public = done.stdout.split('public_key = "')[1].split('"')[0]
    assert len(base64.b64decode(public)) == 32
    assert key_file.read_text() not in done.stdout
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [i["expected_verdict"] for i in index] == ["verified", "mismatch"] * 2
    out = tmp_path / "out"
    requests = [out / "CI07-000000.request.json", out / "CI07-000000.tampered.request.json"]
    assert len(list(out.glob("*.qr.png"))) == 4
    issuer_env = {
        "STAMPLESS__ISSUERS__CIVIL_AFFAIRS__PUBLIC_KEY": public,
        "STAMPLESS__ISSUERS__CIVIL_AFFAIRS__REVOCATION_LIST": str(tmp_path / "revoked.json"),
    }
    done = stampless("verify", str(requests[0]), "--json", extra=issuer_env)
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["verdict"] == "verified" and verdict["tier"] == "instant"
    # The forged copy (one signed field changed after signing): exit 1, mismatch.
    done = stampless("verify", str(requests[1]), "--json", extra=issuer_env)
    assert done.returncode == 1, done.stdout + done.stderr
    verdict = json.loads(done.stdout)
    assert verdict["verdict"] == "mismatch" and "signature" in verdict["reasons"][0]
