"""Field rules and verdict rules (stampless.compare), on the bundled document types."""

from __future__ import annotations

import pytest

from stampless.compare import agree, decide
from stampless.doctype import FieldSpec, Rule, bundled_tasks_dir, load_doctype_file
from stampless.models import FieldStatus, OcrField, OcrResult, Record, VerdictKind

MC = load_doctype_file(bundled_tasks_dir() / "marriage_certificate.py")
BL = load_doctype_file(bundled_tasks_dir() / "business_license.py")

RECORD_FIELDS = {
    "cert_no": "J320102-2024-001234",
    "registered_on": "2024-01-02",
    "holder_name": "张三",
    "holder_id": "11010519491231002X",
    "spouse_name": "李四",
    "spouse_id": "110105194912310029",
    "holder_birth": "1949-12-31",
    "spouse_birth": "1949-12-31",
}
CLAIM = {
    "cert_no": "J320102-2024-001234",
    "holder_name": "张三",
    "holder_id": "11010519491231002X",
    "registered_on": "2024年1月2日",
}


def record(**changes: str) -> Record:
    fields = {**RECORD_FIELDS, **changes}
    return Record(system="civil_affairs", key=fields["cert_no"], fields=fields)


def ocr(confidence: float = 0.97, **changes: str | None) -> OcrResult:
    values = {**RECORD_FIELDS, **changes}
    return OcrResult(
        type="marriage_certificate",
        fields={
            name: OcrField(value=value, confidence=confidence, valid=value is not None)
            for name, value in values.items()
        },
    )


def test_all_three_agree_is_verified() -> None:
    decision = decide(MC, MC.claim_model.model_validate(CLAIM), ocr(), record())
    assert decision.verdict is VerdictKind.verified
    assert {f.status for f in decision.fields} == {FieldStatus.match}
    assert len(decision.fields) == len(MC.fields)


def test_no_record_is_not_found() -> None:
    decision = decide(MC, CLAIM, ocr(), None)
    assert decision.verdict is VerdictKind.not_found
    assert "J320102-2024-001234" in decision.reasons[0]


def test_revoked_record_is_mismatch() -> None:
    revoked = record()
    revoked.status = "revoked"
    decision = decide(MC, CLAIM, ocr(), revoked)
    assert decision.verdict is VerdictKind.mismatch
    assert "revoked" in decision.reasons[0]


def test_confident_ocr_disagreeing_with_record_is_mismatch() -> None:
    decision = decide(MC, {}, ocr(holder_name="王五"), record())
    assert decision.verdict is VerdictKind.mismatch
    bad = next(f for f in decision.fields if f.name == "holder_name")
    assert bad.status is FieldStatus.mismatch
    assert any("王五" in r for r in decision.reasons)


def test_claim_disagreeing_with_record_is_mismatch_even_without_scan() -> None:
    claim = {**CLAIM, "holder_id": "110105194912310029"}
    decision = decide(MC, claim, None, record())
    assert decision.verdict is VerdictKind.mismatch


def test_claim_only_path_verifies_claimed_fields() -> None:
    decision = decide(MC, CLAIM, None, record())
    assert decision.verdict is VerdictKind.verified
    assert {f.name for f in decision.fields} == set(CLAIM)


def test_low_confidence_needs_review_never_verified() -> None:
    decision = decide(MC, CLAIM, ocr(confidence=0.5), record())
    assert decision.verdict is VerdictKind.needs_review
    assert all(f.status is FieldStatus.unreadable for f in decision.fields)


def test_low_confidence_disagreement_is_review_not_mismatch() -> None:
    decision = decide(MC, {}, ocr(confidence=0.5, holder_name="王五"), record())
    assert decision.verdict is VerdictKind.needs_review


def test_unreadable_required_field_needs_review() -> None:
    decision = decide(MC, CLAIM, ocr(spouse_id=None), record())
    assert decision.verdict is VerdictKind.needs_review
    spouse = next(f for f in decision.fields if f.name == "spouse_id")
    assert spouse.status is FieldStatus.unreadable


def test_invalid_reading_needs_review() -> None:
    reading = ocr()
    reading.fields["holder_id"] = OcrField(value="110105194912310021", confidence=0.99, valid=False)
    decision = decide(MC, CLAIM, reading, record())
    assert decision.verdict is VerdictKind.needs_review


def test_missing_record_field_needs_review() -> None:
    fields = dict(RECORD_FIELDS)
    del fields["spouse_id"]
    decision = decide(MC, CLAIM, ocr(), Record(system="x", key="k", fields=fields))
    assert decision.verdict is VerdictKind.needs_review


def test_thresholds_from_config_override() -> None:
    strict = decide(MC, CLAIM, ocr(confidence=0.9), record(), thresholds={"holder_name": 0.95})
    assert strict.verdict is VerdictKind.needs_review
    loose = decide(MC, CLAIM, ocr(confidence=0.9), record(), min_confidence=0.85)
    assert loose.verdict is VerdictKind.verified


def test_near_miss_text_goes_to_review() -> None:
    rec = Record(
        system="market_supervision",
        key="91350100M000100Y43",
        fields={
            "credit_code": "91350100M000100Y43",
            "company_name": "南京华信科技有限公司",
            "company_type": "有限责任公司(自然人独资)",
            "legal_representative": "张三",
            "registered_capital": "100",
            "established_on": "2020-05-06",
            "address": "南京市玄武区中山路12号",
        },
    )
    read = OcrResult(
        type="business_license",
        fields={
            name: OcrField(value=value, confidence=0.99, valid=True)
            for name, value in {**rec.fields, "address": "南京市玄武区中山路13号"}.items()
        },
    )
    decision = decide(BL, {}, read, rec)
    assert decision.verdict is VerdictKind.needs_review
    # The capital compares as canonical 万元, whatever form the claim used.
    claim = {
        "credit_code": "91350100M000100Y43",
        "company_name": "南京华信科技有限公司",
        "registered_capital": "壹佰万元整",
    }
    assert decide(BL, claim, None, rec).verdict is VerdictKind.verified


def test_ocr_slips_go_to_review_but_typed_claims_do_not() -> None:
    spec = FieldSpec(name="d", labels=("d",), kind="date")
    assert agree(spec, "2015-01-25", "2015-11-25", read=True) is None
    assert agree(spec, "2015-01-25", "2015-11-25") is False
    assert agree(spec, "2015-01-25", "2016-07-25", read=True) is False
    text = FieldSpec(name="t", labels=("t",), kind="text", rule=Rule.text)
    assert (
        agree(text, "有限责任公司(法人独资)郑州市金水区", "有限责任公司(法人独资)", read=True)
        is None
    )
    # A reading cut short whose open bracket normalization closed: a slip, not a forgery.
    record_type = "有限责任公司(自然人投资或控股)"
    assert agree(text, "有限责任公司(自然)", record_type, read=True) is None
    assert agree(text, "有限责任公司(自然)", record_type) is False
    capital = FieldSpec(name="c", labels=("c",), kind="capital")
    assert agree(capital, "949", "7949", read=True) is None
    assert decide(MC, {}, ocr(registered_on="2024-01-03"), record()).verdict is (
        VerdictKind.needs_review
    )


@pytest.mark.parametrize(
    ("rule", "a", "b", "expected"),
    [
        (Rule.exact, "2024-01-02", "2024-01-02", True),
        (Rule.exact, "2024-01-02", "2024-01-03", False),
        (Rule.name, "张三", "张三", True),
        (Rule.name, "张三", "张山", None),  # one character: an OCR slip or a forgery
        (Rule.name, "张三", "李四", False),
        (Rule.name, "张三丰", "张三", False),
        (Rule.name, "JOHN SMITH", "SMITH JOHN", True),
        (Rule.name, "JOHN SMITH", "JOHN SMYTH", None),
        (Rule.name, "ALICEMARTIN", "ALICE MARTIN", True),  # a claim is typed without spaces
        (Rule.name, "JOHN SMITH", "MARY JONES", False),
        (Rule.text, "南京华信科技有限公司", "南京华信科技有限公司", True),
        (Rule.text, "南京华信科技有限公司", "南京华倍科技有限公司", None),
        (Rule.text, "南京华信科技有限公司", "上海远大物流股份公司", False),
        (Rule.numeric, "100", "100.4", True),
        (Rule.numeric, "100", "101", False),
    ],
)
def test_field_rules(rule: Rule, a: str, b: str, expected: bool | None) -> None:
    spec = FieldSpec(name="x", labels=("x",), kind="text", rule=rule, tolerance=0.5)
    assert agree(spec, a, b) is expected


def test_claim_model_errors_are_clear() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        MC.claim_model.model_validate({**CLAIM, "holder_id": "110105194912310021", "x": 1})
    text = str(info.value)
    assert "check digit" in text
    assert "Extra inputs are not permitted" in text


def test_a_confident_one_character_difference_is_a_near_miss_not_unreadable() -> None:
    decision = decide(MC, {}, ocr(holder_name="张山"), record())
    assert decision.verdict is VerdictKind.needs_review
    name = next(f for f in decision.fields if f.name == "holder_name")
    assert name.status is FieldStatus.near_miss
    assert name.reason is not None and "compare the scan with the record by eye" in name.reason
    assert name.reason in decision.reasons
    # The same slip read below the threshold is a reading problem: unreadable.
    unsure = decide(MC, {}, ocr(confidence=0.5, holder_name="张山"), record())
    low = next(f for f in unsure.fields if f.name == "holder_name")
    assert low.status is FieldStatus.unreadable
    assert low.reason is not None and "below the threshold" in low.reason
    # A typed claim one character off is a near miss too; a match carries no reason.
    claimed = decide(MC, {**CLAIM, "holder_name": "张山"}, None, record())
    statuses = {f.name: (f.status, f.reason) for f in claimed.fields}
    assert statuses["holder_name"][0] is FieldStatus.near_miss
    assert statuses["cert_no"] == (FieldStatus.match, None)
