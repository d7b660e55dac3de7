"""How well selectors propose their own repair, on the emulated systems' changed UI.

The repository's deployment with every fallback removed from its selector maps:
one lookup per system that has a changed UI variant (civil affairs, market supervision,
social security, exit-entry) on the normal UI (fingerprints kept), the systems switched to
``--ui-variant changed`` (search forms' ids and names renamed), and one lookup per system
with ``self_repair = true``. Prints each proposal (choice, certain, score, runner-up,
seconds until the lookup went on), how many renamed elements were proposed as certain
and right, how many proposals were certain and wrong, and whether each lookup still read
its record. Never part of the tests (tests/test_selector_repair.py asserts the same).

    python bench/selector_repair.py
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import tomlkit

from stampless.config import load_config
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.harness import FixtureProcess
from stampless.fixtures.records import records
from stampless.robot import RobotRuntime
from stampless.robot._repair import read_proposals

REPO = Path(__file__).resolve().parents[1]
LOOKUPS = {
    "civil_affairs": ("marriage_certificate", "cert_no"),
    "market_supervision": ("business_license", "credit_code"),
    "social_security": ("social_security_record", "person_id"),
    "exit_entry": ("work_permit", "permit_no"),
}
# The ids the changed UI gives the elements the robots touch (stampless/fixtures/servers).
EXPECTED = {
    "civil_affairs": {"search.cert_no": "#txtZsh", "search.submit": "#btnQuery"},
    "market_supervision": {
        "search.company_name": "#txtQymc",
        "search.credit_code": "#txtTyxydm",
        "search.submit": "#btnQuery",
    },
    "social_security": {"query.person_id": "#txtAac002", "query.submit": "#btnSearch2"},
    "exit_entry": {"query.number": "#txtKey", "query.submit": "#btnFind"},
}


def without_fallbacks(folder: Path) -> None:
    for path in folder.glob("*.toml"):
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
        for entry in document["selectors"].values():  # type: ignore[union-attr]
            del entry["any"][1:]
        document["self_repair"] = True
        path.write_text(tomlkit.dumps(document), encoding="utf-8")


async def lookups(config, label: str) -> None:  # type: ignore[no-untyped-def]
    async with RobotRuntime(config) as runtime:
        for system, (doc_type, field) in LOOKUPS.items():
            key = next(r for r in records(doc_type, 7) if r["status"] == "valid")[field]
            started = time.perf_counter()
            try:
                record = await runtime.lookup(system, key)
                outcome = "read its record" if record.fields[field] == key else "WRONG record"
            except Exception as exc:
                outcome = f"failed: {exc}"
            print(f"  {label:8} {system:20} {time.perf_counter() - started:6.1f} s  {outcome}")


def main() -> None:
    os.environ.update(fixture_env())
    work = Path(tempfile.mkdtemp(prefix="stampless-repair-"))
    shutil.copy(REPO / "robot.toml", work / "robot.toml")
    for folder in ("robots", "tasks", "selectors"):
        shutil.copytree(REPO / folder, work / folder)
    without_fallbacks(work / "selectors")
    with FixtureProcess(args=["--seed", "7"]) as servers:
        overrides = {f"systems.{name}.url": url for name, url in servers.urls.items()}
        config = load_config(work / "robot.toml").with_overrides(
            {**overrides, "project.var_dir": str(work / "var")}
        )
        print("lookups (browser.timeout_ms", config.browser.timeout_ms, "ms):")
        asyncio.run(lookups(config, "normal"))
        for url in servers.urls.values():
            request = urllib.request.Request(
                url + "/_fixture/control",
                data=json.dumps({"ui_variant": "changed"}).encode(),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=10).close()
        asyncio.run(lookups(config, "changed"))
    print("proposals:")
    right = wrong = 0
    for proposal in sorted(read_proposals(config.var_dir), key=lambda p: p.at):
        wanted = EXPECTED.get(proposal.system, {}).get(proposal.selector)
        ok = proposal.certain and proposal.choice == wanted
        right += ok
        wrong += proposal.certain and not ok
        print(
            f"  {proposal.system:20} {proposal.selector:22} {proposal.choice or '-':14} "
            f"certain={proposal.certain!s:5} score={proposal.score:.2f} "
            f"runner-up={proposal.runner_up:.2f}"
        )
    total = sum(len(names) for names in EXPECTED.values())
    print(f"renamed elements proposed as certain and right: {right} of {total}")
    print(f"proposals certain and wrong: {wrong}")
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if right == total and not wrong else 1)


if __name__ == "__main__":
    main()
