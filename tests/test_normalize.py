"""Normalizers, check characters and the confusion-correction rule (stampless.normalize)."""

from __future__ import annotations

import string
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stampless import normalize as norm
from stampless.checksums import (
    CREDIT_ALPHABET,
    credit_code_check_char,
    is_plausible_resident_id,
    is_valid_credit_code,
    is_valid_resident_id,
    resident_id_check_char,
)

VALID_ID = "11010519491231002X"
VALID_CODE = "91350100M000100Y43"

id_bodies = st.text(alphabet=string.digits, min_size=17, max_size=17)
credit_bodies = st.text(alphabet=CREDIT_ALPHABET, min_size=17, max_size=17)
# Bodies with GB 11643's structure: a province, a district, a birth date, a sequence.
plausible_bodies = st.builds(
    lambda province, district, born, seq: f"{province}{district:04d}{born:%Y%m%d}{seq:03d}",
    st.sampled_from([11, 13, 31, 32, 44, 51, 65, 81]),
    st.integers(0, 9999),
    st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)),
    st.integers(0, 999),
)


# --- check characters (hypothesis) ------------------------------------------------------


@given(id_bodies)
def test_resident_id_check_digit_roundtrip(body: str) -> None:
    full = body + resident_id_check_char(body)
    assert is_valid_resident_id(full)


@given(plausible_bodies)
def test_plausible_resident_id_roundtrip(body: str) -> None:
    full = body + resident_id_check_char(body)
    assert is_plausible_resident_id(full)
    assert norm.check_resident_id(full) == (full, True)


@pytest.mark.parametrize(
    "body",
    [
        "99010519491231002",  # no province 99
        "00010519491231002",
        "11010518991231002",  # born before 1900
        "11010519491331002",  # month 13
        "11010519490230002",  # 30 February
        "11010519490229002",  # 1949 is no leap year
    ],
)
def test_a_check_digit_alone_is_not_a_plausible_id(body: str) -> None:
    full = body + resident_id_check_char(body)
    assert is_valid_resident_id(full)
    assert not is_plausible_resident_id(full)
    # OCR reports it, but not as valid: a misread digit that passes the check by chance.
    assert norm.check_resident_id(full) == (full, False)


def test_leap_day_is_plausible() -> None:
    body = "11010520000229002"
    assert is_plausible_resident_id(body + resident_id_check_char(body))


@given(id_bodies, st.integers(0, 16), st.integers(1, 9))
def test_resident_id_single_digit_change_is_caught(body: str, pos: int, delta: int) -> None:
    full = body + resident_id_check_char(body)
    changed = full[:pos] + str((int(full[pos]) + delta) % 10) + full[pos + 1 :]
    # Weights are non-zero mod 11 and 11 is prime: any single-digit change breaks the check.
    assert not is_valid_resident_id(changed)


@given(credit_bodies)
def test_credit_code_check_char_roundtrip(body: str) -> None:
    full = body + credit_code_check_char(body)
    assert is_valid_credit_code(full)
    assert norm.check_credit_code(full) == (full, True)


@given(credit_bodies, st.integers(0, 16), st.integers(1, 30))
def test_credit_code_single_change_is_caught(body: str, pos: int, delta: int) -> None:
    full = body + credit_code_check_char(body)
    new = CREDIT_ALPHABET[(CREDIT_ALPHABET.index(full[pos]) + delta) % 31]
    assert not is_valid_credit_code(full[:pos] + new + full[pos + 1 :])


# --- confusion correction ------------------------------------------------------------


@settings(max_examples=60)
@given(plausible_bodies, st.data())
def test_letters_in_an_id_are_mapped_back_to_digits(body: str, data: st.DataObject) -> None:
    full = body + resident_id_check_char(body)
    lookalike = {"0": "O", "1": "I", "8": "B", "5": "S", "2": "Z"}
    positions = [i for i, ch in enumerate(full[:17]) if ch in lookalike]
    if not positions:
        return
    pos = data.draw(st.sampled_from(positions))
    misread = full[:pos] + lookalike[full[pos]] + full[pos + 1 :]
    assert norm.check_resident_id(misread) == (full, True)


def test_unique_fix_is_accepted() -> None:
    misread = "11O1O519491231OO2X"
    fix = norm.correct_confusions(misread, is_valid=is_valid_resident_id, allowed=norm._id_allowed)
    assert fix.value == VALID_ID
    assert fix.changed
    assert fix.candidates == 1


def _ambiguous_credit_code() -> tuple[str, list[str]]:
    """A misread code (one 0 read as D) that two different single swaps make valid."""
    partner = {"0": "D", "D": "0", "8": "B", "B": "8"}
    for n in range(100_000):
        body = f"9135{n * 7919 % 10**13:013d}"
        good = body + credit_code_check_char(body)
        swappable = [i for i, ch in enumerate(good[:17]) if ch in partner]
        for i in swappable:
            misread = good[:i] + partner[good[i]] + good[i + 1 :]
            if is_valid_credit_code(misread):
                continue
            passing = [
                cand
                for k in swappable
                if is_valid_credit_code(
                    cand := misread[:k] + partner[misread[k]] + misread[k + 1 :]
                )
            ]
            if len(passing) > 1:
                return misread, passing
    raise AssertionError("no ambiguous example found")


def test_ambiguous_fix_is_refused() -> None:
    misread, passing = _ambiguous_credit_code()
    assert not is_valid_credit_code(misread)
    assert len(passing) >= 2
    fix = norm.correct_confusions(
        misread, is_valid=is_valid_credit_code, allowed=norm._credit_allowed
    )
    assert fix.value is None
    assert fix.candidates >= 2
    value, valid = norm.check_credit_code(misread)
    assert not valid
    assert value == misread


def test_credit_code_with_impossible_letter_is_forced_back() -> None:
    # 'O' is not in the credit alphabet: it can only be a 0.
    misread = VALID_CODE.replace("M000", "MO00")
    assert norm.check_credit_code(misread) == (VALID_CODE, True)


def test_id_with_a_non_confusable_error_stays_invalid() -> None:
    wrong = VALID_ID[:5] + "9" + VALID_ID[6:]
    assert norm.check_resident_id(wrong) == (wrong, False)


def test_id_is_found_in_noise_and_spaces() -> None:
    assert norm.check_resident_id("号码: 110105 1949 1231 002x。") == (VALID_ID, True)
    assert norm.check_resident_id("") == (None, False)
    assert norm.check_resident_id("12345")[1] is False


# --- dates, months, numbers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024年1月2日", "2024-01-02"),
        ("2024年01月02日", "2024-01-02"),
        ("2024 年 01 月 02 日", "2024-01-02"),
        ("2024-01-02", "2024-01-02"),
        ("2024.01.02", "2024-01-02"),
        ("2024/1/2", "2024-01-02"),
        ("20240102", "2024-01-02"),
        ("２０２４年１月２日", "2024-01-02"),
        ("2O24年O1月02日", "2024-01-02"),
        ("2024年02月30日", None),
        ("长期", None),
        (None, None),
    ],
)
def test_normalize_date(text: str | None, expected: str | None) -> None:
    assert norm.normalize_date(text) == expected


def test_months() -> None:
    assert norm.find_months("2019年01月 至 2024年6月") == ["2019-01", "2024-06"]
    assert norm.normalize_month("2024-01") == "2024-01"
    assert norm.normalize_month("2024.1") == "2024-01"
    assert norm.normalize_month("202413") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100万元", "100"),
        ("100.00万元", "100"),
        ("壹佰万元整", "100"),
        ("柒仟伍佰零捌万元整", "7508"),
        ("贰仟零伍拾万元", "2050"),
        ("壹亿元整", "10000"),
        ("1,000,000元", "100"),
        ("(人民币)50.5万元", "50.5"),
        ("100", "100"),
        ("伍佰肆拾", None),
        ("万元整", None),
        ("", None),
        # Figures run into an amount in words: a seal over 陆 read as "11,".
        ("11,仟叁佰玖拾肆万元整", None),
        ("陆仟叁佰玖拾4万元整", None),
    ],
)
def test_normalize_capital(text: str, expected: str | None) -> None:
    assert norm.normalize_capital(text) == expected


def test_chinese_numbers() -> None:
    assert norm.parse_chinese_number("十二") == 12
    assert norm.parse_chinese_number("贰仟零伍拾") == 2050
    assert norm.parse_chinese_number("壹佰万") == 1_000_000
    assert norm.parse_chinese_number("abc") is None


def test_integers_and_decimals() -> None:
    assert norm.normalize_integer("66个月") == "66"
    assert norm.normalize_integer("累计 O66") == "66"
    assert norm.normalize_integer("无") is None
    assert norm.normalize_decimal("12.50") == "12.5"


# --- text, names, certificate numbers ---------------------------------------------------


def test_halfwidth_and_spacing() -> None:
    assert norm.to_halfwidth("ＡＢＣ１２３（）：") == "ABC123():"
    assert norm.cjk_spacing("登 记 日 期  2024") == "登记日期2024"
    assert norm.cjk_spacing("JOHN   SMITH") == "JOHN SMITH"


def test_names_and_text() -> None:
    assert norm.normalize_name(" 张 三 ") == "张三"
    assert norm.normalize_name("john  smith") == "JOHN SMITH"  # words kept apart
    assert norm.check("name", "张三") == ("张三", True)
    assert norm.check("name", "WE")[1] is False  # short Latin noise is not a name
    assert (
        norm.normalize_text("有限责任公司（自然人投资或控股）") == "有限责任公司(自然人投资或控股)"
    )
    assert norm.normalize_text("   ") is None


def test_cert_no() -> None:
    assert norm.check_cert_no("J320102-2024-001234") == ("J320102-2024-001234", True)
    assert norm.check_cert_no("j32O102—2024—OO1234") == ("J320102-2024-001234", True)
    assert norm.check_cert_no("J3201-2024") == ("J3201-2024", False)
    # A separator read as another mark is still the separator.
    assert norm.check_cert_no("J370102-2019.096294") == ("J370102-2019-096294", True)
    assert norm.check_cert_no("J370102·2019–096294") == ("J370102-2019-096294", True)


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown field kind"):
        norm.check("colour", "red")


def test_a_day_of_three_digits_is_no_date() -> None:
    """ "2021年09月103日" is a misreading (a doubled digit), not 2021-09-10."""
    assert norm.normalize_date("2021年09月103日") is None
    assert norm.normalize_date("2021年09月03日") == "2021-09-03"
    assert norm.normalize_date("2021.9.3") == "2021-09-03"
    # A time after a date is no third digit of its day.
    assert norm.normalize_date("2024-01-02 12:30") == "2024-01-02"
