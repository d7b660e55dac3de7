"""Crash-safe file writes, shared by every stage that leaves files behind.

A reader (the hall's system on the outbox, a reviewer, a restarted worker) must never
see half a file: everything is written to a temporary file in the target's folder,
flushed to disk, then renamed (or hard-linked, when the target must be written only
once) into place, and the folder itself is synced so the new name survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from stampless.errors import InputError


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (the directory entry on disk)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    target: Path,
    data: bytes | str,
    *,
    once: bool = False,
    durable: bool = True,
    mode: int | None = None,
) -> bool:
    """Write ``data`` to ``target`` whole or not at all; True when this call wrote it.

    ``once``: never replace an existing ``target`` (a hard link fails where a rename
    would silently overwrite, so two writers racing on one name cannot clobber each
    other); returns False, writing nothing, when ``target`` already exists.
    ``durable``: fsync the data and the folder (off for scratch files that a later
    step seals). ``mode``: permissions of the new file (e.g. 0o600 for secrets).
    """
    target = Path(target)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if once:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
        else:
            tmp.replace(target)
        if durable:
            fsync_dir(folder)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def read_json_file(path: Path, *, max_bytes: int, what: str = "request") -> Any:
    """Parse a JSON file a user handed in; InputError names the file and the problem."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file.") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; give {what} JSON files.") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}).") from None
    if len(raw) > max_bytes:
        raise InputError(f"{path}: larger than {max_bytes // 1024} KiB; not a {what}.")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); fix the file.") from None
