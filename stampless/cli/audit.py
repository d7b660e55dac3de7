"""``stampless audit verify|checkpoint``: the audit chain and the checkpoints of its end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stampless.cli._common import DEV_HELP, console, emit_json, get_config
from stampless.errors import ExitCode, InputError

if TYPE_CHECKING:
    from stampless.config import Config

audit_app = typer.Typer(help="The audit chain (one hashed JSON line per step).")


def _fail(message: str, advice: str, *, as_json: bool = False, **report: Any) -> None:
    if as_json:
        emit_json({"ok": False, **report, "broken": message, "advice": advice})
    else:
        console.print(f"BROKEN {message}", markup=False, soft_wrap=True)
        console.print(advice, markup=False, soft_wrap=True)
    # SystemExit, not typer.Exit: main() runs click with standalone_mode=False, which
    # turns typer.Exit into an ignored return value.
    raise SystemExit(int(ExitCode.not_verified))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    from stampless.boundary import parse_json, read_bounded

    doc = parse_json(read_bounded(path, max_bytes=64 * 1024, what="checkpoint"), source=str(path))
    if not isinstance(doc, dict) or doc.get("kind") != "audit_checkpoint":
        raise InputError(f"{path} is not an audit checkpoint (kind audit_checkpoint).")
    if not isinstance(doc.get("seq"), int) or not isinstance(doc.get("sha256"), str):
        raise InputError(f"{path}: a checkpoint names a seq and a sha256.")
    return doc


@audit_app.command("verify")
def verify_cmd(
    since: Annotated[
        str | None, typer.Option("--since", help="Check only from this time (ISO or 2h, 7d).")
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option(
            "--against",
            help="A checkpoint held elsewhere (a copy the webhook received): the chain must "
            "still hold the line it records.",
        ),
    ] = None,
    pubkey: Annotated[
        list[str] | None,
        typer.Option("--pubkey", help="Also trust this public key for the checkpoint."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Check that no audit line was removed, reordered or edited, and that the end of the
    chain is the one a checkpoint recorded; exit 0 only when intact. With ``[store]
    shared_dir`` every machine's chain in it is checked."""
    config = get_config(required=False)
    chains = config.audit_chains()
    if against is not None and len(chains) > 1:
        writer = _read_checkpoint(against).get("writer")
        if writer not in chains:
            raise InputError(
                f"{against} names no machine whose chain is in the shared folder "
                f"({', '.join(str(w) for w in chains)}); check the file."
            )
        chains = {writer: chains[writer]}
    summaries = [
        _verify_chain(writer, folder, config, since, against, pubkey, as_json)
        for writer, folder in chains.items()
    ]
    if as_json:
        if len(summaries) == 1:
            emit_json({"ok": True, **summaries[0], "broken": None, "advice": None})
        else:
            emit_json({"ok": True, "chains": summaries, "broken": None, "advice": None})
        return
    for summary in summaries:
        console.print(summary.pop("_line"), markup=False, soft_wrap=True)


def _verify_chain(
    writer: str | None,
    audit_dir: Path,
    config: Config,
    since: str | None,
    against: Path | None,
    pubkey: list[str] | None,
    as_json: bool,
) -> dict[str, Any]:
    """Verify one chain (and its newest checkpoint); exit at the first problem."""
    from stampless.audit import check_checkpoint, latest_checkpoint, verify_chain
    from stampless.cli.evidence import parse_since
    from stampless.signing import document_problems, read_public_keys, trusted_keys

    advice = (
        "Everything from there on cannot be trusted. Restore the audit files from a backup "
        "or investigate who changed them."
    )
    report = verify_chain(audit_dir, since=parse_since(since) if since else None)
    summary: dict[str, Any] = {
        **({"writer": writer} if writer else {}),
        "audit_dir": str(audit_dir),
        "lines": report.lines,
        "files": len(report.files),
        "last_seq": report.last_seq,
        "checkpoint": None,
    }
    machine = f"{writer}: " if writer else ""
    if not report.ok:
        _fail(
            f"{machine}{report.first_broken}",
            f"{report.lines} line(s) before it are intact. {advice}",
            as_json=as_json,
            **summary,
        )
    checkpoint = against or latest_checkpoint(config.outbox_dir, writer=writer)
    checked = ""
    if checkpoint is not None:
        doc = _read_checkpoint(checkpoint)
        extra = [key for value in pubkey or [] for key in read_public_keys(value)]
        trusted = trusted_keys(config, extra)
        # One held elsewhere must carry a trusted signature; the outbox's own newest is
        # used for what it is worth (whoever could cut the chain could remove it too).
        problems = document_problems(doc, trusted if against is not None else None)
        summary["checkpoint"] = {"name": checkpoint.name, "seq": doc["seq"]}
        if problems:
            _fail(
                f"{machine}{checkpoint.name}: {problems[0]}",
                "The checkpoint cannot be relied on; compare with a copy the webhook "
                "receiver holds, signed by a pinned key (--pubkey or evidence.trusted_keys).",
                as_json=as_json,
                **summary,
            )
        broken = check_checkpoint(audit_dir, doc)
        if broken is not None:
            _fail(f"{machine}{broken}", advice, as_json=as_json, **summary)
        checked = f"; it still holds seq {doc['seq']} as {checkpoint.name} recorded it"
    summary["_line"] = (
        f"OK: {report.lines} line(s) in {len(report.files)} file(s) of {audit_dir} "
        f"form one unbroken chain (last seq {report.last_seq}){checked}."
    )
    if as_json:
        del summary["_line"]
    return summary


@audit_app.command("checkpoint")
def checkpoint_cmd(
    dev: Annotated[bool, typer.Option("--dev", help=DEV_HELP)] = False,
) -> None:
    """Sign the chain's current end (seq and hash) and write it to the outbox, from where
    the webhook delivers it. The daemon does this on its own (job kind audit_checkpoint)."""
    from stampless.audit import latest_checkpoint, write_checkpoint
    from stampless.signing import production_signer

    config = get_config()
    path = write_checkpoint(
        config.audit_dir,
        config.outbox_dir,
        production_signer(config, dev=dev),
        writer=config.audit_writer,
    )
    if path is None:
        newest = latest_checkpoint(config.outbox_dir, writer=config.audit_writer)
        where = f" ({newest.name})" if newest is not None else ""
        console.print(f"Nothing new since the last checkpoint{where}.", markup=False)
        return
    doc = json.loads(path.read_text(encoding="utf-8"))
    console.print(f"checkpoint seq {doc['seq']} sha256 {doc['sha256']}", markup=False)
    console.print(str(path), markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
