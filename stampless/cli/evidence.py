"""``stampless evidence ls|show|verify|report|export``: the sealed evidence bundles."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stampless.cli._common import DEV_HELP, console, emit_json, emit_json_lines, get_config
from stampless.config import parse_duration
from stampless.errors import ExitCode, InputError

if TYPE_CHECKING:
    from stampless.signing import TrustedKeys

evidence_app = typer.Typer(help="Sealed evidence bundles: list, show, verify, report, export.")


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """A time: ISO date/time (UTC if no zone) or a duration ago (``30m``, ``2h``, ``7d``)."""
    text = text.strip()
    delta = parse_duration(text)
    if delta is not None:
        return (now or datetime.now(UTC)) - delta
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(
            f"--since {text!r} is not a time; give an ISO date such as 2026-11-21 or "
            "2026-11-21T08:00, or a duration ago such as 30m, 2h or 7d."
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _bundle_dir(id_or_path: str) -> Path:
    """A request id (looked up in the evidence folder) or a path to a bundle or zip."""
    from stampless.models import REQUEST_ID_PATTERN

    path = Path(id_or_path)
    if path.exists() and (path.is_file() or (path / "manifest.json").exists()):
        return path
    if REQUEST_ID_PATTERN.match(id_or_path) and ".." not in id_or_path:
        config = get_config(required=False)
        folder = config.evidence_dir / id_or_path
        if folder.is_dir():
            return folder
        partial = config.evidence_dir / f".{id_or_path}.partial"
        if partial.is_dir():
            raise InputError(
                f"The evidence of {id_or_path} is not sealed yet (still being gathered, or "
                "its worker died); wait for the request to finish."
            )
        raise InputError(
            f"No evidence bundle for {id_or_path} in {config.evidence_dir}; list them with "
            "'stampless evidence ls'."
        )
    raise InputError(f"{id_or_path} is neither a request id nor a bundle folder or zip.")


def _refuse_pruned(folder: Path) -> None:
    """InputError naming the tombstone when ``folder``'s bundle was pruned."""
    from stampless.retention import TOMBSTONE, read_tombstone

    tomb = read_tombstone(folder)
    if tomb is not None:
        raise InputError(
            f"The evidence of {folder.name} was removed at {tomb.get('removed_at')} "
            f"({tomb.get('reason')}); {folder / TOMBSTONE} says what it held, and "
            f"'stampless evidence verify {folder.name}' checks it."
        )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@evidence_app.command("ls")
def ls_cmd(
    verdict: Annotated[
        str | None, typer.Option("--verdict", help="Only this verdict (e.g. mismatch).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only bundles finished since (ISO time or 2h, 7d)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per bundle.")] = False,
) -> None:
    """List sealed bundles, newest first (reads verdict.json; does not hash files)."""
    from rich.table import Table

    from stampless.evidence import list_bundles

    config = get_config(required=False)
    cutoff = parse_since(since) if since else None
    rows = [
        b
        for b in list_bundles(config.evidence_dir)
        if (verdict is None or b.verdict == verdict)
        and (cutoff is None or (b.finished_at is not None and b.finished_at >= cutoff))
    ]
    if as_json:
        emit_json_lines(
            {
                "request_id": b.request_id,
                "type": b.type,
                "verdict": b.verdict,
                "finished_at": b.finished_at.isoformat() if b.finished_at else None,
                "size": b.size,
                "path": str(b.path),
            }
            for b in rows
        )
        return
    table = Table(title=f"Evidence in {config.evidence_dir}", title_justify="left")
    for col in ("id", "type", "verdict", "finished", "size"):
        table.add_column(col, justify="right" if col == "size" else "left")
    colours = {"verified": "green", "mismatch": "red", "not_found": "red", "needs_review": "yellow"}
    for b in rows:
        v = b.verdict or "?"
        table.add_row(
            b.request_id,
            b.type or "?",
            f"[{colours.get(v, 'white')}]{v}[/]",
            b.finished_at.strftime("%Y-%m-%d %H:%M:%S") if b.finished_at else "?",
            _size(b.size),
        )
    console.print(table)
    console.print(f"{len(rows)} bundle(s)")


@evidence_app.command("show")
def show_cmd(
    request: Annotated[str, typer.Argument(help="Request id or bundle folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """A readable summary of one bundle: verdict, fields, files, signature (nothing is
    verified here: 'evidence verify' recomputes the hashes)."""
    import json

    from rich.table import Table

    folder = _bundle_dir(request)
    if folder.is_file():
        raise InputError("'evidence show' reads a bundle folder; use 'evidence verify' for a zip.")
    _refuse_pruned(folder)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    verdict_file = folder / "verdict.json"
    verdict = json.loads(verdict_file.read_text(encoding="utf-8")) if verdict_file.exists() else {}
    if as_json:
        sig = manifest.get("signature") or {}
        emit_json(
            {
                "request_id": manifest.get("request_id"),
                "path": str(folder),
                "verdict": verdict or None,
                "started_at": manifest.get("started_at"),
                "finished_at": manifest.get("finished_at"),
                "stampless_version": manifest.get("stampless_version"),
                "files": [
                    {k: f.get(k) for k in ("name", "kind", "size", "sha256", "caption")}
                    for f in manifest.get("files", [])
                ],
                "meta": manifest.get("meta") or {},
                "signature": {"key_id": sig.get("key_id"), "alg": sig.get("alg")},
            }
        )
        return
    console.print(f"[bold]{manifest.get('request_id')}[/]  {folder}")
    v = verdict.get("verdict", "?")
    console.print(
        f"verdict [bold]{v}[/]  type {verdict.get('type', '?')}  tier {verdict.get('tier', '?')}  "
        f"attempts {verdict.get('attempts', '?')}"
    )
    console.print(
        f"started {manifest.get('started_at')}  finished {manifest.get('finished_at')}  "
        f"stampless {manifest.get('stampless_version')}"
    )
    for reason in verdict.get("reasons", []):
        console.print(f"  - {reason}", markup=False, soft_wrap=True)
    if verdict.get("fields"):
        table = Table(title="Fields", title_justify="left")
        for col in ("field", "claimed", "ocr", "record", "status", "conf"):
            table.add_column(col)
        for f in verdict["fields"]:
            status = f.get("status", "?")
            style = "green" if status == "match" else "red" if status == "mismatch" else "yellow"
            table.add_row(
                f.get("name", "?"),
                str(f.get("claimed")),
                str(f.get("ocr")),
                str(f.get("record")),
                f"[{style}]{status}[/]",
                f"{float(f.get('confidence', 0)):.0%}",
            )
        console.print(table)
    files = Table(title="Files", title_justify="left")
    for col in ("file", "kind", "size", "caption"):
        files.add_column(col)
    for f in manifest.get("files", []):
        files.add_row(f.get("name"), f.get("kind"), _size(int(f.get("size", 0))), f.get("caption"))
    console.print(files)
    for key, value in (manifest.get("meta") or {}).items():
        console.print(f"{key}: {value}", markup=False, soft_wrap=True)
    sig = manifest.get("signature") or {}
    console.print(f"signed by key {sig.get('key_id', '?')} ({sig.get('alg', '?')})")


@evidence_app.command("verify")
def verify_cmd(
    target: Annotated[
        str,
        typer.Argument(help="Request id, bundle folder, exported zip, or an outbox verdict file."),
    ],
    pubkey: Annotated[
        list[str] | None,
        typer.Option(
            "--pubkey",
            "--key",
            help="Also trust this public key (base64, or a file of them); repeatable.",
        ),
    ] = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="Also trust this deployment's development key.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Recompute every hash and check the signatures of a bundle and its outbox verdict;
    exit 0 only when all holds and the signing key is trusted.

    Trusted keys: evidence.trusted_keys and evidence.keyring of robot.toml, and --pubkey;
    never a key found next to the evidence."""
    from stampless.evidence import verdict_problems, verify_bundle
    from stampless.signing import dev_public_key, read_public_keys, trusted_keys

    config = get_config(required=False)
    extra = [key for value in pubkey or [] for key in read_public_keys(value)]
    if dev and (key := dev_public_key(config)) is not None:
        extra.append(key)
    trusted = trusted_keys(config, extra)
    verdict, bundle = _verdict_and_bundle(target)
    if bundle is not None and bundle.is_dir() and not (bundle / "manifest.json").exists():
        _verify_pruned(bundle, verdict, trusted, as_json=as_json)
        return
    checked: list[str] = []
    report = None
    if bundle is not None:
        report = verify_bundle(bundle, trusted_keys=trusted, verdict=verdict)
        problems = report.problems
        checked.append(
            f"{report.files_checked} files match the manifest, signed by key {report.key_id}"
        )
        name = report.request_id
    else:
        assert verdict is not None
        problems = verdict_problems(verdict, trusted)
        name = verdict.stem
    if verdict is not None:
        checked.append(f"the verdict {verdict.name} is signed and agrees")
    if as_json:
        emit_json(
            {
                "ok": not problems,
                "request_id": name,
                "bundle": None if bundle is None else str(bundle),
                "verdict": None if verdict is None else str(verdict),
                "files_checked": 0 if report is None else report.files_checked,
                "key_id": None if report is None else report.key_id,
                "trusted_keys": len(trusted.fingerprints),
                "problems": [
                    {"kind": p.kind, "name": p.name, "detail": p.detail} for p in problems
                ],
                "pruned": None,
            }
        )
    elif not problems:
        console.print(f"OK: {name}: {'; '.join(checked)}.", markup=False, soft_wrap=True)
    else:
        for problem in problems:
            console.print(f"FAIL {problem}", markup=False, soft_wrap=True)
    if not problems:
        return
    if not trusted and not as_json:
        console.print(
            "No key is trusted here: pin the deployment's key in robot.toml "
            "([evidence] trusted_keys = [\"sha256:...\"], from 'stampless keys show') or "
            "pass --pubkey.",
            markup=False,
            soft_wrap=True,
        )
    # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which
    # turns typer.Exit into an ignored return value.
    raise SystemExit(int(ExitCode.not_verified))


def _verify_pruned(
    folder: Path, verdict: Path | None, trusted: TrustedKeys, *, as_json: bool
) -> None:
    """A pruned bundle: its tombstone is signed by a trusted key and names the bundle the
    outbox verdict was sealed with (exit 0), or not (exit 1)."""
    import json

    from stampless.evidence import verdict_problems
    from stampless.retention import read_tombstone, tombstone_problems

    tomb = read_tombstone(folder)
    if tomb is None:
        raise InputError(f"{folder} holds neither a sealed bundle nor a tombstone.")
    sealed_with = None
    problems: list[str] = []
    if verdict is not None:
        problems += [str(p) for p in verdict_problems(verdict, trusted)]
        sealed_with = json.loads(verdict.read_text(encoding="utf-8")).get("manifest_sha256")
    problems += [
        f"tombstone: {p}" for p in tombstone_problems(tomb, trusted, manifest_sha256=sealed_with)
    ]
    summary = (
        f"{folder.name}: its evidence was removed at {tomb.get('removed_at')} "
        f"({tomb.get('reason')}); the signed tombstone names its {len(tomb.get('files', []))} "
        "files"
    )
    if as_json:
        emit_json(
            {
                "ok": not problems,
                "request_id": folder.name,
                "bundle": str(folder),
                "verdict": None if verdict is None else str(verdict),
                "files_checked": 0,
                "key_id": (tomb.get("signature") or {}).get("key_id"),
                "trusted_keys": len(trusted.fingerprints),
                "problems": [{"kind": "tombstone", "name": None, "detail": p} for p in problems],
                "pruned": {k: tomb.get(k) for k in ("removed_at", "reason", "manifest_sha256")},
            }
        )
    elif not problems:
        console.print(f"PRUNED {summary}; it and the verdict hold.", markup=False, soft_wrap=True)
    else:
        for problem in problems:
            console.print(f"FAIL {problem}", markup=False, soft_wrap=True)
    if problems:
        raise SystemExit(int(ExitCode.not_verified))


def _verdict_and_bundle(target: str) -> tuple[Path | None, Path | None]:
    """The outbox verdict file and the bundle a ``verify`` target names (either may be None).

    A request id gives its bundle and, when there is one, its outbox verdict; a verdict
    file gives itself and, when it is here, its request's bundle.
    """
    path = Path(target)
    if path.is_file() and path.suffix == ".json":
        config = get_config(required=False)
        bundle = config.evidence_dir / path.stem
        return path, bundle if (bundle / "manifest.json").is_file() else None
    bundle = _bundle_dir(target)
    if bundle.is_file():
        return None, bundle  # an exported zip: its verdict is checked on its own
    verdict = get_config(required=False).outbox_dir / f"{bundle.name}.json"
    return (verdict if verdict.is_file() else None), bundle


@evidence_app.command("report")
def report_cmd(
    request: Annotated[str, typer.Argument(help="Request id or bundle folder.")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the HTML.")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open it in a browser.")] = False,
) -> None:
    """Write a self-contained HTML report of one bundle (images embedded)."""
    from stampless.report import write_report

    folder = _bundle_dir(request)
    if folder.is_file():
        raise InputError("'evidence report' reads a bundle folder, not a zip; unzip it first.")
    _refuse_pruned(folder)
    config = get_config(required=False)
    target = out or (config.var_dir / "reports" / f"{folder.name}.html")
    path = write_report(folder, target, audit_dir=config.audit_dir)
    console.print(str(path), markup=False, soft_wrap=True)
    if open_:
        _open_in_browser(path, config.browser.executable_path)


def _open_in_browser(path: Path, executable: str | None) -> None:
    import os
    import shutil
    import subprocess

    uri = path.resolve().as_uri()
    # Chromium refuses to run as root without --no-sandbox (containers, CI machines).
    chromium_flags = ["--no-sandbox"] if os.geteuid() == 0 else []
    chromium = executable or shutil.which("chromium") or shutil.which("chromium-browser")
    xdg = shutil.which("xdg-open")
    if xdg:
        command = [xdg, uri]
    elif chromium:
        command = [chromium, *chromium_flags, uri]
    else:
        console.print("No browser found to open it; open the file above yourself.")
        return
    subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@evidence_app.command("export")
def export_cmd(
    request: Annotated[str, typer.Argument(help="Request id or bundle folder.")],
    out: Annotated[Path, typer.Argument(help="The zip file to write.")],
) -> None:
    """Zip a bundle for someone else, who can check it with 'stampless evidence verify OUT.zip'."""
    from stampless.evidence import export_bundle

    folder = _bundle_dir(request)
    if folder.is_file():
        raise InputError(f"{folder} is already a file; export takes a request id or folder.")
    path = export_bundle(folder, out)
    console.print(str(path), markup=False, soft_wrap=True)


@evidence_app.command("prune")
def prune_cmd(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Remove bundles finished longer ago than this (90d, 12w); default: "
            "evidence.retention of robot.toml.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be removed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one per bundle.")] = False,
    dev: Annotated[bool, typer.Option("--dev", help=DEV_HELP)] = False,
) -> None:
    """Remove sealed bundles past their retention (evidence.retention), leaving a signed
    tombstone in each folder and an audit entry; the audit chain and the outbox verdicts
    stay verifiable.

    Bundles whose request still waits for a reviewer are kept. Signs with the configured
    key (evidence.signing_key), or with --dev the development key."""
    from stampless.retention import prune
    from stampless.signing import production_signer

    config = get_config()
    text = older_than or config.evidence.retention
    if text is None:
        raise InputError(
            'No retention is set; add retention = "90d" under [evidence] in robot.toml, or '
            "pass --older-than 90d."
        )
    delta = parse_duration(text)
    if delta is None:
        raise InputError(f"--older-than {text!r} is not a duration; give one such as 90d or 12w.")
    signer = None if dry_run else production_signer(config, dev=dev)
    pruned = prune(config, signer, older_than=delta, reason=f"retention {text}", dry_run=dry_run)
    if as_json:
        emit_json_lines(p.as_dict() for p in pruned)
        return
    verb = "would remove" if dry_run else "removed"
    for p in pruned:
        when = p.finished_at.strftime("%Y-%m-%d") if p.finished_at else "?"
        console.print(
            f"{verb} {p.request_id} ({p.verdict or '?'}, finished {when}, {_size(p.size)})",
            markup=False,
        )
    freed = sum(p.size for p in pruned)
    console.print(
        f"{len(pruned)} bundle(s) older than {text} {verb}, {_size(freed)}"
        + ("" if dry_run else "; each folder holds its signed tombstone.json"),
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(evidence_app, name="evidence")
