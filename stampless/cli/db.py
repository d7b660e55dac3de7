"""``stampless db migrate|status``: the schema of the shared PostgreSQL store (docs/store.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from stampless.cli._common import console, emit_json, get_config
from stampless.errors import ConfigError

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import DictRow

db_app = typer.Typer(help="The shared PostgreSQL store: create or upgrade its schema.")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")


def _connect() -> psycopg.Connection[DictRow]:
    from stampless._postgres import connect, database_url

    config = get_config()
    if config.store.backend != "postgres":
        raise ConfigError(
            'The store is SQLite, which needs no migration; set [store] backend = "postgres" '
            "and url in robot.toml to use a PostgreSQL database."
        )
    return connect(database_url(config))


@db_app.command("migrate")
def migrate_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Create the schema, or apply the migrations it lacks (safe to run again, from any
    machine, while others run)."""
    from stampless._postgres import SCHEMA_VERSION, migrate

    with _connect() as conn:
        applied = migrate(conn)
    if as_json:
        emit_json({"version": SCHEMA_VERSION, "applied": [m.version for m in applied]})
        return
    for m in applied:
        console.print(f"Applied migration {m.version}: {m.description}.", markup=False)
    console.print(f"The schema is at version {SCHEMA_VERSION}.", markup=False)


@db_app.command("status")
def status_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Print the schema's version and the one this stampless needs; exit 2 if they differ."""
    from stampless._postgres import SCHEMA_VERSION, check_schema, schema_version, translated

    with _connect() as conn:
        with translated("reading the schema version"):
            found = schema_version(conn)
        if as_json:
            emit_json({"version": found, "needed": SCHEMA_VERSION})
        else:
            console.print(
                f"The schema is at version {found}; this stampless needs {SCHEMA_VERSION}.",
                markup=False,
            )
        check_schema(conn)
