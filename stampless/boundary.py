"""The hostile-input boundary in front of every intake door (CLI, inbox, HTTP).

Whatever arrives is treated as hostile until it has passed here, and every way it can
be wrong becomes one :class:`~stampless.errors.InputError` naming the problem, never a
crash, a hang or a half-read file:

* request files are opened without blocking and must be regular files (a FIFO would
  hang the reader, ``/dev/zero`` never ends); their size is checked with ``fstat``
  before anything is read, and the read itself is bounded;
* JSON is parsed strictly: nesting deeper than :data:`MAX_DEPTH` (checked before the
  parser recurses), duplicate keys and ``NaN``/``Infinity`` are refused (numbers out
  of range are refused by the models, which name the field);
* a file a request names (its scan or e-certificate) must resolve, symlinks followed,
  inside the request's own folder or one of the roots robot.toml allows
  (``[intake] scan_roots``), be a regular file within its size limit, and have a name
  no longer than :data:`MAX_NAME_CHARS` per part and :data:`MAX_PATH_CHARS` in all.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stampless.errors import InputError

if TYPE_CHECKING:
    from stampless.config import Config
    from stampless.models import Request

MAX_DEPTH = 32
# Names a request may use for its files: a path part of at most 255 bytes is what
# every Linux file system allows; longer names failed deep inside the OS.
MAX_NAME_CHARS = 128
MAX_PATH_CHARS = 1024


def read_bounded(path: Path, *, max_bytes: int, what: str, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file ``path``, refusing anything larger than ``max_bytes``.

    Opened with ``O_NONBLOCK`` so a FIFO cannot hang the open, checked with ``fstat``
    (regular file, size) before reading, and read with a bound so a file that grows
    meanwhile is refused too. ``follow_symlinks=False`` refuses a symlink (the inbox:
    whoever drops files there must not make stampless read files elsewhere).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what} file.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(
                f"{path}: is a symbolic link; put the {what} file itself here."
            ) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"{_short(path)}: the file name is too long.") from None
        raise InputError(f"{_short(path)}: cannot be read ({exc.strerror}).") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{path}: is a folder; give {what} JSON files.")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(
                f"{path}: is not a regular file (a pipe, device or socket); give a {what} file."
            )
        if info.st_size > max_bytes:
            raise InputError(f"{path}: larger than {_size(max_bytes)}; not a {what}.")
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}).") from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > max_bytes:
        raise InputError(f"{path}: larger than {_size(max_bytes)}; not a {what}.")
    return raw


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


def _short(path: Path | str, keep: int = 80) -> str:
    text = str(path)
    return text if len(text) <= keep else text[: keep - 1] + "…"


# --- JSON ----------------------------------------------------------------------------

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(rb"[^\[\]{}]+")


def json_depth(raw: bytes) -> int:
    """How deeply the brackets of a JSON text nest (strings ignored), without parsing it."""
    brackets = _NOT_BRACKETS.sub(b"", _STRINGS.sub(b"", raw))
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class _Refused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"the key {key[:40]!r} appears twice in one object")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def parse_json(raw: bytes | str, *, source: str, what: str = "request") -> Any:
    """Parse JSON strictly (see the module docstring); InputError names ``source``."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark, as Windows editors write
    if json_depth(data) > MAX_DEPTH:
        raise InputError(
            f"{source}: nested more than {MAX_DEPTH} levels deep; a {what} is flat JSON."
        )
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text; save the {what} as UTF-8 JSON.") from None
    except _Refused as exc:
        raise InputError(f"{source}: not accepted: {exc}; fix the {what}.") from None
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise InputError(f"{source}: not valid JSON ({_short(str(exc))}); fix the file.") from None


# --- files a request names -------------------------------------------------------------


def check_name(value: str, kind: str) -> None:
    """Refuse a file name a request gives that no file system could hold, or holds NUL."""
    if "\x00" in value:
        raise InputError(f"The {kind} name holds a NUL character; give a plain file name.")
    if len(value) > MAX_PATH_CHARS or any(
        len(part.encode("utf-8")) > MAX_NAME_CHARS for part in Path(value).parts
    ):
        raise InputError(
            f"The {kind} name is too long (at most {MAX_NAME_CHARS} characters per folder or "
            f"file name, {MAX_PATH_CHARS} in all); rename the file."
        )


def confine(
    value: str,
    base_dir: Path,
    *,
    kind: str,
    roots: Sequence[Path] = (),
    forbidden: Sequence[Path] = (),
    max_bytes: int,
) -> Path:
    """The file a request names, checked: inside ``base_dir`` or ``roots``, regular, small.

    ``value`` is the request's relative (or absolute) path. Symlinks are resolved first,
    so a link that leaves the allowed folders is refused like ``../`` or an absolute
    path outside them. ``forbidden`` folders (stampless's own evidence, spool and
    outbox) are refused even under an allowed root, except the one the request itself
    lives in (a spooled request's scan is in the spool). Returns the resolved path.
    """
    check_name(value, kind)
    given = Path(value)
    path = given if given.is_absolute() else Path(base_dir) / given
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise InputError(
            f"The {kind} file {_short(value)} does not exist; check the {kind} path in the request."
        ) from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise InputError(f"The {kind} file {_short(value)} cannot be opened ({exc}).") from None
    base = Path(base_dir).resolve()
    allowed = [base, *(Path(r).resolve() for r in roots)]
    fenced = [f for f in (Path(f).resolve() for f in forbidden) if not base.is_relative_to(f)]
    if not any(real.is_relative_to(root) for root in allowed) or any(
        real.is_relative_to(f) for f in fenced
    ):
        raise InputError(
            f"The {kind} file {_short(value)} is outside the request's folder; put it beside "
            "the request (or under a folder listed in [intake] scan_roots of robot.toml)."
        )
    info = real.stat()
    if not stat.S_ISREG(info.st_mode):
        raise InputError(
            f"The {kind} file {_short(value)} is not a regular file; give an image file."
        )
    if info.st_size > max_bytes:
        raise InputError(
            f"The {kind} file {_short(value)} is larger than {_size(max_bytes)}; "
            "send a smaller one."
        )
    return real


def request_files(request: Request, base_dir: Path, config: Config) -> dict[str, Path]:
    """The scan and e-certificate a request names, each passed through :func:`confine`."""
    from stampless.ecert import MAX_ENVELOPE_BYTES

    limits = {"scan": int(config.ocr.max_file_mb * 1024 * 1024), "ecert": MAX_ENVELOPE_BYTES}
    found: dict[str, Path] = {}
    for kind in ("scan", "ecert"):
        value = getattr(request, kind)
        if value is None:
            continue
        try:
            found[kind] = confine(
                value,
                base_dir,
                kind="e-certificate" if kind == "ecert" else kind,
                roots=[config.resolve(r) for r in config.intake.scan_roots],
                forbidden=[config.evidence_dir, config.outbox_dir, config.var_dir / "spool"],
                max_bytes=limits[kind],
            )
        except InputError as exc:
            raise InputError(f"Request {request.id}: {exc}") from None
    return found
