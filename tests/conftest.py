"""Shared pytest fixtures: the emulated department systems as real subprocesses.

Fixtures (names are stable; other test modules rely on them):

``fixture_servers`` (session scope)
    One ``python -m stampless fixtures serve --base-port 0 --seed 7`` for the whole run,
    with its access logs in a temporary folder. Treat it as shared: do not change its
    settings (ui variant, faults, latency) or expire its sessions; start your own
    instance with ``fixture_servers_factory`` for that.
``own_fixture_servers`` (module scope)
    An instance of the calling test module's own (seed 7, default options): change its
    settings, expire its sessions, log its accounts in and out freely; restore what later
    tests in the module expect.
``fixture_servers_factory`` (function scope)
    ``fixture_servers_factory(seed=7, latency_ms=0, fault_rate=0.0, fault_kinds=None,
    hang_s=None, idle_timeout_s=None, ui_variant=None, postback_delay_ms=None,
    postback_jitter_ms=None)`` starts another instance and
    returns its :class:`FixtureServers`; every instance is stopped when the test ends.

A :class:`FixtureServers` offers::

    .urls                       {"civil_affairs": "http://127.0.0.1:P", ...}
    .url(system)                one system's base URL
    .base_port / .port(system)  ports (civil affairs is the base port)
    .access_log_dir             folder of <system>.jsonl
    .access_log_path(system)    that system's JSON-lines access log
    .access_log(system)         its entries, as dicts (read over HTTP, always complete)
    .control(system, **kw)      POST /_fixture/control, e.g. control("civil_affairs",
                                expire_sessions=True); returns the resulting settings
    .control_all(**kw)          the same on all three systems
    .state(system)              GET /_fixture/state (settings and live sessions)

Service-account credentials come from ``stampless.fixtures.accounts.fixture_env()``.

``cli`` (function scope)
    ``cli(*args, cwd=PATH, env=None, bare=False)`` runs the stampless CLI in this
    process (a subprocess per call costs a second) and returns a CompletedProcess with
    the exit code, stdout and stderr; ``env`` is set for the call, ``bare`` first drops
    every ``STAMPLESS__`` variable.
``postgres_server`` (session scope)
    One real PostgreSQL server (:class:`stampless.fixtures.postgres.PostgresServer`:
    initdb and pg_ctl in a temp dir, on a Unix socket), started the first time a test
    asks for it and stopped at the end of the run.
``postgres_url`` (function scope)
    The URL of a fresh, migrated schema of its own on ``postgres_server`` (the schema
    is the URL's ``search_path``), for one test.

``deployment`` (module scope)
    The environment for running ``stampless`` on the repository's robot.toml against
    ``fixture_servers`` with a var/ of the module's own
    (``STAMPLESS__PROJECT__VAR_DIR``), service-account secrets and a configured,
    pinned signing key (``deployment_keys.signing_env``) included.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from deployment_keys import signing_env

from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.harness import FixtureProcess
from stampless.fixtures.postgres import PostgresServer
from stampless.fixtures.records import SYSTEMS

DURATIONS = Path(__file__).with_name("durations.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        action="store_true",
        help=f"write each test's seconds (1 s or more) to {DURATIONS.name}, "
        "the order make test deals tests out in",
    )


def _durations() -> dict[str, float]:
    try:
        seconds: dict[str, float] = json.loads(DURATIONS.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return seconds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with the most seconds of tests run first, each module's order kept.

    ``make test`` hands whole modules to its workers in this order (``--dist loadfile
    --no-loadscope-reorder``): the longest first, so that no worker is left with a long
    module at the end while the others idle. A module's seconds are its tests' in
    tests/durations.json (``--record-durations`` rewrites it); a test marked ``long`` and
    not listed there counts as a minute, any other unlisted test as nothing.
    """
    seconds = _durations()
    cost: dict[Path, float] = {}
    for item in items:
        known = seconds.get(item.nodeid, 60.0 if item.get_closest_marker("long") else 0.0)
        cost[item.path] = cost.get(item.path, 0.0) + known
    items.sort(key=lambda item: -cost[item.path])  # stable: each module's order kept


_RECORDED: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With --record-durations: add up each test's setup, call and teardown."""
    _RECORDED[report.nodeid] = _RECORDED.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if not config.getoption("record_durations") or hasattr(config, "workerinput"):
        return  # only the controller (or a run without xdist) writes the file
    kept = _durations()  # a run of some modules updates their tests, keeps the others'
    for nodeid, seconds in _RECORDED.items():
        kept.pop(nodeid, None)
        if seconds >= 1.0:
            kept[nodeid] = round(seconds, 1)
    text = json.dumps(dict(sorted(kept.items())), indent=0, ensure_ascii=False)
    DURATIONS.write_text(text + "\n", encoding="utf-8")


class FixtureServers:
    """A running ``stampless fixtures serve`` and helpers to inspect and steer it."""

    def __init__(self, process: FixtureProcess, access_log_dir: Path) -> None:
        self.process = process
        self.access_log_dir = access_log_dir
        self.urls: dict[str, str] = dict(process.urls)
        missing = set(SYSTEMS) - set(self.urls)
        if missing:
            raise RuntimeError(f"fixtures serve did not print URLs for {sorted(missing)}")

    def url(self, system: str) -> str:
        """Base URL of ``system``, e.g. ``http://127.0.0.1:8700``."""
        return self.urls[system]

    def port(self, system: str) -> int:
        """TCP port of ``system``."""
        port = urlsplit(self.urls[system]).port
        assert port is not None
        return port

    @property
    def base_port(self) -> int:
        """The civil-affairs port (the others follow it when a base port was given)."""
        return self.port("civil_affairs")

    def access_log_path(self, system: str) -> Path:
        """The JSON-lines access log file of ``system``."""
        return self.access_log_dir / f"{system}.jsonl"

    def access_log(self, system: str) -> list[dict[str, Any]]:
        """Every access-log entry of ``system`` so far."""
        with urllib.request.urlopen(self.url(system) + "/_fixture/access-log", timeout=10) as r:
            text = r.read().decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def control(self, system: str, **settings: Any) -> dict[str, Any]:
        """Change ``system``'s settings through POST /_fixture/control."""
        request = urllib.request.Request(
            self.url(system) + "/_fixture/control",
            data=json.dumps(settings).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            result: dict[str, Any] = json.loads(r.read())
        return result

    def control_all(self, **settings: Any) -> dict[str, dict[str, Any]]:
        """:meth:`control` on every system."""
        return {system: self.control(system, **settings) for system in SYSTEMS}

    def state(self, system: str) -> dict[str, Any]:
        """Settings and live sessions of ``system``."""
        with urllib.request.urlopen(self.url(system) + "/_fixture/state", timeout=10) as r:
            result: dict[str, Any] = json.loads(r.read())
        return result

    def stop(self) -> None:
        """Stop the server process (SIGTERM, then kill)."""
        self.process.stop()


def _start(access_log_dir: Path, args: list[str]) -> FixtureServers:
    process = FixtureProcess(args=args, access_log=access_log_dir)
    process.start()
    return FixtureServers(process, access_log_dir)


def _options_to_args(**options: Any) -> list[str]:
    args: list[str] = []
    for name, value in options.items():
        if value is None:
            continue
        if name == "fault_kinds" and not isinstance(value, str):
            value = ",".join(value)
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="session")
def fixture_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixtureServers]:
    """The three emulated systems with seed 7, shared by the whole test session."""
    servers = _start(tmp_path_factory.mktemp("fixture-access-log"), ["--seed", "7"])
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def own_fixture_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixtureServers]:
    """The three emulated systems with seed 7, private to one test module."""
    servers = _start(tmp_path_factory.mktemp("fixture-own"), ["--seed", "7"])
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def fixture_servers_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., FixtureServers]]:
    """Start extra instances with other options; all are stopped after the test."""
    started: list[FixtureServers] = []

    def start(
        *,
        seed: int = 7,
        latency_ms: int | None = None,
        fault_rate: float | None = None,
        fault_kinds: str | list[str] | None = None,
        hang_s: float | None = None,
        idle_timeout_s: float | None = None,
        ui_variant: str | None = None,
        postback_delay_ms: int | None = None,
        postback_jitter_ms: int | None = None,
    ) -> FixtureServers:
        args = _options_to_args(
            seed=seed,
            latency_ms=latency_ms,
            fault_rate=fault_rate,
            fault_kinds=fault_kinds,
            hang_s=hang_s,
            idle_timeout_s=idle_timeout_s,
            ui_variant=ui_variant,
            postback_delay_ms=postback_delay_ms,
            postback_jitter_ms=postback_jitter_ms,
        )
        servers = _start(tmp_path_factory.mktemp("fixture-extra"), args)
        started.append(servers)
        return servers

    try:
        yield start
    finally:
        for servers in started:
            servers.stop()


@pytest.fixture(scope="module")
def deployment(
    fixture_servers: FixtureServers, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment that points the repository's robot.toml at the fixtures and a tmp var/."""
    var = tmp_path_factory.mktemp("var")
    env = {
        **os.environ,
        **fixture_env(),
        **signing_env(),
        "STAMPLESS__PROJECT__VAR_DIR": str(var),
    }
    for system in SYSTEMS:
        env[f"STAMPLESS__SYSTEMS__{system.upper()}__URL"] = fixture_servers.url(system)
    return env


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole session (started on first use)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A libpq URL whose search_path is a new schema, migrated to the current version."""
    import re
    from urllib.parse import quote

    import psycopg

    from stampless._postgres import migrate

    schema = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    schema = f"t{len(_SCHEMAS)}_{schema}"
    _SCHEMAS.append(schema)
    url = postgres_server.url + "&options=" + quote(f"-csearch_path={schema}", safe="")
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    return url


_SCHEMAS: list[str] = []


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """Run the stampless CLI in this process (a subprocess per call costs a second)."""
    from stampless.cli import main
    from stampless.cli._common import state

    def run(*args: str, cwd: Path, env: dict[str, str] | None = None, bare: bool = False):
        monkeypatch.chdir(cwd)
        if bare:  # a machine without this deployment's configuration
            for key in [k for k in os.environ if k.startswith("STAMPLESS__")]:
                monkeypatch.delenv(key)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        state._config = None  # loaded once per process normally; each call here is a "process"
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run
