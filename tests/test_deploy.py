"""deploy/: the container image and the service units name real commands and options.

Nothing heavy is built: each command line in deploy/ (the compose services, the systemd
units' ExecStart, the image's entry point) is resolved against stampless's own command
tree, so a renamed command or option fails here, not on a production host.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from stampless.cli import app

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROCESSES = {"worker", "scheduler", "intake", "console"}


def resolve(args: list[str]) -> Any:
    """The command ``stampless ARGS`` runs; AssertionError naming what does not exist."""
    command: Any = typer.main.get_command(app)
    words = list(args)
    # Groups by what they hold: typer vendors its own click, not the click package's.
    while words and hasattr(command, "commands") and not words[0].startswith("-"):
        name = words.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"stampless has no command {name!r} ({args})"
        command = sub
    options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for word in words:
        if word.startswith("-"):
            assert word.split("=", 1)[0] in options, f"stampless {args}: no option {word}"
    return command


def unit_commands() -> dict[str, list[str]]:
    out = {}
    for unit in sorted((DEPLOY / "systemd").glob("stampless-*.service")):
        (line,) = re.findall(r"^ExecStart=(.+)$", unit.read_text(encoding="utf-8"), re.M)
        words = shlex.split(line)
        assert Path(words[0]).name == "stampless", line
        out[unit.stem.removeprefix("stampless-")] = words[1:]
    return out


def compose_commands() -> dict[str, list[str]]:
    import json

    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    block = text.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    services = re.split(r"^  (\w+):\n", block, flags=re.M)[1:]
    return {
        name: json.loads(re.search(r"command: (\[.*\])", body).group(1))  # type: ignore[union-attr]
        for name, body in zip(services[::2], services[1::2], strict=True)
    }


@pytest.mark.parametrize("source", [unit_commands, compose_commands])
def test_every_process_runs_a_real_command(source) -> None:  # type: ignore[no-untyped-def]
    commands = source()
    assert set(commands) == PROCESSES
    for args in commands.values():
        resolve(args)
    assert commands["worker"][0] == "run" and commands["scheduler"][0] == "schedule"
    assert commands["intake"][:2] == ["intake", "serve"]
    assert commands["console"][:2] == ["review", "serve"]
    # The scheduler leaves the queue to the workers and the port to the intake.
    assert commands["scheduler"][commands["scheduler"].index("--workers") + 1] == "0"


def test_units_never_restart_on_a_configuration_error() -> None:
    for unit in (DEPLOY / "systemd").glob("*.service"):
        text = unit.read_text(encoding="utf-8")
        assert "RestartPreventExitStatus=2" in text, unit.name
        assert "EnvironmentFile=" in text, unit.name  # secrets come from the environment


def test_the_image_installs_what_the_makefile_installs() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    wanted = set(re.search(r"APT_PACKAGES := ([^\n]+(?:\\\n[^\n]+)*)", makefile).group(1)  # type: ignore[union-attr]
                 .replace("\\\n", " ").split())  # fmt: skip
    installed = re.search(r"--no-install-recommends \\\n((?:.*\\\n)+)", dockerfile).group(1)  # type: ignore[union-attr]
    assert wanted - {"\\"} <= set(installed.replace("\\", " ").split())
    entry = re.search(r'^ENTRYPOINT \["stampless"\]\nCMD (\[.*\])$', dockerfile, re.M)
    assert entry is not None
    import json

    resolve(json.loads(entry.group(1)))
