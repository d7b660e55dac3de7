"""Top-level commands: version (more are added by the pipeline work)."""

from __future__ import annotations

import typer

from stampless.cli._common import console


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the stampless version."""
        from stampless._version import __version__

        console.print(__version__)
