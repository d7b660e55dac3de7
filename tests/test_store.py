"""The shared PostgreSQL store beyond the queue contract (tests/test_queue.py runs that on
both backends): the constraint behind the account lock, fencing tokens, LISTEN/NOTIFY,
migrations, ``[store]`` settings and the commands that read the shared store.

Everything here runs on a real server (conftest's ``postgres_server``).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from stampless._postgres import SCHEMA_VERSION, migrate, schema_version
from stampless.config import load_config
from stampless.errors import ConfigError
from stampless.fixtures.postgres import PostgresServer
from stampless.models import Request, Tier, utcnow
from stampless.queue import WorkQueue
from stampless.queue.postgres import PostgresQueue

ACCOUNTS = {"market_supervision": ["ms1"]}


def add(queue: WorkQueue, rid: str) -> None:
    now = utcnow()
    queue.enqueue(
        Request(id=rid, type="business_license", claim={}),
        base_dir=Path("/spool") / rid,
        tier=Tier.robot,
        system="market_supervision",
        received_at=now,
        deadline=now + timedelta(minutes=3),
    )


@pytest.fixture
def pg_queue(postgres_url: str) -> PostgresQueue:
    q = PostgresQueue(postgres_url, ACCOUNTS)
    yield q  # type: ignore[misc]
    q.close()


def test_the_database_refuses_a_second_holder_of_an_account(
    pg_queue: PostgresQueue, postgres_url: str
) -> None:
    add(pg_queue, "A")
    add(pg_queue, "B")
    claim = pg_queue.claim("w1", lease_s=30)
    assert claim is not None and claim.item.account == "ms1"
    # Whatever code writes the table, a second claimed item on ms1 cannot exist.
    with (
        psycopg.connect(postgres_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UniqueViolation, match="items_one_holder_per_account"),
    ):
        conn.execute(
            """UPDATE items SET state = 'claimed', account = 'ms1',
               lease_token = nextval('lease_fence'), lease_expires = now()
               WHERE request_id = 'B'"""
        )


def test_every_claim_takes_a_larger_fencing_token(pg_queue: PostgresQueue) -> None:
    add(pg_queue, "A")
    first = pg_queue.claim("dead", lease_s=30)
    assert first is not None
    second = pg_queue.claim("alive", lease_s=30, now=utcnow() + timedelta(seconds=31))
    assert second is not None and second.request_id == "A"
    assert int(second.token) > int(first.token)
    pg_queue.release(first)  # the fenced-off holder changes nothing
    item = pg_queue.get("A")
    assert item is not None and item.lease_owner == "alive" and item.attempts == 2


def test_a_worker_wakes_on_notify(pg_queue: PostgresQueue, postgres_url: str) -> None:
    woken = threading.Event()
    stop = pg_queue.listen(woken.set)
    assert stop is not None
    try:
        other = PostgresQueue(postgres_url, ACCOUNTS)  # another machine's intake
        for attempt in range(50):  # LISTEN runs in the listener's thread: wait until it does
            woken.clear()
            add(other, f"N{attempt}")
            if woken.wait(0.2):
                break
        assert woken.is_set()
        woken.clear()
        start = time.monotonic()
        add(other, "LAST")
        assert woken.wait(5)
        assert time.monotonic() - start < 2
        other.close()
    finally:
        stop()


def test_migrations_apply_once_whoever_runs_them(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database("migrate_race")
    applied: list[int] = []

    def run() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            applied.extend(m.version for m in migrate(conn))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(applied) == list(range(1, SCHEMA_VERSION + 1))
    with psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        assert schema_version(conn) == SCHEMA_VERSION
        assert migrate(conn) == []


def _project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "robot.toml").write_text(
        """[project]
var_dir = "var"

[store]
backend = "postgres"
url = "env:STAMPLESS_DATABASE_URL"

[systems.market_supervision]
url = "http://127.0.0.1:9"
robot = "robots/market_supervision.py"
selectors = "selectors/market_supervision.toml"
accounts = [{ name = "ms1", username = "u", password = "env:MS1_PASSWORD" }]
""",
        encoding="utf-8",
    )
    return folder


def test_store_settings_are_checked(tmp_path: Path) -> None:
    toml = tmp_path / "robot.toml"
    toml.write_text('[store]\nbackend = "postgres"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="needs url"):
        load_config(toml, environ={})
    toml.write_text(
        '[store]\nbackend = "postgres"\nurl = "postgresql://u:pw@db/x"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="reference to a secret") as err:
        load_config(toml, environ={})
    assert "pw@db" not in str(err.value)
    config = load_config(
        _project(tmp_path / "p") / "robot.toml",
        environ={"STAMPLESS__STORE__SHARED_DIR": "/mnt/shared"},
    )
    assert config.store.backend == "postgres" and config.store.shared_dir == Path("/mnt/shared")


def test_commands_read_the_shared_store(
    postgres_server: PostgresServer, cli, tmp_path: Path
) -> None:
    url = postgres_server.create_database("cli_store")
    project = _project(tmp_path / "project")
    env = {"STAMPLESS_DATABASE_URL": url, "STAMPLESS__PROJECT__VAR_DIR": str(tmp_path / "var")}

    unmigrated = cli("queue", "ls", "--json", cwd=project, env=env)
    assert unmigrated.returncode == 2
    assert "stampless db migrate" in unmigrated.stderr
    assert len(unmigrated.stderr.strip().splitlines()) == 1

    first = cli("db", "migrate", cwd=project, env=env)
    assert first.returncode == 0, first.stderr
    assert "Applied migration 1" in first.stdout
    again = cli("db", "migrate", "--json", cwd=project, env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["applied"] == []
    status = cli("db", "status", "--json", cwd=project, env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["version"] == SCHEMA_VERSION

    # Another machine queues an item and holds the account; this one's commands see both.
    other = PostgresQueue(url, ACCOUNTS)
    add(other, "SHARED-1")
    assert other.claim("machine-b", lease_s=60) is not None
    other.close()
    listed = cli("queue", "ls", "--json", cwd=project, env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["request_id"] == "SHARED-1" and row["lease_owner"] == "machine-b"
    accounts = cli("accounts", "ls", cwd=project, env=env)
    assert accounts.returncode == 0 and "SHARED-1" in accounts.stdout

    no_secret = cli("queue", "ls", cwd=project, env={**env, "STAMPLESS_DATABASE_URL": ""})
    assert no_secret.returncode == 2
    assert "STAMPLESS_DATABASE_URL" in no_secret.stderr
    assert not (tmp_path / "var" / "queue.db").exists()  # nothing fell back to SQLite
