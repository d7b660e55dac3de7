"""``stampless accounts ls|enable``: the service accounts as the queue sees them.

A login the department system refused marks its account unusable for every worker and
process (the queue's account table); no login is sent with it again until an operator
has fixed its password in the vault and runs ``stampless accounts enable SYSTEM ACCOUNT``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from stampless.cli._common import console, get_config
from stampless.errors import InputError

accounts_app = typer.Typer(help="Service accounts: which are usable, and why not.")


def register(app: typer.Typer) -> None:
    app.add_typer(accounts_app, name="accounts")


@accounts_app.command("ls")
def accounts_ls() -> None:
    """List every service account: usable or disabled (why, since when), and who holds it."""
    from stampless.queue import open_queue

    queue = open_queue(get_config())
    try:
        states = queue.account_states()
    finally:
        queue.close()
    table = Table(title="Service accounts")
    for column in ("system", "account", "state", "since", "held by", "why"):
        table.add_column(column)
    for s in states:
        table.add_row(
            Text(s.system),
            Text(s.account),
            "usable" if s.usable else "[red]disabled[/red]",
            "" if s.changed_at is None else s.changed_at.strftime("%Y-%m-%d %H:%M:%S"),
            Text(s.held_by or ""),
            Text(s.reason or ""),
        )
    console.print(table)


@accounts_app.command("enable")
def accounts_enable(
    system: Annotated[str, typer.Argument(help="The department system, as in robot.toml.")],
    account: Annotated[str, typer.Argument(help="The account's name in robot.toml.")],
) -> None:
    """Put a disabled account back in use (after fixing its password in the vault)."""
    from stampless.queue import open_queue

    queue = open_queue(get_config())
    try:
        known = {(s.system, s.account) for s in queue.account_states()}
        if (system, account) not in known:
            names = ", ".join(f"{s} {a}" for s, a in sorted(known)) or "none"
            raise InputError(
                f"No account {account!r} of system {system!r}; 'stampless accounts ls' lists "
                f"them ({names})."
            )
        enabled = queue.enable_account(system, account)
    finally:
        queue.close()
    if enabled:
        console.print(
            f"Account {account} of {system} is usable again; the next item for {system} may "
            "log it in.",
            markup=False,
        )
    else:
        console.print(f"Account {account} of {system} was not disabled.", markup=False)
