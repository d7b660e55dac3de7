"""``stampless audit verify``: walk the audit chain and name the first broken line."""

from __future__ import annotations

from typing import Annotated

import typer

from stampless.cli._common import console, get_config
from stampless.errors import ExitCode

audit_app = typer.Typer(help="The audit chain (one hashed JSON line per step).")


@audit_app.command("verify")
def verify_cmd(
    since: Annotated[
        str | None, typer.Option("--since", help="Check only from this time (ISO or 2h, 7d).")
    ] = None,
) -> None:
    """Check that no audit line was removed, reordered or edited; exit 0 only when intact."""
    from stampless.audit import verify_chain
    from stampless.cli.evidence import parse_since

    config = get_config(required=False)
    report = verify_chain(config.audit_dir, since=parse_since(since) if since else None)
    if report.ok:
        console.print(
            f"OK: {report.lines} line(s) in {len(report.files)} file(s) of {config.audit_dir} "
            f"form one unbroken chain (last seq {report.last_seq}).",
            markup=False,
            soft_wrap=True,
        )
        return
    console.print(f"BROKEN {report.first_broken}", markup=False, soft_wrap=True)
    console.print(
        f"{report.lines} line(s) before it are intact; everything from there on cannot be "
        "trusted. Restore the audit files from a backup or investigate who changed them.",
        markup=False,
        soft_wrap=True,
    )
    # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which
    # turns typer.Exit into an ignored return value.
    raise SystemExit(int(ExitCode.not_verified))


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
