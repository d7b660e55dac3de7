"""PostgreSQL connections and the versioned schema of the shared store (``[store]``).

Every machine of a deployment opens the same database. Its schema is a numbered list of
migrations (:data:`MIGRATIONS`); ``stampless db migrate`` applies the missing ones, each
in its own transaction under an advisory lock, so two machines migrating at once apply
each step once. Opening a store never changes the schema: it checks the version and
says to run ``stampless db migrate`` when the database is behind (or ahead of) this
stampless.

psycopg's errors are translated here into :class:`~stampless.errors.SystemFailure`
with messages that never hold the URL, which may carry a password.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stampless.errors import ConfigError, SystemFailure
from stampless.review.abc import create_table

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import DictRow

    from stampless.config import Config


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "work queue: items, service accounts, lease fencing tokens",
        """
CREATE TABLE items (
    request_id     text PRIMARY KEY,
    type           text NOT NULL,
    tier           text NOT NULL,
    priority       integer NOT NULL DEFAULT 0,
    system         text,
    case_id        text,
    base_dir       text NOT NULL,
    request        text NOT NULL,
    state          text NOT NULL
                   CHECK (state IN ('queued', 'claimed', 'done', 'review', 'failed')),
    received_at    timestamptz NOT NULL,
    deadline       timestamptz NOT NULL,
    not_before     timestamptz,
    attempts       integer NOT NULL DEFAULT 0,
    account        text,
    lease_token    bigint,
    lease_owner    text,
    lease_expires  timestamptz,
    last_error     text,
    verdict        text,
    sla_met        boolean,
    finished_at    timestamptz,
    overdue        boolean NOT NULL DEFAULT false,
    supersedes     text,
    updated_at     timestamptz NOT NULL,
    content_sha256 text,
    CHECK ((state = 'claimed') = (lease_token IS NOT NULL))
);
CREATE INDEX items_runnable ON items (deadline, priority DESC, received_at)
    WHERE state = 'queued';
CREATE INDEX items_leases ON items (lease_expires) WHERE state = 'claimed';
CREATE INDEX items_case ON items (case_id);
CREATE INDEX items_state_tier ON items (state, tier);
-- The account lock is the claimed item itself: this index makes a second holder of one
-- account impossible, whatever the code above it does.
CREATE UNIQUE INDEX items_one_holder_per_account ON items (system, account)
    WHERE state = 'claimed' AND account IS NOT NULL;
CREATE TABLE accounts (
    system     text NOT NULL,
    account    text NOT NULL,
    disabled   boolean NOT NULL DEFAULT false,
    reason     text,
    changed_at timestamptz,
    PRIMARY KEY (system, account)
);
-- Fencing tokens: every claim takes a larger one, so a system that records the token
-- can refuse a write from a holder whose lease was taken over.
CREATE SEQUENCE lease_fence;
""",
    ),
    Migration(
        2,
        "review store: review items and reviewer accounts",
        # The review items' columns are the SQLite store's (review.abc.COLUMNS, frozen
        # as of this migration: a new column is a new migration here and an added
        # column there).
        create_table("review_items", "timestamptz")
        + """
CREATE INDEX review_items_pending ON review_items (status, deadline);
CREATE TABLE reviewers (
    name          text PRIMARY KEY,
    role          text NOT NULL CHECK (role IN ('reviewer', 'admin')),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL,
    failed        integer NOT NULL DEFAULT 0,
    locked_until  timestamptz,
    session_epoch integer NOT NULL DEFAULT 0
);
""",
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version
_LOCK_KEY = 0x5354414D50  # "STAMP": the advisory lock migrations take
_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS stampless_schema (
    version     integer PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


def database_url(config: Config) -> str:
    """The store's libpq URL, resolved from its secret reference."""
    from stampless.vault import resolve_secret

    ref = config.store.url
    if ref is None:
        raise ConfigError(
            '[store] backend = "postgres" needs url = "env:STAMPLESS_DATABASE_URL" '
            "(a reference to the database's libpq URL)."
        )
    # A resolved Secret is registered for log scrubbing: the URL may carry a password.
    return resolve_secret(ref, config=config).reveal()


def connect(url: str) -> psycopg.Connection[DictRow]:
    """A connection (autocommit, rows as dicts) to the store, or a SystemFailure that
    does not repeat the URL."""
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError:
        raise ConfigError(
            "The PostgreSQL store needs psycopg; install it with "
            "\"pip install 'stampless[postgres]'\"."
        ) from None
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, row_factory=dict_row)
    except psycopg.Error as exc:
        raise SystemFailure(
            f"Cannot connect to the PostgreSQL store ({_reason(exc)}); check [store] url "
            "and that the server is running."
        ) from None


def _reason(exc: Exception) -> str:
    # libpq's messages name the host and socket but not the password; the first line is
    # the cause, the rest are hints that repeat it.
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Turn a psycopg error raised while doing ``action`` into a SystemFailure."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise SystemFailure(
            f"The PostgreSQL store failed while {action} ({_reason(exc)}); try again, and "
            "check the server if it keeps failing."
        ) from exc


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The highest migration applied to the database (0 for an empty one)."""
    from psycopg.rows import dict_row

    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute("SELECT to_regclass('stampless_schema') IS NOT NULL AS found").fetchone()
    if not row or not row["found"]:
        return 0
    row = cur.execute("SELECT COALESCE(MAX(version), 0) AS v FROM stampless_schema").fetchone()
    return int(row["v"]) if row else 0


def migrate(conn: psycopg.Connection[Any], *, upto: int | None = None) -> list[Migration]:
    """Apply the migrations the database lacks, in order, up to version ``upto`` (None:
    all of them); the ones applied."""
    applied: list[Migration] = []
    with translated("migrating the schema"):
        for migration in MIGRATIONS[:upto]:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                conn.execute(_VERSION_TABLE)
                if schema_version(conn) >= migration.version:
                    continue
                conn.execute(migration.sql.encode())
                conn.execute(
                    "INSERT INTO stampless_schema (version, description) VALUES (%s, %s)",
                    (migration.version, migration.description),
                )
            applied.append(migration)
    return applied


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise a ConfigError unless the database's schema is the one this stampless uses."""
    with translated("reading the schema version"):
        found = schema_version(conn)
    if found < SCHEMA_VERSION:
        raise ConfigError(
            f"The PostgreSQL store's schema is at version {found}, this stampless needs "
            f"{SCHEMA_VERSION}; run 'stampless db migrate' once, from any machine."
        )
    if found > SCHEMA_VERSION:
        raise ConfigError(
            f"The PostgreSQL store's schema is at version {found}, newer than this "
            f"stampless knows ({SCHEMA_VERSION}); upgrade stampless on this machine."
        )


# The advisory lock whose holder runs the deployment's schedule (see Leadership).
SCHEDULE_LOCK_KEY = 0x5354414D51


class Leadership:
    """Holds a session-level advisory lock so that one process of the deployment leads.

    ``stampless schedule`` on several machines: the one holding the lock runs the jobs
    (``on_gain``), the others wait and try again every ``retry_s``. The lock lives as
    long as the leader's connection, so a leader that dies (SIGKILL, a lost machine)
    frees it at once and another takes over within ``retry_s``. A leader whose
    connection breaks while it lives stops leading (``on_loss``) at its next check,
    within ``retry_s``: for that long two machines may both run jobs, which is why every
    job run still takes its lease in the job ledger and every job is safe to repeat.
    """

    def __init__(
        self,
        url: str,
        on_gain: Callable[[], None],
        on_loss: Callable[[], None],
        *,
        key: int = SCHEDULE_LOCK_KEY,
        retry_s: float = 5.0,
    ) -> None:
        self._url = url
        self._on_gain, self._on_loss = on_gain, on_loss
        self._key = key
        self.retry_s = retry_s
        self.leading = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    def start(self) -> Leadership:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop trying; a leader gives the lock up (its connection closes)."""
        self._stop.set()
        self._thread.join(timeout=self.retry_s + 10)

    def _run(self) -> None:
        import psycopg

        conn: psycopg.Connection[DictRow] | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self._url)
                if not self.leading:
                    row = conn.execute(
                        "SELECT pg_try_advisory_lock(%s) AS got", (self._key,)
                    ).fetchone()
                    if row is not None and row["got"]:
                        self.leading = True
                        self._on_gain()
                else:
                    conn.execute("SELECT 1")  # still connected, so still holding the lock
            except (psycopg.Error, SystemFailure):
                if self.leading:
                    self.leading = False
                    self._on_loss()
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(self.retry_s)
        if self.leading:
            self.leading = False
            self._on_loss()
        if conn is not None:
            conn.close()
