"""CTC arithmetic (stampless.ocr.ctc) against brute force on small matrices."""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stampless.ocr.ctc import BLANK, TopK, beam_search, log_likelihood


def _collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out: list[int] = []
    previous = None
    for label in path:
        if label != previous and label != BLANK:
            out.append(label)
        previous = label
    return tuple(out)


def _brute(probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """Probability of every string: the sum over every path that collapses to it."""
    t, c = probs.shape
    out: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(c), repeat=t):
        p = float(np.prod([probs[i, label] for i, label in enumerate(path)]))
        key = _collapse(path)
        out[key] = out.get(key, 0.0) + p
    return out


matrices = st.tuples(st.integers(1, 5), st.integers(2, 4)).flatmap(
    lambda shape: st.lists(
        st.lists(st.floats(0.01, 1.0), min_size=shape[1], max_size=shape[1]),
        min_size=shape[0],
        max_size=shape[0],
    ).map(lambda rows: np.asarray(rows) / np.asarray(rows).sum(axis=1, keepdims=True))
)


@settings(max_examples=80, deadline=None)
@given(matrices)
def test_forward_equals_the_sum_over_paths(probs: np.ndarray) -> None:
    matrix = TopK.from_probs(probs, k=probs.shape[1])
    for labels, p in _brute(probs).items():
        assert math.isclose(log_likelihood(matrix, list(labels)), math.log(p), abs_tol=1e-4)


@settings(max_examples=60, deadline=None)
@given(matrices)
def test_beam_search_finds_the_likeliest_strings(probs: np.ndarray) -> None:
    matrix = TopK.from_probs(probs, k=probs.shape[1])
    truth = sorted(_brute(probs).items(), key=lambda kv: -kv[1])
    found = beam_search(matrix, beam=64, per_step=probs.shape[1])
    # With a beam wider than the number of strings, the search is exact.
    # (Two strings may tie: then either is the likeliest, to float32 precision.)
    assert math.isclose(found[0][1], math.log(truth[0][1]), abs_tol=1e-5)
    for labels, score in found:
        assert math.isclose(score, math.log(dict(truth)[labels]), abs_tol=1e-4)


def test_a_string_longer_than_the_line_is_impossible() -> None:
    probs = np.full((3, 4), 0.25)
    matrix = TopK.from_probs(probs, k=4)
    # "1 1 1" needs blanks between the repeats: five timesteps, not three.
    assert log_likelihood(matrix, [1, 1, 1]) < log_likelihood(matrix, [1, 2, 3]) - 10


def test_unlisted_classes_get_the_floor_of_their_timestep() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(40), size=12)
    matrix = TopK.from_probs(probs, k=5)
    assert matrix.classes.shape == (12, 5)
    assert (matrix.classes == BLANK).any(axis=1).all()
    column = matrix.column(39)
    for t in range(12):
        listed = matrix.classes[t].tolist()
        if 39 in listed:
            assert math.isclose(column[t], math.log(probs[t, 39]), rel_tol=1e-5)
        else:
            # An upper bound of the true probability, from the smallest listed one.
            assert column[t] >= math.log(probs[t, 39]) - 1e-6
    again = TopK.from_arrays(**matrix.to_arrays())
    assert np.array_equal(again.classes, matrix.classes)
