"""The helpdesk tracker of examples/issue_tracker as a test fixture: its server and project.

``tracker_server(*args)`` is ``examples/issue_tracker/tracker_app.py --port 0`` as a
subprocess (``with tracker_server() as server: server.urls["tracker"]``);
``copy_project(dest)`` copies the example's robot project (robot.toml, robots/,
selectors/, tasks/) somewhere a test may change it, and ``project_env(url, var)`` is the
environment that points ``stampless`` at a tracker.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from deployment_keys import signing_env

from stampless.fixtures.harness import FixtureProcess

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "issue_tracker"
PASSWORD = "tracker-pass"


def tracker_server(*args: str) -> FixtureProcess:
    return FixtureProcess(
        command=[sys.executable, str(EXAMPLE / "tracker_app.py"), "--port", "0", *args]
    )


def copy_project(dest: Path) -> Path:
    """The example project (without the tracker's own code) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "robot.toml", dest / "robot.toml")
    for folder in ("robots", "selectors", "tasks"):
        shutil.copytree(
            EXAMPLE / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    return dest


def project_env(url: str, var: Path, **extra: str) -> dict[str, str]:
    """Environment for ``stampless`` in a copy of the project, against the tracker at ``url``."""
    return {
        **os.environ,
        **signing_env(),
        "TRACKER_PASSWORD": PASSWORD,
        "STAMPLESS__SYSTEMS__TRACKER__URL": url,
        "STAMPLESS__PROJECT__VAR_DIR": str(var),
        "COLUMNS": "300",
        **extra,
    }


def report_scan(ticket: str) -> bytes:
    """The tracker's scanned report of ``ticket`` (the applicant's copy, as a PNG)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tracker_app", EXAMPLE / "tracker_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("tracker_app", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    (row,) = [t for t in module.TICKETS if t[0] == ticket]
    data: bytes = module.render_report(row)
    return data


def write_request(folder: Path, request_id: str, ticket: str, **claim: str) -> Path:
    """A request for the service report of ``ticket`` with its scan, in ``folder``."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{request_id}.png").write_bytes(report_scan(ticket))
    path = folder / f"{request_id}.json"
    body = {
        "id": request_id,
        "type": "service_report",
        "claim": {"ticket": ticket, **claim},
        "scan": f"{request_id}.png",
    }
    path.write_text(json.dumps(body), encoding="utf-8")
    return path
