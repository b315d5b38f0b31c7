"""Segment stage on synthetic pages: noise, fragments, touching characters, clean crops."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwr_batch import defaults
from hwr_batch.classify import Classifier
from hwr_batch.normalize import normalize
from hwr_batch.preprocess import preprocess
from hwr_batch.segment import (
    Segmentation,
    _Lattice,
    _worth_reading,
    merge_fragments,
    pairs_within,
    segment,
)

PEN = 6


def ring(canvas: np.ndarray, cx: int, cy: int, rx: int = 20, ry: int = 30) -> None:
    """A handwritten-looking zero: an ellipse outline."""
    cv2.ellipse(canvas, (cx, cy), (rx, ry), 0, 0, 360, 255, PEN, cv2.LINE_AA)


def page_with(draw, shape: tuple[int, int] = (500, 900), n_rings: int = 6) -> np.ndarray:
    """Gray page: a row of separate zeros (they set the text height) plus what ``draw`` adds."""
    ink = np.zeros(shape, np.uint8)
    for i in range(n_rings):
        ring(ink, 80 + 70 * i, 120)
    draw(ink)
    return np.where(ink > 127, 25, 235).astype(np.uint8)


def boxes(seg: Segmentation) -> list[tuple[int, int, int, int]]:
    return sorted(c.bbox for c in seg.chars)


def in_row(seg: Segmentation, y0: int, y1: int) -> list[tuple[int, int, int, int]]:
    return sorted(b for b in boxes(seg) if y0 <= b[1] + b[3] / 2 < y1)


def test_separate_characters_and_text_height() -> None:
    seg = segment(preprocess(page_with(lambda ink: None)))
    assert len(seg.chars) == 6
    assert seg.text_height == pytest.approx(66, abs=6)
    for c in seg.chars:
        assert c.image.shape == (28, 28) and c.image.dtype == np.float32
        assert c.image.min() >= 0.0 and c.image.max() <= 1.0 and c.image.max() > 0.5


def test_specks_are_noise_relative_to_text_height() -> None:
    rng = np.random.default_rng(1)

    def specks(ink: np.ndarray) -> None:
        for _ in range(80):
            y, x = int(rng.integers(200, 480)), int(rng.integers(10, 880))
            ink[y : y + 3, x : x + 3] = 255

    seg = segment(preprocess(page_with(specks)))
    assert len(seg.chars) == 6
    assert seg.n_noise >= 70


def test_fragments_of_one_character_are_merged() -> None:
    def five_and_i(ink: np.ndarray) -> None:
        # A 5 whose top bar was lifted off the body: a hook and a separate bar.
        cv2.line(ink, (300, 290), (300, 320), 255, PEN)
        cv2.ellipse(ink, (310, 340), (22, 20), 0, 200, 520, 255, PEN)
        cv2.line(ink, (306, 278), (336, 278), 255, PEN)
        # An i: a stem and its dot.
        cv2.line(ink, (500, 300), (500, 360), 255, PEN)
        cv2.circle(ink, (500, 282), 5, 255, -1)

    seg = segment(preprocess(page_with(five_and_i)))
    row = in_row(seg, 250, 400)
    assert len(row) == 2, row
    five, i = row
    assert five[1] <= 278 and five[1] + five[3] >= 355  # bar and hook in one box
    assert i[1] <= 280 and i[1] + i[3] >= 358  # dot and stem in one box
    assert seg.n_merged >= 2


def test_merge_fragments_keeps_neighbours_apart() -> None:
    th = 60.0
    stats = np.array(
        [
            [0, 20, 40, 60],  # a character
            [50, 20, 40, 60],  # its neighbour, 10 px away
            [100, 0, 30, 10],  # a bar over the third character
            [100, 22, 35, 58],  # the third character
        ]
    )
    groups = sorted(sorted(g) for g in merge_fragments(stats, th))
    assert groups == [[0], [1], [2, 3]]


def test_touching_zeros_in_one_stroke_are_split(digits: Classifier) -> None:
    def chain(ink: np.ndarray) -> None:
        for k in range(3):
            ring(ink, 200 + 38 * k, 330)  # overlapping outlines: one connected component

    page = page_with(chain)
    prep = preprocess(page)
    n, _ = cv2.connectedComponents(prep.ink[250:400].astype(np.uint8))
    assert n - 1 == 1  # the three zeros really touch
    seg = segment(prep, scorer=digits.predict_proba)
    row = in_row(seg, 250, 400)
    assert len(row) == 3, row
    assert seg.n_split == 2
    labels, _ = digits.predict(np.stack([c.image for c in seg.chars]))
    assert labels.count("0") == 9  # six separate zeros and the three of the chain


def test_wide_single_character_is_not_split(digits: Classifier) -> None:
    page = page_with(lambda ink: ring(ink, 400, 330, rx=34, ry=30))
    seg = segment(preprocess(page), scorer=digits.predict_proba)
    assert len(in_row(seg, 250, 400)) == 1


def test_broken_stroke_merged_by_recognition(digits: Classifier) -> None:
    def broken(ink: np.ndarray) -> None:
        ring(ink, 400, 330)
        ink[:, 398:401] = 0  # a pen lift cuts the zero into left and right halves

    seg = segment(preprocess(page_with(broken)), scorer=digits.predict_proba)
    row = in_row(seg, 250, 400)
    assert len(row) == 1, row
    x, _, w, _ = row[0]
    assert x <= 382 and x + w >= 418


def test_slanted_stroke_cut_across_merged_by_recognition(digits: Classifier) -> None:
    """A slanted 1 cut across leaves two pieces neither side by side nor squarely stacked."""

    def slanted_one(ink: np.ndarray) -> None:
        cv2.line(ink, (425, 295), (395, 365), 255, PEN, cv2.LINE_AA)
        ink[327:331, :] = 0  # a pen lift across the stroke

    page = page_with(slanted_one)
    prep = preprocess(page)
    n, _ = cv2.connectedComponents(prep.ink[250:400].astype(np.uint8))
    assert n - 1 == 2  # the stroke really is in two pieces
    seg = segment(prep, scorer=digits.predict_proba)
    row = in_row(seg, 250, 400)
    assert len(row) == 1, row
    _, y, _, h = row[0]
    assert y <= 300 and y + h >= 360
    label, _ = digits.predict(row_images(seg, 250, 400))
    assert label == ["1"]


def row_images(seg: Segmentation, y0: int, y1: int) -> np.ndarray:
    return np.stack([c.image for c in seg.chars if y0 <= c.bbox[1] + c.bbox[3] / 2 < y1])


def test_without_scorer_wide_groups_are_cut_by_width() -> None:
    def chain(ink: np.ndarray) -> None:
        for k in range(3):
            ring(ink, 200 + 38 * k, 330)

    seg = segment(preprocess(page_with(chain)))
    assert len(in_row(seg, 250, 400)) >= 2


def test_crop_blanks_neighbouring_ink() -> None:
    def zero_and_intruder(ink: np.ndarray) -> None:
        ring(ink, 400, 330)
        # A slanted stroke whose box reaches into the zero's box without touching it.
        cv2.line(ink, (450, 380), (426, 300), 255, PEN)

    page = page_with(zero_and_intruder)
    seg = segment(preprocess(page))
    zero = [c for c in seg.chars if abs(c.bbox[0] + c.bbox[2] / 2 - 400) < 10 and c.bbox[1] > 250]
    assert len(zero) == 1
    alone = np.full((500, 900), 235, np.uint8)
    ink = np.zeros_like(alone)
    ring(ink, 400, 330)
    alone[ink > 127] = 25
    x, y, w, h = zero[0].bbox
    expected = normalize(alone[y : y + h, x : x + w])
    assert np.abs(zero[0].image - expected).max() < 0.15


def test_region_limits_the_search() -> None:
    seg = segment(preprocess(page_with(lambda ink: None)), region=(0, 0, 220, 500))
    assert len(seg.chars) == 2  # the rings at x = 80 and 150


def test_blank_page_gives_no_characters() -> None:
    seg = segment(preprocess(np.full((400, 400), 240, np.uint8)))
    assert seg.chars == [] and seg.text_height == 0.0


def test_cut_candidates_lean_with_the_characters() -> None:
    """Two strokes leaning side by side overlap in every column: only a slanted cut parts them."""
    from hwr_batch.segment import _cut_candidates, _piece

    ink = np.zeros((70, 60), np.uint8)
    for x0 in (8, 30):  # two "1"s leaning right, 22 px apart: their columns overlap
        cv2.line(ink, (x0 + 20, 3), (x0, 66), 255, 5)
    ink[33:37, 18:42] = 255  # a bar joining them into one component
    mask = ink > 127
    assert not (mask.sum(axis=0) == 0)[15:45].any()  # no empty column between them
    cuts = _cut_candidates(mask, text_h=66.0)
    slanted = [c for c in cuts if c[1] < 0]
    assert slanted, cuts
    crop = np.where(mask, 0, 255).astype(np.uint8)
    best = min(slanted, key=lambda c: abs(c[0] - 29))
    left = _piece(crop, mask, (0.0, 0.0), best)
    right = _piece(crop, mask, best, (60.0, 0.0))
    assert left is not None and right is not None
    # Each piece holds one whole stroke (full height), and no ink is in both.
    assert left[1][3] >= 60 and right[1][3] >= 60
    n_left = int((left[0] < 128).sum())
    n_right = int((right[0] < 128).sum())
    assert n_left + n_right == int(mask.sum())


def test_verifier_is_asked_only_where_segmentation_has_choices(digits: Classifier) -> None:
    """Separate characters reach the verifier only if they are wide enough to hold two (and
    then once, whole, when it does not doubt them); so do the pieces of a wide group that
    could read better than the whole."""
    asked: list[int] = []

    def verifier_saying(p_one: float) -> Callable[[np.ndarray], np.ndarray]:
        def verifier(x: np.ndarray) -> np.ndarray:
            asked.append(len(x))
            return np.tile(np.array([[1 - p_one, p_one]], np.float32), (len(x), 1))

        return verifier

    sure = verifier_saying(0.9)
    seg = segment(preprocess(page_with(lambda ink: None)), digits.predict_proba, verifier=sure)
    assert len(seg.chars) == 6
    th = seg.text_height
    roomy = [c for c in seg.chars if c.bbox[2] > defaults.SPLIT_NARROW_ASPECT * max(c.bbox[3], th)]
    assert sum(asked) == len(roomy)  # once each, whole; narrower ones never

    def chain(ink: np.ndarray) -> None:
        for k in range(3):
            ring(ink, 200 + 38 * k, 330)

    asked.clear()
    seg = segment(preprocess(page_with(chain)), digits.predict_proba, verifier=verifier_saying(0.5))
    # A verifier without an opinion (P(one) = 0.5 everywhere) adds log 2 per piece: the three
    # zeros of the chain still read best as three.
    assert len(in_row(seg, 250, 400)) == 3
    assert sum(asked) >= 3


def test_verifier_doubt_makes_the_whole_lose(digits: Classifier) -> None:
    """Every piece costs -log P(one): a verifier that accepts only the whole group keeps the
    three touching zeros together, one that rejects it splits them (as the classifier does)."""

    def chain(ink: np.ndarray) -> None:
        for k in range(3):
            ring(ink, 200 + 38 * k, 330)

    prep = preprocess(page_with(chain))

    def whole_only(x: np.ndarray) -> np.ndarray:
        # The whole chain is the widest model input: its ink spans the 20-px box across.
        ink_w = np.array([np.ptp(np.nonzero(im.max(axis=0) > 0.3)[0]) for im in x])
        p = np.where(ink_w >= ink_w.max(), 0.999, 0.001).astype(np.float32)
        return np.stack([1 - p, p], axis=1)

    assert len(in_row(segment(prep, digits.predict_proba, verifier=whole_only), 250, 400)) == 1
    assert len(in_row(segment(prep, digits.predict_proba, verifier=False), 250, 400)) == 3


def test_a_sure_whole_spares_its_pieces_the_classifier(digits: Classifier) -> None:
    """Pieces that could not beat their whole group even if read with certainty are never
    classified: the verifier that accepts only the whole chain leaves nothing to score after
    the page's batch; without a verifier the pieces are scored and the chain splits."""

    def chain(ink: np.ndarray) -> None:
        for k in range(3):
            ring(ink, 200 + 38 * k, 330)

    prep = preprocess(page_with(chain))
    scored: list[int] = []

    def counting(x: np.ndarray) -> np.ndarray:
        scored.append(len(x))
        return digits.predict_proba(x)

    calls: list[int] = []

    def whole_only(x: np.ndarray) -> np.ndarray:
        # First asked about the separate zeros (all sure), then about the chain: sure of the
        # whole (the only input with ink under 13 px tall), sure that no piece is one character.
        calls.append(len(x))
        ink_h = (x > 0.3).any(axis=2).sum(axis=1)
        p = np.where((len(calls) == 1) | (ink_h <= 12), 0.999, 0.001).astype(np.float32)
        return np.stack([1 - p, p], axis=1)

    seg = segment(prep, counting, verifier=whole_only)
    assert len(in_row(seg, 250, 400)) == 1
    assert scored == [len(seg.chars)]  # the page's one batch, and nothing else
    scored.clear()
    seg = segment(prep, counting, verifier=False)
    assert len(in_row(seg, 250, 400)) == 3
    assert len(scored) == 2 and scored[1] >= 3


@st.composite
def cut_lattices(draw: st.DrawFn) -> tuple[int, list, np.ndarray, np.ndarray]:
    """A group's cut points, its pieces (the whole first; each other span of up to four
    intervals present or not), shape costs that may be negative, and readings >= 0."""
    n_pts = draw(st.integers(3, 7))
    spans = [(i, j) for i in range(n_pts) for j in range(i + 1, min(n_pts, i + 5))]
    spans = [sp for sp in spans if sp != (0, n_pts - 1)]
    kept = draw(st.lists(st.booleans(), min_size=len(spans), max_size=len(spans)))
    pieces = [(0, 0, n_pts - 1, (0, 0, 1, 1))]
    pieces += [(0, i, j, (0, 0, 1, 1)) for (i, j), k in zip(spans, kept, strict=True) if k]
    costs = st.floats(-0.4, 2.0, allow_nan=False)
    shape = np.array(draw(st.lists(costs, min_size=len(pieces), max_size=len(pieces))))
    # Sure readings (cost 0) are what make a cheap floor reachable: draw them often.
    reads = st.one_of(st.just(0.0), st.floats(0.0, 4.0, allow_nan=False))
    read = np.array(draw(st.lists(reads, min_size=len(pieces), max_size=len(pieces))))
    return n_pts, pieces, shape, read


@st.composite
def box_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Up to 40 boxes (x0, y0 as float64 (N, 2); sizes (N, 2)) with x ties, and a size limit."""
    n = draw(st.integers(0, 40))
    coords = st.integers(0, 120).map(float)
    xy = np.array(draw(st.lists(st.tuples(coords, coords), min_size=n, max_size=n)), np.float64)
    sizes = st.integers(0, 40).map(float)
    wh = np.array(draw(st.lists(st.tuples(sizes, sizes), min_size=n, max_size=n)), np.float64)
    limit = st.integers(0, 90).map(float)
    return xy.reshape(-1, 2), wh.reshape(-1, 2), draw(limit), draw(limit)


@settings(max_examples=300, deadline=None)
@given(box_sets())
def test_pairs_within_lists_the_pairs_the_pairwise_test_finds(
    boxes_and_limits: tuple[np.ndarray, np.ndarray, float, float],
) -> None:
    """The x sweep finds exactly the pairs (in the same order) that testing every pair finds."""
    xy, wh, max_w, max_h = boxes_and_limits
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = x0 + wh[:, 0], y0 + wh[:, 1]
    uw = np.maximum(x1[:, None], x1[None, :]) - np.minimum(x0[:, None], x0[None, :])
    uh = np.maximum(y1[:, None], y1[None, :]) - np.minimum(y0[:, None], y0[None, :])
    want_i, want_j = np.nonzero(np.triu((uw <= max_w) & (uh <= max_h), 1))
    got_i, got_j = pairs_within(x0, y0, x1, y1, max_w, max_h)
    assert got_i.tolist() == want_i.tolist() and got_j.tolist() == want_j.tolist()


def test_merge_fragments_on_a_page_of_thousands_of_characters() -> None:
    """A dense page (a grid of 6,400 characters, each with its i-dot) merges each dot with its
    own stem and nothing else: grouping looks at neighbours only, so such a page no longer
    needs 6,400 x 6,400 pairwise arrays (about 330 MB each) to be read."""
    th = 20.0
    stems = [[40 * c, 40 * r + 6, 6, 20] for r in range(80) for c in range(80)]
    dots = [[40 * c + 1, 40 * r, 4, 4] for r in range(80) for c in range(80)]
    stats = np.array(stems + dots)
    groups = merge_fragments(stats, th)
    assert len(groups) == 6400
    n = len(stems)
    assert sorted(sorted(g) for g in groups) == [[k, k + n] for k in range(n)]


def _lattice_of(pieces: list) -> _Lattice:
    """One group's pieces, the whole first, with no crops (only their costs are looked at)."""
    lattice = _Lattice()
    lattice.wholes[0] = 0
    for piece in pieces:
        lattice.add(piece, None)
    return lattice


def _best_path(n_pts: int, pieces: list, cost: np.ndarray, allowed: list[int]) -> float:
    best = np.full(n_pts, np.inf)
    best[0] = 0.0
    for j in range(1, n_pts):
        for k in allowed:
            _, i, end, _ = pieces[k]
            if end == j:
                best[j] = min(best[j], best[i] + cost[k])
    return float(best[-1])


@settings(max_examples=300, deadline=None)
@given(cut_lattices())
def test_pruned_pieces_could_not_have_been_chosen(
    lattice: tuple[int, list, np.ndarray, np.ndarray],
) -> None:
    """_worth_reading drops only pieces that lie on no path cheaper than the whole group, so
    the best path over the whole and the kept pieces is the best over all of them."""
    n_pts, pieces, shape, read = lattice
    floor_read = np.zeros(len(pieces))
    floor_read[0] = read[0]  # the whole's reading is known; the pieces' are not yet
    kept = _worth_reading(_lattice_of(pieces), shape, floor_read)
    assert 0 not in kept
    full = _best_path(n_pts, pieces, shape + read, list(range(len(pieces))))
    assert _best_path(n_pts, pieces, shape + read, [0, *kept]) == full


def test_pieces_no_path_can_use_are_dropped() -> None:
    """Three points: the whole costs 1.0; pieces 0-1 and 1-2 cost 0.4 and 0.7 before reading
    (1.1 together, more than the whole), so neither is worth reading; at 0.2 + 0.7 both are."""
    pieces = [(0, 0, 2, (0, 0, 1, 1)), (0, 0, 1, (0, 0, 1, 1)), (0, 1, 2, (0, 0, 1, 1))]
    read = np.array([0.5, 0.0, 0.0])
    lattice = _lattice_of(pieces)
    assert _worth_reading(lattice, np.array([0.5, 0.4, 0.7]), read) == []
    assert _worth_reading(lattice, np.array([0.5, 0.2, 0.7]), read) == [1, 2]


def test_two_touching_ones_split_when_the_verifier_doubts_them(digits: Classifier) -> None:
    """Two 1s leaning together make a group narrower than one character (not a wide group):
    it is searched for a split only when the verifier doubts it is one character."""

    def ones(ink: np.ndarray) -> None:
        # Two strokes 66 px tall whose feet touch: the group is ~0.55 text heights wide.
        cv2.line(ink, (300, 300), (312, 366), 255, PEN, cv2.LINE_AA)
        cv2.line(ink, (336, 300), (316, 366), 255, PEN, cv2.LINE_AA)

    def verifier_saying(p_whole: float) -> Callable[[np.ndarray], np.ndarray]:
        def verifier(x: np.ndarray) -> np.ndarray:
            # The pair is wide with no ink at the top middle (a V); a zero has ink there, a
            # single stroke is narrow. Those two are sure of themselves.
            ink_w = (x > 0.3).any(axis=1).sum(axis=1)
            gap = x[:, 3:8, 12:16].max(axis=(1, 2)) < 0.3
            p = np.where((ink_w >= 10) & gap, p_whole, 0.9).astype(np.float32)
            return np.stack([1 - p, p], axis=1)

        return verifier

    page = preprocess(page_with(ones))
    sure = segment(page, digits.predict_proba, verifier=verifier_saying(0.95))
    th = sure.text_height
    (whole,) = in_row(sure, 280, 400)
    assert defaults.SPLIT_NARROW_ASPECT * th < whole[2] < defaults.SPLIT_MIN_ASPECT * th
    doubt = segment(page, digits.predict_proba, verifier=verifier_saying(0.05))
    assert len(in_row(doubt, 280, 400)) == 2


def test_narrow_groups_are_not_searched_for_letters_models(digits: Classifier) -> None:
    """A model of more than SPLIT_MANY_CLASSES classes (letters, alnum) leaves narrow groups
    whole without asking the verifier (VERIFY_NARROW_BELOW_MANY = 0): the two touching 1s the
    digit model splits stay one character, and only the page's roomy groups are verified."""

    def ones(ink: np.ndarray) -> None:
        cv2.line(ink, (300, 300), (312, 366), 255, PEN, cv2.LINE_AA)
        cv2.line(ink, (336, 300), (316, 366), 255, PEN, cv2.LINE_AA)

    def many_classes(x: np.ndarray) -> np.ndarray:
        # The digit model's answer padded with 26 classes that never win: as many classes as
        # alnum, the same choices.
        p = digits.predict_proba(x)
        return np.concatenate([p, np.zeros((len(p), 26), np.float32)], axis=1)

    asked: list[np.ndarray] = []

    def doubting(x: np.ndarray) -> np.ndarray:
        asked.append(x)
        p = np.full(len(x), 0.05, np.float32)
        return np.stack([1 - p, p], axis=1)

    page = preprocess(page_with(ones))
    assert defaults.VERIFY_NARROW_BELOW_MANY == 0
    assert len(in_row(segment(page, digits.predict_proba, verifier=doubting), 280, 400)) == 2
    asked.clear()
    seg = segment(page, many_classes, verifier=doubting)
    (whole,) = in_row(seg, 280, 400)
    th = seg.text_height
    assert whole[2] < defaults.SPLIT_MIN_ASPECT * th
    # Nothing on this page is wider than SPLIT_MIN_ASPECT: the zeros (which a digit model's
    # verifier sees once each) and the pair went unasked.
    assert not asked
