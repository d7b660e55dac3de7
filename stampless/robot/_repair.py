"""Selectors that propose their own repair.

When a named selector works, the runtime keeps a *fingerprint* of the element it found
(once per selector and process): tag and type, id, name, accessible name, label text,
text, a few attributes, the text beside it and its position on the page. It is kept in
``<var_dir>/selectors/fingerprints/<system>.json``.

When a selector's first choice stops working, two things can happen:

* a fallback still matches: the element it found is known, so a stable first choice for
  it (its id, its name, its role and accessible name, its label) is proposed at once;
* nothing matches: the page is searched for the element most like the last fingerprint.
  Every element of the same kind (text box, button, link, list, checkbox, …) is scored
  on what it shares with it; the best is proposed as *certain* only when it shares a
  meaning with the old element (its label, accessible name, text or the text beside
  it, not merely its place), scores high, and clearly beats the runner-up.

Proposals go to ``<var_dir>/selectors/proposals.jsonl`` with a screenshot of the page
with the proposed element outlined (``stampless selectors proposals`` lists them,
``stampless selectors approve SYSTEM NAME`` writes the choice into the map with a
comment). The request continues on a proposal only when it is certain and the selector
map says ``self_repair = true``; otherwise it fails as before, and its error names the
proposal.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from stampless._files import write_atomic
from stampless.models import utcnow

PROPOSALS_FILE = Path("selectors") / "proposals.jsonl"
FINGERPRINTS_DIR = Path("selectors") / "fingerprints"

# What an element looks like, computed in the page. ``kind`` groups elements a redesign
# may swap for one another (a submit input and a button are both "action").
FINGERPRINT_JS = r"""
(el) => {
  const clean = (s) => (s || '').replace(/\s+/g, ' ').trim().slice(0, 80);
  const tag = el.tagName.toLowerCase();
  const type = (el.getAttribute('type') || '').toLowerCase();
  let kind = tag;
  if (tag === 'input') {
    if (['submit', 'button', 'image', 'reset'].includes(type)) kind = 'action';
    else if (['checkbox', 'radio'].includes(type)) kind = 'check';
    else if (type === 'hidden') kind = 'hidden';
    else kind = 'textbox';
  } else if (tag === 'textarea') kind = 'textbox';
  else if (tag === 'button') kind = 'action';
  let label = '';
  if (el.labels && el.labels.length) label = clean(el.labels[0].innerText);
  if (!label && el.id) {
    const byFor = document.querySelector(`label[for="${CSS.escape(el.id)}"]`);
    if (byFor) label = clean(byFor.innerText);
  }
  // The text just before it: a label cell of a layout table, a caption beside a box.
  let before = '';
  let node = el;
  for (let hops = 0; hops < 4 && !before && node; hops++) {
    let sib = node.previousElementSibling;
    while (sib && !before) { before = clean(sib.innerText); sib = sib.previousElementSibling; }
    node = node.parentElement;
  }
  const text = (kind === 'textbox' || tag === 'select') ? '' : clean(el.innerText || el.value);
  const name = clean(el.getAttribute('aria-label')) || label ||
    clean(el.getAttribute('placeholder')) || clean(el.getAttribute('title')) ||
    clean(el.getAttribute('alt')) || text;
  const ancestors = [];
  for (let p = el.parentElement; p && ancestors.length < 4; p = p.parentElement) {
    if (p.id) ancestors.push('#' + p.id);
    else if (p.tagName === 'FORM' && p.getAttribute('action')) ancestors.push('form');
  }
  const box = el.getBoundingClientRect();
  const sameTag = Array.from(document.getElementsByTagName(el.tagName));
  return {
    tag, type, kind, id: el.id || '', name: el.getAttribute('name') || '',
    classes: Array.from(el.classList).slice(0, 6), label, before, text,
    accessible_name: name,
    placeholder: el.getAttribute('placeholder') || '', title: el.getAttribute('title') || '',
    value: kind === 'action' ? (el.value || '') : '',
    href: el.getAttribute('href') || '', ancestors,
    x: Math.round(box.x + window.scrollX), y: Math.round(box.y + window.scrollY),
    width: Math.round(box.width), height: Math.round(box.height),
    ordinal: sameTag.indexOf(el),
  };
}
"""

# Every element of ``kind`` in the document, fingerprinted (at most 400).
CANDIDATES_JS = (
    "(root, kind) => {\n"
    "  const fp = " + FINGERPRINT_JS.strip() + ";\n"
    "  const all = Array.from(document.querySelectorAll("
    "'input, textarea, select, button, a, td, th, span, div, label, li, b, strong, "
    "h1, h2, h3, h4, p, img, option'));\n"
    "  const out = [];\n"
    "  for (const el of all) {\n"
    "    const f = fp(el);\n"
    "    if (f.kind !== kind) continue;\n"
    "    if (!el.getClientRects().length && kind !== 'hidden') continue;\n"
    "    out.push(f);\n"
    "    if (out.length >= 400) break;\n"
    "  }\n"
    "  return out;\n"
    "}"
)

# Meanings an element carries (what a person would call it), not where it is.
MEANINGS = ("label", "accessible_name", "text", "before")
WEIGHTS = {
    "label": 3.0,
    "accessible_name": 3.0,
    "text": 2.0,
    "before": 2.0,
    "id": 2.0,
    "name": 2.0,
    "type": 1.0,
    "placeholder": 1.0,
    "title": 1.0,
    "value": 1.0,
    "href": 1.0,
    "classes": 1.0,
    "ancestors": 1.0,
    "position": 1.5,
}
CERTAIN_SCORE = 0.55  # share of the weight the old element's features could earn
CERTAIN_MARGIN = 0.15  # ahead of the runner-up by at least this share


@dataclass
class Proposal:
    """A proposed new first choice for a selector, and how sure the runtime is of it."""

    system: str
    selector: str
    choice: str | None  # None: nothing on the page is like the element
    alternatives: list[str] = field(default_factory=list)
    certain: bool = False
    score: float = 0.0
    runner_up: float = 0.0
    source: str = "search"  # "search" (nothing matched) or "fallback" (a fallback matched)
    failed: list[str] = field(default_factory=list)  # the choices that stopped matching
    why: str = ""
    screenshot: str | None = None
    url: str | None = None
    map_file: str | None = None
    at: str = field(default_factory=lambda: utcnow().isoformat())

    def describe(self) -> str:
        """One line for a log or an error message."""
        if self.choice is None:
            return f"no repair for {self.selector!r} could be proposed ({self.why})"
        sure = "certain" if self.certain else "uncertain"
        return f"{self.choice!r} is proposed for {self.selector!r} ({sure}: {self.why})"


def _plain(text: str) -> str:
    """A label as a person reads it: case, spaces and a trailing colon do not count."""
    return re.sub(r"[\s:：*]+", "", text).casefold()


def _similar(a: str, b: str, *, meaning: bool) -> float:
    """1 for the same value; for a meaning (a label, a name) that is all, since "Ticket"
    and "Title" name different fields; ids and names earn partial credit."""
    if not a or not b:
        return 0.0
    if _plain(a) == _plain(b):
        return 1.0
    from rapidfuzz import fuzz

    ratio = float(fuzz.ratio(a, b)) / 100.0
    if meaning:  # a long text reworded a little is still the same text
        return ratio if min(len(a), len(b)) > 12 and ratio >= 0.9 else 0.0
    return ratio if min(len(a), len(b)) > 3 else 0.0


def score(old: dict[str, Any], new: dict[str, Any]) -> tuple[float, bool]:
    """How much of what ``old`` is, ``new`` is too (0..1), and whether a meaning is shared."""
    earned = possible = 0.0
    meaning = False
    for key, weight in WEIGHTS.items():
        if key == "position":
            possible += weight
            distance = abs(old["x"] - new["x"]) + abs(old["y"] - new["y"])
            earned += weight * max(0.0, 1.0 - distance / 200.0)
            continue
        if key in ("classes", "ancestors"):
            mine, theirs = set(old.get(key) or ()), set(new.get(key) or ())
            if mine:
                possible += weight
                earned += weight * len(mine & theirs) / len(mine | theirs)
            continue
        value = str(old.get(key) or "")
        if not value:
            continue
        possible += weight
        similarity = _similar(value, str(new.get(key) or ""), meaning=key in MEANINGS)
        earned += weight * similarity
        if key in MEANINGS and similarity >= 0.9:
            meaning = True
    return (earned / possible if possible else 0.0), meaning


def rank(
    old: dict[str, Any], candidates: list[dict[str, Any]]
) -> list[tuple[float, bool, dict[str, Any]]]:
    """The candidates, best first, each with its score and whether it shares a meaning."""
    ranked = [(*score(old, new), new) for new in candidates]
    ranked.sort(key=lambda item: item[0], reverse=True)
    return ranked


def judge(ranked: list[tuple[float, bool, dict[str, Any]]]) -> tuple[bool, str]:
    """Whether the best candidate is certain, and why (or why not)."""
    if not ranked:
        return False, "no element of the same kind is on the page"
    best, meaning, found = ranked[0]
    second = ranked[1][0] if len(ranked) > 1 else 0.0
    shared = [k for k in MEANINGS if found.get(k) and k != "text"] or ["position"]
    if not meaning:
        return False, f"the closest element shares only its {shared[0]}, not a label or a name"
    if best < CERTAIN_SCORE:
        return False, f"the closest element matches {best:.0%} of the old one"
    if best - second < CERTAIN_MARGIN:
        return False, f"two elements match almost as well ({best:.0%} and {second:.0%})"
    return True, f"it matches {best:.0%} of the old element, the next {second:.0%}"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def choices_for(found: dict[str, Any]) -> list[str]:
    """Selector choices for a fingerprinted element, most stable first (to be checked)."""
    out: list[str] = []
    tag = found["tag"]
    if found.get("id") and re.fullmatch(r"[A-Za-z][\w-]*", found["id"]):
        out.append(f"#{found['id']}")
    if found.get("name"):
        out.append(f"{tag}[name='{_quote(found['name'])}']")
    roles = {"textbox": "textbox", "action": "button", "a": "link", "select": "combobox"}
    role = roles.get(found["kind"])
    if role and found.get("accessible_name") and "'" not in found["accessible_name"]:
        out.append(f"role={role}[name='{found['accessible_name']}']")
    if found.get("label") and "'" not in found["label"]:
        out.append(f"xpath=//label[normalize-space(.)='{found['label']}']/following::{tag}[1]")
    if found["kind"] in ("action", "a") and found.get("text") and "'" not in found["text"]:
        out.append(f"{tag}:text-is('{found['text']}')")
    return out


async def checked_choices(
    scope: Any, found: dict[str, Any], *, exclude: tuple[str, ...] = ()
) -> list[str]:
    """The choices of :func:`choices_for` that find ``found``'s element, and it alone.

    ``scope`` is the page, or the frame, to count in (a Playwright Page, Frame or
    FrameLocator).
    """
    good: list[str] = []
    for choice in choices_for(found):
        if choice in exclude:
            continue
        loc = scope.locator(choice)
        try:
            again = (
                await loc.evaluate(FINGERPRINT_JS, timeout=2000) if await loc.count() == 1 else None
            )
        except Exception as exc:  # a choice the engine refuses here is no choice
            logger.debug("choice {!r} not usable: {}", choice, type(exc).__name__)
            continue
        if again and again.get("ordinal") == found.get("ordinal") and again["tag"] == found["tag"]:
            good.append(choice)
    return good


# ---- files --------------------------------------------------------------------------------


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class FingerprintStore:
    """The last known fingerprint of each selector, per system (shared by processes)."""

    def __init__(self, var_dir: Path) -> None:
        self.folder = Path(var_dir) / FINGERPRINTS_DIR

    def _path(self, system: str) -> Path:
        return self.folder / f"{system}.json"

    def get(self, system: str, selector: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(system).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        found = data.get(selector)
        return found.get("fingerprint") if isinstance(found, dict) else None

    def put(self, system: str, selector: str, fingerprint: dict[str, Any], choice: str) -> None:
        path = self._path(system)
        with _locked(path):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
            data[selector] = {
                "fingerprint": fingerprint,
                "choice": choice,
                "at": utcnow().isoformat(),
            }
            write_atomic(path, json.dumps(data, ensure_ascii=False, indent=1), durable=False)


def record_proposal(var_dir: Path, proposal: Proposal) -> None:
    """Append ``proposal`` to ``<var_dir>/selectors/proposals.jsonl``."""
    path = Path(var_dir) / PROPOSALS_FILE
    with _locked(path), path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(proposal), ensure_ascii=False) + "\n")


def read_proposals(var_dir: Path) -> list[Proposal]:
    """The latest proposal of each (system, selector), newest first."""
    path = Path(var_dir) / PROPOSALS_FILE
    if not path.is_file():
        return []
    latest: dict[tuple[str, str], Proposal] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                proposal = Proposal(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a torn last line after a crash
            latest[(proposal.system, proposal.selector)] = proposal
    return sorted(latest.values(), key=lambda p: p.at, reverse=True)


def approve(path: Path, system: str, name: str, choice: str) -> None:
    """Put ``choice`` first in the choices of selector ``name`` of the map at ``path``.

    The file is edited in place, its comments and layout kept (tomlkit); the old choices
    stay after the new one, with a comment saying what was approved when. ConfigError
    when the map has no such selector or is not valid after the edit.
    """
    import tomlkit

    from stampless.errors import ConfigError
    from stampless.robot._selectors import load_selector_map

    text = path.read_text(encoding="utf-8")
    document = tomlkit.parse(text)
    table = document.get("selectors", {}).get(name)
    if table is None:
        raise ConfigError(f"{path}: no selector named {name!r}; nothing was changed.")
    choices = table if isinstance(table, list) else table.get("any")
    old = [str(c) for c in (choices if isinstance(choices, list) else [choices])]
    new = tomlkit.array()
    for item in [choice, *[c for c in old if c != choice]]:
        new.append(item)
    new.comment(f"{utcnow():%Y-%m-%d}: {choice!r} approved (stampless selectors approve)")
    if isinstance(table, list):
        document["selectors"][name] = new
    else:
        table["any"] = new
    edited = tomlkit.dumps(document)
    temp = path.with_name(path.name + ".approve")
    temp.write_text(edited, encoding="utf-8")
    try:
        load_selector_map(temp, system)
    except ConfigError as exc:
        temp.unlink()
        raise ConfigError(f"{path}: the approved choice would break the map ({exc}).") from None
    temp.replace(path)
