"""The outbox: one verdict per request, written atomically and never rewritten.

The hall's own system reads ``<outbox_dir>/<request_id>.json``. A file appears whole or
not at all (temp file in the same folder, fsync, rename, fsync of the folder), so a
reader never sees half a verdict and a crash never leaves one. Writing the same verdict
again is a no-op, which makes the write idempotent for a worker that re-runs after a
crash; writing a *different* verdict under the same name raises :class:`OutboxConflict`,
because a delivered verdict must never change. A later re-check writes a new file whose
verdict names the first one in ``supersedes`` (see :func:`recheck_name`).

Each new file's name is also appended to a journal, ``<outbox_dir>/.journal/<UTC
day>.log`` (one line per file, one ``O_APPEND`` write), so that delivery reads what is
new since its last pass instead of listing an outbox of millions of files. The journal
is a hint, not the record: a crash between the rename and the append leaves a verdict
unjournaled, which delivery's full scan (at daemon start-up) finds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from stampless._files import write_atomic
from stampless.errors import StamplessError
from stampless.models import DocumentSignature, Verdict, VerdictKind, check_request_id, utcnow

if TYPE_CHECKING:
    from stampless.signing import Signer

# needs_review is not final: it goes to the review store, and the reviewer's decision is
# what reaches the outbox later under the same request id.
FINAL_VERDICTS = frozenset(
    {VerdictKind.verified, VerdictKind.mismatch, VerdictKind.not_found, VerdictKind.error}
)


class OutboxConflict(StamplessError):
    """A different verdict already exists in the outbox under this name."""


def verdict_bytes(verdict: Verdict) -> bytes:
    """The exact bytes written for a verdict (stable, so rewrites can be compared)."""
    return (verdict.model_dump_json(indent=2) + "\n").encode("utf-8")


def outbox_path(outbox_dir: Path, name: str) -> Path:
    """The outbox file of a request id (or other verdict name), checked for path tricks."""
    try:
        check_request_id(name)
    except ValueError as exc:
        raise OutboxConflict(f"Outbox name {name!r} is not a safe file name: {exc}.") from exc
    return Path(outbox_dir) / f"{name}.json"


def sign_verdict(verdict: Verdict, signer: Signer) -> Verdict:
    """``verdict`` with the deployment's signature over everything else in it.

    With the manifest hash inside, the signed verdict ties the answer to exactly its
    evidence, so a hall (or ``stampless evidence verify``) can check a verdict file on
    its own: an edited verdict, verified turned to mismatch or back, no longer verifies.
    """
    from stampless.signing import sign_document

    unsigned = verdict.model_copy(update={"signature": None})
    block = sign_document(signer, unsigned.model_dump(mode="json"))
    return unsigned.model_copy(update={"signature": DocumentSignature.model_validate(block)})


def write_verdict(outbox_dir: Path, verdict: Verdict, *, name: str | None = None) -> Path:
    """Write ``verdict`` to ``<outbox_dir>/<name or request_id>.json`` atomically, once.

    It writes the verdict as given: production writers sign it first through
    :func:`publish`. Returns the path. If the file already holds exactly these
    bytes, returns quietly (idempotent: Ed25519 signatures are deterministic). If it
    holds anything else, raises :class:`OutboxConflict` and leaves the file alone.
    ``needs_review`` verdicts are refused: they are not final.
    """
    if verdict.verdict not in FINAL_VERDICTS:
        raise OutboxConflict(
            f"Verdict {verdict.verdict.value!r} for {verdict.request_id} is not final; "
            "send it to the review store instead of the outbox."
        )
    return write_once(outbox_dir, name or verdict.request_id, verdict_bytes(verdict))


@dataclass(frozen=True)
class Published:
    """What the outbox holds for a verdict after :func:`publish`."""

    verdict: Verdict  # the signed verdict written, or, on a conflict, the one found there
    path: Path
    conflict: OutboxConflict | None = None  # a different verdict was there first


def publish(outbox_dir: Path, verdict: Verdict, *, signer: Signer | None) -> Published:
    """Sign ``verdict`` and write it to the outbox once: the one way a verdict is delivered.

    The worker, ``stampless verify`` and the review console all publish through here.
    Writing the same verdict again returns it (a re-run after a crash). When the outbox
    already holds a different verdict under the request id, nothing is written and the
    result carries that verdict and the :class:`OutboxConflict`; each caller decides
    what a conflict means for it (the worker keeps the first verdict of a racing lease
    holder, ``verify`` reports it, a reviewer's retry after a crash adopts its own).
    """
    if signer is not None:
        verdict = sign_verdict(verdict, signer)
    try:
        return Published(verdict, write_verdict(outbox_dir, verdict))
    except OutboxConflict as exc:
        found = read_verdict(outbox_dir, verdict.request_id)
        if found is None or verdict.verdict not in FINAL_VERDICTS:  # refused, not taken
            raise
        return Published(found, outbox_path(outbox_dir, verdict.request_id), conflict=exc)


def write_once(outbox_dir: Path, name: str, data: bytes) -> Path:
    """Write ``data`` to ``<outbox_dir>/<name>.json`` atomically, once (see write_verdict).

    For outbox documents that are not a single verdict (a case verdict).
    """
    target = outbox_path(Path(outbox_dir), name)
    if target.exists():
        return _same_or_conflict(target, data)
    # once=True links the file into place: a racing writer of the same name loses
    # cleanly instead of replacing the first verdict.
    if not write_atomic(target, data, once=True):
        return _same_or_conflict(target, data)
    _journal(Path(outbox_dir), name)
    return target


JOURNAL_DIR = ".journal"


def _journal(outbox_dir: Path, name: str) -> None:
    folder = outbox_dir / JOURNAL_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{utcnow().strftime('%Y-%m-%d')}.log"
    # One write of a short line with O_APPEND: lines of concurrent writers never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)


def read_journal(outbox_dir: Path, offsets: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    """Names journaled since ``offsets`` (journal file -> bytes already read).

    Returns the names and the new offsets. A line still being written (no newline yet)
    is left for the next call.
    """
    folder = Path(outbox_dir) / JOURNAL_DIR
    names: list[str] = []
    new_offsets = dict(offsets)
    if not folder.is_dir():
        return names, new_offsets
    for path in sorted(folder.glob("*.log")):
        start = offsets.get(path.name, 0)
        try:
            if path.stat().st_size <= start:
                continue
            with path.open("rb") as fh:
                fh.seek(start)
                chunk = fh.read()
        except FileNotFoundError:
            continue
        complete = chunk.rfind(b"\n") + 1
        names.extend(line for line in chunk[:complete].decode("utf-8").splitlines() if line)
        new_offsets[path.name] = start + complete
    return names, new_offsets


def _same_or_conflict(target: Path, data: bytes) -> Path:
    if target.read_bytes() == data:
        return target
    raise OutboxConflict(
        f"The outbox already holds a different verdict in {target.name}; verdicts are never "
        "rewritten, so write a re-check under a new name that supersedes it."
    )


def read_verdict(outbox_dir: Path, name: str) -> Verdict | None:
    """The verdict stored under ``name``, or None if there is none yet."""
    path = outbox_path(outbox_dir, name)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Verdict.model_validate_json(raw)
    except ValidationError as exc:
        raise OutboxConflict(
            f"{path} is not a valid verdict; move it aside and re-run the request."
        ) from exc


def has_verdict(outbox_dir: Path, name: str) -> bool:
    """True when the outbox already holds a verdict under ``name``."""
    return outbox_path(outbox_dir, name).is_file()


def iter_verdicts(outbox_dir: Path) -> Iterator[Path]:
    """The verdict files in the outbox, oldest name first (temp files skipped)."""
    outbox_dir = Path(outbox_dir)
    if not outbox_dir.is_dir():
        return
    yield from sorted(p for p in outbox_dir.glob("*.json") if not p.name.startswith("."))


def recheck_name(request_id: str, when: str | None = None) -> str:
    """The outbox name of a later re-check of ``request_id`` (its verdict supersedes it)."""
    stamp = when or utcnow().strftime("%Y%m%dT%H%M%S")
    return f"{request_id}.recheck-{stamp}"
