"""The bundled robots against the shared emulated systems (seed 7), real Chromium.

Each robot reads a record exactly as the fixture holds it, turns "no such record" and
"revoked" into business errors, and fetches the archived scan byte for byte. The
shared ``fixture_servers`` instance is only read from here, never reconfigured.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_robot_runtime import LoopThread, write_project

from stampless.config import Config, load_config
from stampless.errors import RecordNotFound, RecordRevoked
from stampless.evidence import verify_bundle
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.records import KEY_FIELD, absent_key, records
from stampless.fixtures.servers._archive import archive_bytes
from stampless.robot import RobotRuntime

CASES = {
    # system: (document type, archive format, fields the robot reads)
    "civil_affairs": (
        "marriage_certificate",
        "png",
        (
            "cert_no",
            "registered_on",
            "holder_name",
            "holder_id",
            "holder_birth",
            "spouse_name",
            "spouse_id",
            "spouse_birth",
        ),
    ),
    "market_supervision": (
        "business_license",
        "pdf",
        (
            "credit_code",
            "company_name",
            "company_type",
            "legal_representative",
            "registered_capital",
            "established_on",
            "address",
        ),
    ),
    "social_security": (
        "social_security_record",
        "png",
        ("person_name", "person_id", "employer", "period_from", "period_to", "months_paid"),
    ),
    "exit_entry": (
        "work_permit",
        "png",
        (
            "permit_no",
            "holder_name",
            "birth_date",
            "nationality",
            "passport_no",
            "employer",
            "issued_on",
            "valid_until",
        ),
    ),
}


# Another account than test_robot_runtime's: TOTP codes are one-time per account in a
# process, so a second login of the same account there would wait for the next code.
ACCOUNT = {"social_security": "social02"}


@pytest.fixture(scope="module")
def config(fixture_servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:  # type: ignore[no-untyped-def]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in fixture_env().items():
            mp.setenv(name, value)
        root = tmp_path_factory.mktemp("robots-project")
        yield load_config(write_project(root, fixture_servers.urls))


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def runtime(config: Config, loop: LoopThread) -> Iterator[RobotRuntime]:
    rt = RobotRuntime(config)
    yield rt
    loop.run(rt.close())


def _record(doc_type: str, status: str) -> dict[str, str]:
    return next(r for r in records(doc_type, 7) if r["status"] == status)


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(CASES))
def test_lookup_reads_the_record(system: str, runtime: RobotRuntime, loop: LoopThread) -> None:
    doc_type, _, fields = CASES[system]
    wanted = _record(doc_type, "valid")
    key = wanted[KEY_FIELD[doc_type]]
    record = loop.run(runtime.lookup(system, key, account=ACCOUNT.get(system)))
    assert record.key == key and record.system == system
    assert {name: record.fields[name] for name in fields} == {name: wanted[name] for name in fields}


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(CASES))
def test_business_outcomes(system: str, runtime: RobotRuntime, loop: LoopThread) -> None:
    doc_type, _, _ = CASES[system]
    revoked = _record(doc_type, "revoked")[KEY_FIELD[doc_type]]
    with pytest.raises(RecordRevoked):
        loop.run(runtime.lookup(system, revoked, account=ACCOUNT.get(system)))
    with pytest.raises(RecordNotFound):
        loop.run(runtime.lookup(system, absent_key(doc_type, 7), account=ACCOUNT.get(system)))
    assert runtime.stats()["business_outcomes"] >= 2


@pytest.mark.slow
@pytest.mark.parametrize("system", sorted(CASES))
def test_fetch_downloads_the_archived_scan(
    system: str, runtime: RobotRuntime, loop: LoopThread
) -> None:
    doc_type, fmt, _ = CASES[system]
    key = _record(doc_type, "valid")[KEY_FIELD[doc_type]]
    stored = loop.run(runtime.fetch(system, key, account=ACCOUNT.get(system)))
    expected = archive_bytes(doc_type, key, 7, fmt)
    assert expected is not None
    data = stored.read_bytes()
    if fmt == "pdf":
        # PDFs carry their creation time, so only the PNG archives compare byte for byte.
        assert data.startswith(b"%PDF-") and abs(len(data) - len(expected)) < len(expected) // 20
    else:
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(expected).hexdigest()


@pytest.mark.slow
def test_market_paging_with_postbacks(runtime: RobotRuntime, loop: LoopThread) -> None:
    key = _record("business_license", "valid")["credit_code"]
    loop.run(runtime.lookup("market_supervision", key))  # logs in and opens the frameset
    system = runtime.system("market_supervision")
    session = next(iter(system.sessions.values()))
    fragment = "科技"
    expected = [
        r["credit_code"] for r in records("business_license", 7) if fragment in r["company_name"]
    ]
    assert len(expected) > 20, "the fixture has too few matches to page through"

    async def search() -> list[str]:
        async with session.lock:
            assert session.page is not None
            codes: list[str] = await system.robot.search_by_name(
                session.page, fragment, max_pages=3
            )  # type: ignore[attr-defined]
            return codes

    codes = loop.run(search())
    assert codes == expected[:30]


@pytest.mark.slow
def test_exit_entry_robot_reads_latin_fields_through_a_changed_ui(
    fixture_servers_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The number field and the query button renamed: the selector fallbacks still find
    them, the query-type list is still set, and the Latin name comes back as printed."""
    servers = fixture_servers_factory(ui_variant="changed")
    for name, value in fixture_env().items():
        monkeypatch.setenv(name, value)
    config = load_config(write_project(tmp_path, servers.urls))
    wanted = next(
        r for r in records("work_permit", 7) if r["status"] == "valid" and " " in r["nationality"]
    )
    loop = LoopThread()
    runtime = RobotRuntime(config)
    try:
        record = loop.run(runtime.lookup("exit_entry", wanted["permit_no"], account="exit03"))
    finally:
        loop.run(runtime.close())
        loop.close()
    assert record.fields["holder_name"] == wanted["holder_name"]
    assert " " in record.fields["holder_name"]  # Latin words keep their space
    assert record.fields["nationality"] == wanted["nationality"]
    assert record.fields["valid_until"] == wanted["valid_until"]
    used = runtime.stats()["selectors"]["exit_entry"]
    assert "choice1" not in used["query.number"] and "choice1" not in used["query.submit"]
    assert used["query.type"].get("choice1") == 1


@pytest.mark.slow
def test_fetch_command_seals_the_scan(config: Config, tmp_path: Path) -> None:
    key = _record("marriage_certificate", "valid")["cert_no"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stampless",
            "--config",
            str(config.root / "robot.toml"),
            "fetch",
            "--type",
            "marriage_certificate",
            key,
            "--out",
            str(tmp_path / "evidence"),
            "--dev",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    digest = hashlib.sha256(archive_bytes("marriage_certificate", key, 7, "png") or b"").hexdigest()
    assert f"sha256 {digest}" in result.stdout
    bundles = [
        p
        for p in (tmp_path / "evidence").iterdir()
        if p.name.startswith("FETCH-marriage_certificate-")
    ]
    assert len(bundles) == 1
    assert verify_bundle(bundles[0]).ok
