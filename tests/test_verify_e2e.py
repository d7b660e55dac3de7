"""End to end: `stampless verify` on real scans, real Chromium, real Tesseract, real servers.

The walking skeleton's promises: a genuine certificate is verified, a wrong number gives
a mismatch that names the field, a missing record gives not_found, bad input exits 2
with one line and writes nothing, and the manifest's hashes match the files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stampless.fixtures.records import record_by_key, records
from stampless.fixtures.scans import generate

REPO = Path(__file__).resolve().parents[1]
SEED = 7

pytestmark = pytest.mark.slow


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``stampless --config robot.toml ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "stampless", "--config", str(REPO / "robot.toml"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scans")
    generate(
        out,
        "marriage_certificate",
        1,
        301,
        difficulty="easy",
        altered_share=0.0,
        absent_share=0.0,
        records_seed=SEED,
    )
    generate(
        out,
        "marriage_certificate",
        1,
        302,
        difficulty="easy",
        altered_share=0.0,
        absent_share=1.0,
        records_seed=SEED,
    )
    return out


def _request(scans: Path, name: str) -> dict:
    return json.loads((scans / f"{name}.request.json").read_text(encoding="utf-8"))


def _var(env: dict[str, str]) -> Path:
    return Path(env["STAMPLESS__PROJECT__VAR_DIR"])


def test_genuine_certificate_is_verified_with_sealed_evidence(deployment, scans):
    req = scans / "MC-301-0000.request.json"
    proc = run_cli("verify", str(req), "--json", env=deployment)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["verdict"] == "verified"
    assert {f["name"] for f in verdict["fields"]} >= {
        "cert_no",
        "holder_name",
        "holder_id",
        "registered_on",
    }
    assert all(f["status"] == "match" for f in verdict["fields"] if f["claimed"] is not None)

    outbox = _var(deployment) / "outbox" / "MC-301-0000.json"
    assert json.loads(outbox.read_text(encoding="utf-8"))["verdict"] == "verified"
    bundle = Path(verdict["evidence"])
    manifest_bytes = (bundle / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest_bytes).hexdigest() == verdict["manifest_sha256"]
    manifest = json.loads(manifest_bytes)
    names = {f["name"] for f in manifest["files"]}
    assert any(n.startswith("screenshots/") for n in names)
    assert {"request.json", "record.json", "ocr.json", "verdict.json"} <= names
    assert any(n.startswith("scan") for n in names)
    # A clear answer keeps the image OCR read, and no intermediate preprocessing step;
    # screenshots are WebP (docs/evidence.md, "Size").
    assert [n for n in names if n.startswith("preprocessed/")] == ["preprocessed/ocr-input.webp"]
    assert all(n.endswith(".webp") for n in names if n.startswith("screenshots/"))
    for entry in manifest["files"]:
        data = (bundle / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["name"]
        assert len(data) == entry["size"]

    # The same id again changes nothing: the outbox verdict is returned as it was.
    again = run_cli("verify", str(req), "--json", env=deployment)
    assert again.returncode == 0
    assert json.loads(again.stdout)["manifest_sha256"] == verdict["manifest_sha256"]


def test_wrong_certificate_number_is_a_mismatch_naming_the_field(deployment, scans):
    request = _request(scans, "MC-301-0000")
    genuine = record_by_key("marriage_certificate", request["claim"]["cert_no"], SEED)
    assert genuine is not None
    other = next(
        r
        for r in records("marriage_certificate", SEED)
        if r["cert_no"] != genuine["cert_no"] and r["status"] == "valid"
    )
    request["id"] = "MC-WRONG-NUMBER"
    request["claim"]["cert_no"] = other["cert_no"]
    path = scans / "wrong.json"  # beside its scan: a request's scan stays in its folder
    path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")

    proc = run_cli("verify", str(path), "--json", env=deployment)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["verdict"] == "mismatch"
    statuses = {f["name"]: f["status"] for f in verdict["fields"]}
    assert statuses["cert_no"] == "mismatch"
    # A mismatch keeps every preprocessing step: they explain what the machine saw.
    steps = list((Path(verdict["evidence"]) / "preprocessed").glob("0*.webp"))
    assert len(steps) >= 2, steps


def test_missing_record_is_not_found(deployment, scans):
    proc = run_cli("verify", str(scans / "MC-302-0000.request.json"), "--json", env=deployment)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "not_found"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("not_json", "not valid JSON"),
        ("no_claim", "'claim' is required"),
        ("unknown_type", "Unknown document type"),
        ("missing_scan", "scan"),
        ("not_an_image", "image"),
        ("path_id", "id"),
        ("bad_claim", "holder_id"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    deployment, scans, tmp_path, case, expected
):
    good = _request(scans, "MC-301-0000")
    shutil.copyfile(scans / "MC-301-0000.jpg", tmp_path / "scan.jpg")
    good["scan"] = "scan.jpg"
    good["id"] = f"BAD-{case}"
    path = tmp_path / "req.json"
    if case == "not_json":
        path.write_text("{this is not json", encoding="utf-8")
    else:
        if case == "no_claim":
            del good["claim"]
        elif case == "unknown_type":
            good["type"] = "fishing_licence"
        elif case == "missing_scan":
            good["scan"] = str(tmp_path / "nowhere.jpg")
        elif case == "not_an_image":
            fake = tmp_path / "fake.jpg"
            fake.write_text("I am text, not a JPEG", encoding="utf-8")
            good["scan"] = str(fake)
        elif case == "path_id":
            good["id"] = "../../etc/passwd"
        elif case == "bad_claim":
            good["claim"]["holder_id"] = "110105194912310021"  # wrong check digit
        path.write_text(json.dumps(good, ensure_ascii=False), encoding="utf-8")

    outbox = _var(deployment) / "outbox"
    before = sorted(outbox.iterdir()) if outbox.exists() else []
    proc = run_cli("verify", str(path), env=deployment)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("stampless:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert expected.lower() in errors[0].lower()
    after = sorted(outbox.iterdir()) if outbox.exists() else []
    assert after == before
