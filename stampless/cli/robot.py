"""``stampless lookup``, ``fetch``, ``selectors report`` and ``init``.

``lookup`` runs a robot's lookup alone and prints the record, with its screenshots in a
sealed evidence bundle (what a robot author runs first); ``fetch`` downloads the
archived scan of a record into a sealed evidence bundle; ``selectors report`` lists
selectors whose first choice stopped matching (drift); ``init`` creates a new robot
project from the template in stampless/templates/init/.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from stampless.cli._common import DEV_HELP, console, emit_json, exit_with, get_config
from stampless.errors import BusinessError, ExitCode, InputError, StamplessError

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.evidence import EvidenceBundle, SealedBundle

selectors_app = typer.Typer(help="Selector maps: what changed on the department pages.")

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "init"
TEMPLATE_SUFFIX = ".tmpl"


def register(app: typer.Typer) -> None:
    app.command("lookup")(lookup)
    app.command("fetch")(fetch)
    app.command("init")(init)
    selectors_app.command("report")(selectors_report)
    app.add_typer(selectors_app, name="selectors")


KeyArgument = Annotated[
    str, typer.Argument(help="The record's key (certificate number, code, ID).")
]
TypeOption = Annotated[str, typer.Option("--type", help="Document type from robot.toml.")]
OutOption = Annotated[
    Path | None, typer.Option("--out", help="Evidence folder (default: evidence.path).")
]
AccountOption = Annotated[
    str | None, typer.Option("--account", help="Service account (default: the first usable).")
]
DevOption = Annotated[bool, typer.Option("--dev", help=DEV_HELP)]


def _system_of(config: Config, doc_type: str, doing: str) -> str:
    from stampless.doctype import load_doctype

    system = load_doctype(config, doc_type).system
    if system is None:
        raise InputError(
            f"Document type {doc_type!r} has no department system to {doing}; "
            "set 'system' for it in robot.toml."
        )
    return system


def _open_bundle(
    config: Config, purpose: str, doc_type: str, key: str, out: Path | None
) -> EvidenceBundle:
    from stampless.checksums import mask_id
    from stampless.evidence import EvidenceBundle
    from stampless.models import utcnow

    request_id = f"{purpose.upper()}-{doc_type}-{utcnow().strftime('%Y%m%dT%H%M%S%f')}"
    bundle = EvidenceBundle.open(out if out is not None else config.evidence_dir, request_id)
    bundle.set_meta(type=doc_type, key=mask_id(key), purpose=purpose)
    return bundle


def lookup(
    key: KeyArgument,
    doc_type: TypeOption,
    account: AccountOption = None,
    out: OutOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    dev: DevOption = False,
) -> None:
    """Run the robot's lookup of KEY alone: print the record, keep its screenshots.

    The record, the screenshots the robot took (and on failure the failure screenshot
    and trace) go into a sealed evidence bundle LOOKUP-<type>-<time>, signed: without a
    configured signing key, pass --dev. Exit 0 found, 1 no such record (or revoked),
    2 bad input, 4 the system or the robot failed.
    """
    from stampless.checksums import mask_id
    from stampless.doctype import load_doctype
    from stampless.models import Record
    from stampless.robot import RobotRuntime
    from stampless.signing import production_signer

    config = get_config()
    system = _system_of(config, doc_type, "look it up in")
    runtime = RobotRuntime(config)
    account = runtime.account_for(system, account)  # a wrong account writes nothing
    signer = production_signer(config, dev=dev)  # no key, no start
    bundle = _open_bundle(config, "lookup", doc_type, key, out)

    async def run() -> Record:
        async with runtime:
            return await runtime.lookup(system, key, account=account, evidence=bundle)

    outcome: dict[str, object] = {"type": doc_type, "key": mask_id(key), "system": system}
    record: Record | None = None
    failure: StamplessError | None = None
    try:
        found = asyncio.run(run())
        load_doctype(config, doc_type).check_record(found, system)
        record, outcome["found"] = found, True
    except BusinessError as exc:
        failure, outcome["found"], outcome["outcome"] = exc, False, str(exc)
    except StamplessError as exc:
        # Seal what was gathered (the failure screenshot and trace): that is what the
        # robot's author needs to see next.
        failure, outcome["error"] = exc, str(exc)
    sealed = bundle.seal(signer, verdict=outcome)
    screenshots = _files_of_kind(sealed, "screenshot")
    if as_json:
        emit_json(
            {
                **outcome,
                "record": None if record is None else record.model_dump(mode="json"),
                "evidence": str(sealed.path),
                "manifest_sha256": sealed.manifest_sha256,
                "screenshots": screenshots,
            }
        )
    else:
        if record is not None:
            table = Table(title=f"{system} record {mask_id(key)} ({record.status})")
            table.add_column("field")
            table.add_column("value")
            for name, value in record.fields.items():
                table.add_row(Text(name), Text(value))
            console.print(table)
        elif isinstance(failure, BusinessError):
            console.print(str(failure), markup=False, soft_wrap=True)
        for name in screenshots:
            console.print(f"screenshot {sealed.path / name}", markup=False, soft_wrap=True)
        _print_evidence(sealed)
    if isinstance(failure, BusinessError):
        exit_with(ExitCode.not_verified)
    if failure is not None:
        raise failure


def _files_of_kind(sealed: SealedBundle, kind: str) -> list[str]:
    manifest = json.loads((sealed.path / "manifest.json").read_text(encoding="utf-8"))
    return [f["name"] for f in manifest["files"] if f["kind"] == kind]


def _print_evidence(sealed: SealedBundle) -> None:
    console.print(
        f"evidence {sealed.path} (manifest sha256 {sealed.manifest_sha256})",
        soft_wrap=True,
        markup=False,
    )


def fetch(
    key: KeyArgument,
    doc_type: TypeOption,
    out: OutOption = None,
    account: AccountOption = None,
    dev: DevOption = False,
) -> None:
    """Fetch the archived document of KEY from its department system, with evidence.

    A robot without ``fetch`` is a usage error (exit 2): nothing is started or written.
    The bundle is signed: without a configured signing key, pass --dev.
    """
    from stampless.checksums import mask_id
    from stampless.robot import RobotRuntime
    from stampless.robot._evidence import sha256_file
    from stampless.signing import production_signer

    config = get_config()
    system = _system_of(config, doc_type, "fetch from")
    runtime = RobotRuntime(config)
    runtime.require_fetch(system)  # before any bundle, browser or login
    account = runtime.account_for(system, account)
    signer = production_signer(config, dev=dev)  # no key, no start
    bundle = _open_bundle(config, "fetch", doc_type, key, out)

    async def run() -> Path:
        async with runtime:
            return await runtime.fetch(system, key, account=account, evidence=bundle)

    stored = asyncio.run(run())
    digest = sha256_file(stored)
    name = stored.relative_to(bundle.work_dir).as_posix()
    sealed = bundle.seal(
        signer,
        verdict={"fetched": name, "sha256": digest, "type": doc_type, "key": mask_id(key)},
    )
    console.print(f"{sealed.path / name}", soft_wrap=True, markup=False)
    console.print(f"sha256 {digest}", soft_wrap=True)
    _print_evidence(sealed)


def selectors_report() -> None:
    """List selectors whose first choice failed (drift), newest first, each with the
    first choice proposed for it (see 'stampless selectors proposals'); always exits 0."""
    from stampless.robot import drift_summary
    from stampless.robot._repair import read_proposals

    config = get_config(required=False)
    rows = drift_summary(config.var_dir)
    if not rows:
        console.print(f"No selector drift recorded in {config.var_dir / 'selectors'}.")
        return
    proposed = {(p.system, p.selector): p for p in read_proposals(config.var_dir)}
    table = Table(title="Selectors whose first choice failed")
    for column in (
        "system",
        "selector",
        "times",
        "fallback used",
        "proposed first choice",
        "last seen",
    ):
        table.add_column(column)
    for row in rows:
        proposal = proposed.get((row.system, row.selector))
        suggestion = "(none yet)"
        if proposal is not None and proposal.choice is not None:
            suggestion = proposal.choice + ("" if proposal.certain else " (uncertain)")
        # Text, not markup: selectors are full of [brackets] that rich would swallow.
        table.add_row(
            Text(row.system),
            Text(row.selector),
            str(row.times),
            Text(row.fallback or "(none matched)"),
            Text(suggestion),
            row.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    console.print(
        "Approve a proposed choice with 'stampless selectors approve SYSTEM NAME'.", markup=False
    )


def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new project (new or empty).")],
) -> None:
    """Create a robot project: robot.toml, robots/, selectors/, tasks/, tests/, README."""
    written = create_project(directory)
    console.print(f"Created a stampless project in {directory} ({len(written)} files).")
    if not (Path(directory) / EXAMPLE_REQUEST).is_file():
        console.print(
            f"Its example scan could not be drawn (fonts missing: see 'stampless doctor'); "
            f"{EXAMPLE_REQUEST} is not there, the rest of the project is.",
            markup=False,
        )
    console.print(f"Next: cd {directory}, then follow its README.md.", markup=False)


def create_project(directory: Path) -> list[Path]:
    """Copy the project template into ``directory``; InputError if it is not empty."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError(f"{directory} is not an empty folder; choose a new or empty one.")
    if not TEMPLATE_DIR.is_dir():
        raise InputError(
            f"The project template is missing from {TEMPLATE_DIR}; reinstall stampless."
        )
    written = write_example(directory)
    key = (
        json.loads(written[-1].read_text(encoding="utf-8"))["claim"]["credit_code"]
        if written
        else (EXAMPLE_FALLBACK_KEY)
    )
    for source in sorted(TEMPLATE_DIR.rglob("*")):
        if source.is_dir() or "__pycache__" in source.parts:
            continue
        relative = source.relative_to(TEMPLATE_DIR)
        if relative.name.endswith(TEMPLATE_SUFFIX):
            relative = relative.with_name(relative.name[: -len(TEMPLATE_SUFFIX)])
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        if relative.suffix == ".md":
            data = data.replace(EXAMPLE_KEY_MARK, key.encode("ascii"))
        target.write_bytes(data)
        target.chmod(0o644)
        written.append(target)
    return written


# The README's commands look up the example's record; the key is filled in at init.
EXAMPLE_KEY_MARK = b"@EXAMPLE_KEY@"
EXAMPLE_FALLBACK_KEY = "91110105256903617P"  # a valid record of the emulated registry
EXAMPLE_REQUEST = "requests/example.request.json"


def write_example(directory: Path) -> list[Path]:
    """A genuine licence scan of the emulated registry and a request for it, in requests/.

    Drawn by the scan generator (seed 7, as ``stampless fixtures serve`` runs), so
    ``stampless verify requests/example.request.json`` works on the emulated system.
    Returns the scan and the request, or nothing when the scan cannot be drawn (fonts).
    """
    import tempfile

    from stampless.fixtures.scans import generate

    target = directory / EXAMPLE_REQUEST
    with tempfile.TemporaryDirectory(prefix=".stampless-init-") as tmp:
        try:
            scan = generate(Path(tmp), "business_license", 1, 7, "easy", 0.0, 0.0, records_seed=7)[
                0
            ]
        except StamplessError:
            return []
        original = json.loads(scan.with_suffix(".request.json").read_text(encoding="utf-8"))
        claim = {
            k: original["claim"][k] for k in ("credit_code", "company_name", "legal_representative")
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        image = target.parent / "example.jpg"
        image.write_bytes(scan.read_bytes())
    request = {"id": "EXAMPLE-0001", "type": "company_licence", "claim": claim, "scan": image.name}
    target.write_text(json.dumps(request, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return [image, target]
