"""``stampless doctor``: what this machine lacks for stampless, and how to get it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from stampless.config import Config

APT_HINT = "apt-get install -y {}"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _tesseract(config: Config) -> list[Check]:
    cmd = config.ocr.tesseract_cmd or shutil.which("tesseract")
    if not cmd:
        return [
            Check("tesseract", False, "not found on PATH", APT_HINT.format("tesseract-ocr")),
            Check(
                "tesseract languages",
                False,
                "cannot check without tesseract",
                APT_HINT.format("tesseract-ocr-chi-sim"),
            ),
        ]
    try:
        version = subprocess.run(
            [cmd, "--version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout.splitlines()[0]
        langs = subprocess.run(
            [cmd, "--list-langs"], capture_output=True, text=True, timeout=20, check=False
        ).stdout.split()
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return [
            Check(
                "tesseract",
                False,
                f"{cmd} does not run ({exc.__class__.__name__})",
                APT_HINT.format("--reinstall tesseract-ocr"),
            )
        ]
    wanted = config.ocr.languages.split("+")
    missing = [lang for lang in wanted if lang not in langs]
    packages = " ".join(f"tesseract-ocr-{m.replace('_', '-')}" for m in missing)
    return [
        Check("tesseract", True, f"{cmd} ({version})"),
        Check(
            "tesseract languages",
            not missing,
            f"missing {', '.join(missing)}" if missing else f"{config.ocr.languages} installed",
            APT_HINT.format(packages) if missing else "",
        ),
    ]


def _tesseract_library(config: Config) -> Check:
    from stampless.errors import OcrEngineError
    from stampless.ocr.libtesseract import find_library, load_library

    path = find_library(config.ocr)
    if path is None and (config.ocr.tesseract_cmd or config.ocr.tesseract_library == "off"):
        return Check("tesseract library", True, "off: OCR runs the tesseract command")
    if path is None:
        # Not an error: the command works, only ~2x slower per page.
        return Check(
            "tesseract library",
            True,
            "libtesseract not found; OCR runs the tesseract command (about 2x slower)",
        )
    try:
        tess = load_library(path)
    except OcrEngineError as exc:
        return Check("tesseract library", False, str(exc), 'set ocr.tesseract_library = "off"')
    return Check("tesseract library", True, f"{path} ({tess.version}), read in-process")


def _second_opinion(config: Config) -> Check:
    from stampless.ocr import rapidocr_installed, second_opinion

    hint = "pip install 'stampless[rapidocr]'"
    if config.ocr.second_opinion == "rapidocr" and not rapidocr_installed():
        return Check("OCR second opinion", False, "rapidocr is configured but not installed", hint)
    if second_opinion(config.ocr) is not None:
        return Check(
            "OCR second opinion", True, "RapidOCR re-reads names and low-confidence fields"
        )
    if config.ocr.second_opinion == "none":
        return Check("OCR second opinion", True, "off (ocr.second_opinion = none)")
    # Optional: without it more genuine scans go to a person, none is accepted wrongly.
    return Check(
        "OCR second opinion",
        True,
        "RapidOCR not installed: more genuine scans go to review",
        hint,
    )


def _chromium(config: Config) -> Check:
    from stampless.errors import BrowserError
    from stampless.robot import find_chromium

    try:
        found = find_chromium(config.browser)
    except BrowserError as exc:
        return Check("chromium", False, str(exc), APT_HINT.format("chromium"))
    return Check("chromium", True, str(found or "Playwright's own Chromium"))


def _fonts() -> Check:
    from stampless.fixtures.fonts import FACES, missing_packages

    missing = missing_packages()
    if not missing:
        return Check("CJK fonts", True, f"the scan generator's {len(FACES)} faces are installed")
    return Check(
        "CJK fonts",
        False,
        f"missing {', '.join(missing)} (the faces the scan generator renders test scans with)",
        APT_HINT.format(" ".join(missing)),
    )


def _writable(var_dir: Path) -> Check:
    try:
        var_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=var_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "var folder",
            False,
            f"{var_dir} is not writable ({exc.strerror})",
            "set project.var_dir in robot.toml to a writable folder",
        )
    return Check("var folder", True, f"{var_dir} writable")


def _omp() -> Check:
    value = os.environ.get("OMP_THREAD_LIMIT")
    return Check(
        "OMP_THREAD_LIMIT",
        True,
        f"set to {value}" if value else "not set; stampless sets it to 1 for Tesseract itself",
    )


def run_checks(config: Config) -> list[Check]:
    """Every check, in the order a person would fix them."""
    return [
        *_tesseract(config),
        _tesseract_library(config),
        _second_opinion(config),
        _chromium(config),
        _fonts(),
        _writable(config.var_dir),
        _omp(),
    ]
