"""The audit chain: one JSON line per step of every request, each hashing the one before.

Files ``<audit_dir>/audit-000001.jsonl``, ``audit-000002.jsonl``, ... hold lines like::

    {"seq":42,"ts":"2026-11-21T23:40:01.123456+00:00","event":"verdict",
     "request_id":"REQ-1","actor":"worker-1","data":{"verdict":"verified"},
     "prev":"<sha256 hex of the previous line>"}

``prev`` is the SHA-256 of the previous line's bytes (without its newline), or 64 zeros
for the first line ever; ``seq`` counts from 1 without gaps. Removing, reordering or
editing a line breaks the chain at that point, and :func:`verify_chain` names it.
A new file starts when the current one reaches ``rotate_bytes`` or a new UTC day begins;
its first line's ``prev`` is the hash of the last line of the previous file, so the
chain continues across files. ``HEAD`` records the seq and hash of the last line, which
catches a removed or edited last line (a chain alone cannot).

Writers in several processes take an exclusive ``flock`` on ``<audit_dir>/.lock``
around read-last-line + append + fsync, so the chain never forks.

``data`` must never hold a secret or a full ID number: pass IDs through
:func:`stampless.checksums.mask_id`. As a safety net, :meth:`AuditLog.append` refuses
keys that name secrets, replaces known secret values and masks anything that looks
like a resident ID or a credit code.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from stampless._files import fsync_dir, write_atomic
from stampless.checksums import is_valid_credit_code, is_valid_resident_id, mask_id
from stampless.models import RESERVED_ID_PREFIX, utcnow
from stampless.vault import MASK, known_secret_values, redact

if TYPE_CHECKING:
    from stampless.signing import Signer

GENESIS = "0" * 64
FILE_PATTERN = re.compile(r"^audit-(\d{6})\.jsonl$")
HEAD_FILE = "HEAD"
LOCK_FILE = ".lock"
EVENTS = frozenset(
    {
        "received",
        "queued",
        "claimed",
        "logged_in",
        "looked_up",
        "screenshot",
        "ocr",
        "compared",
        "verdict",
        "delivered",
        "reviewed",
        "escalated",
        "retried",
        "released",
    }
)
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SECRET_KEY = re.compile(r"password|passwd|secret|token|totp|private|api_?key", re.IGNORECASE)
_ID_LIKE = re.compile(r"(?<![0-9A-Z])[0-9A-Z]{17}[0-9A-Z](?![0-9A-Z])")


def line_hash(line: bytes) -> str:
    """The SHA-256 hex of one audit line's bytes, without the trailing newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _mask_ids(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        s = m.group(0)
        return mask_id(s) if is_valid_resident_id(s) or is_valid_credit_code(s) else s

    return _ID_LIKE.sub(repl, text)


def _clean(value: Any, secrets: frozenset[str]) -> Any:
    if isinstance(value, str):
        return _mask_ids(redact(value, secrets))
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = str(k)
            out[key] = MASK if _SECRET_KEY.search(key) else _clean(v, secrets)
        return out
    if isinstance(value, list | tuple):
        return [_clean(v, secrets) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    # Paths, datetimes, enums: their text form, cleaned like any string.
    return _clean(str(value), secrets)


def _audit_files(audit_dir: Path) -> list[tuple[int, Path]]:
    files: list[tuple[int, Path]] = []
    if audit_dir.is_dir():
        for entry in os.scandir(audit_dir):
            m = FILE_PATTERN.match(entry.name)
            if m and entry.is_file():
                files.append((int(m.group(1)), Path(entry.path)))
    return sorted(files)


def _last_line(path: Path) -> tuple[bytes | None, int]:
    """The last complete line of ``path`` and the offset where a torn tail starts."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return None, 0
        block = 4096
        pos = size
        data = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
            # Need the newline that ends the last complete line and the one before it.
            if data.count(b"\n") >= 2 or pos == 0:
                break
            block *= 2
    end = size
    if not data.endswith(b"\n"):
        # A torn write: the process died mid-line; the fragment was never acknowledged.
        cut = data.rfind(b"\n")
        end = size - (len(data) - cut - 1) if cut >= 0 else size - len(data)
        data = data[: cut + 1] if cut >= 0 else b""
    lines = data.rstrip(b"\n").split(b"\n")
    last = lines[-1] if lines and lines[-1] else None
    return last, end


class AuditLog:
    """Appends lines to the audit chain in ``audit_dir``; safe across processes."""

    def __init__(
        self, audit_dir: Path, *, rotate_bytes: int = 64 * 1024 * 1024, rotate_daily: bool = True
    ) -> None:
        self.audit_dir = Path(audit_dir)
        self.rotate_bytes = rotate_bytes
        self.rotate_daily = rotate_daily

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.audit_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.audit_dir / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def append(
        self,
        event: str,
        *,
        request_id: str | None = None,
        actor: str = "stampless",
        **data: Any,
    ) -> dict[str, Any]:
        """Append one entry and return it (as written, including ``seq`` and ``prev``).

        ``data`` must not hold secrets or full ID numbers (see the module docstring).
        """
        if not _EVENT_NAME.match(event):
            raise ValueError(f"audit event names are lower_snake_case words, not {event!r}")
        clean = _clean(data, known_secret_values())
        with self._locked():
            files = _audit_files(self.audit_dir)
            prev, seq, last_ts = GENESIS, 0, None
            number = 0
            current: Path | None = None
            if files:
                number, current = files[-1]
                last, end = _last_line(current)
                if end != current.stat().st_size:
                    logger.warning(
                        "audit: dropping a torn, unacknowledged tail of {}", current.name
                    )
                    os.truncate(current, end)
                if last is None and len(files) > 1:
                    # An empty newest file (crash right after rotation): chain from the one before.
                    last, _ = _last_line(files[-2][1])
                if last is not None:
                    prev = line_hash(last)
                    try:
                        entry = json.loads(last)
                        seq = int(entry["seq"])
                        last_ts = str(entry["ts"])
                    except (ValueError, KeyError, TypeError):
                        # Someone damaged the last line. Keep recording (a pipeline must not
                        # stop over it); `audit verify` names the damaged line.
                        head = _read_head(self.audit_dir) or {}
                        seq = int(head.get("seq", 0))
                        logger.error("audit: the last line of {} is damaged", current.name)
            now = utcnow()
            size = current.stat().st_size if current is not None else 0
            new_day = (
                self.rotate_daily and last_ts is not None and last_ts[:10] != now.date().isoformat()
            )
            if current is None or (size > 0 and (size >= self.rotate_bytes or new_day)):
                number += 1
                current = self.audit_dir / f"audit-{number:06d}.jsonl"
            entry = {
                "seq": seq + 1,
                "ts": now.isoformat(),
                "event": event,
                "request_id": request_id,
                "actor": actor,
                "data": clean,
                "prev": prev,
            }
            line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode()
            created = not current.exists()
            fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.audit_dir)
            _write_head(self.audit_dir, entry["seq"], line_hash(line))
        return entry


def _write_head(audit_dir: Path, seq: int, digest: str) -> None:
    head = json.dumps({"seq": seq, "sha256": digest}) + "\n"
    write_atomic(audit_dir / HEAD_FILE, head, durable=False)  # the log line itself is synced


def _read_head(audit_dir: Path) -> dict[str, Any] | None:
    try:
        head = json.loads((audit_dir / HEAD_FILE).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return head if isinstance(head, dict) else None


@dataclass
class BrokenLink:
    """Where the chain breaks: the file, the 1-based line in it, and why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ChainReport:
    """The outcome of :func:`verify_chain`."""

    ok: bool
    lines: int = 0
    files: list[str] = field(default_factory=list)
    first_broken: BrokenLink | None = None
    last_seq: int = 0


def _parse_ts(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def verify_chain(audit_dir: Path, since: datetime | None = None) -> ChainReport:
    """Walk the chain and report the first broken line, if any.

    With ``since``, lines before that time are not checked (except that the first
    checked line must link to the line before it) and whole files that end before it
    are skipped without hashing.
    """
    audit_dir = Path(audit_dir)
    files = _audit_files(audit_dir)
    report = ChainReport(ok=True)
    if not files:
        head = _read_head(audit_dir)
        if head is not None and int(head.get("seq", 0)) > 0:
            return _broken(
                report,
                BrokenLink(
                    HEAD_FILE,
                    1,
                    f"HEAD records {head.get('seq')} line(s) but no audit file is left",
                ),
            )
        return report
    expected_prev: str | None = GENESIS
    expected_seq: int | None = 1
    prev_line_no: tuple[str, int] | None = None
    checking = since is None
    start = 0
    if since is not None:
        # Skip files whose last line is older than `since`; link to the file before.
        for i, (_, path) in enumerate(files):
            last, _ = _last_line(path)
            ts = _parse_ts(json.loads(last)["ts"]) if last else None
            if ts is not None and ts >= since:
                start = i
                break
        else:
            start = len(files)
        if start > 0:
            last, _ = _last_line(files[start - 1][1])
            expected_prev = line_hash(last) if last else None
            expected_seq = int(json.loads(last)["seq"]) + 1 if last else None
            prev_line_no = (files[start - 1][1].name, -1)
    last_digest = GENESIS
    for _, path in files[start:]:
        report.files.append(path.name)
        with path.open("rb") as f:
            for n, raw in enumerate(f, start=1):
                where = BrokenLink(path.name, n, "")
                if not raw.endswith(b"\n"):
                    where.reason = "the line is incomplete (a torn write or truncation)"
                    return _broken(report, where)
                try:
                    entry = json.loads(raw)
                    seq = int(entry["seq"])
                    prev = str(entry["prev"])
                    ts = _parse_ts(entry["ts"])
                except (ValueError, KeyError, TypeError):
                    where.reason = "the line is not a valid audit entry (edited or damaged)"
                    return _broken(report, where)
                digest = line_hash(raw)
                if not checking:
                    if ts is not None and since is not None and ts >= since:
                        checking = True
                    else:
                        expected_prev, expected_seq = digest, seq + 1
                        prev_line_no = (path.name, n)
                        continue
                if expected_seq is not None and seq != expected_seq:
                    if seq > expected_seq:
                        where.reason = (
                            f"seq jumps from {expected_seq - 1} to {seq}: "
                            f"{seq - expected_seq} line(s) before this one were removed (or moved)"
                        )
                    else:
                        where.reason = (
                            f"seq {seq} where {expected_seq} was expected: lines were "
                            "reordered or duplicated"
                        )
                    return _broken(report, where)
                if expected_prev is not None and prev != expected_prev:
                    if prev_line_no is not None and prev_line_no[1] > 0:
                        # seq runs on without a gap, so nothing was removed: the line
                        # before was edited (or, indistinguishably, this line's 'prev').
                        before = BrokenLink(
                            prev_line_no[0],
                            prev_line_no[1],
                            "the line was edited: its SHA-256 no longer matches the 'prev' "
                            f"recorded by the next line ({path.name}:{n})",
                        )
                        return _broken(report, before)
                    where.reason = "'prev' does not match the hash of the line before it"
                    return _broken(report, where)
                report.lines += 1
                report.last_seq = seq
                expected_prev, expected_seq = digest, seq + 1
                prev_line_no = (path.name, n)
                last_digest = digest
    head = _read_head(audit_dir)
    if head is None and report.lines and prev_line_no is not None:
        # Every append rewrites HEAD, so a chain without one lost its end with it.
        return _broken(
            report,
            BrokenLink(
                HEAD_FILE,
                1,
                f"HEAD is missing or unreadable, so the end of the chain (seq {report.last_seq}) "
                "cannot be confirmed: its last lines may have been removed with it; check "
                "against a checkpoint (audit verify --against)",
            ),
        )
    if head is not None and report.lines and prev_line_no is not None:
        head_seq = int(head.get("seq", 0))
        if head_seq > report.last_seq:
            return _broken(
                report,
                BrokenLink(
                    prev_line_no[0],
                    prev_line_no[1] + 1,
                    f"the chain ends at seq {report.last_seq} but HEAD records seq "
                    f"{head_seq}: the last line(s) were removed",
                ),
            )
        if head_seq == report.last_seq and head.get("sha256") != last_digest:
            return _broken(
                report,
                BrokenLink(
                    prev_line_no[0],
                    prev_line_no[1],
                    "the last line was edited: its hash does not match HEAD",
                ),
            )
    return report


def _broken(report: ChainReport, where: BrokenLink) -> ChainReport:
    report.ok = False
    report.first_broken = where
    return report


def entries_for(audit_dir: Path, request_id: str) -> list[dict[str, Any]]:
    """Every audit entry of one request, in chain order (for the evidence report)."""
    needle = json.dumps(request_id, ensure_ascii=False).encode()
    out: list[dict[str, Any]] = []
    for _, path in _audit_files(Path(audit_dir)):
        with path.open("rb") as f:
            for raw in f:
                # Cheap byte test first: most lines belong to other requests.
                if needle not in raw:
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if entry.get("request_id") == request_id:
                    out.append(entry)
    return out


# -- checkpoints ------------------------------------------------------------------------------

CHECKPOINT_KIND = "audit_checkpoint"
CHECKPOINT_PREFIX = RESERVED_ID_PREFIX  # never a request id (stampless.models.Request)


def line_at(audit_dir: Path, seq: int) -> tuple[str, int, str] | None:
    """The file, 1-based line number and hash of the line with ``seq``, if the chain has it."""
    for _, path in _audit_files(Path(audit_dir)):
        last, _ = _last_line(path)
        try:
            if last is None or int(json.loads(last)["seq"]) < seq:
                continue  # the whole file is before it
        except (ValueError, KeyError, TypeError):
            pass
        with path.open("rb") as f:
            for n, raw in enumerate(f, start=1):
                try:
                    if int(json.loads(raw)["seq"]) == seq:
                        return path.name, n, line_hash(raw)
                except (ValueError, KeyError, TypeError):
                    continue
    return None


def checkpoint_document(audit_dir: Path) -> dict[str, Any] | None:
    """The unsigned checkpoint of the chain as it ends now (seq and hash of its last line)."""
    audit = AuditLog(audit_dir)
    with audit._locked():
        files = _audit_files(audit.audit_dir)
        last = None
        for _, path in reversed(files):
            last, _ = _last_line(path)
            if last is not None:
                break
    if last is None:
        return None
    return {
        "kind": CHECKPOINT_KIND,
        "seq": int(json.loads(last)["seq"]),
        "sha256": line_hash(last),
        "at": utcnow().isoformat(),
    }


def check_checkpoint(audit_dir: Path, checkpoint: dict[str, Any]) -> BrokenLink | None:
    """Where the chain disagrees with a checkpoint taken earlier, or None when it holds.

    A chain whose tail was cut ends before the checkpoint's seq; a chain rebuilt from
    some line on (every later line rewritten, HEAD too) has another line at that seq.
    """
    seq = int(checkpoint["seq"])
    found = line_at(audit_dir, seq)
    if found is None:
        return BrokenLink(
            HEAD_FILE,
            1,
            f"the checkpoint of {checkpoint.get('at', '?')} records seq {seq}, which the chain "
            "no longer has: its end was cut off",
        )
    file, number, digest = found
    if digest != checkpoint.get("sha256"):
        return BrokenLink(
            file,
            number,
            f"the line with seq {seq} is not the one the checkpoint of "
            f"{checkpoint.get('at', '?')} recorded: the chain was rewritten from here on",
        )
    return None


def _checkpoint_stem(writer: str | None) -> str:
    # Machines sharing one outbox each checkpoint their own chain: the writer is named.
    return f"{CHECKPOINT_PREFIX}{writer}-" if writer else CHECKPOINT_PREFIX


def write_checkpoint(
    audit_dir: Path, outbox_dir: Path, signer: Signer, *, writer: str | None = None
) -> Path | None:
    """Sign the chain's current end and write it to the outbox; None if nothing is new.

    ``<outbox>/audit-checkpoint-<seq>.json`` (``audit-checkpoint-<writer>-<seq>.json``
    for one machine's chain among several, ``Config.audit_writer``) is journaled like a
    verdict, so the webhook delivers it: a party outside the machine then holds the end
    of the chain, which ``audit verify --against`` compares with (docs/evidence.md).
    """
    from stampless._version import __version__
    from stampless.outbox import outbox_path, write_once
    from stampless.signing import sign_document

    doc = checkpoint_document(audit_dir)
    if doc is None:
        return None
    name = f"{_checkpoint_stem(writer)}{doc['seq']:012d}"
    if outbox_path(outbox_dir, name).exists():
        return None
    if writer:
        doc["writer"] = writer
    doc["stampless_version"] = __version__
    doc["signature"] = sign_document(signer, doc)
    data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    path = write_once(outbox_dir, name, data)
    logger.info("audit: checkpoint at seq {} written to {}", doc["seq"], path)
    return path


def latest_checkpoint(outbox_dir: Path, *, writer: str | None = None) -> Path | None:
    """The newest checkpoint of ``writer``'s chain in the outbox, if any (names sort by
    seq)."""
    name = re.compile(re.escape(_checkpoint_stem(writer)) + r"\d{12}\.json")
    found = sorted(
        p for p in Path(outbox_dir).glob(f"{CHECKPOINT_PREFIX}*.json") if name.fullmatch(p.name)
    )
    return found[-1] if found else None
