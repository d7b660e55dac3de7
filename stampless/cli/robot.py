"""``stampless fetch``, ``stampless selectors report`` and ``stampless init``.

``fetch`` downloads the archived scan of a record into a sealed evidence bundle;
``selectors report`` lists selectors whose first choice stopped matching (drift);
``init`` creates a new robot project from the template in stampless/templates/init/.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stampless.cli._common import console, get_config
from stampless.errors import InputError

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.signing import Signer

selectors_app = typer.Typer(help="Selector maps: what changed on the department pages.")

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates" / "init"
TEMPLATE_SUFFIX = ".tmpl"


def register(app: typer.Typer) -> None:
    app.command("fetch")(fetch)
    app.command("init")(init)
    selectors_app.command("report")(selectors_report)
    app.add_typer(selectors_app, name="selectors")


def fetch(
    key: Annotated[str, typer.Argument(help="The record's key (certificate number, code, ID).")],
    doc_type: Annotated[str, typer.Option("--type", help="Document type from robot.toml.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Evidence folder (default: evidence.path).")
    ] = None,
    account: Annotated[str | None, typer.Option("--account", help="Service account.")] = None,
) -> None:
    """Fetch the archived document of KEY from its department system, with evidence."""
    from stampless.checksums import mask_id
    from stampless.doctype import load_doctype
    from stampless.evidence import EvidenceBundle
    from stampless.models import utcnow
    from stampless.robot import RobotRuntime
    from stampless.robot._evidence import sha256_file

    config = get_config()
    doctype = load_doctype(config, doc_type)
    if doctype.system is None:
        raise InputError(
            f"Document type {doc_type!r} has no department system to fetch from; "
            "set 'system' for it in robot.toml."
        )
    request_id = f"FETCH-{doc_type}-{utcnow().strftime('%Y%m%dT%H%M%S%f')}"
    evidence_dir = out if out is not None else config.evidence_dir
    bundle = EvidenceBundle.open(evidence_dir, request_id)
    bundle.set_meta(type=doc_type, key=mask_id(key), purpose="fetch")

    async def run() -> Path:
        async with RobotRuntime(config) as runtime:
            return await runtime.fetch(doctype.system or "", key, account=account, evidence=bundle)

    stored = asyncio.run(run())
    digest = sha256_file(stored)
    name = stored.relative_to(bundle.work_dir).as_posix()
    sealed = bundle.seal(
        _signer(config),
        verdict={"fetched": name, "sha256": digest, "type": doc_type, "key": mask_id(key)},
    )
    console.print(f"{sealed.path / name}", soft_wrap=True, markup=False)
    console.print(f"sha256 {digest}", soft_wrap=True)
    console.print(
        f"evidence {sealed.path} (manifest sha256 {sealed.manifest_sha256})",
        soft_wrap=True,
        markup=False,
    )


def _signer(config: Config) -> Signer:
    from stampless.signing import ensure_dev_key, load_signer

    if config.evidence.signing_key:
        return load_signer(config)
    return ensure_dev_key(config)


def selectors_report() -> None:
    """List selectors whose first choice failed (drift), newest first; always exits 0."""
    from rich.table import Table
    from rich.text import Text

    from stampless.robot import drift_summary

    config = get_config(required=False)
    rows = drift_summary(config.var_dir)
    if not rows:
        console.print(f"No selector drift recorded in {config.var_dir / 'selectors'}.")
        return
    table = Table(title="Selectors whose first choice failed")
    for column in ("system", "selector", "times", "fallback used", "last seen"):
        table.add_column(column)
    for row in rows:
        # Text, not markup: selectors are full of [brackets] that rich would swallow.
        table.add_row(
            Text(row.system),
            Text(row.selector),
            str(row.times),
            Text(row.fallback or "(none matched)"),
            row.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


def init(
    directory: Annotated[Path, typer.Argument(help="Folder for the new project (new or empty).")],
) -> None:
    """Create a robot project: robot.toml, robots/, selectors/, tasks/, tests/, README."""
    written = create_project(directory)
    console.print(f"Created a stampless project in {directory} ({len(written)} files).")
    console.print("Next: read its README.md, then run 'stampless doctor' inside it.")


def create_project(directory: Path) -> list[Path]:
    """Copy the project template into ``directory``; InputError if it is not empty."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise InputError(f"{directory} is not an empty folder; choose a new or empty one.")
    if not TEMPLATE_DIR.is_dir():
        raise InputError(
            f"The project template is missing from {TEMPLATE_DIR}; reinstall stampless."
        )
    written: list[Path] = []
    for source in sorted(TEMPLATE_DIR.rglob("*")):
        if source.is_dir() or "__pycache__" in source.parts:
            continue
        relative = source.relative_to(TEMPLATE_DIR)
        if relative.name.endswith(TEMPLATE_SUFFIX):
            relative = relative.with_name(relative.name[: -len(TEMPLATE_SUFFIX)])
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        target.chmod(0o644)
        written.append(target)
    return written
