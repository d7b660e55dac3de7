"""The PP-OCR page reader: a recipe of named passes over one typed reading.

A :class:`Page` flows through the passes in order; each takes the page and returns it
with what it found, and records itself in ``page.steps`` (name, seconds, what it
decided), which ocr.json keeps:

1. :func:`prepare`   grey page: seal ink dropped by colour, uneven light divided out,
                     very large pages brought down (nothing assumes a page size)
2. :func:`detect`    PP-OCR's detector finds text lines anywhere, at a scale set by the
                     measured text height; sideways pages are turned
3. :func:`recognize` PP-OCR's recognizer reads every line and keeps its probabilities;
                     an upside-down page is turned
4. :func:`layout`    the lines' characters become words in a deskewed frame, grouped
                     into rows (:func:`stampless.ocr.extract.group_lines`)
5. :func:`locate`    each field found by its label anywhere on the page, its value to
                     the right of the label, after it in the same line, or below it
                     (:mod:`stampless.ocr.extract`)
6. :func:`decode`    a formatted value read as invalid (an ID failing its check
                     character, a date with a 22nd month) is decoded again from the
                     recognizer's probabilities, the kind's check as a constraint
7. :func:`second_reader`  Tesseract re-reads digit and code fields PP-OCR is unsure of

Verifying each field against the record is the eighth pass, run once the robot has the
record (:mod:`stampless.ocr.verify`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from stampless.config import CalibrationConfig, OcrConfig
from stampless.doctype import DocumentType, FieldSpec
from stampless.models import OcrField, OcrLine, OcrResult, OcrStep, OcrWord
from stampless.ocr.ctc import TopK, beam_search, span_window
from stampless.ocr.engine import OcrEngine, Word, words_confidence
from stampless.ocr.extract import Line, extract_raw, group_lines, stop_labels
from stampless.ocr.fields import (
    DISAGREEMENT_FACTOR,
    Reading,
    cap_ambiguous,
    field_value,
    finish,
    repair_from_birth,
    reread_mode,
)
from stampless.ocr.ppocr import REC_HEIGHT, REC_STRIDE, PpOcr, TextLine, crop_quad
from stampless.ocr.preprocess import correct_illumination, remove_seal, save_step
from stampless.ocr.verify import PER_STEP, Views

# Pages are read at most this long on their long side: text is then still taller than
# the recognizer's 48 px input on any certificate, and a 600-DPI A4 scan costs no more.
MAX_SIDE = 3200
# The detector first sees the page at this long side...
DET_SIDE = 960
# ...and again larger when the text found is shorter than this many pixels there.
MIN_DET_TEXT = 14.0
TARGET_DET_TEXT = 22.0
MAX_DET_SIDE = 2400
# A page whose lines read below this mean confidence is tried upside down.
UPSIDE_DOWN_CONFIDENCE = 0.6
# Two more looks at a value in doubt, cropped apart from its line: tight, and taller by
# this share of the line's height above and below.
VIEW_PADS = (0.0, 0.15)
# Kinds the second reader (Tesseract, with a whitelist) is asked about, besides any kind
# of digits a task registers (kinds.fixed_digits).
SECOND_READER_KINDS = {"resident_id", "credit_code", "cert_no", "date", "month", "integer"}


@dataclass(frozen=True)
class PpWord(Word):
    """A word of the layout, knowing the characters of which text line it came from."""

    src: tuple[int, int, int] = (0, 0, 0)  # (line, start, end) in page.lines[line].text


@dataclass
class Page:
    """The reading of one page as it flows through the passes."""

    image: Image.Image  # the scan as opened (RGB)
    gray: np.ndarray | None = None  # what is read: seal dropped, light evened
    scale: float = 1.0  # gray pixels per scan pixel
    quads: list[np.ndarray] = field(default_factory=list)
    lines: list[TextLine] = field(default_factory=list)
    skew: float = 0.0  # degrees the layout frame is turned by
    rows: list[Line] = field(default_factory=list)
    fields: dict[str, OcrField] = field(default_factory=dict)
    crops: list[np.ndarray] = field(default_factory=list)  # straightened line images
    # Images of the reading held for the caller (defer_steps): (file name, image).
    kept: list[tuple[str, Image.Image]] = field(default_factory=list)
    steps: list[OcrStep] = field(default_factory=list)
    note: str = ""  # what the running pass decided, for its step record


@dataclass
class Context:
    """What every pass may use: the document type, settings and engines."""

    doctype: DocumentType
    config: OcrConfig
    calibration: CalibrationConfig
    thresholds: dict[str, float]
    engine: PpOcr
    second: OcrEngine | None
    steps_dir: Path | None = None
    defer_steps: bool = False

    def threshold(self, spec: FieldSpec) -> float:
        return self.calibration.threshold(spec, self.thresholds)


Pass = Callable[[Page, Context], Page]


def _timed(name: str) -> Callable[[Pass], Pass]:
    """Record the pass in ``page.steps`` with its time and the note it returns."""

    def wrap(step: Pass) -> Pass:
        def run(page: Page, ctx: Context) -> Page:
            started = time.perf_counter()
            page.note = ""
            page = step(page, ctx)
            seconds = round(time.perf_counter() - started, 4)
            page.steps.append(OcrStep(name=name, seconds=seconds, note=page.note))
            return page

        run.__name__ = step.__name__
        run.__doc__ = step.__doc__
        return run

    return wrap


# --- 1. prepare --------------------------------------------------------------------------


@_timed("prepare")
def prepare(page: Page, ctx: Context) -> Page:
    """The grey page PP-OCR reads: seal dropped, light evened, at most MAX_SIDE long."""
    image = page.image
    page.scale = min(1.0, MAX_SIDE / max(image.size))
    if page.scale < 1.0:
        size = (round(image.width * page.scale), round(image.height * page.scale))
        image = image.resize(size, Image.Resampling.BOX)
    pre = ctx.config.preprocess
    # Each step's image is kept for the reviewer (preprocessed/ in the evidence bundle).
    gray = remove_seal(image) if pre.remove_seal else image.convert("L")
    _keep(page, ctx, 1, "seal-removed" if pre.remove_seal else "grey", gray)
    if pre.illumination:
        gray = correct_illumination(gray)
        _keep(page, ctx, 2, "illumination", gray)
    evened = np.asarray(gray)
    page.gray, darkest = _stretch(evened)
    if page.gray is not evened:
        _keep(page, ctx, 3, "contrast", Image.fromarray(page.gray))
    page.note = f"{gray.width}x{gray.height} px, darkest ink {darkest}"
    return page


def _keep(page: Page, ctx: Context, number: int, name: str, image: Image.Image) -> None:
    """One preprocessing step's image for the evidence: saved now, or held on the page
    (``defer_steps``) for the caller, who saves it only when the verdict needs it."""
    if ctx.steps_dir is None or not ctx.config.preprocess.save_steps:
        return
    if ctx.defer_steps:
        page.kept.append((f"{number:02d}-{name}.png", image))
    else:
        save_step(ctx.steps_dir, number, name, image)


def _stretch(gray: np.ndarray) -> tuple[np.ndarray, int]:
    """Faint print made dark: the darkest ink (its 0.3rd percentile) becomes black.

    A pale photocopy or a low-contrast scan prints labels so light that the detector
    misses them; paper stays white (the light was already divided out).
    """
    darkest = int(np.percentile(gray[::4, ::4], 0.3))
    if darkest < 24:
        return gray, darkest
    scale = 255.0 / max(1, 255 - darkest)
    table = np.clip((np.arange(256) - darkest) * scale, 0, 255).astype(np.uint8)
    return table[gray], darkest


# --- 2. detect ---------------------------------------------------------------------------


def _detect_at(engine: PpOcr, gray: np.ndarray, side: int) -> list[np.ndarray]:
    h, w = gray.shape
    factor = min(2.0, side / max(h, w))
    if abs(factor - 1.0) > 0.01:
        small = np.asarray(
            Image.fromarray(gray).resize(
                (max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR
            )
        )
    else:
        small, factor = gray, 1.0
    quads = engine.detect(np.stack([small] * 3, axis=-1))
    return [q / factor for q in quads]


def _heights(quads: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(q[3] - q[0])) for q in quads]


@_timed("detect")
def detect(page: Page, ctx: Context) -> Page:
    """Text lines anywhere on the page; the scale follows the measured text height."""
    assert page.gray is not None
    gray = page.gray
    side = min(DET_SIDE, max(gray.shape))
    quads = _detect_at(ctx.engine, gray, side)
    heights = _heights(quads)
    if heights:
        factor = side / max(gray.shape)
        text = float(np.median(heights)) * factor
        if text < MIN_DET_TEXT:
            # Small text for the page's size (a dense form): look again, larger.
            larger = min(MAX_DET_SIDE, round(side * TARGET_DET_TEXT / max(text, 1.0)))
            if larger > side * 1.15:
                side = larger
                quads = _detect_at(ctx.engine, gray, side)
    if ctx.config.preprocess.orientation and _sideways(quads):
        page.gray = np.ascontiguousarray(np.rot90(gray, k=-1))
        page.image = page.image.rotate(-90, expand=True)
        quads = _detect_at(ctx.engine, page.gray, side)
        page.note = "page turned 90 degrees; "
    page.quads = [q for q in quads if float(np.linalg.norm(q[3] - q[0])) >= 6]
    page.note += f"{len(page.quads)} lines at {side} px"
    return page


def _sideways(quads: list[np.ndarray]) -> bool:
    """Most lines taller than wide: the page lies on its side."""
    if len(quads) < 4:
        return False
    tall = sum(
        float(np.linalg.norm(q[3] - q[0])) > 1.5 * float(np.linalg.norm(q[1] - q[0])) for q in quads
    )
    return tall > 0.6 * len(quads)


# --- 3. recognize ------------------------------------------------------------------------


def _read_lines(
    engine: PpOcr, gray: np.ndarray, quads: list[np.ndarray]
) -> tuple[list[TextLine], list[np.ndarray]]:
    crops = [crop_quad(gray, q) for q in quads]
    readings = engine.recognize(crops)
    lines = []
    for quad, crop, reading in zip(quads, crops, readings, strict=True):
        rec_width = max(REC_STRIDE, math.ceil(REC_HEIGHT * crop.shape[1] / max(1, crop.shape[0])))
        # Where along the line each character peaks, as a share of its length.
        shares = [min(1.0, (t + 0.5) * REC_STRIDE / rec_width) for t in reading.char_steps]
        start, end = (quad[0] + quad[3]) / 2, (quad[1] + quad[2]) / 2
        lines.append(
            TextLine(
                text=reading.text,
                quad=tuple((float(x), float(y)) for x, y in quad),
                confidence=reading.confidence,
                char_conf=reading.char_conf,
                char_x=[float(start[0] + s * (end[0] - start[0])) for s in shares],
                char_share=shares,
                matrix=reading.matrix,
            )
        )
    return lines, crops


@_timed("recognize")
def recognize(page: Page, ctx: Context) -> Page:
    """Every line read, with the recognizer's probabilities kept for verification."""
    assert page.gray is not None
    page.lines, page.crops = _read_lines(ctx.engine, page.gray, page.quads)
    confidence = float(np.mean([ln.confidence for ln in page.lines])) if page.lines else 0.0
    if ctx.config.preprocess.orientation and page.lines and confidence < UPSIDE_DOWN_CONFIDENCE:
        turned = np.ascontiguousarray(np.rot90(page.gray, k=2))
        quads = _detect_at(ctx.engine, turned, min(DET_SIDE, max(turned.shape)))
        lines, crops = _read_lines(ctx.engine, turned, quads)
        other = float(np.mean([ln.confidence for ln in lines])) if lines else 0.0
        if other > confidence:
            page.gray, page.quads, page.lines, page.crops = turned, quads, lines, crops
            page.image = page.image.rotate(180)
            confidence = other
            page.note = "page turned 180 degrees; "
    page.note += f"{len(page.lines)} lines, mean confidence {confidence:.2f}"
    return page


# --- 4. layout ---------------------------------------------------------------------------


def _skew(lines: list[TextLine]) -> float:
    """The page's skew in degrees: the width-weighted median angle of the lines."""
    angles, weights = [], []
    for line in lines:
        (x0, y0), (x1, y1) = line.quad[0], line.quad[1]
        if x1 - x0 > 2 * line.height:
            angles.append(math.degrees(math.atan2(y1 - y0, x1 - x0)))
            weights.append(x1 - x0)
    if not angles:
        return 0.0
    order = np.argsort(angles)
    cum = np.cumsum(np.asarray(weights)[order])
    return float(np.asarray(angles)[order][np.searchsorted(cum, cum[-1] / 2)])


def _is_wide(ch: str) -> bool:
    return not ch.isascii()


def _tokens(text: str) -> list[tuple[int, int]]:
    """Character ranges of the words of a line: each CJK character alone, Latin and digit
    runs whole, spaces dropped."""
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        j = i + 1
        if not _is_wide(ch):
            while j < len(text) and not text[j].isspace() and not _is_wide(text[j]):
                j += 1
        out.append((i, j))
        i = j
    return out


@_timed("layout")
def layout(page: Page, ctx: Context) -> Page:
    """Characters become words in a frame turned by the page's skew, grouped into rows."""
    page.skew = _skew(page.lines)
    cos, sin = math.cos(math.radians(page.skew)), math.sin(math.radians(page.skew))

    def turn(x: float, y: float) -> tuple[float, float]:
        return x * cos + y * sin, -x * sin + y * cos

    words: list[Word] = []
    for index, line in enumerate(page.lines):
        if not line.text.strip() or len(line.char_x) != len(line.text):
            continue
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = line.quad[:4]
        height = line.height
        left, _ = turn((x0 + x3) / 2, (y0 + y3) / 2)
        right, _ = turn((x1 + x2) / 2, (y1 + y2) / 2)
        centers = [turn(x, _line_y(line, x)) for x in line.char_x]
        for start, end in _tokens(line.text):
            cx0, cy0 = centers[start]
            cx1, _ = centers[end - 1]
            half = 0.45 * height if _is_wide(line.text[start]) else 0.3 * height
            lo = left if start == 0 else max(left, cx0 - half)
            hi = right if end == len(line.text) else min(right, cx1 + half)
            if start > 0:
                lo = max(lo, (centers[start - 1][0] + cx0) / 2)
            if end < len(line.text):
                hi = min(hi, (cx1 + centers[end][0]) / 2)
            conf = min(line.char_conf[start:end]) if line.char_conf else line.confidence
            words.append(
                PpWord(
                    text=line.text[start:end],
                    confidence=conf,
                    box=(round(lo), round(cy0 - height / 2), max(1, round(hi - lo)), round(height)),
                    line=(0, 0, index),
                    src=(index, start, end),
                )
            )
    page.rows = group_lines(words, by_line=True)
    page.note = f"skew {page.skew:.1f} degrees, {len(page.rows)} rows"
    return page


def _line_y(line: TextLine, x: float) -> float:
    """The y of a line's middle at ``x``, in page coordinates."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = line.quad[:4]
    ax, ay = (x0 + x3) / 2, (y0 + y3) / 2
    bx, by = (x1 + x2) / 2, (y1 + y2) / 2
    if abs(bx - ax) < 1e-6:
        return (ay + by) / 2
    return ay + (by - ay) * (x - ax) / (bx - ax)


# --- 5. locate ---------------------------------------------------------------------------


def _spans(words: list[Word]) -> list[tuple[int, int, int]]:
    """The (line, start, end) character ranges the words came from, one per line."""
    ranges: dict[int, tuple[int, int]] = {}
    for word in words:
        if isinstance(word, PpWord):
            line, start, end = word.src
            lo, hi = ranges.get(line, (start, end))
            ranges[line] = (min(lo, start), max(hi, end))
    return [(line, lo, hi) for line, (lo, hi) in sorted(ranges.items())]


def _own_spans(
    page: Page,
    spec: FieldSpec,
    value: str | None,
    spans: list[tuple[int, int, int]],
    stop: list[str],
) -> list[tuple[int, int, int]]:
    """``spans`` without the lines that hold none of ``value``: a value whose words come
    from several detected lines, one of which holds it whole, is that line's alone (the
    rest of a label line beside its date, "期:" of "登记日期期:" read with a character
    too many). The verification scores the record's value on the spans, and would split
    it over both."""
    if len(spans) < 2 or value is None:
        return spans
    for index, start, end in spans:
        alone, valid = field_value(spec, page.lines[index].text[start:end], stop)
        if valid and alone == value:
            return [(index, start, end)]
    return spans


def _page_box(page: Page, spans: list[tuple[int, int, int]]) -> tuple[int, int, int, int] | None:
    """An axis-aligned box, in the read image, around the characters of ``spans``."""
    xs: list[float] = []
    ys: list[float] = []
    for index, start, end in spans:
        line = page.lines[index]
        half = 0.5 * line.height
        for x in line.char_x[start:end]:
            y = _line_y(line, x)
            xs += [x - half, x + half]
            ys += [y - half, y + half]
    if not xs:
        return None
    left, top = math.floor(min(xs)), math.floor(min(ys))
    return left, top, math.ceil(max(xs)) - left, math.ceil(max(ys)) - top


@_timed("locate")
def locate(page: Page, ctx: Context) -> Page:
    """Each field by its label anywhere on the page, and its value near the label."""
    doctype = ctx.doctype
    stop = stop_labels(doctype)
    combined: dict[str, list[Reading]] = {}
    ambiguous: set[tuple[str, int]] = set()
    for spec in doctype.fields:
        readings = []
        for i, cand in enumerate(extract_raw(page.rows, doctype, spec)):
            if cand.ambiguous:
                ambiguous.add((spec.name, i))
            value, valid = field_value(spec, cand.raw, stop)
            spans = _own_spans(page, spec, value, _spans(cand.words), stop)
            readings.append(
                Reading(
                    value,
                    valid,
                    words_confidence(cand.words),
                    cand.raw,
                    _page_box(page, spans),
                    f"ppocr:{cand.source}",
                    spans,
                )
            )
        combined[spec.name] = readings
    fields = {spec.name: finish(combined[spec.name]) for spec in doctype.fields}
    for spec in doctype.fields:
        if spec.birth_field is not None and not fields[spec.name].valid:
            fields[spec.name] = repair_from_birth(
                fields[spec.name], combined[spec.name], fields[spec.birth_field]
            )
        fields[spec.name] = cap_ambiguous(spec.name, fields[spec.name], combined, ambiguous)
    page.fields = fields
    found = sum(f.value is not None for f in fields.values())
    page.note = f"{found} of {len(fields)} fields found"
    return page


# --- 6. decode within the kind ------------------------------------------------------------

# A value of a formatted kind read as invalid (an ID or code failing its check character,
# a date with a 22nd month) is decoded again: the likeliest strings of its window (this
# many), best first; the first that is a valid value is taken when it is at most
# DECODE_LOSS nats less likely than the reading and no other valid value comes within
# DECODE_GAP nats of it (a check character lets one random string in 11 or 31 pass, so a
# close second is a coin toss, not a reading).
DECODE_BEAM = 16
DECODE_LOSS = 8.0
DECODE_GAP = 2.0


@_timed("decode")
def decode(page: Page, ctx: Context) -> Page:
    """Fields of formatted kinds (IDs, codes, dates, numbers: a kind with a whitelist)
    read as invalid, decoded again from the recognizer's probabilities with the kind's
    check as a constraint."""
    stop = stop_labels(ctx.doctype)
    decoded = []
    for spec in ctx.doctype.fields:
        f = page.fields[spec.name]
        if f.valid or spec.kind_def.whitelist is None or len(f.spans) != 1:
            continue
        found = _decode_valid(page, ctx.engine, spec, f.spans[0], stop)
        if found is not None:
            value, posterior = found
            page.fields[spec.name] = f.model_copy(
                update={
                    "value": value,
                    "valid": True,
                    "confidence": round(min(f.confidence, posterior), 4),
                    "source": f"{f.source}:decoded" if f.source else "ppocr:decoded",
                }
            )
            decoded.append(spec.name)
    page.note = ", ".join(decoded) or "none"
    return page


def _decode_valid(
    page: Page, engine: PpOcr, spec: FieldSpec, span: tuple[int, int, int], stop: list[str]
) -> tuple[str, float] | None:
    """(value, its share of the window's likeliest strings) of the one likely string of
    line ``span`` that is a valid value of ``spec``, or None."""
    index, start, end = span
    matrix = page.lines[index].matrix
    if matrix is None:
        return None
    window = span_window(matrix, page.lines[index].text, start, end)
    if window is None:
        return None
    beams = beam_search(matrix.part(*window), beam=DECODE_BEAM, per_step=PER_STEP)
    if not beams:
        return None
    passing: dict[str, float] = {}
    for labels, score in beams:
        value, valid = field_value(spec, engine.decode(labels), stop)
        if valid and value is not None and value not in passing:
            passing[value] = score
    ranked = sorted(passing.items(), key=lambda kv: -kv[1])
    if not ranked or beams[0][1] - ranked[0][1] > DECODE_LOSS:
        return None
    if len(ranked) > 1 and ranked[0][1] - ranked[1][1] < DECODE_GAP:
        return None
    total = float(np.logaddexp.reduce([score for _, score in beams]))
    return ranked[0][0], math.exp(ranked[0][1] - total)


# --- 7. second reader --------------------------------------------------------------------


def _value_crop(
    page: Page, spans: list[tuple[int, int, int]], *, pad: float = 0.0, border: float | None = None
) -> Image.Image | None:
    """The straightened image of a one-line value, with a white margin (:func:`_framed`);
    ``pad``: the line cropped that share of its height taller on each side first."""
    if len(spans) != 1:
        return None
    index, start, end = spans[0]
    line = page.lines[index]
    if len(line.char_share) < end:
        return None
    crop = page.crops[index]
    if pad:
        assert page.gray is not None
        crop = crop_quad(page.gray, np.asarray(line.quad, dtype=np.float32), pad=pad)
    # Where the line's own crop starts within this one, and how long the line is there.
    inset = (crop.shape[1] - page.crops[index].shape[1]) / 2
    length = page.crops[index].shape[1]
    half = 0.6 * page.crops[index].shape[0]
    lo = max(0, round(inset + line.char_share[start] * length - half))
    hi = min(crop.shape[1], round(inset + line.char_share[end - 1] * length + half))
    if hi - lo < 4:
        return None
    return Image.fromarray(_framed(crop[:, lo:hi], border))


# The white margin around a value the second reader (Tesseract) reads, in pixels...
SECOND_READER_BORDER = 12
# ...and around one PP-OCR's recognizer looks at again, as a share of the crop's height.
# That recognizer scales every crop to one height, so a margin of fixed pixels shrinks the
# text of a low-resolution page: at 12 pixels, a 137-dpi card's 22-pixel line came out at
# a third of the height it was read at in the line, and the look dropped characters.
VIEW_BORDER = 0.1


def _framed(crop: np.ndarray, border: float | None = None) -> np.ndarray:
    """A value's crop inside a white margin: ``border`` times its height (at least 2
    pixels), or :data:`SECOND_READER_BORDER` pixels when None."""
    size = SECOND_READER_BORDER if border is None else max(2, round(border * crop.shape[0]))
    framed = np.full((crop.shape[0] + 2 * size, crop.shape[1] + 2 * size), 255, dtype=np.uint8)
    framed[size:-size, size:-size] = crop
    return framed


# A value at the end of its detected line may have lost characters the detector missed
# (faint ink, a seal over them): the wider look reaches this many line heights past the
# line's end, never closer than WIDEN_GAP heights to the next text on the row.
WIDEN_REACH = 4.0
WIDEN_GAP = 0.3


def _room(page: Page, index: int, side: int) -> float:
    """Free space, in pixels along the line, from line ``index``'s end on ``side`` (+1
    right, -1 left) to the nearest other line on the same row, capped at the reach."""
    line = page.lines[index]
    height = max(1.0, line.height)
    left, top, width, tall = line.box
    room = WIDEN_REACH * height
    for k, other in enumerate(page.lines):
        if k == index:
            continue
        o_left, o_top, o_width, o_tall = other.box
        overlap = min(top + tall, o_top + o_tall) - max(top, o_top)
        if overlap < 0.4 * min(tall, o_tall):
            continue
        gap = o_left - (left + width) if side > 0 else left - (o_left + o_width)
        if gap >= -0.5 * height:
            room = min(room, gap - WIDEN_GAP * height)
    return max(0.0, room)


def _widened_crop(page: Page, index: int, start: int, end: int, pad: float) -> np.ndarray | None:
    """Characters ``start``..``end`` of line ``index`` cropped with the free space past
    whichever end of the line they reach, or None when they reach neither end or no end
    has room for half a character."""
    assert page.gray is not None
    line = page.lines[index]
    if len(line.char_share) < end or start >= end:
        return None
    height = max(1.0, line.height)
    right = _room(page, index, +1) if end == len(line.text) else 0.0
    left = _room(page, index, -1) if start == 0 else 0.0
    if max(left, right) < 0.5 * height:
        return None
    quad = np.asarray(line.quad, dtype=np.float32)
    length = max(1.0, float(np.linalg.norm(quad[1] - quad[0])))
    lo = line.char_share[start] - (0.6 * height + left) / length
    hi = line.char_share[end - 1] + (0.6 * height + right) / length
    top, bottom = quad[1] - quad[0], quad[2] - quad[3]
    box = np.array(
        [quad[0] + lo * top, quad[0] + hi * top, quad[3] + hi * bottom, quad[3] + lo * bottom],
        dtype=np.float32,
    )
    return _framed(crop_quad(page.gray, box, pad=pad), VIEW_BORDER)


def _views(page: Page, engine: PpOcr) -> Views:
    """``OcrResult.views``: the characters ``start``..``end`` of line ``index`` cropped
    apart (:data:`VIEW_PADS`) and recognized again; ``widen``: cropped with the free
    space past the line's end (:func:`_widened_crop`), an empty list when there is none."""

    def views(index: int, start: int, end: int, *, widen: bool = False) -> list[TopK]:
        if widen:
            shown = [_widened_crop(page, index, start, end, pad) for pad in VIEW_PADS]
        else:
            crops = [
                _value_crop(page, [(index, start, end)], pad=pad, border=VIEW_BORDER)
                for pad in VIEW_PADS
            ]
            shown = [np.asarray(c) if c is not None else None for c in crops]
        kept = [c for c in shown if c is not None]
        return [r.matrix for r in engine.recognize(kept)] if kept else []

    return views


@_timed("second_reader")
def second_reader(page: Page, ctx: Context) -> Page:
    """Tesseract re-reads digit and code fields PP-OCR read as invalid or unsure."""
    if ctx.second is None:
        page.note = "off"
        return page
    stop = stop_labels(ctx.doctype)
    asked: dict[tuple[str | None, str], list[tuple[str, Image.Image]]] = {}
    for spec in ctx.doctype.fields:
        f = page.fields[spec.name]
        asked_about = spec.kind in SECOND_READER_KINDS or spec.kind_def.script == "digits"
        if not asked_about or not f.spans:
            continue
        if f.valid and f.confidence >= ctx.threshold(spec):
            continue
        crop = _value_crop(page, f.spans)
        if crop is not None:
            asked.setdefault(reread_mode(spec), []).append((spec.name, crop))
    count = 0
    for (whitelist, script), items in asked.items():
        texts = ctx.second.read_lines([im for _, im in items], whitelist=whitelist, script=script)
        for (name, _), (text, conf) in zip(items, texts, strict=True):
            count += 1
            spec = ctx.doctype.field(name)
            page.fields[name] = _second_reading(page.fields[name], spec, text, conf, stop)
    page.note = f"{count} fields re-read"
    return page


def _second_reading(
    field: OcrField, spec: FieldSpec, text: str, conf: float, stop: list[str]
) -> OcrField:
    value, valid = field_value(spec, text, stop)
    if value is None:
        return field
    if valid:
        field = field.model_copy(update={"second_value": value})
    if value == field.value:
        # Two engines agreeing on one value.
        return field.model_copy(
            update={"confidence": max(field.confidence, 1 - (1 - field.confidence) * (1 - conf))}
        )
    if valid and not field.valid:
        return field.model_copy(
            update={
                "value": value,
                "valid": True,
                "confidence": conf * 0.85,
                "raw": text[:200],
                "source": "tesseract:second-reader",
            }
        )
    if valid:
        # Two valid readings that differ: keep PP-OCR's, with a confidence for review.
        return field.model_copy(
            update={"confidence": min(field.confidence, conf) * DISAGREEMENT_FACTOR}
        )
    return field


# --- the recipe --------------------------------------------------------------------------

PASSES: tuple[Pass, ...] = (
    prepare,
    detect,
    recognize,
    layout,
    locate,
    decode,
    second_reader,
)


def read_page(
    image: Image.Image,
    doctype: DocumentType,
    config: OcrConfig,
    engine: OcrEngine,
    second: OcrEngine | None,
    *,
    steps_dir: Path | None = None,
    thresholds: dict[str, float] | None = None,
    defer_steps: bool = False,
) -> OcrResult:
    """Every field of ``doctype`` read from ``image`` by PP-OCR (see the module).

    ``defer_steps``: the preprocessing steps and the image OCR read are not saved into
    ``steps_dir`` but left on :attr:`OcrResult.pending_steps`.
    """
    if not isinstance(engine, PpOcr):
        raise TypeError("the PP-OCR reader needs the PP-OCR engine")
    started = time.perf_counter()
    ctx = Context(
        doctype=doctype,
        config=config,
        calibration=config.calibration,
        thresholds=thresholds or {},
        engine=engine,
        second=second,
        steps_dir=steps_dir,
        defer_steps=defer_steps,
    )
    page = Page(image=image.convert("RGB"))
    for step in PASSES:
        page = step(page, ctx)
    assert page.gray is not None
    if steps_dir is not None and defer_steps:
        page.kept.append(("ocr-input.png", Image.fromarray(page.gray)))
    elif steps_dir is not None:
        steps_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(page.gray).save(steps_dir / "ocr-input.png", compress_level=1)
    result = OcrResult(
        type=doctype.name,
        fields=page.fields,
        words=[OcrWord(text=ln.text, confidence=ln.confidence, box=ln.box) for ln in page.lines],
        lines=[
            OcrLine(text=ln.text, confidence=round(ln.confidence, 4), quad=ln.quad)
            for ln in page.lines
        ],
        text="\n".join(row.text for row in page.rows),
        image_size=(page.gray.shape[1], page.gray.shape[0]),
        seconds=round(time.perf_counter() - started, 3),
        engine=engine.name if second is None else f"{engine.name}+{second.name}",
        steps=page.steps,
    )
    result.matrices.update(
        {i: ln.matrix for i, ln in enumerate(page.lines) if ln.matrix is not None}
    )
    result._views = _views(page, engine)
    result._pending_steps = page.kept
    return result
