"""``stampless doctor``: what this machine and this deployment lack, and how to get it.

Three groups of checks, in the order a person fixes them: the machine (Tesseract and
its languages, the OCR engines, Chromium, fonts, a writable var/), the deployment
(robot.toml parses, its robots, selector maps and task modules load, every secret it
refers to resolves, a signing key), and each department system's reachability (one
HTTP request per system; ``--offline`` skips them).
"""

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
    """One finding; ``group`` is "machine", "robot.toml", "secrets" or "systems" (the
    department systems and the shared store)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    group: str = "machine"

    def as_dict(self) -> dict[str, object]:
        return {
            "group": self.group,
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "fix": self.fix,
        }


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


def _ocr_engine(config: Config) -> Check:
    """Which engine reads scans, and which reads a second time."""
    from stampless.errors import OcrEngineError
    from stampless.ocr import engine_in_use, get_engine, ppocr_installed, second_opinion

    hint = "pip install --force-reinstall rapidocr onnxruntime"
    if config.ocr.engine == "ppocr" and not ppocr_installed():
        return Check("OCR engine", False, "ppocr is configured but not installed", hint)
    primary = engine_in_use(config.ocr)
    if primary == "ppocr":
        try:
            get_engine(config.ocr, "ppocr")
        except OcrEngineError as exc:
            return Check("OCR engine", False, str(exc), hint)
    second = second_opinion(config.ocr)
    second_text = f"{second} reads a second time" if second else "no second reader"
    if primary == "ppocr":
        detector = "8-bit" if config.ocr.detector == "int8" else "float"
        return Check(
            "OCR engine",
            True,
            f"PP-OCR reads and verifies fields ({detector} text detector); {second_text}",
        )
    # Tesseract alone works, but sends more genuine scans to a person.
    return Check(
        "OCR engine",
        True,
        f"Tesseract alone (PP-OCR {'off' if ppocr_installed() else 'not installed'}); "
        f"{second_text}; more genuine scans go to review",
        "" if config.ocr.engine == "tesseract" else hint,
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


def _deployment(config: Config) -> list[Check]:
    """robot.toml's robots, selector maps and task modules load."""
    from stampless.doctype import load_doctype
    from stampless.errors import StamplessError
    from stampless.robot import load_robot, load_selector_map

    checks = []
    for name, system in config.systems.items():
        try:
            load_selector_map(system.selectors, name)
            load_robot(system.robot, name)
        except StamplessError as exc:
            checks.append(
                Check(f"system {name}", False, str(exc), "fix the file it names", "robot.toml")
            )
        else:
            detail = f"robot {system.robot.name}, selectors {system.selectors.name}"
            checks.append(Check(f"system {name}", True, detail, group="robot.toml"))
    for name in config.types:
        try:
            doctype = load_doctype(config, name)
        except StamplessError as exc:
            checks.append(
                Check(f"type {name}", False, str(exc), "fix the task module", "robot.toml")
            )
            continue
        if doctype.system is not None and doctype.system not in config.systems:
            checks.append(
                Check(
                    f"type {name}",
                    False,
                    f"its system {doctype.system!r} is not in robot.toml",
                    f"add [systems.{doctype.system}] or set [types.{name}] system",
                    "robot.toml",
                )
            )
            continue
        detail = f"{doctype.tier.value} tier, {len(doctype.fields)} fields"
        checks.append(Check(f"type {name}", True, detail, group="robot.toml"))
    return checks


def _secrets(config: Config) -> list[Check]:
    """Every secret reference resolves; the signing key is configured."""
    from stampless.vault import secret_references, unresolved_secrets

    refs = secret_references(config)
    missing = unresolved_secrets(config)
    checks = []
    for where, ref, exc in missing:
        if ref.startswith("env:"):
            variable = ref.removeprefix("env:")
            detail = f"{where}: the environment variable {variable} is not set"
            fix = f'export {variable} (the emulated systems: eval "$(stampless fixtures env)")'
        else:
            detail, fix = f"{where}: {exc}", ""
        checks.append(Check(ref, False, detail, fix, "secrets"))
    if refs and not missing:
        checks.append(
            Check("secrets", True, f"all {len(refs)} references resolve", group="secrets")
        )
    if not config.evidence.signing_key:
        checks.append(
            Check(
                "signing key",
                True,
                "none configured: run, schedule, verify and review serve need --dev",
                "'stampless keys init' for a real deployment (docs/evidence.md)",
                "secrets",
            )
        )
    return checks


def _reachable(config: Config, timeout_s: float = 5.0) -> list[Check]:
    """One HTTP request per department system: does anything answer at its URL?"""
    import time

    import httpx

    checks = []
    for name, system in config.systems.items():
        started = time.perf_counter()
        try:
            response = httpx.get(system.url, timeout=timeout_s, follow_redirects=False)
        except httpx.HTTPError as exc:
            reason = str(exc) or exc.__class__.__name__
            checks.append(
                Check(
                    f"system {name}",
                    False,
                    f"{system.url} does not answer ({reason})",
                    "start it, or correct its url in robot.toml (the emulated systems: "
                    "'stampless fixtures serve'); --offline skips this check",
                    "systems",
                )
            )
            continue
        ms = (time.perf_counter() - started) * 1000
        ok = response.status_code < 500
        checks.append(
            Check(
                f"system {name}",
                ok,
                f"{system.url} answered {response.status_code} in {ms:.0f} ms",
                "" if ok else "the system answers with a server error; try again later",
                "systems",
            )
        )
    return checks


def _store(config: Config) -> list[Check]:
    """The PostgreSQL store answers and its schema is this stampless's."""
    if config.store.backend != "postgres":
        return []
    from stampless._postgres import SCHEMA_VERSION, check_schema, connect, database_url
    from stampless.errors import StamplessError

    try:
        with connect(database_url(config)) as conn:
            check_schema(conn)
    except StamplessError as exc:
        fix = "stampless db migrate" if "migrate" in str(exc) else "check [store] url"
        return [Check("store", False, str(exc), fix, "systems")]
    detail = f"PostgreSQL answers; schema version {SCHEMA_VERSION}"
    return [Check("store", True, detail, group="systems")]


def run_checks(config: Config, *, deployment: bool = True, offline: bool = False) -> list[Check]:
    """Every check, in the order a person would fix them.

    ``deployment``: ``config`` comes from a robot.toml, so check it too (its modules,
    its secrets and, unless ``offline``, its systems).
    """
    checks = [
        *_tesseract(config),
        _tesseract_library(config),
        _ocr_engine(config),
        _chromium(config),
        _fonts(),
        _writable(config.var_dir),
        _omp(),
    ]
    if deployment:
        checks += _deployment(config) + _secrets(config)
        if not offline:
            checks += _store(config) + _reachable(config)
    return checks
