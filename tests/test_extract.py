"""Finding fields in OCR words (stampless.ocr.extract) and repairing IDs, on made-up lines.

The words stand for what Tesseract returns on a page: one word per CJK character, one
per run of digits, with boxes. Real pages are read in test_ocr.py.
"""

from __future__ import annotations

import dataclasses

from stampless.checksums import resident_id_check_char
from stampless.doctype import bundled_tasks_dir, load_doctype_file
from stampless.models import OcrField
from stampless.normalize import id_from_birth_date
from stampless.ocr.engine import Word
from stampless.ocr.extract import extract_raw, group_lines, label_groups, value_of
from stampless.ocr.fields import REPAIR_CONFIDENCE, Reading, cap_ambiguous, repair_from_birth

MC = load_doctype_file(bundled_tasks_dir() / "marriage_certificate.py")


def _id(body: str) -> str:
    return body + resident_id_check_char(body)


HOLDER = _id("33010619750207155")
SPOUSE = _id("11010519630114348")


def _words(y: int, *pieces: tuple[int, str]) -> list[Word]:
    """Words on one line at height ``y``: a CJK label is one word per character."""
    out = []
    for x, text in pieces:
        if text.isascii():
            out.append(Word(text, 0.9, (x, y, 24 * len(text), 40)))
        else:
            out += [Word(ch, 0.9, (x + 44 * i, y, 40, 40)) for i, ch in enumerate(text)]
    return out


def test_label_spellings_are_grouped_but_distinct_labels_are_not() -> None:
    assert label_groups(("身份证件号", "身份证号")) == [("身份证件号", "身份证号")]
    assert label_groups(("结婚证字号", "证字号")) == [("结婚证字号", "证字号")]
    assert label_groups(("持证人", "姓名")) == [("持证人",), ("姓名",)]


def test_a_misread_first_label_does_not_give_the_holder_the_spouses_id() -> None:
    # The holder's 身份证件号 is read "身份证作导": only the shorter spelling 身份证号
    # matches it, the longer one matches the spouse's label alone. Counted apart, the
    # holder's "first 身份证件号" was the spouse's.
    lines = group_lines(
        _words(100, (100, "身份证作导"), (340, HOLDER))
        + _words(300, (100, "身份证件号"), (340, SPOUSE))
    )
    holder = extract_raw(lines, MC, MC.field("holder_id"))
    spouse = extract_raw(lines, MC, MC.field("spouse_id"))
    assert [value_of(MC.field("holder_id"), c.raw)[0] for c in holder] == [HOLDER]
    assert [value_of(MC.field("spouse_id"), c.raw)[0] for c in spouse] == [SPOUSE]


def test_the_format_search_skips_what_another_fields_label_took() -> None:
    # Two columns on one line; the spouse's label is unreadable (a seal over it).
    lines = group_lines(
        _words(100, (100, "身份证件号"), (340, HOLDER), (900, "自从证化方"), (1140, SPOUSE))
    )
    found = extract_raw(lines, MC, MC.field("spouse_id"))
    assert [(c.source, c.raw) for c in found] == [("pattern", SPOUSE)]
    # The re-read region is the spouse's number, not the whole line with the holder's.
    left, _, width, _ = found[0].region or (0, 0, 0, 0)
    assert left == 1140
    assert width == 24 * 18


def test_the_format_search_skips_a_value_another_label_took_below_it() -> None:
    # Labels over their values; the holder's number is misread (a digit lost), so the
    # holder's field searches the page by format. The spouse's number, under the spouse's
    # own label, is not the holder's.
    lines = group_lines(
        _words(100, (100, "身份证件号"))
        + _words(160, (100, HOLDER[:3] + HOLDER[4:]))
        + _words(300, (100, "身份证件号"))
        + _words(360, (100, SPOUSE))
    )
    holder = extract_raw(lines, MC, MC.field("holder_id"))
    assert [c.source for c in holder] == ["label:身份证件号"]
    assert not value_of(MC.field("holder_id"), holder[0].raw)[1]
    spouse = extract_raw(lines, MC, MC.field("spouse_id"))
    assert [value_of(MC.field("spouse_id"), c.raw)[0] for c in spouse] == [SPOUSE]


def test_a_lower_label_score_finds_a_label_printed_more_often_than_read() -> None:
    lines = group_lines(
        _words(100, (100, "身份证件号"), (340, HOLDER), (900, "志从证件号"), (1140, "W035SeDit04"))
    )
    (found,) = extract_raw(lines, MC, MC.field("spouse_id"))
    assert found.source == "label:身份证件号"
    assert found.raw.endswith("035SeDit04")
    assert found.region is not None and found.region[0] == 1140


def test_a_speck_before_an_id_is_not_its_first_digit() -> None:
    spec = MC.field("holder_id")
    assert value_of(spec, "4 " + HOLDER) == (HOLDER, True)
    # Glued to it: the one 18-character window that passes the check.
    assert value_of(spec, "8" + HOLDER) == (HOLDER, True)
    assert value_of(spec, HOLDER + "7") == (HOLDER, True)
    # Nothing valid in it: the reading is reported, invalid.
    assert value_of(spec, "8" + HOLDER[1:])[1] is False


def test_id_date_digits_are_repaired_from_the_printed_birth_date() -> None:
    misread = HOLDER[:12] + "8" + HOLDER[13:]  # 0207 read as 0287
    assert id_from_birth_date(misread, "1975-02-07") == HOLDER
    # A different date is not a misreading of this one.
    assert id_from_birth_date(misread, "1980-11-30") is None
    # A reading that is not 18 characters, or already differs nowhere, is left alone.
    assert id_from_birth_date(HOLDER[:17], "1975-02-07") is None
    assert id_from_birth_date(HOLDER, "1975-02-07") is None
    # The repaired ID must pass the check: a misread outside the date stays unrepaired.
    both = "4" + misread[1:]
    assert id_from_birth_date(both, "1975-02-07") is None


def test_a_repaired_id_goes_to_a_person() -> None:
    misread = HOLDER[:12] + "8" + HOLDER[13:]
    field = OcrField(value=misread, confidence=0.4, valid=False)
    birth = OcrField(value="1975-02-07", confidence=0.97, valid=True)
    readings = [Reading(misread, False, 0.4, misread, None)]
    repaired = repair_from_birth(field, readings, birth)
    assert (repaired.value, repaired.valid) == (HOLDER, True)
    assert repaired.confidence <= REPAIR_CONFIDENCE < 0.8
    # An unreadable birth date repairs nothing.
    unread = OcrField(value=None, confidence=0.0, valid=False)
    assert repair_from_birth(field, readings, unread) == field
    # Two readings repaired to two different IDs: no repair.
    other = _id(HOLDER[:14] + "256")
    other_misread = other[:12] + "8" + other[13:]
    two = [*readings, Reading(other_misread, False, 0.4, other_misread, None)]
    assert repair_from_birth(field, two, birth) == field


def test_a_label_found_fewer_times_than_printed_is_ambiguous() -> None:
    # The holder's 姓名 is unreadable: the only 姓名 found is the spouse's, and the
    # holder's "first 姓名" would be it.
    lines = group_lines(
        _words(100, (100, "口名"), (300, "周琳")) + _words(300, (100, "姓名"), (300, "黄阳"))
    )
    (found,) = extract_raw(lines, MC, MC.field("holder_name"))
    assert found.raw == "黄阳" and found.ambiguous
    both = group_lines(
        _words(100, (100, "姓名"), (300, "周琳")) + _words(300, (100, "姓名"), (300, "黄阳"))
    )
    (found,) = extract_raw(both, MC, MC.field("holder_name"))
    assert found.raw == "周琳" and not found.ambiguous


def test_a_value_resting_only_on_an_ambiguous_label_goes_to_a_person() -> None:
    sure = OcrField(value="黄阳", confidence=0.95, valid=True)
    readings = {
        "holder_name": [
            Reading(None, False, 0.0, "", None),
            Reading("黄阳", True, 0.95, "黄阳", None),
        ]
    }
    # 持证人 (index 0) read nothing; 姓名 (index 1) was ambiguous.
    capped = cap_ambiguous("holder_name", sure, readings, {("holder_name", 1)})
    assert capped.confidence == REPAIR_CONFIDENCE
    # 持证人 reads the same name: the value stands.
    readings["holder_name"][0] = Reading("黄阳", True, 0.9, "黄阳", None)
    assert cap_ambiguous("holder_name", sure, readings, {("holder_name", 1)}) == sure
    # No ambiguous label: untouched.
    assert cap_ambiguous("holder_name", sure, readings, set()) == sure


def test_a_misread_english_gloss_is_still_skipped() -> None:
    """The English of a bilingual label, one character misread or dropped, is not taken
    for the value ("有效期至 alid Until: 2022-08-11")."""
    from stampless.ocr.extract import _gloss_length

    own = ("有效期至", "Valid Until")
    assert _gloss_length("validuntil:2022-08-11", own) == len("validuntil")
    assert _gloss_length("aliduntil:2022-08-11", own) == len("aliduntil")
    assert _gloss_length("2022-08-11", own) == 0
    assert _gloss_length("name:smith", ("姓名", "Name")) == 4
    assert _gloss_length("nme:smith", ("姓名", "Name")) == 0  # short labels only exactly


WP = load_doctype_file(bundled_tasks_dir() / "work_permit.py")


def _line(k: int, words: list[Word]) -> list[Word]:
    """``words`` as the detector's text line ``k`` (``Word.line``)."""
    return [dataclasses.replace(w, line=(0, 0, k)) for w in words]


def test_a_bilingual_label_stacked_over_its_english_stays_two_rows() -> None:
    """许可证号 printed just above "Permit No.", closer than half a line: words sorted by x
    in one row interleaved them ("许Permit可证No.号") and neither label was found."""
    words = (
        _line(0, _words(100, (100, "许可证号")))
        + _line(1, _words(118, (100, "Permit No.")))
        + _line(2, _words(100, (700, "发证日期")))
        + _line(3, _words(118, (700, "Date of Issue")))
    )
    rows = [ln.text.replace(" ", "") for ln in group_lines(words, by_line=True)]
    assert rows == ["许可证号发证日期", "PermitNo.DateofIssue"]
    # Grouped word by word, the two stacked lines are one row: what by_line prevents.
    assert len(group_lines(words)) == 1


def test_text_running_under_a_label_is_not_the_value_below_it() -> None:
    """ "Passport No." ends its row; the row below is another field's, running on from the
    left ("工作单位:长沙宇达科技股份有限公司"): its middle is no passport number."""
    rows = group_lines(
        _line(
            0, _words(100, (100, "国籍:"), (270, "FRANCE"), (560, "护照号码:"), (790, "60VN02860"))
        )
        + _line(1, _words(150, (100, "Nationality"), (560, "Passport No.")))
        + _line(2, _words(200, (100, "工作单位:长沙宇达科技股份有限公司"))),
        by_line=True,
    )
    spec = WP.field("passport_no")
    read = [value_of(spec, c.raw) for c in extract_raw(rows, WP, spec)]
    assert [(value, valid) for value, valid in read if value] == [("60VN02860", True)]


def test_a_near_match_that_is_another_label_printed_is_not_this_label() -> None:
    """出生日期 and "Date of Birth" unreadable under a seal: the looser second search must
    not take "Date of Issue", the issue date's own label, for the birth date's."""
    rows = group_lines(
        _line(0, _words(100, (100, "出19m0a2 a107"), (500, "1999年08月23日")))
        + _line(1, _words(300, (100, "Date of Issue"), (500, "2023年09月28日"))),
        by_line=True,
    )
    spec = WP.field("birth_date")
    assert [value_of(spec, c.raw)[0] for c in extract_raw(rows, WP, spec)] == []


def test_a_misread_label_after_a_label_sends_its_value_below() -> None:
    # A row of labels over a row of values; 成立日期 is read "立日期：" (its first
    # character lost): still a label, not the registered capital.
    bl = load_doctype_file(bundled_tasks_dir() / "business_license.py")
    lines = group_lines(
        _words(100, (100, "注册资本："), (700, "立日期："))
        + _words(160, (100, "叁仟万元整"), (700, "2001年09月02日"))
    )
    capital = extract_raw(lines, bl, bl.field("registered_capital"))
    assert [value_of(bl.field("registered_capital"), c.raw)[0] for c in capital] == ["3000"]


def test_a_title_beside_a_code_label_is_not_the_code_below_it() -> None:
    # 统一社会信用代码 over its code, the licence's title 营业执照 printed to the right of
    # the label: text that is no credit code is passed over for the code below.
    bl = load_doctype_file(bundled_tasks_dir() / "business_license.py")
    spec = bl.field("credit_code")
    lines = group_lines(
        _words(100, (100, "统一社会信用代码"), (600, "营业执照"))
        + _words(150, (100, "914301022465369646"))
    )
    found = extract_raw(lines, bl, spec)
    assert [(value_of(spec, c.raw)[0], c.source) for c in found] == [
        ("914301022465369646", "label:统一社会信用代码")
    ]
    # Text after a label is still its value when the line below is no code either.
    lines = group_lines(
        _words(100, (100, "统一社会信用代码"), (600, "9143010224653696"))
        + _words(150, (100, "名称"), (300, "长沙隆信房地产开发股份有限公司"))
    )
    assert [c.raw for c in extract_raw(lines, bl, spec)] == ["9143010224653696"]


def test_a_misread_next_label_beside_a_date_label_is_not_the_date_below_it() -> None:
    # A row of labels over a row of values; 结婚证字号, right of 登记日期, is read as no
    # label at all ("热线V号"): no date, so the date under 登记日期 is its value.
    spec = MC.field("registered_on")
    lines = group_lines(
        _words(100, (100, "持证人"), (500, "登记日期"), (900, "热线V号"))
        + _words(150, (100, "夏桂"), (500, "2024年02月16日"), (900, "J510104-2024-669783"))
    )
    assert [value_of(spec, c.raw)[0] for c in extract_raw(lines, MC, spec)] == ["2024-02-16"]
    # A date misread beside its label stays the value when the line below holds no date.
    lines = group_lines(
        _words(100, (100, "登记日期"), (500, "2024年02月46日"))
        + _words(150, (100, "持证人"), (500, "夏桂"))
    )
    assert [c.raw for c in extract_raw(lines, MC, spec)] == ["2024年02月46日"]


def test_a_value_whose_box_reaches_over_its_labels_colon_is_beside_it() -> None:
    """The detector pads its lines: 冯新琪's box began before the end of
    "法定代表人：" on the same height, and the two were taken for stacked lines, so the
    legal representative was not found on a normal scan. Here they overlap by 20 px."""
    bl = load_doctype_file(bundled_tasks_dir() / "business_license.py")
    spec = bl.field("legal_representative")
    words = _line(0, _words(100, (100, "法定代表人："))) + _line(1, _words(104, (340, "冯新琪")))
    rows = group_lines(words, by_line=True)
    assert [ln.text.replace(" ", "") for ln in rows] == ["法定代表人:冯新琪"]
    assert [value_of(spec, c.raw)[0] for c in extract_raw(rows, bl, spec)] == ["冯新琪"]


def test_a_latin_label_matched_fuzzily_inside_a_word_is_no_label() -> None:
    """'Name' is three letters of four of 'JAME' in the holder's name 'FISCHER JAMES':
    taken for the label, it cut the name to 'JAMES'. A fuzzy match is scored again to
    the end of the word it ends in; a misread label ('Nane:', 'Valid Uintil') still
    counts."""
    from stampless.ocr.extract import find_label

    value = group_lines(_words(100, (100, "FISCHER"), (300, "JAMES"), (460, "男/M")))[0]
    misread = group_lines(_words(100, (100, "Nane:"), (300, "FISCHER")))[0]
    assert value.text.startswith("FISCHER JAMES")
    assert find_label(value, "Name") == []
    assert [(s, e) for s, e, _ in find_label(misread, "Name")] == [(0, 4)]
    spec = WP.field("holder_name")
    assert [c.raw for c in extract_raw([value], WP, spec)] == []
    until = group_lines(_words(100, (100, "Valid"), (260, "Uintil"), (500, "2024-09-18")))[0]
    assert [(s, e) for s, e, _ in find_label(until, "Valid Until")] == [(0, len("Valid Uintil"))]


def test_a_misread_label_one_character_short_leaves_the_value_whole() -> None:
    """A fuzzy match is as long as the label, so a label read one character short took
    the value's first character with it: 'Pasiport No.H1024751' lost the H, and
    'Employe福州利康源...' the 福. The match ends where it matches best."""
    passport = WP.field("passport_no")
    row = group_lines(_words(100, (100, "Pasiport"), (300, "No.H1024751")))
    assert [c.raw for c in extract_raw(row, WP, passport)] == ["H1024751"]
    employer = WP.field("employer")
    row = group_lines(_words(100, (100, "Employe"), (280, "福州利康源信息技术股份有限公司")))
    assert [c.raw for c in extract_raw(row, WP, employer)] == ["福州利康源信息技术股份有限公司"]
