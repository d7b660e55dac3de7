"""Issue 17, the robot authors' kit, on a system stampless has never seen.

Everything here runs against the helpdesk tracker of examples/issue_tracker (a real
Flask server on a free port) with real Chromium: browser settings per system, robot
bugs reported and not retried, login failures that leave evidence, strict elements with
Playwright's method names, inline attachments, checked record fields.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tracker_project import PASSWORD, copy_project, project_env, tracker_server, write_request

from stampless.config import Config, load_config
from stampless.errors import AmbiguousSelector, ConfigError, RobotBug
from stampless.robot import RobotRuntime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracker() -> Iterator[str]:
    with tracker_server() as server:
        yield server.urls["tracker"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


def _config(project: Path, url: str, **system: Any) -> Config:
    overrides: dict[str, Any] = {
        "systems.tracker.url": url,
        "project.var_dir": str(project / "var"),
    }
    overrides.update({f"systems.tracker.{k}": v for k, v in system.items()})
    return load_config(project / "robot.toml").with_overrides(overrides)


def _stampless(project: Path, url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stampless", "--config", str(project / "robot.toml"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=project_env(url, project / "var", **env),
        cwd=project,
    )


def _manifest(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    return data


def _bundle(project: Path, prefix: str) -> Path:
    (found,) = sorted((project / "var" / "evidence").glob(prefix + "*"))
    return found


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKER_PASSWORD", PASSWORD)


# ---- browser settings per system ------------------------------------------------------


def _what_the_page_says(config: Config, path: str) -> tuple[str, str, str]:
    async def run() -> tuple[str, str, str]:
        async with RobotRuntime(config) as rt, rt.page("tracker") as page:
            await page.goto(path)
            language = await page.raw.evaluate("navigator.language")
            zone = await page.raw.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
            return language, zone, await page.raw.inner_text("body")

    return asyncio.run(run())


def test_locale_and_timezone_are_set_per_system(project: Path, tracker: str) -> None:
    # The example sets en-GB and UTC: the tracker answers in English, times in UTC.
    language, zone, text = _what_the_page_says(_config(project, tracker), "/issues/TRK-1003")
    assert (language, zone) == ("en-GB", "UTC")
    assert "Reporter" in text and "2024-05-20 23:40" in text
    # The defaults, written out in robot.toml, are those of a Chinese department system:
    # the same page in Chinese, the same moment on the next day in Shanghai.
    chinese = _config(project, tracker, locale="zh-CN", timezone="Asia/Shanghai")
    language, zone, text = _what_the_page_says(chinese, "/issues/TRK-1003")
    assert (language, zone) == ("zh-CN", "Asia/Shanghai")
    assert "报告人" in text and "2024-05-21 07:40" in text


def test_user_agent_headers_and_http_credentials(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKER_HTTP_PASSWORD", "basic-secret-77")
    monkeypatch.setenv("TRACKER_API_TOKEN", "token-0123456789")
    with tracker_server("--basic-auth", "gate:basic-secret-77") as guarded:
        url = guarded.urls["tracker"]
        # Without the credentials the whole site answers 401: the error says what to set.
        with pytest.raises(ConfigError, match=r"asks for HTTP authentication.*http_credentials"):
            _what_the_page_says(_config(project, url), "/echo")
        config = _config(
            project,
            url,
            user_agent="stampless-test/1.0",
            extra_http_headers={
                "X-Team": "helpdesk",
                "Authorization-Token": "env:TRACKER_API_TOKEN",
            },
            http_credentials={"username": "gate", "password": "env:TRACKER_HTTP_PASSWORD"},
            viewport={"width": 800, "height": 600},
        )
        _language, _zone, text = _what_the_page_says(config, "/echo")
    headers = json.loads(text)
    assert headers["User-Agent"] == "stampless-test/1.0"
    assert headers["X-Team"] == "helpdesk"
    assert headers["Authorization-Token"] == "token-0123456789"
    assert headers["Accept-Language"].startswith("en-GB")
    assert headers["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("timezone", "Mars/Olympus", "'systems.tracker.timezone': .*not an IANA time zone"),
        ("locale", "english", "'systems.tracker.locale': .*not a language tag"),
        ("http_credentials", {"username": "u", "password": "plain"}, "reference to a secret"),
    ],
)
def test_browser_settings_are_validated(
    project: Path, key: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(project, "http://127.0.0.1:1", **{key: value})


# ---- errors that teach ------------------------------------------------------------------


def _break_robot(project: Path, old: str, new: str) -> int:
    """Replace ``old`` by ``new`` in the robot; returns the line number of the change."""
    robot = project / "robots" / "tracker.py"
    source = robot.read_text(encoding="utf-8")
    assert old in source
    robot.write_text(source.replace(old, new, 1), encoding="utf-8")
    return source[: source.index(old)].count("\n") + 1


def test_a_bug_in_the_robot_is_named_and_not_retried(project: Path, tracker: str) -> None:
    # The bug the user met: a placeholder given under a name the selector lacks.
    line = _break_robot(
        project,
        'await page.element("detail.value", label=label).inner_text()',
        'await page.element("detail.value", name=label).inner_text()',
    )
    result = _stampless(project, tracker, "lookup", "--type", "service_report", "TRK-1001", "--dev")
    assert result.returncode == 4, result.stderr
    message = result.stderr
    assert "The tracker robot has a bug: TypeError: Selector 'detail.value'" in message
    assert "has no placeholder {name}; its placeholders are {label}" in message
    assert f"robots/tracker.py, line {line}, in value" in message
    assert "Traceback" not in message
    # One attempt, not three: one failure screenshot, and the bug in the evidence meta.
    manifest = _manifest(_bundle(project, "LOOKUP-"))
    failures = [
        f for f in manifest["files"] if f["kind"] == "screenshot" and "failure" in f["caption"]
    ]
    assert len(failures) == 1
    assert manifest["meta"]["robot_bug"]["line"] == line
    assert manifest["meta"]["robot_bug"]["error"] == "TypeError"


def test_a_placeholder_may_be_called_name(project: Path, tracker: str) -> None:
    selectors = project / "selectors" / "tracker.toml"
    selectors.write_text(
        selectors.read_text(encoding="utf-8").replace("{label}", "{name}"), encoding="utf-8"
    )
    _break_robot(
        project, 'element("detail.value", label=label)', 'element("detail.value", name=label)'
    )
    result = _stampless(project, tracker, "lookup", "--type", "service_report", "TRK-1001", "--dev")
    assert result.returncode == 0, result.stderr
    assert "Alice Martin" in result.stdout


def test_a_misspelt_record_field_names_the_field_and_the_types_fields(
    project: Path, tracker: str
) -> None:
    _break_robot(project, '"reporter": await value', '"reportr": await value')
    result = _stampless(project, tracker, "lookup", "--type", "service_report", "TRK-1001", "--dev")
    assert result.returncode == 4, result.stderr
    assert (
        "The tracker robot returned field 'reportr', which document type 'service_report' "
        "does not have; its fields are ticket, reporter, opened_on."
    ) in result.stderr


def test_a_refused_login_leaves_a_screenshot_and_a_trace_without_the_password(
    project: Path, tracker: str
) -> None:
    wrong = "Wrong-Passw0rd&Co!"
    result = _stampless(
        project,
        tracker,
        "lookup",
        "--type",
        "service_report",
        "TRK-1001",
        "--dev",
        TRACKER_PASSWORD=wrong,
    )
    assert result.returncode == 4, result.stderr
    assert "refused the login of 'agent' (Invalid username or password.)" in result.stderr
    bundle = _bundle(project, "LOOKUP-")
    manifest = _manifest(bundle)
    shots = [f["caption"] for f in manifest["files"] if f["kind"] == "screenshot"]
    assert any(c.startswith("failure: login failed - LoginRejected") for c in shots), shots
    (trace,) = [f["name"] for f in manifest["files"] if f["kind"] == "trace"]
    with zipfile.ZipFile(bundle / trace) as archive:
        contents = b"".join(archive.read(name) for name in archive.namelist())
    # The login is in the trace (the username typed, the POST to /login) ...
    assert b'"agent"' in contents and b"/login" in contents
    # ... and the password in no form at all.
    for form in (wrong, "Wrong-Passw0rd%26Co%21", "Wrong-Passw0rd%26Co!"):
        assert form.encode() not in contents


# ---- a Playwright-shaped element API ------------------------------------------------------


def _with_page(config: Config, steps: Any) -> Any:
    async def run() -> Any:
        async with RobotRuntime(config) as rt, rt.page("tracker") as page:
            return await steps(page)

    return asyncio.run(run())


def test_elements_are_strict_and_say_which_match_explicitly(project: Path, tracker: str) -> None:
    selectors = project / "selectors" / "tracker.toml"
    selectors.write_text(
        selectors.read_text(encoding="utf-8")
        + '\n[selectors."search.any_open"]\nany = ["role=link[name=\'Open\']"]\n',
        encoding="utf-8",
    )

    async def steps(page: Any) -> dict[str, Any]:
        await page.goto("/issues?q=TRK-100")
        opened = page["search.any_open"]
        seen: dict[str, Any] = {"count": await opened.count()}
        with pytest.raises(AmbiguousSelector) as ambiguous:
            await opened.get_attribute("href")
        seen["error"] = str(ambiguous.value)
        seen["first"] = await opened.first.get_attribute("href")
        seen["second"] = await opened.nth(1).get_attribute("href")
        seen["last"] = await opened.last.get_attribute("href")
        seen["texts"] = await page["search.any_open"].all_inner_texts()
        with pytest.raises(AmbiguousSelector):
            await opened.click()
        await page["search.ticket"].fill("TRK-1002")
        seen["value"] = await page["search.ticket"].input_value()
        with pytest.warns(DeprecationWarning, match=r"Element.value\(\) is deprecated"):
            seen["old_value"] = await page["search.ticket"].value()
        return seen

    seen = _with_page(_config(project, tracker), steps)
    assert seen["count"] == 5
    assert "Selector 'search.any_open' of tracker matched 5 elements" in seen["error"]
    assert ".first, .last or .nth(i)" in seen["error"]
    assert (seen["first"], seen["second"], seen["last"]) == (
        "/issues/TRK-1001",
        "/issues/TRK-1002",
        "/issues/TRK-1005",
    )
    assert seen["texts"] == ["Open"] * 5
    assert seen["value"] == seen["old_value"] == "TRK-1002"


def test_an_ambiguous_selector_is_not_retried(project: Path, tracker: str) -> None:
    selectors = project / "selectors" / "tracker.toml"
    text = selectors.read_text(encoding="utf-8")
    # The map's choice for the hit's link now matches every "Open" link of a wide search.
    selectors.write_text(
        text.replace(
            "any = [\"xpath=//table[@class='results']//tr[td[1][normalize-space(.)='{ticket}']]"
            "//a[normalize-space(.)='Open']\"]",
            "any = [\"xpath=//table[@class='results']//tr[contains(., '{ticket}')]//a\"]",
        ),
        encoding="utf-8",
    )
    _break_robot(
        project,
        'await page["search.ticket"].fill(key)',
        'await page["search.ticket"].fill(key[:-1])',
    )
    result = _stampless(project, tracker, "lookup", "--type", "service_report", "TRK-1001", "--dev")
    assert result.returncode == 4, result.stderr
    assert "Selector 'search.open' of tracker matched 2 elements" in result.stderr
    manifest = _manifest(_bundle(project, "LOOKUP-"))
    failures = [f for f in manifest["files"] if "failure" in (f["caption"] or "")]
    assert len(failures) == 1


def test_an_inline_attachment_is_saved_into_the_evidence(project: Path, tracker: str) -> None:
    result = _stampless(project, tracker, "fetch", "--type", "service_report", "TRK-1001", "--dev")
    assert result.returncode == 0, result.stderr
    bundle = _bundle(project, "FETCH-")
    manifest = _manifest(bundle)
    (saved,) = [f for f in manifest["files"] if f["kind"] == "download"]
    assert saved["name"] == "TRK-1001-report.png"
    # What the tracker serves to a logged-in browser: inline, so no download event.
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    opener.open(tracker + "/login", data=f"user=agent&pass={PASSWORD}".encode())
    with opener.open(tracker + "/issues/TRK-1001/report.png") as response:
        assert response.headers["Content-Disposition"].startswith("inline")
        served = response.read()
    assert served.startswith(b"\x89PNG")
    assert (bundle / saved["name"]).read_bytes() == served
    assert manifest["meta"]["download_sha256"] == saved["sha256"]


def test_a_robot_bug_in_a_unit_of_its_own(tmp_path: Path) -> None:
    """robot_bug() names the robot's frame even when the error is raised in stampless."""
    from stampless.robot._runtime import robot_bug

    robot = tmp_path / "robots" / "x.py"
    robot.parent.mkdir()
    robot.write_text("def step(d):\n    return d['missing']\n", encoding="utf-8")
    namespace: dict[str, Any] = {}
    exec(compile(robot.read_text(), str(robot), "exec"), namespace)
    try:
        namespace["step"]({})
    except KeyError as exc:
        bug = robot_bug(exc, "x", robot, tmp_path)
    assert isinstance(bug, RobotBug)
    assert "KeyError: 'missing' (robots/x.py, line 2, in step)" in str(bug)
    assert not bug.retryable


# ---- the evidence of a run is its own; re-checking a finished id ---------------------------


@pytest.mark.long
@pytest.mark.timeout(900)
def test_each_verify_run_has_its_own_evidence_and_a_recheck_supersedes(
    project: Path, tracker: str
) -> None:
    request = write_request(
        project / "requests", "SR-1", "TRK-1001", reporter="Alice Martin", opened_on="2024-03-05"
    )
    evidence = project / "var" / "evidence"
    # Run 1: a bug in the robot. Run 2: the tracker is down ([queue] max_attempts, 5, each
    # one lookup: the one retry layer; the runtime made 3 of its own before).
    line = _break_robot(project, "fields = {", "fields = {**None, ")
    first = _stampless(project, tracker, "verify", str(request), "--dev")
    assert first.returncode == 4, first.stderr
    assert (
        f"has a bug: TypeError: 'NoneType' object is not a mapping (robots/tracker.py, line {line}"
        in first.stderr
    )
    assert (
        f"the failure's screenshots and trace are in {evidence / '.SR-1.partial'}" in first.stderr
    )
    _break_robot(project, "fields = {**None, ", "fields = {")
    down = _stampless(
        project,
        "http://127.0.0.1:9",
        "verify",
        str(request),
        "--dev",
        STAMPLESS__QUEUE__BACKOFF_BASE_S="0.05",
    )
    assert down.returncode == 4, down.stderr
    # Run 3 works: its bundle holds its own files only, and says how many attempts it took.
    third = _stampless(project, tracker, "verify", str(request), "--dev")
    assert third.returncode == 0, third.stdout + third.stderr
    manifest = _manifest(evidence / "SR-1")
    kinds = [f["kind"] for f in manifest["files"]]
    captions = [f["caption"] or "" for f in manifest["files"]]
    assert "trace" not in kinds
    assert not [c for c in captions if c.startswith("failure")]
    assert manifest["meta"]["attempts"] == 1
    assert manifest["meta"]["lookup_attempts"] == 1
    abandoned = sorted((evidence / ".abandoned").iterdir())
    assert [a.name.split(".")[0] for a in abandoned] == ["SR-1", "SR-1"]
    earlier = json.loads((abandoned[1] / ".bundle-state.json").read_text(encoding="utf-8"))
    assert earlier["meta"]["lookup_attempts"] == 5  # the run against the stopped tracker
    # Verifying the id again answers its verdict, and says how to check it again.
    again = _stampless(project, tracker, "verify", str(request), "--dev")
    assert again.returncode == 0
    assert "To check it again: stampless verify --recheck SR-1" in again.stdout
    recheck = _stampless(project, tracker, "verify", "--recheck", "SR-1", "--json", "--dev")
    assert recheck.returncode == 0, recheck.stderr
    verdict = json.loads(recheck.stdout)
    assert verdict["request_id"].startswith("SR-1.recheck-")
    assert (verdict["supersedes"], verdict["verdict"]) == ("SR-1", "verified")
    outbox = project / "var" / "outbox"
    assert (outbox / "SR-1.json").is_file() and (outbox / f"{verdict['request_id']}.json").is_file()
    both = _stampless(project, tracker, "verify", str(request), "--recheck", "SR-1", "--dev")
    assert both.returncode == 2 and "not both" in both.stderr


# ---- stampless shell and stampless record ----------------------------------------------------


def test_shell_runs_code_on_a_logged_in_page(project: Path, tracker: str) -> None:
    count = _stampless(
        project,
        tracker,
        "shell",
        "tracker",
        "--url",
        "/issues",
        "-c",
        "await page['search.ticket'].count()",
    )
    assert count.returncode == 0, count.stderr
    assert count.stdout.strip().splitlines()[-1] == "1"
    shown = _stampless(
        project,
        tracker,
        "shell",
        "tracker",
        "--url",
        "/issues?q=TRK-100",
        "-c",
        "await show('search.ticket')",
    )
    assert "1 match(es) of '#search-q' in the page" in shown.stdout, shown.stdout
    assert "0 match(es) of" not in shown.stdout.split("'#search-q'")[0]
    (shot,) = (project / "var" / "shell").glob("*-search-ticket.png")
    assert shot.read_bytes().startswith(b"\x89PNG")
    failing = _stampless(
        project,
        tracker,
        "shell",
        "tracker",
        "-c",
        "x = 1\nawait page['search.ticket'].count() + 'a'",
    )
    assert failing.returncode == 2
    assert "the code raised TypeError (line 2): unsupported operand" in failing.stderr
    console = subprocess.run(
        [
            sys.executable,
            "-m",
            "stampless",
            "--config",
            str(project / "robot.toml"),
            "shell",
            "tracker",
            "--url",
            "/issues",
        ],
        input='n = await page["search.ticket"].count()\nprint("found", n)\nshelp()\n',
        capture_output=True,
        text=True,
        timeout=180,
        env=project_env(tracker, project / "var"),
    )
    assert console.returncode == 0, console.stderr
    assert "logged in as agent" in console.stderr and "found 1" in console.stdout
    assert 'await show("name" or "css=...")' in console.stdout


RECORDING = Path(__file__).parent / "recordings" / "tracker_search.py"


def test_record_drafts_a_selector_map_from_a_recorded_script(project: Path, tracker: str) -> None:
    from stampless.robot import load_selector_map

    result = _stampless(project, tracker, "record", "tracker", "--script", str(RECORDING))
    assert result.returncode == 0, result.stderr
    draft = project / "selectors" / "tracker.draft.toml"
    assert f"drafted in {draft}" in result.stdout
    drafted = load_selector_map(draft, "tracker")
    search = drafted["issues.search_q"].choices
    # The recorded locators first (two recordings of one box merged), then fallbacks
    # found on the element, each finding it alone.
    assert search[:2] == ('role=textbox[name="Ticket" i]', 'internal:label="Ticket"i')
    assert {"#search-q", "input[name='q']"} <= set(search)
    assert drafted["issues.attachment"].choices[1] == "#attachment"
    assert drafted["issues.search_btn"].choices[:2] == (
        'role=button[name="Search" i]',
        "#search-btn",
    )
    text = draft.read_text(encoding="utf-8")
    assert "TRK-1003" not in text  # a typed value is never written into the map
    assert '# recorded: await page.get_by_role("button", name="Search").click()' in text
    # Every choice of the draft finds its element alone, on the page it was recorded on.
    checks = " ; ".join(
        f"assert await page.raw.locator({c!r}).count() == 1, {c!r}"
        for c in search + drafted["issues.search_btn"].choices
    )
    checked = _stampless(project, tracker, "shell", "tracker", "--url", "/issues", "-c", checks)
    assert checked.returncode == 0, checked.stderr


def test_record_runs_codegen_on_the_accounts_session(project: Path, tracker: str) -> None:
    # No display here: the command says what to do instead, and starts nothing.
    refused = _stampless(project, tracker, "record", "tracker")
    assert refused.returncode == 2 and "has no display" in refused.stderr
    assert "--script FILE" in refused.stderr
    # Playwright's own test switches run codegen headless for 3 s (nothing is recorded).
    hooks = {
        "PWTEST_CLI_IS_UNDER_TEST": "1",
        "PWTEST_CLI_HEADLESS": "1",
        "PWTEST_CLI_EXIT_AFTER_TIMEOUT": "3000",
    }
    result = _stampless(project, tracker, "record", "tracker", "--url", "/issues", **hooks)
    assert result.returncode == 2 and "holds no action" in result.stderr
    (script,) = (project / "var" / "record").glob("tracker-*.py")
    text = script.read_text(encoding="utf-8")
    assert 'locale="en-GB"' in text and 'timezone_id="UTC"' in text
    assert "sessions/tracker/agent.json" in text  # the session the account's login saved
    assert f'await page.goto("{tracker}/issues")' in text
