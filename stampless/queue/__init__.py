"""The durable work queue: an interface (:mod:`stampless.queue.abc`) and its backends.

Use :func:`open_queue`; workers depend only on :class:`WorkQueue`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stampless.queue.abc import (
    TERMINAL_STATES,
    AccountState,
    Claim,
    EnqueueResult,
    ItemState,
    LeaseLost,
    QueueItem,
    Tally,
    WorkQueue,
)

if TYPE_CHECKING:
    from stampless.config import Config

__all__ = [
    "TERMINAL_STATES",
    "AccountState",
    "Claim",
    "EnqueueResult",
    "ItemState",
    "LeaseLost",
    "QueueItem",
    "Tally",
    "WorkQueue",
    "open_queue",
]


def open_queue(config: Config) -> WorkQueue:
    """The deployment's queue: ``[store] backend`` in robot.toml, SQLite by default."""
    accounts = {name: [a.name for a in system.accounts] for name, system in config.systems.items()}
    if config.store.backend == "postgres":
        from stampless._postgres import database_url
        from stampless.queue.postgres import PostgresQueue

        return PostgresQueue(database_url(config), accounts)
    from stampless.queue.sqlite import SqliteQueue

    return SqliteQueue(config.queue_path, accounts)
