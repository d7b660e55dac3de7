"""CTC arithmetic on a recognizer's per-timestep probabilities, in numpy.

PP-OCR's recognizer ends in a CTC head: for each of ``T`` horizontal timesteps it gives
a probability over its character set plus a *blank* (index 0). A string is read off by
collapsing repeats and dropping blanks; the probability of a string is the sum over every
timestep path that collapses to it (the CTC forward algorithm).

That lets stampless ask a question a plain reading cannot answer: *how well does this
image support the department's value?* :func:`log_likelihood` scores any string under
the image; :func:`beam_search` lists the strings the image supports best. The margin
between the record's string and the best string that is not the record's value is the
evidence a field is verified on (:mod:`stampless.ocr.verify`).

Matrices are stored compressed (:class:`TopK`): the ``k`` most likely classes per
timestep plus the blank. A class outside them is given the ``k``-th probability of its
timestep, an upper bound, which is far below what a supported character needs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

BLANK = 0
# Log-probability floor: log(1e-12). Keeps sums finite when a class has probability 0.
LOG_FLOOR = -27.6


@dataclass(frozen=True)
class TopK:
    """A recognizer's output for one text line, compressed to the likeliest classes.

    ``classes[t]`` are class indices (int32, the blank always among them), ``logp[t]``
    their log-probabilities (float32), ``floor[t]`` the log-probability given to any
    class not listed at ``t``. ``width`` is the line crop's width in recognizer input
    pixels (each timestep covers ``width / T`` of them).
    """

    classes: np.ndarray  # (T, k) int32
    logp: np.ndarray  # (T, k) float32
    floor: np.ndarray  # (T,) float32

    @property
    def steps(self) -> int:
        return int(self.classes.shape[0])

    @classmethod
    def from_probs(cls, probs: np.ndarray, k: int = 24) -> TopK:
        """Compress a ``(T, C)`` probability matrix to its ``k`` likeliest classes per step."""
        probs = np.asarray(probs, dtype=np.float32)
        t, c = probs.shape
        k = min(k, c)
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        # The blank is always kept: most timesteps are blanks, and scoring needs it.
        has_blank = (top == BLANK).any(axis=1)
        top[~has_blank, k - 1] = BLANK
        rows = np.arange(t)[:, None]
        values = probs[rows, top]
        order = np.argsort(-values, axis=1)
        top = top[rows, order].astype(np.int32)
        values = values[rows, order]
        logp = np.log(np.maximum(values, 1e-12)).astype(np.float32)
        # Everything unlisted is at most the smallest listed non-blank probability.
        nonblank = np.where(top == BLANK, np.inf, values)
        floor = np.log(np.maximum(nonblank.min(axis=1), 1e-12)).astype(np.float32)
        return cls(top, logp, floor)

    def column(self, label: int) -> np.ndarray:
        """Log-probability of class ``label`` at every timestep (the floor where unlisted)."""
        hit = self.classes == label
        out = self.floor.copy()
        rows = hit.any(axis=1)
        out[rows] = self.logp[hit]
        return out

    def greedy(self) -> tuple[list[int], list[int]]:
        """Best-path decoding: (labels, the timestep each label peaks at)."""
        best = self.classes[:, 0]
        labels: list[int] = []
        steps: list[int] = []
        previous = BLANK
        for t, label in enumerate(best.tolist()):
            if label != BLANK and label != previous:
                labels.append(label)
                steps.append(t)
            previous = label
        return labels, steps

    def part(self, lo: int, hi: int) -> TopK:
        """Timesteps ``lo``..``hi`` alone (one value's window of a line)."""
        return TopK(self.classes[lo:hi], self.logp[lo:hi], self.floor[lo:hi])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"classes": self.classes, "logp": self.logp, "floor": self.floor}

    @classmethod
    def from_arrays(cls, classes: np.ndarray, logp: np.ndarray, floor: np.ndarray) -> TopK:
        return cls(
            np.asarray(classes, np.int32),
            np.asarray(logp, np.float32),
            np.asarray(floor, np.float32),
        )


# A value's window of timesteps reaches this many beyond its first and last character,
# and never into a neighbouring character's peak.
EDGE_STEPS = 3


def span_window(matrix: TopK, text: str, start: int, end: int) -> tuple[int, int] | None:
    """The timesteps ``(lo, hi)`` covering characters ``start``..``end`` of ``text``, the
    line's greedy reading (:meth:`TopK.greedy`); None when ``text`` is not that reading
    (its characters cannot be placed on the scores)."""
    _, steps = matrix.greedy()
    if len(steps) != len(text):
        return None
    lo = steps[start] - EDGE_STEPS if start < len(steps) else 0
    hi = steps[end - 1] + EDGE_STEPS + 1 if 0 < end <= len(steps) else matrix.steps
    if start > 0:
        lo = max(lo, steps[start - 1] + 1)
    if end < len(steps):
        hi = min(hi, steps[end])
    return max(0, lo), min(matrix.steps, max(hi, lo + 1))


def log_likelihood(matrix: TopK, labels: list[int]) -> float:
    """log P(labels | image): the CTC forward algorithm over every alignment.

    Returns :data:`LOG_FLOOR` times the length for a string too long to fit the line
    (more characters than timesteps allow).
    """
    t_len = matrix.steps
    n = len(labels)
    if n == 0:
        return float(matrix.column(BLANK).sum())
    # Extended label sequence: blank, l1, blank, l2, ..., blank.
    ext = [BLANK]
    for label in labels:
        ext += [label, BLANK]
    s = len(ext)
    repeats = sum(1 for a, b in itertools.pairwise(labels) if a == b)
    if n + repeats > t_len:
        return LOG_FLOOR * max(1, n)
    columns = {label: matrix.column(label) for label in set(ext)}
    emit = np.stack([columns[label] for label in ext], axis=1)  # (T, S)
    # A skip over a blank is allowed into a non-blank that differs from the one before.
    can_skip = np.zeros(s, dtype=bool)
    for i in range(2, s):
        can_skip[i] = ext[i] != BLANK and ext[i] != ext[i - 2]
    alpha = np.full(s, -np.inf)
    alpha[0] = emit[0, 0]
    if s > 1:
        alpha[1] = emit[0, 1]
    for t in range(1, t_len):
        stay = alpha
        step = np.concatenate(([-np.inf], alpha[:-1]))
        skip = np.where(can_skip, np.concatenate(([-np.inf, -np.inf], alpha[:-2])), -np.inf)
        alpha = np.logaddexp(np.logaddexp(stay, step), skip) + emit[t]
    total = np.logaddexp(alpha[-1], alpha[-2]) if s > 1 else alpha[-1]
    return float(max(total, LOG_FLOOR * max(1, n)))


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


def _add(
    beams: dict[tuple[int, ...], list[float]], prefix: tuple[int, ...], blank: float, other: float
) -> None:
    scores = beams.setdefault(prefix, [-math.inf, -math.inf])
    scores[0] = _logadd(scores[0], blank)
    scores[1] = _logadd(scores[1], other)


def beam_search(
    matrix: TopK, *, beam: int = 8, per_step: int = 6
) -> list[tuple[tuple[int, ...], float]]:
    """The ``beam`` likeliest strings (as label tuples) with their log-probabilities.

    CTC prefix beam search: each prefix keeps two scores, paths ending in a blank and
    paths ending in its last label, so repeats and blanks are counted as CTC counts
    them. Only the ``per_step`` likeliest classes of each timestep are extended.
    """
    blank_column = matrix.column(BLANK).tolist()
    classes = matrix.classes[:, :per_step].tolist()
    logps = matrix.logp[:, :per_step].tolist()
    # prefix -> [log p of paths ending in a blank, log p of paths ending in its last label]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, -math.inf]}
    for t in range(matrix.steps):
        step: dict[tuple[int, ...], list[float]] = {}
        blank_lp = blank_column[t]
        for prefix, (pb, pnb) in beams.items():
            total = _logadd(pb, pnb)
            _add(step, prefix, total + blank_lp, -math.inf)
            for label, lp in zip(classes[t], logps[t], strict=True):
                if label == BLANK:
                    continue
                if prefix and prefix[-1] == label:
                    # A repeat needs a blank between; without one the label just continues.
                    _add(step, (*prefix, label), -math.inf, pb + lp)
                    _add(step, prefix, -math.inf, pnb + lp)
                else:
                    _add(step, (*prefix, label), -math.inf, total + lp)
        ranked = sorted(step.items(), key=lambda kv: -_logadd(kv[1][0], kv[1][1]))
        beams = dict(ranked[:beam])
    out = [(prefix, _logadd(pb, pnb)) for prefix, (pb, pnb) in beams.items()]
    out = [(prefix, score) for prefix, score in out if score > -math.inf]
    out.sort(key=lambda item: -item[1])
    return out
