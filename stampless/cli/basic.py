"""Top-level commands: verify, doctor, demo, version."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stampless.cli._common import DEV_HELP, console, exit_with, get_config
from stampless.errors import ExitCode

VERDICT_STYLE = {
    "verified": "bold green",
    "mismatch": "bold red",
    "not_found": "bold yellow",
    "needs_review": "bold blue",
    "error": "bold magenta",
}


def _short_path(path: str | Path | None) -> str:
    """A path relative to the current folder when it is under it (tables stay readable)."""
    if path is None:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the stampless version."""
        from stampless._version import __version__

        console.print(__version__)

    @app.command()
    def verify(
        request: Annotated[Path, typer.Argument(help="The request JSON file.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
        dev: Annotated[bool, typer.Option("--dev", help=DEV_HELP)] = False,
    ) -> None:
        """Verify one request now. Exit 0 verified, 1 not verified, 2 bad input, 3 sent to
        manual review, 4 the department system or robot failed. Refuses to start without
        a configured signing key (evidence.signing_key) unless --dev."""
        from stampless.verify import verify_file

        outcome = asyncio.run(verify_file(get_config(), request, dev=dev))
        verdict = outcome.verdict
        if as_json:
            console.print_json(verdict.model_dump_json())
        else:
            style = VERDICT_STYLE.get(verdict.verdict.value, "bold")
            console.print(f"[{style}]{verdict.verdict.value}[/] {verdict.request_id}")
            for reason in verdict.reasons:
                console.print(f"  {reason}", markup=False)
            where = outcome.destination or "the manual review queue"
            console.print(f"  verdict: {where}", markup=False)
            console.print(f"  evidence: {verdict.evidence}", markup=False)
        exit_with(outcome.exit_code)

    @app.command()
    def doctor() -> None:
        """Say what this machine is missing for stampless, and how to get it."""
        from rich.markup import escape

        from stampless.doctor import run_checks

        checks = run_checks(get_config(required=False))
        table = Table("check", "", "detail", "how to fix", box=None, pad_edge=False)
        for check in checks:
            mark = "[green]ok[/]" if check.ok else "[red]missing[/]"
            table.add_row(check.name, mark, escape(check.detail), escape(check.fix))
        console.print(table)
        if not all(c.ok for c in checks):
            exit_with(ExitCode.system_failure)

    @app.command()
    def demo(
        difficulty: Annotated[
            str, typer.Option(help="How degraded the demo scans are: easy, normal or hard.")
        ] = "normal",
        workers: Annotated[int, typer.Option(min=1, max=8, help="Requests at once.")] = 2,
        as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
    ) -> None:
        """Verify a handful of generated scans end to end against the emulated systems."""
        from stampless.demo import run_demo

        if difficulty not in ("easy", "normal", "hard"):
            raise typer.BadParameter("use easy, normal or hard", param_hint="--difficulty")
        rows, summary, seconds = run_demo(get_config(), difficulty=difficulty, workers=workers)
        if as_json:
            console.print_json(
                json.dumps(
                    [
                        {
                            "request": r.item.request_path.name,
                            "verdict": r.verdict,
                            "expected": r.item.expected,
                            "evidence": r.outcome.verdict.evidence if r.outcome else None,
                        }
                        for r in rows
                    ]
                )
            )
        else:
            table = Table(title="stampless demo", title_justify="left")
            table.add_column("request", no_wrap=True)
            table.add_column("document")
            table.add_column("tier", no_wrap=True)
            table.add_column("verdict", no_wrap=True)
            table.add_column("expected", no_wrap=True)
            table.add_column("evidence", no_wrap=True)
            for r in rows:
                style = VERDICT_STYLE.get(r.verdict, "bold")
                expected = r.item.expected if r.as_expected else f"[red]{r.item.expected}[/]"
                verdict = r.outcome.verdict if r.outcome else None
                table.add_row(
                    verdict.request_id if verdict else r.item.request_path.name,
                    r.item.note,
                    verdict.tier.value if verdict else "",
                    f"[{style}]{r.verdict}[/]",
                    expected,
                    _short_path(verdict.evidence) if verdict else r.error,
                )
            console.print(table)
            console.print(
                f"{len(rows)} requests in {seconds:.1f} s. Summary: {_short_path(summary)}",
                soft_wrap=True,
            )
        if any(r.outcome is None for r in rows):
            exit_with(ExitCode.system_failure)
