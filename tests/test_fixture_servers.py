"""The emulated department systems, driven as a robot drives them: real Chromium, real HTTP.

Browser tests share one Chromium (module scope) and one server instance of this module's
own (``own_fixture_servers``), so the shared ``fixture_servers`` of other modules is never
disturbed. Cheap protocol checks (CSRF, lockout, faults) use plain HTTP.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, sync_playwright
from ports import env_after, free_port_block

from stampless.checksums import mask_id
from stampless.config import BrowserConfig
from stampless.fixtures.accounts import accounts
from stampless.fixtures.records import SYSTEMS, absent_key, records

CHROMIUM = "/usr/bin/chromium"
MASKED = re.compile(r"^\d{6}\*{8}\d{3}[\dX]$")


# ---- helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=BrowserConfig().args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(accept_downloads=True)
    ctx.set_default_timeout(10_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def servers(own_fixture_servers: Any) -> Iterator[Any]:
    """This module's instance, reset to defaults before each test."""
    own_fixture_servers.control_all(
        ui_variant="normal",
        fault_rate=0.0,
        latency_ms=0,
        idle_timeout_s=900,
        unlock=True,
        postback_delay_ms=0,
        postback_jitter_ms=0,
    )
    yield own_fixture_servers


def _password(system: str, n: int) -> tuple[str, str]:
    acc = accounts(system)[n]
    return acc.username, acc.password


def _totp(n: int) -> str:
    seed = accounts("social_security")[n].totp_seed
    assert seed
    return pyotp.TOTP(seed).now()


def _collect_dialogs(page: Page, accept: bool = True) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []

    def on_dialog(dialog: Dialog) -> None:
        seen.append((dialog.type, dialog.message))
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def _login_civil(page: Page, base: str, n: int = 0) -> None:
    user, password = _password("civil_affairs", n)
    page.goto(base + "/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#btnLogin")
    page.wait_for_url("**/search")


def _login_market(page: Page, base: str, n: int = 0) -> None:
    user, password = _password("market_supervision", n)
    page.goto(base + "/login")
    page.fill("#txtUserName", user)
    page.fill("#txtPassword", password)
    page.click("#btnLogin")
    page.wait_for_url("**/main")


def _login_social(page: Page, base: str, n: int = 0) -> None:
    user, password = _password("social_security", n)
    page.goto(base + "/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.fill("#totp", _totp(n))
    page.click("#btnLogin")
    page.wait_for_url("**/index")


def _http_login(client: httpx.Client, system: str, n: int = 0) -> httpx.Response:
    """Log in with plain HTTP, as the login form would."""
    page = client.get("/login")
    text = page.content.decode("gbk" if system == "civil_affairs" else "utf-8")
    user, password = _password(system, n)
    if system == "market_supervision":
        token = re.search(r'name="__RequestVerificationToken" value="([^"]+)"', text)
        assert token
        data = {
            "__RequestVerificationToken": token.group(1),
            "txtUserName": user,
            "txtPassword": password,
        }
    else:
        token = re.search(r'name="csrf_token" value="([^"]+)"', text)
        assert token
        data = {"csrf_token": token.group(1), "username": user, "password": password}
        if system == "social_security":
            data["totp"] = _totp(n)
    return client.post("/login", data=data)


# ---- civil affairs: GBK, alert, masked list, popup, download ---------------------------


@pytest.mark.slow
def test_civil_affairs_gbk_alert_popup_and_archive(servers: Any, context: BrowserContext) -> None:
    base = servers.url("civil_affairs")
    page = context.new_page()
    response = page.goto(base + "/login")
    assert response is not None
    assert "charset=gbk" in response.headers["content-type"]
    assert page.evaluate("document.characterSet") == "GBK"
    assert page.title() == "婚姻登记信息查询系统 - 登录"
    _login_civil(page, base)

    dialogs = _collect_dialogs(page)
    absent = absent_key("marriage_certificate", 7, 0)
    page.fill("#certNo", absent)
    page.click("#btnSearch")
    page.wait_for_url(f"**/search?cert_no={absent}")
    assert dialogs == [("alert", "未找到该结婚登记记录")]

    record = next(r for r in records("marriage_certificate") if r["status"] == "valid")
    page.fill("#certNo", record["cert_no"])
    page.click("#btnSearch")
    cells = page.locator("table tr").filter(has_text=record["cert_no"]).locator("td")
    texts = cells.all_inner_texts()
    assert texts[1] == record["holder_name"]
    assert MASKED.match(texts[2]) and texts[2] == mask_id(record["holder_id"])
    assert record["holder_id"] not in page.content()
    y, m, d = record["registered_on"].split("-")
    assert texts[3] == f"{y}年{m}月{d}日"
    assert texts[4] == "有效"

    with page.expect_popup() as popup_info:
        page.get_by_role("link", name="查看").click()
    popup = popup_info.value
    popup.wait_for_load_state()
    assert "/detail?cert_no=" in popup.url
    content = popup.content()
    assert record["holder_id"] in content and record["spouse_id"] in content
    assert record["spouse_name"] in content

    with popup.expect_download() as download_info:
        popup.click("#lnkArchive")
    path = download_info.value.path()
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(data)).size[0] > 500

    revoked = next(r for r in records("marriage_certificate") if r["status"] == "revoked")
    page.goto(base + "/search?cert_no=" + revoked["cert_no"])
    assert "已注销" in page.locator("table").last.inner_text()


# ---- market supervision: frames, viewstate postback, paging, PDF -------------------------


@pytest.mark.slow
def test_market_supervision_frames_viewstate_and_paging(
    servers: Any, context: BrowserContext
) -> None:
    base = servers.url("market_supervision")
    page = context.new_page()
    _login_market(page, base)
    assert page.locator("frameset frame").count() == 2
    content = page.frame(name="content")
    assert content is not None and page.frame(name="menu") is not None
    content.wait_for_selector("#txtCompanyName")

    fragment = "科技"
    expected = [
        r["credit_code"] for r in records("business_license") if fragment in r["company_name"]
    ]
    assert len(expected) > 20
    viewstate_before = content.input_value("#__VIEWSTATE")
    content.fill("#txtCompanyName", fragment)
    content.click("#btnSearch")
    content.wait_for_selector(f"text=共 {len(expected)} 条记录")
    assert content.input_value("#__VIEWSTATE") != viewstate_before

    def codes_on_page() -> list[str]:
        rows = content.locator("table tr").filter(has=content.locator("a", has_text="详细"))
        return [row.locator("td").nth(1).inner_text() for row in rows.all()]

    assert codes_on_page() == expected[:10]
    pager = content.locator("a[href=\"javascript:__doPostBack('gvResults','Page$2')\"]")
    pager.click()
    content.wait_for_selector(f"text=第 2/{-(-len(expected) // 10)} 页")
    assert codes_on_page() == expected[10:20]

    pages = -(-len(expected) // 10)
    content.click("text=下一页")
    content.wait_for_selector(f"text=第 3/{pages} 页")
    assert codes_on_page() == expected[20:30]
    assert content.locator("a", has_text="上一页").get_attribute("href") is not None

    # A held post-back: the delay before the response, the jitter around half the page.
    servers.control("market_supervision", postback_delay_ms=300, postback_jitter_ms=400)
    form = {name: content.input_value(f"#{name}") for name in ("__VIEWSTATE", "__EVENTVALIDATION")}
    started = time.monotonic()
    held = context.request.post(
        base + "/Search.aspx",
        form={**form, "__EVENTTARGET": "gvResults", "__EVENTARGUMENT": "Page$Prev"},
    )
    assert time.monotonic() - started >= 0.3
    assert held.status == 200 and f"第 2/{pages} 页" in held.text()
    servers.control("market_supervision", postback_delay_ms=0, postback_jitter_ms=0)

    content.get_by_role("link", name="详细").first.click()
    content.wait_for_selector("#hlArchive")
    detail = content.locator("body").inner_text()
    first = next(r for r in records("business_license") if r["credit_code"] == expected[20])
    assert first["company_name"] in detail
    assert f"{first['registered_capital']}万元" in detail
    with page.expect_download() as download_info:
        content.click("#hlArchive")
    assert download_info.value.path().read_bytes().startswith(b"%PDF")

    # The server checks the view state: none, or one it never issued, is an error page.
    missing = context.request.post(base + "/Search.aspx", form={"txtCompanyName": "科技"})
    assert missing.status == 400 and "页面状态已失效" in missing.text()
    forged = context.request.post(
        base + "/Search.aspx",
        form={"__VIEWSTATE": "/wEPDwUKMTIzNDU2Nzg5", "__EVENTVALIDATION": "x"},
    )
    assert forged.status == 400


# ---- social security: TOTP, iframes, confirm, archive ------------------------------------


@pytest.mark.slow
def test_social_security_totp_iframes_and_confirm(servers: Any, context: BrowserContext) -> None:
    base = servers.url("social_security")
    page = context.new_page()
    user, password = _password("social_security", 0)
    page.goto(base + "/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.fill("#totp", "000000" if _totp(0) != "000000" else "111111")
    page.click("#btnLogin")
    assert "动态口令错误" in page.locator("#errorMsg").inner_text()

    _login_social(page, base)
    main = page.frame(name="main")
    assert main is not None and page.frame(name="menu") is not None
    main.wait_for_selector("#personId")
    record = next(r for r in records("social_security_record") if r["status"] == "valid")

    dialogs: list[tuple[str, str]] = []
    answer = {"accept": False}

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append((dialog.type, dialog.message))
        dialog.accept() if answer["accept"] else dialog.dismiss()

    page.on("dialog", on_dialog)
    absent = absent_key("social_security_record", 7, 3)
    main.fill("#personId", absent)
    main.click("#btnQuery")
    main.wait_for_url(f"**/query?person_id={absent}")
    main.fill("#personId", record["person_id"])
    main.click("#btnQuery")
    main.wait_for_selector("text=查看详情")
    results = main.locator("table").last.inner_text()
    assert mask_id(record["person_id"]) in results and record["person_id"] not in results

    main.get_by_role("link", name="查看详情").click()  # dismissed: stays on the list
    main.wait_for_timeout(200)
    assert "/query" in main.url
    answer["accept"] = True
    main.get_by_role("link", name="查看详情").click()
    main.wait_for_selector("#lnkArchive")
    assert dialogs == [
        ("alert", "未查询到该人员的参保缴费记录"),
        ("confirm", "该记录为涉密信息，是否继续查看？"),
        ("confirm", "该记录为涉密信息，是否继续查看？"),
    ]
    detail = main.locator("body").inner_text()
    assert record["person_id"] in detail and record["employer"] in detail
    assert f"累计缴费月数\t{record['months_paid']}" in detail
    with page.expect_download() as download_info:
        main.click("#lnkArchive")
    assert download_info.value.path().read_bytes().startswith(b"\x89PNG")

    unconfirmed = context.request.get(f"{base}/detail?person_id={record['person_id']}")
    assert unconfirmed.status == 403 and record["employer"] not in unconfirmed.text()


# ---- sessions: one per account, idle expiry, expiry on demand ----------------------------


@pytest.mark.slow
def test_second_login_kicks_the_first_session(servers: Any, browser: Browser) -> None:
    base = servers.url("civil_affairs")
    first, second = browser.new_context(), browser.new_context()
    try:
        page_a, page_b = first.new_page(), second.new_page()
        _login_civil(page_a, base, 1)
        _login_civil(page_b, base, 1)
        page_a.goto(base + "/search")
        assert "reason=kicked" in page_a.url
        assert "其他地方登录" in page_a.content()
        page_b.goto(base + "/search")
        assert page_b.url.endswith("/search")

        servers.control("civil_affairs", expire_sessions=["civil02"])
        page_b.goto(base + "/search")
        assert "reason=expired" in page_b.url and "登录已超时" in page_b.content()
    finally:
        first.close()
        second.close()
    log = [e for e in servers.access_log("civil_affairs") if e["account"] == "civil02"]
    assert [e["outcome"] for e in log if e["outcome"] in ("kicked", "expired")] == [
        "kicked",
        "expired",
    ]


def test_idle_sessions_expire(fixture_servers_factory: Any) -> None:
    servers = fixture_servers_factory(idle_timeout_s=0.6)
    with httpx.Client(base_url=servers.url("social_security")) as client:
        assert _http_login(client, "social_security").headers["location"] == "/index"
        assert client.get("/query").status_code == 200
        time.sleep(0.9)
        expired = client.get("/query")
        assert expired.status_code == 302
        assert expired.headers["location"] == "/login?reason=expired"
        # The expired session stays dead; anything else needs a new login.
        assert client.get("/query").headers["location"] == "/login"


@pytest.mark.slow  # reads the traffic of the slow browser tests above: runs with them
def test_no_account_is_used_by_two_sessions_at_once(own_fixture_servers: Any) -> None:
    """Over everything this module did, an account's live sessions never overlapped."""
    for system in SYSTEMS:
        entries = [e for e in own_fixture_servers.access_log(system) if e["outcome"] == "ok"]
        spans: dict[str, dict[str, list[float]]] = defaultdict(dict)
        for e in entries:
            span = spans[e["account"]].setdefault(e["session"], [e["start"], e["end"]])
            span[0], span[1] = min(span[0], e["start"]), max(span[1], e["end"])
        for sessions in spans.values():
            ordered = sorted(sessions.values())
            for (_, end), (start, _) in itertools.pairwise(ordered):
                assert end <= start
    # Resident ID numbers in query strings are masked in the log.
    social_paths = [e["path"] for e in own_fixture_servers.access_log("social_security")]
    assert any("person_id=" in p and "********" in p for p in social_paths)
    assert not any(re.search(r"person_id=\d{17}", p) for p in social_paths)
    file_lines = own_fixture_servers.access_log_path("civil_affairs").read_text().splitlines()
    assert [json.loads(x) for x in file_lines] == own_fixture_servers.access_log("civil_affairs")


# ---- login guards ------------------------------------------------------------------------


def test_login_without_csrf_token_is_rejected(servers: Any) -> None:
    user, password = _password("market_supervision", 2)
    with httpx.Client(base_url=servers.url("market_supervision")) as client:
        bare = client.post("/login", data={"txtUserName": user, "txtPassword": password})
        assert bare.status_code == 403 and "set-cookie" not in bare.headers
        assert "安全令牌无效" in bare.text
        ok = _http_login(client, "market_supervision", 2)
        assert ok.status_code == 302 and "ASP.NET_SessionId" in ok.headers["set-cookie"]


def test_account_locks_after_five_bad_passwords(servers: Any) -> None:
    url = servers.url("civil_affairs")
    user, password = _password("civil_affairs", 2)

    def attempt(client: httpx.Client, pw: str) -> httpx.Response:
        text = client.get("/login").content.decode("gbk")
        token = re.search(r'name="csrf_token" value="([^"]+)"', text)
        assert token
        data = {"csrf_token": token.group(1), "username": user, "password": pw}
        return client.post("/login", data=data)

    with httpx.Client(base_url=url) as client:
        for _ in range(4):
            assert "用户名或密码错误" in attempt(client, "wrong").content.decode("gbk")
        assert "已被锁定" in attempt(client, "wrong").content.decode("gbk")
        assert "已被锁定" in attempt(client, password).content.decode("gbk")
        assert servers.state("civil_affairs")["locked"] == [user]
        servers.control("civil_affairs", unlock=True)
        assert attempt(client, password).status_code == 302


# ---- the changed UI variant ----------------------------------------------------------------


@pytest.mark.slow
def test_changed_ui_breaks_ids_but_not_labels(servers: Any, context: BrowserContext) -> None:
    servers.control_all(ui_variant="changed")
    civil = context.new_page()
    _login_civil(civil, servers.url("civil_affairs"))
    assert civil.locator("#certNo").count() == 0 and civil.locator("#btnSearch").count() == 0
    dialogs = _collect_dialogs(civil)
    record = records("marriage_certificate")[42]
    civil.get_by_label("结婚证字号").fill(record["cert_no"])
    civil.get_by_role("button", name="查询").click()
    civil.wait_for_selector(f"text={mask_id(record['holder_id'])}")
    assert dialogs == []

    market = context.new_page()
    _login_market(market, servers.url("market_supervision"))
    content = market.frame(name="content")
    assert content is not None
    content.wait_for_selector("#txtTyxydm")
    assert content.locator("#txtCreditCode").count() == 0
    licence = records("business_license")[7]
    content.get_by_label("统一社会信用代码").fill(licence["credit_code"])
    content.get_by_role("button", name="查询").click()
    content.wait_for_selector("text=共 1 条记录")

    social = context.new_page()
    _login_social(social, servers.url("social_security"))
    main = social.frame(name="main")
    assert main is not None
    main.wait_for_selector("#txtAac002")
    assert main.locator("#personId").count() == 0


# ---- faults, latency, shutdown -------------------------------------------------------------


def _statuses(url: str, n: int) -> list[int]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return [client.get("/login").status_code for _ in range(n)]


@pytest.mark.slow
def test_fault_rate_is_seeded_and_logged(fixture_servers_factory: Any) -> None:
    first = fixture_servers_factory(seed=11, fault_rate=0.25, fault_kinds="500,502")
    second = fixture_servers_factory(seed=11, fault_rate=0.25, fault_kinds="500,502")
    a = _statuses(first.url("market_supervision"), 300)
    b = _statuses(second.url("market_supervision"), 300)
    assert a == b  # same seed, same sequence of faults
    failed = [s for s in a if s != 200]
    assert set(failed) == {500, 502}
    assert 0.15 <= len(failed) / len(a) <= 0.35
    logged = [e["status"] for e in first.access_log("market_supervision")]
    assert logged == a
    # The control endpoint itself is never faulted, and changes the rate at once.
    first.control("market_supervision", fault_rate=0.0)
    assert set(_statuses(first.url("market_supervision"), 20)) == {200}


def test_latency_and_hang_faults(servers: Any) -> None:
    url = servers.url("social_security")
    servers.control("social_security", latency_ms=150)
    started = time.perf_counter()
    assert _statuses(url, 2) == [200, 200]
    assert time.perf_counter() - started >= 0.3
    servers.control(
        "social_security", latency_ms=0, fault_rate=1.0, fault_kinds=["hang"], hang_s=0.4
    )
    started = time.perf_counter()
    assert _statuses(url, 1) == [504]
    assert time.perf_counter() - started >= 0.4
    servers.control("social_security", hang_s=30)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url + "/login", timeout=0.3)
    servers.control("social_security", fault_rate=0.0, hang_s=30)
    started = time.perf_counter()
    assert set(_statuses(url, 100)) == {200}
    assert (time.perf_counter() - started) / 100 < 0.05  # ~1-2 ms alone; CI runs in parallel


def test_serve_binds_consecutive_ports_and_stops_cleanly_while_a_request_hangs(
    tmp_path: Any,
) -> None:
    base = free_port_block(3)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stampless",
            "fixtures",
            "serve",
            "--base-port",
            str(base),
            "--fault-rate",
            "1",
            "--fault-kinds",
            "hang",
            "--hang-s",
            "60",
            "--access-log",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        urls_line = proc.stdout.readline().split()
        assert proc.stdout.readline().strip() == "ready"
        assert urls_line == [
            f"{system}=http://127.0.0.1:{base + i}" for i, system in enumerate(SYSTEMS)
        ]
        hung: dict[str, object] = {}

        def request() -> None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{base}/login", timeout=30).read()
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                hung["error"] = exc
            else:
                hung["done"] = True

        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(0.5)
        started = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert time.perf_counter() - started < 5
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", base)) != 0  # the socket is closed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_fixtures_env_sets_every_secret_robot_toml_names(tmp_path: Path) -> None:
    """`eval "$(stampless fixtures env)"` in a clean shell resolves each account's secrets
    in the repository's robot.toml, and with another base port points its URLs there."""
    from stampless.config import load_config
    from stampless.vault import resolve_secret

    repo = Path(__file__).resolve().parents[1]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STAMPLESS")}
    clean = {k: v for k, v in clean.items() if not k.endswith(("_PASSWORD", "_TOTP"))}
    stampless = f"{sys.executable} -m stampless"
    env = env_after(f'eval "$({stampless} fixtures env --base-port 9100)"', repo, clean)
    config = load_config(repo / "robot.toml", environ=env)
    for n, (name, system) in enumerate(config.systems.items()):
        assert system.url == f"http://127.0.0.1:{9100 + SYSTEMS.index(name)}", (n, name)
        for account in system.accounts:
            password = resolve_secret(account.password, environ=env).reveal()
            assert password == accounts(name)[int(account.username[-2:]) - 1].password
            if account.totp:
                assert resolve_secret(account.totp, environ=env).reveal()
    # On the default ports robot.toml's URLs already hold: no URL is overridden.
    default = env_after(f'eval "$({stampless} fixtures env)"', repo, clean)
    assert not [k for k in default if k.startswith("STAMPLESS__")]
    # Outside a project (no robot.toml): every fixture account, under its own name.
    (tmp_path / "empty").mkdir()
    bare = env_after(f'eval "$({stampless} fixtures env)"', tmp_path / "empty", clean)
    assert (
        bare["SOCIAL02_TOTP"]
        and bare["MARKET03_PASSWORD"] == accounts("market_supervision")[2].password
    )


def test_serve_prints_the_environment_once_ready(tmp_path: Path) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stampless",
            "fixtures",
            "serve",
            "--base-port",
            "0",
            "--access-log",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline().strip() for _ in range(3)]
            assert lines[1] == "ready" and lines[2].startswith("# ")
            urls = dict(part.split("=", 1) for part in lines[0].split())
            printed: dict[str, str] = {}
            while len(printed) < 40 and "CIVIL01_PASSWORD" not in printed:
                name, _, value = proc.stdout.readline().strip().partition("=")
                printed[name] = value
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
    # Free ports are not robot.toml's: each system's URL comes with its passwords.
    assert printed["STAMPLESS__SYSTEMS__CIVIL_AFFAIRS__URL"] == urls["civil_affairs"]
    assert printed["CIVIL01_PASSWORD"] == "'" + accounts("civil_affairs")[0].password + "'"


def test_a_busy_port_is_a_clear_input_error_not_a_hang() -> None:
    from stampless.errors import InputError
    from stampless.fixtures.serve import start
    from stampless.fixtures.servers import ServerOptions

    with start("127.0.0.1", 0, ServerOptions()) as running:
        busy = int(running.urls["market_supervision"].rsplit(":", 1)[1])
        started = time.perf_counter()
        with pytest.raises(InputError, match=r"Cannot listen on 127\.0\.0\.1:"):
            start("127.0.0.1", busy - 1, ServerOptions())
        assert time.perf_counter() - started < 5
        assert httpx.get(running.urls["market_supervision"] + "/login").status_code == 200
