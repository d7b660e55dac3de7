"""What a page action waits for, and the proof that the reads of a record saw one document.

Playwright's ``click`` returns once the click was dispatched. A navigation the click
causes may start later: a ``javascript:__doPostBack(...)`` link runs its script in a task
after the click, and an ASP.NET AutoPostBack control posts back from a ``setTimeout``.
``wait_for_load_state`` right after such a click returns at once, because it looks at the
document that is still there (Playwright documents that the navigation must have been
committed when it is called). Reading then sees the old page, or a new one half parsed.

:class:`NavigationWatch` follows one Playwright page's events: a navigation request seen
on a frame (``request`` with ``is_navigation_request()``), the frame committing its new
document (``framenavigated``), and a navigation that ends without one (``requestfailed``,
or a ``download``). With them:

:meth:`NavigationWatch.settle`, which every page action runs after the action itself,
    1. makes one round trip to each frame of the page that resolves on a zero-delay timer
       of the page's own (``setTimeout(resolve, 0)``): timers of equal delay fire in the
       order they were set, and tasks queued before it (a ``javascript:`` URL, a form
       submission) run before it, so a navigation the action's handlers started has
       issued its request by then;
    2. waits until every navigation request seen on a frame has committed its new
       document (``framenavigated``) or failed;
    3. waits for DOMContentLoaded in every frame that committed a new document since the
       action began (``frame.wait_for_load_state("domcontentloaded")``, which is right
       once the frame has committed, and covers its child frames).
    When no request was seen and no frame committed, it returns after step 1.

:meth:`NavigationWatch.check_read`, which every read runs before and after itself:
    the reads since the last action are the reads of one record. If a frame that had
    a document when they began has committed another one since, or has a navigation
    request in flight, the read is refused (:class:`~stampless.errors.PageChanged`, which
    the retry layer tries again within the request's deadline). A record assembled from two
    versions of a page therefore cannot be returned.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from playwright.async_api import Download, Frame, Page, Request

# Resolves on the page's own timer queue: after every zero-delay timer set before it.
_BARRIER_JS = "() => new Promise(resolve => setTimeout(resolve, 0))"


@dataclass(frozen=True)
class Mark:
    """The documents of a page's frames at one moment (frame -> documents committed)."""

    documents: dict[Frame, int] = field(default_factory=dict)


class NavigationWatch:
    """The navigations of one page's frames, from Playwright's events (see the module doc)."""

    def __init__(self, raw: Page) -> None:
        self.raw = raw
        self._documents: dict[Frame, int] = {}
        self._pending: dict[Frame, Request] = {}
        self._moved = asyncio.Event()
        self._reading: Mark | None = None
        # A page handed over with its first document (a popup) has committed it already.
        for frame in raw.frames:
            if frame.url not in ("", "about:blank"):
                self._documents[frame] = 1
        raw.on("request", self._on_request)
        raw.on("requestfailed", self._on_request_failed)
        raw.on("framenavigated", self._on_frame_navigated)
        raw.on("framedetached", self._on_frame_detached)
        raw.on("download", self._on_download)

    # ---- events -----------------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        if request.is_navigation_request():
            self._pending[request.frame] = request
            self._moved.set()

    def _on_request_failed(self, request: Request) -> None:
        # An error, an abort (a newer navigation, a download): no document will come.
        if request.is_navigation_request() and self._pending.get(request.frame) is request:
            del self._pending[request.frame]
            self._moved.set()

    def _on_download(self, download: Download) -> None:
        # A navigation answered with an attachment becomes a download, not a document.
        for frame, request in list(self._pending.items()):
            if request.url == download.url:
                del self._pending[frame]
        self._moved.set()

    def _on_frame_navigated(self, frame: Frame) -> None:
        self._documents[frame] = self._documents.get(frame, 0) + 1
        self._pending.pop(frame, None)
        self._moved.set()

    def _on_frame_detached(self, frame: Frame) -> None:
        self._documents.pop(frame, None)
        self._pending.pop(frame, None)
        self._moved.set()

    # ---- actions ----------------------------------------------------------------------

    def mark(self) -> Mark:
        """The frames' documents now; :meth:`settle` waits for those that change after it."""
        return Mark(dict(self._documents))

    @property
    def navigating(self) -> bool:
        """Whether a navigation request is in flight in any frame of the page."""
        return bool(self._pending)

    async def settle(self, mark: Mark, *, timeout_s: float, barrier: bool = True) -> bool:
        """Wait for what happened since ``mark`` (steps 1-3 of the module doc).

        ``barrier=False`` skips step 1, for a wait that follows another settle (nothing
        new was started since). Returns whether a frame committed a new document. Raises
        TimeoutError when a navigation did not commit, or a document did not load, within
        ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if barrier:
            await asyncio.wait_for(self._barrier(), timeout_s)
        while self._pending:
            self._moved.clear()
            await asyncio.wait_for(self._moved.wait(), max(0.0, deadline - loop.time()))
        changed = [
            frame
            for frame, count in self._documents.items()
            if count != mark.documents.get(frame, 0) and not frame.is_detached()
        ]
        for frame in changed:
            remaining = max(0.0, deadline - loop.time()) * 1000
            try:
                await frame.wait_for_load_state("domcontentloaded", timeout=remaining)
            except Exception as exc:
                if frame.is_detached():  # its parent navigated; that parent is waited for
                    continue
                raise TimeoutError(f"the document of a frame did not load ({exc})") from exc
        return bool(changed)

    async def _barrier(self) -> None:
        async def one(frame: Frame) -> None:
            try:
                await frame.evaluate(_BARRIER_JS)
            except Exception as exc:
                # The frame navigated or went away during the round trip: the events
                # say which, and step 2 waits for it.
                logger.trace("navigation barrier in a frame: {}", type(exc).__name__)

        await asyncio.gather(*(one(frame) for frame in self.raw.frames))

    # ---- reads ------------------------------------------------------------------------

    def new_record(self) -> None:
        """An action ended: the next reads are those of a new record (of this document)."""
        self._reading = None

    def check_read(self) -> str | None:
        """Why the reads since the last action would span two documents, or None if they do not.

        The first call after an action notes the frames' documents; later calls compare.
        """
        if self._reading is None:
            self._reading = Mark({f: n for f, n in self._documents.items() if n > 0})
        for frame, count in self._reading.documents.items():
            if frame.is_detached():
                continue
            if self._documents.get(frame, 0) != count:
                return "a frame loaded another document while the robot read the page"
            if frame in self._pending:
                return "a frame was loading another document while the robot read the page"
        return None
