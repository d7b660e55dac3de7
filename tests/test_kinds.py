"""Field kinds (stampless.kinds): the registry, printed forms, Latin text, task-defined kinds."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from stampless import DocumentType, FieldKind, FieldSpec, LatinText, Rule, Tier, get_kind
from stampless.compare import agree, decide
from stampless.doctype import load_doctype_file
from stampless.kinds import KINDS, check, date_forms
from stampless.models import OcrField, OcrResult, Record, VerdictKind
from stampless.normalize import normalize, normalize_text


@pytest.fixture(autouse=True)
def _registry() -> Iterator[None]:
    """Kinds a test registers are gone after it."""
    before = dict(KINDS)
    yield
    KINDS.clear()
    KINDS.update(before)


def test_every_builtin_kind_canonicalizes_its_own_forms() -> None:
    samples = {
        "resident_id": "11010519491231002X",
        "credit_code": "91350100M000100Y43",
        "cert_no": "J320102-2024-001234",
        "date": "2024-01-02",
        "month": "2019-03",
        "name": "张三",
        "text": "南京市玄武区中山路1号",
        "latin_text": "Marriage record MR-0001",
        "capital": "100",
        "integer": "66",
        "decimal": "12.5",
    }
    assert set(samples) <= set(KINDS)
    for name, value in samples.items():
        kind = get_kind(name)
        for form in kind.printed(value):
            got, valid = kind.check(form)
            assert valid, (name, form)
            assert got is not None and kind.key(got) == kind.key(value), (name, form, got)


def test_dates_are_printed_in_the_forms_certificates_use() -> None:
    assert date_forms("2024-01-02")[:2] == ["2024年01月02日", "2024年1月2日"]


def test_text_keeps_word_spaces_for_display_and_compares_without_them() -> None:
    assert normalize_text("Marriage   record  MR-0001") == "Marriage record MR-0001"
    assert normalize_text("南京 市 玄武 区") == "南京市玄武区"
    spec = FieldSpec(name="title", labels=("Title",), kind="text")
    assert agree(spec, "Marriage record MR-0001", "Marriagerecord MR-0001") is True


def test_latin_text_compares_case_only_when_asked() -> None:
    strict = FieldSpec(name="status", labels=("Status",), kind="latin_text")
    loose = FieldSpec(name="status", labels=("Status",), kind="latin_text", ignore_case=True)
    assert strict.compare_rule is Rule.text
    assert agree(strict, "Urgent", "urgent") is not True
    assert agree(loose, "Urgent", "urgent") is True
    assert agree(loose, "Urgent", "Normal") is False
    assert normalize("latin_text", "  Open   issue ") == "Open issue"


def test_a_latin_name_one_letter_off_is_never_the_same_name() -> None:
    spec = FieldSpec(name="holder", labels=("Name",), kind="name")
    assert agree(spec, "SMITH JOHN ALEXANDER", "John Alexander Smith") is True
    assert agree(spec, "SMITH JOHN ALEXANDER", "SMITH JOHN ALEXANDRE") is not True
    assert agree(spec, "SMITH JOHN", "BROWN MARY") is False


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown field kind .ticket.; use one of resident_id"):
        FieldSpec(name="t", labels=("T",), kind="ticket")


TASK = """
import re
from pydantic import BaseModel, ConfigDict
from stampless import DocumentType, FieldKind, FieldSpec, Tier, register_kind


def check_ticket(text):
    if not text:
        return None, False
    m = re.search(r"T-?(\\d{4})", text.upper().replace(" ", ""))
    return (f"T-{m.group(1)}", True) if m else (text.strip() or None, False)


TICKET = register_kind(FieldKind("ticket", check=check_ticket, whitelist="T-0123456789"))


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket: str


DOCUMENT = DocumentType(
    name="ticket_slip",
    title="Ticket slip",
    tier=Tier.robot,
    system=None,
    key_field="ticket",
    claim_model=Claim,
    fields=(FieldSpec(name="ticket", labels=("Ticket",), kind="ticket"),),
)
"""


def test_a_task_module_registers_its_own_kind(tmp_path: Path) -> None:
    path = tmp_path / "ticket_slip.py"
    path.write_text(TASK, encoding="utf-8")
    doc = load_doctype_file(path)
    spec = doc.field("ticket")
    assert spec.kind == "ticket" and spec.kind_def.whitelist == "T-0123456789"
    assert normalize("ticket", "t 0042") == "T-0042"
    ocr = OcrResult(
        type=doc.name, fields={"ticket": OcrField(value="T-0042", confidence=0.95, valid=True)}
    )
    record = Record(system="s", key="T-0042", fields={"ticket": "T0042"})
    assert decide(doc, {"ticket": "T-0042"}, ocr, record).verdict is VerdictKind.verified


def test_a_kind_object_can_be_given_directly() -> None:
    upper = FieldKind(
        "shouting", check=lambda t: (t.upper(), True) if t else (None, False), rule=Rule.text
    )

    class Claim(BaseModel):
        model_config = ConfigDict(extra="forbid")
        note: LatinText

    doc = DocumentType(
        name="note",
        title="Note",
        tier=Tier.robot,
        system=None,
        key_field="note",
        claim_model=Claim,
        fields=(FieldSpec(name="note", labels=("Note",), kind=upper),),
    )
    assert doc.field("note").kind == "shouting"
    assert get_kind("shouting") is upper
    assert re.fullmatch(r"\w+", normalize("shouting", "hey") or "")


def test_latin_text_holds_no_cjk() -> None:
    """A passport number taken from the wrong place ("科技股份有限公司") is no Latin text."""
    assert check("latin_text", "科技股份有限公司")[1] is False
    assert check("latin_text", "月08日")[1] is False
    assert check("latin_text", "MÜLLER")[1] is True
    assert check("latin_text", "B1385538") == ("B1385538", True)


def test_marks_mean_nothing_in_text_but_do_in_dates() -> None:
    """A lost bracket is the same company type; the dots of a date say which date it is."""
    text, date = get_kind("text"), get_kind("date")
    assert text.skeleton("有限责任公司自然人独资)") == text.skeleton("有限责任公司(自然人独资)")
    assert text.skeleton("有限责任公司(法人独资)") != text.skeleton("有限责任公司(自然人独资)")
    assert date.skeleton("2024.1.12") != date.skeleton("2024.11.2")


def test_a_number_of_fixed_length_reads_through_spaces_and_look_alike_letters() -> None:
    """A permit number as the work permit task registers it: 15 digits, nothing else."""
    from stampless.kinds import fixed_digits
    from stampless.ocr.extract import value_of

    permit = fixed_digits("permit_no_test", 15)
    assert permit.check("1101 0543 6358 455") == ("110105436358455", True)
    assert permit.check("11O1O5436358455") == ("110105436358455", True)
    # One digit lost or a label read in the value's place: no valid value to contradict.
    assert permit.check("11010543635845") == ("11010543635845", False)
    assert permit.check("Dute of isu") == (None, False)
    # A resident ID is 18 digits, never a permit number, on the page or in one word.
    spec = FieldSpec(name="permit", labels=("许可证号",), kind=permit)
    assert value_of(spec, "110105436358455 Date of Issue") == ("110105436358455", True)
    assert value_of(spec, "110101199003071234")[1] is False
    assert permit.search is not None and permit.search.search("110101199003071234") is None


def test_the_work_permit_task_reads_its_permit_number_as_digits() -> None:
    doc = load_doctype_file(Path(__file__).parent.parent / "tasks" / "work_permit.py")
    spec = doc.field("permit_no")
    assert spec.kind_def.script == "digits"
    assert spec.kind_def.check("Permit No. 310104435115463")[0] == "310104435115463"


def test_a_claim_keeps_the_word_spaces_of_what_it_shows() -> None:
    """Spacing is not the value ('WEBER  DANIEL' claims what 'WEBERDANIEL' does), but
    what is kept and shown keeps one space between words; CJK and codes stay unspaced."""
    from stampless.doctype import IsoDate, PersonName, ResidentId, Text

    class Claim(BaseModel):
        name: PersonName
        cjk: PersonName
        title: Text
        person_id: ResidentId
        on: IsoDate

    claim = Claim(
        name="Weber  Daniel",
        cjk="罗 德蕾",
        title="Marriage  record MR-0001",
        person_id="11010519491231002x",
        on="2024-01-02",
    )
    assert (claim.name, claim.cjk, claim.title) == (
        "WEBER DANIEL",
        "罗德蕾",
        "Marriage record MR-0001",
    )
    assert (claim.person_id, claim.on) == ("11010519491231002X", "2024-01-02")


def test_latin_accents_are_no_other_value() -> None:
    """The recognizer reads O as Ó now and then, and a certificate may print an accent the
    record has not: RÓBERTS is the record's ROBERTS. A changed letter still differs."""
    name = get_kind("name")
    assert name.key("RÓBERTS GIULIA") == name.key("ROBERTS GIULIA")
    assert name.key("MÜLLER") == name.key("MULLER") != name.key("MILLER")
    assert name.skeleton("JÓHNSON SOPHIE") == name.skeleton("JOHNSON SOPHIE")
    assert name.key("蔣介石") == "蒋介石" and name.key("ÆTHEL") == "ÆTHEL"


def test_a_kinds_shape_is_its_form_not_its_check_character() -> None:
    """What verification weighs against the record: any value of the kind's form, valid
    or not (a forger may not fix the check character), and nothing a forger would not print."""
    from stampless.checksums import resident_id_check_char

    resident = get_kind("resident_id")
    body = "32010619980808171"
    check_char = resident_id_check_char(body)
    assert resident.well_formed(body + check_char)
    assert resident.well_formed(body + ("0" if check_char != "0" else "1"))  # check fails
    assert not resident.well_formed(body)  # 17 characters
    assert not resident.well_formed("32010614980808171" + "2")  # born in 1498
    assert not resident.well_formed("32010619981308171" + "2")  # month 13
    assert get_kind("date").well_formed("2021-09-03") and not get_kind("date").well_formed(None)
    assert get_kind("name").well_formed("武玉")  # no shape: any name is a rival
