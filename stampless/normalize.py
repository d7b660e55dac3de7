"""Turn what OCR, a claim or a department record says into one canonical form.

Canonical values are shared with the fixture records and the scan generator's truth
files: dates ``YYYY-MM-DD``, months ``YYYY-MM``, registered capital as a decimal string
in 万元 (``"100"``), counts as decimal strings, IDs in upper case, names and free text
without spaces. Every normalizer returns ``None`` when the text holds no value of its
kind, so "unreadable" is never confused with "different".

Identifiers with a check character (resident IDs, GB 11643; credit codes, GB 32100)
go through :func:`correct_confusions`: when the check fails, the characters OCR is
known to confuse are swapped, and a correction is accepted only when exactly one
candidate passes the check. An ambiguous fix is refused, because a guessed digit could
turn a forged number into a valid-looking one.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from stampless.checksums import (
    CREDIT_ALPHABET,
    is_plausible_resident_id,
    is_valid_credit_code,
)

# Full-width forms that normalization of NFKC does not map the way documents need.
_PUNCT = str.maketrans(
    {
        "（": "(",
        "）": ")",
        "：": ":",
        "，": ",",
        "．": ".",
        "。": ".",
        "－": "-",
        "—": "-",
        "–": "-",
        "―": "-",
        "•": "·",
        "・": "·",
        "‧": "·",
        "\u3000": " ",
    }
)

_SPACE_RE = re.compile(r"\s+")
CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{CJK}]")


def to_halfwidth(text: str) -> str:
    """Full-width letters, digits and punctuation to their ASCII forms (NFKC, then CJK marks)."""
    return unicodedata.normalize("NFKC", text.translate(_PUNCT)).translate(_PUNCT)


def remove_spaces(text: str) -> str:
    """Drop all whitespace: generated and real documents space labels and names freely."""
    return _SPACE_RE.sub("", text)


def cjk_spacing(text: str) -> str:
    """Remove spaces next to CJK characters, keep single spaces between Latin words."""
    text = _SPACE_RE.sub(" ", text).strip()
    return re.sub(f"(?<=[{CJK}]) | (?=[{CJK}])", "", text)


def clean(text: str) -> str:
    """Half-width and CJK spacing: the first step of every normalizer."""
    return cjk_spacing(to_halfwidth(text))


# --- dates -------------------------------------------------------------------------

# A day has one or two digits: "103日" is a doubled digit, no day (a time after a date,
# "2024-01-02 12:30", is no part of it).
_DATE_RE = re.compile(
    r"(?P<y>(?:19|20)\d{2})\s*(?:年|[-./])\s*(?P<m>\d{1,2})\s*(?:月|[-./])\s*(?P<d>\d{1,2})(?!\d+日)\s*日?"
)
_DATE_COMPACT_RE = re.compile(r"(?<!\d)(?P<y>(?:19|20)\d{2})(?P<m>\d{2})(?P<d>\d{2})(?!\d)")
_MONTH_RE = re.compile(r"(?P<y>(?:19|20)\d{2})\s*(?:年|[-./])\s*(?P<m>\d{1,2})(?!\d)\s*月?")
_MONTH_COMPACT_RE = re.compile(r"(?<!\d)(?P<y>(?:19|20)\d{2})(?P<m>\d{2})(?!\d)")

# Letters Tesseract returns for digits inside dates and numbers.
_DIGIT_LOOKALIKES = str.maketrans(
    {
        "O": "0",
        "o": "0",
        "D": "0",
        "Q": "0",
        "I": "1",
        "l": "1",
        "|": "1",
        "]": "1",
        "B": "8",
        "S": "5",
    }
)


def digit_runs(text: str | None) -> list[str]:
    """The runs of digits in ``text`` once spaces are dropped and look-alike letters between
    digits are read as digits ("1101 O5 4363" holds the run 1101054363)."""
    if not text:
        return []
    return re.findall(r"\d+", _digits_fixed(remove_spaces(to_halfwidth(text))))


def _digits_fixed(text: str) -> str:
    """Map look-alike letters to digits only where they sit between digits or date marks."""
    return re.sub(
        r"(?<=[\d年月\-./])[OoDQIl|\]BS](?=[\d年月日\-./]|$)|^[OoDQIl|BS](?=\d)",
        lambda m: m.group(0).translate(_DIGIT_LOOKALIKES),
        text,
    )


def normalize_date(text: str | None) -> str | None:
    """``2024年1月2日``, ``2024-01-02``, ``2024.01.02``, ``2024/1/2``, ``20240102`` → ISO.

    Returns None when no real calendar date is found (``2024-02-30`` is not one).
    """
    if not text:
        return None
    t = _digits_fixed(remove_spaces(to_halfwidth(text)))
    for regex in (_DATE_RE, _DATE_COMPACT_RE):
        for m in regex.finditer(t):
            try:
                d = date(int(m["y"]), int(m["m"]), int(m["d"]))
            except ValueError:
                continue
            return d.isoformat()
    return None


def normalize_month(text: str | None) -> str | None:
    """``2024年1月``, ``2024-01``, ``2024.01``, ``202401`` to ``2024-01``; None if none found."""
    found = find_months(text)
    return found[0] if found else None


def find_months(text: str | None) -> list[str]:
    """Every year-month in ``text``, in order, canonical (``缴费起止年月`` holds two)."""
    if not text:
        return []
    t = _digits_fixed(remove_spaces(to_halfwidth(text)))
    out: list[str] = []
    regex = _MONTH_RE if _MONTH_RE.search(t) else _MONTH_COMPACT_RE
    for m in regex.finditer(t):
        month = int(m["m"])
        if 1 <= month <= 12:
            out.append(f"{m['y']}-{month:02d}")
    return out


def find_dates(text: str | None) -> list[str]:
    """Every calendar date in ``text``, in order, canonical."""
    if not text:
        return []
    t = _digits_fixed(remove_spaces(to_halfwidth(text)))
    out: list[str] = []
    for m in _DATE_RE.finditer(t):
        try:
            out.append(date(int(m["y"]), int(m["m"]), int(m["d"])).isoformat())
        except ValueError:
            continue
    return out


# --- identifiers with check characters ----------------------------------------------

# Groups of characters OCR confuses (issue 8): 0/O/D, 1/I/l, 8/B, 5/S, 2/Z.
CONFUSIONS: tuple[frozenset[str], ...] = (
    frozenset("0ODoQ"),
    frozenset("1Il|i"),
    frozenset("8B"),
    frozenset("5Ss"),
    frozenset("2Zz"),
)
_PARTNERS: dict[str, frozenset[str]] = {ch: group - {ch} for group in CONFUSIONS for ch in group}

# At most this many characters are changed by choice (not counting forced changes of
# characters that cannot stand where they are); more would let too many candidates pass.
MAX_OPTIONAL_CHANGES = 2


@dataclass(frozen=True)
class Correction:
    """The outcome of :func:`correct_confusions`."""

    value: str | None  # the accepted value, or None
    changed: bool  # a confusion was corrected
    candidates: int  # how many candidates passed the check


def correct_confusions(
    raw: str,
    *,
    is_valid: Callable[[str], bool],
    allowed: Callable[[int, str], bool],
) -> Correction:
    """Fix OCR confusions in a checked identifier; accept only a unique passing candidate.

    ``allowed(position, char)`` says which characters may stand at a position (digits
    only in the body of a resident ID). A character that may not stand where it is must
    become one of its partners; a character that may is swapped with its partners in at
    most :data:`MAX_OPTIONAL_CHANGES` positions. If the forced form already passes the
    check it is returned without trying optional swaps.
    """
    options: list[list[str]] = []
    for i, ch in enumerate(raw):
        if allowed(i, ch):
            opts = [ch, *sorted(p for p in _PARTNERS.get(ch, ()) if allowed(i, p))]
        else:
            opts = sorted(p for p in _PARTNERS.get(ch, ()) if allowed(i, p))
            if not opts:
                return Correction(None, False, 0)
        options.append(opts)

    forced_positions = [i for i, ch in enumerate(raw) if options[i][0] != ch]
    base = "".join(opts[0] for opts in options)
    # A forced position with two partners (rare) is itself a choice.
    forced_ambiguous = [i for i in forced_positions if len(options[i]) > 1]
    if not forced_ambiguous and is_valid(base):
        return Correction(base, base != raw, 1)

    passing: set[str] = set()
    choice_positions = [i for i, opts in enumerate(options) if len(opts) > 1]
    for k in range(MAX_OPTIONAL_CHANGES + 1):
        for positions in itertools.combinations(choice_positions, k):
            alternatives = [options[i][1:] for i in positions]
            for picks in itertools.product(*alternatives):
                chars = list(base)
                for i, p in zip(positions, picks, strict=True):
                    chars[i] = p
                cand = "".join(chars)
                if is_valid(cand):
                    passing.add(cand)
                    if len(passing) > 1:
                        return Correction(None, False, len(passing))
        if passing:
            # The fewest changes that pass win; a fix needing more changes is less likely.
            break
    if len(passing) == 1:
        value = passing.pop()
        return Correction(value, True, 1)
    return Correction(None, False, 0)


def _id_allowed(i: int, ch: str) -> bool:
    return ch.isdigit() and ch.isascii() if i < 17 else (ch.isascii() and ch.isdigit()) or ch == "X"


def _credit_allowed(_i: int, ch: str) -> bool:
    return ch in CREDIT_ALPHABET


def _id_chars(text: str) -> str:
    t = remove_spaces(to_halfwidth(text))
    t = t.replace("x", "X")
    return re.sub(r"[^0-9A-Za-z|]", "", t)


def _check_code(
    text: str | None,
    *,
    loose: re.Pattern[str],
    is_valid: Callable[[str], bool],
    allowed: Callable[[int, str], bool],
) -> tuple[str | None, bool]:
    """An 18-character code in ``text`` and whether its check character holds.

    The code is the whole reading, or the first run ``loose`` finds in it; a failed
    check is repaired only when exactly one OCR-confusion fix passes it. The value is
    the best reading even when invalid (so a reviewer sees it), or None when there is
    nothing to read.
    """
    if not text:
        return None, False
    t = _id_chars(text)
    if len(t) != 18:
        m = loose.search(t)
        if not m:
            return (t.upper() or None), False
        t = m.group(0)
    if is_valid(t):
        return t, True
    fix = correct_confusions(t, is_valid=is_valid, allowed=allowed)
    if fix.value is not None:
        return fix.value, True
    return t.upper(), False


_LOOSE_RESIDENT_ID = re.compile(r"[0-9OoDQIl|iBSsZz]{17}[0-9Xx]")
# Lower-case letters are never in a credit code; an 'l' or 'i' is a '1', 'o' a '0'.
_LOOSE_CREDIT_CODE = re.compile(r"[0-9A-Za-z|]{18}")


def check_resident_id(text: str | None) -> tuple[str | None, bool]:
    """Canonical resident ID and whether it passes GB 11643 (check digit, province, birth
    date), after confusion correction."""
    return _check_code(
        text, loose=_LOOSE_RESIDENT_ID, is_valid=is_plausible_resident_id, allowed=_id_allowed
    )


def id_from_birth_date(reading: str | None, birth: str | None) -> str | None:
    """The resident ID ``reading`` with its birth-date digits taken from ``birth``.

    A resident ID's characters 7-14 are its holder's birth date, which certificates also
    print on their own (出生日期). When a reading of the ID fails its check and differs
    from the printed date in one or two of those digits, the date's digits are put in:
    the result is returned only when it then passes the whole GB 11643 check, so a
    misread date digit is the only explanation the check leaves. None otherwise.
    """
    if not reading or not birth or not re.fullmatch(r"\d{17}[\dX]", reading):
        return None
    digits = birth.replace("-", "")
    if not re.fullmatch(r"\d{8}", digits):
        return None
    if not 0 < sum(a != b for a, b in zip(reading[6:14], digits, strict=True)) <= 2:
        return None
    candidate = reading[:6] + digits + reading[14:]
    return candidate if is_plausible_resident_id(candidate) else None


def normalize_resident_id(text: str | None) -> str | None:
    """The resident ID in ``text``, upper case, confusions corrected when unambiguous."""
    return check_resident_id(text)[0]


def check_credit_code(text: str | None) -> tuple[str | None, bool]:
    """Canonical unified social credit code and whether it passes GB 32100."""
    return _check_code(
        text, loose=_LOOSE_CREDIT_CODE, is_valid=is_valid_credit_code, allowed=_credit_allowed
    )


def normalize_credit_code(text: str | None) -> str | None:
    """The credit code in ``text``, upper case, confusions corrected when unambiguous."""
    return check_credit_code(text)[0]


_CERT_RE = re.compile(r"J\s*(\d{6})\s*-\s*((?:19|20)\d{2})\s*-\s*(\d{6})")


def check_cert_no(text: str | None) -> tuple[str | None, bool]:
    """Marriage certificate number ``J320102-2024-001234``; valid when the format holds."""
    if not text:
        return None, False
    t = remove_spaces(to_halfwidth(text)).upper()
    # The two separators are read as other marks now and then ("J370102-2019.096294").
    t = re.sub(r"[_~=.·—–]", "-", t)
    m = _CERT_RE.search(t)
    if not m:
        # Tesseract reads the leading J as 'j', ']' or '1' now and then.
        body = re.sub(r"^[^\d]*", "", t)
        fixed = _digits_fixed(body).translate(_DIGIT_LOOKALIKES)
        m2 = re.search(r"(\d{6})-((?:19|20)\d{2})-(\d{6})", fixed)
        if not m2:
            return (t or None), False
        m = m2
    return f"J{m.group(1)}-{m.group(2)}-{m.group(3)}", True


def normalize_cert_no(text: str | None) -> str | None:
    """The certificate number in canonical form, or what was read when it is malformed."""
    return check_cert_no(text)[0]


# --- names and text ------------------------------------------------------------------


def normalize_name(text: str | None) -> str | None:
    """A person's name: CJK without spaces; Latin upper-cased with one space between
    words ("DE-VRIES ANA"); the middle dot unified."""
    if not text:
        return None
    t = cjk_spacing(to_halfwidth(text)).strip(" :;,.")
    if not t:
        return None
    if not _CJK_RE.search(t):
        t = t.upper()
    return t


def normalize_text(text: str | None) -> str | None:
    """Free text (company names, addresses, titles): half-width, no spaces next to CJK
    characters, one space between Latin words ("Marriage record MR-0001")."""
    if not text:
        return None
    t = cjk_spacing(to_halfwidth(text)).strip(" :;,")
    return t or None


# --- numbers -------------------------------------------------------------------------

_CN_DIGITS = {
    "零": 0,
    "〇": 0,
    "○": 0,
    "壹": 1,
    "一": 1,
    "贰": 2,
    "貳": 2,
    "二": 2,
    "两": 2,
    "叁": 3,
    "参": 3,
    "參": 3,
    "三": 3,
    "肆": 4,
    "四": 4,
    "伍": 5,
    "五": 5,
    "陆": 6,
    "陸": 6,
    "六": 6,
    "柒": 7,
    "七": 7,
    "捌": 8,
    "八": 8,
    "玖": 9,
    "九": 9,
}
_CN_UNITS = {"拾": 10, "十": 10, "佰": 100, "百": 100, "仟": 1000, "千": 1000}
_CN_SECTIONS = {"万": 10_000, "萬": 10_000, "亿": 100_000_000, "億": 100_000_000}


def parse_chinese_number(text: str) -> int | None:
    """``壹佰万`` → 1000000, ``十二`` → 12, ``贰仟零伍拾`` → 2050; None if not a numeral."""
    if not text or any(
        ch not in _CN_DIGITS and ch not in _CN_UNITS and ch not in _CN_SECTIONS for ch in text
    ):
        return None
    total = 0
    section = 0
    digit: int | None = None
    for ch in text:
        if ch in _CN_DIGITS:
            digit = _CN_DIGITS[ch]
        elif ch in _CN_UNITS:
            section += (1 if digit is None else digit) * _CN_UNITS[ch]
            digit = None
        else:
            section += digit or 0
            unit = _CN_SECTIONS[ch]
            # 亿 closes everything before it; 万 only the current section.
            if unit > 10_000:
                total = (total + section) * unit
            else:
                total += section * unit
            section = 0
            digit = None
    return total + section + (digit or 0)


def _decimal_string(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def normalize_capital(text: str | None) -> str | None:
    """Registered capital in 万元 as a decimal string.

    ``100万元``, ``100.00万元`` and ``壹佰万元整`` all give ``"100"``.
    """
    if not text:
        return None
    t = remove_spaces(to_halfwidth(text)).replace(",", "")
    if re.search(r"\d[年月日]|[年月]\d", t):
        return None  # a date (2039年01月18日) is no amount
    t = re.sub(r"(人民币|\(人民币\)|[¥￥])", "", t)
    fixed = _digits_fixed(t)
    m = re.search(r"(\d+(?:\.\d+)?)(万|亿)?元?", fixed)
    if m and m.group(1):
        around = {fixed[m.start() - 1 : m.start()], fixed[m.end() : m.end() + 1]}
        if around & {*_CN_DIGITS, *_CN_UNITS}:
            # Figures run into an amount in words ("11仟叁佰玖拾肆万元整": a seal over
            # 陆 read as 11) are a misreading, not an amount.
            return None
        number = float(m.group(1))
        unit = m.group(2)
        if unit == "亿":
            number *= 10_000
        elif unit is None and m.group(0).endswith("元"):
            # An amount in 元 without 万 (rare on licences) is converted to 万元; a bare
            # number is already the canonical count of 万元.
            number /= 10_000
        return _decimal_string(number)
    cn = re.search(f"[{''.join(_CN_DIGITS)}{''.join(_CN_UNITS)}{''.join(_CN_SECTIONS)}]+", t)
    # Without 万 or 亿 (or 元 right after) the unit is unknown: better no value than a
    # wrong one.
    if cn and (re.search("[万萬亿億]", cn.group(0)) or t[cn.end() : cn.end() + 1] == "元"):
        yuan = parse_chinese_number(cn.group(0))
        # "万元整" alone (digits unread) is no amount, not zero.
        if not yuan:
            return None
        return _decimal_string(yuan / 10_000)
    return None


def normalize_integer(text: str | None) -> str | None:
    """A count such as ``累计缴费月数 66`` (or ``66个月``) as ``"66"``; None if none."""
    if not text:
        return None
    t = _digits_fixed(remove_spaces(to_halfwidth(text)))
    m = re.search(r"\d+", t)
    if m:
        return str(int(m.group(0)))
    return None


def normalize_decimal(text: str | None) -> str | None:
    """A decimal number as a canonical string (``"12.50"`` → ``"12.5"``)."""
    if not text:
        return None
    t = _digits_fixed(remove_spaces(to_halfwidth(text))).replace(",", "")
    m = re.search(r"-?\d+(?:\.\d+)?", t)
    return _decimal_string(float(m.group(0))) if m else None


# --- the kinds registry ------------------------------------------------------------------


def check(kind: str, text: str | None) -> tuple[str | None, bool]:
    """Normalize ``text`` as ``kind`` and say whether the value is valid for that kind
    (:mod:`stampless.kinds` holds the kinds; a task module may register its own)."""
    from stampless.kinds import check as check_kind

    return check_kind(kind, text)


def normalize(kind: str, text: str | None) -> str | None:
    """``text`` as a canonical value of ``kind`` (see :func:`check`), or None."""
    return check(kind, text)[0]
