"""``stampless shell``: a logged-in page of a department system to try selectors on.

Like Scrapy's ``shell``, it puts the objects a robot works with into an interactive
Python console, here an asyncio one (``await`` works at the prompt; IPython when it is
installed): ``page`` (the account's :class:`~stampless.RobotPage`, logged in through
the robot's own ``login``), ``robot``, ``selectors`` (the selector map), ``runtime``,
``config``, and two helpers: ``await show("search.cert_no")`` (or any Playwright
selector) says what each choice matches, outlines the matches in a screenshot and
highlights them in a headed browser; ``shelp()`` lists all of this. ``-c CODE`` runs
the code instead (statements, then the value of a last expression printed), which is
how scripts and tests use it.

The console runs in a thread of its own; each input is compiled with top-level
``await`` allowed and run on the event loop the browser lives on, so Playwright objects
are only ever touched from their loop.
"""

from __future__ import annotations

import ast
import asyncio
import code
import inspect
import re
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stampless.models import utcnow

if TYPE_CHECKING:
    from playwright.async_api import Locator

    from stampless.config import Config
    from stampless.robot import RobotPage, RobotRuntime

FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_OUTLINE_JS = "(els, on) => els.forEach(e => { e.style.outline = on ? '3px solid #e0218a' : ''; })"
_SNIPPET_JS = "els => els.slice(0, 5).map(e => e.outerHTML.replace(/\\s+/g, ' ').slice(0, 140))"


@dataclass
class ChoiceMatch:
    """What one choice of a selector matches, in one frame (or the page)."""

    choice: str
    where: str
    count: int
    elements: list[str] = field(default_factory=list)


@dataclass
class Shown:
    """The result of ``show(selector)``: the matches of each choice and the screenshot."""

    selector: str
    matches: list[ChoiceMatch]
    screenshot: Path | None

    @property
    def count(self) -> int:
        """Matches of the choice the runtime would use (the first that matches)."""
        return next((m.count for m in self.matches if m.count), 0)

    def __repr__(self) -> str:
        lines = [f"{self.selector}:"]
        for m in self.matches:
            lines.append(f"  {m.count} match(es) of {m.choice!r} in {m.where}")
            lines.extend(f"      {html}" for html in m.elements)
        if not any(m.count for m in self.matches):
            lines.append("  nothing matches (is it in a frame? are you on the right page?)")
        if self.screenshot is not None:
            lines.append(f"  screenshot: {self.screenshot}")
        return "\n".join(lines)


class Helpers:
    """The helpers a shell offers beside ``page``: :meth:`show` and :meth:`shelp`."""

    def __init__(self, page: RobotPage, folder: Path) -> None:
        self.page = page
        self.folder = folder

    async def show(self, selector: str, *, screenshot: bool = True) -> Shown:
        """What ``selector`` (a name of the map, or a Playwright selector) matches.

        Each choice of a named selector is counted in the frames the map puts it in; a
        Playwright selector is counted in the page and in every frame. The matches are
        outlined in a screenshot under ``<var_dir>/shell/`` (and highlighted, when the
        browser is headed).
        """
        page = self.page
        scopes: list[tuple[str, Any]] = []
        if selector in page.selectors:
            spec = page.selectors[selector]
            choices = spec.choices
            if spec.frame is None:
                scopes.append(("the page", page.raw))
            else:
                for path in page.selectors.frame_paths(spec.frame):
                    scope: Any = page.raw
                    for frame_choice in path:
                        scope = scope.frame_locator(frame_choice)
                    scopes.append((f"frame {spec.frame} ({' > '.join(path)})", scope))
        else:
            choices = (selector,)
            scopes.append(("the page", page.raw))
            for frame in page.raw.frames[1:]:
                scopes.append((f"frame {frame.name or frame.url}", frame))
        matches: list[ChoiceMatch] = []
        found: list[Locator] = []
        for choice in choices:
            for where, scope in scopes:
                locator = scope.locator(choice)
                try:
                    count = await locator.count()
                    elements = await locator.evaluate_all(_SNIPPET_JS) if count else []
                except Exception as exc:  # a malformed selector: say so, go on
                    matches.append(ChoiceMatch(choice, where, 0, [f"error: {exc}"[:160]]))
                    continue
                matches.append(ChoiceMatch(choice, where, count, list(elements)))
                if count:
                    found.append(locator)
        shot = await self._screenshot(selector, found[:1]) if screenshot else None
        return Shown(selector, matches, shot)

    async def _screenshot(self, selector: str, found: list[Locator]) -> Path | None:
        """A screenshot with the matches outlined (and highlighted in a headed browser)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", selector).strip("-")[:40] or "selector"
        path = self.folder / f"{utcnow():%Y%m%dT%H%M%S%f}-{slug}.png"
        for locator in found:
            await locator.evaluate_all(_OUTLINE_JS, True)
            if not self.page.config.headless:  # its labels would cover a screenshot
                await locator.highlight()
        try:
            await self.page.raw.screenshot(path=str(path), full_page=True)
        finally:
            for locator in found:
                await locator.evaluate_all(_OUTLINE_JS, False)
        return path

    def shelp(self) -> None:
        """Print what the shell offers."""
        print(HELP.format(folder=self.folder))


HELP = """\
Objects:
  page        the logged-in RobotPage: await page.goto("/path"), page["name"], page.raw
  robot       the robot (await robot.lookup(page, KEY) runs its lookup here)
  selectors   the selector map: list(selectors.selectors), selectors["name"].choices
  runtime     the RobotRuntime; config: robot.toml as loaded
Helpers:
  await show("name" or "css=...")   what each choice matches; a screenshot in {folder}
  await page["name"].count()        how many elements the map's choice finds
  await page["name"].inner_text()   what a read returns (strict: one element)
  shelp()                           this help
await works at the prompt. Exit with Ctrl-D."""


def namespace(
    page: RobotPage, runtime: RobotRuntime, system: str, config: Config
) -> dict[str, Any]:
    """The names a shell starts with."""
    helpers = Helpers(page, config.var_dir / "shell")
    found = runtime.system(system)
    return {
        "page": page,
        "robot": found.robot,
        "selectors": found.selectors,
        "runtime": runtime,
        "config": config,
        "show": helpers.show,
        "shelp": helpers.shelp,
        "asyncio": asyncio,
    }


async def run_code(source: str, names: dict[str, Any]) -> Any:
    """Run ``source`` (top-level ``await`` allowed); the value of its last expression.

    SyntaxError for code that does not compile; the code's own exceptions propagate.
    """
    tree = ast.parse(source, mode="exec")
    last: ast.expr | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        final = tree.body.pop()
        assert isinstance(final, ast.Expr)
        last = final.value
    if tree.body:
        result = eval(compile(tree, "<shell -c>", "exec", flags=FLAGS), names)  # noqa: S307
        if inspect.iscoroutine(result):
            await result
    if last is None:
        return None
    value = eval(compile(ast.Expression(last), "<shell -c>", "eval", flags=FLAGS), names)  # noqa: S307
    if inspect.iscoroutine(value):
        value = await value
    return value


class AsyncConsole(code.InteractiveConsole):
    """A console whose inputs may ``await``; each runs on ``loop`` (the browser's)."""

    def __init__(self, names: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(names)
        self.loop = loop
        self.compile.compiler.flags |= FLAGS

    def runcode(self, code_object: types.CodeType) -> None:
        async def run() -> None:
            result = eval(code_object, self.locals)  # noqa: S307
            if inspect.iscoroutine(result):
                await result

        try:
            asyncio.run_coroutine_threadsafe(run(), self.loop).result()
        except SystemExit:
            raise
        except BaseException:
            self.showtraceback()


def interact(names: dict[str, Any], loop: asyncio.AbstractEventLoop, banner: str) -> None:
    """The interactive console (IPython when it is installed); returns on Ctrl-D."""
    try:
        from IPython.terminal.embed import InteractiveShellEmbed
    except ImportError:
        AsyncConsole(names, loop).interact(banner=banner, exitmsg="")
        return
    shell = InteractiveShellEmbed(banner1=banner, user_ns=names)
    shell.autoawait = True
    shell.loop_runner = lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result()
    shell()


def describe_failure(exc: BaseException) -> str:
    """The code's exception as the lines of its traceback inside the code itself."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<shell -c>"]
    where = f" (line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}{where}: {exc}"


def banner(system: str, account: str, url: str) -> str:
    version = ".".join(str(n) for n in sys.version_info[:3])
    return (
        f"stampless shell: {system}, logged in as {account}, at {url}\n"
        f"Python {version}; await works here. shelp() lists what there is."
    )
