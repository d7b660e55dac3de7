"""Logging through loguru: a readable console line per stage, JSON lines under var/log.

Every record passes one patcher that scrubs what must never be logged: the values of
secrets resolved through the vault, and full resident ID numbers and credit codes (they
are masked to their first 6 and last 4 characters). Robot and task authors log with
``from loguru import logger`` and get this for free; bind the request with
``logger.contextualize(request_id=...)`` so every line carries it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from stampless.checksums import mask_id

if TYPE_CHECKING:
    from loguru import Record

    from stampless.config import Config

# 18-character identifiers: resident IDs (17 digits + digit/X) and credit codes.
_ID_PATTERN = re.compile(
    r"(?<![0-9A-Z])([0-9]{17}[0-9Xx]|[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10})(?![0-9A-Z])"
)

_CONSOLE_FORMAT = (
    "<green>{time:HH:mm:ss}</green> <level>{level: <7}</level> "
    "<cyan>{extra[request_id]}</cyan> {message}"
)


def _secret_values() -> frozenset[str]:
    try:
        from stampless.vault import known_secret_values
    except ImportError:  # the vault module is optional for the bare CLI
        return frozenset()
    return known_secret_values()


def scrub(text: str) -> str:
    """Remove secret values and mask full ID numbers in ``text``."""
    for value in _secret_values():
        if value and value in text:
            text = text.replace(value, "********")
    return _ID_PATTERN.sub(lambda m: mask_id(m.group(1)), text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def _patch(record: Record) -> None:
    record["message"] = scrub(record["message"])
    extra = record["extra"]
    extra.setdefault("request_id", "-")
    for key in list(extra):
        extra[key] = _scrub_value(extra[key])
    if record["exception"] is not None:
        # Exception messages may carry values too; stampless errors never hold secrets,
        # but third-party ones might echo a filled field.
        exc = record["exception"]
        if exc.value is not None and exc.value.args:
            exc.value.args = tuple(_scrub_value(a) for a in exc.value.args)


@dataclass(frozen=True)
class _Console:
    sink: TextIO | Callable[[str], None]
    level: str
    debug: bool


@dataclass(frozen=True)
class _File:
    path: Path
    level: str


# The handlers setup_logging installed: loguru's id -> what it was added with. A call that
# asks for the same again keeps them: loguru's add() costs milliseconds (its exception
# formatter asks sysconfig for the library folders each time), one command sets logging
# up twice, and tests run commands hundreds of times in one process.
_installed: dict[int, _Console | _File] = {}


def _handler_ids() -> set[int] | None:
    """loguru's handler ids now, or None if this loguru does not show them."""
    handlers = getattr(getattr(logger, "_core", None), "handlers", None)
    return set(handlers) if isinstance(handlers, dict) else None


def setup_logging(
    config: Config | None = None,
    *,
    debug: bool = False,
    console: bool = True,
    console_level: str | None = None,
    sink: Callable[[str], None] | None = None,
) -> Path | None:
    """Configure loguru once per process; returns the JSON-lines log file, if any.

    Every handler it did not install is removed; one it installed with the same settings
    is kept, so that calling it again with the same arguments costs nothing.
    """
    logger.configure(patcher=_patch, extra={"request_id": "-"})
    level = "DEBUG" if debug else (config.logging.level if config else "INFO")
    wanted: list[_Console | _File] = []
    if console:
        wanted.append(_Console(sink or sys.stderr, console_level or level, debug))
    path = _log_file(config)
    if path is not None:
        wanted.append(_File(path, "DEBUG" if debug else "INFO"))
    if _handler_ids() != set(_installed):
        logger.remove()  # another's handler (loguru's default one), or one of ours is gone
        _installed.clear()
    for handler, settings in list(_installed.items()):
        if settings not in wanted:
            logger.remove(handler)
            del _installed[handler]
    for settings in wanted:
        if settings not in _installed.values():
            _installed[_add(settings)] = settings
    return path


def _log_file(config: Config | None) -> Path | None:
    """The JSON-lines log of ``config`` (its folder made), or None without one."""
    if config is None:
        return None
    try:
        config.log_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return config.log_dir / "stampless.jsonl"


def _add(settings: _Console | _File) -> int:
    if isinstance(settings, _Console):
        return logger.add(
            settings.sink,
            level=settings.level,
            format=_CONSOLE_FORMAT,
            colorize=None,
            backtrace=settings.debug,
            diagnose=False,  # diagnose prints local variables: they may hold secrets
        )
    return logger.add(
        settings.path,
        level=settings.level,
        serialize=True,
        rotation="50 MB",
        retention=10,
        enqueue=False,
        backtrace=False,
        diagnose=False,
    )
