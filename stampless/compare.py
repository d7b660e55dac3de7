"""Decide a verdict from the claim, the OCR reading of the scan and the department record.

The verdict is the product, and its errors are not symmetric: accepting a forged or
altered certificate is the worst outcome, rejecting a genuine one costs an applicant a
trip. So the rules are:

* ``not_found`` when the department has no record; ``mismatch`` when it is revoked.
* ``mismatch`` when the claim disagrees with the record, or a field read with
  confidence at or above its threshold disagrees with the record.
* ``needs_review`` when a required field is unreadable, invalid, read with low
  confidence, a near miss (nearly but not exactly equal: OCR noise or a one-character
  forgery look the same), or missing from the record. Never a silent accept.
* ``verified`` only when every required field agrees among claim (when claimed), OCR
  (when a scan was read) and record, each read above its threshold.

Thresholds: ``thresholds[field]`` from robot.toml, else the field's own threshold in
its task module, else ``min_confidence``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from stampless.config import OcrConfig
from stampless.doctype import DocumentType, FieldSpec, Rule
from stampless.models import (
    CheckStatus,
    FieldCheck,
    FieldResult,
    FieldStatus,
    OcrField,
    OcrResult,
    Record,
    VerdictKind,
)

# Text and Latin names at or above this similarity but not equal are sent to review
# rather than called a mismatch: OCR noise and a one-character alteration look alike.
NEAR_MISS_RATIO = 85.0


class Decision(BaseModel):
    """The machine's verdict with the per-field comparison and the reasons for it."""

    verdict: VerdictKind
    fields: list[FieldResult] = []
    reasons: list[str] = []


def _is_latin(value: str) -> bool:
    return value.isascii()


def _latin_name_key(value: str) -> str:
    return " ".join(sorted(re.findall(r"[a-z]+", value.casefold())))


def agree(spec: FieldSpec, a: str, b: str, *, read: bool = False) -> bool | None:
    """Whether two canonical values of ``spec`` agree: True, False, or None for a near miss.

    A near miss (None) means "cannot tell": the caller sends it to review. ``read`` says
    ``a`` was read by OCR: then a value one edit away from ``b`` (a dropped, added or
    changed character), or one that starts with the other (a neighbouring line run
    together with it), is a near miss too, because that is what OCR slips look like. A
    claim is typed, so it gets no such allowance.
    """
    if spec.rule is Rule.name and _is_latin(a) and _is_latin(b):
        # Latin names: the same words in any order ("SMITH JOHN" is "John Smith"); one
        # letter off is for a person, never a match.
        ka, kb = _latin_name_key(a), _latin_name_key(b)
        # A claim arrives without its spaces (claim_spelling): "ALICEMARTIN" is the
        # record's "ALICE MARTIN", letter for letter in the same order.
        letters_a, letters_b = (re.sub(r"[^a-z]+", "", v.casefold()) for v in (a, b))
        if ka == kb or letters_a == letters_b:
            return True
        return None if fuzz.ratio(ka, kb) >= NEAR_MISS_RATIO else False
    a, b = spec.kind_def.key(a), spec.kind_def.key(b)
    # Normalization closes a bracket OCR left open ("有限责任公司(自然" -> "...(自然)"),
    # which hides a reading cut short: compare without it too.
    cut = a.removesuffix(")")
    slip = Levenshtein.distance(a, b) <= 1 or (
        spec.rule is Rule.text and (a.startswith(b) or b.startswith((a, cut)))
    )
    if a != b and read and spec.rule is not Rule.numeric and slip:
        return None
    if spec.rule is Rule.exact:
        return a == b
    if spec.rule is Rule.numeric:
        try:
            return abs(float(a) - float(b)) <= spec.tolerance
        except ValueError:
            return a == b
    if a == b:
        return True
    if spec.rule is Rule.name:
        # CJK names have no spelling variants, but one character in a name of the same
        # length is also what an OCR slip looks like: review it rather than reject the
        # applicant. A forged name (another person's) differs in more.
        if len(a) == len(b) and sum(x != y for x, y in zip(a, b, strict=True)) == 1:
            return None
        return False
    # Rule.text
    return None if fuzz.ratio(a, b) >= NEAR_MISS_RATIO else False


def _canonical(spec: FieldSpec, value: Any) -> str | None:
    if value is None:
        return None
    return spec.kind_def.check(str(value))[0]


def _claim_dict(claim: BaseModel | dict[str, Any]) -> dict[str, Any]:
    if isinstance(claim, BaseModel):
        return claim.model_dump(mode="json")
    return dict(claim)


def _label(spec: FieldSpec) -> str:
    return spec.name.replace("_", " ")


def _compare_field(
    spec: FieldSpec,
    claimed: str | None,
    read: OcrField | None,
    have_ocr: bool,
    record: str | None,
    threshold: float,
    reasons: list[str],
) -> FieldResult | None:
    """One field's FieldResult, appending reasons for anything that is not a match."""
    label = _label(spec)
    ocr_value = None if read is None else _canonical(spec, read.value)
    if claimed is None and not have_ocr:
        return None  # nothing to compare this field with
    confidence = 1.0 if not have_ocr else (0.0 if read is None else read.confidence)

    def result(status: FieldStatus, reason: str | None = None) -> FieldResult:
        if reason is not None:
            reasons.append(reason)
        return FieldResult(
            name=spec.name,
            claimed=claimed,
            ocr=ocr_value,
            record=record,
            status=status,
            confidence=round(min(1.0, max(0.0, confidence)), 3),
            reason=reason,
            check=None if read is None else read.check,
            source=None if read is None else read.source,
        )

    if record is None:
        return result(FieldStatus.missing, f"The department record has no {label}.")
    if claimed is not None:
        verdict = agree(spec, claimed, record)
        if verdict is False:
            return result(
                FieldStatus.mismatch,
                f"The claimed {label} {claimed} differs from the record's {record}.",
            )
        if verdict is None:
            return result(
                FieldStatus.near_miss,
                f"The claimed {label} {claimed} nearly matches the record's {record}: check "
                "with the applicant or the certificate which is right (a typing slip and "
                "another value look alike).",
            )
    if not have_ocr:
        return result(FieldStatus.match)
    check = None if read is None else read.check
    if check is not None and check.status is not CheckStatus.unavailable:
        return _checked(spec, check, ocr_value, record, result)
    if read is None or ocr_value is None:
        return result(FieldStatus.unreadable, f"The {label} could not be read on the scan.")
    if not read.valid:
        # An invalid reading (bad check digit, impossible date) is a reading problem,
        # never proof of forgery: a reviewer looks at it.
        return result(
            FieldStatus.unreadable,
            f"The {label} read on the scan ({ocr_value}) fails its format check.",
        )
    verdict = agree(spec, ocr_value, record, read=True)
    confident = read.confidence >= threshold
    if verdict is True:
        if not confident:
            return result(
                FieldStatus.unreadable,
                f"The {label} was read with confidence {read.confidence:.2f}, "
                f"below the threshold {threshold:.2f}.",
            )
        return result(FieldStatus.match)
    if verdict is False and confident:
        return result(
            FieldStatus.mismatch,
            f"The {label} on the scan ({ocr_value}) differs from the record's {record}.",
        )
    if verdict is None and confident:
        # Read clearly, yet one slip from the record: an OCR slip and an altered
        # character look the same to the machine, so a person compares them.
        return result(
            FieldStatus.near_miss,
            f"The {label} on the scan ({ocr_value}), read with confidence "
            f"{read.confidence:.2f}, nearly matches the record's {record}: compare the "
            "scan with the record by eye (an OCR slip and an altered character look alike).",
        )
    return result(
        FieldStatus.unreadable,
        f"The {label} on the scan ({ocr_value}) does not clearly match the record's {record} "
        f"and was read with confidence {read.confidence:.2f}, below the threshold "
        f"{threshold:.2f}: read it on the scan.",
    )


def _checked(
    spec: FieldSpec,
    check: FieldCheck,
    ocr_value: str | None,
    record: str,
    result: Callable[[FieldStatus, str | None], FieldResult],
) -> FieldResult:
    """A field whose image was scored against the record (stampless.ocr.verify)."""
    label = _label(spec)
    if check.status is CheckStatus.supported:
        return result(FieldStatus.match, None)
    if check.status is CheckStatus.contradicted:
        return result(
            FieldStatus.mismatch,
            f"The {label} on the scan reads {check.best_other}, not the record's {record} "
            f"(the image favours it by {-(check.margin or 0.0):.1f} nats).",
        )
    shown = check.best_other or ocr_value
    return result(
        FieldStatus.unreadable,
        f"The {label} on the scan does not clearly show the record's {record}"
        + (f" (it may read {shown}): read it on the scan." if shown else ": read it on the scan."),
    )


def decide(
    doctype: DocumentType,
    claim: BaseModel | dict[str, Any],
    ocr: OcrResult | None,
    record: Record | None,
    *,
    thresholds: dict[str, float] | None = None,
    min_confidence: float = 0.8,
) -> Decision:
    """Compare claim, OCR and record field by field and apply the verdict rules.

    ``record`` None means the department has no such record (``not_found``); ``ocr``
    None means no scan was read (compare claim against record only). Reasons are short
    sentences for the evidence and the reviewer; they may show values (they go to the
    outbox and the evidence, not to logs).
    """
    thresholds = thresholds or {}
    values = _claim_dict(claim)
    fields: list[FieldResult] = []
    reasons: list[str] = []

    if record is None:
        key = values.get(doctype.key_field)
        reasons.append(
            f"The department system has no record with {_label(doctype.field(doctype.key_field))}"
            f" {key}."
        )
        return Decision(verdict=VerdictKind.not_found, fields=[], reasons=reasons)

    statuses: list[tuple[FieldSpec, FieldStatus]] = []
    for spec in doctype.fields:
        claimed = _canonical(spec, values.get(spec.name))
        read = None if ocr is None else ocr.fields.get(spec.name)
        recorded = _canonical(spec, record.fields.get(spec.name))
        threshold = thresholds.get(spec.name, spec.threshold or min_confidence)
        field_reasons: list[str] = []
        fr = _compare_field(
            spec, claimed, read, ocr is not None, recorded, threshold, field_reasons
        )
        if fr is None:
            continue
        # An optional field that could not be read says nothing against the document.
        if spec.required or fr.status is FieldStatus.mismatch:
            reasons += field_reasons
        fields.append(fr)
        statuses.append((spec, fr.status))

    if record.status != "valid":
        reasons.insert(0, f"The department record is {record.status}.")
        return Decision(verdict=VerdictKind.mismatch, fields=fields, reasons=reasons)
    if any(status is FieldStatus.mismatch for _, status in statuses):
        return Decision(verdict=VerdictKind.mismatch, fields=fields, reasons=reasons)
    doubtful = [
        spec
        for spec, status in statuses
        if spec.required
        and status in (FieldStatus.unreadable, FieldStatus.near_miss, FieldStatus.missing)
    ]
    if doubtful:
        return Decision(verdict=VerdictKind.needs_review, fields=fields, reasons=reasons)
    compared_required = [spec for spec, _ in statuses if spec.required]
    if ocr is None and doctype.key_field not in {s.name for s in compared_required}:
        reasons.append("Nothing in the claim could be compared with the record.")
        return Decision(verdict=VerdictKind.needs_review, fields=fields, reasons=reasons)
    if ocr is not None:
        missing = [s for s in doctype.fields if s.required and s.name not in ocr.fields]
        if missing:
            reasons.append("The scan reading lacks " + ", ".join(_label(s) for s in missing) + ".")
            return Decision(verdict=VerdictKind.needs_review, fields=fields, reasons=reasons)
    reasons.append("Every required field agrees with the department record.")
    return Decision(verdict=VerdictKind.verified, fields=fields, reasons=reasons)


def verify_and_decide(
    doctype: DocumentType,
    claim: BaseModel | dict[str, Any],
    ocr: OcrResult | None,
    record: Record | None,
    config: OcrConfig,
    *,
    thresholds: dict[str, float] | None = None,
) -> tuple[OcrResult | None, Decision]:
    """Verify the scan's fields against the record (when both are there), then
    :func:`decide`. The pipeline and ``stampless check`` decide through this one function.

    Returns the reading with each field's check filled in, and the decision.
    """
    if ocr is not None and record is not None and record.status == "valid":
        from stampless.ocr import verify_fields

        ocr = verify_fields(ocr, record, doctype, config)
    decision = decide(
        doctype,
        claim,
        ocr,
        record,
        thresholds=thresholds,
        min_confidence=config.calibration.min_confidence,
    )
    return ocr, decision
