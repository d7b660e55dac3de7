"""The manual tier: the review store and the reviewer console in real headless Chromium.

Review items are built the way the pipeline builds them: a generated scan, a real OCR
reading of it, the fixture department's record, a real Chromium screenshot, a field
comparison, all sealed into an evidence bundle; then ``ReviewStore.add``. The console
runs as ``python -m stampless review serve --port 0`` on 127.0.0.1 and is driven by
Playwright.
"""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from deployment_keys import SIGNER, signing_env
from images import loaded_width

from stampless.config import Config, load_config
from stampless.models import Record, Request, Tier, Verdict, VerdictKind, utcnow
from stampless.review.store import ReviewStore
from stampless.review.users import UserStore

ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {
    "alice": "alice-correct-horse",
    "bob": "bob-battery-staple",
    "carol": "carol-admin-secret",
    "dave": "dave-will-lock-out",
}
ROLES = {"alice": "reviewer", "bob": "reviewer", "carol": "admin", "dave": "reviewer"}
MAX_FAILED = 3


def _env(var_dir: Path) -> dict[str, str]:
    env = {**os.environ, **signing_env()}
    env["STAMPLESS__PROJECT__VAR_DIR"] = str(var_dir)
    env["STAMPLESS__REVIEW__MAX_FAILED_LOGINS"] = str(MAX_FAILED)
    # The per-address limits have their own tests (test_hardening.py, row 12); here every
    # browser comes from 127.0.0.1 and must not be slowed down by the others' failures.
    env["STAMPLESS__REVIEW__CLIENT_FREE_FAILURES"] = "1000"
    env["STAMPLESS__REVIEW__CLIENT_MAX_USERNAMES"] = "1000"
    env["OMP_THREAD_LIMIT"] = "1"
    # These tests read the console's English texts; the Chinese default has its own tests.
    env["STAMPLESS__REVIEW__LANGUAGE"] = "en"
    env["STAMPLESS__REVIEW__TIMEZONE"] = "Asia/Shanghai"
    return env


def _config(var_dir: Path) -> Config:
    return load_config(ROOT / "robot.toml", environ=_env(var_dir))


def _cli(var_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stampless", "--config", str(ROOT / "robot.toml"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(var_dir),
        timeout=60,
    )


# -- building real review items --------------------------------------------------------------


@dataclass
class Built:
    request: Request
    verdict: Verdict
    scan: Path


def _build_item(
    config: Config,
    scan_jpg: Path,
    *,
    deadline_in: timedelta,
    page: Any = None,
    ocr: Any = None,
    ocr_steps: Path | None = None,
    request_id: str | None = None,
    found: bool = True,
) -> Built:
    """Seal an evidence bundle for a manual-tier request and queue it for review."""
    from stampless.compare import decide
    from stampless.doctype import load_doctype
    from stampless.evidence import EvidenceBundle
    from stampless.fixtures.records import record_by_key

    req_data = json.loads(scan_jpg.with_suffix(".request.json").read_text(encoding="utf-8"))
    if request_id:
        req_data["id"] = request_id
    request = Request.model_validate(req_data)
    doctype = load_doctype(config, request.type)
    key = str(request.claim[doctype.key_field])
    fields = record_by_key(request.type, key) if found else None
    record = None if fields is None else Record(system="social_security", key=key, fields=fields)
    decision = decide(doctype, request.claim, ocr, record)
    now = utcnow()
    bundle = EvidenceBundle.open(config.evidence_dir, request.id)
    bundle.add_json("request.json", request, kind="request")
    bundle.add_file(scan_jpg, "scan.jpg", kind="scan", caption="the applicant's scan")
    if ocr is not None:
        bundle.add_json("ocr.json", ocr, kind="ocr")
    for step in sorted(ocr_steps.glob("*.png")) if ocr_steps else []:
        bundle.add_file(step, f"preprocessed/{step.name}", kind="preprocessed")
    if record is not None:
        bundle.add_json("record.json", record, kind="record")
    else:  # as the pipeline records a lookup that found nothing
        bundle.add_json("record.json", {"found": False, "system": "social_security"}, kind="record")
    if page is not None and record is not None:
        rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in record.fields.items())
        page.set_content(
            f"<html><body style='font-family:sans-serif'><h2>参保缴费证明 查询结果</h2>"
            f"<table border=1>{rows}</table></body></html>"
        )
        page.screenshot(path=str(bundle.screenshot_path("record page")))
    bundle.add_json(
        "comparison.json", [f.model_dump(mode="json") for f in decision.fields], kind="comparison"
    )
    verdict = Verdict(
        request_id=request.id,
        type=request.type,
        tier=Tier.manual,
        verdict=VerdictKind.needs_review,
        fields=decision.fields,
        reasons=[*decision.reasons, "social-security records are decided by a person"],
        received_at=now - timedelta(minutes=2),
        finished_at=now,
        deadline=now + deadline_in,
        stampless_version="test",
    )
    sealed = bundle.seal(SIGNER, verdict=verdict.model_dump(mode="json"))
    verdict.evidence = str(sealed.path)
    verdict.manifest_sha256 = sealed.manifest_sha256
    ReviewStore.from_config(config).add(
        verdict, request=request, base_dir=scan_jpg.parent, reason="manual tier"
    )
    return Built(request, verdict, scan_jpg)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from stampless.config import BrowserConfig

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=BrowserConfig().args, headless=True
        )
        yield b
        b.close()


@dataclass
class Console:
    url: str
    var_dir: Path
    config: Config
    items: dict[str, Built]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[Console]:
    from stampless.doctype import load_doctype
    from stampless.fixtures.scans import generate
    from stampless.ocr import read_document

    base = tmp_path_factory.mktemp("review")
    var_dir = base / "var"
    config = _config(var_dir)
    # One account through the CLI (password on stdin), the others directly (faster).
    done = _cli(
        var_dir, "review", "add-user", "alice", "--role", "reviewer", stdin="alice-correct-horse"
    )
    assert done.returncode == 0, done.stderr
    assert PASSWORDS["alice"] not in done.stdout + done.stderr
    users = UserStore.from_config(config)
    for name, password in PASSWORDS.items():
        if name != "alice":
            users.add(name, password, ROLES[name])

    scans = generate(base / "scans", "social_security_record", 1, seed=7, difficulty="easy")
    doctype = load_doctype(config, "social_security_record")
    steps = base / "ocr-steps"
    ocr = read_document(scans[0], doctype, config.ocr, steps_dir=steps, workers=1)
    page = browser.new_page()
    items = {
        "main": _build_item(
            config,
            scans[0],
            deadline_in=timedelta(minutes=8),
            page=page,
            ocr=ocr,
            ocr_steps=steps,
        ),
        "race": _build_item(
            config, scans[0], deadline_in=timedelta(minutes=9), request_id="SS-RACE-1"
        ),
        "late": _build_item(
            config, scans[0], deadline_in=timedelta(minutes=-3), request_id="SS-LATE-1"
        ),
        "more": _build_item(
            config,
            scans[0],
            deadline_in=timedelta(minutes=30),
            request_id="SS-MORE-1",
            found=False,
        ),
    }
    page.close()

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stampless",
            "--config",
            str(ROOT / "robot.toml"),
            "review",
            "serve",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(var_dir),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    url = None
    try:
        while url is None:
            line = lines.get(timeout=30)
            if line.startswith("ready "):
                url = line.split()[1].rstrip("/")
        yield Console(url, var_dir, config, items)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _login(browser: Any, console: Console, name: str, password: str | None = None) -> Any:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(console.url + "/login")
    page.fill("#name", name)
    page.fill("#password", password or PASSWORDS[name])
    page.click("#login")
    return page


# -- accounts, no browser (the store's contract: tests/test_review_store.py) -----------------


def test_add_user_never_takes_the_password_from_argv(tmp_path: Path) -> None:
    done = _cli(
        tmp_path / "var",
        "review",
        "add-user",
        "frank",
        "--role",
        "reviewer",
        "--password",
        "in-argv-1234",
    )
    assert done.returncode == 2 and "No such option" in done.stderr
    assert not (tmp_path / "var" / "review" / "users.json").exists()
    done = _cli(
        tmp_path / "var", "review", "add-user", "frank", "--role", "boss", stdin="frank-password\n"
    )
    assert done.returncode == 2 and "reviewer" in done.stderr


# -- the console in Chromium -----------------------------------------------------------------


@pytest.mark.slow
def test_nothing_visible_without_login(browser: Any, console: Console) -> None:
    context = browser.new_context()
    page = context.new_page()
    for path in (
        "/",
        "/admin",
        f"/item/{console.items['main'].request.id}",
        f"/item/{console.items['main'].request.id}/scan",
    ):
        response = page.goto(console.url + path)
        assert response is not None and response.ok
        assert page.url.startswith(console.url + "/login"), path
        assert page.locator("#login").count() == 1
        assert console.items["main"].request.id not in page.content()
    csp = page.request.get(console.url + "/login").headers["content-security-policy"]
    assert "script-src 'self'" in csp
    context.close()


@pytest.mark.slow
def test_wrong_password_then_lockout(browser: Any, console: Console) -> None:
    from stampless.review.users import REFUSED

    # Every refusal reads the same: a wrong password, the one that locks the account, and
    # the right password while it is locked (which still does not get in).
    for password in [*["not-the-password"] * (MAX_FAILED - 1), "still-not-it", None]:
        page = _login(browser, console, "dave", password)
        assert page.locator("#login-error").inner_text() == REFUSED
        assert page.url.startswith(console.url + "/login")
        page.context.close()


@pytest.mark.slow
def test_cookie_flags_and_csrf_token_required(browser: Any, console: Console) -> None:
    page = _login(browser, console, "bob")
    cookie = next(c for c in page.context.cookies() if c["name"] == "stampless_review")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # plain HTTP on loopback; Secure elsewhere by default
    rid = console.items["more"].request.id
    for form in (
        {"action": "verified", "reason": "forged"},
        {"action": "verified", "reason": "forged", "csrf_token": "wrong"},
    ):
        response = page.request.post(f"{console.url}/item/{rid}/decide", form=form)
        assert response.status == 400
        assert "security token" in response.text()
    item = ReviewStore.from_config(console.config).get(rid)
    assert item is not None and item.status == "pending"
    assert not (console.config.outbox_dir / f"{rid}.json").exists()
    page.context.close()


@pytest.mark.slow
def test_logout_ends_the_session_even_for_a_copied_cookie(browser: Any, console: Console) -> None:
    page = _login(browser, console, "bob")
    assert page.url == console.url + "/"
    copied = page.context.cookies()
    page.click("header form button")  # log out
    assert page.url.startswith(console.url + "/login")
    thief = browser.new_context()
    thief.add_cookies(copied)
    stolen = thief.new_page()
    stolen.goto(console.url + "/")
    assert stolen.url.startswith(console.url + "/login")
    thief.close()
    page.context.close()


@pytest.mark.slow
def test_queue_puts_overdue_first_and_marks_it(browser: Any, console: Console) -> None:
    page = _login(browser, console, "alice")
    rows = page.locator("table#queue tr.item")
    ids = [rows.nth(i).get_attribute("data-id") for i in range(rows.count())]
    late = console.items["late"].request.id
    assert ids[0] == late
    assert ids.index(console.items["main"].request.id) < ids.index(console.items["more"].request.id)
    first = rows.nth(0)
    assert "overdue" in (first.get_attribute("class") or "")
    assert "overdue" in first.locator(".countdown").inner_text()
    # The countdown is live: the script rewrites it every second.
    before = rows.nth(1).locator(".countdown").inner_text()
    page.wait_for_timeout(1100)
    assert rows.nth(1).locator(".countdown").inner_text() != before
    if os.environ.get("STAMPLESS_DOCS_IMG"):  # the README's pictures: the default language
        page.goto(page.url.split("?")[0] + "?lang=zh-CN")
        page.screenshot(path=os.path.join(os.environ["STAMPLESS_DOCS_IMG"], "review-queue.png"))
        page.goto(page.url.split("?")[0] + "?lang=en")
    page.context.close()


@pytest.mark.slow
def test_reviewer_decides_and_outbox_audit_and_report_show_it(
    browser: Any, console: Console
) -> None:
    from stampless.audit import entries_for, verify_chain
    from stampless.evidence import verify_bundle
    from stampless.report import render_report

    built = console.items["main"]
    rid = built.request.id
    page = _login(browser, console, "alice")
    page.click(f"a[href='/item/{rid}']")
    assert page.url.endswith(f"/item/{rid}")
    if os.environ.get("STAMPLESS_DOCS_IMG"):
        here = page.url
        page.goto(here + "?lang=zh-CN")
        page.screenshot(path=os.path.join(os.environ["STAMPLESS_DOCS_IMG"], "review-item.png"))
        page.goto(here + "?lang=en")
        page.goto(here)
    # Scan with toggleable OCR boxes, the record, the field table, the screenshot.
    assert loaded_width(page.locator("#scan-image")) > 500
    boxes = page.locator("svg.ocr")
    assert boxes.count() == 1 and boxes.is_visible()
    # The boxes are drawn on the image OCR read, in its pixel coordinates.
    size = page.locator("#scan-image").evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert boxes.get_attribute("viewBox") == f"0 0 {size[0]} {size[1]}"
    assert boxes.locator("rect").count() >= 4
    page.click("label[for=show-boxes]")
    assert not boxes.is_visible()
    page.click("label[for=show-boxes]")
    record = page.locator("#record").inner_text()
    assert built.request.claim["person_name"] in record
    assert page.locator("#fields tbody tr").count() >= 3
    assert loaded_width(page.locator(".shots img")) > 100

    # A reason is required: the browser refuses the empty form, the server too.
    page.click("#btn-verified")
    assert page.url.endswith(f"/item/{rid}")
    page.fill("#reason", "Record, scan and claim agree; checked the payment months.")
    page.click("#btn-verified")
    assert page.url == console.url + "/"
    assert f"{rid}: decided verified" in page.locator(".flash").inner_text()
    assert page.locator(f"tr[data-id='{rid}']").count() == 0

    outbox = json.loads((console.config.outbox_dir / f"{rid}.json").read_text())
    assert outbox["verdict"] == "verified" and outbox["decided_by"] == "alice"
    assert outbox["tier"] == "manual" and outbox["sla_met"] is True
    assert any("checked the payment months" in r for r in outbox["reasons"])
    assert outbox["manifest_sha256"] == built.verdict.manifest_sha256

    reviewed = [e for e in entries_for(console.config.audit_dir, rid) if e["event"] == "reviewed"]
    assert len(reviewed) == 1 and reviewed[0]["actor"] == "alice"
    assert reviewed[0]["data"]["decision"] == "verified"
    assert verify_chain(console.config.audit_dir).ok

    review_bundle = console.config.evidence_dir / f"{rid}.review"
    assert verify_bundle(review_bundle).ok
    decision = json.loads((review_bundle / "decision.json").read_text())
    assert decision["reviewer"] == "alice"
    assert decision["original_manifest_sha256"] == built.verdict.manifest_sha256

    html = render_report(Path(built.verdict.evidence or ""), audit_dir=console.config.audit_dir)
    assert "Reviewer&#39;s decision" in html or "Reviewer's decision" in html
    assert "checked the payment months" in html and "seal intact" in html

    # Opening the decided item shows the decision; it cannot be decided twice.
    page.goto(f"{console.url}/item/{rid}")
    assert "verified" in page.locator("#decided").inner_text()
    page.context.close()


@pytest.mark.slow
def test_two_reviewers_cannot_decide_the_same_item(browser: Any, console: Console) -> None:
    rid = console.items["race"].request.id
    alice = _login(browser, console, "alice")
    bob = _login(browser, console, "bob")
    alice.goto(f"{console.url}/item/{rid}")
    assert alice.locator("#decide").count() == 1
    response = bob.goto(f"{console.url}/item/{rid}")
    assert response is not None and response.status == 409
    assert "alice is reviewing" in bob.locator("#error-message").inner_text()
    # Bob posting anyway (with his own valid token) is refused and nothing is written.
    token = bob.evaluate("() => document.querySelector('input[name=csrf_token]').value")
    bob.request.post(
        f"{console.url}/item/{rid}/decide",
        form={"action": "mismatch", "reason": "bob was here", "csrf_token": token},
    )
    assert not (console.config.outbox_dir / f"{rid}.json").exists()
    alice.fill("#reason", "The employer matches the record.")
    alice.click("#btn-mismatch")
    verdict = json.loads((console.config.outbox_dir / f"{rid}.json").read_text())
    assert verdict["decided_by"] == "alice" and verdict["verdict"] == "mismatch"
    bob.goto(f"{console.url}/item/{rid}")
    assert "alice" in bob.locator("#decided").inner_text()
    alice.context.close()
    bob.context.close()


@pytest.mark.slow
def test_ask_for_more_keeps_item_pending_and_releases_it(browser: Any, console: Console) -> None:
    rid = console.items["more"].request.id
    alice = _login(browser, console, "alice")
    alice.goto(f"{console.url}/item/{rid}")
    alice.fill("#reason", "Need the employer's stamped payroll for 2019.")
    alice.click("#btn-more")
    assert "more information requested" in alice.locator(".flash").inner_text()
    assert alice.locator(f"tr[data-id='{rid}'] .badge").count() == 1
    bob = _login(browser, console, "bob")
    bob.goto(f"{console.url}/item/{rid}")
    assert "stamped payroll" in bob.locator(".note").inner_text()
    assert "has no such record" in bob.locator("#record").inner_text()
    item = ReviewStore.from_config(console.config).get(rid)
    assert item is not None and item.status == "pending" and item.held_by() == "bob"
    assert not (console.config.outbox_dir / f"{rid}.json").exists()
    alice.context.close()
    bob.context.close()


@pytest.mark.slow
def test_admin_page_is_for_admins_and_shows_sla(browser: Any, console: Console) -> None:
    bob = _login(browser, console, "bob")
    response = bob.goto(console.url + "/admin")
    assert response is not None and response.status == 403
    bob.context.close()
    from stampless.circuit import CircuitBreaker
    from stampless.robot._selectors import DriftLog

    DriftLog(console.var_dir).record(
        "civil_affairs",
        "login.submit",
        used=1,
        choice="button#login",
        failed=["#btn-login"],
        version="2",
    )
    breaker = CircuitBreaker.from_config(console.config)
    for _ in range(console.config.systems["social_security"].circuit_failures):
        breaker.failure("social_security")
    carol = _login(browser, console, "carol")
    carol.goto(console.url + "/admin")
    assert carol.locator("#circuits tr.open td").first.inner_text() == "social_security"
    assert carol.locator("#circuits tr.closed").count() == len(console.config.systems) - 1
    drift = carol.locator("#drift tbody tr").first.inner_text()
    assert "login.submit" in drift and "button#login" in drift
    assert carol.locator(".charts svg.chart").count() == 3
    manual = carol.locator("#sla-totals tr[data-tier=manual]")
    decided = [
        json.loads(p.read_text())
        for p in console.config.outbox_dir.glob("*.json")
        if json.loads(p.read_text())["tier"] == "manual"
    ]
    met = sum(1 for v in decided if v["sla_met"])
    assert manual.locator("td.met").inner_text() == str(met)
    carol.context.close()


def test_secure_cookie_default_and_session_key_file(tmp_path: Path) -> None:
    from stampless.review.app import create_app

    config = _config(tmp_path / "var")
    assert create_app(config, host="127.0.0.1").config["SESSION_COOKIE_SECURE"] is False
    assert create_app(config, host="10.1.2.3").config["SESSION_COOKIE_SECURE"] is True
    assert create_app(config, host="0.0.0.0").config["SESSION_COOKIE_SECURE"] is True
    key = tmp_path / "var" / "review" / "session.key"
    assert key.stat().st_mode & 0o777 == 0o600
    # The same key after a restart, so sessions survive it.
    first = create_app(config).config["SECRET_KEY"]
    assert create_app(config).config["SECRET_KEY"] == first
    # The login form needs its CSRF token too; and no open redirect after login.
    UserStore.from_config(config).add("gina", "gina-password-9", "reviewer")
    client = create_app(config).test_client()
    response = client.post("/login", data={"name": "gina", "password": "gina-password-9"})
    assert response.status_code == 400
    client.get("/login")
    with client.session_transaction() as sess:
        token = sess["csrf"]
    response = client.post(
        "/login?next=/\\evil.example",
        data={"name": "gina", "password": "gina-password-9", "csrf_token": token},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/"


@pytest.mark.slow
def test_review_ls_lists_the_queue_overdue_first(console: Console) -> None:
    done = _cli(console.var_dir, "review", "ls", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert rows and rows[0]["request_id"] == console.items["late"].request.id
    assert all(r["type"] == "social_security_record" for r in rows)


# -- the console in Chinese (zh-CN by default), English on request ---------------------------


def test_console_speaks_chinese_by_default_and_english_on_request(tmp_path: Path) -> None:
    from stampless.review.app import create_app

    env = {k: v for k, v in _env(tmp_path / "var").items() if k != "STAMPLESS__REVIEW__LANGUAGE"}
    client = create_app(load_config(ROOT / "robot.toml", environ=env)).test_client()
    page = client.get("/login").get_data(as_text=True)
    assert '<html lang="zh-CN">' in page and "审核人员登录" in page and "Reviewer login" not in page
    english = client.get("/login?lang=en")
    assert "Reviewer login" in english.get_data(as_text=True)
    assert "stampless_lang=en" in english.headers["Set-Cookie"]
    assert "Reviewer login" in client.get("/login").get_data(as_text=True)  # remembered
    assert "审核人员登录" in client.get("/login?lang=zh-CN").get_data(as_text=True)
    assert "审核人员登录" in client.get("/login?lang=klingon").get_data(as_text=True)


def test_every_console_message_has_its_chinese_translation() -> None:
    """What the templates and the console's code mark for translation, and the Chinese
    of it with the same placeholders (a missing one would show in English)."""
    import re

    from babel.messages.extract import extract_from_dir

    from stampless.review.i18n import translations

    catalog = translations("zh-CN")
    found = []
    sources = (
        (ROOT / "stampless" / "templates" / "review", [("**.html", "jinja2")]),
        (ROOT / "stampless" / "review", [("app.py", "python"), ("i18n.py", "python")]),
    )
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
    for folder, method in sources:
        for _file, _line, message, *_ in extract_from_dir(str(folder), method, keywords=keywords):
            found.append(message)
    assert len(found) > 100
    for message in found:
        singular = message[0] if isinstance(message, tuple) else message
        text = (
            catalog.ngettext(message[0], message[1], 2)
            if isinstance(message, tuple)
            else catalog.gettext(message)
        )
        if singular in ("OCR",):
            continue  # the same in both languages
        assert text != (message[1] if isinstance(message, tuple) else message), message
        placeholders = re.compile(r"%\((\w+)\)[sd]")
        assert sorted(placeholders.findall(text)) == sorted(placeholders.findall(singular))


def test_item_page_in_chinese_shows_labels_local_times_whole_ids_and_full_screenshots(
    browser: Any, console: Console
) -> None:
    main = console.items["main"]
    page = browser.new_page()
    built = _build_item(
        console.config,
        main.scan,
        deadline_in=timedelta(minutes=7),
        page=page,
        ocr=None,
        request_id="SS-ZH-1",
    )
    page.close()
    rid = built.request.id
    person_id = built.request.claim["person_id"]
    reviewer = _login(browser, console, "carol")  # dave is locked out by an earlier test
    reviewer.set_viewport_size({"width": 900, "height": 1000})  # narrow: IDs must not wrap
    reviewer.goto(f"{console.url}/item/{rid}?lang=zh-CN")
    fields = reviewer.locator("#fields")
    # The labels printed on the document, the field's name beside it in small print.
    assert "社会保障号码" in fields.inner_text() and "姓名" in fields.inner_text()
    assert reviewer.locator("#btn-verified").inner_text() == "核验通过"
    # Times in robot.toml's zone (Asia/Shanghai here), not UTC.
    assert "CST" in reviewer.locator("p.meta").inner_text()
    assert "UTC" not in reviewer.locator("p.meta").inner_text()
    # The 18-digit ID is on one line wherever it is shown.
    cell = reviewer.locator("#fields td.value", has_text=person_id).first
    lines = cell.evaluate(
        """td => { const r = document.createRange(); r.selectNodeContents(td);
                   const tops = new Set([...r.getClientRects()].map(x => Math.round(x.top)));
                   return tops.size; }"""
    )
    assert lines == 1
    # A screenshot opens in a new tab at its full size.
    link = reviewer.locator(".shots a.full-size").first
    assert link.get_attribute("target") == "_blank"
    full = reviewer.request.get(console.url + str(link.get_attribute("href")))
    assert full.ok and full.headers["content-type"] == "image/webp"
    from PIL import Image

    with Image.open(io.BytesIO(full.body())) as shot:
        thumb = reviewer.locator(".shots img").first.bounding_box()
        assert thumb is not None and shot.width > thumb["width"]
    reviewer.click("#btn-release")
    reviewer.context.close()
