"""``stampless review ...``: the reviewer console and its accounts."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from stampless.cli._common import DEV_HELP, console, emit_json_lines, get_config
from stampless.errors import InputError

review_app = typer.Typer(help="The manual tier: reviewer console and reviewer accounts.")


def _read_password(name: str) -> str:
    """The new password from stdin when piped, else prompted twice (never from argv)."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise InputError("Pipe the password on stdin (one line) or run in a terminal.")
        return line
    import getpass

    first = getpass.getpass(f"Password for {name}: ")
    if getpass.getpass("Again: ") != first:
        raise InputError("The two passwords differ; run the command again.")
    return first


@review_app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8080,
    threads: Annotated[int, typer.Option(min=1, max=64, help="Requests served at once.")] = 8,
    dev: Annotated[bool, typer.Option("--dev", help=DEV_HELP)] = False,
) -> None:
    """Serve the reviewer console on waitress (a production WSGI server) until SIGTERM;
    prints 'ready URL' once it accepts connections. Also answers /healthz, /readyz and
    /metrics (docs/operations.md).

    Decisions are signed: refuses to start without a configured key unless --dev."""
    import logging
    import signal

    from waitress.server import create_server

    from stampless.review.app import create_app, is_loopback
    from stampless.signing import production_signer

    config = get_config()
    app = create_app(config, host=host, signer=production_signer(config, dev=dev))
    # The app logs each request through loguru; waitress's own lines would repeat them.
    logging.getLogger("waitress").setLevel(logging.WARNING)
    if not is_loopback(host) and config.review.secure_cookies is False:
        console.print(
            "[yellow]warning:[/] session cookies are not Secure on a non-loopback address; "
            "put the console behind HTTPS."
        )
    try:
        server = create_server(app, host=host, port=port, threads=threads, ident="stampless")
    except OSError as exc:
        raise InputError(
            f"Cannot listen on {host}:{port} ({exc.strerror}); choose another --port."
        ) from exc

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    url = f"http://{host}:{server.effective_port}/"
    print(f"ready {url}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


@review_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="The reviewer's login name.")],
    role: Annotated[str, typer.Option(help="reviewer or admin.")] = "reviewer",
    replace: Annotated[
        bool, typer.Option("--replace", help="Reset the password and role of an existing user.")
    ] = False,
) -> None:
    """Create a reviewer account; the password is read from stdin or prompted."""
    from stampless.review.users import UserStore

    store = UserStore.from_config(get_config())
    user = store.add(name, _read_password(name), role, replace=replace)
    console.print(f"saved {user.name} ({user.role.value}) in {store.location}", markup=False)


@review_app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List the items waiting for review, overdue first."""
    from rich.table import Table

    from stampless.models import utcnow
    from stampless.review.charts import format_seconds
    from stampless.review.store import ReviewStore

    now = utcnow()
    items = ReviewStore.from_config(get_config()).pending(now)
    if as_json:
        fields = {"request_id", "type", "tier", "deadline", "reason"}
        emit_json_lines(it.model_dump(mode="json", include=fields) for it in items)
        return
    table = Table("request", "type", "time left", "held by", "reason")
    for it in items:
        left = it.seconds_left(now)
        when = "–" if left is None else format_seconds(abs(left))
        if it.overdue(now):
            when = f"[red]overdue {when}[/]"
        table.add_row(it.request_id, it.type, when, it.held_by(now) or "", it.reason)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
