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
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from loguru import logger

from stampless.errors import (
    BrowserError,
    DepartmentUnavailable,
    InputError,
    RobotError,
    SessionLost,
    StamplessError,
)
from stampless.robot._evidence import CLEAR_PASSWORDS_JS, Evidence, safe_filename, sha256_file

if TYPE_CHECKING:
    from playwright.async_api import (
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


@dataclass
class SelectorUse:
    """How often each choice of a named selector matched (reported in ``rt.stats()``)."""

    by_index: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    last: int | None = None  # the choice that matched last time (None: none did)


class Element:
    """A named element of the page; resolved through its fallbacks each time it is used.

    Fast path: while the map's first choice keeps matching, an action goes straight to
    it (one browser round trip, like a hand-written script); only when it does not
    appear within :data:`FAST_MS` are all choices resolved in order (and drift noted).
    """

    def __init__(self, page: RobotPage, spec: SelectorSpec) -> None:
        self._page = page
        self.spec = spec
        self.name = spec.name

    def __repr__(self) -> str:
        return f"Element({self.name!r})"

    async def locator(self, *, timeout_ms: float | None = None) -> Locator:
        """The Playwright locator of the first choice that matches (waits for one)."""
        return await self._page._resolve(self.spec, timeout_ms=timeout_ms)

    async def exists(self, *, timeout_ms: float = 0) -> bool:
        """Whether any choice matches now (or within ``timeout_ms``); never raises RobotError."""
        return await self._page._present(self.spec, timeout_ms=timeout_ms)

    async def _act(self, doing: str, action: Callable[[Locator, float], Awaitable[Any]]) -> Any:
        from playwright.async_api import TimeoutError as PlaywrightTimeout

        page = self._page
        fast = page._fast_locator(self.spec)
        if fast is not None:
            try:
                result = await action(fast, FAST_MS)
            except PlaywrightTimeout:
                pass  # not there (yet): resolve every choice, with the full timeout
            except Exception as exc:
                raise page._explain(exc, f"{doing} {self.name!r}") from exc
            else:
                page._note_match(self.spec.name, self.spec.choices, 0)
                return result
        loc = await self.locator()
        try:
            return await action(loc.first, page.config.timeout_ms)
        except Exception as exc:
            raise page._explain(exc, f"{doing} {self.name!r}") from exc

    async def click(self) -> None:
        """Click the element (the page may navigate; the next element waits for it)."""
        await self._act("clicking", lambda loc, t: loc.click(timeout=t))

    async def click_and_wait(self, *, frame: str | None = None) -> None:
        """Click and wait for the document it loads (in the element's own frame).

        Use it for submits and links, so the next read never sees the previous page.
        ``frame`` names the frame that loads instead (a menu link with ``target=``).
        An error page raises DepartmentUnavailable; the login page, SessionLost.
        """
        page = self._page
        page._server_error = None
        target = await page.frame_object(frame) if frame is not None else None

        async def click(loc: Locator, timeout: float) -> None:
            waiter: Any = page.raw if target is None else target
            if target is None and self.spec.frame is not None:
                handle = await loc.element_handle(timeout=timeout)
                waiter = await handle.owner_frame() or page.raw
            async with waiter.expect_navigation(
                wait_until="domcontentloaded", timeout=page.config.navigation_timeout_ms
            ):
                await loc.click(timeout=timeout)

        await self._act("following", click)
        page._raise_if_unhealthy()
        await page._check_logged_out()

    async def fill(self, value: str) -> None:
        """Replace the element's value with ``value``."""
        await self._act("filling", lambda loc, t: loc.fill(value, timeout=t))

    async def fill_secret(self, secret: Secret | str) -> None:
        """Type a secret (password, TOTP code). Never logged; masked in screenshots.

        Only call this from ``login``: the runtime runs login outside any trace and
        empties password inputs afterwards, so the value is in no trace or snapshot.
        """
        value = secret if isinstance(secret, str) else secret.reveal()
        loc = await self.locator()
        failed = False
        try:
            await loc.first.fill(value)
        except Exception:
            failed = True
        if failed:
            # The Playwright message may echo the typed value: neither chain nor quote it.
            raise RobotError(f"Could not type into {self.name!r}; check the selector map.")

    async def select(self, value: str) -> None:
        """Choose an ``<option>`` by value or label."""
        await self._act("selecting in", lambda loc, t: loc.select_option(value, timeout=t))

    async def check(self, checked: bool = True) -> None:
        await self._act("checking", lambda loc, t: loc.set_checked(checked, timeout=t))

    async def text(self) -> str:
        """The element's visible text, stripped."""
        return str(await self._act("reading", lambda loc, t: loc.inner_text(timeout=t))).strip()

    async def value(self) -> str:
        """The value of an input."""
        return str(await self._act("reading", lambda loc, t: loc.input_value(timeout=t)))

    async def attribute(self, name: str) -> str | None:
        result = await self._act("reading", lambda loc, t: loc.get_attribute(name, timeout=t))
        return None if result is None else str(result)

    async def texts(self) -> list[str]:
        """The texts of every element the matching choice finds (table rows, cells)."""
        loc = await self.locator()
        try:
            return [t.strip() for t in await loc.all_inner_texts()]
        except Exception as exc:
            raise self._page._explain(exc, f"reading {self.name!r}") from exc

    async def count(self) -> int:
        """How many elements match now (0 when none; does not wait)."""
        if not await self.exists():
            return 0
        loc = await self.locator()
        return await loc.count()


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
    ) -> None:
        self.raw = raw
        self.system = system
        self.base_url = base_url.rstrip("/") + "/"
        self.selectors = selectors
        self.config = config
        self.drift = drift
        self.evidence = evidence
        self.usage: dict[str, SelectorUse] = usage if usage is not None else {}
        self.dialogs: list[DialogInfo] = []
        self.popups: list[RobotPage] = []
        self.logout_probe: Callable[[], Awaitable[bool]] | None = None
        self.probing = True
        self._policies: list[_DialogPolicy] = []
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
        if self.probing and self.logout_probe is not None and await self.logout_probe():
            raise SessionLost(
                f"The {self.system} system logged the robot out; it logs in again and retries."
            )

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
        """Open ``url`` (relative to the system's URL); 5xx and logouts raise at once."""
        self._server_error = None
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
        await self._check_logged_out()

    async def screenshot(self, caption: str) -> Path | None:
        """A masked, captioned screenshot of this page (or popup) into the evidence."""
        return await self.evidence.screenshot(caption, page=self.raw)

    async def wait_for_load(self) -> None:
        """Wait until the current navigation has loaded its document."""
        try:
            await self.raw.wait_for_load_state("domcontentloaded")
        except Exception as exc:
            raise self._explain(exc, "waiting for the page") from exc
        self._raise_if_unhealthy()

    # ---- selectors ----------------------------------------------------------------------

    def __getitem__(self, name: str) -> Element:
        return Element(self, self.selectors[name])

    def element(self, name: str, **params: str) -> Element:
        """A named selector whose choices hold ``{placeholders}``, filled from ``params``.

        ``page.element("detail.value", label="登记日期")`` for a map entry such as
        ``any = ["xpath=//td[normalize-space(.)='{label}']/following-sibling::td[1]"]``.
        """
        spec = self.selectors[name]
        choices = []
        for choice in spec.choices:
            for key, value in params.items():
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
        loc: Locator = scope.locator(spec.choices[0]).first
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
        locs = await self._scope_locators(spec, timeout_ms)
        index = await self._first_match(spec.name, spec.choices, locs, timeout_ms)
        return locs[index]

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
                raise RobotError(
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
        """Click ``name`` and return the window it opens (``window.open``) as a RobotPage."""
        try:
            async with self.raw.context.expect_page(timeout=self.config.timeout_ms) as info:
                await self[name].click()
            raw = await info.value
            await raw.wait_for_load_state("domcontentloaded")
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
        )
        child.logout_probe = None  # the popup has no login form of its own to look for
        self.popups.append(child)
        return child

    async def close_popups(self) -> None:
        """Close the windows this page opened (the runtime calls this after each request)."""
        for popup in self.popups:
            try:
                await popup.close_popups()
                if not popup.raw.is_closed():
                    await popup.raw.close()
            except Exception as exc:
                logger.debug("closing popup failed: {}", type(exc).__name__)
        self.popups.clear()

    async def download(self, name: str, *, filename: str | None = None) -> Path:
        """Click ``name``, wait for the download (browser.download_timeout_ms), keep it.

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
        stored = self.evidence.add_file(staged, suggested, kind="download")
        digest = sha256_file(stored)
        self.evidence.set_meta(download_file=stored.name, download_sha256=digest)
        logger.info(
            "downloaded {} ({} bytes, sha256 {}…)", stored.name, stored.stat().st_size, digest[:12]
        )
        return stored

    # ---- legacy helpers -----------------------------------------------------------------

    async def fetch_text(self, url: str, *, encoding: str | None = None) -> str:
        """GET ``url`` with the page's cookies and decode it (GBK pages included).

        The charset comes from ``encoding``, else the Content-Type header, else a
        ``<meta charset>`` in the bytes, else GB18030 (a superset of GBK and GB2312).
        """
        try:
            response = await self.raw.context.request.get(
                self.absolute(url), timeout=self.config.navigation_timeout_ms
            )
            body = await response.body()
        except Exception as exc:
            raise self._explain(exc, f"fetching {_path_of(self.absolute(url))}") from exc
        if response.status >= 500:
            raise DepartmentUnavailable(
                f"The {self.system} system answered HTTP {response.status}; it is retried."
            )
        return decode_legacy(body, response.headers.get("content-type"), encoding)

    async def viewstate(self) -> str | None:
        """The ASP.NET ``__VIEWSTATE`` of the current page, if it has one."""
        loc = self.raw.locator("input[name=__VIEWSTATE]")
        return await loc.first.get_attribute("value") if await loc.count() else None

    async def postback(self, target: str, argument: str = "", *, frame: str | None = None) -> None:
        """Do an ASP.NET ``__doPostBack(target, argument)`` and wait for the new page.

        Pages without ``__doPostBack`` get ``__EVENTTARGET``/``__EVENTARGUMENT`` set on
        their first form, which is then submitted with its ``__VIEWSTATE``.
        """
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
        self._server_error = None
        where: Any = self.raw if frame is None else await self.frame_object(frame)
        try:
            async with where.expect_navigation(
                wait_until="domcontentloaded", timeout=self.config.navigation_timeout_ms
            ):
                await where.evaluate(script, [target, argument])
        except Exception as exc:
            raise self._explain(exc, f"posting back {target!r}") from exc
        self._raise_if_unhealthy()
        await self._check_logged_out()

    async def paginate(
        self, next_name: str, *, max_pages: int = 50, marker: str | None = None
    ) -> AsyncIterator[int]:
        """Yield 1, 2, … while clicking ``next_name`` to move through a result list.

        Stops when the "next" element is gone or disabled, or after ``max_pages``.
        ``marker`` names an element whose text changes from page to page (a page number);
        the iterator waits for it to change so a page is never read twice.
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
            before = await self[marker].text() if marker else None
            await nxt.click()
            if marker is not None:
                await self._wait_text_change(marker, before)
            else:
                await self.wait_for_load()
            number += 1
            yield number

    async def _wait_text_change(self, name: str, before: str | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_ms / 1000
        while loop.time() < deadline:
            if await self[name].exists() and await self[name].text() != before:
                return
            self._raise_if_unhealthy()
            await asyncio.sleep(0.05)
        raise RobotError(f"{name!r} did not change after moving to the next page.")

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
