"""Field kinds: what a kind of value is, in one registry a task module can extend.

Every :class:`stampless.FieldSpec` names a kind. The kind brings everything stampless
needs to know about such a value, wherever it comes from (an applicant's claim, OCR of
a scan, the department's record):

* ``check(text)``: the canonical value in ``text`` and whether it is valid (check
  characters, GB 11643 structure, the calendar); None when the text holds no value;
* ``forms(value)``: the ways a canonical value may be printed ("2024-01-02" is printed
  2024年01月02日 or 2024.01.02), which OCR verification scores against the image;
* ``key(value)``: what two values are compared by (no spaces; no case for
  case-insensitive kinds), while the canonical value keeps word spaces for display;
* ``whitelist`` and ``script``: the characters and script a re-read may expect;
* ``shape``: what every value of the kind looks like, valid or not (an ID's 18
  characters), so a reading with a character lost or doubled is no rival to the record's
  value in OCR verification;
* ``rule``: how the comparison treats a near miss (:class:`Rule`).

A task module registers its own kind with :func:`register_kind` before its
``DOCUMENT``, and names it in its fields::

    from stampless import FieldKind, register_kind

    TICKET = register_kind(
        FieldKind("ticket", check=check_ticket, whitelist="0123456789-T", script="latin")
    )
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Literal

from stampless import normalize as norm

Checker = Callable[[str | None], tuple[str | None, bool]]


class Rule(StrEnum):
    """How a field's claimed, read and recorded values are compared (stampless.compare)."""

    exact = "exact"  # equal after normalization: numbers, dates, codes
    name = "name"  # CJK names exact; Latin names by rapidfuzz similarity
    text = "text"  # exact; a near miss (OCR noise) goes to review, never to verified
    numeric = "numeric"  # |a - b| <= tolerance


@lru_cache(maxsize=1)
def _t2s() -> Callable[[str], str]:
    import opencc

    return opencc.OpenCC("t2s").convert


def fold_variants(text: str) -> str:
    """``text`` with traditional Chinese characters as their simplified forms, and Latin
    letters without their accents (a record's ROBERTS is the name printed RÓBERTS, and
    the recognizer reads O as Ó now and then)."""
    if text.isascii():
        return text
    return _t2s()("".join(map(_unaccented, text)))


def _unaccented(ch: str) -> str:
    if ch.isascii():
        return ch
    base = unicodedata.normalize("NFD", ch)[0]
    return base if base.isascii() and base.isalpha() else ch


def _same(value: str) -> list[str]:
    return [value]


def _no_spaces(value: str) -> str:
    return norm.remove_spaces(value)


@dataclass(frozen=True)
class FieldKind:
    """A kind of field value (see the module). Build a variant with :meth:`variant`."""

    name: str
    check: Checker
    forms: Callable[[str], list[str]] = _same
    whitelist: str | None = None
    script: Literal["digits", "latin", "cjk", "any"] = "any"
    rule: Rule = Rule.exact
    ignore_case: bool = False
    # Punctuation carries no meaning in values of the kind (names, free text): a stray or
    # lost mark ("有限责任公司自然人独资)") is the same value. Never for dates or amounts,
    # where 2024.1.12 and 2024.11.2 differ only in where the marks are.
    loose_marks: bool = False
    # Characters a value of the kind is made of, for a format search of the whole page
    # when its label cannot be read; None: the kind is found by its label only.
    search: re.Pattern[str] | None = field(default=None, compare=False)
    # What every canonical value of the kind looks like, valid or not (its length and the
    # characters in each place; not its check character): a string the recognizer finds
    # on the image whose value does not match it is a misreading, never a value anyone
    # printed, and OCR verification does not weigh it against the record's (see
    # :meth:`well_formed`). None: any value may be printed.
    shape: re.Pattern[str] | None = field(default=None, compare=False)

    def well_formed(self, value: str | None) -> bool:
        """Whether ``value`` (canonical, from :attr:`check`) could be printed as a value of
        the kind: it fits :attr:`shape`, whether or not its check character holds. A
        forger prints a value of the right form; a dropped or doubled character is the
        recognizer's."""
        if self.shape is None:
            return True
        return value is not None and self.shape.fullmatch(value) is not None

    def key(self, value: str) -> str:
        """What values of this kind are compared by: no spaces, traditional characters as
        their simplified forms (蔣 is 蒋: a calligraphic face prints one like the other),
        Latin letters without accents, and no case if so set."""
        compact = fold_variants(_no_spaces(value))
        return compact.casefold() if self.ignore_case else compact

    def skeleton(self, value: str) -> str:
        """:meth:`key` without punctuation if the kind's marks carry no meaning, else the key."""
        key = self.key(value)
        return "".join(ch for ch in key if ch.isalnum()) if self.loose_marks else key

    def printed(self, value: str) -> list[str]:
        """The forms ``value`` may be printed in, in every case if case does not count."""
        forms = self.forms(value)
        if self.ignore_case:
            forms = [v for f in forms for v in (f, f.upper(), f.lower(), f.title())]
        return list(dict.fromkeys(forms))

    def variant(self, **changes: object) -> FieldKind:
        """A copy with some attributes changed (``LATIN_TEXT.variant(ignore_case=True)``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# --- printed forms of the built-in kinds ---------------------------------------------------


def date_forms(value: str) -> list[str]:
    """2024-01-02 as certificates print it: 2024年01月02日, 2024年1月2日, 2024-01-02, ..."""
    y, m, d = value.split("-")
    mi, di = str(int(m)), str(int(d))
    return [
        f"{y}年{m}月{d}日",
        f"{y}年{mi}月{di}日",
        value,
        f"{y}.{m}.{d}",
        f"{y}/{m}/{d}",
        f"{y}{m}{d}",
        f"{y}-{mi}-{di}",
    ]


def month_forms(value: str) -> list[str]:
    y, m = value.split("-")
    return [f"{y}年{m}月", f"{y}年{int(m)}月", value, f"{y}.{m}", f"{y}/{m}", f"{y}{m}"]


def capital_forms(value: str) -> list[str]:
    """An amount of 万元 as printed: 100万元, 100.00万元, 壹佰万元整, ..."""
    forms = [f"{value}万元", f"{value}万", f"{value}.00万元", value, f"{value}万元人民币"]
    if value.isdigit():
        from stampless.fixtures.render import capital_amount

        forms.append(capital_amount(int(value)))
    return forms


def integer_forms(value: str) -> list[str]:
    return [value, f"{value}个月", f"{value}月"]


def id_forms(value: str) -> list[str]:
    """A resident ID; its check character X is sometimes printed in lower case."""
    return [value, value[:-1] + "x"] if value.endswith("X") else [value]


def text_forms(value: str) -> list[str]:
    """Free text as printed: brackets full or half width, spaces kept or dropped."""
    full = value.replace("(", "（").replace(")", "）")
    forms = [value, full]
    if " " in value:
        forms += [norm.remove_spaces(value), norm.remove_spaces(full)]
    return list(dict.fromkeys(forms))


def name_forms(value: str) -> list[str]:
    """A name as printed: Latin names in capitals or not, CJK names with either dot."""
    if value.isascii():
        return list(dict.fromkeys([value, value.upper(), value.title()]))
    return list(dict.fromkeys([value, value.replace("·", "•")]))


_CJK = re.compile(f"[{norm.CJK}]")


def check_latin_text(text: str | None) -> tuple[str | None, bool]:
    """Latin text (titles, statuses, English names of things): half-width, single
    spaces between words, case kept; valid when it holds two letters or digits."""
    if not text:
        return None, False
    value = norm.cjk_spacing(norm.to_halfwidth(text)).strip(" :;,")
    if not value:
        return None, False
    # Two letters or digits at least, and no CJK (alphanumeric to Python too: "科技股份有限公司"
    # is no passport number; "MÜLLER" is Latin).
    return value, sum(ch.isalnum() for ch in value) >= 2 and _CJK.search(value) is None


def _checker(normalizer: Callable[[str | None], str | None]) -> Checker:
    def check(text: str | None) -> tuple[str | None, bool]:
        value = normalizer(text)
        return value, value is not None

    return check


def check_name(text: str | None) -> tuple[str | None, bool]:
    """A name: 2-6 CJK characters, or Latin words of at least four letters."""
    value = norm.normalize_name(text)
    if value is None:
        return None, False
    cjk = re.fullmatch(f"[{norm.CJK}·]{{2,6}}", value) is not None
    # Short Latin "names" are OCR noise far more often than real names.
    latin = re.fullmatch(r"[A-Z][A-Z.\-' ]{3,60}", value) is not None
    return value, cjk or latin


def check_text(text: str | None) -> tuple[str | None, bool]:
    value = norm.normalize_text(text)
    return value, value is not None and len(norm.remove_spaces(value)) >= 2


def fixed_digits(name: str, length: int) -> FieldKind:
    """A kind for a number printed as exactly ``length`` digits (a permit, file or account
    number): spaces drop, look-alike letters between digits are read as digits, and a
    value is valid only at that length. Its whitelist and script bring the second reader
    (Tesseract) for a reading in doubt, and its format finds it on a page whose label
    cannot be read::

        PERMIT_NO = register_kind(fixed_digits("permit_no", 15))
    """

    def check_digits(text: str | None) -> tuple[str | None, bool]:
        runs = norm.digit_runs(text)
        if not runs:
            return None, False
        exact = [run for run in runs if len(run) == length]
        value = exact[0] if exact else max(runs, key=len)
        return value, len(value) == length

    return FieldKind(
        name,
        check_digits,
        whitelist="0123456789",
        script="digits",
        search=re.compile(rf"(?<![0-9])[0-9OoDQIl|BS]{{{length}}}(?![0-9])"),
        shape=re.compile(rf"[0-9]{{{length}}}"),
    )


KINDS: dict[str, FieldKind] = {}


def register_kind(kind: FieldKind) -> FieldKind:
    """Add ``kind`` to the registry (replacing one of the same name) and return it."""
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> FieldKind:
    """The registered kind ``name``; ValueError naming the known ones otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown field kind {name!r}; use one of {', '.join(KINDS)}") from None


def check(kind: str, text: str | None) -> tuple[str | None, bool]:
    """``text`` as a canonical value of ``kind``, and whether it is valid."""
    return get_kind(kind).check(text)


ID_CHARS = "0123456789X"
CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"

for _kind in (
    FieldKind(
        "resident_id",
        norm.check_resident_id,
        id_forms,
        ID_CHARS,
        "digits",
        search=re.compile(r"[0-9OoDQIl|iBSsZz]{17}[0-9Xx]"),
        # GB 11643's form: an address code, a birth date from 1900 on, a sequence number
        # and a check character (whether it holds is validity, not form).
        shape=re.compile(
            r"[1-9][0-9]{5}(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
            r"[0-9]{3}[0-9X]"
        ),
    ),
    FieldKind(
        "credit_code",
        norm.check_credit_code,
        _same,
        CREDIT_CHARS,
        "latin",
        search=re.compile(r"[0-9A-Za-z|]{18}"),
        shape=re.compile(rf"[{CREDIT_CHARS}]{{18}}"),
    ),
    FieldKind(
        "cert_no",
        norm.check_cert_no,
        _same,
        "J0123456789-",
        "latin",
        search=re.compile(r"[J1Ij\]][0-9OoDQIlBSZ]{6}-?(?:19|20)\d{2}-?[0-9OoDQIlBSZ]{6}"),
        shape=re.compile(r"J[0-9]{6}-[0-9]{4}-[0-9]{6}"),
    ),
    FieldKind(
        "date",
        _checker(norm.normalize_date),
        date_forms,
        "0123456789年月日-./",
        "cjk",
        shape=re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    ),
    FieldKind(
        "month",
        _checker(norm.normalize_month),
        month_forms,
        "0123456789年月-./",
        "cjk",
        shape=re.compile(r"[0-9]{4}-[0-9]{2}"),
    ),
    FieldKind("name", check_name, name_forms, None, "any", Rule.name, loose_marks=True),
    FieldKind("text", check_text, text_forms, None, "any", Rule.text, loose_marks=True),
    FieldKind("latin_text", check_latin_text, _same, None, "latin", Rule.text, loose_marks=True),
    FieldKind("capital", _checker(norm.normalize_capital), capital_forms, None, "cjk"),
    FieldKind("integer", _checker(norm.normalize_integer), integer_forms, "0123456789", "digits"),
    FieldKind("decimal", _checker(norm.normalize_decimal), _same, "0123456789.-", "digits"),
):
    register_kind(_kind)
