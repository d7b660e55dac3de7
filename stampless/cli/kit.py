"""The robot author's tools: ``shell``, ``record``, ``selectors proposals`` and ``approve``.

``shell SYSTEM`` logs an account in through the robot's own ``login`` and opens an
asyncio console on the page (Scrapy's ``shell`` for a logged-in legacy system);
``record SYSTEM`` runs ``playwright codegen`` on a logged-in context and turns what was
recorded into a draft selector map; ``selectors proposals`` lists the repairs the
runtime proposed for selectors that stopped matching, and ``selectors approve`` writes
one into the map.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from stampless.cli._common import console, err_console, get_config
from stampless.cli.robot import AccountOption, selectors_app
from stampless.errors import ExitCode, InputError, StamplessError

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.robot import RobotRuntime

SystemArgument = Annotated[str, typer.Argument(help="The department system, as in robot.toml.")]


def register(app: typer.Typer) -> None:
    app.command("shell")(shell)
    app.command("record")(record)
    selectors_app.command("proposals")(selectors_proposals)
    selectors_app.command("approve")(selectors_approve)


# ---- shell --------------------------------------------------------------------------------


def shell(
    system: SystemArgument,
    account: AccountOption = None,
    command: Annotated[
        str | None,
        typer.Option(
            "-c",
            "--command",
            help="Run this code (await allowed) instead of the console, and print the value "
            "of its last expression.",
        ),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Open this path first (relative to the system).")
    ] = None,
    headed: Annotated[
        bool, typer.Option("--headed", help="Show the browser window (needs a display).")
    ] = False,
) -> None:
    """A logged-in page of SYSTEM to try selectors on, in an asyncio console.

    Logs in with the account through the robot's own login. The console has page,
    robot, selectors, runtime, config, show("name or selector") and shelp(); await works
    at the prompt (IPython is used when installed). With -c it runs the code and prints
    the value of its last expression: stampless shell civil_affairs -c
    "await page['search.cert_no'].count()". Exit 0, 2 when the code fails, 4 when the
    system or the login does.
    """
    from stampless.robot import RobotRuntime

    config = get_config()
    if headed:
        config = config.with_overrides({"browser.headless": False})
    runtime = RobotRuntime(config)
    chosen = runtime.account_for(system, account)  # a wrong account starts nothing
    code = asyncio.run(_shell(runtime, config, system, chosen, url, command))
    if code:
        raise typer.Exit(code)


async def _shell(
    runtime: RobotRuntime,
    config: Config,
    system: str,
    account: str,
    url: str | None,
    command: str | None,
) -> int:
    from stampless import shell as kit

    async with runtime, runtime.page(system, account=account) as page:
        if url is not None:
            await page.goto(url)
        names = kit.namespace(page, runtime, system, config)
        if command is None:
            loop = asyncio.get_running_loop()
            banner = kit.banner(system, account, page.url)
            await loop.run_in_executor(None, kit.interact, names, loop, banner)
            return 0
        return await _run_command(command, names)


async def _run_command(command: str, names: dict[str, Any]) -> int:
    from stampless import shell as kit

    try:
        value = await kit.run_code(command, names)
    except SyntaxError as exc:
        err_console.print(
            f"stampless: the code does not compile (line {exc.lineno}: {exc.msg}).", markup=False
        )
        return int(ExitCode.bad_input)
    except StamplessError:
        raise
    except Exception as exc:
        err_console.print(
            f"stampless: the code raised {kit.describe_failure(exc)}", markup=False, soft_wrap=True
        )
        return int(ExitCode.bad_input)
    if value is not None:
        console.print(repr(value), markup=False, soft_wrap=True, highlight=False)
    return 0


# ---- record -------------------------------------------------------------------------------


def record(
    system: SystemArgument,
    account: AccountOption = None,
    url: Annotated[
        str, typer.Option("--url", help="Where recording starts, relative to the system.")
    ] = "/",
    script: Annotated[
        Path | None,
        typer.Option(
            "--script",
            help="Convert this recorded script (playwright codegen, Python) instead of "
            "recording a new one.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="The draft map (default: beside the system's selector map)."),
    ] = None,
) -> None:
    """Record a flow on a logged-in SYSTEM with playwright codegen; draft its selector map.

    The account logs in through the robot's own login (headless); codegen then opens a
    browser window on that session (it needs a display), in the system's locale and time
    zone. Close the window when done: each element the recording touched is replayed on
    the logged-in page, named, and given fallbacks that find it alone, in a draft
    selectors/<system>.draft.toml. With --script an existing recording is converted.
    """
    from stampless.robot import RobotRuntime
    from stampless.robot._record import parse_recording

    config = get_config()
    runtime = RobotRuntime(config)
    chosen = runtime.account_for(system, account)
    if script is None:
        script = _codegen(runtime, config, system, chosen, url)
        console.print(f"recorded script: {script}", markup=False, soft_wrap=True)
    try:
        text = script.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{script}: cannot be read ({exc.strerror}).") from None
    steps = parse_recording(text)
    target = out or config.systems[system].selectors.with_suffix(".draft.toml")
    written, count = asyncio.run(_draft(runtime, system, chosen, steps, script, target))
    console.print(
        f"{count} elements from {script} drafted in {written}", markup=False, soft_wrap=True
    )
    console.print(
        f"Read it, rename the selectors to what they mean, then save it as "
        f"{config.systems[system].selectors}.",
        markup=False,
        soft_wrap=True,
    )


async def _draft(
    runtime: RobotRuntime,
    system: str,
    account: str,
    steps: list[Any],
    script: Path,
    target: Path,
) -> tuple[Path, int]:
    from stampless.robot._record import draft, to_toml, write_draft

    async with runtime, runtime.page(system, account=account) as page:
        elements, frames = await draft(page, steps)
    return write_draft(target, to_toml(system, elements, frames, script.name)), len(elements)


def _codegen(runtime: RobotRuntime, config: Config, system: str, account: str, url: str) -> Path:
    """Log in, then run playwright codegen on the saved session; the recorded script."""
    from stampless.models import utcnow
    from stampless.robot import find_chromium
    from stampless.robot._sessions import state_path

    async def login() -> str:
        async with runtime, runtime.page(system, account=account) as page:
            return page.absolute(url)

    start = asyncio.run(login())
    state = state_path(config.var_dir, system, account)
    settings = config.systems[system]
    folder = config.var_dir / "record"
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"{system}-{utcnow():%Y%m%dT%H%M%S}.py"
    command = [
        sys.executable,
        "-m",
        "playwright",
        "codegen",
        "--target",
        "python-async",
        "--output",
        str(script),
        "--load-storage",
        str(state),
        "--lang",
        settings.locale,
        "--timezone",
        settings.timezone,
    ]
    if settings.user_agent:
        command += ["--user-agent", settings.user_agent]
    if settings.viewport is not None:
        command += ["--viewport-size", f"{settings.viewport.width},{settings.viewport.height}"]
    if settings.ignore_https_errors:
        command.append("--ignore-https-errors")
    if settings.proxy is not None:
        command += ["--proxy-server", settings.proxy.server]
    env = dict(os.environ)
    # codegen has no option for the browser binary; Playwright's CLI takes it from this
    # variable, which lets it use the system's Chromium (robot.toml or PATH) like the robots.
    chromium = find_chromium(config.browser)
    if chromium is not None:
        env.setdefault("PWTEST_CLI_EXECUTABLE_PATH", str(chromium))
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY") or env.get("PWTEST_CLI_HEADLESS")):
        raise InputError(
            "Recording opens a browser window, and this session has no display (DISPLAY is "
            "not set); record on a desktop, or convert a recording made elsewhere with "
            f"'stampless record {system} --script FILE'."
        )
    console.print(
        f"Recording {start} as {account}; close the browser window when done.", markup=False
    )
    result = subprocess.run([*command, start], env=env, check=False)
    if result.returncode != 0 or not script.is_file():
        raise InputError(
            f"playwright codegen ended with exit code {result.returncode} and wrote no "
            "script; see its message above."
        )
    return script


# ---- selector repair proposals ----------------------------------------------------------


def selectors_proposals() -> None:
    """List the repairs proposed for selectors that stopped matching, newest first."""
    from stampless.robot._repair import read_proposals

    config = get_config(required=False)
    proposals = read_proposals(config.var_dir)
    if not proposals:
        console.print(f"No repair proposals in {config.var_dir / 'selectors'}.")
        return
    table = Table(title="Proposed first choices (approve: stampless selectors approve SYSTEM NAME)")
    for column in ("system", "selector", "proposed", "certain", "why", "screenshot", "at"):
        table.add_column(column)
    for p in proposals:
        table.add_row(
            Text(p.system),
            Text(p.selector),
            Text(p.choice or "(none)"),
            "yes" if p.certain else "no",
            Text(p.why),
            Text(p.screenshot or ""),
            p.at[:19].replace("T", " "),
        )
    console.print(table)


def selectors_approve(
    system: SystemArgument,
    name: Annotated[str, typer.Argument(help="The selector's name in the map.")],
    choice: Annotated[
        str | None,
        typer.Option("--choice", help="Approve this choice instead of the proposed one."),
    ] = None,
) -> None:
    """Write the proposed choice of NAME into SYSTEM's selector map, as its first choice.

    The old choices stay after it (a page may change back); a comment beside them says
    when and what was approved. The map is checked after the edit.
    """
    from stampless.robot._repair import approve, read_proposals

    config = get_config()
    path = config.system_config(system).selectors
    found = [p for p in read_proposals(config.var_dir) if (p.system, p.selector) == (system, name)]
    if choice is None:
        if not found or found[0].choice is None:
            raise InputError(
                f"No proposal for {name!r} of {system}; 'stampless selectors proposals' lists "
                "them, or give the choice with --choice."
            )
        choice = found[0].choice
    approve(path, system, name, choice)
    console.print(f"{path}: {name} now tries {choice!r} first.", markup=False, soft_wrap=True)
