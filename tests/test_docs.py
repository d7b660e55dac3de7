"""The documentation cites only what the repository holds, and its first commands work.

Every relative link in README.md and docs/, and every ``docs/NAME.md`` or ``bench/…``
named in a text file of the repository, must be a file here: users never see the notes
the project was planned with, so nothing may send them there. The README's first
verification runs as written.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ports import new_shell_env, readme_commands, run_as_written

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
NAMED = re.compile(r"(?<![\w/.-])((?:docs|bench)/[\w./-]+\.(?:md|py))")
PLANNING_NOTES = ("DESIGN" + ".md", "DOCUMENTS" + ".md", "STYLE" + ".md")


def tracked(*patterns: str) -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    return [REPO / n for n in names if (REPO / n).is_file()]


def test_relative_links_in_the_docs_exist() -> None:
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_files_named_in_text_exist_and_no_planning_notes_are_cited() -> None:
    missing, cited = [], []
    for path in tracked("*.py", "*.md", "*.toml", "*.tmpl", "*.j2", "*.html"):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        cited += [f"{path.relative_to(REPO)}: {n}" for n in PLANNING_NOTES if n in text]
        for name in NAMED.findall(text):
            if not name.startswith("bench/out/") and not (REPO / name).exists():  # out: written
                missing.append(f"{path.relative_to(REPO)}: {name}")
    assert not cited, cited
    assert not missing, missing


@pytest.mark.slow
def test_the_readmes_first_verification_gives_a_verified_verdict(tmp_path: Path) -> None:
    """Issue 16's target: a new user reaches a verified verdict from ``stampless verify``
    on a request of their own within five commands of the README. They run in a copy of
    this checkout's deployment (so nothing lands in the checkout), as a new shell would."""
    for part in ("robot.toml", "robots", "tasks", "selectors"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, tmp_path / part)
    commands = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(commands) <= 5, commands
    verify = commands[-1].split()
    assert verify[:2] == ["stampless", "verify"], commands
    run_as_written(commands, tmp_path, new_shell_env())  # verify's exit 0 is "verified"
    request = json.loads((tmp_path / verify[2]).read_text(encoding="utf-8"))
    verdict = json.loads((tmp_path / "var/outbox" / f"{request['id']}.json").read_text("utf-8"))
    assert (verdict["verdict"], verdict["tier"]) == ("verified", "robot")
