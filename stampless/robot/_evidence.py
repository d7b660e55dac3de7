"""Evidence a robot gathers: masked screenshots, dialogs, downloads and traces.

A robot asks for evidence with ``await page.evidence.screenshot("search result")``; the
runtime adds a screenshot on every failure and keeps the Playwright trace of a failed
attempt. Redaction is done here, not by each robot: every password input and every
selector marked ``mask = true`` in the selector map is covered by Playwright's
``mask=`` option, so the pixels never hold a secret.

Traces: an attempt is recorded as its own trace (``tracing.start``/``stop`` around the
robot's steps, DOM snapshots and network, no screencast; which attempts is set by
``browser.trace``, see ``RobotRuntime._traced``), and logging in always happens
*outside* a recording, so the typed password is neither in a trace's action log, its
network entries (the login POST) nor its DOM snapshots (the runtime also empties password
inputs after the robot's ``login`` returns, because snapshots copy input values).

When no evidence bundle is given (a plain lookup), screenshots go to
``<var_dir>/screenshots/`` so a failure can still be looked at.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, quote_plus

from loguru import logger

from stampless.models import utcnow

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

    from stampless.audit import AuditLog
    from stampless.robot._selectors import SelectorMap

# Clearing password inputs in every frame: DOM snapshots (traces) copy input values.
CLEAR_PASSWORDS_JS = (
    "() => { for (const el of document.querySelectorAll('input[type=password]')) el.value = ''; }"
)


class BundleLike(Protocol):
    """What the runtime needs of :class:`stampless.evidence.EvidenceBundle`."""

    def path(self, name: str) -> Path: ...
    def screenshot_path(self, caption: str) -> Path: ...
    def note_file(self, name: str, *, kind: str, caption: str | None = None) -> Any: ...
    def add_dialog(self, kind: str, message: str, accepted: bool) -> Any: ...
    def set_meta(self, **kv: Any) -> Any: ...


def _slug(text: str, limit: int = 48) -> str:
    slug = re.sub(r"[^\w.-]+", "-", text, flags=re.UNICODE).strip("-.")
    return (slug or "file")[:limit]


def safe_filename(name: str, default: str = "download.bin") -> str:
    """A server-suggested file name reduced to one harmless path component."""
    base = Path(name.replace("\\", "/")).name
    # Evidence names are ASCII letters, digits, '.', '_' and '-', starting with a letter
    # or digit (stampless.evidence.check_name), so CJK names become underscores.
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
    base = re.sub(r"^[^A-Za-z0-9]+", "", base)
    return base[:120] or default


def _chain(page: Page, path: tuple[str, ...]) -> Any:
    """The FrameLocator reached by entering each frame selector of ``path`` in turn."""
    scope: Any = page
    for choice in path:
        scope = scope.frame_locator(choice)
    return scope


def _secret_patterns(value: str) -> list[re.Pattern[bytes]]:
    """Every way a trace may hold ``value``: as typed, URL-encoded (a form POST body),
    JSON-escaped (the action log).

    A long value is replaced wherever it appears; a short one (a 6-digit TOTP code)
    could also be part of a number, so only where it stands alone as a JSON string or a
    form value.
    """
    encoded = {
        value,
        quote_plus(value),
        quote(value, safe=""),
        json.dumps(value, ensure_ascii=False)[1:-1],
        json.dumps(value)[1:-1],
    }
    patterns = []
    for form in sorted(encoded, key=len, reverse=True):
        raw = re.escape(form.encode())
        if len(value) < 8:
            raw = rb'(?<=[="])' + raw + rb'(?=["&\s]|\Z)'
        patterns.append(re.compile(raw))
    return patterns


def scrub_zip(path: Path, secrets: Iterable[str]) -> None:
    """Rewrite the zip at ``path`` (a Playwright trace) with every secret value replaced.

    Each member is decompressed, scrubbed and written again; the new zip replaces the
    old one atomically.
    """
    patterns = [pattern for value in secrets if value for pattern in _secret_patterns(value)]
    if not patterns:
        return
    temp = path.with_name(path.name + ".scrub")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            for pattern in patterns:
                data = pattern.sub(b"********", data)
            out.writestr(info, data)
    temp.replace(path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Evidence:
    """The evidence of one request, as a robot sees it (``page.evidence``)."""

    def __init__(
        self,
        bundle: BundleLike | None,
        *,
        var_dir: Path,
        selectors: SelectorMap,
        request_id: str | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.bundle = bundle
        self.var_dir = Path(var_dir)
        self.selectors = selectors
        self.request_id = request_id
        self.audit = audit
        self.page: Page | None = None  # set by the runtime for the page being driven
        self.screenshots: list[Path] = []
        self.dialogs: list[dict[str, Any]] = []
        self.files: list[Path] = []

    # ---- paths ------------------------------------------------------------------------

    def _loose_dir(self) -> Path:
        folder = self.var_dir / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _bundle_name(self, path: Path) -> str:
        root = getattr(self.bundle, "work_dir", None)
        if root is None:
            return path.name
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            return path.name

    def file_path(self, name: str) -> Path:
        """A free path for a new evidence file called ``name`` (suffixed if taken)."""
        name = safe_filename(name)
        stem, suffix = Path(name).stem, Path(name).suffix
        n = 1
        while True:
            candidate = name if n == 1 else f"{stem}-{n}{suffix}"
            path = (
                self.bundle.path(candidate)
                if self.bundle is not None
                else self._loose_dir() / candidate
            )
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                return path
            n += 1

    # ---- what robots call ---------------------------------------------------------------

    def _mask_locators(self, page: Page) -> list[Locator]:
        masks: list[Locator] = [page.locator("input[type=password]")]
        for spec in self.selectors.masked():
            scopes: list[Any] = [page]
            if spec.frame is not None:
                scopes = [_chain(page, path) for path in self.selectors.frame_paths(spec.frame)]
            for scope in scopes:
                masks.extend(scope.locator(choice) for choice in spec.choices)
        # Password inputs inside frames too (legacy systems log in inside framesets).
        for name in self.selectors.frames:
            for path in self.selectors.frame_paths(name):
                masks.append(_chain(page, path).locator("input[type=password]"))
        return masks

    async def screenshot(
        self,
        caption: str,
        *,
        full_page: bool = True,
        page: Page | None = None,
        always: bool = False,
    ) -> Path | None:
        """Take a masked screenshot of the current page, captioned, into the evidence.

        Without an evidence bundle (a plain lookup) there is nothing to attach it to and
        None is returned, unless ``always`` (failures are kept under var/screenshots).
        Also None when the page cannot be captured: the robot goes on.
        """
        from playwright.async_api import Error as PlaywrightError

        target = page or self.page
        if target is None or target.is_closed() or (self.bundle is None and not always):
            return None
        if self.bundle is not None:
            path = self.bundle.screenshot_path(caption)
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
            path = self._loose_dir() / f"{stamp}-{_slug(caption)}.png"
        try:
            await target.screenshot(
                path=str(path),
                full_page=full_page,
                mask=self._mask_locators(target),
                mask_color="#000000",
                animations="disabled",
                timeout=10_000,
            )
        except PlaywrightError as exc:
            logger.warning("screenshot {!r} failed: {}", caption, str(exc).splitlines()[0])
            return None
        # bundle.screenshot_path() has already listed the file with its caption.
        self.screenshots.append(path)
        if self.audit is not None:
            self.audit.append("screenshot", request_id=self.request_id, caption=caption)
        return path

    async def failure_screenshot(self, reason: str, page: Page | None = None) -> Path | None:
        """The screenshot taken on every failure, after emptying password inputs."""
        from playwright.async_api import Error as PlaywrightError

        target = page or self.page
        if target is None or target.is_closed():
            return None
        try:
            for frame in target.frames:
                await frame.evaluate(CLEAR_PASSWORDS_JS)
        except PlaywrightError:
            pass  # a crashed page still gets its (masked) screenshot attempt
        return await self.screenshot(f"failure: {reason}"[:120], page=target, always=True)

    def add_dialog(self, kind: str, message: str, accepted: bool) -> None:
        """Record an alert/confirm/prompt the page showed and what the robot answered."""
        self.dialogs.append({"kind": kind, "message": message, "accepted": accepted})
        if self.bundle is not None:
            self.bundle.add_dialog(kind, message, accepted)

    def add_file(self, source: Path, name: str, *, kind: str) -> Path:
        """Move ``source`` into the evidence as ``name``; returns the stored file."""
        dest = self.file_path(name)
        shutil.move(str(source), dest)
        if self.bundle is not None:
            self.bundle.note_file(self._bundle_name(dest), kind=kind)
        self.files.append(dest)
        return dest

    def set_meta(self, **kv: Any) -> None:
        if self.bundle is not None:
            self.bundle.set_meta(**kv)
