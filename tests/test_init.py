"""``stampless init``: a new project outside this repository works like the bundled one.

The test creates a project in a temporary folder, points its example robot at the
emulated market-supervision system, and verifies a generated scan through it with
``stampless verify``, run as a subprocess from inside the project (so robots, tasks and
selectors can only be found through its robot.toml, never through this repository).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.scans import generate


def stampless(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stampless", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_init_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "notes.txt").write_text("mine", encoding="utf-8")
    result = stampless("init", "proj", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not an empty folder" in result.stderr
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_generated_project_verifies_a_request(fixture_servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = stampless("init", "proj", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "proj"
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "robot.toml",
        "robots/licence_registry.py",
        "selectors/licence_registry.toml",
        "tasks/company_licence.py",
        "tests/test_example.py",
    ]
    assert "env:LICENCE01_PASSWORD" in (project / "robot.toml").read_text(encoding="utf-8")

    toml = project / "robot.toml"
    text = toml.read_text(encoding="utf-8")
    toml.write_text(
        text.replace("http://127.0.0.1:8701", fixture_servers.url("market_supervision")),
        encoding="utf-8",
    )
    scan = generate(
        project / "requests",
        "business_license",
        1,
        seed=7,
        difficulty="easy",
        altered_share=0.0,
        absent_share=0.0,
    )[0]
    original = json.loads(scan.with_suffix(".request.json").read_text(encoding="utf-8"))
    claim = {
        k: original["claim"][k] for k in ("credit_code", "company_name", "legal_representative")
    }
    request = {"id": "INIT-0001", "type": "company_licence", "claim": claim, "scan": scan.name}
    request_file = project / "requests" / "INIT-0001.json"
    request_file.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")

    env = {"LICENCE01_PASSWORD": fixture_env()["MARKET01_PASSWORD"]}
    # The README's first command: the robot's lookup alone, with its screenshots sealed.
    readme = (project / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("stampless ")]
    assert commands[0].startswith("stampless fixtures serve")
    assert commands[1].startswith("stampless lookup --type company_licence")
    looked = stampless(
        "lookup",
        "--type",
        "company_licence",
        claim["credit_code"],
        "--json",
        "--dev",
        cwd=project,
        env=env,
    )
    assert looked.returncode == 0, looked.stderr[-3000:]
    shown = json.loads(looked.stdout)
    assert {name: shown["record"]["fields"][name] for name in claim} == claim
    sealed = Path(shown["evidence"])
    assert shown["screenshots"] and all((sealed / name).is_file() for name in shown["screenshots"])
    assert (sealed / "manifest.json").is_file() and sealed.name.startswith(
        "LOOKUP-company_licence-"
    )
    # This robot has no fetch(): a usage error, at once, leaving nothing behind.
    bundles = sorted((project / "var" / "evidence").iterdir())
    fetched = stampless(
        "fetch", "--type", "company_licence", claim["credit_code"], "--dev", cwd=project, env=env
    )
    assert fetched.returncode == 2, fetched.stderr[-2000:]
    assert len(fetched.stderr.strip().splitlines()) == 1 and "has no fetch()" in fetched.stderr
    assert sorted((project / "var" / "evidence").iterdir()) == bundles

    result = stampless("verify", "requests/INIT-0001.json", "--json", "--dev", cwd=project, env=env)
    assert result.returncode in (0, 3), result.stderr[-3000:]
    verdict = json.loads(result.stdout)
    assert verdict["type"] == "company_licence" and verdict["tier"] == "robot"
    fields = {f["name"]: f for f in verdict["fields"]}
    # The generated robot read the registry's record: each value equals the claim.
    assert {name: fields[name]["record"] for name in claim} == claim
    assert verdict["verdict"] in ("verified", "needs_review")
    evidence = Path(verdict["evidence"])
    evidence = evidence if evidence.is_absolute() else project / evidence
    assert (evidence / "manifest.json").is_file()
    assert str(project / "var") in str(evidence.resolve())

    # The project's own offline test passes too (robot and map load by file path).
    check = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", "-k", "load"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout[-2000:]
