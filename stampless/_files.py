"""Crash-safe file writes, shared by every stage that leaves files behind.

A reader (the hall's system on the outbox, a reviewer, a restarted worker) must never
see half a file: everything is written to a temporary file in the target's folder,
flushed to disk, then renamed (or hard-linked, when the target must be written only
once) into place, and the folder itself is synced so the new name survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any


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


def read_json_file(
    path: Path, *, max_bytes: int, what: str = "request", follow_symlinks: bool = True
) -> Any:
    """Parse a JSON file a user handed in; InputError names the file and the problem.

    The file goes through the hostile-input boundary (:mod:`stampless.boundary`): a
    regular file only, its size checked before reading, JSON parsed strictly.
    """
    from stampless.boundary import parse_json, read_bounded

    raw = read_bounded(Path(path), max_bytes=max_bytes, what=what, follow_symlinks=follow_symlinks)
    return parse_json(raw, source=str(path), what=what)
