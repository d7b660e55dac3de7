"""RobotPage: what a robot drives. Named selectors, frames, dialogs, popups, downloads.

A robot never touches a literal selector: ``page["search.cert_no"]`` is an
:class:`Element` that resolves through the selector map's fallbacks when it is used.
While waiting for an element the page also watches for the two things legacy systems
do instead of showing it: an error page (5xx or a dropped connection, raised as
:class:`DepartmentUnavailable` at once rather than after the full timeout) and the login
page (the session ended, raised as :class:`SessionLost` so the runtime logs in again).

Playwright's exceptions are translated into stampless errors here, at the boundary
(:func:`translate_error`); robots see only stampless errors.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from loguru import logger

from stampless.errors import (
    AmbiguousSelector,
    BrowserError,
    ConfigError,
    DepartmentUnavailable,
    InputError,
    PageChanged,
    RobotError,
    SessionLost,
    StamplessError,
)
from stampless.models import utcnow
from stampless.robot._evidence import CLEAR_PASSWORDS_JS, Evidence, safe_filename, sha256_file
from stampless.robot._navigation import Mark, NavigationWatch
from stampless.robot._repair import (
    CANDIDATES_JS,
    FINGERPRINT_JS,
    FingerprintStore,
    Proposal,
    checked_choices,
    judge,
    rank,
    record_proposal,
)

if TYPE_CHECKING:
    from playwright.async_api import (
        APIResponse,
        Dialog,
        Frame,
        FrameLocator,
        Locator,
        Page,
        Request,
        Response,
    )

    from stampless.config import BrowserConfig
    from stampless.robot._selectors import DriftLog, SelectorMap, SelectorSpec
    from stampless.vault import Secret

# Between two looks for an element, check the page for an error page or the login page.
POLL_SLICE_S = 0.4
# How long the fast path waits for a selector's first choice before resolving them all.
FAST_MS = 2000.0
_CLOSED = ("Target page, context or browser has been closed", "Target closed", "has been closed")
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_-]+)""", re.IGNORECASE)


def translate_error(exc: BaseException, doing: str) -> StamplessError:
    """A Playwright (or asyncio) exception as the stampless error it means."""
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    if isinstance(exc, StamplessError):
        return exc
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, PlaywrightTimeout | asyncio.TimeoutError | TimeoutError):
        return DepartmentUnavailable(
            f"The department system did not answer in time while {doing}; it is retried."
        )
    if isinstance(exc, PlaywrightError):
        match = re.search(r"net::ERR_[A-Z_]+", text)
        if match:
            return DepartmentUnavailable(
                f"The department system could not be reached while {doing} ({match.group(0)}); "
                "check that it is up."
            )
        if any(marker in text for marker in _CLOSED) or "crash" in text.lower():
            return BrowserError(f"The browser closed or crashed while {doing}; it is restarted.")
        return RobotError(f"The robot failed while {doing}: {first[:200]}.")
    return RobotError(f"The robot failed while {doing}: {type(exc).__name__}.")


@dataclass
class DialogInfo:
    """A dialog the page showed: its kind (alert, confirm, prompt), text and our answer."""

    kind: str = ""
    message: str = ""
    accepted: bool = False
    seen: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _DialogPolicy:
    accept: bool
    prompt_text: str | None
    info: DialogInfo


@dataclass
class _Health:
    """The last error page seen in the context (shared by a page and its popups)."""

    error: str | None = None


class NoMatch(RobotError):
    """No choice of a selector matched within the timeout (a RobotError, retried)."""


@dataclass
class Repairs:
    """Where a page keeps fingerprints and proposals (stampless.robot._repair)."""

    store: FingerprintStore
    var_dir: Path


_OUTLINE_JS = "(e, on) => { e.style.outline = on ? '4px solid #e0218a' : ''; }"


@dataclass
class SelectorUse:
    """How often each choice of a named selector matched (reported in ``rt.stats()``)."""

    by_index: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    last: int | None = None  # the choice that matched last time (None: none did)
    remembered: bool = False  # its element's fingerprint was kept in this process
    proposed: bool = False  # a first choice was proposed in this process (a fallback matched)
    repaired: str | None = None  # the certain proposal this process goes on with (self_repair)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"Element.{old}() is deprecated; use Element.{new}() (Playwright's name).",
        DeprecationWarning,
        stacklevel=3,
    )


def is_strict_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is Playwright's "strict mode violation" (a locator matched several)."""
    return "strict mode violation" in str(exc)


class Element:
    """A named element of the page; resolved through its fallbacks each time it is used.

    Strict, as Playwright's locators are: an action or a single read on a choice that
    matches several elements raises :class:`~stampless.errors.AmbiguousSelector` naming
    the selector. Say which one with :attr:`first`, :attr:`last` or :meth:`nth`; the
    reads of every match (:meth:`all_inner_texts`, :meth:`count`) are not strict.
    Methods carry Playwright's names and arguments, so its documentation applies.

    Fast path: while the map's first choice keeps matching, an action goes straight to
    it (one browser round trip, like a hand-written script); only when it does not
    appear within :data:`FAST_MS` are all choices resolved in order (and drift noted).
    """

    def __init__(self, page: RobotPage, spec: SelectorSpec, index: int | None = None) -> None:
        self._page = page
        self.spec = spec
        self.name = spec.name
        self.index = index  # None: strict; else the n-th match (-1: the last)

    def __repr__(self) -> str:
        which = "" if self.index is None else f".nth({self.index})"
        return f"Element({self.name!r}){which}"

    # ---- which match --------------------------------------------------------------------

    @property
    def first(self) -> Element:
        """The first of the elements the selector matches (Playwright's ``.first``)."""
        return self.nth(0)

    @property
    def last(self) -> Element:
        """The last of the elements the selector matches (Playwright's ``.last``)."""
        return self.nth(-1)

    def nth(self, index: int) -> Element:
        """The ``index``-th (from 0; -1 is the last) of the elements the selector matches."""
        return Element(self._page, self.spec, index)

    def _pick(self, loc: Locator) -> Locator:
        if self.index is None:
            return loc
        return loc.last if self.index == -1 else loc.nth(self.index)

    async def locator(self, *, timeout_ms: float | None = None) -> Locator:
        """The Playwright locator of the first choice that matches (waits for one).

        With :attr:`first`/:attr:`last`/:meth:`nth`, that match of it.
        """
        return self._pick(await self._page._resolve(self.spec, timeout_ms=timeout_ms))

    async def exists(self, *, timeout_ms: float = 0) -> bool:
        """Whether any choice matches now (or within ``timeout_ms``); never raises RobotError.

        It is a read of the page: PageChanged if the page navigated since the last action
        (see :meth:`inner_text`).
        """
        page = self._page
        page._check_read(f"looking for {self.name!r}")
        found = await page._present(self.spec, timeout_ms=timeout_ms)
        page._check_read(f"looking for {self.name!r}")
        return found

    def _ambiguous(self, exc: BaseException) -> AmbiguousSelector:
        match = re.search(r"resolved to (\d+) elements", str(exc))
        many = f"{match.group(1)} elements" if match else "several elements"
        path = self._page.selectors.path.name
        return AmbiguousSelector(
            f"Selector {self.name!r} of {self._page.system} matched {many} where the robot "
            f"acts on one; make its choices in {path} match one element, or say which in "
            f"the robot: page[{self.name!r}].first, .last or .nth(i)."
        )

    async def _act(
        self,
        doing: str,
        action: Callable[[Locator, float], Awaitable[Any]],
        *,
        every: bool = False,
    ) -> Any:
        """``action(locator, timeout_ms)`` on the element (``every``: on all its matches)."""
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        page = self._page
        fast = page._fast_locator(self.spec)
        if fast is not None:
            if not every:
                await page._remember(self.spec, self._pick(fast))
            try:
                result = await action(fast if every else self._pick(fast), FAST_MS)
            except PlaywrightTimeout:
                pass  # not there (yet): resolve every choice, with the full timeout
            except Exception as exc:
                raise self._failure(exc, doing) from exc
            else:
                page._note_match(self.spec.name, self.spec.choices, 0)
                return result
        loc = await page._resolve(self.spec, timeout_ms=None)
        if not every:
            await page._remember(self.spec, self._pick(loc))
        try:
            return await action(loc if every else self._pick(loc), page.config.timeout_ms)
        except Exception as exc:
            raise self._failure(exc, doing) from exc

    def _failure(self, exc: BaseException, doing: str) -> StamplessError:
        if is_strict_violation(exc):
            return self._ambiguous(exc)
        return self._page._explain(exc, f"{doing} {self.name!r}")

    async def _do(self, doing: str, action: Callable[[Locator, float], Awaitable[Any]]) -> None:
        """An action on the element, then a wait for what it caused (RobotPage.settle)."""
        async with self._page._acting(f"{doing} {self.name!r}"):
            await self._act(doing, action)

    async def _read(
        self, action: Callable[[Locator, float], Awaitable[Any]], *, every: bool = False
    ) -> Any:
        """A read of the element, refused if the page changed under the record's reads."""
        page = self._page
        page._check_read(f"reading {self.name!r}")
        result = await self._act("reading", action, every=every)
        page._check_read(f"reading {self.name!r}")
        return result

    # ---- actions ------------------------------------------------------------------------

    async def click(self) -> None:
        """Click the element, then wait for what the click caused.

        It waits as every action does (:meth:`RobotPage.settle`): one round trip to each
        frame through the page's own timer queue, so that a ``javascript:`` link or a
        ``setTimeout`` post-back has sent its request; then every navigation request seen
        in the page or a frame until its document is committed; then DOMContentLoaded in
        every frame that got a new document. When nothing navigated it returns after the
        round trip. An error page raises DepartmentUnavailable; the login page, SessionLost.
        """
        await self._do("clicking", lambda loc, t: loc.click(timeout=t))

    async def click_and_wait(self, *, frame: str | None = None) -> None:
        """Click, and require a navigation: wait for the document the element's frame loads.

        Playwright's ``expect_navigation`` on the element's own frame (or on ``frame``, a
        frame a link with ``target=`` loads) waits for its DOMContentLoaded, within
        ``browser.navigation_timeout_ms``; then the page settles as after :meth:`click`.
        No navigation at all is an error (DepartmentUnavailable), unlike with
        :meth:`click`. An error page raises DepartmentUnavailable; the login page,
        SessionLost.
        """
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        page = self._page
        target = await page.frame_object(frame) if frame is not None else None

        async def click(loc: Locator, timeout: float) -> None:
            waiter: Any = page.raw if target is None else target
            if target is None and self.spec.frame is not None:
                handle = await loc.element_handle(timeout=timeout)
                waiter = await handle.owner_frame() or page.raw
            clicked = False
            try:
                async with waiter.expect_navigation(
                    wait_until="domcontentloaded", timeout=page.config.navigation_timeout_ms
                ):
                    await loc.click(timeout=timeout)
                    clicked = True
            except PlaywrightTimeout as exc:
                if not clicked:
                    raise  # the element was not there (yet): _act resolves it again
                # Clicked, but no document came: clicking again could submit twice.
                raise DepartmentUnavailable(
                    f"The {page.system} system did not load a page after {self.name!r} was "
                    f"clicked within {page.config.navigation_timeout_ms / 1000:g} s; it is retried."
                ) from exc

        await self._do("following", click)

    async def fill(self, value: str) -> None:
        """Replace the element's value with ``value``, then wait as after :meth:`click`.

        Typing fires ``input`` events (and ``change`` on dates, colours and ranges), which
        an ASP.NET AutoPostBack field may answer with a post-back.
        """
        await self._do("filling", lambda loc, t: loc.fill(value, timeout=t))

    async def fill_secret(self, secret: Secret | str) -> None:
        """Type a secret (password, TOTP code). Never logged; masked in screenshots.

        Only call this from ``login``: the runtime scrubs the values it typed from the
        login's trace and empties password inputs afterwards, so the value is in no
        trace or snapshot. Waits afterwards as :meth:`fill` does.
        """
        value = secret if isinstance(secret, str) else secret.reveal()
        page = self._page
        page._typed_secrets.add(value)
        async with page._acting(f"typing into {self.name!r}"):
            loc = await self.locator()
            failed: BaseException | None = None
            try:
                await loc.fill(value)
            except Exception as exc:
                failed = exc
            if failed is not None:
                if is_strict_violation(failed):
                    raise self._ambiguous(failed) from None
                # The Playwright message may echo the typed value: neither chain nor quote it.
                raise RobotError(f"Could not type into {self.name!r}; check the selector map.")

    async def press(self, key: str) -> None:
        """Press ``key`` in the element ("Enter" submits a form), then wait as :meth:`click`."""
        await self._do("pressing a key in", lambda loc, t: loc.press(key, timeout=t))

    async def hover(self) -> None:
        """Move the mouse over the element (menus that open on hover), then wait."""
        await self._do("hovering over", lambda loc, t: loc.hover(timeout=t))

    async def select_option(self, value: str | list[str]) -> None:
        """Choose options by value or label (fires ``change``), then wait as after
        :meth:`click`: an ASP.NET AutoPostBack list posts back from a ``setTimeout``."""
        await self._do("selecting in", lambda loc, t: loc.select_option(value, timeout=t))

    async def set_input_files(self, files: Path | list[Path]) -> None:
        """Put ``files`` into a file input (an upload form's), then wait as after :meth:`click`."""
        paths = [str(p) for p in (files if isinstance(files, list) else [files])]
        await self._do("choosing files for", lambda loc, t: loc.set_input_files(paths, timeout=t))

    async def set_checked(self, checked: bool) -> None:
        """Tick or untick a checkbox or radio button, then wait as after :meth:`click`."""
        await self._do("checking", lambda loc, t: loc.set_checked(checked, timeout=t))

    async def check(self, checked: bool = True) -> None:
        """Tick a checkbox or radio button, then wait as after :meth:`click`.

        ``check(False)`` is deprecated: use :meth:`uncheck` or :meth:`set_checked`.
        """
        if not checked:
            _deprecated("check(False)", "uncheck")
        await self.set_checked(checked)

    async def uncheck(self) -> None:
        """Untick a checkbox, then wait as after :meth:`click`."""
        await self.set_checked(False)

    # ---- reads --------------------------------------------------------------------------

    async def inner_text(self) -> str:
        """The element's rendered text (Playwright's ``inner_text``).

        Every read (``inner_text``, ``text_content``, ``input_value``, ``get_attribute``,
        ``all_inner_texts``, ``count``, ``is_visible``, ``is_checked``, ``exists``) waits
        for the element (Playwright's auto-wait) but never for a navigation: the reads
        since the last action are those of one record, and if the page loaded another
        document since they began (or is loading one) the read raises PageChanged, which
        the request's retry tries again, so a record is never assembled from two versions of a page.
        """
        return str(await self._read(lambda loc, t: loc.inner_text(timeout=t)))

    async def text_content(self) -> str | None:
        """The element's ``textContent``, hidden text included (a read, see :meth:`inner_text`)."""
        result = await self._read(lambda loc, t: loc.text_content(timeout=t))
        return None if result is None else str(result)

    async def input_value(self) -> str:
        """The value of an input, textarea or select (a read, see :meth:`inner_text`)."""
        return str(await self._read(lambda loc, t: loc.input_value(timeout=t)))

    async def get_attribute(self, name: str) -> str | None:
        """The attribute ``name`` of the element, or None (a read, see :meth:`inner_text`)."""
        result = await self._read(lambda loc, t: loc.get_attribute(name, timeout=t))
        return None if result is None else str(result)

    async def is_visible(self) -> bool:
        """Whether the element is visible now (does not wait; a read)."""
        return bool(await self._read(lambda loc, t: loc.is_visible(timeout=t)))

    async def is_checked(self) -> bool:
        """Whether the checkbox or radio button is ticked (a read)."""
        return bool(await self._read(lambda loc, t: loc.is_checked(timeout=t)))

    async def all_inner_texts(self) -> list[str]:
        """The rendered texts of every element the matching choice finds (rows, cells).

        A read (see :meth:`inner_text`) of all matches, so not strict; it waits for the
        first of them, not for a navigation.
        """

        async def read(loc: Locator, timeout: float) -> list[str]:
            await loc.first.wait_for(state="attached", timeout=timeout)
            return [str(t) for t in await loc.all_inner_texts()]

        found: list[str] = await self._read(read, every=True)
        return found

    async def count(self) -> int:
        """How many elements match now (0 when none; does not wait; a read)."""
        if not await self.exists():
            return 0
        loc = await self._page._resolve(self.spec, timeout_ms=None)
        found = await loc.count()
        self._page._check_read(f"counting {self.name!r}")
        return found

    # ---- the names of stampless before 0.2, kept for robots written against them ---------

    async def text(self) -> str:
        """Deprecated: ``(await inner_text()).strip()``."""
        _deprecated("text", "inner_text")
        return (await self.inner_text()).strip()

    async def texts(self) -> list[str]:
        """Deprecated: :meth:`all_inner_texts`, each stripped."""
        _deprecated("texts", "all_inner_texts")
        return [t.strip() for t in await self.all_inner_texts()]

    async def value(self) -> str:
        """Deprecated: :meth:`input_value`."""
        _deprecated("value", "input_value")
        return await self.input_value()

    async def attribute(self, name: str) -> str | None:
        """Deprecated: :meth:`get_attribute`."""
        _deprecated("attribute", "get_attribute")
        return await self.get_attribute(name)

    async def select(self, value: str) -> None:
        """Deprecated: :meth:`select_option`."""
        _deprecated("select", "select_option")
        await self.select_option(value)


class RobotPage:
    """The page a robot drives: ``page["name"]``, frames, dialogs, popups, downloads.

    Attributes a robot uses: ``evidence`` (:class:`Evidence`), ``base_url`` (the system's
    URL from robot.toml), ``dialogs`` (every dialog seen), ``raw`` (the Playwright page,
    for what this class does not cover; selectors written there do not fall back).
    """

    def __init__(
        self,
        raw: Page,
        *,
        system: str,
        base_url: str,
        selectors: SelectorMap,
        config: BrowserConfig,
        drift: DriftLog | None,
        evidence: Evidence,
        usage: dict[str, SelectorUse] | None = None,
        health: _Health | None = None,
        repairs: Repairs | None = None,
    ) -> None:
        self.raw = raw
        self.repairs = repairs
        self.system = system
        self.base_url = base_url.rstrip("/") + "/"
        self.selectors = selectors
        self.config = config
        self.drift = drift
        self.evidence = evidence
        self.usage: dict[str, SelectorUse] = usage if usage is not None else {}
        self.dialogs: list[DialogInfo] = []
        self.popups: list[RobotPage] = []
        self.opener: RobotPage | None = None  # the page whose open_popup made this one
        self.logout_probe: Callable[[], Awaitable[bool]] | None = None
        self.probing = True
        self._policies: list[_DialogPolicy] = []
        self._watch = NavigationWatch(raw)
        self._quiet = 0  # inside the runtime's logout probe: its looks are not record reads
        self._probed: dict[Frame, int] | None = None  # documents the last logout probe saw
        self._typed_secrets: set[str] = set()  # what fill_secret typed (scrubbed from traces)
        raw.on("dialog", self._on_dialog)
        if health is None:
            # Watch the whole context, so an error page in a popup counts too (its first
            # response arrives before the popup's RobotPage exists).
            health = _Health()
            raw.context.on("response", self._on_response)
            raw.context.on("requestfailed", self._on_request_failed)
        self._health = health

    @property
    def _server_error(self) -> str | None:
        return self._health.error

    @_server_error.setter
    def _server_error(self, value: str | None) -> None:
        self._health.error = value

    # ---- navigation and health ----------------------------------------------------------

    @property
    def url(self) -> str:
        return self.raw.url

    def absolute(self, url: str) -> str:
        """``url`` relative to the system's base URL (absolute URLs pass through)."""
        return urljoin(self.base_url, url.lstrip("/")) if "://" not in url else url

    def _on_response(self, response: Response) -> None:
        request = response.request
        if request.is_navigation_request() and response.status >= 500:
            self._server_error = f"HTTP {response.status} from {_path_of(response.url)}"

    def _on_request_failed(self, request: Request) -> None:
        if request.is_navigation_request():
            failure = request.failure or "connection failed"
            if "ERR_ABORTED" not in failure:  # aborted: a download or a newer navigation
                self._server_error = f"{failure} for {_path_of(request.url)}"

    def _raise_if_unhealthy(self) -> None:
        if self._server_error is not None:
            problem, self._server_error = self._server_error, None
            if problem.startswith("net::ERR_INVALID_AUTH_CREDENTIALS"):
                raise ConfigError(
                    f"The {self.system} system's web server asks for HTTP authentication, and "
                    "refused what it got; set http_credentials under "
                    f"[systems.{self.system}] in robot.toml (docs/robots.md)."
                )
            if problem.startswith("net::"):
                raise DepartmentUnavailable(
                    f"The {self.system} system could not be reached ({problem}); "
                    "check that it is up (it is retried)."
                )
            raise DepartmentUnavailable(
                f"The {self.system} system answered with an error ({problem}); it is retried."
            )
        if self.raw.is_closed():
            raise BrowserError("The browser page closed unexpectedly; it is reopened and retried.")

    async def _check_logged_out(self) -> None:
        if not self.probing or self.logout_probe is None:
            return
        self._quiet += 1
        try:
            logged_out = await self.logout_probe()
        finally:
            self._quiet -= 1
        if logged_out:
            raise SessionLost(
                f"The {self.system} system logged the robot out; it logs in again and retries."
            )

    @asynccontextmanager
    async def _acting(self, doing: str) -> AsyncIterator[None]:
        """Run a page action, then :meth:`settle` from where the action began."""
        mark = self._watch.mark()
        self._server_error = None
        try:
            yield
        except BaseException:
            self._watch.new_record()  # a failed action ends the record's reads all the same
            raise
        await self._settle(mark, doing)

    async def _settle(self, mark: Mark, doing: str, *, barrier: bool = True) -> None:
        try:
            navigated = await self._watch.settle(
                mark, timeout_s=self.config.navigation_timeout_ms / 1000, barrier=barrier
            )
        except Exception as exc:
            raise self._explain(exc, f"waiting for the page after {doing}") from exc
        finally:
            self._watch.new_record()
        self._raise_if_unhealthy()
        documents = self._watch.mark().documents
        if navigated and documents != self._probed:
            # A new document may be the login page (a post-back after the session ended).
            await self._check_logged_out()
            self._probed = documents

    def _check_read(self, doing: str) -> None:
        if self._quiet:
            return
        why = self._watch.check_read()
        if why is not None:
            raise PageChanged(
                f"The {self.system} page changed while {doing} ({why}); the lookup is retried."
            )

    def new_record(self) -> None:
        """Start a new record's reads on the current page (the runtime calls it per attempt).

        Every action does this too: the reads after an action belong to one record.
        """
        self._watch.new_record()

    def _explain(self, exc: BaseException, doing: str) -> StamplessError:
        if isinstance(exc, StamplessError):
            return exc
        if self._server_error is not None:
            try:
                self._raise_if_unhealthy()
            except StamplessError as unhealthy:
                return unhealthy
        return translate_error(exc, doing)

    async def goto(self, url: str = "", *, wait_until: str = "domcontentloaded") -> None:
        """Open ``url`` (relative to the system's URL) and wait for its document.

        Playwright's ``goto`` waits for ``wait_until`` (DOMContentLoaded by default) within
        ``browser.navigation_timeout_ms``; then the page settles as after a click
        (:meth:`settle`: a script redirect or a frame it loads is waited for too). An HTTP
        5xx raises DepartmentUnavailable at once; the login page, SessionLost.
        """
        async with self._acting(f"opening {_path_of(self.absolute(url))}"):
            try:
                response = await self.raw.goto(
                    self.absolute(url),
                    wait_until=wait_until,  # type: ignore[arg-type]
                    timeout=self.config.navigation_timeout_ms,
                )
            except Exception as exc:
                raise self._explain(exc, f"opening {_path_of(self.absolute(url))}") from exc
            if response is not None and response.status >= 500:
                self._server_error = None
                raise DepartmentUnavailable(
                    f"The {self.system} system answered HTTP {response.status} for "
                    f"{_path_of(response.url)}; it is retried."
                )

    async def screenshot(self, caption: str) -> Path | None:
        """A masked, captioned screenshot of this page (or popup) into the evidence."""
        return await self.evidence.screenshot(caption, page=self.raw)

    async def settle(self) -> None:
        """Wait until the page is still: what every action does after itself.

        1. One round trip to each frame through the page's own timer queue
           (``setTimeout(resolve, 0)``), so that a navigation a script has just started
           (a ``javascript:`` link, a post-back from a ``setTimeout``) has sent its request.
        2. Every navigation request seen in the page or one of its frames, until that
           frame has committed the new document (or the request failed).
        3. DOMContentLoaded of every frame that committed a new document (here: of every
           frame), child frames included.

        No sleeps: each step waits for an event of the browser's, within
        ``browser.navigation_timeout_ms`` (else DepartmentUnavailable). With nothing in
        flight it returns after step 1. After it, the next reads are a new record's.
        """
        await self._settle(Mark(), "waiting for the page")

    async def wait_for_load(self) -> None:
        """The same as :meth:`settle` (the name robots written before it use)."""
        await self.settle()

    # ---- selectors ----------------------------------------------------------------------

    def __getitem__(self, name: str) -> Element:
        spec = self.selectors[name]
        if spec.placeholders:
            raise TypeError(
                f"Selector {name!r} has placeholders {_listing(spec.placeholders)}; fill them "
                f"with page.element({name!r}, {spec.placeholders[0]}=...)."
            )
        return Element(self, spec)

    def element(
        self, name: str, params: Mapping[str, str] | None = None, /, **placeholders: str
    ) -> Element:
        """A named selector whose choices hold ``{placeholders}``, filled in.

        ``page.element("detail.value", label="登记日期")`` for a map entry such as
        ``any = ["xpath=//td[normalize-space(.)='{label}']/following-sibling::td[1]"]``;
        or with a mapping, ``page.element("detail.value", {"label": "登记日期"})``.
        ``name`` is positional-only, so a placeholder may be called ``name`` too. A
        placeholder missing or unknown is a TypeError naming the selector's placeholders.
        """
        spec = self.selectors[name]
        values = {**(params or {}), **placeholders}
        wanted = set(spec.placeholders)
        if set(values) != wanted:
            unknown = sorted(set(values) - wanted)
            missing = sorted(wanted - set(values))
            problem = (
                f"has no placeholder {_listing(unknown)}"
                if unknown
                else f"needs {_listing(missing)} too"
            )
            raise TypeError(
                f"Selector {name!r} of {self.selectors.path.name} {problem}; its placeholders "
                f"are {_listing(spec.placeholders) if spec.placeholders else 'none'}."
            )
        choices = []
        for choice in spec.choices:
            for key, value in values.items():
                if "'" in value or '"' in value:
                    raise InputError(f"A value for selector {name!r} may not contain quotes.")
                choice = choice.replace("{" + key + "}", value)
            choices.append(choice)
        return Element(self, replace(spec, choices=tuple(choices)))

    def __contains__(self, name: str) -> bool:
        return name in self.selectors

    async def frame(self, name: str) -> FrameLocator:
        """The frame called ``name`` in the selector map, as a Playwright FrameLocator."""
        return await self._frame_scope(name, timeout_ms=None)

    async def frame_object(self, name: str) -> Frame:
        """The named frame as a Playwright Frame (to wait on it or run a script in it)."""
        fspec = self.selectors.frame(name)
        parent: Any = self.raw
        if fspec.parent is not None:
            parent = await self._frame_scope(fspec.parent, timeout_ms=None)
        locs = [parent.locator(choice) for choice in fspec.choices]
        index = await self._first_match(f"frame:{name}", fspec.choices, locs, None)
        try:
            handle = await locs[index].first.element_handle()
            frame = await handle.content_frame()
        except Exception as exc:
            raise self._explain(exc, f"opening frame {name!r}") from exc
        if frame is None:
            raise RobotError(
                f"Frame {name!r} of {self.selectors.path.name} is not a frame element."
            )
        return frame

    async def _frame_scope(self, name: str, *, timeout_ms: float | None) -> FrameLocator:
        fspec = self.selectors.frame(name)
        parent: Any = self.raw
        if fspec.parent is not None:
            parent = await self._frame_scope(fspec.parent, timeout_ms=timeout_ms)
        locs = [parent.locator(choice) for choice in fspec.choices]
        index = await self._first_match(f"frame:{name}", fspec.choices, locs, timeout_ms)
        frame: FrameLocator = parent.frame_locator(fspec.choices[index])
        return frame

    def _fast_locator(self, spec: SelectorSpec) -> Locator | None:
        """The first choice's locator, while the first choices keep matching; else None."""
        use = self.usage.get(spec.name)
        if use is not None and use.last != 0:
            return None
        scope: Any = self.raw
        if spec.frame is not None:
            scope = self._fast_frame(spec.frame)
            if scope is None:
                return None
        first = use.repaired if use is not None and use.repaired else spec.choices[0]
        loc: Locator = scope.locator(first)
        return loc

    def _fast_frame(self, name: str) -> FrameLocator | None:
        fspec = self.selectors.frame(name)
        use = self.usage.get(f"frame:{name}")
        if use is not None and use.last != 0:
            return None
        parent: Any = self.raw
        if fspec.parent is not None:
            parent = self._fast_frame(fspec.parent)
            if parent is None:
                return None
        frame: FrameLocator = parent.frame_locator(fspec.choices[0])
        return frame

    async def _scope_locators(self, spec: SelectorSpec, timeout_ms: float | None) -> list[Locator]:
        scope: Any = self.raw
        if spec.frame is not None:
            scope = await self._frame_scope(spec.frame, timeout_ms=timeout_ms)
        return [scope.locator(choice) for choice in spec.choices]

    async def _resolve(self, spec: SelectorSpec, *, timeout_ms: float | None) -> Locator:
        use = self.usage.get(spec.name)
        if use is not None and use.repaired is not None:
            spec = replace(spec, choices=(use.repaired, *spec.choices))
        locs = await self._scope_locators(spec, timeout_ms)
        try:
            index = await self._first_match(spec.name, spec.choices, locs, timeout_ms)
        except NoMatch as exc:
            repaired = await self._repair(spec, exc)
            if repaired is None:
                raise
            return repaired
        if index > 0:
            await self._propose_from_fallback(spec, locs[index])
        return locs[index]

    # ---- selector repair (stampless.robot._repair) ----------------------------------------

    async def _remember(self, spec: SelectorSpec, loc: Locator) -> None:
        """Keep a fingerprint of the element a selector finds, once per selector and process.

        Taken before the action (a click may take the element away), only when it is
        there at once and alone: it costs one round trip, the first time.
        """
        use = self.usage.get(spec.name)
        if self.repairs is None or spec.placeholders or (use is not None and use.remembered):
            return
        try:
            if await loc.count() != 1:
                return
            fingerprint = await loc.evaluate(FINGERPRINT_JS, timeout=FAST_MS)
        except Exception as exc:  # a fingerprint is a help for later, never a failure now
            logger.debug("no fingerprint of {!r}: {}", spec.name, type(exc).__name__)
            return
        self.usage.setdefault(spec.name, SelectorUse()).remembered = True
        choice = spec.choices[use.last or 0] if use is not None else spec.choices[0]
        await asyncio.to_thread(self.repairs.store.put, self.system, spec.name, fingerprint, choice)

    async def _propose_from_fallback(self, spec: SelectorSpec, loc: Locator) -> None:
        """A fallback matched: propose a stable first choice for the element it found."""
        use = self.usage.setdefault(spec.name, SelectorUse())
        if self.repairs is None or spec.placeholders or use.proposed:
            return
        use.proposed = True
        try:
            found = await loc.first.evaluate(FINGERPRINT_JS, timeout=FAST_MS)
            scope = await self._scope(spec)
            choices = await checked_choices(scope, found, exclude=spec.choices)
        except Exception as exc:
            logger.debug("no proposal for {!r}: {}", spec.name, type(exc).__name__)
            return
        proposal = Proposal(
            self.system,
            spec.name,
            choices[0] if choices else None,
            choices[1:],
            certain=bool(choices),
            score=1.0,
            source="fallback",
            failed=[spec.choices[0]],
            why="the fallback's element, found again by these choices alone",
            url=_path_of(self.raw.url),
            map_file=str(self.selectors.path),
        )
        await self._keep_proposal(proposal, scope, choices)

    async def _repair(self, spec: SelectorSpec, failure: NoMatch) -> Locator | None:
        """Nothing matched: find the element most like the last one, and propose it.

        Returns its locator when the proposal is certain and the map allows self-repair;
        else None, after making ``failure``'s message name the proposal.
        """
        if self.repairs is None or spec.placeholders:
            return None
        old = await asyncio.to_thread(self.repairs.store.get, self.system, spec.name)
        if old is None:
            return None
        try:
            scope = await self._scope(spec)
            candidates = await scope.locator(":root").evaluate(CANDIDATES_JS, old["kind"])
            ranked = rank(old, candidates)
            certain, why = judge(ranked)
            choices = await checked_choices(scope, ranked[0][2], exclude=()) if ranked else []
        except StamplessError:
            raise
        except Exception as exc:
            logger.debug("no repair for {!r}: {}", spec.name, type(exc).__name__)
            return None
        if ranked and not choices:
            certain, why = False, "no selector finds the closest element alone"
        proposal = Proposal(
            self.system,
            spec.name,
            choices[0] if choices else None,
            choices[1:],
            certain=certain,
            score=round(ranked[0][0], 3) if ranked else 0.0,
            runner_up=round(ranked[1][0], 3) if len(ranked) > 1 else 0.0,
            failed=list(spec.choices),
            why=why,
            url=_path_of(self.raw.url),
            map_file=str(self.selectors.path),
        )
        await self._keep_proposal(proposal, scope, choices)
        if proposal.choice is not None and certain and self.selectors.self_repair:
            self.usage.setdefault(spec.name, SelectorUse()).repaired = proposal.choice
            logger.warning(
                "selector {!r} of {}: repaired with {!r} ({})",
                spec.name,
                self.system,
                proposal.choice,
                why,
            )
            if self.drift is not None:
                self.drift.record(
                    self.system,
                    spec.name,
                    used=None,
                    choice=proposal.choice,
                    failed=list(spec.choices),
                    version=self.selectors.version,
                )
            located: Locator = scope.locator(proposal.choice)
            return located
        failure.args = (
            f"{failure} {proposal.describe().capitalize()}; see 'stampless selectors "
            f"proposals', and approve it with 'stampless selectors approve {self.system} "
            f"{spec.name}'.",
        )
        return None

    async def _scope(self, spec: SelectorSpec) -> Any:
        """The page, or the frame the map puts the selector in."""
        if spec.frame is None:
            return self.raw
        return await self._frame_scope(spec.frame, timeout_ms=FAST_MS)

    async def _keep_proposal(self, proposal: Proposal, scope: Any, choices: list[str]) -> None:
        """Record ``proposal`` with a screenshot of the page, the element outlined."""
        assert self.repairs is not None
        folder = self.repairs.var_dir / "selectors" / "proposals"
        folder.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{proposal.system}-{proposal.selector}")
        shot = folder / f"{utcnow():%Y%m%dT%H%M%S%f}-{slug.strip('-')}.png"
        target = scope.locator(choices[0]) if choices else None
        try:
            if target is not None:
                await target.evaluate(_OUTLINE_JS, True)
            await self.raw.screenshot(
                path=str(shot), full_page=True, mask=self.evidence._mask_locators(self.raw)
            )
            proposal.screenshot = str(shot)
            if target is not None:
                await self.evidence.screenshot(f"repair proposed for {proposal.selector}")
                await target.evaluate(_OUTLINE_JS, False)
        except Exception as exc:
            logger.debug("proposal screenshot not taken: {}", type(exc).__name__)
        await asyncio.to_thread(record_proposal, self.repairs.var_dir, proposal)
        logger.warning("{}: {}", self.system, proposal.describe())

    async def _present(self, spec: SelectorSpec, *, timeout_ms: float) -> bool:
        """Whether a choice matches, in any frame the map allows; polls up to ``timeout_ms``."""
        from playwright.async_api import Error as PlaywrightError

        scopes: list[Any] = [self.raw]
        if spec.frame is not None:
            scopes = []
            for path in self.selectors.frame_paths(spec.frame):
                scope: Any = self.raw
                for choice in path:
                    scope = scope.frame_locator(choice)
                scopes.append(scope)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            for scope in scopes:
                try:
                    # count() does not wait: a frame that is not there counts 0.
                    if await _either([scope.locator(c) for c in spec.choices]).count() > 0:
                        return True
                except PlaywrightError:
                    continue
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def _first_match(
        self, name: str, choices: tuple[str, ...], locs: list[Locator], timeout_ms: float | None
    ) -> int:
        """Index of the first choice that matches, waiting for any of them to appear.

        Waits on all choices at once (Playwright's ``or_``) so a fallback costs no extra
        time; then takes the *first* choice present, so the map's order is the preference.
        """
        from playwright.async_api import Error as PlaywrightError
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        total_s = (self.config.timeout_ms if timeout_ms is None else timeout_ms) / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_s
        combined = _either(locs)
        while True:
            remaining = deadline - loop.time()
            try:
                await combined.first.wait_for(
                    state="attached", timeout=max(1.0, min(POLL_SLICE_S, remaining) * 1000)
                )
                if len(locs) == 1:
                    self._note_match(name, choices, 0)
                    return 0
                for index, loc in enumerate(locs):
                    if await loc.count():
                        self._note_match(name, choices, index)
                        return index
            except PlaywrightTimeout:
                pass
            except PlaywrightError as exc:
                if "selector" in str(exc).lower() and "parse" in str(exc).lower():
                    raise RobotError(
                        f"Selector {name!r} in {self.selectors.path.name} is not valid "
                        f"Playwright syntax; fix it ({str(exc).splitlines()[0][:160]})."
                    ) from exc
                raise self._explain(exc, f"looking for {name!r}") from exc
            self._raise_if_unhealthy()
            await self._check_logged_out()
            if loop.time() >= deadline:
                self._note_miss(name, choices)
                raise NoMatch(
                    f"Selector {name!r} of {self.system} matched none of its {len(choices)} "
                    f"choice(s) within {total_s:g} s; update {self.selectors.path.name}."
                )

    def _note_match(self, name: str, choices: tuple[str, ...], index: int) -> None:
        use = self.usage.setdefault(name, SelectorUse())
        use.by_index[index] = use.by_index.get(index, 0) + 1
        use.last = index
        if index > 0:
            # Warn once per fallback; every use is still counted in the drift log.
            logger.log(
                "WARNING" if use.by_index[index] == 1 else "DEBUG",
                "selector {!r} of {}: first choice failed, fallback #{} matched",
                name,
                self.system,
                index + 1,
            )
            if self.drift is not None:
                self.drift.record(
                    self.system,
                    name,
                    used=index,
                    choice=choices[index],
                    failed=list(choices[:index]),
                    version=self.selectors.version,
                )

    def _note_miss(self, name: str, choices: tuple[str, ...]) -> None:
        use = self.usage.setdefault(name, SelectorUse())
        use.failures += 1
        use.last = None
        if self.drift is not None:
            self.drift.record(
                self.system,
                name,
                used=None,
                choice=None,
                failed=list(choices),
                version=self.selectors.version,
            )

    # ---- dialogs ------------------------------------------------------------------------

    async def _on_dialog(self, dialog: Dialog) -> None:
        policy = self._policies[-1] if self._policies else None
        # Without instructions: accept alerts (they only inform), dismiss the rest, so an
        # unexpected confirm() never agrees to something on the robot's behalf.
        accept = policy.accept if policy is not None else dialog.type in ("alert", "beforeunload")
        info = policy.info if policy is not None and not policy.info.seen.is_set() else DialogInfo()
        info.kind, info.message, info.accepted = dialog.type, dialog.message, accept
        self.dialogs.append(info)
        self.evidence.add_dialog(dialog.type, dialog.message, accept)
        # Playwright runs this handler in the task that first listened on the page, whose
        # log context is an earlier request's: name the request this page now serves.
        logger.bind(request_id=self.evidence.request_id or "-").info(
            "dialog ({}) {}: {}",
            dialog.type,
            "accepted" if accept else "dismissed",
            dialog.message[:80],
        )
        try:
            if accept:
                await dialog.accept(policy.prompt_text or "" if policy else "")
            else:
                await dialog.dismiss()
        except Exception as exc:  # the page may already be gone; the evidence has it
            logger.debug("dialog answer failed: {}", type(exc).__name__)
        info.seen.set()

    @asynccontextmanager
    async def expect_dialog(
        self,
        *,
        accept: bool = True,
        prompt_text: str | None = None,
        timeout_ms: float | None = None,
    ) -> AsyncIterator[DialogInfo]:
        """Answer the dialog the block triggers; its text is captured into the evidence.

        ``async with page.expect_dialog(accept=True) as dialog: await page["x"].click()``;
        afterwards ``dialog.message`` holds its text. RobotError if no dialog came.
        """
        info = DialogInfo()
        policy = _DialogPolicy(accept, prompt_text, info)
        self._policies.append(policy)
        try:
            yield info
            wait_s = (self.config.timeout_ms if timeout_ms is None else timeout_ms) / 1000
            try:
                await asyncio.wait_for(info.seen.wait(), wait_s)
            except TimeoutError:
                self._raise_if_unhealthy()
                raise RobotError(
                    f"The {self.system} page showed no dialog where the robot expected one."
                ) from None
        finally:
            self._policies.remove(policy)

    # ---- popups and downloads -----------------------------------------------------------

    async def open_popup(self, name: str) -> RobotPage:
        """Click ``name`` and return the window it opens (``window.open``) as a RobotPage.

        Waits for the click as :meth:`Element.click` does, for the new window within
        ``browser.timeout_ms`` (Playwright's ``expect_page``, which hands it over once it
        has committed its first document), then for that window to settle
        (:meth:`settle`: its DOMContentLoaded, frames and any redirect included).
        """
        mark = self._watch.mark()
        self._server_error = None
        element = self[name]
        try:
            async with self.raw.context.expect_page(timeout=self.config.timeout_ms) as info:
                # The click alone: an error page in the new window must not stop us from
                # taking the window, or it would stay open and catch the next window.open.
                await element._act("clicking", lambda loc, t: loc.click(timeout=t))
            raw = await info.value
        except StamplessError:
            raise
        except Exception as exc:
            raise self._explain(exc, f"waiting for the window {name!r} opens") from exc
        child = RobotPage(
            raw,
            system=self.system,
            base_url=self.base_url,
            selectors=self.selectors,
            config=self.config,
            drift=self.drift,
            evidence=self.evidence,
            usage=self.usage,
            health=self._health,
            repairs=self.repairs,
        )
        child.logout_probe = None  # the popup has no login form of its own to look for
        child.opener = self
        self.popups.append(child)
        await self._settle(mark, f"clicking {name!r}")
        await child.settle()
        return child

    async def close_popups(self) -> None:
        """Close the windows this page opened (the runtime calls this after each request).

        On the account's own page, any other window of its context goes too: one left
        open would catch the next ``window.open`` of the same name.
        """
        for popup in self.popups:
            try:
                await popup.close_popups()
                if not popup.raw.is_closed():
                    await popup.raw.close()
            except Exception as exc:
                logger.debug("closing popup failed: {}", type(exc).__name__)
        self.popups.clear()
        if self.opener is not None:
            return
        for stray in self.raw.context.pages:
            if stray is not self.raw and not stray.is_closed():
                try:
                    await stray.close()
                except Exception as exc:
                    logger.debug("closing a stray window failed: {}", type(exc).__name__)

    async def download(self, name: str, *, filename: str | None = None) -> Path:
        """Click ``name``, wait for the download (browser.download_timeout_ms), keep it.

        The click waits as :meth:`Element.click` does; a link answered with an attachment
        ends its navigation in the download (Playwright's ``download`` event), so nothing
        waits for a document that never comes.

        The file goes into the evidence (kind ``download``) and its SHA-256 into the
        evidence meta; returns the stored path.
        """
        timeout_ms = self.config.download_timeout_ms
        try:
            async with self.raw.expect_download(timeout=timeout_ms) as info:
                await self[name].click()
            download = await info.value
            temp = await asyncio.wait_for(download.path(), timeout_ms / 1000)
            failure = await download.failure()
        except StamplessError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError":
                raise DepartmentUnavailable(
                    f"The download from {name!r} did not finish within {timeout_ms / 1000:g} s; "
                    "it is retried."
                ) from exc
            raise self._explain(exc, f"downloading from {name!r}") from exc
        if failure is not None:
            raise DepartmentUnavailable(
                f"The download from {name!r} failed ({failure}); it is retried."
            )
        suggested = filename or safe_filename(download.suggested_filename)
        staged = Path(str(temp) + ".part")
        await download.save_as(staged)
        return self._keep_download(staged, suggested)

    def _keep_download(self, staged: Path, name: str) -> Path:
        """Move a fetched file into the evidence; its SHA-256 goes into the meta."""
        stored = self.evidence.add_file(staged, name, kind="download")
        digest = sha256_file(stored)
        self.evidence.set_meta(download_file=stored.name, download_sha256=digest)
        logger.info(
            "downloaded {} ({} bytes, sha256 {}…)", stored.name, stored.stat().st_size, digest[:12]
        )
        return stored

    async def save(
        self, target: str | Element, *, filename: str | None = None, attribute: str | None = None
    ) -> Path:
        """Fetch a file the page links to or shows, and keep it like :meth:`download`.

        For attachments a server sends *inline* (an image or PDF opened in the browser,
        no download event): ``await page.save(page["detail.scan"])`` takes the element's
        ``href`` (or ``src``, or ``attribute``), ``await page.save("/files/1.png")`` a URL
        relative to the current page. The body is fetched with the session's cookies
        (at most ``browser.download_timeout_ms``), stored in the evidence (kind
        ``download``) and its SHA-256 recorded; returns the stored path. 5xx raises
        DepartmentUnavailable; another error status, RobotError.
        """
        if isinstance(target, Element):
            names = (attribute,) if attribute else ("href", "src", "data")
            url = None
            for name in names:
                assert name is not None
                url = await target.get_attribute(name)
                if url:
                    break
            if not url:
                raise RobotError(
                    f"Element {target.name!r} has no {' or '.join(str(n) for n in names)} "
                    "to save; point the selector at the link or the image."
                )
        else:
            url = target
        absolute = urljoin(self.raw.url, url) if "://" not in url else url
        response, body = await self._get(absolute, "saving", self.config.download_timeout_ms)
        if response.status >= 400:
            raise RobotError(
                f"The {self.system} system answered HTTP {response.status} for "
                f"{_path_of(absolute)}; check the link the robot saves."
            )
        disposition = response.headers.get("content-disposition", "")
        match = re.search(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)', disposition, re.IGNORECASE)
        suggested = match.group(1) if match else _path_of(absolute).rstrip("/").rsplit("/", 1)[-1]
        handle, temp = tempfile.mkstemp(suffix=".part")
        with os.fdopen(handle, "wb") as out:
            out.write(body)
        staged = Path(temp)
        return self._keep_download(staged, filename or safe_filename(suggested))

    # ---- legacy helpers -----------------------------------------------------------------

    async def fetch_text(self, url: str, *, encoding: str | None = None) -> str:
        """GET ``url`` with the page's cookies and decode it (GBK pages included).

        The charset comes from ``encoding``, else the Content-Type header, else a
        ``<meta charset>`` in the bytes, else GB18030 (a superset of GBK and GB2312).
        """
        response, body = await self._get(
            self.absolute(url), "fetching", self.config.navigation_timeout_ms
        )
        return decode_legacy(body, response.headers.get("content-type"), encoding)

    async def _get(self, url: str, doing: str, timeout_ms: float) -> tuple[APIResponse, bytes]:
        """GET ``url`` with the session's cookies; 5xx is DepartmentUnavailable."""
        try:
            response = await self.raw.context.request.get(url, timeout=timeout_ms)
            body = await response.body()
        except Exception as exc:
            raise self._explain(exc, f"{doing} {_path_of(url)}") from exc
        if response.status >= 500:
            raise DepartmentUnavailable(
                f"The {self.system} system answered HTTP {response.status} for "
                f"{_path_of(url)}; it is retried."
            )
        return response, body

    async def viewstate(self) -> str | None:
        """The ASP.NET ``__VIEWSTATE`` of the page's main document, if it has one (a read)."""
        self._check_read("reading __VIEWSTATE")
        loc = self.raw.locator("input[name=__VIEWSTATE]")
        found = await loc.first.get_attribute("value") if await loc.count() else None
        self._check_read("reading __VIEWSTATE")
        return found

    async def postback(self, target: str, argument: str = "", *, frame: str | None = None) -> None:
        """Do an ASP.NET ``__doPostBack(target, argument)`` and wait for the new page.

        Pages without ``__doPostBack`` get ``__EVENTTARGET``/``__EVENTARGUMENT`` set on
        their first form, which is then submitted with its ``__VIEWSTATE``. Waits with
        Playwright's ``expect_navigation`` on the page (or on ``frame``) for the new
        document's DOMContentLoaded, within ``browser.navigation_timeout_ms``, then
        settles as after :meth:`Element.click`. No new document is DepartmentUnavailable;
        the login page, SessionLost.
        """
        from playwright.async_api import Error as PlaywrightError

        script = """([t, a]) => {
            if (typeof __doPostBack === 'function') { __doPostBack(t, a); return; }
            const f = document.forms[0];
            for (const [n, v] of [['__EVENTTARGET', t], ['__EVENTARGUMENT', a]]) {
                let i = f.elements[n];
                if (!i) {
                    i = document.createElement('input');
                    i.type = 'hidden'; i.name = n; f.appendChild(i);
                }
                i.value = v;
            }
            f.submit();
        }"""
        async with self._acting(f"posting back {target!r}"):
            where: Any = self.raw if frame is None else await self.frame_object(frame)
            try:
                async with where.expect_navigation(
                    wait_until="domcontentloaded", timeout=self.config.navigation_timeout_ms
                ):
                    try:
                        await where.evaluate(script, [target, argument])
                    except PlaywrightError as exc:
                        # The post-back replaced the document before the script returned.
                        if "context was destroyed" not in str(exc):
                            raise
            except Exception as exc:
                raise self._explain(exc, f"posting back {target!r}") from exc

    async def paginate(
        self, next_name: str, *, max_pages: int = 50, marker: str | None = None
    ) -> AsyncIterator[int]:
        """Yield 1, 2, … while clicking ``next_name`` to move through a result list.

        Page 1 is the page as it is. Before moving on it notes the page's identity: the
        text of ``marker`` (an element whose text changes from page to page, such as a
        page number) when given, else the ``__VIEWSTATE`` of the frame that holds
        ``next_name``, else that frame's whole text. It clicks ``next_name`` (waiting as
        :meth:`Element.click` does), waits with Playwright's auto-waiting assertions
        until the identity differs, then for DOMContentLoaded of every frame that loaded
        a document meanwhile, and only then yields the next number. A page that did not
        change within ``browser.navigation_timeout_ms`` raises RobotError (retried): it is
        never taken for the last page. The iteration ends when ``next_name`` is gone or
        disabled on a page proven new (the last page), or after ``max_pages``.
        """
        number = 1
        yield number
        while number < max_pages:
            nxt = self[next_name]
            if not await nxt.exists():
                return
            loc = (await nxt.locator()).first
            disabled = await loc.evaluate(
                "e => e.disabled === true || e.getAttribute('aria-disabled') === 'true'"
                " || e.classList.contains('disabled')"
                " || (e.tagName === 'A' && !e.getAttribute('href') && !e.onclick)"
            )
            if disabled:
                return
            identity = await self._page_identity(nxt.spec, marker)
            mark = self._watch.mark()
            await nxt.click()
            await self._until_new_page(identity, mark, next_name)
            number += 1
            yield number

    async def _page_identity(
        self, spec: SelectorSpec, marker: str | None
    ) -> tuple[str, Locator, str]:
        """What tells this page from the next: (what it is, where it is, its value now)."""
        if marker is not None:
            text = await self[marker].text()
            return f"marker {marker!r}", (await self[marker].locator()).first, text
        scope: Any = self.raw
        if spec.frame is not None:
            scope = self._fast_frame(spec.frame) or await self._frame_scope(
                spec.frame, timeout_ms=None
            )
        viewstate = scope.locator("input[name=__VIEWSTATE]").first
        if await viewstate.count():
            return "__VIEWSTATE", viewstate, await viewstate.get_attribute("value") or ""
        body = scope.locator("body")
        return "text", body, await body.inner_text()

    async def _until_new_page(
        self, identity: tuple[str, Locator, str], mark: Mark, next_name: str
    ) -> None:
        from playwright.async_api import expect

        what, loc, before = identity
        timeout = self.config.navigation_timeout_ms
        try:
            if what == "__VIEWSTATE":
                await expect(loc).not_to_have_attribute("value", before, timeout=timeout)
            else:
                await expect(loc).not_to_have_text(before, use_inner_text=True, timeout=timeout)
        except AssertionError:
            self._raise_if_unhealthy()
            raise RobotError(
                f"The {self.system} page did not change within {timeout / 1000:g} s after "
                f"{next_name!r} was clicked (its {what} stayed the same); an unchanged page is "
                "never taken for the last one, so the lookup is retried."
            ) from None
        except Exception as exc:
            raise self._explain(exc, f"waiting for the page after {next_name!r}") from exc
        # The click's own wait made the round trip; what is left is to let it load.
        await self._settle(mark, f"moving on with {next_name!r}", barrier=False)

    async def clear_passwords(self) -> None:
        """Empty every password input in every frame (DOM snapshots copy input values)."""
        for frame in self.raw.frames:
            try:
                await frame.evaluate(CLEAR_PASSWORDS_JS)
            except Exception as exc:  # a frame navigating away has nothing left to clear
                logger.debug("clearing passwords skipped a frame: {}", type(exc).__name__)


def _either(locs: list[Locator]) -> Locator:
    combined = locs[0]
    for loc in locs[1:]:
        combined = combined.or_(loc)
    return combined


def _listing(names: Iterable[str]) -> str:
    return ", ".join(f"{{{n}}}" for n in names)


def _path_of(url: str) -> str:
    """A URL without its query (queries can hold keys and ID numbers)."""
    return url.split("?", 1)[0]


def decode_legacy(body: bytes, content_type: str | None, encoding: str | None = None) -> str:
    """Decode a legacy page: explicit encoding, header charset, meta charset, then GB18030."""
    charset = encoding
    if charset is None and content_type and "charset=" in content_type.lower():
        charset = content_type.lower().split("charset=", 1)[1].split(";")[0].strip(" \"'")
    if charset is None:
        match = _CHARSET.search(body[:4096])
        if match:
            charset = match.group(1).decode("ascii", "replace")
    if charset is None or charset.lower() in ("gbk", "gb2312", "gb_2312-80", "x-gbk"):
        charset = "gb18030"  # GBK pages often hold characters only GB18030 names
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("gb18030", errors="replace")
