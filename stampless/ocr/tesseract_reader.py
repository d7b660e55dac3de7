"""The Tesseract page reader: the whole engine when ``ocr.engine = "tesseract"``, or when
PP-OCR cannot load.

Tesseract reads the page once at 120 DPI to find the labels (enough for layout, and
several times faster than the full page); :mod:`.extract` finds each field's value after
its label; then each field's own region is read again at full resolution as a single
line, with a character whitelist for number fields. The two readings, the validation
result (check characters, calendar) and the engine's word confidences give the field's
confidence. Names and fields below their threshold get a second opinion from PP-OCR when
it is installed (``ocr.second_opinion``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loguru import logger
from PIL import Image, ImageFilter, ImageOps

from stampless.config import OcrConfig
from stampless.doctype import DocumentType, FieldSpec
from stampless.models import OcrField, OcrResult, OcrStep, OcrWord
from stampless.ocr.engine import OcrEngine, Word, words_confidence
from stampless.ocr.extract import (
    CHECKED_KINDS,
    extract_raw,
    group_lines,
    stop_labels,
    value_of,
)
from stampless.ocr.fields import (
    AGREEMENT_FLOOR,
    DISAGREEMENT_FACTOR,
    Reading,
    cap_ambiguous,
    field_value,
    finish,
    repair_from_birth,
    reread_mode,
    trim_label_bits,
)
from stampless.ocr.preprocess import detect_orientation
from stampless.ocr.preprocess import preprocess as run_preprocess

# The layout pass reads the page at this fraction of 300 DPI: at 120 DPI Tesseract found
# 227 of 228 labels on generated normal and hard scans, more than at 150 DPI, in less time.
LAYOUT_SCALE = 0.4


def _crop(
    image: Image.Image, region: tuple[int, int, int, int], *, wide: bool = False
) -> Image.Image:
    left, top, width, height = region
    # The wide crop is the retry for a field whose reading failed its check: the layout
    # pass at 120 DPI sometimes puts a value's first or last character into a neighbour.
    pad_y = round((0.45 if wide else 0.3) * height)
    pad_x = round((2.5 if wide else 0.8) * height)
    box = (
        max(0, left - pad_x),
        max(0, top - pad_y),
        min(image.width, left + width + pad_x),
        min(image.height, top + height + pad_y),
    )
    # Tesseract reads a line better with a white margin around it.
    return ImageOps.expand(image.crop(box).convert("L"), border=12, fill=255)


def _renderings(crop: Image.Image) -> list[Image.Image]:
    """Other renderings of a crop for a last read: binarized, enlarged, sharpened."""
    big = crop.resize((crop.width * 3 // 2, crop.height * 3 // 2), Image.Resampling.LANCZOS)
    return [_binarized(crop), big, crop.filter(ImageFilter.UnsharpMask(2, 150, 3))]


def _binarized(crop: Image.Image) -> Image.Image:
    from stampless.ocr.preprocess import binarize

    return binarize(crop)


def _combine(first: Reading, second: Reading | None) -> Reading:
    """One reading from the layout pass and the field's own re-read."""
    if second is None or second.value is None:
        return first if first.value is not None else (second or first)
    if first.value is None:
        return second
    if first.value == second.value:
        best = first if first.confidence >= second.confidence else second
        # Two readings at different resolutions agreeing on a valid value is strong
        # evidence even when Tesseract is unsure of single glyphs (its CJK model gives
        # correct rare characters low scores): agreement lifts it to AGREEMENT_FLOOR.
        conf = 1 - (1 - first.confidence) * (1 - second.confidence)
        if first.valid and second.valid and min(first.confidence, second.confidence) >= 0.25:
            conf = max(conf, AGREEMENT_FLOOR)
        return Reading(best.value, first.valid and second.valid, conf, best.raw, best.box)
    if first.valid != second.valid:
        good = first if first.valid else second
        return Reading(good.value, True, good.confidence * 0.85, good.raw, good.box or first.box)
    # Two valid readings that disagree leave the value in doubt: keep the more confident
    # one, with a confidence that sends the field to review.
    best = first if first.confidence > second.confidence else second
    return Reading(
        best.value,
        best.valid,
        min(first.confidence, second.confidence) * DISAGREEMENT_FACTOR,
        best.raw,
        best.box or first.box,
    )


_Batch = dict[tuple[str | None, str], list[tuple[str, int, Image.Image]]]
_Run = Callable[
    [tuple[str | None, str], list[tuple[str, int, Image.Image]]],
    list[tuple[str, int, str, float]],
]


def _unread_crops(
    doctype: DocumentType,
    firsts: dict[str, list[Reading]],
    combined: dict[str, list[Reading]],
    crops: Callable[[tuple[int, int, int, int]], list[Image.Image]],
    *,
    kinds: Collection[str] | None = None,
) -> _Batch:
    """The images ``crops`` makes of each reading's region, for the fields (of ``kinds``,
    or all) none of whose readings is valid yet, batched by re-read mode."""
    batch: _Batch = {}
    for spec in doctype.fields:
        if kinds is not None and spec.kind not in kinds:
            continue
        if any(r.valid for r in combined[spec.name]):
            continue
        for i, reading in enumerate(combined[spec.name]):
            region = firsts[spec.name][i].box or reading.box
            if region is not None:
                for image in crops(region):
                    batch.setdefault(reread_mode(spec), []).append((spec.name, i, image))
    return batch


def _read_renderings(
    run: _Run,
    page: Image.Image,
    doctype: DocumentType,
    firsts: dict[str, list[Reading]],
    combined: dict[str, list[Reading]],
    stop: list[str],
) -> None:
    """Codes with a check character still failing it, read in other renderings.

    On faint, seal-covered hard scans one rendering (binarized, enlarged, sharpened; each
    of the narrow and the wide crop) often reads what the others do not. The check
    decides: a value replaces the reading in ``combined`` only when every rendering that
    passes the check agrees on it.
    """
    batch = _unread_crops(
        doctype,
        firsts,
        combined,
        lambda region: [
            im for wide in (False, True) for im in _renderings(_crop(page, region, wide=wide))
        ],
        kinds=CHECKED_KINDS,
    )
    passing: dict[tuple[str, int], dict[str, float]] = {}
    for mode, items in batch.items():
        for name, i, text, conf in run(mode, items):
            value, valid = value_of(doctype.field(name), text, stop)
            if valid and value is not None:
                seen = passing.setdefault((name, i), {})
                seen[value] = max(seen.get(value, 0.0), conf)
    for (name, i), seen in passing.items():
        if len(seen) == 1:
            value, conf = seen.popitem()
            old = combined[name][i]
            # One engine, several renderings: the lowered confidence of a retry.
            combined[name][i] = Reading(value, True, conf * 0.85, old.raw, old.box)


def _layout_words(engine: OcrEngine, image: Image.Image, psm: int = 3) -> list[Word]:
    small = image.resize(
        (round(image.width * LAYOUT_SCALE), round(image.height * LAYOUT_SCALE)),
        Image.Resampling.BOX,
    )
    words = engine.read(small, psm=psm, cjk_only=True)
    k = 1 / LAYOUT_SCALE
    return [
        Word(
            text=w.text,
            confidence=w.confidence,
            box=(
                round(w.box[0] * k),
                round(w.box[1] * k),
                round(w.box[2] * k),
                round(w.box[3] * k),
            ),
            line=w.line,
        )
        for w in words
    ]


def _anchored(doctype: DocumentType, lines: list) -> int:

    return sum(
        1
        for spec in doctype.fields
        if any(c.source != "pattern" for c in extract_raw(lines, doctype, spec))
    )


def _second_opinion(
    engine: OcrEngine, image: Image.Image, spec: FieldSpec, field: OcrField, stop: list[str]
) -> OcrField:
    """Ask a second engine about a field read with low confidence."""
    if field.box is None:
        return field
    whitelist, script = reread_mode(spec)
    text, conf = engine.read_line(_crop(image, field.box), whitelist=whitelist, script=script)
    value, valid = field_value(spec, text, stop)
    if value is not None and field.value is not None and value != field.value:
        trimmed = trim_label_bits(value, field.value, stop)
        if trimmed != value:
            value, valid = value_of(spec, trimmed, stop)
    if value is None:
        return field
    if field.value is None and valid:
        return field.model_copy(
            update={
                "value": value,
                "valid": valid,
                "confidence": conf * 0.8,
                "source": f"{engine.name}:second-opinion",
            }
        )
    if value == field.value:
        # Two different engines agreeing is strong evidence.
        return field.model_copy(update={"confidence": max(field.confidence, min(0.95, conf))})
    if valid:
        # The engines disagree: report the second engine's reading (PP-OCR reads CJK
        # better than Tesseract's fast model) with a confidence that asks for review.
        return field.model_copy(
            update={
                "value": value,
                "raw": text[:200],
                "confidence": min(field.confidence, conf) * DISAGREEMENT_FACTOR,
                "source": f"{engine.name}:second-opinion",
            }
        )
    return field


def read_page(
    image: Image.Image,
    doctype: DocumentType,
    config: OcrConfig,
    engine: OcrEngine,
    second: OcrEngine | None,
    *,
    steps_dir: Path | None = None,
    workers: int | None = None,
    thresholds: dict[str, float] | None = None,
) -> OcrResult:
    """Every field of ``doctype`` read from ``image`` by Tesseract (``engine``), with
    ``second`` asked about names and fields below their threshold (see the module)."""

    started = time.perf_counter()
    pre = run_preprocess(image, config.preprocess, steps_dir=steps_dir)
    words = _layout_words(engine, pre.image)
    lines = group_lines(words)
    anchored = _anchored(doctype, lines)
    if anchored < len(doctype.fields):
        # Page segmentation sometimes drops a column of widely spaced labels as noise;
        # sparse-text segmentation keeps them. Only pages missing labels pay for it.
        sparse = _layout_words(engine, pre.image, psm=11)
        sparse_lines = group_lines(sparse)
        if (found := _anchored(doctype, sparse_lines)) > anchored:
            words, lines, anchored = sparse, sparse_lines, found
    if config.preprocess.orientation and anchored * 2 < len(doctype.fields):
        # Few labels found: the page may be sideways or upside down.
        rotate = detect_orientation(pre.image, engine)
        if rotate:
            logger.debug("page rotated by {} degrees; reading it upright", rotate)
            turned = image.rotate(-rotate, expand=True, fillcolor=(255, 255, 255))
            pre = run_preprocess(turned, config.preprocess, steps_dir=steps_dir)
            pre.steps.insert(0, "orientation")
            words = _layout_words(engine, pre.image)
            lines = group_lines(words)
    final = pre.image

    stop = stop_labels(doctype)
    # First readings from the layout pass, and the crops to read again at full size.
    firsts: dict[str, list[Reading]] = {}
    ambiguous: set[tuple[str, int]] = set()
    jobs: _Batch = {}
    for spec in doctype.fields:
        candidates = extract_raw(lines, doctype, spec)
        ambiguous |= {(spec.name, i) for i, c in enumerate(candidates) if c.ambiguous}
        firsts[spec.name] = []
        for i, cand in enumerate(candidates):
            value, valid = field_value(spec, cand.raw, stop)
            firsts[spec.name].append(
                Reading(
                    value,
                    valid,
                    words_confidence(cand.words),
                    cand.raw,
                    cand.box,
                    f"tesseract:{cand.source}",
                )
            )
            if cand.region is not None:
                jobs.setdefault(reread_mode(spec), []).append(
                    (spec.name, i, _crop(final, cand.region))
                )

    def run(
        mode: tuple[str | None, str], items: list[tuple[str, int, Image.Image]]
    ) -> list[tuple[str, int, str, float]]:
        texts = engine.read_lines([im for _, _, im in items], whitelist=mode[0], script=mode[1])
        return [(name, i, t, c) for (name, i, _), (t, c) in zip(items, texts, strict=True)]

    n = workers if workers is not None else min(2, os.cpu_count() or 1)
    if n > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=n) as pool:
            batches = list(pool.map(lambda kv: run(*kv), jobs.items()))
    else:
        batches = [run(mode, items) for mode, items in jobs.items()]
    rereads: dict[tuple[str, int], Reading] = {}
    for batch in batches:
        for name, i, text, conf in batch:
            spec = doctype.field(name)
            value, valid = field_value(spec, text, stop)
            reference = firsts[name][i].value
            if value is not None and reference is not None and value != reference:
                trimmed = trim_label_bits(value, reference, stop)
                if trimmed != value:
                    value, valid = value_of(spec, trimmed, stop)
            rereads[(name, i)] = Reading(value, valid, conf, text, firsts[name][i].box)

    combined = {
        spec.name: [
            _combine(first, rereads.get((spec.name, i)))
            for i, first in enumerate(firsts[spec.name])
        ]
        for spec in doctype.fields
    }
    # Two valid readings that disagree: a third reading of the binarized crop decides,
    # when it agrees with one of them (two of three).
    ties: _Batch = {}
    for spec in doctype.fields:
        for i, first in enumerate(firsts[spec.name]):
            again = rereads.get((spec.name, i))
            if (
                again is not None
                and first.valid
                and again.valid
                and first.value != again.value
                and first.box is not None
            ):
                ties.setdefault(reread_mode(spec), []).append(
                    (spec.name, i, _binarized(_crop(final, first.box)))
                )
    for mode, items in ties.items():
        for name, i, text, conf in run(mode, items):
            spec = doctype.field(name)
            value, valid = field_value(spec, text, stop)
            first, again = firsts[name][i], rereads[(name, i)]
            for agreeing in (first, again):
                if valid and value == agreeing.value:
                    # Two of three agree on the value, but the readings are not
                    # independent (one engine): no confidence is added.
                    combined[name][i] = Reading(
                        value,
                        True,
                        min(agreeing.confidence, conf),
                        agreeing.raw,
                        agreeing.box or first.box,
                    )
                    break
    # A second, wider read for values that failed their check (rare on good scans).
    retry = _unread_crops(
        doctype, firsts, combined, lambda region: [_crop(final, region, wide=True)]
    )
    for mode, items in retry.items():
        for name, i, text, conf in run(mode, items):
            value, valid = value_of(doctype.field(name), text, stop)
            if valid:
                old = combined[name][i]
                # Found only by the retry: one reading, so a lowered confidence.
                combined[name][i] = Reading(value, True, conf * 0.85, text, old.box)

    _read_renderings(run, final, doctype, firsts, combined, stop)

    fields = {spec.name: finish(combined[spec.name]) for spec in doctype.fields}
    for spec in doctype.fields:
        if spec.birth_field is not None and not fields[spec.name].valid:
            readings = [*firsts[spec.name], *combined[spec.name]]
            readings += [r for (name, _), r in rereads.items() if name == spec.name]
            fields[spec.name] = repair_from_birth(
                fields[spec.name], readings, fields[spec.birth_field]
            )
    for spec in doctype.fields:
        threshold = config.calibration.threshold(spec, thresholds)
        # Names are always asked: Tesseract's fast chi_sim model misreads some name
        # characters with confidence (霞 as 起, 倩 as 傅), which PP-OCR reads right.
        if second is not None and (fields[spec.name].confidence < threshold or spec.kind == "name"):
            fields[spec.name] = _second_opinion(second, final, spec, fields[spec.name], stop)
        fields[spec.name] = cap_ambiguous(spec.name, fields[spec.name], combined, ambiguous)
    if steps_dir is not None:
        steps_dir.mkdir(parents=True, exist_ok=True)
        final.save(steps_dir / "ocr-input.png", compress_level=1)
    return OcrResult(
        type=doctype.name,
        fields={spec.name: fields[spec.name] for spec in doctype.fields},
        words=[OcrWord(text=w.text, confidence=w.confidence, box=w.box) for w in words],
        text="\n".join(line.text for line in lines),
        image_size=final.size,
        seconds=round(time.perf_counter() - started, 3),
        engine=engine.name if second is None else f"{engine.name}+{second.name}",
        steps=[OcrStep(name=step, seconds=0.0) for step in pre.steps],
    )
