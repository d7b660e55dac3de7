"""Selector maps: named selectors as ordered lists of fallbacks, loaded from TOML.

A robot never writes a literal selector; it asks for ``page["search.cert_no"]`` and the
map in ``selectors/<system>.toml`` says how to find it. Department pages change without
notice, so every name holds an ordered list of choices (CSS, ``text=``, ``role=``,
``xpath=``, ``>>`` chains); the runtime takes the first one that matches and, when that
is not the first choice, appends a line to ``<var_dir>/selectors/drift.jsonl`` so the
map can be repaired before the last fallback breaks too (``stampless selectors report``).

File format::

    version = "2026-11-21"
    [frames]
    content = ["frame[name=main]", "iframe#content"]
    [selectors."login.password"]
    any = ["#password", "input[type=password]"]
    mask = true                 # hidden in every screenshot
    [selectors."search.cert_no"]
    frame = "content"           # looked up inside that frame
    any = ["#certNo", "text=结婚证字号 >> xpath=following::input[1]"]
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from stampless.errors import ConfigError
from stampless.models import utcnow

DRIFT_FILE = Path("selectors") / "drift.jsonl"


@dataclass(frozen=True)
class SelectorSpec:
    """One named selector: its fallbacks in order of preference, frame and masking."""

    name: str
    choices: tuple[str, ...]
    frame: str | None = None
    mask: bool = False
    # The {placeholders} of its choices, in order of appearance (page.element fills them).
    placeholders: tuple[str, ...] = ()


@dataclass(frozen=True)
class FrameSpec:
    """A named frame: selectors of its ``<frame>``/``<iframe>`` element, and its parent."""

    name: str
    choices: tuple[str, ...]
    parent: str | None = None


@dataclass(frozen=True)
class SelectorMap:
    """The selectors of one department system, as loaded from its TOML file."""

    system: str
    path: Path
    version: str
    sha256: str
    selectors: dict[str, SelectorSpec]
    frames: dict[str, FrameSpec] = field(default_factory=dict)
    # Continue on a certain repair proposal when nothing matches (stampless.robot._repair).
    self_repair: bool = False

    def __getitem__(self, name: str) -> SelectorSpec:
        try:
            return self.selectors[name]
        except KeyError:
            raise ConfigError(
                f'{self.path}: no selector named {name!r}; add [selectors."{name}"] to it.'
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.selectors

    def frame(self, name: str) -> FrameSpec:
        """The frame called ``name``, or a ConfigError naming the file."""
        try:
            return self.frames[name]
        except KeyError:
            raise ConfigError(
                f"{self.path}: no frame named {name!r}; add it under [frames]."
            ) from None

    def frame_paths(self, name: str) -> list[tuple[str, ...]]:
        """Every chain of frame choices leading to frame ``name``, outermost first."""
        spec = self.frame(name)
        parents = [()] if spec.parent is None else self.frame_paths(spec.parent)
        return [(*parent, choice) for parent in parents for choice in spec.choices]

    def masked(self) -> list[SelectorSpec]:
        """The selectors marked ``mask = true`` (hidden in screenshots)."""
        return [spec for spec in self.selectors.values() if spec.mask]

    def meta(self) -> dict[str, str]:
        """What goes into the evidence meta: which map, which version, which bytes."""
        return {
            "selectors_file": self.path.name,
            "selectors_version": self.version,
            "selectors_sha256": self.sha256,
        }


def _choices(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(c, str) and c.strip() for c in raw)
    ):
        raise ConfigError(f"{where}: expected a non-empty list of selector strings.")
    return tuple(raw)


_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _placeholders(choices: tuple[str, ...]) -> tuple[str, ...]:
    """The ``{name}`` placeholders of a selector's choices (CSS braces are not ones)."""
    found: list[str] = []
    for choice in choices:
        for match in _PLACEHOLDER.finditer(choice):
            name = match.group(1)
            if not name.isidentifier():
                continue  # a CSS block or an XPath predicate, not a placeholder
            if name not in found:
                found.append(name)
    return tuple(found)


def load_selector_map(path: Path, system: str) -> SelectorMap:
    """Load and validate ``path``; errors name the file and the key that is wrong."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: selector map cannot be read ({exc.__class__.__name__}); "
            "check 'selectors' in robot.toml."
        ) from None
    try:
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}).") from None

    unknown = set(data) - {"version", "system", "frames", "selectors", "self_repair"}
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; remove it.")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise ConfigError(f"{path}: key 'version' is required (a string such as a date).")
    self_repair = data.get("self_repair", False)
    if not isinstance(self_repair, bool):
        raise ConfigError(f"{path}: key 'self_repair' is true or false.")

    frames: dict[str, FrameSpec] = {}
    for name, raw in dict(data.get("frames", {})).items():
        where = f"{path}: frames.{name}"
        if isinstance(raw, dict):
            extra = set(raw) - {"any", "parent"}
            if extra:
                raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r}.")
            frames[name] = FrameSpec(
                name, _choices(raw.get("any"), where + ".any"), raw.get("parent")
            )
        else:
            frames[name] = FrameSpec(name, _choices(raw, where))
    for spec in frames.values():
        if spec.parent is not None and spec.parent not in frames:
            raise ConfigError(
                f"{path}: frames.{spec.name}.parent names unknown frame {spec.parent!r}."
            )

    selectors: dict[str, SelectorSpec] = {}
    raw_selectors = data.get("selectors", {})
    if not isinstance(raw_selectors, dict) or not raw_selectors:
        raise ConfigError(f'{path}: needs a [selectors."name"] table for each named selector.')
    for name, raw in raw_selectors.items():
        where = f'{path}: selectors."{name}"'
        if isinstance(raw, list | str):
            raw = {"any": raw}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a table with 'any = [...]'.")
        extra = set(raw) - {"any", "frame", "mask"}
        if extra:
            raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r}; use any, frame, mask.")
        frame = raw.get("frame")
        if frame is not None and frame not in frames:
            raise ConfigError(f"{where}: frame {frame!r} is not defined under [frames].")
        mask = raw.get("mask", False)
        if not isinstance(mask, bool):
            raise ConfigError(f"{where}.mask: expected true or false.")
        choices = _choices(raw.get("any"), where + ".any")
        selectors[name] = SelectorSpec(name, choices, frame, mask, _placeholders(choices))

    return SelectorMap(
        system=system,
        path=path,
        version=version,
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        selectors=selectors,
        frames=frames,
        self_repair=self_repair,
    )


class DriftLog:
    """Appends JSON lines about selectors whose first choice did not match.

    A drifted selector is used on every request, so lines are rate-limited: the first
    use of a (system, selector, choice) is written at once, later ones are counted and
    written as one line with ``count`` at most every ``every_s`` seconds (and by
    :meth:`flush` when the runtime closes). Lines are small and written with
    ``O_APPEND`` under an exclusive lock, so worker processes sharing a var_dir do not
    interleave them.
    """

    def __init__(self, var_dir: Path, *, every_s: float = 60.0) -> None:
        self.path = Path(var_dir) / DRIFT_FILE
        self.every_s = every_s
        # key -> [count not yet written, monotonic time of the last write, the line's data]
        self._pending: dict[tuple[str, str, int | None], list[Any]] = {}

    def record(
        self,
        system: str,
        name: str,
        *,
        used: int | None,
        choice: str | None,
        failed: list[str],
        version: str,
    ) -> None:
        """Note that ``name`` fell back to choice ``used`` (None: nothing matched)."""
        data = {
            "system": system,
            "selector": name,
            "used_index": used,
            "used": choice,
            "failed": failed,
            "map_version": version,
        }
        key = (system, name, used)
        now = time.monotonic()
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = [0, now, data]
            self._write(data, 1)
            return
        entry[0] += 1
        entry[2] = data
        if now - entry[1] >= self.every_s:
            self._write(data, entry[0])
            entry[0], entry[1] = 0, now

    def flush(self) -> None:
        """Write the counts not yet written (the runtime calls this when it closes)."""
        for entry in self._pending.values():
            if entry[0]:
                self._write(entry[2], entry[0])
                entry[0] = 0

    def _write(self, data: dict[str, Any], count: int) -> None:
        line = json.dumps({"at": utcnow().isoformat(), **data, "count": count}, ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)


@dataclass
class DriftRow:
    """One line of the drift report: a selector whose first choice failed."""

    system: str
    selector: str
    times: int
    fallback: str | None  # the choice that matched last time, None when none did
    last_seen: datetime


def drift_summary(var_dir: Path) -> list[DriftRow]:
    """Group ``<var_dir>/selectors/drift.jsonl`` by system and selector, newest first."""
    path = Path(var_dir) / DRIFT_FILE
    if not path.is_file():
        return []
    rows: dict[tuple[str, str], DriftRow] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                item = json.loads(line)
                key = (str(item["system"]), str(item["selector"]))
                at = datetime.fromisoformat(item["at"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash is not worth failing the report
            count = int(item.get("count", 1))
            row = rows.get(key)
            if row is None:
                rows[key] = DriftRow(key[0], key[1], count, item.get("used"), at)
            else:
                row.times += count
                if at >= row.last_seen:
                    row.last_seen, row.fallback = at, item.get("used")
    return sorted(rows.values(), key=lambda r: r.last_seen, reverse=True)
