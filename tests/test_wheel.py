"""The built wheel carries its demo: installed in a fresh venv, ``stampless demo`` works
from an empty folder and gives every verdict it expects.

The wheel is built from a copy of the source (so no build/ or egg-info lands in the
checkout) without network (``--no-build-isolation``, with the setuptools of the dev
extra). The fresh venv gets the wheel alone, with no access to this checkout; its
dependencies are this environment's site-packages, reached through a .pth line (a
plain path: the editable install's finder there is never run), since a test installs
nothing from the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What the wheel is built from (pyproject.toml's package data and setup.py's demo parts).
SOURCE_PARTS = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "stampless",
    "robot.toml",
    "robots",
    "tasks",
    "selectors",
)

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAMPLESS")}
    env.update(COLUMNS="200", OMP_THREAD_LIMIT="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    for part in SOURCE_PARTS:
        if (REPO / part).is_dir():
            shutil.copytree(
                REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / part, source / part)
    dist = tmp_path / "dist"
    result = run(
        sys.executable,
        *("-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q"),
        *("-w", dist, source),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = dist.glob("stampless-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    result = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    python = venv / "bin" / "python"
    result = run(
        sys.executable,
        *("-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    purelib = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "stampless-test-deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv


@pytest.mark.long
@pytest.mark.timeout(900)
def test_the_wheel_runs_the_demo_from_an_empty_folder(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    demo = sorted(n for n in names if n.startswith("stampless/demo_project/"))
    assert "stampless/demo_project/robot.toml" in demo
    for part in ("robots/civil_affairs.py", "tasks/marriage_certificate.py"):
        assert f"stampless/demo_project/{part}" in demo
    assert "stampless/demo_project/selectors/civil_affairs.toml" in demo
    assert not [n for n in demo if "/selectors/" in n and not n.endswith(".toml")]
    assert "stampless/ocr/models/det_int8.onnx" in names  # the 8-bit text detector

    venv = fresh_venv(tmp_path, wheel)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = run(
        venv / "bin" / "python", "-c", "import stampless; print(stampless.__file__)", cwd=empty
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr

    result = run(venv / "bin" / "stampless", "demo", "--json", cwd=empty, timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "reading scans with Tesseract alone" not in result.stderr  # PP-OCR loaded
    out = json.loads(result.stdout)
    wrong = [r for r in out["requests"] if not r["as_expected"]]
    assert (out["as_expected"], out["total"]) == (9, 9), wrong
    # Everything the run kept is under the empty folder's var/, where its commands lead.
    config = empty / "var" / "demo" / "latest" / "robot.toml"
    assert config.is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["var"]
    assert all("--config var/demo/latest/robot.toml" in s["command"] for s in out["next"])
    checked = run(
        *(venv / "bin" / "stampless", "--config", config, "evidence", "verify"),
        *(out["requests"][0]["request_id"], "--dev", "--json"),
        cwd=empty,
    )
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["ok"] is True
