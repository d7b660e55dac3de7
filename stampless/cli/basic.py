"""Top-level commands: verify, doctor, demo, version."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from stampless.cli._common import DEV_HELP, console, emit_json, err_console, exit_with, get_config
from stampless.errors import ExitCode, StamplessError

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.demo import DemoRun, NextStep
    from stampless.doctor import Check

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
        # absolute(), not resolve(): var/demo/latest stays the link, not its target.
        return str(Path(path).absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _robot_toml_check(config: Config) -> Check:
    from stampless.cli._common import state
    from stampless.doctor import Check

    if not state.config_path.is_file():
        return Check(
            "robot.toml",
            True,
            f"no {state.config_path} here: machine checks only",
            "run inside a project, pass --config PATH, or 'stampless init DIR'",
            "robot.toml",
        )
    detail = f"{state.config_path}: {len(config.systems)} systems, {len(config.types)} types"
    return Check("robot.toml", True, detail, group="robot.toml")


def _point_at_partial(config: Config, request: Path | None) -> None:
    """After a failed run: where its failure screenshots and trace are."""
    from stampless.evidence import EvidenceBundle
    from stampless.models import Request

    if request is None:
        return
    try:
        request_id = Request.from_file(request).id
    except StamplessError:
        return
    partial = EvidenceBundle.partial_dir(config.evidence_dir, request_id)
    if partial.is_dir():
        err_console.print(
            f"stampless: the failure's screenshots and trace are in {partial} (the next "
            "run of this request moves them to .abandoned/ and starts afresh).",
            markup=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the stampless version."""
        from stampless._version import __version__

        console.print(__version__)

    @app.command()
    def verify(
        request: Annotated[
            Path | None, typer.Argument(help="The request JSON file (not with --recheck).")
        ] = None,
        recheck: Annotated[
            str | None,
            typer.Option(
                "--recheck",
                metavar="ID",
                help="Verify the finished request ID again, from its evidence, under a new "
                "id whose verdict supersedes the first.",
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
        dev: Annotated[bool, typer.Option("--dev", help=DEV_HELP)] = False,
    ) -> None:
        """Verify one request now. Exit 0 verified, 1 not verified, 2 bad input, 3 sent to
        manual review, 4 the department system or robot failed. Refuses to start without
        a configured signing key (evidence.signing_key) unless --dev. An id that already
        has a verdict answers that verdict; --recheck ID checks it again."""
        from stampless.errors import InputError, SystemFailure
        from stampless.verify import verify_file

        if (request is None) == (recheck is None):
            raise InputError(
                "Give a request file to verify, or --recheck ID to check a finished one "
                "again (not both)."
            )
        config = get_config()
        try:
            outcome = asyncio.run(verify_file(config, request, dev=dev, recheck=recheck))
        except SystemFailure:
            _point_at_partial(config, request)
            raise
        verdict = outcome.verdict
        if as_json:
            emit_json(verdict.model_dump(mode="json"))
        else:
            style = VERDICT_STYLE.get(verdict.verdict.value, "bold")
            console.print(f"[{style}]{verdict.verdict.value}[/] {verdict.request_id}")
            if outcome.already_done:
                console.print(
                    f"  {verdict.request_id} already had this verdict (finished "
                    f"{verdict.finished_at:%Y-%m-%d %H:%M:%S} UTC); ids are verified once. "
                    f"To check it again: stampless verify --recheck {verdict.request_id}",
                    markup=False,
                )
            if verdict.supersedes:
                console.print(f"  supersedes: {verdict.supersedes}", markup=False)
            for reason in verdict.reasons:
                console.print(f"  {reason}", markup=False)
            where = outcome.destination or "the manual review queue"
            console.print(f"  verdict: {where}", markup=False)
            console.print(f"  evidence: {verdict.evidence}", markup=False)
        exit_with(outcome.exit_code)

    @app.command()
    def doctor(
        offline: Annotated[
            bool, typer.Option("--offline", help="Do not contact the department systems.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    ) -> None:
        """Say what this machine and this deployment lack, and how to get it: Tesseract,
        Chromium, fonts; robot.toml, its modules and its secrets; whether each department
        system answers (not with --offline). Exit 0 when all is well, else 4."""
        from stampless.doctor import Check, run_checks
        from stampless.errors import ConfigError

        try:
            config = get_config(required=False)
        except ConfigError as exc:  # report it with the machine checks, on defaults
            from stampless.config import Config

            config, found = Config(), Check("robot.toml", False, str(exc), "", "robot.toml")
        else:
            found = _robot_toml_check(config)
        deployment = found.ok and bool(config.systems or config.types)
        checks = [found, *run_checks(config, deployment=deployment, offline=offline)]
        if as_json:
            emit_json({"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]})
        else:
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
        as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
    ) -> None:
        """Verify a handful of generated scans end to end against the emulated systems.

        Runs the demo deployment that ships with stampless, in a new folder under this
        project's var/demo/ (var/demo/latest links the newest), and ends with the
        commands that reach what it left there."""
        from stampless.demo import LATEST, run_demo

        if difficulty not in ("easy", "normal", "hard"):
            raise typer.BadParameter("use easy, normal or hard", param_hint="--difficulty")
        project = get_config(required=False)
        latest = project.var_dir / "demo" / LATEST / "robot.toml"
        config_arg = _short_path(latest)
        run = run_demo(project, difficulty=difficulty, workers=workers, config_arg=config_arg)
        steps = run.next_steps(config_arg)
        if as_json:
            emit_json(_demo_json(run, steps))
        else:
            _print_demo(run, steps)
        if any(r.outcome is None for r in run.rows):
            exit_with(ExitCode.system_failure)


def _pushed(epoch: float | None) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S") if epoch is not None else ""


def _print_hall(run: DemoRun) -> None:
    """The service hall's applications: each material's verdict and when it went back."""
    table = Table(title="the service hall's applications", title_justify="left")
    for column in ("application", "material (request)", "document", "verdict", "pushed"):
        table.add_column(column, no_wrap=column != "document")
    for app in run.hall:
        for m in app.materials:
            verdict = m.verdict or "waiting"
            style = VERDICT_STYLE.get(verdict, "bold")
            pushed = _pushed(m.pushed_at) or "[yellow]waits for a reviewer[/]"
            table.add_row(app.app_id, m.request_id, m.document, f"[{style}]{verdict}[/]", pushed)
    console.print(table)
    waiting = len(run.hall) - run.served
    console.print(
        f"[bold]{run.served} of {len(run.hall)} applications served end to end[/] (every "
        "material verified or fetched, then pushed back to the hall)"
        + (f"; {waiting} waits for a reviewer's decision." if waiting else "."),
        soft_wrap=True,
    )


def _demo_json(run: DemoRun, steps: list[NextStep]) -> dict[str, object]:
    """``demo --json`` (docs/json.md, "stampless demo")."""
    return {
        "as_expected": run.as_expected,
        "total": len(run.rows),
        "seconds": round(run.seconds, 1),
        "run_dir": str(run.run_dir),
        "config": str(run.config_path),
        "summary": str(run.summary),
        "requests": [
            {
                "request_id": r.request_id,
                "document": r.item.note,
                "tier": r.outcome.verdict.tier.value if r.outcome else None,
                "verdict": r.verdict,
                "expected": r.item.expected,
                "as_expected": r.as_expected,
                "evidence": r.outcome.verdict.evidence if r.outcome else None,
                "report": str(r.report) if r.report else None,
                "error": r.error,
            }
            for r in run.rows
        ],
        "next": [{"what": s.what, "command": s.command} for s in steps],
        "advice": run.advice,
        "hall": {
            "served": run.served,
            "applications": [
                {
                    "application": a.app_id,
                    "served": a.served,
                    "materials": [
                        {
                            "request_id": m.request_id,
                            "document": m.document,
                            "verdict": m.verdict,
                            "pushed_at": m.pushed_at,
                        }
                        for m in a.materials
                    ],
                }
                for a in run.hall
            ],
        },
    }


def _print_demo(run: DemoRun, steps: list[NextStep]) -> None:
    table = Table(title="stampless demo", title_justify="left")
    table.add_column("request", no_wrap=True)
    table.add_column("document")
    table.add_column("tier", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("expected", no_wrap=True)
    table.add_column("evidence", no_wrap=True)
    for r in run.rows:
        style = VERDICT_STYLE.get(r.verdict, "bold")
        expected = r.item.expected if r.as_expected else f"[red]{r.item.expected}[/]"
        verdict = r.outcome.verdict if r.outcome else None
        table.add_row(
            r.request_id,
            r.item.note,
            verdict.tier.value if verdict else "",
            f"[{style}]{r.verdict}[/]",
            expected,
            _short_path(verdict.evidence) if verdict else escape(r.error or ""),
        )
    console.print(table)
    total = len(run.rows)
    style = "bold green" if run.as_expected == total else "bold red"
    console.print(
        f"[{style}]{run.as_expected} of {total} as expected[/] in {run.seconds:.1f} s. "
        f"Summary: {escape(_short_path(run.summary))}",
        soft_wrap=True,
    )
    for r in run.rows:
        if not r.as_expected:
            console.print(
                f"  {r.request_id}: {r.verdict}, expected {r.item.expected}"
                + (f" ({r.error})" if r.error else ""),
                markup=False,
                soft_wrap=True,
            )
    if run.advice:
        console.print(f"  {run.advice}", markup=False, soft_wrap=True)
    _print_hall(run)
    console.print(
        f"The run's deployment and all it kept: {escape(_short_path(run.run_dir))}/ "
        f"(newest run: {escape(_short_path(run.run_dir.parent / 'latest'))}/). Try next:",
        soft_wrap=True,
    )
    for step in steps:
        console.print(f"  [dim]# {escape(step.what)}[/]", soft_wrap=True)
        console.print(f"  {escape(step.command)}", soft_wrap=True)
