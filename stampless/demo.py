"""``stampless demo``: the main job on embedded defaults, end to end, on this machine.

It starts the emulated department systems on free ports, renders a handful of degraded
scans (genuine marriage certificates, a forged one, one whose record does not exist, a
business licence, a confidential social-security record) and signs two electronic
certificates (one genuine, one tampered with), runs them all through the real pipeline
(Chromium robot + OCR + comparison, or the e-certificate check, + sealed evidence), and
writes a summary page. Every tier shows: instant, robot, and manual (the social-security
record waits in the review queue for a person).

Then the loop the service hall runs (:func:`run_hall_loop`): applications appear in the
emulated hall, its harvest job takes each material in (the applicant's scan, or a fetch
from the department when the material is exempt), workers verify them, the confidential
one waits in the review console, and the push job puts every final verdict back on the
application. The hall's own state says which applications were served end to end.

The demo runs the deployment that ships with stampless (:func:`demo_project`: the
repository's robot.toml, robots/, tasks/ and selectors/, which the wheel carries as
``stampless/demo_project/``), whatever project it is started in. Each run gets its own
folder ``<var>/demo/<timestamp>/`` (``<var>/demo/latest`` links the newest): a copy of
that deployment whose robot.toml keeps its queue, review store, evidence, outbox and
audit chain in the folder itself, so ``stampless --config var/demo/latest/robot.toml ...``
reaches everything the run left. Runs never share state, so the demo can run any number
of times in a row; the emulated systems are stopped before it returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from loguru import logger

from stampless._files import write_atomic
from stampless._logging import setup_logging
from stampless.config import Config, load_config
from stampless.errors import ConfigError
from stampless.fixtures.accounts import fixture_env
from stampless.fixtures.harness import FixtureProcess
from stampless.models import Request, VerdictKind
from stampless.ocr import second_opinion
from stampless.pipeline import Pipeline
from stampless.verify import Outcome, verify_request

FIXTURE_SEED = 7
# The parts of a deployment the demo copies into its run folder, and their files.
DEPLOYMENT_PARTS = {"robots": "*.py", "tasks": "*.py", "selectors": "*.toml"}
DEMO_REVIEWER = "demo"
LATEST = "latest"


@dataclass(frozen=True)
class DemoItem:
    """One scan of the demo set: what a correct verifier must say about it."""

    request_path: Path
    expected: str
    note: str

    @property
    def request_id(self) -> str:
        return Request.from_file(self.request_path).id


@dataclass(frozen=True)
class DemoRow:
    item: DemoItem
    outcome: Outcome | None
    error: str | None
    report: Path | None

    @property
    def request_id(self) -> str:
        return self.outcome.verdict.request_id if self.outcome else self.item.request_id

    @property
    def verdict(self) -> str:
        return self.outcome.verdict.verdict.value if self.outcome else "error"

    @property
    def as_expected(self) -> bool:
        return self.verdict == self.item.expected


@dataclass(frozen=True)
class HallMaterial:
    """One material of a hall application, as the loop left it."""

    request_id: str
    document: str
    verdict: str | None  # None: not decided yet (a person decides the confidential one)
    pushed_at: float | None  # when the hall got its status back (epoch seconds)


@dataclass(frozen=True)
class HallApplication:
    app_id: str
    materials: list[HallMaterial]

    @property
    def served(self) -> bool:
        """Every material's verdict is back on the application."""
        return all(m.pushed_at is not None for m in self.materials)


@dataclass(frozen=True)
class NextStep:
    """A command to try after the demo, and what it shows."""

    what: str
    command: str


@dataclass(frozen=True)
class DemoRun:
    """What a demo run gave, and where it left it."""

    rows: list[DemoRow]
    run_dir: Path
    config_path: Path  # the run's robot.toml: --config for the commands that come next
    summary: Path
    seconds: float
    reviewer_password: str
    hall: list[HallApplication]
    second_opinion: str | None = None  # the OCR engine asked about names, if any

    @property
    def served(self) -> int:
        """Applications of the hall served end to end (all materials pushed back)."""
        return sum(a.served for a in self.hall)

    @property
    def as_expected(self) -> int:
        return sum(r.as_expected for r in self.rows)

    @property
    def advice(self) -> str | None:
        """What to install when genuine certificates went to a person for want of PP-OCR.

        Tesseract alone, the fallback when PP-OCR cannot load, reads names with too little
        confidence for the machine to decide (docs/ocr.md).
        """
        doubted = [
            r.request_id
            for r in self.rows
            if r.verdict == VerdictKind.needs_review.value
            and r.item.expected == VerdictKind.verified.value
        ]
        if not doubted or self.second_opinion is not None:
            return None
        return (
            f"{', '.join(doubted)} went to a person because Tesseract alone read "
            f"{'it' if len(doubted) == 1 else 'them'} with too little confidence: PP-OCR, "
            "stampless's first reader, did not load ('stampless doctor' says why; "
            "pip install 'rapidocr>=3.10,<4' onnxruntime, about 170 MB), then run the demo again."
        )

    def next_steps(self, config_arg: str, *, password: bool = True) -> list[NextStep]:
        """The three things to try next, as commands using ``--config config_arg``.

        ``password``: name the demo reviewer's password (the terminal does; files never).
        """
        by_verdict: dict[str, str] = {}
        # The manual tier's item first: it waits for a person by design.
        for row in sorted(self.rows, key=lambda r: r.item.expected != "needs_review"):
            if row.outcome is not None and row.outcome.verdict.tier.value != "instant":
                by_verdict.setdefault(row.verdict, row.request_id)
        waiting = by_verdict.get("needs_review", "the waiting item")
        report = by_verdict.get("mismatch") or by_verdict.get("verified") or self.rows[0].request_id
        bundle = by_verdict.get("verified") or report
        prefix = f"stampless --config {config_arg}"
        return [
            NextStep(
                f"decide {waiting} in the reviewer console (log in as {DEMO_REVIEWER!r}, "
                + (
                    f"password {self.reviewer_password})"
                    if password
                    else "with the password the demo printed)"
                ),
                f"{prefix} review serve --dev",
            ),
            NextStep(
                f"open the evidence report of {report}", f"{prefix} evidence report {report} --open"
            ),
            NextStep(
                f"check the hashes and signatures of {bundle}'s bundle",
                f"{prefix} evidence verify {bundle} --dev",
            ),
        ]


# (doc type, how many, seed of the scan set, altered share, absent share, note)
# The demo shows each outcome once, so its genuine scans are ones the machine reads
# cleanly (with PP-OCR, as `make` installs it): seed 101's second scan went
# to a person (a spouse name the two engines read differently), which is right for it
# but not what the demo's table says a genuine certificate gives. How often a genuine
# scan goes to review over hundreds of scans is bench/ocr_accuracy.py's figure
# (bench/RESULTS.md).
DEMO_SETS = (
    ("marriage_certificate", 3, 107, 0.0, 0.0, "marriage certificate, genuine"),
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


def demo_project() -> Path:
    """The folder of the demo deployment: robot.toml, robots/, tasks/ and selectors/.

    An installed wheel carries it as ``stampless/demo_project/`` (setup.py copies it
    there); a source checkout (an editable install) has it at the top of the repository.
    """
    package = Path(__file__).resolve().parent
    for folder in (package / "demo_project", package.parent):
        if (folder / "robot.toml").is_file() and all(
            (folder / p).is_dir() for p in DEPLOYMENT_PARTS
        ):
            return folder
    raise ConfigError(
        f"The demo deployment is missing from this installation ({package / 'demo_project'}); "
        "reinstall stampless from its wheel ('pip install --force-reinstall stampless')."
    )


def copy_deployment(source: Path, run_dir: Path, issuer_key: str) -> Path:
    """Copy the deployment at ``source`` into ``run_dir``, pointed at the run; its robot.toml.

    The copy keeps its state in ``run_dir`` itself (``project.var_dir = "."``) and trusts
    the demo's e-licence issuer, so every command given ``--config`` of it reaches what
    the run left. Its URLs stay those of ``stampless fixtures serve`` on its default ports.
    """
    for part, pattern in DEPLOYMENT_PARTS.items():
        (run_dir / part).mkdir(parents=True, exist_ok=True)
        for file in sorted((source / part).glob(pattern)):
            shutil.copy2(file, run_dir / part / file.name)
    text = (source / "robot.toml").read_text(encoding="utf-8")
    text, found = re.subn(
        r"(?m)^var_dir\s*=.*$",
        'var_dir = "."    # this run\'s folder holds its state',
        text,
        count=1,
    )
    if not found:
        raise ConfigError(f"{source / 'robot.toml'}: [project] var_dir is missing; add it.")
    header = (
        f"# Written by `stampless demo` at {time.strftime('%Y-%m-%d %H:%M:%S')}: the demo's\n"
        "# deployment, whose queue, review store, evidence, outbox and audit chain are in this\n"
        "# folder. Use it with `stampless --config THIS_FILE ...`.\n\n"
    )
    issuer = (
        f"\n# The e-licence issuer of this run (its key was made for the demo).\n"
        f'[issuers.{DEMO_ISSUER}]\npublic_key = "{issuer_key}"\ntypes = ["business_license"]\n'
    )
    path = run_dir / "robot.toml"
    write_atomic(path, header + text + issuer)
    return path


def demo_config(config_path: Path, run_dir: Path, urls: dict[str, str], project: Config) -> Config:
    """The run's configuration on this run's ports, with the project's browser settings."""
    config = load_config(config_path)
    overrides: dict[str, object] = {
        "project.var_dir": str(run_dir),
        "browser": project.browser.model_dump(mode="python"),
    }
    for system, url in urls.items():
        if system in config.systems:
            overrides[f"systems.{system}.url"] = url
    return config.with_overrides(overrides)


def link_latest(run_dir: Path) -> Path:
    """Point ``<var>/demo/latest`` at ``run_dir`` (replaced atomically); the link's path."""
    latest = run_dir.parent / LATEST
    temporary = run_dir.parent / f".{LATEST}-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(run_dir.name, target_is_directory=True)
    temporary.replace(latest)
    return latest


def _add_reviewer(config: Config) -> str:
    """A reviewer account for trying the console on this run; its password."""
    from stampless.review.users import Role, UserStore

    password = secrets.token_urlsafe(9)
    UserStore.from_config(config).add(DEMO_REVIEWER, password, Role.reviewer, replace=True)
    return password


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


HALL_APPLICATIONS = 3  # the second one carries a confidential record (fixtures' pattern)


def run_hall_loop(config: Config, hall_url: str, workers: int) -> list[HallApplication]:
    """Applications appear in the hall; harvest, verify, push; what the hall then holds."""
    import httpx

    from stampless.queue import open_queue
    from stampless.scheduler import Daemon
    from stampless.signing import ensure_dev_key

    def hall(body: dict[str, object] | None = None) -> list[dict[str, Any]]:
        if body is None:
            return list(httpx.get(hall_url + "/_fixture/hall", timeout=30).json())
        httpx.post(hall_url + "/_fixture/hall", json=body, timeout=30).raise_for_status()
        return []

    signer = ensure_dev_key(config)
    hall({"clear": True})
    hall({"add": 1, "ago_s": 20, "exempt": True})  # its marriage record is fetched
    hall({"add": HALL_APPLICATIONS - 1, "ago_s": 20})
    queue = open_queue(config)
    daemon = Daemon(config, queue=queue, signer=signer, http=False)
    logger.info("the service hall: {} applications; harvesting", HALL_APPLICATIONS)
    daemon.run_job("hall_harvest")
    asyncio.run(_drain(config, queue, signer, workers))
    daemon.run_job("push_outbox")
    states = {i.request_id: i for i in queue.list(limit=1000)}
    out = []
    for app in hall():
        materials = []
        for m in app["materials"]:
            rid = f"{app['app_id']}.{m['mid']}"
            item = states.get(rid)
            verdict = item.verdict.value if item is not None and item.verdict else None
            if item is not None and item.state.value == "review":
                verdict = VerdictKind.needs_review.value
            materials.append(HallMaterial(rid, m["doc_type"], verdict, m["decided_at"]))
        out.append(HallApplication(app["app_id"], materials))
    return out


async def _drain(config: Config, queue: Any, signer: Any, workers: int) -> None:
    from stampless.worker import WorkerOptions, WorkerPool

    options = WorkerOptions.from_config(config, workers=workers, until_empty=True, progress=False)
    async with Pipeline(config, signer=signer) as pipeline:
        await WorkerPool(config, queue, pipeline, options=options, signer=signer).run()


def write_summary(run: DemoRun, config_arg: str) -> Path:
    """A summary page linking each request's evidence report."""
    env = Environment(
        loader=PackageLoader("stampless", "templates"), autoescape=select_autoescape()
    )
    html = env.get_template("demo_summary.html.j2").render(
        run=run,
        rows=run.rows,
        next_steps=run.next_steps(config_arg, password=False),
        VerdictKind=VerdictKind,
        pushed=lambda epoch: time.strftime("%H:%M:%S", time.localtime(epoch)),
    )
    write_atomic(run.summary, html)
    return run.summary


def _new_run_dir(var_dir: Path) -> Path:
    run_dir = var_dir / "demo" / time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = run_dir.with_name(f"{run_dir.name.split('.')[0]}.{suffix}")
    run_dir.mkdir(parents=True)
    return run_dir


def run_demo(
    project: Config,
    *,
    difficulty: str = "normal",
    workers: int = 2,
    console_level: str = "INFO",
    config_arg: str | None = None,
) -> DemoRun:
    """Run the whole demo in a new folder under the project's ``var/demo/``.

    ``project`` is the configuration of the folder the demo runs in (its defaults when
    there is no robot.toml): its var folder and its browser settings. ``config_arg`` is
    how the summary page names the run's robot.toml in the commands it suggests.
    """
    started = time.monotonic()
    source = demo_project()
    run_dir = _new_run_dir(project.var_dir)
    scans_dir = run_dir / "scans"
    os.environ.update(fixture_env())  # the demo's service accounts (fixtures, not secrets)
    logger.info("rendering demo scans into {}", scans_dir)
    items = make_scans(scans_dir, difficulty)
    ecert_items, issuer_key = make_ecerts(run_dir / "ecerts", run_dir / "issuer-keys")
    items += ecert_items
    config_path = copy_deployment(source, run_dir, issuer_key)
    with FixtureProcess(
        args=["--seed", str(FIXTURE_SEED)], access_log=run_dir / "fixtures"
    ) as fixtures:
        logger.info("emulated department systems: {}", " ".join(fixtures.urls.values()))
        cfg = demo_config(config_path, run_dir, fixtures.urls, project)
        setup_logging(cfg, console_level=console_level)  # the run's JSON log in its folder
        rows = asyncio.run(_run_items(cfg, items, workers))
        hall = run_hall_loop(cfg, fixtures.urls["service_hall"], workers)
    run = DemoRun(
        rows=rows,
        run_dir=run_dir,
        config_path=config_path,
        summary=run_dir / "summary.html",
        seconds=time.monotonic() - started,
        reviewer_password=_add_reviewer(cfg),
        second_opinion=second_opinion(cfg.ocr),
        hall=hall,
    )
    link_latest(run_dir)
    write_summary(run, config_arg or str(config_path))
    return run
