"""The ``stampless`` command line (README.md, "Commands").

Each command group lives in its own module with a ``register(app)`` function; heavy
imports (Playwright, Tesseract wrappers, Flask) happen inside the commands, so
``stampless --help`` stays fast.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from stampless.cli._common import err_console, state
from stampless.errors import ExitCode, StamplessError

app = typer.Typer(
    name="stampless",
    help="Robots that verify documents against legacy department web systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules of stampless.cli that add commands; each defines register(app).
COMMAND_MODULES = (
    "basic",
    "fixtures",
    "scans",
    "evidence",
    "audit",
    "keys",
    "queue",
    "review",
    "ecert",
    "robot",
    "kit",
    "accounts",
    "ocr",
    "db",
)


@app.callback()
def _root(
    config: Annotated[Path, typer.Option("--config", help="Path to robot.toml.")] = Path(
        "robot.toml"
    ),
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    from stampless._logging import setup_logging

    state.config_path = config
    state.debug = debug
    setup_logging(None, debug=debug)  # console only, until a command loads robot.toml


def _hoist_global_options(argv: list[str]) -> list[str]:
    """Move --config/--debug from anywhere to the front, where the root callback reads them."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--debug":
            front.append(arg)
        elif arg == "--config" and i + 1 < len(argv):
            front += [arg, argv[i + 1]]
            i += 1
        elif arg.startswith("--config="):
            front.append(arg)
        elif arg == "--":
            rest += argv[i:]
            break
        else:
            rest.append(arg)
        i += 1
    return front + rest


for _name in COMMAND_MODULES:
    importlib.import_module(f"stampless.cli.{_name}").register(app)


@functools.cache
def _command() -> typer.core.TyperGroup:
    """The click command tree, built once: typer derives it from the signatures of every
    command, which costs more than parsing the arguments (0.2-0.6 s a call), and tests
    run the CLI hundreds of times in one process."""
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    return command


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning expected errors into one line and an exit code."""
    # Tesseract's own threads fight each other on small machines; we run one per core.
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    args = _hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in args
    try:
        # With standalone_mode=False click returns typer.Exit's code instead of raising.
        code = _command().main(args=args, prog_name="stampless", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except StamplessError as exc:
        if debug:
            raise
        err_console.print(f"stampless: {exc}", markup=False, soft_wrap=True)
        sys.exit(int(exc.exit_code))
    except KeyboardInterrupt:
        err_console.print("stampless: interrupted.")
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.Abort | typer.Abort):
            sys.exit(130)
        # typer >= 0.17 vendors click: its usage errors are TyperExceptions with show().
        if isinstance(exc, click.ClickException | typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            sys.exit(int(ExitCode.bad_input))
        if debug:
            raise
        err_console.print(
            f"stampless: unexpected {exc.__class__.__name__}: {exc}. "
            "Run again with --debug for the traceback, and report it.",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(int(ExitCode.system_failure))
