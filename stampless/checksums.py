"""Check characters of Chinese identifiers (docs/document-types.md, "Check characters").

Both functions are pure and cheap; they run on every OCR candidate, so they avoid
regular expressions and allocation where they can.
"""

from __future__ import annotations

from datetime import date

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

CREDIT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_VALUE = {ch: i for i, ch in enumerate(CREDIT_ALPHABET)}
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def resident_id_check_char(first17: str) -> str:
    """The GB 11643-1999 check character for the first 17 digits of a resident ID."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("a resident ID body is 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def is_valid_resident_id(value: str) -> bool:
    """True when `value` is 18 characters whose last one is the GB 11643 check character."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    return resident_id_check_char(value[:17]) == value[17].upper()


# First two digits of the address code (GB/T 2260 provinces; 81-83 Hong Kong, Macao and
# Taiwan residence permits).
_PROVINCES = frozenset(
    {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46}
    | {50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83}
)


def is_plausible_resident_id(value: str) -> bool:
    """A valid resident ID whose address code names a province and whose birth date
    (characters 7-14) is a calendar date from 1900 on: the whole GB 11643 structure.

    OCR checks readings with this: a misread digit that still passes the check digit by
    chance (one in eleven) usually breaks the date or the province.
    """
    if not is_valid_resident_id(value) or int(value[:2]) not in _PROVINCES:
        return False
    year, month, day = int(value[6:10]), int(value[10:12]), int(value[12:14])
    try:
        date(year, month, day)
    except ValueError:
        return False
    return 1900 <= year <= 2100


def credit_code_check_char(first17: str) -> str:
    """The GB 32100-2015 check character for the first 17 characters of a credit code."""
    if len(first17) != 17 or any(ch not in _CREDIT_VALUE for ch in first17):
        raise ValueError("a credit code body is 17 characters from " + CREDIT_ALPHABET)
    total = sum(_CREDIT_VALUE[ch] * w for ch, w in zip(first17, _CREDIT_WEIGHTS, strict=True))
    return CREDIT_ALPHABET[(31 - total % 31) % 31]


def is_valid_credit_code(value: str) -> bool:
    """True when `value` is a unified social credit code with a correct check character."""
    if len(value) != 18 or any(ch not in _CREDIT_VALUE for ch in value):
        return False
    return credit_code_check_char(value[:17]) == value[17]


def mask_id(value: str) -> str:
    """Mask an identifier for logs: keep the first 6 and last 4 characters."""
    if len(value) <= 10:
        return "*" * len(value)
    return value[:6] + "*" * (len(value) - 10) + value[-4:]
