"""Selectors that propose their own repair (issue 17), on the emulated systems' changed UI.

The repository's maps with every fallback removed, so a renamed element has nothing to
fall back on: a lookup on the normal UI leaves fingerprints, the systems switch to
``--ui-variant changed`` (ids and names of the search forms renamed), and the runtime
must propose the renamed element, as certain, for every selector that broke, and never
another element as certain.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from deployment_keys import signing_env
from tracker_project import PASSWORD, copy_project, tracker_server

from stampless.config import Config, load_config
from stampless.errors import RobotError
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.records import SYSTEMS, records
from stampless.robot import RobotRuntime
from stampless.robot._repair import judge, rank, read_proposals

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KEYS = {
    "civil_affairs": ("marriage_certificate", "cert_no"),
    "market_supervision": ("business_license", "credit_code"),
    "social_security": ("social_security_record", "person_id"),
}
# What the changed UI renamed (stampless/fixtures/servers/*.py), and to what.
RENAMED = {
    ("civil_affairs", "search.cert_no"): "#txtZsh",
    ("civil_affairs", "search.submit"): "#btnQuery",
    ("market_supervision", "search.company_name"): "#txtQymc",
    ("market_supervision", "search.credit_code"): "#txtTyxydm",
    ("market_supervision", "search.submit"): "#btnQuery",
    ("social_security", "query.person_id"): "#txtAac002",
    ("social_security", "query.submit"): "#btnSearch2",
}


def _project(tmp_path: Path, *, self_repair: bool, fallbacks: bool = False) -> Path:
    """The repository's deployment, its maps without fallbacks (unless ``fallbacks``)."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "robot.toml", project / "robot.toml")
    for folder in ("robots", "tasks", "selectors"):
        shutil.copytree(
            REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for path in (project / "selectors").glob("*.toml"):
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
        for table in document["selectors"].values():  # type: ignore[union-attr]
            while not fallbacks and len(table["any"]) > 1:
                table["any"].pop()
        document["self_repair"] = self_repair
        path.write_text(tomlkit.dumps(document), encoding="utf-8")
    return project


def _config(project: Path, servers: Any) -> Config:
    overrides: dict[str, Any] = {f"systems.{s}.url": servers.url(s) for s in SYSTEMS}
    overrides["project.var_dir"] = str(project / "var")
    overrides["browser.timeout_ms"] = 3000  # a selector gives up (and is repaired) sooner
    # These runtimes have no retrying caller, so each lookup would record a DOM-snapshot
    # trace (browser.trace = "on_failure"); what is checked here is the proposals and
    # their screenshots, never a trace.
    overrides["browser.trace"] = "off"
    return load_config(project / "robot.toml").with_overrides(overrides)


def _valid(doc_type: str, key: str) -> str:
    return next(r for r in records(doc_type, 7) if r["status"] == "valid")[key]


async def _lookup_each(rt: RobotRuntime) -> dict[str, str]:
    """Each system's lookup of a valid key: "ok", or what went wrong."""
    out: dict[str, str] = {}
    for system, (doc_type, key) in KEYS.items():
        wanted = _valid(doc_type, key)
        try:
            record = await rt.lookup(system, wanted)
        except RobotError as exc:
            out[system] = str(exc)
            continue
        out[system] = "ok" if record.fields[key] == wanted else f"wrong {record.fields}"
    return out


def _lookups(config: Config) -> dict[str, str]:
    """:func:`_lookup_each` in a runtime of its own."""

    async def run() -> dict[str, str]:
        async with RobotRuntime(config) as rt:
            return await _lookup_each(rt)

    return asyncio.run(run())


@pytest.fixture
def changing(fixture_servers_factory: Callable[..., Any]) -> Any:
    return fixture_servers_factory()


@pytest.fixture(autouse=True)
def _accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in fixture_env().items():
        monkeypatch.setenv(name, value)


@pytest.mark.long
@pytest.mark.timeout(900)
def test_every_renamed_element_is_proposed_as_certain_and_repaired(
    tmp_path: Path, changing: Any
) -> None:
    config = _config(_project(tmp_path, self_repair=True), changing)
    assert set(_lookups(config).values()) == {"ok"}  # the normal UI: fingerprints kept
    changing.control_all(ui_variant="changed")

    async def changed() -> tuple[dict[str, str], int, dict[str, str]]:
        async with RobotRuntime(config) as rt:
            first = await _lookup_each(rt)
            made = len(read_proposals(config.var_dir))
            return first, made, await _lookup_each(rt)

    first, made, again = asyncio.run(changed())
    # self_repair = true: every lookup goes on with the proposals, and reads the record.
    assert first == dict.fromkeys(KEYS, "ok")
    proposals = {(p.system, p.selector): p for p in read_proposals(config.var_dir)}
    found = {key: p.choice for key, p in proposals.items() if p.certain}
    assert found == RENAMED, proposals
    print(f"renamed elements proposed as certain and right: {len(found)} of {len(RENAMED)}")
    for proposal in proposals.values():
        assert proposal.screenshot is not None and Path(proposal.screenshot).is_file()
    # The process keeps its repairs: its next lookups read the records and search no more.
    assert again == dict.fromkeys(KEYS, "ok")
    assert len(read_proposals(config.var_dir)) == made


def _stampless(project: Path, servers: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **fixture_env(),
        **signing_env(),
        "COLUMNS": "300",
        "STAMPLESS__PROJECT__VAR_DIR": str(project / "var"),
        "STAMPLESS__BROWSER__TIMEOUT_MS": "3000",
    }
    for system in SYSTEMS:
        env[f"STAMPLESS__SYSTEMS__{system.upper()}__URL"] = servers.url(system)
    return subprocess.run(
        [sys.executable, "-m", "stampless", "--config", str(project / "robot.toml"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=project,
    )


@pytest.mark.long
@pytest.mark.timeout(900)
def test_without_self_repair_the_error_names_the_proposal_and_approve_fixes_the_map(
    tmp_path: Path, changing: Any
) -> None:
    project = _project(tmp_path, self_repair=False)
    key = _valid("marriage_certificate", "cert_no")
    lookup = ("lookup", "--type", "marriage_certificate", key, "--dev")
    assert _stampless(project, changing, *lookup).returncode == 0
    changing.control("civil_affairs", ui_variant="changed")
    for selector, choice in (("search.cert_no", "#txtZsh"), ("search.submit", "#btnQuery")):
        failed = _stampless(project, changing, *lookup)
        assert failed.returncode == 4, failed.stderr
        assert f"'{choice}' is proposed for '{selector}' (certain:" in failed.stderr
        assert f"stampless selectors approve civil_affairs {selector}" in failed.stderr
        listed = _stampless(project, changing, "selectors", "proposals")
        assert selector in listed.stdout and choice in listed.stdout
        approved = _stampless(project, changing, "selectors", "approve", "civil_affairs", selector)
        assert approved.returncode == 0, approved.stderr
        text = (project / "selectors" / "civil_affairs.toml").read_text(encoding="utf-8")
        choices = tomllib.loads(text)["selectors"][selector]["any"]
        assert choices[0] == choice and len(choices) == 2  # the old choice stays after it
        assert f"'{choice}' approved (stampless selectors approve)" in text
        assert "# Selector map of the civil-affairs" in text  # the author's comments stay
    assert _stampless(project, changing, *lookup).returncode == 0
    report = _stampless(project, changing, "selectors", "report")
    assert "#txtZsh" in report.stdout and "proposed first choice" in report.stdout


def test_a_fallback_that_matched_proposes_a_first_choice(tmp_path: Path, changing: Any) -> None:
    config = _config(_project(tmp_path, self_repair=False, fallbacks=True), changing)
    changing.control_all(ui_variant="changed")
    assert _lookups(config) == dict.fromkeys(KEYS, "ok")  # the fallbacks still match
    proposals = {(p.system, p.selector): p for p in read_proposals(config.var_dir)}
    from_fallbacks = {k: p.choice for k, p in proposals.items() if p.source == "fallback"}
    assert from_fallbacks == RENAMED


# ---- never a wrong element as certain ---------------------------------------------------------


def test_a_missing_element_is_never_proposed_as_certain(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "tracker")
    os.environ["TRACKER_PASSWORD"] = PASSWORD
    with tracker_server() as server:
        config = load_config(project / "robot.toml").with_overrides(
            {
                "systems.tracker.url": server.urls["tracker"],
                "project.var_dir": str(project / "var"),
                "browser.timeout_ms": 2000,
            }
        )

        async def run() -> list[str]:
            errors: list[str] = []
            async with RobotRuntime(config) as rt, rt.page("tracker") as page:
                await page.goto("/issues")
                await page["search.ticket"].fill("TRK-1001")  # its fingerprint is kept
                await page["search.submit"].click_and_wait()
                # Pages without the search box: a ticket (no text box at all) and the
                # login form (two other text boxes, labelled Username and Password).
                # Whatever is closest must not be proposed as certain. (The login page
                # would otherwise be taken for a lost session.)
                page.logout_probe = None
                for path in ("/issues/TRK-1001", "/login"):
                    await page.goto(path)
                    with pytest.raises(RobotError) as failed:
                        await page["search.ticket"].fill("TRK-1002")
                    errors.append(str(failed.value))
            return errors

        errors = asyncio.run(run())
    proposals = read_proposals(config.var_dir)
    assert proposals and not [p for p in proposals if p.certain], proposals
    assert "No repair for 'search.ticket' could be proposed" in errors[0]
    assert "(uncertain: the closest element shares only its" in errors[1], errors[1]


def test_a_renamed_search_box_of_a_third_party_system_is_found(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "tracker")
    selectors = project / "selectors" / "tracker.toml"
    document = tomlkit.parse(selectors.read_text(encoding="utf-8"))
    for table in document["selectors"].values():  # type: ignore[union-attr]
        while len(table["any"]) > 1:
            table["any"].pop()
    selectors.write_text(tomlkit.dumps(document), encoding="utf-8")
    os.environ["TRACKER_PASSWORD"] = PASSWORD
    var = project / "var"
    for variant in ("normal", "changed"):
        with tracker_server("--variant", variant) as server:
            config = load_config(project / "robot.toml").with_overrides(
                {
                    "systems.tracker.url": server.urls["tracker"],
                    "project.var_dir": str(var),
                    "browser.timeout_ms": 2000,
                }
            )

            async def run(config: Config = config) -> None:
                async with RobotRuntime(config) as rt:
                    await rt.lookup("tracker", "TRK-1001")

            if variant == "normal":
                asyncio.run(run())
            else:
                with pytest.raises(
                    RobotError, match=r"'#query-input' is proposed for 'search.ticket' \(certain"
                ):
                    asyncio.run(run())


def test_two_look_alikes_are_not_certain() -> None:
    old = {
        "tag": "input",
        "type": "text",
        "kind": "textbox",
        "id": "a",
        "name": "a",
        "classes": [],
        "label": "",
        "before": "",
        "text": "",
        "accessible_name": "",
        "placeholder": "",
        "title": "",
        "value": "",
        "href": "",
        "ancestors": [],
        "x": 10,
        "y": 10,
        "width": 100,
        "height": 20,
        "ordinal": 0,
    }
    twin = {**old, "id": "b", "name": "b"}
    ranked = rank(old, [twin, {**twin, "id": "c", "name": "c", "x": 12}])
    certain, why = judge(ranked)
    assert not certain and "not a label or a name" in why
    labelled = {**old, "label": "Ticket"}
    ranked = rank(labelled, [{**twin, "label": "Ticket"}, {**twin, "label": "Title", "y": 12}])
    assert judge(ranked)[0]
    ranked = rank(labelled, [{**twin, "label": "Ticket"}, {**twin, "label": "Ticket", "y": 12}])
    certain, why = judge(ranked)
    assert not certain and "almost as well" in why


def test_proposals_file_survives_a_torn_line(tmp_path: Path) -> None:
    folder = tmp_path / "selectors"
    folder.mkdir()
    good = {"system": "s", "selector": "x", "choice": "#y", "certain": True}
    (folder / "proposals.jsonl").write_text(json.dumps(good) + "\n{torn", encoding="utf-8")
    (proposal,) = read_proposals(tmp_path)
    assert (proposal.selector, proposal.choice) == ("x", "#y")
