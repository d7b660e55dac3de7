"""A pytest plugin for robot projects: emulated systems, a runtime, pages, scans, verdicts.

Installed with stampless (the ``pytest11`` entry point ``stampless``), so a project's
tests ask for its fixtures by name and import nothing from stampless's internals::

    def test_lookup(stampless_runtime, stampless_records):
        wanted = stampless_records("business_license")[0]
        record = stampless_runtime.lookup("licence_registry", wanted["credit_code"])
        assert record.fields["company_name"] == wanted["company_name"]

Fixtures:

``stampless_project``
    The project folder: ``--stampless-config PATH`` (a robot.toml), else the nearest
    robot.toml above the test file.
``stampless_emulate``
    ``{project system: emulated system}``: which of the project's systems the emulated
    department systems stand in for (default: none). Override it in ``conftest.py``::

        @pytest.fixture
        def stampless_emulate():
            return {"licence_registry": "market_supervision"}

``stampless_systems`` (session)
    The emulated department systems (``stampless fixtures serve``, seed 7) on free
    ports: ``.urls``, ``.url(system)``.
``stampless_config``
    The project's configuration with ``var/`` in a temporary folder, the emulated
    systems' URLs for the systems ``stampless_emulate`` names, and the environment
    variables their accounts' passwords (and TOTP seeds) refer to set to the emulated
    accounts' secrets (matched by username).
``stampless_runtime``
    A :class:`~stampless.RobotRuntime` on that configuration, driven from a plain test:
    ``.lookup(system, key)``, ``.fetch(system, key)``, and ``.run(coroutine)`` for any
    coroutine (``stampless_runtime.run(robot_page["search.code"].count())``).
``stampless_system``
    The system ``robot_page`` opens (default: the first one in robot.toml); override it.
``robot_page``
    A logged-in :class:`~stampless.RobotPage` of ``stampless_system``, through the
    robot's own ``login``; run its coroutines with ``stampless_runtime.run``.
``stampless_records``
    ``stampless_records(doc_type)``: the records the emulated systems hold.
``stampless_scans``
    ``stampless_scans(doc_type, count=1, as_type=None, difficulty="easy")``: request
    files with generated scans of genuine documents whose records the emulated systems
    hold; ``as_type`` re-labels them as a project's own type (its claim fields kept).
``stampless_verify``
    ``stampless_verify(request_file)``: the whole pipeline (lookup, OCR, comparison,
    sealed evidence signed with a development key), returning the
    :class:`~stampless.Verdict`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.fixtures.harness import FixtureProcess
    from stampless.models import Record, Verdict
    from stampless.robot import RobotPage, RobotRuntime

__all__ = ["RuntimeDriver"]

T = TypeVar("T")
SEED = 7


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stampless")
    group.addoption(
        "--stampless-config",
        default=None,
        metavar="PATH",
        help="robot.toml of the project under test (default: the nearest above the test).",
    )


class _Loop:
    """An asyncio event loop in a thread of its own: plain tests drive async robots."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class RuntimeDriver:
    """A :class:`~stampless.RobotRuntime` driven synchronously (the ``stampless_runtime``
    fixture): each call runs on the runtime's own event loop and returns its result."""

    def __init__(self, runtime: RobotRuntime, loop: _Loop) -> None:
        self.runtime = runtime
        self._loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        """Run ``coro`` (e.g. a ``RobotPage`` call) on the runtime's loop; its result."""
        return self._loop.run(coro, timeout)

    def lookup(self, system: str, key: str, *, account: str | None = None) -> Record:
        """The robot's lookup of ``key`` (RecordNotFound/RecordRevoked are raised)."""
        return self.run(self.runtime.lookup(system, key, account=account))

    def fetch(self, system: str, key: str, *, account: str | None = None) -> Path:
        """The robot's fetch of ``key``: the stored file."""
        return self.run(self.runtime.fetch(system, key, account=account))


def _find_project(request: pytest.FixtureRequest) -> Path:
    option = request.config.getoption("--stampless-config")
    if option:
        path = Path(option).resolve()
        return path.parent if path.is_file() else path
    for folder in [Path(request.path).resolve().parent, *Path(request.path).resolve().parents]:
        if (folder / "robot.toml").is_file():
            return folder
    raise pytest.UsageError(
        f"No robot.toml above {request.path}; pass --stampless-config PATH to pytest."
    )


@pytest.fixture
def stampless_project(request: pytest.FixtureRequest) -> Path:
    """The folder of the project under test (where its robot.toml is)."""
    return _find_project(request)


@pytest.fixture
def stampless_emulate() -> dict[str, str]:
    """{project system: emulated system}; override it in conftest.py (default: none)."""
    return {}


@pytest.fixture(scope="session")
def stampless_systems() -> Iterator[FixtureProcess]:
    """The emulated department systems (seed 7) on free ports, for the whole session."""
    from stampless.fixtures.harness import FixtureProcess

    with FixtureProcess(args=["--seed", str(SEED)]) as process:
        yield process


@pytest.fixture
def stampless_config(
    stampless_project: Path,
    stampless_emulate: dict[str, str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Config:
    """The project's configuration, on a temporary var/ and the emulated systems."""
    from stampless.config import load_config
    from stampless.fixtures.accounts import account

    config = load_config(stampless_project / "robot.toml")
    overrides: dict[str, Any] = {"project.var_dir": str(tmp_path / "var")}
    if stampless_emulate:
        systems: FixtureProcess = request.getfixturevalue("stampless_systems")
        for name, emulated in stampless_emulate.items():
            if name not in config.systems or emulated not in systems.urls:
                raise pytest.UsageError(
                    f"stampless_emulate maps {name!r} to {emulated!r}; the project's systems "
                    f"are {sorted(config.systems)}, the emulated ones {sorted(systems.urls)}."
                )
            overrides[f"systems.{name}.url"] = systems.urls[emulated]
            for acc in config.systems[name].accounts:
                known = account(emulated, acc.username)
                if known is None:
                    continue
                for ref, secret in ((acc.password, known.password), (acc.totp, known.totp_seed)):
                    if ref and secret and ref.startswith("env:"):
                        monkeypatch.setenv(ref[len("env:") :], secret)
    return config.with_overrides(overrides)


@pytest.fixture
def stampless_runtime(stampless_config: Config) -> Iterator[RuntimeDriver]:
    """A robot runtime on ``stampless_config``, driven synchronously."""
    from stampless.robot import RobotRuntime

    loop = _Loop()
    runtime = RobotRuntime(stampless_config)
    try:
        yield RuntimeDriver(runtime, loop)
    finally:
        loop.run(runtime.close())
        loop.close()


@pytest.fixture
def stampless_system(stampless_config: Config) -> str:
    """The system ``robot_page`` opens: the first in robot.toml (override it)."""
    if not stampless_config.systems:
        raise pytest.UsageError("robot.toml defines no [systems.NAME]; robot_page needs one.")
    return next(iter(stampless_config.systems))


@pytest.fixture
def robot_page(stampless_runtime: RuntimeDriver, stampless_system: str) -> Iterator[RobotPage]:
    """A logged-in page of ``stampless_system`` (its coroutines: ``stampless_runtime.run``)."""
    holder = stampless_runtime.runtime.page(stampless_system)
    page = stampless_runtime.run(holder.__aenter__())
    try:
        yield page
    finally:
        stampless_runtime.run(holder.__aexit__(None, None, None))


@pytest.fixture
def stampless_records() -> Callable[[str], list[dict[str, str]]]:
    """``stampless_records(doc_type)``: the records of the emulated systems (seed 7)."""
    from stampless.fixtures.records import records

    def of(doc_type: str) -> list[dict[str, str]]:
        return [dict(r) for r in records(doc_type, SEED)]

    return of


@pytest.fixture
def stampless_scans(stampless_config: Config, tmp_path: Path) -> Callable[..., list[Path]]:
    """``stampless_scans(doc_type, count=1, as_type=None, difficulty="easy")``: request
    files with scans of genuine documents the emulated systems hold."""
    from stampless.doctype import load_doctype
    from stampless.fixtures.scans import generate

    made = 0

    def scans(
        doc_type: str,
        count: int = 1,
        *,
        as_type: str | None = None,
        difficulty: str = "easy",
        seed: int = SEED,
    ) -> list[Path]:
        nonlocal made
        made += 1
        folder = tmp_path / f"scans-{made}"
        images = generate(
            folder,
            doc_type,
            count,
            seed,
            difficulty,
            altered_share=0.0,
            absent_share=0.0,
            records_seed=SEED,
        )
        requests = [image.with_suffix(".request.json") for image in images]
        if as_type is not None:
            fields = load_doctype(stampless_config, as_type).claim_model.model_fields
            for path in requests:
                data = json.loads(path.read_text(encoding="utf-8"))
                data["type"] = as_type
                data["claim"] = {k: v for k, v in data["claim"].items() if k in fields}
                path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return requests

    return scans


@pytest.fixture
def stampless_verify(stampless_config: Config) -> Iterator[Callable[[Path], Verdict]]:
    """``stampless_verify(request_file)``: the whole pipeline; the verdict it sealed."""
    from stampless.verify import verify_file

    loop = _Loop()

    def verify(path: Path) -> Verdict:
        return loop.run(verify_file(stampless_config, Path(path), dev=True)).verdict

    try:
        yield verify
    finally:
        loop.close()
