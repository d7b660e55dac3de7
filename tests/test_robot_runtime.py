"""The robot runtime against real emulated systems and real Chromium.

This module starts its own ``stampless fixtures serve`` (it expires sessions, changes
the UI and injects faults, which the shared instance must not see) and shares one
browser between its tests through a runtime living in a background event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from loguru import logger
from PIL import Image

from stampless.config import Config, load_config
from stampless.errors import (
    AccountDisabled,
    BrowserError,
    ConfigError,
    RecordNotFound,
    RobotError,
)
from stampless.evidence import EvidenceBundle
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.harness import FixtureProcess
from stampless.fixtures.records import absent_key, records
from stampless.queue import open_queue
from stampless.robot import (
    LoginRejected,
    ReloginRefused,
    RobotRuntime,
    Watchdog,
    decode_legacy,
    drift_summary,
    find_chromium,
    load_selector_map,
)

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class LoopThread:
    """An event loop in a thread, so one browser serves several synchronous tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 120) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def write_project(
    root: Path, urls: dict[str, str], *, extra_browser: str = "", accounts_per_system: int = 3
) -> Path:
    """A robot.toml in ``root`` for the bundled robots against ``urls``."""
    prefixes = {
        "civil_affairs": "civil",
        "market_supervision": "market",
        "social_security": "social",
        "exit_entry": "exit",
    }
    parts = [
        f'[project]\nvar_dir = "{root / "var"}"\n',
        f"[browser]\ntimeout_ms = 5000\nnavigation_timeout_ms = 10000\n{extra_browser}\n",
    ]
    for system, prefix in prefixes.items():
        parts.append(
            f'[systems.{system}]\nurl = "{urls[system]}"\n'
            f'robot = "{REPO / "robots" / (system + ".py")}"\n'
            f'selectors = "{REPO / "selectors" / (system + ".toml")}"\n'
            "relogin_backoff_s = 0.05\nmax_relogins = 2\n"
        )
        for n in range(1, accounts_per_system + 1):
            name = f"{prefix}{n:02d}"
            totp = f'totp = "env:{name.upper()}_TOTP"\n' if system == "social_security" else ""
            parts.append(
                f'[[systems.{system}.accounts]]\nname = "{name}"\nusername = "{name}"\n'
                f'password = "env:{name.upper()}_PASSWORD"\n{totp}'
            )
    types = {
        "marriage_certificate": "civil_affairs",
        "business_license": "market_supervision",
        "social_security_record": "social_security",
        "work_permit": "exit_entry",
    }
    for doc_type, system in types.items():
        parts.append(
            f'[types.{doc_type}]\ntask = "{REPO / "tasks" / (doc_type + ".py")}"\n'
            f'system = "{system}"\n'
        )
    path = root / "robot.toml"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


class Servers:
    """Our own fixture instance and its control endpoint."""

    def __init__(self, process: FixtureProcess) -> None:
        self.process = process
        self.urls = dict(process.urls)

    def control(self, system: str, **settings: Any) -> dict[str, Any]:
        request = urllib.request.Request(
            self.urls[system] + "/_fixture/control",
            data=json.dumps(settings).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            result: dict[str, Any] = json.loads(r.read())
        return result

    def access_log(self, system: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.urls[system] + "/_fixture/access-log", timeout=10) as r:
            text = r.read().decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def logins(self, system: str, username: str) -> int:
        return sum(
            1
            for e in self.access_log(system)
            if e["path"] == "/login" and e["method"] == "POST" and e["account"] == username
        )


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    values = fixture_env()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in values.items():
            mp.setenv(name, value)
        yield values


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    log_dir = tmp_path_factory.mktemp("robot-access-log")
    with FixtureProcess(args=["--seed", "7"], access_log=log_dir) as process:
        yield Servers(process)


@pytest.fixture(scope="module")
def config(
    servers: Servers, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Config:
    root = tmp_path_factory.mktemp("robot-project")
    return load_config(write_project(root, servers.urls))


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def runtime(config: Config, loop: LoopThread) -> Iterator[RobotRuntime]:
    rt = loop.run(_enter(RobotRuntime(config)))
    yield rt
    loop.run(rt.close())


async def _enter(rt: RobotRuntime) -> RobotRuntime:
    return await rt.__aenter__()


def civil_keys(n: int) -> list[str]:
    return [r["cert_no"] for r in records("marriage_certificate", 7) if r["status"] == "valid"][:n]


# ---- sessions ----------------------------------------------------------------------------


@pytest.mark.slow
def test_one_login_serves_many_lookups(
    runtime: RobotRuntime, loop: LoopThread, servers: Servers, config: Config
) -> None:
    keys = civil_keys(5)
    for key in keys:
        record = loop.run(runtime.lookup("civil_affairs", key, account="civil02"))
        assert record.fields["cert_no"] == key
    assert servers.logins("civil_affairs", "civil02") == 1
    assert runtime.stats()["logins"]["civil_affairs/civil02"] == 1
    state = config.var_dir / "sessions" / "civil_affairs" / "civil02.json"
    assert state.stat().st_mode & 0o777 == 0o600
    assert "JSESSIONID" in state.read_text()
    searches = [e for e in servers.access_log("civil_affairs") if e["path"].startswith("/search?")]
    assert len({e["session"] for e in searches if e["account"] == "civil02"}) == 1


@pytest.mark.slow
def test_relogin_after_the_session_expires(
    runtime: RobotRuntime, loop: LoopThread, servers: Servers
) -> None:
    key = civil_keys(6)[5]
    loop.run(runtime.lookup("civil_affairs", key, account="civil02"))
    before = servers.logins("civil_affairs", "civil02")
    servers.control("civil_affairs", expire_sessions=["civil02"])
    record = loop.run(runtime.lookup("civil_affairs", key, account="civil02"))
    assert record.key == key
    assert servers.logins("civil_affairs", "civil02") == before + 1
    outcomes = [
        e["outcome"] for e in servers.access_log("civil_affairs") if e["account"] == "civil02"
    ]
    assert "expired" in outcomes
    assert _logins_audited(runtime.config, "civil02")[-1] is True


def _logins_audited(config: Config, account: str) -> list[bool]:
    """The ``relogin`` flag of every ``logged_in`` audit entry of ``account``, in order."""
    flags = []
    for path in sorted(config.audit_dir.glob("audit-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry["event"] == "logged_in" and entry["data"].get("account") == account:
                flags.append(entry["data"]["relogin"])
    return flags


@pytest.mark.slow
def test_relogin_flag_after_a_restored_session_is_lost(
    config: Config, loop: LoopThread, servers: Servers
) -> None:
    key = civil_keys(6)[4]

    async def lookup_with_a_new_runtime() -> None:
        # A new runtime restores the account's saved session (no login of its own).
        async with RobotRuntime(config) as rt:
            await rt.lookup("civil_affairs", key, account="civil01")

    loop.run(lookup_with_a_new_runtime())
    audited = len(_logins_audited(config, "civil01"))
    servers.control("civil_affairs", expire_sessions=["civil01"])
    loop.run(lookup_with_a_new_runtime())
    flags = _logins_audited(config, "civil01")
    # The session was re-established: the audit says so, and the watchdog counted it.
    assert len(flags) >= audited + 1 and flags[-1] is True


def _login_elsewhere(base: str, username: str, password: str) -> None:
    """Log ``username`` in with a plain HTTP client: the robot's session gets kicked out."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(base + "/login", timeout=10) as r:
        page = decode_legacy(r.read(), r.headers.get("Content-Type"))
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    data = urllib.parse.urlencode(
        {"csrf_token": token.group(1), "username": username, "password": password}
    ).encode()
    with opener.open(base + "/login", data=data, timeout=10) as r:
        assert r.status == 200 and "/search" in r.url


@pytest.mark.slow
def test_relogin_after_a_second_login_kicks_the_robot_out(
    runtime: RobotRuntime, loop: LoopThread, servers: Servers, env: dict[str, str]
) -> None:
    key = civil_keys(7)[6]
    loop.run(runtime.lookup("civil_affairs", key, account="civil02"))
    before = servers.logins("civil_affairs", "civil02")
    _login_elsewhere(servers.urls["civil_affairs"], "civil02", env["CIVIL02_PASSWORD"])
    record = loop.run(runtime.lookup("civil_affairs", key, account="civil02"))
    assert record.key == key
    outcomes = [
        e["outcome"] for e in servers.access_log("civil_affairs") if e["account"] == "civil02"
    ]
    assert "kicked" in outcomes
    # One login by the other client, one re-login by the robot.
    assert servers.logins("civil_affairs", "civil02") == before + 2


@pytest.mark.slow
def test_wrong_password_is_not_retried(
    config: Config, loop: LoopThread, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVIL03_PASSWORD", "not-the-password")
    rt = RobotRuntime(config)

    async def attempt() -> None:
        async with rt:
            await rt.lookup("civil_affairs", civil_keys(1)[0], account="civil03")

    with pytest.raises(LoginRejected) as info:
        loop.run(attempt())
    assert "not-the-password" not in str(info.value)
    # Exactly one bad password reached the system: retries would lock the account.
    assert servers.logins("civil_affairs", "civil03") == 1
    # The account is disabled for every process: another runtime sends nothing.
    queue = open_queue(config)
    assert "refused the login" in queue.disabled_accounts("civil_affairs")["civil03"]
    rt = RobotRuntime(config)
    with pytest.raises(AccountDisabled, match="accounts enable civil_affairs civil03"):
        loop.run(attempt())
    assert servers.logins("civil_affairs", "civil03") == 1
    assert queue.enable_account("civil_affairs", "civil03")
    servers.control("civil_affairs", unlock=True)


def test_watchdog_backs_off_then_refuses() -> None:
    from stampless.config import AccountConfig, SystemConfig

    system = SystemConfig(
        url="http://127.0.0.1:1",
        robot=Path("r.py"),
        selectors=Path("s.toml"),
        accounts=[AccountConfig(name="a", username="a", password="env:A")],
        max_relogins=2,
        relogin_backoff_s=0.5,
    )
    dog = Watchdog("civil_affairs", system)
    assert dog.before_login("a", relogin=False) == 0
    assert dog.before_login("a", relogin=True) == 0.5
    assert dog.before_login("a", relogin=True) == 1.0
    with pytest.raises(ReloginRefused, match="avoid locking"):
        dog.before_login("a", relogin=True)
    with pytest.raises(ReloginRefused):  # still cooling down, even for a first login
        dog.before_login("a", relogin=False)
    other = Watchdog("civil_affairs", system)
    other.before_login("b", relogin=True)
    other.succeeded("b")  # a request went through: the count starts again
    assert other.before_login("b", relogin=True) == 0.5


# ---- selectors ----------------------------------------------------------------------------


@pytest.mark.slow
def test_changed_ui_uses_fallbacks_and_reports_drift(
    runtime: RobotRuntime, loop: LoopThread, servers: Servers, config: Config
) -> None:
    key = civil_keys(8)[7]
    servers.control("civil_affairs", ui_variant="changed")
    try:
        record = loop.run(runtime.lookup("civil_affairs", key, account="civil01"))
    finally:
        servers.control("civil_affairs", ui_variant="normal")
    assert record.fields["cert_no"] == key
    rows = {(r.system, r.selector): r for r in drift_summary(config.var_dir)}
    assert ("civil_affairs", "search.cert_no") in rows
    assert rows[("civil_affairs", "search.cert_no")].fallback == "input[name=cert_no]" or rows[
        ("civil_affairs", "search.cert_no")
    ].fallback.startswith("xpath=")
    assert ("civil_affairs", "search.submit") in rows
    assert ("civil_affairs", "login.username") not in rows  # the login page did not change
    used = runtime.stats()["selectors"]["civil_affairs"]["search.cert_no"]
    assert used.get("choice2", 0) + used.get("choice3", 0) >= 1
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "stampless",
            "--config",
            str(config.root / "robot.toml"),
            "selectors",
            "report",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert report.returncode == 0, report.stderr
    assert "search.cert_no" in report.stdout and "civil_affairs" in report.stdout
    assert "xpath=//label[normalize-space(.)='结婚证字号']" in report.stdout  # not eaten as markup


def test_selector_map_errors_name_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "1"\n[selectors."a.b"]\nany = []\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml.*a\.b"):
        load_selector_map(bad, "x")
    bad.write_text(
        'version = "1"\n[selectors."a.b"]\nany = ["#x"]\nframe = "nope"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="nope"):
        load_selector_map(bad, "x")
    bad.write_text('[selectors."a.b"]\nany = ["#x"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="version"):
        load_selector_map(bad, "x")
    good = load_selector_map(REPO / "selectors" / "market_supervision.toml", "market_supervision")
    assert good["search.credit_code"].frame == "content"
    assert len(good.sha256) == 64 and good.meta()["selectors_version"] == good.version


# ---- errors and retries -------------------------------------------------------------------


@pytest.mark.slow
def test_business_error_is_final_and_not_retried(
    runtime: RobotRuntime, loop: LoopThread, servers: Servers
) -> None:
    key = absent_key("marriage_certificate", 7)
    failures = runtime.stats()["failures"]
    with pytest.raises(RecordNotFound):
        loop.run(runtime.lookup("civil_affairs", key, account="civil01"))
    searched = [e for e in servers.access_log("civil_affairs") if key in e["path"]]
    assert len(searched) == 1
    assert runtime.stats()["failures"] == failures


@pytest.mark.slow
def test_retries_recover_from_injected_faults(
    config: Config, loop: LoopThread, servers: Servers
) -> None:
    from datetime import timedelta

    from stampless.models import utcnow
    from stampless.retry import RetryPolicy, retried

    keys = civil_keys(14)[8:14]
    # The runtime makes one attempt per call; the one retry layer tries again.
    rt = RobotRuntime(config, caller_retries=True)
    policy = RetryPolicy(max_attempts=6, backoff_base_s=0.05, backoff_max_s=0.4)

    async def lookup(key: str) -> str:
        record = await retried(
            lambda _: rt.lookup("civil_affairs", key, account="civil01"),
            policy=policy,
            deadline=utcnow() + timedelta(minutes=2),
            margin_s=0,
            what=key,
        )
        return record.key

    async def lookups() -> list[str]:
        async with rt:
            await rt.lookup("civil_affairs", keys[0], account="civil01")  # log in first
            servers.control("civil_affairs", fault_rate=0.2, fault_kinds=["500", "502"])
            return [await lookup(k) for k in keys]

    try:
        found = loop.run(lookups(), timeout=240)
    finally:
        servers.control("civil_affairs", fault_rate=0.0)
    assert found == keys
    faults = [
        e for e in servers.access_log("civil_affairs") if str(e["outcome"]).startswith("fault:")
    ]
    assert faults, "the fixture injected no fault; the test proves nothing"
    assert rt.stats()["failures"] >= 1  # a fault failed a call, and the retry recovered it


def test_missing_browser_says_what_to_install(config: Config) -> None:
    broken = config.browser.model_copy(update={"executable_path": "/nonexistent/chromium"})
    with pytest.raises(BrowserError, match="apt-get install chromium"):
        find_chromium(broken)


def test_gbk_pages_decode() -> None:
    body = '<html><head><meta charset="gbk"></head>结婚证字号</html>'.encode("gbk")
    assert "结婚证字号" in decode_legacy(body, None)
    assert "结婚证字号" in decode_legacy(body, "text/html; charset=GBK")


# ---- legacy helpers and evidence ----------------------------------------------------------


@pytest.mark.slow
def test_dialogs_popups_downloads_and_frames(
    runtime: RobotRuntime, loop: LoopThread, config: Config
) -> None:
    import hashlib

    from stampless.fixtures.servers._archive import archive_bytes

    social = next(r for r in records("social_security_record", 7) if r["status"] == "valid")
    bundle = EvidenceBundle.open(config.evidence_dir, "ROBOT-DIALOG-1")
    record = loop.run(runtime.lookup("social_security", social["person_id"], evidence=bundle))
    assert record.fields["employer"] == social["employer"]  # read inside an iframe
    dialogs = json.loads(bundle.path("dialogs.json").read_text(encoding="utf-8"))
    assert dialogs[0]["kind"] == "confirm" and dialogs[0]["accepted"] is True
    assert "涉密" in dialogs[0]["message"]

    bundle = EvidenceBundle.open(config.evidence_dir, "ROBOT-ALERT-1")
    with pytest.raises(RecordNotFound):
        loop.run(
            runtime.lookup("civil_affairs", absent_key("marriage_certificate", 7), evidence=bundle)
        )
    dialogs = json.loads(bundle.path("dialogs.json").read_text(encoding="utf-8"))
    assert dialogs[0]["kind"] == "alert" and "未找到" in dialogs[0]["message"]

    key = civil_keys(1)[0]
    bundle = EvidenceBundle.open(config.evidence_dir, "ROBOT-FETCH-1")
    stored = loop.run(runtime.fetch("civil_affairs", key, account="civil01", evidence=bundle))
    expected = hashlib.sha256(
        archive_bytes("marriage_certificate", key, 7, "png") or b""
    ).hexdigest()
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == expected
    assert bundle.meta["download_sha256"] == expected
    assert bundle.meta["selectors_file"] == "civil_affairs.toml"
    # The detail popup was closed after the request: only the account's page remains.
    session = runtime.system("civil_affairs").sessions["civil01"]
    assert session.context is not None and len(session.context.pages) == 1

    licence = next(r for r in records("business_license", 7) if r["status"] == "valid")
    record = loop.run(runtime.lookup("market_supervision", licence["credit_code"]))
    assert record.fields["company_name"] == licence["company_name"]  # inside a frameset


LEAKY_ROBOT = '''
from stampless.loader import load_attribute
from stampless import RobotError
Base = load_attribute(__import__("pathlib").Path({civil!r}), "ROBOT")
SEEN = {{}}

class LeakyRobot(Base):
    """Screenshots the filled login form, then fails: the worst case for secrets."""

    async def login(self, page, creds):
        await page.goto("/login")
        await page["login.username"].fill(creds.username)
        await page["login.password"].fill_secret(creds.password)
        SEEN["box"] = await page.raw.locator("#password").bounding_box()
        SEEN["shot"] = await page.screenshot("login form filled")
        SEEN["source"] = await page.raw.content()
        await page["login.submit"].click_and_wait()

    async def lookup(self, page, key):
        await page.goto("/search")
        raise RobotError("deliberate failure after login")

ROBOT = LeakyRobot
'''


@pytest.mark.slow
def test_password_never_in_screenshots_traces_evidence_or_logs(
    config: Config, loop: LoopThread, env: dict[str, str], tmp_path: Path
) -> None:
    robot_file = tmp_path / "leaky.py"
    robot_file.write_text(
        LEAKY_ROBOT.format(civil=str(REPO / "robots" / "civil_affairs.py")), encoding="utf-8"
    )
    leaky = config.model_copy(deep=True)
    leaky.systems["civil_affairs"] = leaky.systems["civil_affairs"].model_copy(
        update={"robot": robot_file}
    )
    leaky.project = leaky.project.model_copy(update={"var_dir": tmp_path / "var"})
    password = env["CIVIL01_PASSWORD"]
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    bundle = EvidenceBundle.open(leaky.evidence_dir, "ROBOT-LEAK-1")
    rt = RobotRuntime(leaky)

    async def run() -> None:
        async with rt:
            await rt.lookup("civil_affairs", civil_keys(1)[0], account="civil01", evidence=bundle)

    try:
        with pytest.raises(RobotError, match="deliberate"):
            loop.run(run())
    finally:
        logger.remove(sink)
    from stampless.loader import load_module

    seen = load_module(robot_file).SEEN
    # The pixels: the password box is covered by the mask (solid black).
    shot = Image.open(seen["shot"]).convert("RGB")
    box = seen["box"]
    inner = shot.crop(
        (
            int(box["x"]) + 3,
            int(box["y"]) + 3,
            int(box["x"] + box["width"]) - 3,
            int(box["y"] + box["height"]) - 3,
        )
    )
    assert set(inner.getdata()) == {(0, 0, 0)}
    # The page source at that moment does not carry the typed value.
    assert password not in seen["source"]
    # The failure left a screenshot and a trace; nothing in the evidence holds the password.
    files = [p for p in bundle.work_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".zip") for p in files), "the failed attempt's trace was not kept"
    assert any("failure" in p.name for p in files)
    for path in files:
        data = path.read_bytes()
        assert password.encode() not in data, path.name
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    assert password.encode() not in archive.read(name), name
    state = leaky.var_dir / "sessions" / "civil_affairs" / "civil01.json"
    assert password not in state.read_text()
    assert lines, "no log lines were captured"
    assert not [line for line in lines if password in line]


@pytest.mark.slow
def test_recycled_contexts_and_a_restart_reuse_the_saved_login(
    config: Config, loop: LoopThread, servers: Servers
) -> None:
    recycling = config.with_overrides({"browser.recycle_after": 2})
    keys = civil_keys(20)[14:19]
    before = servers.logins("civil_affairs", "civil03")

    async def run(n: int) -> dict[str, Any]:
        async with RobotRuntime(recycling) as rt:
            for key in keys[:n]:
                assert (await rt.lookup("civil_affairs", key, account="civil03")).key == key
            return rt.stats()

    first = loop.run(run(5))
    assert first["recycles"] == 2  # after the 2nd and the 4th request
    assert first["logins"]["civil_affairs/civil03"] == 1
    state = config.var_dir / "sessions" / "civil_affairs" / "civil03.json"
    assert state.stat().st_mode & 0o777 == 0o600
    # A new process (a worker restart) starts from the saved state: no login at all.
    second = loop.run(run(2))
    assert second["logins"]["civil_affairs/civil03"] == 0
    assert servers.logins("civil_affairs", "civil03") == before + 1


def test_a_passed_deadline_fails_at_once(runtime: RobotRuntime, loop: LoopThread) -> None:
    from datetime import timedelta

    from stampless.errors import DepartmentUnavailable
    from stampless.models import utcnow

    with pytest.raises(DepartmentUnavailable, match="deadline"):
        loop.run(
            runtime.lookup(
                "civil_affairs", civil_keys(1)[0], deadline=utcnow() - timedelta(seconds=1)
            )
        )


# ---- legacy helpers on a small local site ----------------------------------------------

# The start of every local site script: a handler base with ``_send``; the script then
# defines ``class Handler(Base)``.
SITE_BASE = r"""
import sys, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler


class Base(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, data, ctype="text/html; charset=utf-8"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
"""

LEGACY_SITE = r"""
PAGES = {
    "/login": "<form id=loginForm><input id=u><input id=p type=password>"
              "<a id=go href='/home'>go</a></form>",
    "/home": "<p id=home>home</p>",
    "/nested": "<iframe id=outer src='/inner'></iframe>",
    "/inner": "<iframe name=deep src='/deep'></iframe>",
    "/deep": "<input id=v value='deep-ok'>",
    "/confirm": "<button id=ask onclick=\"document.getElementById('r').textContent ="
                " confirm('删除这条记录？') ? 'yes' : 'no'\">ask</button><p id=r></p>",
    "/download": "<a id=dl href='/slow-file'>file</a>",
}

class Handler(Base):
    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/list":
            n = int(query.split("=")[1]) if query else 1
            rows = "".join(f"<tr><td class=item>item {n}-{i}</td></tr>" for i in range(3))
            nxt = "<a id=next class=disabled>next</a>"
            if n < 3:
                nxt = f"<a id=next href='/list?page={n + 1}'>next</a>"
            body = f"<span id=pg>{n}</span><table>{rows}</table>{nxt}"
            return self._send(body.encode())
        if path == "/gbk":
            return self._send("<p>结婚证字号</p>".encode("gbk"), "text/html")
        if path == "/slow-file":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", "attachment; filename=slow.bin")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            time.sleep(20)
            return None
        body = PAGES.get(path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return None
        return self._send(("<meta charset=utf-8>" + body).encode())
"""

# The end of every local site script: serve its Handler on a free port, say "ready PORT".
SERVE = """
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print("ready", server.server_address[1], flush=True)
server.serve_forever()
"""

LEGACY_MAP = """
version = "t1"
[frames]
outer = ["iframe#outer"]
deep = { any = ["iframe[name=deep]"], parent = "outer" }
[selectors."login.form"]
any = ["#loginForm"]
[selectors."login.user"]
any = ["#u"]
[selectors."login.pass"]
any = ["#p"]
mask = true
[selectors."login.go"]
any = ["#go"]
[selectors."list.item"]
any = [".item"]
[selectors."list.next"]
any = ["#next"]
[selectors."list.page"]
any = ["#pg"]
[selectors."deep.value"]
frame = "deep"
any = ["#missing", "#v"]
[selectors."confirm.ask"]
any = ["#ask"]
[selectors."confirm.result"]
any = ["#r"]
[selectors."download.link"]
any = ["#dl"]
"""

LEGACY_ROBOT = """
from stampless import Record, Robot

class LegacyRobot(Robot):
    system = "legacy"

    async def login(self, page, creds):
        await page.goto("/login")
        await page["login.user"].fill(creds.username)
        await page["login.pass"].fill_secret(creds.password)
        await page["login.go"].click_and_wait()

    async def lookup(self, page, key):
        fields = {}
        if key == "pages":
            await page.goto("/list")
            items = []
            async for _ in page.paginate("list.next", marker="list.page"):
                items += await page["list.item"].texts()
            fields["items"] = ",".join(items)
        elif key == "frames":
            await page.goto("/nested")
            fields["deep"] = await page["deep.value"].value()
            fields["exists"] = str(await page["deep.value"].exists())
        elif key == "confirm":
            await page.goto("/confirm")
            async with page.expect_dialog(accept=False) as dialog:
                await page["confirm.ask"].click()
            fields["answer"] = await page["confirm.result"].text()
            fields["message"] = dialog.message
        elif key == "gbk":
            fields["text"] = await page.fetch_text("/gbk")
        elif key == "download":
            await page.goto("/download")
            await page.download("download.link")
        return Record(system="legacy", key=key, fields=fields)

ROBOT = LegacyRobot
"""


@contextlib.contextmanager
def local_system(
    root: Path, name: str, *, site: str, selectors: str, robot: str, browser: str, password: str
) -> Iterator[Config]:
    """System ``name``, served by the script ``site`` (a ``Handler(Base)`` class, between
    :data:`SITE_BASE` and :data:`SERVE`), with one account whose password is the reference
    ``password``; the config, while it runs."""
    (root / "server.py").write_text(SITE_BASE + site + SERVE, encoding="utf-8")
    (root / f"{name}.toml").write_text(selectors, encoding="utf-8")
    (root / f"{name}.py").write_text(robot, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, str(root / "server.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "ready"
        (root / "robot.toml").write_text(
            f'[project]\nvar_dir = "{root / "var"}"\n[browser]\n{browser}\n'
            f'[systems.{name}]\nurl = "http://127.0.0.1:{line[1]}"\n'
            f'robot = "{root / (name + ".py")}"\nselectors = "{root / (name + ".toml")}"\n'
            f'[[systems.{name}.accounts]]\nname = "a"\nusername = "a"\npassword = "{password}"\n',
            encoding="utf-8",
        )
        yield load_config(root / "robot.toml")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[Config]:
    with local_system(
        tmp_path_factory.mktemp("legacy"),
        "legacy",
        site=LEGACY_SITE,
        selectors=LEGACY_MAP,
        robot=LEGACY_ROBOT,
        browser="timeout_ms = 3000\ndownload_timeout_ms = 1500",
        password="env:CIVIL01_PASSWORD",
    ) as config:
        yield config


@pytest.mark.slow
def test_legacy_helpers_on_a_local_site(legacy: Config, loop: LoopThread) -> None:
    from stampless.errors import DepartmentUnavailable

    async def run() -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        async with RobotRuntime(legacy) as rt:
            for key in ("pages", "frames", "confirm", "gbk"):
                out[key] = (await rt.lookup("legacy", key)).fields
            started = asyncio.get_running_loop().time()
            with pytest.raises(DepartmentUnavailable, match="did not finish"):
                await rt.lookup("legacy", "download")
            out["download"] = {"seconds": str(asyncio.get_running_loop().time() - started)}
            out["stats"] = {"deep": json.dumps(rt.stats()["selectors"]["legacy"]["deep.value"])}
        return out

    out = loop.run(run())
    assert out["pages"]["items"].split(",") == [
        f"item {n}-{i}" for n in (1, 2, 3) for i in range(3)
    ]
    assert out["frames"]["deep"] == "deep-ok"  # a frame inside a frame, by name
    assert out["frames"]["exists"] == "True"
    assert json.loads(out["stats"]["deep"]).get("choice2") == 1  # the fallback was used
    assert out["confirm"] == {"answer": "no", "message": "删除这条记录？"}  # dismissed
    assert "结婚证字号" in out["gbk"]["text"]  # GBK bytes without a declared charset
    assert float(out["download"]["seconds"]) < 10  # the download timeout is enforced


def _chromium_pids() -> set[int]:
    import psutil

    pids = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "chrom" in proc.name().lower():
                pids.add(proc.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.slow
def test_a_crashed_browser_is_restarted_on_the_next_call(legacy: Config, loop: LoopThread) -> None:
    import contextlib
    import os
    import signal

    from stampless.errors import SystemFailure

    async def run() -> tuple[str, dict[str, Any]]:
        async with RobotRuntime(legacy) as rt:
            before = _chromium_pids()
            await rt.lookup("legacy", "frames")
            for pid in _chromium_pids() - before:  # this runtime's browser only
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                # The call that meets the dead browser may fail (a SystemFailure, which
                # the caller's retry layer tries again) or already find it relaunched.
                record = await rt.lookup("legacy", "frames")
            except SystemFailure as exc:
                assert exc.retryable, exc
                record = await rt.lookup("legacy", "frames")
            return record.fields["deep"], rt.stats()

    deep, stats = loop.run(run())
    assert deep == "deep-ok"
    assert stats["browser_launches"] == 2


def test_circuit_opens_after_repeated_failures(legacy: Config, loop: LoopThread) -> None:
    import socket

    from stampless.errors import DepartmentUnavailable

    with socket.socket() as probe:  # a free port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = legacy.with_overrides(
        {
            "systems.legacy.url": f"http://127.0.0.1:{port}",
            "systems.legacy.circuit_failures": 2,
            "systems.legacy.circuit_reset_s": 60,
        }
    )

    from datetime import timedelta

    from stampless.circuit import CircuitBreaker
    from stampless.models import utcnow

    # The process's one breaker: the runtime obeys it, the retry layer keeps it (here,
    # the test, as stampless.retry does).
    circuits = CircuitBreaker.from_config(down, persist=False)

    async def run() -> list[str]:
        messages = []
        async with RobotRuntime(down, circuits=circuits) as rt:
            for _ in range(3):
                with pytest.raises(DepartmentUnavailable) as info:
                    await rt.lookup("legacy", "frames")
                circuits.record("legacy", info.value, deadline=utcnow() + timedelta(minutes=1))
                messages.append(str(info.value))
        return messages

    messages = loop.run(run())
    assert "could not be reached" in messages[0]
    assert "failed 2 requests in a row" in messages[2]


def test_credentials_resolve_from_the_vault_and_hide_secrets(env: dict[str, str]) -> None:
    import pyotp

    from stampless.config import AccountConfig
    from stampless.robot import Credentials

    account = AccountConfig(
        name="social01",
        username="social01",
        password="env:SOCIAL01_PASSWORD",
        totp="env:SOCIAL01_TOTP",
    )
    creds = Credentials(account)
    assert creds.password.reveal() == env["SOCIAL01_PASSWORD"]
    assert creds.totp() == pyotp.TOTP(env["SOCIAL01_TOTP"]).now()
    shown = repr(creds) + repr(creds.password) + str(creds.password)
    assert env["SOCIAL01_PASSWORD"] not in shown and env["SOCIAL01_TOTP"] not in shown
    no_totp = Credentials(account.model_copy(update={"totp": None}))
    with pytest.raises(ConfigError, match="totp"):
        no_totp.totp()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("system", "doc_type", "selector"),
    [
        ("market_supervision", "business_license", "search.credit_code"),
        ("social_security", "social_security_record", "query.person_id"),
    ],
)
def test_changed_ui_in_frames_falls_back_too(
    system: str,
    doc_type: str,
    selector: str,
    runtime: RobotRuntime,
    loop: LoopThread,
    servers: Servers,
    config: Config,
) -> None:
    from stampless.fixtures.records import KEY_FIELD

    wanted = next(r for r in records(doc_type, 7)[5:] if r["status"] == "valid")
    servers.control(system, ui_variant="changed")
    try:
        record = loop.run(runtime.lookup(system, wanted[KEY_FIELD[doc_type]]))
    finally:
        servers.control(system, ui_variant="normal")
    assert record.fields[KEY_FIELD[doc_type]] == wanted[KEY_FIELD[doc_type]]
    assert (system, selector) in {(r.system, r.selector) for r in drift_summary(config.var_dir)}


def test_drift_log_is_rate_limited_but_counts_every_use(tmp_path: Path) -> None:
    from stampless.robot._selectors import DRIFT_FILE, DriftLog

    log = DriftLog(tmp_path, every_s=3600)
    for _ in range(5):
        log.record("s", "a.b", used=1, choice="#two", failed=["#one"], version="1")
    log.record("s", "c.d", used=None, choice=None, failed=["#x"], version="1")
    assert len((tmp_path / DRIFT_FILE).read_text(encoding="utf-8").splitlines()) == 2
    log.flush()
    rows = {r.selector: r for r in drift_summary(tmp_path)}
    assert rows["a.b"].times == 5 and rows["a.b"].fallback == "#two"
    assert rows["c.d"].times == 1 and rows["c.d"].fallback is None
