"""Find fields in OCR words by their printed labels and formats.

Words are grouped into text lines by geometry (Tesseract's own blocks split a label from
its value on wide forms). A field's label is searched in each line's text with spaces
removed ("登 记 日 期" is "登记日期"), exactly for short labels and with rapidfuzz partial
matching for labels of four characters or more (OCR noise in one character). The value
is the text after the label up to the next known label on the same line, searched for
the field's kind (an 18-character ID, a date, the n-th month, ...). Free-text values
continue on following lines that start at the value's left edge and hold no label.
When a strongly formatted field (ID, credit code, certificate number) has no readable
label, the whole page is searched for its format.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from rapidfuzz import fuzz
from rapidfuzz.distance import Levenshtein

from stampless import normalize as norm
from stampless.doctype import DocumentType, FieldSpec
from stampless.ocr.engine import Word

# Labels this long or longer may match with OCR noise; shorter ones must be exact.
FUZZY_LABEL_MIN = 4
FUZZY_LABEL_SCORE = 74.0
# A label of five characters or more printed more often than it was found is searched
# again at this score: three of five characters ("志从证件号" for 身份证件号).
FUZZY_LABEL_RETRY_MIN = 5
FUZZY_LABEL_RETRY_SCORE = 55.0
# A horizontal gap wider than this many character heights separates two columns.
GAP_HEIGHTS = 1.2
_PUNCT_LEAD = " :：;；,，.。、|_-—"
_ASCII_WORD = re.compile(r"[0-9A-Za-z]$")


@dataclass
class Line:
    """Words on one text line, left to right, with their joined text."""

    words: list[Word]
    text: str
    starts: list[int]  # index in ``text`` where each word starts

    @property
    def box(self) -> tuple[int, int, int, int]:
        return union_box([w.box for w in self.words])

    def words_in(self, start: int, end: int) -> list[Word]:
        """The words overlapping characters ``start``..``end`` of ``text``."""
        out = []
        for w, s in zip(self.words, self.starts, strict=True):
            e = s + len(w.text)
            if s < end and e > start:
                out.append(w)
        return out

    def x_at(self, index: int) -> int:
        """The approximate x coordinate where character ``index`` of ``text`` starts."""
        for w, s in zip(self.words, self.starts, strict=True):
            e = s + len(w.text)
            if s <= index < e:
                left, _, width, _ = w.box
                return left + round(width * (index - s) / max(1, len(w.text)))
        left, _, width, _ = self.box
        return left + width


def union_box(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The smallest (left, top, width, height) box holding all ``boxes``."""
    left = min(b[0] for b in boxes)
    top = min(b[1] for b in boxes)
    right = max(b[0] + b[2] for b in boxes)
    bottom = max(b[1] + b[3] for b in boxes)
    return left, top, right - left, bottom - top


def _join(words: list[Word]) -> tuple[str, list[int]]:
    text = ""
    starts = []
    for w in words:
        piece = norm.to_halfwidth(w.text).replace(" ", "")
        # Keep a space only between two Latin words ("JOHN SMITH"); CJK needs none.
        if text and _ASCII_WORD.search(text) and piece[:1].isascii() and piece[:1].isalpha():
            text += " "
        starts.append(len(text))
        text += piece
    return text, starts


def group_lines(words: list[Word], *, by_line: bool = False) -> list[Line]:
    """Group words into lines by vertical overlap, top to bottom, each left to right.

    ``by_line``: the words come from a detector's text lines (``Word.line``), which are
    kept whole, and two lines that overlap horizontally are never one row: they are
    stacked (a bilingual label, 许可证号 printed over "Permit No."), however close.
    """
    rows: list[list[Word]] = []
    centers: list[float] = []
    heights: list[float] = []
    row_of: dict[tuple[int, int, int], int] = {}
    for w in sorted(words, key=lambda w: (w.box[1] + w.box[3] / 2, w.box[0])):
        cy = w.box[1] + w.box[3] / 2
        h = max(1, w.box[3])
        best = row_of.get(w.line) if by_line else None
        if best is None:
            for i in range(len(rows) - 1, max(-1, len(rows) - 4), -1):
                if abs(cy - centers[i]) <= 0.5 * max(heights[i], h) and not (
                    by_line and _collides(w, rows[i])
                ):
                    best = i
                    break
        if best is None:
            rows.append([w])
            centers.append(cy)
            heights.append(h)
            best = len(rows) - 1
        else:
            rows[best].append(w)
            n = len(rows[best])
            centers[best] = centers[best] + (cy - centers[best]) / n
            heights[best] = max(heights[best], h) if n < 3 else heights[best]
        if by_line:
            row_of.setdefault(w.line, best)
    lines = []
    for row in rows:
        row.sort(key=lambda w: w.box[0])
        text, starts = _join(row)
        lines.append(Line(words=row, text=text, starts=starts))
    lines.sort(key=lambda ln: ln.box[1])
    return lines


def _collides(word: Word, row: list[Word]) -> bool:
    """Whether ``word`` overlaps, horizontally, a third of a word of another line in
    ``row`` that sits higher or lower (stacked). Two words centred on one height are side
    by side, however their boxes overlap: a detector pads its lines, so a label's colon
    may reach over the first character of the value right after it."""
    left, right = word.box[0], word.box[0] + word.box[2]
    cy = word.box[1] + word.box[3] / 2
    for other in row:
        if other.line == word.line:
            continue
        level = abs(other.box[1] + other.box[3] / 2 - cy) <= 0.25 * max(word.box[3], other.box[3])
        lo, hi = other.box[0], other.box[0] + other.box[2]
        overlap = min(right, hi) - max(left, lo)
        if not level and overlap > 0.3 * max(1, min(right - left, hi - lo)):
            return True
    return False


@dataclass
class Anchor:
    """Where a label was found: the line, the character span of the label, the score."""

    line: int
    start: int
    end: int
    label: str
    score: float


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def find_label(
    line: Line, label: str, cutoff: float = FUZZY_LABEL_SCORE
) -> list[tuple[int, int, float]]:
    """Spans ``(start, end, score)`` of ``label`` in ``line.text``: exact, or fuzzy if long.

    Latin letters match in any case ("STATUS" is the label Status); a label that starts
    with a Latin letter must start a word ("Title" is not in "Subtitle"), and a short
    one (under four characters) must end one too ("No" is not in "Note"). A fuzzy match
    that ends inside a word is scored again to that word's end (:func:`_to_word_end`).
    """
    key = norm.remove_spaces(norm.to_halfwidth(label)).translate(_ASCII_LOWER)
    text = line.text.replace(" ", "").translate(_ASCII_LOWER)
    spans = _label_spans(key, text, cutoff)
    spans = _unspace(line, spans)
    if key[:1].isascii() and key[:1].isalpha():
        spans = [
            sp
            for sp in (_to_word_end(line.text, key, sp, cutoff) for sp in spans)
            if sp is not None and _whole_word(line.text, sp, short=len(key) < FUZZY_LABEL_MIN)
        ]
    return spans


def _to_word_end(
    text: str, key: str, span: tuple[int, int, float], cutoff: float
) -> tuple[int, int, float] | None:
    """A fuzzy match of a Latin label that ends inside a word, taken to the word's end and
    kept only if it still matches: 'Valid Uintil' is the label Valid Until, but 'Name' is
    not in the holder's name 'FISCHER JAMES', however alike 'JAME' is."""
    start, end, score = span
    if score >= 100.0 or not (text[end - 1].isascii() and text[end - 1].isalpha()):
        return span  # exact, or ending in a mark ("No.H1024751": the H is the value's)
    stop = end
    while stop < len(text) and text[stop].isascii() and text[stop].isalpha():
        stop += 1
    if stop == end:
        return span
    again = fuzz.ratio(key, text[start:stop].replace(" ", "").translate(_ASCII_LOWER))
    return (start, stop, again) if again >= cutoff else None


def _whole_word(text: str, span: tuple[int, int, float], *, short: bool) -> bool:
    start, end, _ = span
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before.isascii() and before.isalpha():
        return False
    return not (short and after.isascii() and after.isalpha())


def _label_spans(key: str, text: str, cutoff: float) -> list[tuple[int, int, float]]:
    """Exact and fuzzy matches of ``key`` in the space-free ``text``."""
    spans: list[tuple[int, int, float]] = []
    start = text.find(key)
    while start >= 0:
        spans.append((start, start + len(key), 100.0))
        start = text.find(key, start + len(key))
    if len(key) < FUZZY_LABEL_MIN:
        return spans
    # Fuzzy matches in the stretches no exact match covers: the second 身份证件号 on a
    # line may be misread while the first is clean.
    gaps: list[tuple[int, int]] = []
    cursor = 0
    for s, e, _ in spans:
        gaps.append((cursor, s))
        cursor = e
    gaps.append((cursor, len(text)))
    for lo, hi in gaps:
        while hi - lo >= len(key) - 1:
            found = fuzz.partial_ratio_alignment(key, text[lo:hi], score_cutoff=cutoff)
            if found is None or found.dest_end - found.dest_start < len(key) - 1:
                break
            start = lo + found.dest_start
            end, score = _best_end(key, text, start, lo + found.dest_end, hi)
            spans.append((start, end, score))
            lo = end
    spans.sort()
    return spans


def _best_end(key: str, text: str, start: int, end: int, limit: int) -> tuple[int, float]:
    """Where a fuzzy match of ``key`` starting at ``start`` ends best, within two
    characters of ``end``: the alignment is as long as the label, so a misread label one
    character short takes the value's first character with it ("Pasiport No.H1024751",
    "Employe福州...")."""
    ends = range(max(start + 1, end - 2), min(limit, end + 2) + 1)
    score, _, best = max((fuzz.ratio(key, text[start:e]), -abs(e - end), e) for e in ends)
    return best, score


def _unspace(line: Line, spans: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Map spans in the space-free text back to ``line.text`` (which may hold spaces)."""
    if " " not in line.text:
        return spans
    index = [i for i, ch in enumerate(line.text) if ch != " "]
    out = []
    for s, e, score in spans:
        out.append((index[s], index[e - 1] + 1, score))
    return out


def find_anchors(
    lines: list[Line], labels: tuple[str, ...], cutoff: float = FUZZY_LABEL_SCORE
) -> dict[str, list[Anchor]]:
    """Every occurrence of each label, in reading order (top to bottom, left to right)."""
    out: dict[str, list[Anchor]] = {}
    for label in labels:
        found = []
        for i, line in enumerate(lines):
            for s, e, score in find_label(line, label, cutoff):
                found.append(Anchor(i, s, e, label, score))
        out[label] = found
    return out


@dataclass
class Candidate:
    """A value found for a field: its raw text, words, box and how it was found."""

    raw: str
    words: list[Word]
    box: tuple[int, int, int, int] | None
    source: str  # "label:<label>" or "pattern"
    region: tuple[int, int, int, int] | None = None  # where to re-read (value span of line)
    # Its label is printed more often than it was found (one of two 姓名 unreadable): the
    # one found may be another person's, so its reading cannot be trusted on its own.
    ambiguous: bool = False


def _skip(text: str, start: int, own: tuple[str, ...]) -> int:
    """``start`` moved past punctuation and past the field's other labels printed right
    after the one found (the English of a bilingual label: "姓名 Name: SMITH JOHN")."""
    while True:
        while start < len(text) and text[start] in _PUNCT_LEAD:
            start += 1
        compact = [(i, ch) for i, ch in enumerate(text[start:], start) if ch != " "]
        flat = "".join(ch for _, ch in compact).translate(_ASCII_LOWER)
        taken = _gloss_length(flat, own)
        if not taken:
            return start
        start = compact[taken - 1][0] + 1


def _gloss_length(flat: str, own: tuple[str, ...]) -> int:
    """How many characters at the start of ``flat`` (spaces removed, lower case) are one
    of the field's labels: exactly, or with one character misread, dropped or added when
    the label is five or more long ("alid until" for "valid until"); 0 when none is."""
    best = (2, 0)
    for label in own:
        key = norm.remove_spaces(norm.to_halfwidth(label)).translate(_ASCII_LOWER)
        if not key:
            continue
        if flat.startswith(key):
            return len(key)
        if len(key) < 5:
            continue
        for n in (len(key) - 1, len(key), len(key) + 1):
            if n <= len(flat):
                best = min(best, (Levenshtein.distance(flat[:n], key), n))
    return best[1] if best[0] <= 1 else 0


def _value_span(
    lines: list[Line], anchor: Anchor, stop: list[str], own: tuple[str, ...] = ()
) -> tuple[int, int]:
    """Characters of the anchor's line that belong to its value."""
    line = lines[anchor.line]
    start = _skip(line.text, anchor.end, own)
    end = len(line.text)
    rest = line.text[start:]
    compact = rest.replace(" ", "").translate(_ASCII_LOWER)
    for label in stop:
        key = norm.remove_spaces(label).translate(_ASCII_LOWER)
        idx = compact.find(key)
        if idx >= 0:
            # Map the space-free index back to ``rest``; at 0 the value is empty (the
            # text after the label is another field's label).
            nonspace = [i for i, ch in enumerate(rest) if ch != " "]
            end = min(end, start + nonspace[idx])
    # A wide gap between words ends the value: on two-column pages the next column's
    # text shares the line, and its label may be misread beyond recognition.
    words = line.words_in(start, end)
    if len(words) > 1:
        height = sorted(w.box[3] for w in words)[len(words) // 2]
        for prev, nxt in itertools.pairwise(words):
            if nxt.box[0] - (prev.box[0] + prev.box[2]) > GAP_HEIGHTS * height:
                end = min(end, line.starts[line.words.index(nxt)])
                break
    return start, end


def _continuation(
    lines: list[Line], anchor: Anchor, value_left: int, stop: list[str]
) -> list[Line]:
    """Lines below a free-text value that continue it (same left edge, no label).

    A line as far below as the next labelled row is that row's value, not this one's
    continuation, even when its own label could not be read.
    """
    out: list[Line] = []
    line = lines[anchor.line]
    height = max(w.box[3] for w in line.words)
    bottom = line.box[1] + line.box[3]
    pitch = _row_pitch(lines, anchor, stop)
    for nxt in lines[anchor.line + 1 : anchor.line + 3]:
        left = nxt.box[0]
        if nxt.box[1] - bottom > 1.2 * height or nxt.box[1] - line.box[1] >= 0.8 * pitch:
            break
        if abs(left - value_left) > 1.5 * height:
            break
        if any(find_label(nxt, label) for label in stop):
            break
        out.append(nxt)
        bottom = nxt.box[1] + nxt.box[3]
    return out


def _row_pitch(lines: list[Line], anchor: Anchor, stop: list[str]) -> float:
    """The distance from the anchor's row to the nearest row with a label in its column."""
    line = lines[anchor.line]
    height = max(w.box[3] for w in line.words)
    label_x = line.x_at(anchor.start)
    pitch = float("inf")
    for other in lines[max(0, anchor.line - 3) : anchor.line + 4]:
        if other is line or abs(other.box[1] - line.box[1]) >= pitch:
            continue
        for label in stop:
            if any(
                abs(other.x_at(s) - label_x) < 3 * height for s, _, _ in find_label(other, label)
            ):
                pitch = abs(other.box[1] - line.box[1])
                break
    return pitch


def stop_labels(doctype: DocumentType) -> list[str]:
    """Every label printed on the document type's pages."""
    return [lab for f in doctype.fields for lab in f.labels] + list(doctype.other_labels)


def _next_label_x(line: Line, anchor: Anchor, stop: list[str]) -> float:
    """Where the next label after ``anchor`` on its line begins (its column's right edge)."""
    rest = line.text[anchor.end :]
    compact = rest.replace(" ", "").translate(_ASCII_LOWER)
    nonspace = [i for i, ch in enumerate(rest) if ch != " "]
    found = [
        idx
        for label in stop
        if (idx := compact.find(norm.remove_spaces(label).translate(_ASCII_LOWER))) > 0
    ]
    if not found:
        return float("inf")
    return float(line.x_at(anchor.end + nonspace[min(found)]))


def _span_of(lines: list[Line], words: list[Word]) -> tuple[int, int, int]:
    """(line index, start, end): the characters ``words`` (a run of one line's) cover."""
    for i, line in enumerate(lines):
        at = [k for k, w in enumerate(line.words) if w is words[0] or w is words[-1]]
        if at:
            return i, line.starts[at[0]], line.starts[at[-1]] + len(line.words[at[-1]].text)
    raise ValueError("the words are on none of the lines")


def _line_below(lines: list[Line], anchor: Anchor, stop: list[str]) -> Line | None:
    """The value printed under its label: the words of the label's column on the next
    line (2019 licences' credit code; forms with a row of labels over a row of values)."""
    line = lines[anchor.line]
    height = max(w.box[3] for w in line.words)
    label_x = line.x_at(anchor.start)
    right = _next_label_x(line, anchor, stop)
    bottom = line.box[1] + line.box[3]
    for nxt in lines[anchor.line + 1 : anchor.line + 4]:
        if nxt.box[1] - bottom > 2.5 * height:
            return None
        # Keep only the words of this column (a two-column page has more on the line).
        column = [
            w
            for w in nxt.words
            if w.box[0] + w.box[2] > label_x - 3 * height and w.box[0] < right - 0.5 * height
        ]
        near = [w for w in column if abs(w.box[0] - label_x) < 3 * height]
        if not near:
            continue
        at = nxt.words.index(near[0])
        if at > 0:
            before = nxt.words[at - 1]
            if near[0].box[0] - (before.box[0] + before.box[2]) <= GAP_HEIGHTS * height:
                # Text running on from the left under the label (another field's value
                # or label, "工作单位:长沙宇达科技..." under "Passport No."): a value printed
                # under its label starts there.
                return None
        words = column[column.index(near[0]) :]
        for k, (prev, word) in enumerate(itertools.pairwise(words), start=1):
            if word.box[0] - (prev.box[0] + prev.box[2]) > GAP_HEIGHTS * height:
                words = words[:k]
                break
        text, starts = _join(words)
        below = Line(words=words, text=text, starts=starts)
        if any(find_label(below, label) for label in stop):
            return None
        return below
    return None


def _is_subsequence(short: str, long: str) -> bool:
    chars = iter(long)
    return all(ch in chars for ch in short)


def label_groups(labels: tuple[str, ...]) -> list[tuple[str, ...]]:
    """``labels`` grouped into spellings of one printed label.

    "身份证号" is 身份证件号 without a character and "证字号" the tail of 结婚证字号: such
    alternatives name the same printed label, so their matches are counted together
    when the n-th occurrence is wanted (a misread first 身份证件号 may still match
    身份证号). Labels that are no subsequence of each other (持证人, 姓名) are different
    printed labels, each counted on its own.
    """
    groups: list[list[str]] = []
    for label in labels:
        for group in groups:
            if any(_is_subsequence(label, g) or _is_subsequence(g, label) for g in group):
                group.append(label)
                break
        else:
            groups.append([label])
    return [tuple(g) for g in groups]


def _label_candidates(
    lines: list[Line], doctype: DocumentType, spec: FieldSpec, stop: list[str]
) -> list[tuple[Candidate, int, int, int]]:
    """(candidate, line index, value start, value end) per label group with the wanted
    occurrence: where the value was read, on the label's line or the line below it."""
    anchors = find_anchors(lines, spec.labels)
    out: list[tuple[Candidate, int, int, int]] = []
    used: list[Anchor] = []
    for group in label_groups(spec.labels):
        found = _not_others(_group_anchors(group, anchors, lines), lines, group, stop)
        printed = _times_printed(doctype, group)
        exact = [a for a in found if a.score >= 100.0]
        if len(exact) >= printed:
            # Every printing was read exactly: a near match elsewhere is other text
            # ("许可证" in the title 外国人工作许可证 is not the label 许可证号).
            found = exact
        if len(found) < printed and max(map(len, group)) >= FUZZY_LABEL_RETRY_MIN:
            again = _not_others(
                _group_anchors(group, find_anchors(lines, group, FUZZY_LABEL_RETRY_SCORE), lines),
                lines,
                group,
                stop,
            )
            # More matches than the label is printed: the looser score matched other text.
            if len(found) < len(again) <= printed:
                found = again
        if len(found) <= spec.occurrence:
            continue
        anchor = found[spec.occurrence]
        if any(
            u.line == anchor.line and anchor.start < u.end and u.start < anchor.end for u in used
        ):
            continue  # the same printed label matched by another group
        used.append(anchor)
        line = lines[anchor.line]
        # The field's own label is a stop too: the second 姓名 ends the first one's value.
        start, end = _value_span(lines, anchor, stop, spec.labels)
        raw = line.text[start:end]
        words = line.words_in(start, end)
        value_left = line.x_at(start)
        if spec.kind == "text":
            for more in _continuation(lines, anchor, value_left, stop):
                raw += more.text
                words += more.words
        box = union_box([w.box for w in words]) if words else None
        lt, tp, _wd, ht = line.box
        right = line.x_at(end) if end < len(line.text) else lt + _wd
        region = (value_left, tp, max(1, right - value_left), ht)
        if box is not None:
            region = _span_region(line, box, end)
        # Below the label only when nothing follows it on its line: text there, even
        # misread, is the value ("伍抬万元整"), and the line below is another field's.
        at = anchor.line
        # Another label after it (a row of labels over a row of values), even misread
        # ("立日期：" for 成立日期：), is no value either; nor is text that is no valid
        # value of the field's kind when the line below holds one (a title printed to the
        # right of a label whose value is below it; the next label of a row of labels read
        # as no label, "热线V号" for 结婚证字号, right of 登记日期 over its date).
        below = None
        if not raw.strip(_PUNCT_LEAD) or reads_as_label(raw, stop, min_fuzzy=3):
            below = _line_below(lines, anchor, stop)
        elif not value_of(spec, raw)[1]:
            below = _line_below(lines, anchor, stop)
            if below is not None and not value_of(spec, below.text)[1]:
                below = None
        if below is not None:
            raw, words, region = below.text, below.words, below.box
            box = below.box
            # Where the value is, for the format search of another field to skip it.
            at, start, end = _span_of(lines, below.words)
        candidate = Candidate(
            raw, words, box, f"label:{anchor.label}", region, ambiguous=len(found) < printed
        )
        out.append((candidate, at, start, end))
    return out


def _not_others(
    anchors: list[Anchor], lines: list[Line], group: tuple[str, ...], stop: list[str]
) -> list[Anchor]:
    """``anchors`` without the near matches that are another label printed exactly
    ("Date of Birth" is not "Date of Issue", however close)."""
    out = []
    for a in anchors:
        if a.score < 100.0 and any(
            s < a.end and a.start < e
            for label in stop
            if label not in group
            for s, e, score in find_label(lines[a.line], label)
            if score >= 100.0
        ):
            continue
        out.append(a)
    return out


def _times_printed(doctype: DocumentType, group: tuple[str, ...]) -> int:
    """How often a label is printed: once more than the highest occurrence any field of
    the type asks of it (姓名: holder's and spouse's, twice)."""
    return 1 + max(
        (f.occurrence for f in doctype.fields if any(label in f.labels for label in group)),
        default=0,
    )


def _group_anchors(
    group: tuple[str, ...], anchors: dict[str, list[Anchor]], lines: list[Line]
) -> list[Anchor]:
    """The printed labels a group's spellings matched, in reading order."""
    # Where two spellings matched one printed label, the longer match bounds it.
    matches = sorted(
        (a for label in group for a in anchors[label]),
        key=lambda a: (a.start - a.end, -a.score),
    )
    return _distinct(matches, lines)


def _span_region(line: Line, box: tuple[int, int, int, int], end: int) -> tuple[int, int, int, int]:
    """The re-read region of a value whose words make ``box`` and end at character ``end``.

    The value's own words bound the re-read: a wider crop picks up the next label
    ("性别") or the line below. A word can straddle the value's end ("东营" of
    "诸葛东营业期限"), so the end character's position bounds it too.
    """
    box_right = box[0] + box[2]
    if end < len(line.text):
        box_right = min(box_right, line.x_at(end))
    return box[0], box[1], max(1, box_right - box[0]), box[3]


def extract_raw(lines: list[Line], doctype: DocumentType, spec: FieldSpec) -> list[Candidate]:
    """Candidate raw values for ``spec``: one per label that has the wanted occurrence.

    A strongly formatted field none of whose labels gave a valid value is also searched
    for by its format over the whole page, skipping what the labels of the type's other
    fields of that kind (the holder's ID, when this is the spouse's) already took.
    """
    stop = stop_labels(doctype)
    own = _label_candidates(lines, doctype, spec, stop)
    candidates = [c for c, *_ in own]
    pattern = spec.kind_def.search
    if any(value_of(spec, c.raw)[1] for c in candidates) or pattern is None:
        return candidates
    # What this field's labels found was read already.
    taken = [(i, s, e) for _, i, s, e in own]
    index = spec.occurrence
    for other in doctype.fields:
        if other.kind != spec.kind or other.name == spec.name:
            continue
        found = [
            (i, s, e)
            for c, i, s, e in _label_candidates(lines, doctype, other, stop)
            if value_of(other, c.raw)[1]
        ]
        taken += found
        if found and other.occurrence < spec.occurrence:
            index -= 1
    hits: list[Candidate] = []
    for i, line in enumerate(lines):
        spaced = [k for k, ch in enumerate(line.text) if ch != " "]
        for m in pattern.finditer(line.text.replace(" ", "")):
            start, end = spaced[m.start()], spaced[m.end() - 1] + 1
            if any(t == i and start < e and s < end for t, s, e in taken):
                continue
            words = line.words_in(start, end)
            box = union_box([w.box for w in words]) if words else line.box
            region = _span_region(line, box, end)
            hits.append(Candidate(m.group(0), words, box, "pattern", region))
    if len(hits) > index:
        candidates.append(hits[index])
    return candidates


def _distinct(anchors: list[Anchor], lines: list[Line]) -> list[Anchor]:
    """Anchors in reading order, dropping overlapping duplicates of one printed label
    (the one listed first in ``anchors`` is kept)."""
    out: list[Anchor] = []
    for a in anchors:
        if any(b.line == a.line and a.start < b.end and b.start < a.end for b in out):
            continue
        out.append(a)
    return sorted(out, key=lambda a: (lines[a.line].box[1], lines[a.line].x_at(a.start)))


# Kinds with a check character, and their length. A stray character glued to such a code
# ("8440305...") is found by trying each window of a slightly longer run; a code no
# reading passes is read in more renderings (stampless.ocr).
CHECKED_KINDS = {"resident_id": 18, "credit_code": 18}
_MAX_EXTRA = 2


def _one_valid_window(kind: str, compact: str) -> tuple[str, bool] | None:
    """The one valid value among the windows of runs a little longer than the code."""
    size = CHECKED_KINDS[kind]
    found = set()
    for run in re.findall(r"[0-9A-Za-z|]+", compact):
        if size < len(run) <= size + _MAX_EXTRA:
            for i in range(len(run) - size + 1):
                value, valid = norm.check(kind, run[i : i + size])
                if valid and value is not None:
                    found.add(value)
    return (found.pop(), True) if len(found) == 1 else None


def cut_at_labels(text: str, labels: list[str] | tuple[str, ...]) -> str:
    """``text`` up to the first label in it (a re-read crop may reach the next field),
    single spaces between Latin words kept."""
    spaced = norm.cjk_spacing(norm.to_halfwidth(text)).lstrip(_PUNCT_LEAD + " ")
    index = [i for i, ch in enumerate(spaced) if ch != " "]
    compact = "".join(spaced[i] for i in index).translate(_ASCII_LOWER)
    cut = len(compact)
    for label in labels:
        idx = compact.find(norm.remove_spaces(label).translate(_ASCII_LOWER))
        if 0 <= idx < cut:
            # At 0 the text is another field's label: this field's value was not there.
            cut = idx
    return spaced[: index[cut]].rstrip() if cut < len(index) else spaced


def reads_as_label(
    text: str | None, stop: list[str] | tuple[str, ...], *, min_fuzzy: int = 2
) -> bool:
    """Whether ``text`` is one of the page's printed labels, up to one misread character in
    four (注磨资本 for 注册资本, 立日期： for 成立日期:), colons and spaces aside: a value
    read there came from the wrong place. A label shorter than ``min_fuzzy`` characters
    must match exactly."""
    if not text:
        return False
    compact = norm.remove_spaces(text).strip(_PUNCT_LEAD).lower()
    for label in stop:
        key = norm.remove_spaces(label).lower()
        if len(key) < 2:
            continue
        allowed = max(1, len(key) // 4) if len(key) >= min_fuzzy else 0
        if Levenshtein.distance(compact, key) <= allowed:
            return True
    return False


_NAME_LIKE_LABELS = ("姓名", "性别", "国籍", "名称", "类型", "住所", "持证人", "单位")


def _looks_like_label(value: str) -> bool:
    """A label misread by one character ("生名" for 姓名) is not a name."""
    return any(
        len(value) == len(label) and sum(x != y for x, y in zip(value, label, strict=True)) <= 1
        for label in _NAME_LIKE_LABELS
    )


def value_of(
    spec: FieldSpec, raw: str, stop: list[str] | tuple[str, ...] = ()
) -> tuple[str | None, bool]:
    """The canonical value of ``spec`` in ``raw`` text and whether it is valid.

    ``stop`` labels end the value (text read past the field's end is dropped).
    """
    search = spec.kind_def.search
    if search is not None:
        # A word that is a whole code wins over a run of words: in "4 120101199012296049"
        # the 4 is a speck of the seal, not the code's first digit.
        for word in norm.to_halfwidth(raw).split():
            if search.fullmatch(word):
                return spec.kind_def.check(word)
    text = cut_at_labels(raw, stop) if stop else raw
    text = text.strip(_PUNCT_LEAD)
    if spec.kind == "month":
        # "2019年01月 至 2024年06月": take the part's own segment, so one unreadable
        # month cannot shift the other into its place.
        segments = re.split(r"至|到|~|～", text)
        if len(segments) > 1:
            found = norm.find_months(segments[spec.part]) if len(segments) > spec.part else []
            return (found[0], True) if found else (None, False)
        months = norm.find_months(text)
        if len(months) > spec.part:
            return months[spec.part], True
        return None, False
    if spec.kind == "date":
        dates = norm.find_dates(text)
        if len(dates) > spec.part:
            return dates[spec.part], True
        value = norm.normalize_date(text)
        return value, value is not None
    if search is not None:
        compact = norm.remove_spaces(norm.to_halfwidth(text))
        m = search.search(compact)
        value, valid = spec.kind_def.check(m.group(0) if m else compact)
        if not valid and spec.kind in CHECKED_KINDS:
            value, valid = _one_valid_window(spec.kind, compact) or (value, valid)
        return value, valid
    if spec.kind == "name":
        # A name is the first run of CJK characters (or Latin words) after the label.
        compact = norm.remove_spaces(norm.to_halfwidth(text))
        m = re.search(r"[\u3400-\u9fff·]{2,}", compact)
        if m:
            name = m.group(0)[: spec.max_chars]
            if _looks_like_label(name):
                return name, False
            return norm.check("name", name)
        m = re.search(r"[A-Za-z][A-Za-z .'-]+", text)
        return norm.check("name", m.group(0)) if m else (None, False)
    if spec.kind == "text":
        text = norm.cjk_spacing(norm.to_halfwidth(text))[: spec.max_chars]
        # The closing bracket at a line's end is the character OCR most often drops.
        if text.count("(") == text.count(")") + 1 and not text.endswith(")"):
            text += ")"
    return spec.kind_def.check(text)
