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
       submission) run before it. The timer is set twice, one inside the other: a form
       submission that a timer's handler asked for (an AutoPostBack's
       ``setTimeout('__doPostBack(...)', 0)``) is a task queued when that handler ran, so
       only the second timer comes after it. The round trip answers whether the document
       has begun to navigate away meanwhile: the context's init script (:data:`LEAVING_JS`)
       notes each cross-document ``navigate`` event (the Navigation API) in the document.
       A round trip that fails says so too: Playwright holds an evaluation from the moment
       it knows that the frame's navigation began and fails it when the new document
       commits, and that failure can reach us before the ``framenavigated`` event;
    2. waits until every navigation request seen on a frame has committed its new
       document (``framenavigated``) or failed, and until every frame whose document
       answered "leaving" in step 1 has committed a new document or seen its navigation
       end without one. The request of a navigation the renderer has begun reaches us
       from the browser process, which on a loaded machine can be later than the round
       trip's answer: without the answer, the action would return before the post-back
       had begun, and the next read would see the old page;
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

# Run in every document of a robot's context before its own scripts (open_context adds
# it): a cross-document navigation has begun in this document (a form submission, a
# location change, a link), whether or not its request has reached the robot yet.
LEAVING_JS = """(() => {
  if (!window.navigation) return;
  window.navigation.addEventListener("navigate", event => {
    if (!event.destination.sameDocument) window.__stamplessLeaving = true;
  });
})();"""

# Resolves on the page's own timer queue after every zero-delay timer set before it and
# every task those timers queued, with whether the document has begun to leave (and
# forgets it: a navigation that ends without a new document is waited for once).
_BARRIER_JS = """() => new Promise(resolve => setTimeout(() => setTimeout(() => {
  const leaving = window.__stamplessLeaving === true;
  window.__stamplessLeaving = false;
  resolve(leaving);
}, 0), 0))"""


@dataclass(frozen=True)
class Mark:
    """The documents of a page's frames at one moment (frame -> documents committed), and
    their navigations that had ended without a document (frame -> how many)."""

    documents: dict[Frame, int] = field(default_factory=dict)
    ended: dict[Frame, int] = field(default_factory=dict)


class NavigationWatch:
    """The navigations of one page's frames, from Playwright's events (see the module doc)."""

    def __init__(self, raw: Page) -> None:
        self.raw = raw
        self._documents: dict[Frame, int] = {}
        self._pending: dict[Frame, Request] = {}
        self._ended: dict[Frame, int] = {}
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
        if request.is_navigation_request():
            self._end(request.frame)
            if self._pending.get(request.frame) is request:
                del self._pending[request.frame]
            self._moved.set()

    def _on_download(self, download: Download) -> None:
        # A navigation answered with an attachment becomes a download, not a document.
        frames = [f for f, request in self._pending.items() if request.url == download.url]
        for frame in frames or [self.raw.main_frame]:
            self._pending.pop(frame, None)
            self._end(frame)
        self._moved.set()

    def _end(self, frame: Frame) -> None:
        self._ended[frame] = self._ended.get(frame, 0) + 1

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
        return Mark(dict(self._documents), dict(self._ended))

    @property
    def navigating(self) -> bool:
        """Whether a navigation request is in flight in any frame of the page."""
        return bool(self._pending)

    async def settle(self, mark: Mark, *, timeout_s: float, barrier: bool = True) -> bool:
        """Wait for what happened since ``mark`` (steps 1-3 of the module doc).

        ``barrier=False`` skips step 1, for a wait that follows another settle (nothing
        new was started since). Returns whether a frame committed a new document. Raises
        TimeoutError when a navigation did not commit, or a document did not load, within
        ``timeout_s``. A document that said it was leaving but whose navigation never sent
        a request (a script of the page called it off) is waited for until ``timeout_s``,
        then taken as it is.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        leaving: dict[Frame, int] = {}
        if barrier:
            leaving = await asyncio.wait_for(self._barrier(), timeout_s)

        def left(frame: Frame) -> bool:
            return (
                frame.is_detached()
                or self._documents.get(frame, 0) != leaving[frame]
                or self._ended.get(frame, 0) != mark.ended.get(frame, 0)
            )

        while self._pending or not all(left(frame) for frame in leaving):
            self._moved.clear()
            try:
                await asyncio.wait_for(self._moved.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                if self._pending:
                    raise
                logger.debug("a document said it was leaving, but no navigation came")
                break
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

    async def _barrier(self) -> dict[Frame, int]:
        """Step 1: the frames whose document answered that it is leaving, each with the
        count of its documents when the round trip began."""
        leaving: dict[Frame, int] = {}

        async def one(frame: Frame) -> None:
            documents = self._documents.get(frame, 0)
            try:
                if await frame.evaluate(_BARRIER_JS):
                    leaving[frame] = documents
            except Exception as exc:
                # The document went away during the round trip (Playwright holds an
                # evaluation from the moment it knows a navigation began, and fails it
                # when the new document commits): it left, though the event saying so
                # may come after this answer. Step 2 waits for it.
                logger.trace("navigation barrier in a frame: {}", type(exc).__name__)
                if not frame.is_detached():
                    leaving[frame] = documents

        await asyncio.gather(*(one(frame) for frame in self.raw.frames))
        return leaving

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
