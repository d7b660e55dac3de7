"""What every command shares: the loaded configuration, the console, error reporting.

``--config PATH`` and ``--debug`` are accepted anywhere on the command line; ``main()``
hoists them to the root callback, so each command need not declare them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from stampless.config import Config, load_config

# Piped output (logs, CI) gets wide tables instead of rich's 80-column default, so paths
# and ids are never cut; a terminal keeps its own width.
# No emoji codes: ":label:" in an OCR source is text, not a picture.
console = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, emoji=False)


@dataclass
class State:
    config_path: Path = Path("robot.toml")
    debug: bool = False
    _config: Config | None = field(default=None, repr=False)

    def config(self, *, required: bool = True) -> Config:
        """The deployment's configuration, loaded once per process.

        Loading it also starts the JSON-lines log under its var/log folder, so every
        command that works on a deployment leaves a log there.
        """
        if self._config is None:
            from stampless._logging import setup_logging

            self._config = load_config(self.config_path, required=required)
            setup_logging(self._config, debug=self.debug)
        return self._config


state = State()

DEV_HELP = (
    "Sign with the development key in <var>/keys/ instead of a configured one "
    "(demos and tests only: nothing it signs is trusted by a real deployment)."
)


def get_config(*, required: bool = True) -> Config:
    return state.config(required=required)


def exit_with(code: int) -> None:
    raise typer.Exit(int(code))


def emit_json(data: Any) -> None:
    """One JSON document on stdout for scripts (docs/json.md): indented, UTF-8 as is,
    never wrapped at the terminal's width or marked up, whatever the console does."""
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str), flush=True)


def emit_json_lines(rows: Iterable[Any]) -> None:
    """JSON lines on stdout, one object per line (lists: ``queue ls``, ``evidence ls``)."""
    for row in rows:
        print(json.dumps(row, ensure_ascii=False, default=str))
    sys.stdout.flush()
