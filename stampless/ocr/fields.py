"""Readings of one field, and how several of them become the field's value.

Both page readers (PP-OCR's, :mod:`stampless.ocr.reader`, and Tesseract's,
:mod:`stampless.ocr.tesseract_reader`) find a field's candidates with
:mod:`stampless.ocr.extract`, turn each into a :class:`Reading`, and decide with the
rules here: readings under two labels that agree strengthen each other, readings that
disagree send the field to a person, a value resting only on a label that may be another
person's is capped, and a resident ID is repaired from its printed birth date only to be
confirmed by a person.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stampless.doctype import FieldSpec
from stampless.models import OcrField
from stampless.normalize import id_from_birth_date
from stampless.ocr.extract import value_of

# Kinds read again with a Latin model and a whitelist (digits and capitals only).
LATIN_KINDS = {"resident_id", "credit_code", "cert_no", "integer"}
DATE_WHITELIST = "0123456789年月日-."
# Confidence of a valid value two readings agree on.
AGREEMENT_FLOOR = 0.85
# Confidence given up when two readings of a field disagree.
DISAGREEMENT_FACTOR = 0.5
# Highest confidence of a value repaired from another field: below every threshold, so a
# person confirms it.
REPAIR_CONFIDENCE = 0.5


@dataclass
class Reading:
    """One reading of a field: its value, whether that is valid, how sure, from where.

    ``spans`` are ``(line, start, end)``: the characters of the reader's text lines the
    value was read from (PP-OCR's reader keeps them to verify the field against the
    record later); ``source`` names the step and label that produced it.
    """

    value: str | None
    valid: bool
    confidence: float
    raw: str
    box: tuple[int, int, int, int] | None
    source: str = ""
    spans: list[tuple[int, int, int]] = field(default_factory=list)


def reread_mode(spec: FieldSpec) -> tuple[str | None, str]:
    """(whitelist, script) of a field's re-read; fields sharing a mode are read together."""
    latin = spec.kind in LATIN_KINDS or spec.kind_def.script == "digits"
    if latin and (spec.whitelist is None or spec.whitelist.isascii()):
        return spec.whitelist, "latin"
    if spec.kind in ("date", "month"):
        return spec.whitelist or DATE_WHITELIST, "cjk"
    return spec.whitelist, "cjk"


def field_value(spec: FieldSpec, text: str, stop: list[str]) -> tuple[str | None, bool]:
    """A field's normalized value in ``text`` and whether it is valid, without the tail of
    its own label that a crop or a layout line caught ("人" of 持证人)."""
    value, valid = value_of(spec, text, stop)
    if value is not None and spec.kind in ("name", "text"):
        stripped = strip_own_label(value, spec)
        if stripped != value:
            value, valid = value_of(spec, stripped, stop)
    return value, valid


def strip_own_label(value: str, spec: FieldSpec) -> str:
    """Drop the tail of the field's own label caught by a crop ("人" of 持证人)."""
    for label in spec.labels:
        for k in (2, 1):
            if len(label) > k and value.startswith(label[-k:]) and len(value) - k >= 2:
                return value[k:]
    return value


def trim_label_bits(value: str, reference: str, stop: list[str]) -> str:
    """``reference`` when ``value`` is it plus a bit of a neighbouring label.

    A crop can catch the first character of the next label ("成" of 成立日期) or the
    last of the field's own (人 of 法定代表人); the layout pass, which saw the labels
    whole, had already cut them off.
    """
    if value.startswith(reference):
        extra = value[len(reference) :]
        if 0 < len(extra) <= 2 and any(label.startswith(extra) for label in stop):
            return reference
    if value.endswith(reference):
        extra = value[: len(value) - len(reference)]
        if 0 < len(extra) <= 2 and any(label.endswith(extra) for label in stop):
            return reference
    return value


def merge_labels(a: Reading, b: Reading) -> Reading:
    """Readings of one field found under two labels (持证人 and the first 姓名)."""
    if b.value is None:
        return a
    if a.value is None:
        return b
    if a.value == b.value:
        conf = 1 - (1 - a.confidence) * (1 - b.confidence)
        # The first label's reading stands for both (its characters are verified).
        return Reading(a.value, a.valid and b.valid, conf, a.raw, a.box, a.source, a.spans)
    if a.valid != b.valid:
        return a if a.valid else b
    best = a if a.confidence >= b.confidence else b
    return Reading(
        best.value,
        best.valid,
        min(a.confidence, b.confidence) * DISAGREEMENT_FACTOR,
        best.raw,
        best.box,
        best.source,
        best.spans,
    )


def finish(readings: list[Reading]) -> OcrField:
    """The field from its readings (one per label that found it)."""
    if not readings:
        return OcrField(value=None, confidence=0.0, valid=False)
    best = readings[0]
    for other in readings[1:]:
        best = merge_labels(best, other)
    return OcrField(
        value=best.value,
        confidence=round(max(0.0, min(1.0, best.confidence)), 4),
        valid=best.valid,
        raw=best.raw[:200],
        box=best.box,
        source=best.source or None,
        spans=best.spans,
    )


def cap_ambiguous(
    name: str,
    field: OcrField,
    combined: dict[str, list[Reading]],
    ambiguous: set[tuple[str, int]],
) -> OcrField:
    """``field`` with at most :data:`REPAIR_CONFIDENCE` when its value rests only on
    labels that may be another person's (``Candidate.ambiguous``).

    With one of the two 姓名 unreadable, the one found may be the spouse's: read with
    confidence (and a second engine reading the same crop agrees), it would call a
    genuine certificate a forgery. A person decides instead.
    """
    readings = combined[name]
    if field.value is None or field.confidence <= REPAIR_CONFIDENCE:
        return field
    if not any((name, i) in ambiguous for i in range(len(readings))):
        return field
    if any(r.value == field.value for i, r in enumerate(readings) if (name, i) not in ambiguous):
        return field  # a label that is surely this field's reads the same
    return field.model_copy(update={"confidence": REPAIR_CONFIDENCE, "ambiguous": True})


def repair_from_birth(field: OcrField, readings: list[Reading], birth: OcrField) -> OcrField:
    """A resident ID none of whose readings passed its check, repaired from the birth date
    printed beside it when exactly one repair passes (``FieldSpec.birth_field``).

    The repaired value is reported with at most :data:`REPAIR_CONFIDENCE`: it rests on
    one field explaining another, and an ID whose date digits were altered on paper would
    be "repaired" too, so a person confirms it.
    """
    if not birth.valid:
        return field
    repaired = {
        fixed for r in readings if (fixed := id_from_birth_date(r.value, birth.value)) is not None
    }
    if len(repaired) != 1:
        return field
    return field.model_copy(
        update={
            "value": repaired.pop(),
            "valid": True,
            "confidence": min(REPAIR_CONFIDENCE, birth.confidence),
            "source": "repair:birth-date",
        }
    )
