"""``stampless demo``: the main job on embedded defaults, end to end, on this machine.

It starts the emulated department systems on free ports, renders a handful of degraded
scans (genuine marriage certificates, a forged one, one whose record does not exist, a
business licence, a confidential social-security record) and signs two electronic
certificates (one genuine, one tampered with), runs them all through the real pipeline
(Chromium robot + Tesseract OCR + comparison, or the e-certificate check, + sealed
evidence), and writes a summary page. Every tier shows: instant, robot, and manual (the
social-security record waits in the review queue for a person). Each run gets its own folder under
``var/demo/<timestamp>/`` (outbox, evidence, audit, log), so it can run any number of
times in a row; the emulated systems are stopped before it returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from loguru import logger

from stampless._files import write_atomic
from stampless._logging import setup_logging
from stampless.config import Config
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.harness import FixtureProcess
from stampless.models import Request, VerdictKind
from stampless.pipeline import Pipeline
from stampless.verify import Outcome, verify_request

FIXTURE_SEED = 7


@dataclass(frozen=True)
class DemoItem:
    """One scan of the demo set: what a correct verifier must say about it."""

    request_path: Path
    expected: str
    note: str


@dataclass(frozen=True)
class DemoRow:
    item: DemoItem
    outcome: Outcome | None
    error: str | None
    report: Path | None

    @property
    def verdict(self) -> str:
        return self.outcome.verdict.verdict.value if self.outcome else "error"

    @property
    def as_expected(self) -> bool:
        return self.verdict == self.item.expected


# (doc type, how many, seed of the scan set, altered share, absent share, note)
DEMO_SETS = (
    ("marriage_certificate", 3, 101, 0.0, 0.0, "marriage certificate, genuine"),
    ("marriage_certificate", 1, 102, 1.0, 0.0, "marriage certificate, forged"),
    ("marriage_certificate", 1, 103, 0.0, 1.0, "marriage certificate, no such record"),
    ("business_license", 1, 104, 0.0, 0.0, "business licence, genuine"),
    ("social_security_record", 1, 105, 0.0, 0.0, "social-security record (confidential)"),
)
DEMO_ISSUER = "samr"  # the market regulator signs electronic business licences


def make_scans(out_dir: Path, difficulty: str = "normal") -> list[DemoItem]:
    """Render the demo's scans (deterministic) and say what each one should give."""
    from stampless.fixtures.scans import generate

    items: list[DemoItem] = []
    for doc_type, count, seed, altered, absent, note in DEMO_SETS:
        for image in generate(
            out_dir,
            doc_type,
            count,
            seed,
            difficulty=difficulty,
            altered_share=altered,
            absent_share=absent,
            records_seed=FIXTURE_SEED,
        ):
            truth = json.loads(image.with_suffix(".truth.json").read_text(encoding="utf-8"))
            altered_field = truth.get("altered_field")
            expected = truth["expected_verdict"]
            if doc_type == "social_security_record":
                expected = VerdictKind.needs_review.value  # the manual tier
            items.append(
                DemoItem(
                    request_path=image.with_suffix(".request.json"),
                    expected=expected,
                    note=f"{note} ({altered_field})" if altered_field else note,
                )
            )
    return items


def make_ecerts(out_dir: Path, key_dir: Path) -> tuple[list[DemoItem], str]:
    """A genuine and a tampered electronic licence; returns them and the issuer's public key."""
    from stampless.ecert import ensure_issuer_key, public_key_b64
    from stampless.fixtures.ecerts import write_ecerts

    key, _ = ensure_issuer_key(key_dir, DEMO_ISSUER)
    written = write_ecerts(
        out_dir, key, DEMO_ISSUER, "business_license", count=1, seed=FIXTURE_SEED, tampered=True
    )
    items = [
        DemoItem(
            request_path=e.request_path,
            expected=e.expected_verdict,
            note="electronic licence, tampered"
            if "tampered" in e.request_path.name
            else "electronic licence, genuine",
        )
        for e in written
    ]
    return items, public_key_b64(key)


def demo_config(config: Config, run_dir: Path, urls: dict[str, str], issuer_key: str) -> Config:
    """The deployment's configuration, pointed at this run's folder, ports and issuer key."""
    overrides: dict[str, object] = {
        "project.var_dir": str(run_dir),
        f"issuers.{DEMO_ISSUER}.public_key": issuer_key,
        f"issuers.{DEMO_ISSUER}.types": ["business_license"],
    }
    for system, url in urls.items():
        if system in config.systems:
            overrides[f"systems.{system}.url"] = url
    return config.with_overrides(overrides)


async def _run_items(config: Config, items: list[DemoItem], workers: int) -> list[DemoRow]:
    from stampless.report import write_report

    gate = asyncio.Semaphore(workers)

    async def one(item: DemoItem, pipeline: Pipeline) -> DemoRow:
        async with gate:
            request = Request.from_file(item.request_path)
            try:
                outcome = await verify_request(
                    config, request, item.request_path.parent, pipeline=pipeline
                )
            except Exception as exc:  # a demo shows every row, even a failed one
                logger.opt(exception=exc).debug("demo item failed")
                return DemoRow(item, None, str(exc), None)
            report = None
            if outcome.verdict.evidence:
                report = write_report(Path(outcome.verdict.evidence), audit_dir=config.audit_dir)
            return DemoRow(item, outcome, None, report)

    from stampless.signing import ensure_dev_key

    # The demo is the development setting: its bundles are signed with the key
    # robot.toml configures, else with the development key in the run's own var/.
    async with Pipeline(config, signer=ensure_dev_key(config)) as pipeline:
        return list(await asyncio.gather(*(one(item, pipeline) for item in items)))


def write_summary(run_dir: Path, rows: list[DemoRow], seconds: float) -> Path:
    """A summary page linking each request's evidence report."""
    env = Environment(
        loader=PackageLoader("stampless", "templates"), autoescape=select_autoescape()
    )
    html = env.get_template("demo_summary.html.j2").render(
        rows=rows, seconds=seconds, run_dir=run_dir, VerdictKind=VerdictKind
    )
    path = run_dir / "summary.html"
    write_atomic(path, html)
    return path


def run_demo(
    config: Config, *, difficulty: str = "normal", workers: int = 2, console_level: str = "INFO"
) -> tuple[list[DemoRow], Path, float]:
    """Run the whole demo; returns the rows, the summary page and the seconds taken."""
    started = time.monotonic()
    run_dir = config.var_dir / "demo" / time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = run_dir.with_name(f"{run_dir.name.split('.')[0]}.{suffix}")
    scans_dir = run_dir / "scans"
    scans_dir.mkdir(parents=True)
    os.environ.update(fixture_env())  # the demo's service accounts (fixtures, not secrets)
    logger.info("rendering demo scans into {}", scans_dir)
    items = make_scans(scans_dir, difficulty)
    ecert_items, issuer_key = make_ecerts(run_dir / "ecerts", run_dir / "issuer-keys")
    items += ecert_items
    with FixtureProcess(
        args=["--seed", str(FIXTURE_SEED)], access_log=run_dir / "fixtures"
    ) as fixtures:
        logger.info("emulated department systems: {}", " ".join(fixtures.urls.values()))
        cfg = demo_config(config, run_dir, fixtures.urls, issuer_key)
        setup_logging(cfg, console_level=console_level)  # the run's JSON log in its folder
        rows = asyncio.run(_run_items(cfg, items, workers))
    seconds = time.monotonic() - started
    return rows, write_summary(run_dir, rows, seconds), seconds
