"""``stampless init``: a new project outside this repository works like the bundled one.

The test creates a project in a temporary folder and runs its README's commands as a
new user would, first to last, each in a shell from inside the project (so robots, tasks
and selectors can only be found through its robot.toml, never through this repository):
the emulated systems, their fixture environment, doctor, the robot's lookup, the
verification of the example request, and the project's own tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ports import new_shell_env, readme_commands, run_as_written

from stampless.fixtures.accounts import fixture_env


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


@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.slow
def test_readme_commands_work_first_to_last(tmp_path: Path) -> None:
    """A new project's README, run as written (only the emulated systems' port differs,
    so that this test never meets another one on 8700)."""
    result = stampless("init", "proj", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "proj"
    files = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "requests/example.jpg",
        "requests/example.request.json",
        "robot.toml",
        "robots/licence_registry.py",
        "selectors/licence_registry.toml",
        "tasks/company_licence.py",
        "tests/conftest.py",
        "tests/test_example.py",
    ]
    # The project's tests use the stampless pytest plugin's fixtures and the public API
    # only: no import from a module of stampless.
    for test_file in (project / "tests").glob("*.py"):
        source = test_file.read_text(encoding="utf-8")
        assert "from stampless." not in source and "import stampless." not in source
    assert "env:LICENCE01_PASSWORD" in (project / "robot.toml").read_text(encoding="utf-8")
    readme = (project / "README.md").read_text(encoding="utf-8")
    example = json.loads((project / "requests/example.request.json").read_text(encoding="utf-8"))
    key = example["claim"]["credit_code"]
    commands = readme_commands(readme)
    assert commands[0] == "stampless fixtures serve &"
    assert f"stampless lookup --type company_licence {key} --dev" in commands

    env = new_shell_env()
    env.pop("LICENCE01_PASSWORD", None)  # no secret set
    env = run_as_written(commands, project, env)
    assert env["LICENCE01_PASSWORD"] == fixture_env()["MARKET01_PASSWORD"]
    verdict = json.loads((project / "var/outbox/EXAMPLE-0001.json").read_text(encoding="utf-8"))
    assert verdict["verdict"] == "verified" and verdict["type"] == "company_licence"
    fields = {f["name"]: f for f in verdict["fields"]}
    # The generated robot read the registry's record: each value equals the claim.
    assert {name: fields[name]["record"] for name in example["claim"]} == example["claim"]
    evidence = Path(verdict["evidence"])
    evidence = evidence if evidence.is_absolute() else project / evidence
    assert (evidence / "manifest.json").is_file()
    assert str(project / "var") in str(evidence.resolve())


@pytest.mark.slow
def test_a_robot_without_fetch_refuses_at_once(fixture_servers, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """This robot has no fetch(): a usage error, at once, leaving nothing behind."""
    assert stampless("init", "proj", cwd=tmp_path).returncode == 0
    project = tmp_path / "proj"
    env = {
        "LICENCE01_PASSWORD": fixture_env()["MARKET01_PASSWORD"],
        "STAMPLESS__SYSTEMS__LICENCE_REGISTRY__URL": fixture_servers.url("market_supervision"),
    }
    key = json.loads((project / "requests/example.request.json").read_text(encoding="utf-8"))[
        "claim"
    ]["credit_code"]
    fetched = stampless("fetch", "--type", "company_licence", key, "--dev", cwd=project, env=env)
    assert fetched.returncode == 2, fetched.stderr[-2000:]
    assert len(fetched.stderr.strip().splitlines()) == 1 and "has no fetch()" in fetched.stderr
    evidence = project / "var" / "evidence"
    assert not evidence.exists() or not any(evidence.iterdir())
