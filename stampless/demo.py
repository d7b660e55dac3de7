"""``stampless demo``: the main job on embedded defaults, end to end, on this machine.

It starts the emulated department systems on free ports, renders a handful of degraded
scans (genuine ones, a forged certificate number, a record that does not exist), runs
them through the real pipeline (Chromium robot + Tesseract OCR + comparison + sealed
evidence), and writes a summary page. Each run gets its own folder under
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
    ("marriage_certificate", 3, 101, 0.0, 0.0, "genuine"),
    ("marriage_certificate", 1, 102, 1.0, 0.0, "forged: one field altered"),
    ("marriage_certificate", 1, 103, 0.0, 1.0, "no such record"),
)


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
            items.append(
                DemoItem(
                    request_path=image.with_suffix(".request.json"),
                    expected=truth["expected_verdict"],
                    note=f"{note} ({altered_field})" if altered_field else note,
                )
            )
    return items


def demo_config(config: Config, run_dir: Path, urls: dict[str, str]) -> Config:
    """The deployment's configuration, pointed at this run's folder and fixture ports."""
    overrides: dict[str, object] = {"project.var_dir": str(run_dir)}
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

    async with Pipeline(config) as pipeline:
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
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


def run_demo(
    config: Config, *, difficulty: str = "normal", workers: int = 2
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
    with FixtureProcess(
        args=["--seed", str(FIXTURE_SEED)], access_log=run_dir / "fixtures"
    ) as fixtures:
        logger.info("emulated department systems: {}", " ".join(fixtures.urls.values()))
        cfg = demo_config(config, run_dir, fixtures.urls)
        rows = asyncio.run(_run_items(cfg, items, workers))
    seconds = time.monotonic() - started
    return rows, write_summary(run_dir, rows, seconds), seconds
