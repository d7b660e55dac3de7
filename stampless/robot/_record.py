"""``stampless record``: a recorded Playwright script turned into a draft selector map.

``playwright codegen`` records what a person does in a browser as a script
(``await page.get_by_role("button", name="Search").click()``). This module reads such a
script without running it (Python's ``ast``; only locator calls with literal arguments
are understood), then replays its steps on the account's logged-in page: before each
action it fingerprints the element the recorded locator finds, so every element gets a
name and, besides the recorded locator, fallbacks from what it is (its id, name
attribute, role and accessible name, label), each checked to find that element alone.
The result is a draft ``selectors/<system>.draft.toml`` to read, rename and keep.

Typed values are never written to the map; a field typed into a password input is
marked ``mask = true``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from stampless.errors import InputError
from stampless.robot._repair import FINGERPRINT_JS, checked_choices

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

    from stampless.robot import RobotPage

# Locator methods of Playwright's API a recording uses; nothing else is ever called.
LOCATOR_METHODS = frozenset(
    {
        "locator",
        "get_by_role",
        "get_by_text",
        "get_by_label",
        "get_by_placeholder",
        "get_by_alt_text",
        "get_by_title",
        "get_by_test_id",
        "frame_locator",
        "nth",
        "filter",
    }
)
LOCATOR_PROPERTIES = frozenset({"first", "last", "content_frame"})
ACTIONS = frozenset(
    {
        "click",
        "dblclick",
        "fill",
        "press",
        "check",
        "uncheck",
        "set_checked",
        "select_option",
        "hover",
        "set_input_files",
    }
)


@dataclass
class Link:
    """One link of a locator chain: a method call or a property."""

    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    call: bool = True


@dataclass
class Step:
    """One recorded line: ``goto`` (``url``) or an action on a locator chain."""

    line: int
    page: str  # the page variable: page, page1 (a popup), ...
    action: str  # goto, or one of ACTIONS
    chain: list[Link] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    url: str | None = None
    opens: str | None = None  # the popup variable this action opens (expect_popup)
    source: str = ""


def _literal(node: ast.expr, where: int) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "compile":
            # re.compile("...") in get_by_role(name=re.compile(...)): keep the pattern text
            return ast.literal_eval(node.args[0])
        raise InputError(
            f"Line {where} of the recording passes something other than a literal; "
            "record again, or edit the line to use plain strings and numbers."
        ) from None


def _chain(node: ast.expr, line: int) -> tuple[str, list[Link]] | None:
    """``page.get_by_role(...).first`` as ("page", [links]); None if it is not a locator."""
    links: list[Link] = []
    while True:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name not in LOCATOR_METHODS:
                return None
            args = [_literal(a, line) for a in node.args]
            kwargs = {k.arg: _literal(k.value, line) for k in node.keywords if k.arg}
            links.append(Link(name, args, kwargs))
            node = node.func.value
        elif isinstance(node, ast.Attribute) and node.attr in LOCATOR_PROPERTIES:
            links.append(Link(node.attr, call=False))
            node = node.value
        elif isinstance(node, ast.Name):
            links.reverse()
            return node.id, links
        else:
            return None


def _unawait(node: ast.expr) -> ast.expr:
    return node.value if isinstance(node, ast.Await) else node


def _step(node: ast.expr, source: list[str], opens: str | None = None) -> Step | None:
    node = _unawait(node)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    line = node.lineno
    text = source[line - 1].strip() if line - 1 < len(source) else ""
    method = node.func.attr
    target = node.func.value
    if method == "goto" and isinstance(target, ast.Name) and node.args:
        url = _literal(node.args[0], line)
        return Step(line, target.id, "goto", url=str(url), source=text)
    if method not in ACTIONS:
        return None
    found = _chain(target, line)
    if found is None:
        return None
    page, links = found
    args = [_literal(a, line) for a in node.args]
    return Step(line, page, method, links, args, opens=opens, source=text)


def parse_recording(text: str) -> list[Step]:
    """The steps of a ``playwright codegen`` script (python, python-async or pytest).

    InputError when the text is not Python or holds no step.
    """
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise InputError(
            f"The recording is not a Python script (line {exc.lineno}: {exc.msg}); record it "
            "with --target python-async, python or python-pytest."
        ) from None
    source = text.splitlines()
    steps: list[Step] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Expr):
                step = _step(stmt.value, source)
                if step is not None:
                    steps.append(step)
            elif isinstance(stmt, ast.With | ast.AsyncWith):
                # with page.expect_popup() as page1_info: <action>  (then page1 = ...value)
                opens = None
                item = stmt.items[0]
                call = _unawait(item.context_expr)
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "expect_popup"
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    opens = item.optional_vars.id.removesuffix("_info")
                for inner in stmt.body:
                    if isinstance(inner, ast.Expr):
                        step = _step(inner.value, source, opens)
                        if step is not None:
                            steps.append(step)
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(stmt.body)

    visit(tree.body)
    if not any(step.action != "goto" for step in steps):
        raise InputError(
            "The recording holds no action stampless understands (click, fill, press, check, "
            "select_option on page.locator or get_by_* locators), only where it went; "
            "record again, and act on each element the robot needs."
        )
    return steps


def build(page: Page, links: list[Link]) -> Locator:
    """The Playwright locator of a recorded chain, built with the allowed calls only."""
    node: Any = page
    for link in links:
        if link.name not in LOCATOR_METHODS | LOCATOR_PROPERTIES:
            raise InputError(f"{link.name} is not a locator call stampless replays.")
        attribute = getattr(node, link.name)
        node = attribute(*link.args, **link.kwargs) if link.call else attribute
    locator: Locator = node
    return locator


def split_frames(links: list[Link]) -> tuple[list[str], list[Link]]:
    """The frame selectors a chain enters, and the rest of the chain inside the last frame."""
    frames: list[str] = []
    rest: list[Link] = []
    for link in links:
        if link.name == "frame_locator":
            frames.append(str(link.args[0]))
            rest = []
        elif link.name == "content_frame":
            # page.locator("iframe[name=x]").content_frame: the frame is that locator's element
            frames.append(_selector_text(rest))
            rest = []
        else:
            rest.append(link)
    return frames, rest


def _relative(url: str) -> str:
    """The path, query and fragment of ``url``."""
    parts = urlsplit(url)
    return urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment))


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _selector_text(links: list[Link]) -> str:
    """The chain as one Playwright selector string (the engines page.locator() takes)."""
    parts: list[str] = []
    for link in links:
        arg = str(link.args[0]) if link.args else ""
        exact = link.kwargs.get("exact", False)
        if link.name == "locator":
            parts.append(arg)
        elif link.name == "get_by_role":
            name = link.kwargs.get("name")
            suffix = f"[name={_quoted(str(name))}{' s' if exact else ' i'}]" if name else ""
            parts.append(f"role={arg}{suffix}")
        elif link.name == "get_by_text":
            parts.append(f"text={_quoted(arg)}" if exact else f"text={arg}")
        elif link.name == "get_by_label":
            parts.append(f"internal:label={_quoted(arg)}{'s' if exact else 'i'}")
        elif link.name == "get_by_placeholder":
            parts.append(f"internal:attr=[placeholder={_quoted(arg)}{'s' if exact else 'i'}]")
        elif link.name == "get_by_alt_text":
            parts.append(f"internal:attr=[alt={_quoted(arg)}{'s' if exact else 'i'}]")
        elif link.name == "get_by_title":
            parts.append(f"internal:attr=[title={_quoted(arg)}{'s' if exact else 'i'}]")
        elif link.name == "get_by_test_id":
            parts.append(f"internal:testid=[data-testid={_quoted(arg)}s]")
        elif link.name in ("first", "last"):
            parts.append("nth=0" if link.name == "first" else "nth=-1")
        elif link.name == "nth":
            parts.append(f"nth={arg}")
        elif link.name == "filter" and "has_text" in link.kwargs:
            parts.append(f"internal:has-text={_quoted(str(link.kwargs['has_text']))}i")
    return " >> ".join(parts)


@dataclass
class Drafted:
    """One element of the draft map."""

    name: str
    choices: list[str]
    frame: str | None
    mask: bool
    recorded: str  # the recorded line


def _slug(text: str) -> str:
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)  # certNo -> cert_No
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:30]


def name_for(fingerprint: dict[str, Any], url: str, taken: set[str]) -> str:
    """A name such as ``search.cert_no`` or ``login.sign_in`` for a recorded element."""
    path = re.sub(r"\?.*", "", url).split("://", 1)[-1].split("/", 1)[-1]
    first = _slug(path.split("/")[0].split(".")[0]) or "page"
    word = ""
    for key in ("id", "name", "accessible_name", "label", "text", "placeholder"):
        word = _slug(str(fingerprint.get(key) or ""))
        if word:
            break
    kind = fingerprint.get("kind", "element")
    base = f"{first}.{word or kind}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


async def draft(page: RobotPage, steps: list[Step]) -> tuple[list[Drafted], dict[str, str]]:
    """Replay ``steps`` on ``page`` (logged in), naming each element and finding fallbacks.

    Returns the elements in the order first used, and the frames (name -> selector).
    """
    pages: dict[str, Page] = {}
    first_alias = steps[0].page
    pages[first_alias] = page.raw
    drafted: dict[str, Drafted] = {}
    frames: dict[str, str] = {}
    taken: set[str] = set()
    for step in steps:
        raw = pages.get(step.page)
        if raw is None:
            raise InputError(
                f"Line {step.line} of the recording uses {step.page!r}, a window stampless "
                "did not see open; record the flow again from the start."
            )
        if step.action == "goto":
            # The recording's own address may differ from robot.toml's (another host or
            # port of the same system): its path is what is replayed.
            await page.goto(_relative(step.url or "/"))
            continue
        frame_path, inner = split_frames(step.chain)
        scope: Any = raw
        for frame_selector in frame_path:
            scope = scope.frame_locator(frame_selector)
        recorded = _selector_text(inner)
        locator = build(raw, step.chain)
        fingerprint = await locator.evaluate(FINGERPRINT_JS)
        # One element, however many ways the recording found it: the page, its frame,
        # and its place among the elements of its tag.
        where = urlsplit(raw.url).path
        element = f"{fingerprint['tag']}#{fingerprint['ordinal']}"
        key = f"{where}\x1f{' > '.join(frame_path)}\x1f{element}"
        if key in drafted and recorded not in drafted[key].choices:
            drafted[key].choices.insert(1, recorded)
        if key not in drafted:
            frame_name = None
            if frame_path:
                frame_name = _slug(frame_path[-1].split("=")[-1]) or f"frame{len(frames) + 1}"
                frames.setdefault(frame_name, frame_path[-1])
            choices = [recorded]
            choices += await checked_choices(scope, fingerprint, exclude=(recorded,))
            drafted[key] = Drafted(
                name_for(fingerprint, raw.url, taken),
                choices,
                frame_name,
                fingerprint.get("type") == "password",
                step.source,
            )
        await _perform(raw, locator, step, pages)
    return list(drafted.values()), frames


async def _perform(raw: Page, locator: Locator, step: Step, pages: dict[str, Page]) -> None:
    """Do what the recording did, so the next steps find the page they expect."""
    action = getattr(locator, step.action)
    if step.opens is not None:
        async with raw.context.expect_page() as info:
            await action(*step.args)
        popup = await info.value
        await popup.wait_for_load_state("domcontentloaded")
        pages[step.opens] = popup
        return
    await action(*step.args)
    await raw.wait_for_load_state("domcontentloaded")


def to_toml(system: str, elements: list[Drafted], frames: dict[str, str], source: str) -> str:
    """The draft selector map as TOML text, each element with its recorded line."""
    from stampless.models import utcnow

    lines = [
        f"# Draft selector map of {system}, recorded by 'stampless record' from {source}",
        f"# on {utcnow():%Y-%m-%d}. Each name's first choice is the recorded locator; the",
        "# others were found on the same element and each matches it alone. Rename the",
        "# selectors to what they mean, keep the choices that survive a redesign (an id, a",
        f"# label), and save the file as selectors/{system}.toml.",
        f'version = "{utcnow():%Y-%m-%d}-draft"',
        "",
    ]
    if frames:
        lines.append("[frames]")
        lines += [f"{name} = [{_quoted(selector)}]" for name, selector in frames.items()]
        lines.append("")
    for element in elements:
        lines.append(f"# recorded: {element.recorded}")
        lines.append(f'[selectors."{element.name}"]')
        if element.frame:
            lines.append(f'frame = "{element.frame}"')
        lines.append("any = [" + ", ".join(_quoted(c) for c in element.choices) + "]")
        if element.mask:
            lines.append("mask = true")
        lines.append("")
    return "\n".join(lines)


def write_draft(path: Path, text: str) -> Path:
    """Write the draft next to the map, never over an existing file."""
    target, n = path, 2
    while target.exists():
        target, n = path.with_name(f"{path.stem}-{n}{path.suffix}"), n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target
