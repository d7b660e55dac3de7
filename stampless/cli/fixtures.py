"""``stampless fixtures ...``: the emulated department systems and the scan generator."""

from __future__ import annotations

import typer

fixtures_app = typer.Typer(help="Emulated department systems and degraded test scans.")


def register(app: typer.Typer) -> None:
    app.add_typer(fixtures_app, name="fixtures")
