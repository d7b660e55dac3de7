"""Verify each field against the department's record: does the image support its value?

Reading a field asks "what does this say?"; with the record in hand, stampless can ask
the sharper question "does this image say *that*?". The robot brings the department's
value for every field. For each field read by PP-OCR, the recognizer's probabilities
over the characters where the value was read (:class:`stampless.ocr.ctc.TopK`) score:

* the **record's value**, in every form it may be printed (2024-01-02 as 2024年01月02日,
  2024年1月2日, 2024.01.02, ...), under CTC's forward algorithm, together with any
  string the beam search found that means the same value (a stray label character
  left on it);
* the **best other string** the image supports: the likeliest strings of a CTC beam
  search that do *not* mean the record's value but could be printed in its place (a
  resident ID of 17 digits, a date with a three-digit day are misreadings, not rivals:
  ``FieldKind.shape``).

Their difference is the field's *margin*, a log-odds in nats. The field is

* ``supported`` when the margin is at least ``calibration.verify_margin``: a genuine
  field blurred or stamped over, whose plain reading slipped, is verified with its
  score in the evidence;
* ``contradicted`` when another *valid* value is likelier by at least
  ``calibration.contradict_margin`` (``contradict_margin_text`` for names and free text,
  which have no check character) and the value was found under its own label: an
  altered digit, character or date;
* ``uncertain`` otherwise: a person decides.

When the second reader (Tesseract) read a valid value other than the record's, a
``supported`` field becomes ``uncertain``: two engines disagreeing is for a person, unless
the image supports the record's value by ``contradict_margin`` or more (as strongly as a
mismatch would need the other way).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple, Protocol

from rapidfuzz import fuzz

from stampless.config import CalibrationConfig, OcrConfig
from stampless.doctype import DocumentType, FieldSpec
from stampless.models import CheckStatus, FieldCheck, OcrField, OcrResult, Record
from stampless.normalize import remove_spaces
from stampless.ocr.ctc import TopK, beam_search, log_likelihood, span_window
from stampless.ocr.extract import reads_as_label, stop_labels
from stampless.ocr.fields import field_value

BEAM = 12
PER_STEP = 6
# Why a field whose line's text is not the recognizer's reading cannot be checked.
DISAGREE = "reading and scores disagree"

Labels = Callable[[str], list[int] | None]
Decode = Callable[[tuple[int, ...]], str]


class Views(Protocol):
    """Re-reads of characters ``start``..``end`` of line ``index`` cropped other ways
    (``OcrResult.views``); ``widen``: with the free space past the line's end."""

    def __call__(self, index: int, start: int, end: int, *, widen: bool = False) -> list[TopK]: ...


def _nats(margin: float) -> float:
    """A margin as kept in a FieldCheck: two decimals, within +-99 nats."""
    return round(max(-99.0, min(99.0, margin)), 2)


class _Outcome(NamedTuple):
    """The record's value against the best other string on one window of scores."""

    support: float  # log-likelihood of the record's value (its likeliest form)
    form: str  # that form
    other: tuple[float, str]  # the best other string's log-likelihood, and the string
    other_value: str | None  # what it means as a value of the field
    other_valid: bool

    @property
    def margin(self) -> float:
        return _nats(self.support - self.other[0])


class _Scorer:
    """Scores strings on one line's matrix, within the timesteps of one value."""

    def __init__(self, matrix: TopK, labels: Labels, lo: int, hi: int) -> None:
        self.window = matrix.part(lo, hi)
        self.labels = labels

    def score(self, text: str) -> float | None:
        labels = self.labels(text)
        if labels is None:
            return None
        return log_likelihood(self.window, labels)


def _same(spec: FieldSpec, a: str | None, b: str) -> bool:
    return a is not None and spec.kind_def.key(a) == spec.kind_def.key(b)


_RANGE = re.compile(r"(至|到|~|～|—)")


def _part(core: str, spec: FieldSpec) -> tuple[str, str, str]:
    """(before, the field's own part, after) of a line holding several values of a range
    ("1995年05月至2003年10月": period_from is the first, period_to the second). The
    other parts are other fields, each verified against its own record value."""
    if spec.kind not in ("date", "month"):
        return "", core, ""
    pieces = _RANGE.split(core)
    values = pieces[0::2]
    if len(values) < 2 or spec.part >= len(values):
        return "", core, ""
    at = 2 * spec.part
    return "".join(pieces[:at]), pieces[at], "".join(pieces[at + 1 :])


def _decorated(core: str, read: str | None, spec: FieldSpec) -> tuple[str, str]:
    """What the reading of the value's characters holds around the value itself (a
    colon, the tail of the label, 个月 after a count): left out of the window that is scored."""
    if read is None:
        return "", ""
    for form in spec.kind_def.printed(read):
        at = core.find(form)
        if at >= 0:
            return core[:at], core[at + len(form) :]
    return "", ""


def check_field(
    spec: FieldSpec,
    field: OcrField,
    record_value: str,
    result: OcrResult,
    labels: Labels,
    decode: Decode,
    stop: list[str],
    verify_margin: float,
    contradict_margin: float,
    *,
    views: Views | None = None,
    view_floor: float = 3.0,
) -> FieldCheck:
    """The :class:`FieldCheck` of one field against its record value (canonical).

    ``views`` (:attr:`OcrResult.views`) re-reads a value in doubt cropped apart from its
    line (:func:`_second_look`)."""
    if not field.spans:
        return FieldCheck(status=CheckStatus.unavailable, reason="the value was not found")
    if len(field.spans) > 1:
        return _check_lines(
            spec, field, record_value, result, labels, decode, verify_margin, contradict_margin
        )
    index, start, end = field.spans[0]
    matrix = result.matrices.get(index)
    if matrix is None or index >= len(result.lines):
        return FieldCheck(status=CheckStatus.unavailable, reason="no recognizer scores")
    text = result.lines[index].text
    core = text[start:end]
    before, core, after = _part(core, spec)
    lead, trail = _decorated(core, field.value, spec)
    lead, trail = before + lead, trail + after
    # Only the value's own characters are scored: a colon, the label's tail or a range's
    # other part around it says nothing about the value, however it is read.
    window = span_window(matrix, text, start + len(lead), end - len(trail))
    if window is None:
        return FieldCheck(status=CheckStatus.unavailable, reason=DISAGREE)
    lo, hi = window
    contest = _Contest(spec, record_value, labels, decode, stop)
    found = contest.run(_Scorer(matrix, labels, lo, hi))
    if found is None:
        return FieldCheck(
            status=CheckStatus.unavailable,
            reason="the record's value holds characters the recognizer does not know",
        )
    check = _decide(
        field,
        found,
        verify_margin,
        contradict_margin,
        overlapping=_overlapping(spec, found.other_value, record_value),
    )
    in_doubt = (
        check.status is CheckStatus.uncertain
        and check.margin is not None
        and check.margin > -view_floor
    )
    if views is not None and (in_doubt or check.status is CheckStatus.contradicted):
        check = _second_look(
            check,
            contest,
            views(index, start + len(lead), end - len(trail)),
            verify_margin,
            view_floor,
        )
    # Only a doubt: a value cut short is rarely valid enough to contradict the record, and
    # the pages that contradict (another person's record) would pay for every field.
    if views is not None and check.status is CheckStatus.uncertain:
        wider = views(index, start + len(lead), end - len(trail), widen=True)
        check = _wider_look(check, contest, wider, verify_margin)
    return check


class _Contest:
    """The record's value against the best other string, on one window of scores."""

    def __init__(
        self, spec: FieldSpec, record_value: str, labels: Labels, decode: Decode, stop: list[str]
    ) -> None:
        self.spec, self.record_value, self.labels = spec, record_value, labels
        self.decode, self.stop = decode, stop
        self.candidates = set(spec.kind_def.printed(record_value))
        self.skeletons = {spec.kind_def.skeleton(form) for form in self.candidates}

    def run(self, scorer: _Scorer) -> _Outcome | None:
        """The contest on ``scorer``'s window, or None when the record's value holds
        characters the recognizer does not know."""
        spec, kind = self.spec, self.spec.kind_def
        support = -math.inf
        best_form = None
        for form in self.candidates:
            score = scorer.score(form)
            if score is not None and score > support:
                support, best_form = score, form
        if best_form is None:
            return None
        other: tuple[float, str] | None = None
        other_value: str | None = None
        other_valid = False
        weakest = math.inf
        for label_seq, score in beam_search(scorer.window, beam=BEAM, per_step=PER_STEP):
            weakest = min(weakest, score)
            # The window's edges may hold the space before or after the value.
            string = self.decode(label_seq).strip()
            value, valid = field_value(spec, string, self.stop)
            if (
                string in self.candidates
                or _same(spec, value, self.record_value)
                or kind.skeleton(string) in self.skeletons
            ):
                if score > support:
                    support, best_form = score, string
            elif not kind.well_formed(kind.check(string)[0]):
                # A character dropped or doubled ("37010200007201584"): no one printed it,
                # so it is no rival to the record's value (FieldKind.shape). The window
                # holds the field's own part of its line, so the kind reads it whole.
                continue
            elif other is None or score > other[0]:
                other, other_value, other_valid = (score, string), value, valid
        if other is None:
            # Every string the beam kept means the record's value or is no value of the
            # kind: any other string is at most as likely as the weakest of them.
            other = (min(weakest, support), "")
        return _Outcome(support, best_form, other, other_value, other_valid)


def _view_margins(contest: _Contest, views: list[TopK]) -> list[float]:
    """The margin of the record's value on each re-read (empty if one cannot be scored)."""
    margins = []
    for matrix in views:
        found = contest.run(_Scorer(matrix, contest.labels, 0, matrix.steps))
        if found is None:
            return []
        margins.append(found.margin)
    return margins


def _second_look(
    check: FieldCheck,
    contest: _Contest,
    views: list[TopK],
    verify_margin: float,
    view_floor: float = 3.0,
) -> FieldCheck:
    """``check`` decided again with the value cropped apart and re-read twice.

    In doubt (uncertain): verified when none of the three readings favours another string
    by ``view_floor`` or more and together they reach ``verify_margin`` (their margins
    summed: three reads of one value are evidence that adds up). On the tune split an
    altered field's readings sit at -14 nats and below for the lowest, -9 for the next:
    no reading of one comes near -view_floor twice. Contradicted: a mismatch only if both
    re-reads favour another string too; one that does not leaves the field to a person (a
    misread of the line, not another value on the paper).
    """
    assert check.margin is not None
    margins = _view_margins(contest, views)
    if not margins:
        return check
    if check.status is CheckStatus.contradicted:
        if max(margins) < 0:
            return check.model_copy(update={"views": margins})
        return check.model_copy(
            update={
                "status": CheckStatus.uncertain,
                "views": margins,
                "reason": "read apart from its line, the value does not clearly differ from "
                "the record's",
            }
        )
    total = _nats(check.margin + sum(margins))
    if total >= verify_margin and min(check.margin, *margins) > -view_floor:
        return check.model_copy(
            update={
                "status": CheckStatus.supported,
                "margin": total,
                "views": margins,
                "reason": "the image supports the record's value, read three ways",
            }
        )
    return check.model_copy(update={"views": margins})


def _wider_look(
    check: FieldCheck, contest: _Contest, views: list[TopK], verify_margin: float
) -> FieldCheck:
    """``check`` decided again on the value cropped with the free space past its detected
    line (``views(..., widen=True)``): a detector that missed a faint or stamped-over
    character cuts the value short, and the line then supports neither the record's value
    nor another clearly.

    Both wider crops must support the record's value by ``verify_margin`` each for the
    field in doubt to be verified.
    """
    margins = _view_margins(contest, views)
    if len(margins) < 2 or min(margins) < verify_margin:
        return check
    return check.model_copy(
        update={
            "status": CheckStatus.supported,
            "margin": _nats(min(margins)),
            "views": margins,
            "reason": "the image supports the record's value, read past the end of its "
            "detected line",
        }
    )


def _overlapping(spec: FieldSpec, other: str | None, record_value: str) -> bool:
    if not other:
        return False
    a, b = spec.kind_def.key(other), spec.kind_def.key(record_value)
    return a != b and (a in b or b in a)


def _decide(
    field: OcrField,
    outcome: _Outcome,
    verify_margin: float,
    contradict_margin: float,
    *,
    overlapping: bool = False,
) -> FieldCheck:
    """The status of a field from its support and its best other string.

    ``overlapping``: the other value holds the record's, or the record's holds it (a
    neighbour's text run into the value, or the value read cut short): that is a doubt
    about where the value ends, never by itself proof of another value.
    """
    margin = outcome.margin
    if margin >= verify_margin:
        status = CheckStatus.supported
        reason = "the image supports the record's value"
    elif (
        -margin >= contradict_margin and outcome.other_valid and _placed(field) and not overlapping
    ):
        status = CheckStatus.contradicted
        reason = "the image supports another value"
    else:
        status = CheckStatus.uncertain
        reason = "the image supports neither the record's value nor another clearly"
    return FieldCheck(
        status=status,
        margin=margin,
        record_form=outcome.form,
        best_other=outcome.other[1] or None,
        reason=reason,
    )


def _placed(field: OcrField) -> bool:
    """The value was found under its own label, surely this field's (not by its format
    alone, and not under a label that may be another person's)."""
    return bool(field.source) and ":label:" in f":{field.source}" and not field.ambiguous


def _check_lines(
    spec: FieldSpec,
    field: OcrField,
    record_value: str,
    result: OcrResult,
    labels: Labels,
    decode: Decode,
    verify_margin: float,
    contradict_margin: float,
) -> FieldCheck:
    """A value over several lines (a long address): the record's value is cut where the
    reading breaks, each piece scored on its line, and the weakest line decides."""
    pieces = []
    for index, start, end in field.spans:
        matrix = result.matrices.get(index)
        if matrix is None or index >= len(result.lines):
            return FieldCheck(status=CheckStatus.unavailable, reason="no recognizer scores")
        text = result.lines[index].text
        window = span_window(matrix, text, start, end)
        if window is None:
            return FieldCheck(status=CheckStatus.unavailable, reason=DISAGREE)
        lo, hi = window
        pieces.append((_Scorer(matrix, labels, lo, hi), remove_spaces(text[start:end])))
    target = remove_spaces(record_value)
    margins = []
    cut = 0
    for k, (scorer, read) in enumerate(pieces):
        last = k == len(pieces) - 1
        options = (
            [len(target)]
            if last
            else range(max(cut, cut + len(read) - 3), min(len(target), cut + len(read) + 4))
        )
        best = None
        for stop_at in options:
            score = scorer.score(target[cut:stop_at])
            if score is not None and (best is None or score > best[0]):
                best = (score, stop_at)
        if best is None:
            return FieldCheck(status=CheckStatus.unavailable, reason="unknown characters")
        piece = target[cut : best[1]]
        other = max(
            (
                s
                for seq, s in beam_search(scorer.window, beam=BEAM, per_step=PER_STEP)
                if spec.kind_def.skeleton(decode(seq)) != spec.kind_def.skeleton(piece)
            ),
            default=None,
        )
        margins.append(best[0] - other if other is not None else verify_margin + 1.0)
        cut = best[1]
    margin = _nats(min(margins))
    status = CheckStatus.supported if margin >= verify_margin else CheckStatus.uncertain
    return FieldCheck(
        status=status,
        margin=margin,
        record_form=record_value,
        reason="each line of the value checked against the record's",
    )


def _found_by_value(
    doctype: DocumentType,
    record: Record,
    fields: dict[str, OcrField],
    result: OcrResult,
    labels: Labels,
    decode: Decode,
    stop: list[str],
    config: OcrConfig,
) -> dict[str, OcrField]:
    """Fields whose label was not read, or read in doubt, found by their record value.

    A label too small or too blurred to read leaves its value unplaced, though the value
    may be printed clearly. Each line that no field was read from, about as long as a
    printed form of the record's value and reading alike to it (:data:`SEARCH_LIKENESS`),
    is scored as that whole value (nothing else on the line); so is a line's part after
    a colon near its start (the colon of a misread label, :func:`_value_starts`). A
    field is ``supported`` when exactly one such line supports it by ``verify_margin``
    and no other field's search took that line; anything else leaves it as it was (a
    person decides). A line found this way never contradicts the record: nothing says it
    is this field's.

    A field read in doubt under its label (:func:`_in_doubt`: no reading of it favours
    another string by ``view_floor``) is looked for the same way: a certificate prints a
    name twice (持证人 and the person's own 姓名), and the other place may be printed
    or scanned more clearly. A forger must change every place a value is printed; one
    place left showing the altered value keeps its field from ever being in doubt.
    """
    calibration = config.calibration
    unplaced = []
    for spec in doctype.fields:
        read = fields.get(spec.name)
        recorded = record.fields.get(spec.name)
        value = spec.kind_def.check(recorded)[0] if recorded is not None else None
        if (
            read is not None
            and value is not None
            and (not read.spans or _in_doubt(read, calibration))
        ):
            unplaced.append((spec, read, value))
    if not unplaced:
        return {}
    used = {index for field in fields.values() for index, _, _ in field.spans}
    free = [
        i
        for i, line in enumerate(result.lines)
        if i not in used and i in result.matrices and not _like_a_label(line.text, stop)
    ]
    places = [(i, start) for i in free for start in _value_starts(result.lines[i].text)]
    found: dict[str, list[tuple[int, int, FieldCheck]]] = {}
    for spec, read, value in unplaced:
        kind = spec.kind_def
        keys = {kind.key(form) for form in kind.printed(value)}
        hits = []
        for i, start in places:
            text = result.lines[i].text
            read_key = kind.key(text[start:])
            if not any(
                abs(len(read_key) - len(key)) <= 2 and fuzz.ratio(read_key, key) >= SEARCH_LIKENESS
                for key in keys
            ):
                continue
            trial = read.model_copy(
                update={"spans": [(i, start, len(text))], "source": "ppocr:search", "value": None}
            )
            check = check_field(
                spec,
                trial,
                value,
                result,
                labels,
                decode,
                stop,
                calibration.verify_margin,
                calibration.contradict(spec),
                views=result.views,
                view_floor=calibration.view_floor,
            )
            if check.status is CheckStatus.supported:
                hits.append((i, start, check))
        found[spec.name] = hits
    taken = [i for hits in found.values() for i, _, _ in hits]
    out = {}
    for name, hits in found.items():
        if len(hits) != 1 or taken.count(hits[0][0]) > 1:
            continue
        index, start, check = hits[0]
        line = result.lines[index]
        xs = [x for x, _ in line.quad]
        ys = [y for _, y in line.quad]
        box = (int(min(xs)), int(min(ys)), int(max(xs) - min(xs)), int(max(ys) - min(ys)))
        spec = doctype.field(name)
        value, valid = field_value(spec, line.text[start:], stop)
        first = fields[name]
        reason = "its label was not read; found by the record's value"
        if first.spans and first.check is not None:
            reason = (
                f"read in doubt under its label ({first.value}, margin {first.check.margin}); "
                "the record's value is printed clearly at another place on the page"
            )
        out[name] = first.model_copy(
            update={
                "value": value,
                "valid": valid,
                "raw": line.text[start:],
                "box": box,
                "confidence": line.confidence,
                "source": "ppocr:search",
                "spans": [(index, start, len(line.text))],
                "check": check.model_copy(update={"reason": reason}),
            }
        )
    return out


def _in_doubt(field: OcrField, calibration: CalibrationConfig) -> bool:
    """Read under its label, neither supporting the record's value by ``verify_margin``
    nor favouring another string by ``view_floor`` in any reading (the line's, and the
    second look's). A field the second reader sent to a person (its margin was enough)
    is not in doubt here: the other reader saw another value where it is printed."""
    check = field.check
    return (
        check is not None
        and check.status is CheckStatus.uncertain
        and check.margin is not None
        and check.margin < calibration.verify_margin
        and min([check.margin, *(check.views or [])]) > -calibration.view_floor
    )


# A line is scored as a field's record value only when its reading is at least this alike
# to a printed form of the value (rapidfuzz's ratio, 0-100): a two-character name with one
# character misread is 50. Scoring every line of about the right length ran the second
# looks on each: verification took 0.215 s of CPU a page on 54 tune hard pages, 0.080 s
# with this.
SEARCH_LIKENESS = 50.0

# The part of a line after a colon this near its start may be a value whose label, before
# the colon, was misread ("0记11期：2021年09月03日").
LABEL_SLOT = 8


def _value_starts(text: str) -> list[int]:
    """Where a value may start on a free line: at its start, and after a colon that ends
    a label's room (a misread label is still followed by its colon)."""
    starts = [0]
    colon = min((at for at in (text.find("："), text.find(":")) if at >= 0), default=-1)
    if 0 < colon < LABEL_SLOT and text[colon + 1 :].strip():
        starts.append(colon + 1)
    return starts


def _printed_elsewhere(spec: FieldSpec, value: str, read: OcrField, result: OcrResult) -> bool:
    """Whether a line other than the one the field was read from holds the record's value
    in one of its printed forms (a bare number under four digits says too little)."""
    kind = spec.kind_def
    forms = {
        kind.key(form)
        for form in kind.printed(value)
        if not (form.isdigit() and len(form) < 4) and len(kind.key(form)) >= 2
    }
    used = {index for index, _, _ in read.spans}
    return any(
        form in kind.key(line.text)
        for index, line in enumerate(result.lines)
        if index not in used
        for form in forms
    )


def _misplaced(
    spec: FieldSpec,
    value: str,
    read: OcrField,
    result: OcrResult,
    check: FieldCheck,
    stop: list[str],
) -> str | None:
    """Why a contradiction may come from reading the wrong place rather than another value
    on the page, or None. Such a contradiction is a doubt for a person, never a mismatch."""
    if _printed_elsewhere(spec, value, read, result):
        return (
            "the record's value is printed elsewhere on the page: the value may have been "
            "taken from the wrong place"
        )
    if _like_a_label(check.best_other, stop) or _like_a_label(read.value, stop):
        return (
            "the value read looks like one of the page's labels: it was taken from the wrong place"
        )
    return None


# A reading this similar (rapidfuzz ratio, spaces and case aside) to a label of four or
# more characters may be that label misread ("Dute of isu" for Date of Issue, 80).
LABEL_LIKENESS = 75.0


def _like_a_label(text: str | None, stop: list[str]) -> bool:
    """:func:`reads_as_label`, or close to a long label by ratio: looser than what moves a
    value (extract), because here it only sends a contradiction to a person."""
    if reads_as_label(text, stop):
        return True
    if not text:
        return False
    compact = remove_spaces(text).lower()
    return any(
        fuzz.ratio(compact, key) >= LABEL_LIKENESS
        for label in stop
        if len(key := remove_spaces(label).lower()) >= 4
    )


def verify_result(
    result: OcrResult, record: Record, doctype: DocumentType, config: OcrConfig
) -> OcrResult:
    """``result`` with ``check`` set on every field the record has a value for."""
    from stampless.ocr.ppocr import get_ppocr

    if not result.matrices:
        return result
    engine = get_ppocr(config)
    stop = stop_labels(doctype)
    calibration = config.calibration
    fields = dict(result.fields)
    for spec in doctype.fields:
        read = fields.get(spec.name)
        recorded = record.fields.get(spec.name)
        value = spec.kind_def.check(recorded)[0] if recorded is not None else None
        if read is None or value is None:
            continue
        check = check_field(
            spec,
            read,
            value,
            result,
            engine.labels,
            engine.decode,
            stop,
            calibration.verify_margin,
            calibration.contradict(spec),
            views=result.views,
            view_floor=calibration.view_floor,
        )
        misplaced = _misplaced(spec, value, read, result, check, stop)
        if check.status is CheckStatus.contradicted and misplaced:
            check = check.model_copy(update={"status": CheckStatus.uncertain, "reason": misplaced})
        second = read.second_value
        if (
            check.status is CheckStatus.supported
            and second is not None
            and not _same(spec, second, value)
            # A margin that would call a mismatch the other way outweighs the second reader.
            and (check.margin is None or check.margin < calibration.contradict_margin)
        ):
            check = check.model_copy(
                update={
                    "status": CheckStatus.uncertain,
                    "reason": f"the second reader read {second}",
                }
            )
        if second is not None:
            check = check.model_copy(update={"second_reader": second})
        fields[spec.name] = read.model_copy(update={"check": check})
    fields.update(
        _found_by_value(doctype, record, fields, result, engine.labels, engine.decode, stop, config)
    )
    verified = result.model_copy(update={"fields": fields})
    verified.matrices.update(result.matrices)
    return verified
