"""``stampless fixtures ...``: the emulated department systems and the scan generator."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stampless.cli._common import state
from stampless.errors import InputError, StamplessError

if TYPE_CHECKING:
    from stampless.config import Config

fixtures_app = typer.Typer(help="Emulated department systems and degraded test scans.")


@fixtures_app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    base_port: Annotated[
        int,
        typer.Option(
            help="Civil affairs listens here, market supervision +1, social security +2, "
            "exit-entry +3; 0 picks free ports."
        ),
    ] = 8700,
    latency_ms: Annotated[int, typer.Option(help="Delay added to every request.")] = 0,
    fault_rate: Annotated[
        float, typer.Option(help="Share of requests that answer 500/502 or hang (seeded).")
    ] = 0.0,
    fault_kinds: Annotated[
        str, typer.Option(help="Comma-separated faults to draw from: 500, 502, hang.")
    ] = "500,502,hang",
    hang_s: Annotated[float, typer.Option(help="How long a 'hang' fault holds a request.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the records and of the faults.")] = 7,
    idle_timeout_s: Annotated[
        float, typer.Option(help="Sessions idle this long are logged out.")
    ] = 900.0,
    access_log: Annotated[
        Path, typer.Option(help="Folder for the access logs (<system>.jsonl).")
    ] = Path("var/fixtures"),
    ui_variant: Annotated[
        str, typer.Option(help="'normal', or 'changed' to rename search field ids/names.")
    ] = "normal",
    postback_delay_ms: Annotated[
        int, typer.Option(help="How long every post-back (a POST but the login) is held.")
    ] = 0,
    postback_jitter_ms: Annotated[
        int,
        typer.Option(
            help="Up to this much more, at random: half before the response starts, half "
            "after the first half of the page was sent."
        ),
    ] = 0,
) -> None:
    """Serve the emulated department systems until interrupted; print `ready`."""
    from stampless.fixtures.serve import serve
    from stampless.fixtures.servers._base import FAULT_KINDS, UI_VARIANTS, ServerOptions

    if not 0 <= fault_rate <= 1:
        raise InputError("--fault-rate must be between 0 and 1, e.g. 0.05.")
    if latency_ms < 0 or hang_s < 0 or idle_timeout_s <= 0:
        raise InputError("--latency-ms and --hang-s must be >= 0 and --idle-timeout-s > 0.")
    if postback_delay_ms < 0 or postback_jitter_ms < 0:
        raise InputError("--postback-delay-ms and --postback-jitter-ms must be >= 0.")
    kinds = tuple(k.strip() for k in fault_kinds.split(",") if k.strip())
    if not kinds or set(kinds) - set(FAULT_KINDS):
        raise InputError("--fault-kinds must list some of 500, 502 and hang, e.g. '500,502'.")
    if ui_variant not in UI_VARIANTS:
        raise InputError("--ui-variant must be 'normal' or 'changed'.")
    options = ServerOptions(
        seed=seed,
        latency_ms=latency_ms,
        fault_rate=fault_rate,
        fault_kinds=kinds,
        hang_s=hang_s,
        idle_timeout_s=idle_timeout_s,
        access_log_dir=access_log,
        ui_variant=ui_variant,
        postback_delay_ms=postback_delay_ms,
        postback_jitter_ms=postback_jitter_ms,
    )
    serve(host, base_port, options, announce=_announce_env)


def _robot_config() -> Config | None:
    """This folder's robot.toml, or None when there is none."""
    from stampless.cli._common import get_config

    return get_config() if state.config_path.is_file() else None


def _announce_env(urls: dict[str, str]) -> list[str]:
    """What ``fixtures serve`` prints once ready: the environment robot.toml needs."""
    from stampless.fixtures.accounts import env_lines, robot_env

    try:
        config = _robot_config()
    except StamplessError as exc:  # the servers run anyway; say why the list is generic
        config = None
        warning = [f"# {state.config_path} could not be read ({exc}); the fixture accounts:"]
    else:
        warning = []
    return [
        "# The environment a robot.toml needs for these systems (fixture accounts, not "
        "secrets); 'eval \"$(stampless fixtures env)\"' sets it in a shell:",
        *warning,
        *env_lines(robot_env(config, urls), export=False),
    ]


@fixtures_app.command("env")
def env_command(
    host: Annotated[str, typer.Option(help="The address 'fixtures serve' listens on.")] = (
        "127.0.0.1"
    ),
    base_port: Annotated[int, typer.Option(help="The --base-port of 'fixtures serve'.")] = 8700,
) -> None:
    """Print the environment robot.toml needs to run on 'stampless fixtures serve', as
    export lines: eval "$(stampless fixtures env)".

    The passwords (and TOTP seeds) of the emulated systems' service accounts, under the
    names robot.toml's env: references give them; and the systems' URLs when robot.toml's
    differ (another --base-port). These accounts are test fixtures, never secrets."""
    from stampless.fixtures.accounts import env_lines, robot_env
    from stampless.fixtures.records import SYSTEMS

    if not 0 < base_port <= 65535 - len(SYSTEMS) + 1:
        raise InputError(f"--base-port must be between 1 and {65535 - len(SYSTEMS) + 1}.")
    urls = {system: f"http://{host}:{base_port + n}" for n, system in enumerate(SYSTEMS)}
    for line in env_lines(robot_env(_robot_config(), urls), export=True):
        print(line)


def register(app: typer.Typer) -> None:
    app.add_typer(fixtures_app, name="fixtures")
