"""Queue commands: ``submit``, ``run``, ``schedule``, ``intake serve``, ``queue ...``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from stampless.cli._common import DEV_HELP, console, emit_json, emit_json_lines, get_config
from stampless.errors import InputError

if TYPE_CHECKING:
    from stampless.signing import Signer
    from stampless.worker import Stats

queue_app = typer.Typer(help="Look into the work queue and act on items.")


intake_app = typer.Typer(help="The HTTP intake: POST /requests, GET /requests/ID.")


@intake_app.command("serve")
def intake_serve(
    host: Annotated[
        str | None, typer.Option(help="Address (default: intake.host of robot.toml).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: intake.port of robot.toml).")
    ] = None,
) -> None:
    """Serve the HTTP intake alone until SIGTERM; print 'ready URL'. Needs intake.token.

    Requests go into the queue for the workers ('stampless run'); the server also answers
    /healthz, /readyz and /metrics (docs/operations.md)."""
    import signal
    import threading

    from stampless.intake import Intake, IntakeServer
    from stampless.queue import open_queue
    from stampless.vault import require_secrets

    config = get_config()
    if not config.intake.token:
        raise InputError(
            'The HTTP intake needs a token; set [intake] token = "env:NAME" in robot.toml.'
        )
    require_secrets(config)
    overrides = {"intake.host": host, "intake.port": port}
    config = config.with_overrides({k: v for k, v in overrides.items() if v is not None})
    server = IntakeServer.from_config(Intake(config, open_queue(config)))
    assert server is not None  # a token is set
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"ready {server.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app, name="queue")
    app.add_typer(intake_app, name="intake")

    @app.command()
    def submit(
        files: Annotated[list[Path], typer.Argument(help="Request or case JSON files.")],
    ) -> None:
        """Queue requests or cases (idempotent by id). Every file is checked before any
        is queued; a bad one exits 2 and queues nothing."""
        from stampless.intake import Intake
        from stampless.queue import open_queue

        config = get_config()
        queue = open_queue(config)
        try:
            outcomes = Intake(config, queue).submit_files(files)
        finally:
            queue.close()
        for outcome in outcomes:
            console.print(outcome.message, markup=False)

    @app.command()
    def run(
        workers: Annotated[int, typer.Option(min=1, max=64, help="Concurrent workers.")] = 2,
        until_empty: Annotated[
            bool, typer.Option("--until-empty", help="Stop when nothing is left to do.")
        ] = False,
        progress: Annotated[
            bool | None,
            typer.Option(
                "--progress/--no-progress",
                help="Live display (default: when stdout is a terminal).",
            ),
        ] = None,
        port: Annotated[
            int | None,
            typer.Option(
                help="Serve /healthz, /readyz and /metrics on this port (at intake.host)."
            ),
        ] = None,
        dev: Annotated[bool, typer.Option("--dev", help=DEV_HELP)] = False,
    ) -> None:
        """Process the queue with N workers sharing one browser. Refuses to start (exit 2)
        when a secret robot.toml names does not resolve, or without a configured signing
        key (evidence.signing_key) unless --dev; stops at once if a secret stops resolving."""
        from stampless.signing import production_signer
        from stampless.vault import require_secrets

        # Loading robot.toml starts the log under var/log; no secret or key, no start.
        signer = production_signer(get_config(), dev=dev)
        require_secrets(get_config())
        stats = asyncio.run(_run(workers, until_empty, progress, signer, port))
        console.print(
            f"done {stats.done}, failed {stats.failed}, in review {stats.review}, "
            f"retried {stats.retried}, escalated {stats.escalated}; "
            f"SLA met {stats.sla_met}, missed {stats.sla_missed}",
            markup=False,
        )

    @app.command()
    def schedule(
        list_jobs: Annotated[
            bool, typer.Option("--list", help="Print the jobs and their next run times.")
        ] = False,
        workers: Annotated[
            int,
            typer.Option(
                min=0, max=64, help="Concurrent workers; 0: none here (they run as 'run')."
            ),
        ] = 2,
        http: Annotated[
            bool,
            typer.Option(
                "--http/--no-http",
                help="Serve the HTTP intake (intake.token and intake.port) in this process.",
            ),
        ] = True,
        dev: Annotated[bool, typer.Option("--dev", help=DEV_HELP)] = False,
    ) -> None:
        """Run the scheduler, the workers and the HTTP intake until SIGTERM. Refuses to
        start (exit 2) when a secret robot.toml names does not resolve, or without a
        configured signing key (evidence.signing_key) unless --dev."""
        from stampless.models import utcnow
        from stampless.scheduler import Daemon
        from stampless.signing import production_signer
        from stampless.vault import require_secrets
        from stampless.worker import WorkerOptions

        config = get_config()
        options = WorkerOptions.from_config(config, workers=workers, progress=False)
        signer = None if list_jobs else production_signer(config, dev=dev)
        if not list_jobs:
            require_secrets(config)
        daemon = Daemon(config, options=options, signer=signer, http=http)
        if list_jobs:
            table = Table(
                "job",
                "kind",
                "trigger",
                "next run (UTC)",
                "last run (UTC)",
                "outcome",
                box=None,
                pad_edge=False,
            )
            now = utcnow()
            for job in daemon.list_jobs():
                when = f"{job.next_run:%Y-%m-%d %H:%M:%S}" if job.next_run else "-"
                if job.next_run is not None and job.next_run < now:
                    when += " (due)"
                last, outcome = "-", "-"
                if job.last_run is not None:
                    last = f"{job.last_run.started:%Y-%m-%d %H:%M:%S}"
                    outcome = job.last_run.outcome or "running"
                    if job.last_run.detail:
                        outcome += f": {job.last_run.detail}"
                table.add_row(job.name, job.kind, job.trigger, when, last, Text(outcome))
            console.print(table)
            return
        asyncio.run(daemon.serve())

    @queue_app.command("ls")
    def ls(
        item_state: Annotated[
            str | None,
            typer.Option("--state", help="queued, claimed, done, review or failed (default: all)."),
        ] = None,
        limit: Annotated[int, typer.Option(min=1, help="At most this many items.")] = 50,
        as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    ) -> None:
        """List queue items: overdue first, then by deadline."""
        from stampless.queue import ItemState, open_queue

        states = None
        if item_state is not None:
            try:
                states = [ItemState(item_state)]
            except ValueError:
                raise InputError(
                    f"Unknown state {item_state!r}; use one of "
                    + ", ".join(s.value for s in ItemState)
                    + "."
                ) from None
        queue = open_queue(get_config())
        items = queue.list(states=states, limit=limit)
        if as_json:
            emit_json_lines(item.model_dump(mode="json", exclude={"request"}) for item in items)
            return
        table = Table("id", "state", "verdict", "tries", "deadline", "SLA", "type", box=None)
        for item in items:
            sla = "-" if item.sla_met is None else ("met" if item.sla_met else "missed")
            table.add_row(
                item.request_id,
                item.state.value + (" OVERDUE" if item.overdue else ""),
                item.verdict.value if item.verdict else "-",
                str(item.attempts),
                f"{item.deadline:%H:%M:%S}",
                sla,
                item.type,
            )
        console.print(table)
        counts = queue.counts()
        console.print(", ".join(f"{k.value} {v}" for k, v in counts.items()), markup=False)

    @queue_app.command("show")
    def show(request_id: Annotated[str, typer.Argument(help="The request id.")]) -> None:
        """Everything the queue knows about one item, as JSON."""
        from stampless.queue import open_queue

        item = open_queue(get_config()).get(request_id)
        if item is None:
            raise InputError(f"No request {request_id} in the queue; check 'stampless queue ls'.")
        emit_json(item.model_dump(mode="json"))

    @queue_app.command("retry")
    def retry(request_id: Annotated[str, typer.Argument(help="The request id.")]) -> None:
        """Run a waiting item now; re-check a finished one under a new id that supersedes it."""
        from stampless.intake import enqueue_recheck
        from stampless.models import utcnow
        from stampless.outbox import recheck_name
        from stampless.queue import ItemState, open_queue

        config = get_config()
        queue = open_queue(config)
        item = queue.get(request_id)
        if item is None:
            raise InputError(f"No request {request_id} in the queue; check 'stampless queue ls'.")
        if item.state is ItemState.queued:
            queue.retry(request_id)
            console.print(f"{request_id} will run at the next claim.", markup=False)
            return
        if item.state is ItemState.claimed:
            raise InputError(f"{request_id} is running now; wait for it to finish.")
        if item.state is ItemState.review:
            raise InputError(
                f"{request_id} is waiting for a person; decide it in the review console."
            )
        new_id = recheck_name(request_id)
        enqueue_recheck(queue, config, item, new_id, now=utcnow())
        console.print(
            f"{request_id} is finished and its verdict stays; queued re-check {new_id}.",
            markup=False,
        )

    @queue_app.command("redeliver")
    def redeliver(name: Annotated[str, typer.Argument(help="Request or case id.")]) -> None:
        """Deliver an outbox verdict to the webhook again (after the receiver was fixed)."""
        from stampless.delivery import Delivery

        delivery = Delivery.from_config(get_config())
        if delivery is None:
            raise InputError("No [outbox.webhook] in robot.toml; configure one first.")
        delivery.discover()
        delivery.redeliver(name)
        report = delivery.deliver_pending()
        emit_json(report.__dict__)


async def _run(
    workers: int, until_empty: bool, progress: bool | None, signer: Signer, port: int | None
) -> Stats:
    import signal

    from stampless.circuit import CircuitBreaker
    from stampless.delivery import Delivery
    from stampless.intake import Intake, IntakeServer
    from stampless.pipeline import Pipeline
    from stampless.queue import open_queue
    from stampless.worker import WorkerOptions, WorkerPool

    config = get_config()
    queue = open_queue(config)
    options = WorkerOptions.from_config(
        config, workers=workers, until_empty=until_empty, progress=progress
    )
    # One breaker: the pool keeps it, the robot runtime obeys it (logins included).
    circuits = CircuitBreaker.from_config(config)
    async with Pipeline(config, circuits=circuits, signer=signer) as pipeline:
        pool = WorkerPool(
            config,
            queue,
            pipeline,
            options=options,
            delivery=Delivery.from_config(config),
            circuits=circuits,
            signer=signer,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, pool.stop.set)
        health = None
        if port is not None:
            health = IntakeServer(
                Intake(config, queue),
                None,
                config.intake.host,
                port,
                ready_checks={"the worker pool": lambda: not pool.stop.is_set()},
            ).start()
        try:
            stats = await pool.run()
        finally:
            if health is not None:
                health.stop()
    from stampless.audit import write_checkpoint

    # What this run appended to the audit chain gets a signed end in the outbox.
    write_checkpoint(config.audit_dir, config.outbox_dir, signer, writer=config.audit_writer)
    return stats
