"""Evidence bundles: sealed atomically, verified byte for byte, every tampering named.

The first test is a real run (``stampless verify`` against the emulated department
system, real Chromium and Tesseract) whose bundle must verify through the CLI, export,
report and audit commands, with no secret or full ID number in the logs. The others
build bundles from real files (PNG made with Pillow, JSON) and tamper with them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from stampless.errors import InputError
from stampless.evidence import (
    BundleExists,
    EvidenceBundle,
    export_bundle,
    list_bundles,
    verify_bundle,
)
from stampless.models import utcnow
from stampless.signing import Signer, fingerprint

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None, config: Path | None = None):
    cfg = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "stampless", *cfg, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=240,
    )


def _png(text: str, size: tuple[int, int] = (320, 160)) -> bytes:
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    draw.rectangle((4, 4, size[0] - 5, size[1] - 5), outline="navy", width=3)
    draw.text((20, 60), text, fill="black")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def build_bundle(evidence_dir: Path, request_id: str, signer: Signer, verdict: str = "verified"):
    bundle = EvidenceBundle.open(evidence_dir, request_id)
    bundle.add_json(
        "request.json",
        {"id": request_id, "type": "marriage_certificate", "claim": {"cert_no": "J1"}},
        kind="request",
    )
    bundle.add_bytes("scan.png", _png("scan"), kind="scan")
    bundle.add_bytes("preprocessed/ocr-input.png", _png("binarized"), kind="preprocessed")
    bundle.screenshot_path("Search form").write_bytes(_png("search form"))
    bundle.screenshot_path("Search result").write_bytes(_png("result"))
    bundle.add_dialog("alert", "查询成功", accepted=True)
    bundle.add_json("record.json", {"system": "civil", "key": "J1", "fields": {}}, kind="record")
    bundle.set_meta(robot_version="1.2", selector_map_sha="ab12", system="civil", account="c1")
    now = utcnow().isoformat()
    return bundle.seal(
        signer,
        verdict={
            "request_id": request_id,
            "type": "marriage_certificate",
            "tier": "robot",
            "verdict": verdict,
            "received_at": now,
            "finished_at": now,
            "stampless_version": "test",
        },
    )


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def sealed(tmp_path: Path, signer: Signer):
    return build_bundle(tmp_path / "evidence", "REQ-1", signer)


# --------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_real_run_bundle_verifies_and_logs_hold_no_secrets(fixture_servers, tmp_path: Path, cli):
    from deployment_keys import signing_env

    from stampless.fixtures.accounts import fixture_env
    from stampless.fixtures.scans import generate

    var = tmp_path / "var"
    secrets = fixture_env()
    env = {**os.environ, **secrets, **signing_env(), "STAMPLESS__PROJECT__VAR_DIR": str(var)}
    for system in ("civil_affairs", "market_supervision", "social_security"):
        env[f"STAMPLESS__SYSTEMS__{system.upper()}__URL"] = fixture_servers.url(system)
    scans = tmp_path / "scans"
    generate(scans, "marriage_certificate", 1, 311, difficulty="easy", altered_share=0.0,
             absent_share=0.0, records_seed=7)  # fmt: skip
    req = next(scans.glob("*.request.json"))
    request = json.loads(req.read_text(encoding="utf-8"))
    config = REPO / "robot.toml"

    proc = run_cli("verify", str(req), "--json", env=env, config=config)
    assert proc.returncode in (0, 1, 3), proc.stdout + proc.stderr  # any verdict will do
    verdict = json.loads(proc.stdout)
    rid = verdict["request_id"]

    cfg = ("--config", str(config))
    ok = cli("evidence", "verify", rid, *cfg, cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK")
    out_zip = tmp_path / "handover.zip"
    assert cli("evidence", "export", rid, str(out_zip), *cfg, cwd=tmp_path).returncode == 0
    # Someone else, with only the zip and the public key, checks it.
    pub = (var / "keys" / "signing.pub").read_text().strip()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "robot.toml").write_text("", encoding="utf-8")
    zip_ok = cli("evidence", "verify", str(out_zip), "--key", pub, cwd=elsewhere, bare=True)
    assert zip_ok.returncode == 0, zip_ok.stdout + zip_ok.stderr
    assert "Note: no trusted public key" not in zip_ok.stdout
    wrong = cli("evidence", "verify", str(out_zip), "--key", Signer.generate().public_key_b64,
                cwd=elsewhere)  # fmt: skip
    assert wrong.returncode == 1 and "untrusted" in wrong.stdout
    report = cli("evidence", "report", rid, *cfg, cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    assert "<html" in Path(report.stdout.strip()).read_text(encoding="utf-8")[:200]
    audit = cli("audit", "verify", *cfg, cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr

    # No password, TOTP seed, vault key or full ID number in any log line.
    log_files = [p for p in (var / "log").rglob("*") if p.is_file()]
    assert log_files, "the run wrote no log file"
    logs = "".join(p.read_text(encoding="utf-8", errors="replace") for p in log_files)
    logs += "".join(p.read_text(encoding="utf-8") for p in (var / "audit").glob("*.jsonl"))
    logs += proc.stderr
    assert logs.strip(), "no log output was captured"
    for name, value in secrets.items():
        if any(word in name.upper() for word in ("PASS", "TOTP", "SECRET", "KEY")):
            assert value not in logs, f"{name} leaked into the logs"
    for key, value in request["claim"].items():
        if key.endswith("_id") and isinstance(value, str) and len(value) == 18:
            assert value not in logs, f"the full {key} leaked into the logs"


# --------------------------------------------------------------------------- sealing


def test_sealed_bundle_verifies_and_lists_every_file(sealed, signer: Signer) -> None:
    assert sealed.path.name == "REQ-1"
    assert not list(sealed.path.parent.glob(".*partial"))
    report = verify_bundle(sealed.path, trusted_keys=[signer.public_key_b64])
    assert report.ok, report.problems
    manifest = json.loads((sealed.path / "manifest.json").read_text())
    names = [f["name"] for f in manifest["files"]]
    assert names == [
        "dialogs.json",
        "preprocessed/ocr-input.webp",
        "record.json",
        "request.json",
        "scan.png",  # the applicant's scan is kept byte for byte
        "screenshots/01-search-form.webp",
        "screenshots/02-search-result.webp",
        "verdict.json",
    ]
    shots = [f for f in manifest["files"] if f["kind"] == "screenshot"]
    assert [s["caption"] for s in shots] == ["Search form", "Search result"]
    assert manifest["meta"]["selector_map_sha"] == "ab12"
    assert manifest["signature"]["key_id"] == signer.key_id
    assert report.files_checked == len(names)
    import hashlib

    digest = hashlib.sha256((sealed.path / "manifest.json").read_bytes()).hexdigest()
    assert sealed.manifest_sha256 == digest


def test_a_sealed_bundle_is_never_rewritten(sealed, signer: Signer) -> None:
    evidence_dir = sealed.path.parent
    assert EvidenceBundle.exists(evidence_dir, "REQ-1")
    with pytest.raises(BundleExists):
        EvidenceBundle.open(evidence_dir, "REQ-1")


def test_a_partial_bundle_is_continued_after_a_crash(tmp_path: Path, signer: Signer) -> None:
    first = EvidenceBundle.open(tmp_path, "REQ-2")
    first.screenshot_path("login").write_bytes(_png("login"))
    first.add_json("ocr.json", {"fields": {}}, kind="ocr")
    del first  # the worker dies here
    assert not EvidenceBundle.exists(tmp_path, "REQ-2")
    again = EvidenceBundle.open(tmp_path, "REQ-2")
    assert again.path("ocr.json").exists()
    shot = again.screenshot_path("result")
    assert shot.name == "02-result.png"
    shot.write_bytes(_png("result"))
    again.path("downloads/archive.pdf").write_bytes(b"%PDF-1.4 unannounced")
    again.screenshot_path("never written")  # e.g. the page crashed before the shot
    sealed = again.seal(signer)
    manifest = json.loads((sealed.path / "manifest.json").read_text())
    kinds = {f["name"]: f["kind"] for f in manifest["files"]}
    assert kinds == {
        "downloads/archive.pdf": "download",
        "ocr.json": "ocr",
        "screenshots/01-login.webp": "screenshot",
        "screenshots/02-result.webp": "screenshot",
    }
    assert verify_bundle(sealed.path).ok


@pytest.mark.parametrize(
    "name", ["../escape.txt", "/etc/passwd", "a/../../b", ".hidden", "a\\b", "", "manifest.json"]
)
def test_names_cannot_escape_the_bundle(tmp_path: Path, name: str) -> None:
    bundle = EvidenceBundle.open(tmp_path, "REQ-3")
    with pytest.raises(InputError):
        bundle.add_bytes(name, b"x", kind="other")
    with pytest.raises(InputError):
        EvidenceBundle.open(tmp_path, "../REQ")


def test_meta_refuses_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stampless.vault import resolve_secret

    monkeypatch.setenv("STAMPLESS_EV_PW", "ev-pass-5521")
    secret = resolve_secret("env:STAMPLESS_EV_PW")
    bundle = EvidenceBundle.open(tmp_path, "REQ-4")
    with pytest.raises(ValueError, match="secret"):
        bundle.set_meta(password="x")
    with pytest.raises(ValueError, match="secret"):
        bundle.set_meta(note=secret.reveal())
    with pytest.raises(ValueError, match="secret"):
        bundle.set_meta(account=secret)
    bundle.set_meta(account="civil-1")
    assert bundle.meta == {"account": "civil-1"}


# --------------------------------------------------------------------------- tampering


def test_flipping_one_byte_in_any_file_is_named(sealed) -> None:
    manifest = json.loads((sealed.path / "manifest.json").read_text())
    for entry in manifest["files"]:
        path = sealed.path / entry["name"]
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        report = verify_bundle(sealed.path)
        assert [(p.kind, p.name) for p in report.problems] == [("changed", entry["name"])]
        path.write_bytes(original)
    assert verify_bundle(sealed.path).ok


def test_deleted_and_added_files_are_named(sealed) -> None:
    (sealed.path / "screenshots" / "02-search-result.webp").unlink()
    (sealed.path / "screenshots" / "03-forged.png").write_bytes(_png("forged"))
    report = verify_bundle(sealed.path)
    assert {(p.kind, p.name) for p in report.problems} == {
        ("missing", "screenshots/02-search-result.webp"),
        ("extra", "screenshots/03-forged.png"),
    }


def test_editing_the_manifest_breaks_the_signature(sealed) -> None:
    path = sealed.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["meta"]["account"] = "someone-else"
    path.write_text(json.dumps(manifest, indent=2))
    report = verify_bundle(sealed.path)
    assert [p.kind for p in report.problems] == ["signature"]
    assert "edited" in report.problems[0].detail

    # Re-hashing a forged file into the manifest does not help without the key.
    manifest["meta"]["account"] = "c1"
    scan = sealed.path / "scan.png"
    scan.write_bytes(_png("forged scan"))
    import hashlib

    for f in manifest["files"]:
        if f["name"] == "scan.png":
            f["sha256"] = hashlib.sha256(scan.read_bytes()).hexdigest()
            f["size"] = scan.stat().st_size
    path.write_text(json.dumps(manifest, indent=2))
    assert [p.kind for p in verify_bundle(sealed.path).problems] == ["signature"]


def test_another_key_is_untrusted(sealed, tmp_path: Path, signer: Signer) -> None:
    other = Signer.generate()
    forged = build_bundle(tmp_path / "other", "REQ-1", other)
    assert verify_bundle(forged.path).ok  # self-consistent ...
    report = verify_bundle(forged.path, trusted_keys=[signer.public_key_b64])
    assert [p.kind for p in report.problems] == ["untrusted"]  # ... but not ours
    assert other.key_id in str(report.problems[0])


def test_export_zip_verifies_and_tampering_inside_is_named(sealed, tmp_path: Path) -> None:
    out = export_bundle(sealed.path, tmp_path / "out" / "REQ-1.zip")
    assert verify_bundle(out).ok
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("record.json"):
                data = data.replace(b"civil", b"civiL")
            dst.writestr(info, data)
        dst.writestr("REQ-1/extra.txt", b"hello")
    report = verify_bundle(tampered)
    assert {(p.kind, p.name) for p in report.problems} == {
        ("changed", "record.json"),
        ("extra", "extra.txt"),
    }


def test_cli_verify_ls_show_export(tmp_path: Path, signer: Signer, cli) -> None:
    (tmp_path / "robot.toml").write_text("", encoding="utf-8")
    evidence = tmp_path / "var" / "evidence"
    build_bundle(evidence, "REQ-OK", signer)
    build_bundle(evidence, "REQ-BAD", signer, verdict="mismatch")
    (tmp_path / "robot.toml").write_text(
        f'[evidence]\ntrusted_keys = ["{fingerprint(signer.public_key_b64)}"]\n', encoding="utf-8"
    )
    ok = cli("evidence", "verify", "REQ-OK", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (evidence / "REQ-BAD" / "scan.png").write_bytes(b"not the scan")
    (evidence / "REQ-BAD" / "record.json").unlink()
    bad = cli("evidence", "verify", "REQ-BAD", cwd=tmp_path)
    assert bad.returncode == 1
    fails = [line for line in bad.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2
    assert any("scan.png" in f for f in fails) and any("record.json" in f for f in fails)

    ls = cli("evidence", "ls", "--verdict", "mismatch", "--since", "1h", cwd=tmp_path)
    assert ls.returncode == 0 and "REQ-BAD" in ls.stdout and "REQ-OK" not in ls.stdout
    assert [b.request_id for b in list_bundles(evidence)] and len(list_bundles(evidence)) == 2
    show = cli("evidence", "show", "REQ-OK", cwd=tmp_path)
    assert "Search form" in show.stdout and "verified" in show.stdout

    missing = cli("evidence", "verify", "REQ-NOPE", cwd=tmp_path)
    assert missing.returncode == 2 and "evidence ls" in missing.stderr
    sneaky = cli("evidence", "verify", "../../etc", cwd=tmp_path)
    assert sneaky.returncode == 2


def test_json_outputs_follow_docs_json_md(tmp_path: Path, signer: Signer, cli) -> None:
    """evidence ls|show|verify and audit verify with --json: the keys docs/json.md lists,
    and the same exit codes as without."""
    import re

    evidence = tmp_path / "var" / "evidence"
    build_bundle(evidence, "REQ-OK", signer)
    build_bundle(evidence, "REQ-BAD", signer, verdict="mismatch")
    (tmp_path / "robot.toml").write_text(
        f'[evidence]\ntrusted_keys = ["{fingerprint(signer.public_key_b64)}"]\n', encoding="utf-8"
    )
    doc = (REPO / "docs" / "json.md").read_text(encoding="utf-8")

    def documented(heading: str) -> set[str]:
        """The keys of the ```json example under ``heading`` in docs/json.md."""
        section = doc.split(f"## `{heading}`\n", 1)[1].split("\n## ", 1)[0]
        example = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
        return set(example)

    lines = cli("evidence", "ls", "--json", cwd=tmp_path)
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    assert {r["request_id"] for r in rows} == {"REQ-OK", "REQ-BAD"}
    assert all(set(r) == documented("stampless evidence ls --json") for r in rows)

    shown = json.loads(cli("evidence", "show", "REQ-OK", "--json", cwd=tmp_path).stdout)
    assert set(shown) == documented("stampless evidence show ID --json")
    assert shown["verdict"]["verdict"] == "verified"
    assert any(f["caption"] == "Search form" for f in shown["files"])

    ok = cli("evidence", "verify", "REQ-OK", "--json", cwd=tmp_path)
    report = json.loads(ok.stdout)
    assert ok.returncode == 0 and report["ok"] is True and report["problems"] == []
    assert set(report) == documented("stampless evidence verify ID --json")
    (evidence / "REQ-BAD" / "scan.png").write_bytes(b"not the scan")
    bad = cli("evidence", "verify", "REQ-BAD", "--json", cwd=tmp_path)
    failed = json.loads(bad.stdout)
    assert bad.returncode == 1 and failed["ok"] is False
    assert failed["problems"] == [
        {"kind": "changed", "name": "scan.png", "detail": failed["problems"][0]["detail"]}
    ]

    audit = cli("audit", "verify", "--json", cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    chain = json.loads(audit.stdout)
    assert chain["ok"] is True and set(chain) == documented("stampless audit verify --json")
    # Every command the page documents exists and takes --json.
    headings = re.findall(r"^## `(stampless [^`]*--json)`", doc, flags=re.M)
    assert len(headings) >= 8, headings
    for heading in headings:
        words = [w for w in heading.split()[1:] if w.isidentifier() or w == "--json"]
        words = [w for w in words if w != "--json" and w.islower()]
        helped = cli(*words, "--help", cwd=tmp_path)
        assert "--json" in helped.stdout, heading


@pytest.mark.parametrize("keep_steps", [False, True])
def test_held_images_are_written_once_in_their_final_form(
    tmp_path: Path, signer: Signer, keep_steps: bool
) -> None:
    """The reader's images (OcrResult.pending_steps): the image OCR read is written at
    once, straight as WebP; a step is held until sealing, written only if steps are kept."""
    from PIL import Image

    bundle = EvidenceBundle.open(tmp_path, "REQ-HELD")
    read = Image.open(io.BytesIO(_png("the page OCR read " * 4, size=(1600, 1100))))
    step = Image.open(io.BytesIO(_png("a step " * 4, size=(1600, 1100))))
    bundle.hold_steps([("01-seal-removed.png", step), ("ocr-input.png", read)])
    assert sorted(p.name for p in (bundle.work_dir / "preprocessed").iterdir()) == [
        "ocr-input.webp"
    ]
    bundle.compact_images(keep_steps=keep_steps)
    sealed = bundle.seal(signer)
    files = {f["name"] for f in json.loads((sealed.path / "manifest.json").read_text())["files"]}
    steps = {"preprocessed/01-seal-removed.webp"} if keep_steps else set()
    assert files == {"preprocessed/ocr-input.webp"} | steps
    with Image.open(sealed.path / "preprocessed/ocr-input.webp") as webp:
        assert webp.size == (1600, 1100)
    assert verify_bundle(sealed.path, trusted_keys=[signer.public_key_b64]).ok


@pytest.mark.parametrize("keep_steps", [False, True])
def test_images_are_compacted_and_steps_kept_only_when_asked(
    tmp_path: Path, signer: Signer, keep_steps: bool
) -> None:
    """Screenshots become lossless WebP (the same pixels), the image OCR read lossy WebP
    of the same size, the intermediate steps go unless kept (and the last, the very image
    OCR read, is not kept twice); the scan is untouched."""
    from PIL import Image, ImageChops

    bundle = EvidenceBundle.open(tmp_path, "REQ-SMALL")
    page = _png("a page of print " * 4, size=(1600, 1100))
    bundle.add_bytes("scan.png", page, kind="scan")
    bundle.add_bytes("preprocessed/01-perspective.png", page, kind="preprocessed")
    read = _png("the page OCR read " * 4, size=(1600, 1100))
    for name in ("02-illumination.png", "ocr-input.png"):
        bundle.add_bytes(f"preprocessed/{name}", read, kind="preprocessed")
    shot = bundle.screenshot_path("record detail")
    shot.write_bytes(_png("查询结果 detail", size=(1280, 900)))
    # A step the reader left in memory (OcrResult.pending_steps) is written only if kept.
    bundle.hold_steps([("03-contrast.png", Image.open(io.BytesIO(page)))])
    bundle.compact_images(keep_steps=keep_steps)
    sealed = bundle.seal(signer)
    files = {f["name"]: f for f in json.loads((sealed.path / "manifest.json").read_text())["files"]}
    steps = {"preprocessed/01-perspective.webp", "preprocessed/03-contrast.webp"}
    expected = {"scan.png", "preprocessed/ocr-input.webp", "screenshots/01-record-detail.webp"}
    assert set(files) == expected | (steps if keep_steps else set())
    assert (sealed.path / "scan.png").read_bytes() == page
    assert files["screenshots/01-record-detail.webp"]["caption"] == "record detail"
    with Image.open(sealed.path / "screenshots/01-record-detail.webp") as webp:
        same = ImageChops.difference(
            webp.convert("RGB"),
            Image.open(io.BytesIO(_png("查询结果 detail", size=(1280, 900)))).convert("RGB"),
        )
        assert same.getbbox() is None  # lossless
    with Image.open(sealed.path / "preprocessed/ocr-input.webp") as webp:
        assert webp.size == (1600, 1100)  # the word boxes' coordinates still hold
    assert files["preprocessed/ocr-input.webp"]["size"] < len(read)
    assert verify_bundle(sealed.path, trusted_keys=[signer.public_key_b64]).ok
