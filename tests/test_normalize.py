"""The shared normaliser: invariants (hypothesis), MNIST convention, and training/reading parity."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hwr_batch import defaults, normalize
from hwr_batch.segment import model_input
from training.datasets import normalize_to_u8


def _check(out: np.ndarray) -> None:
    assert out.dtype == np.float32
    assert out.shape == (28, 28)
    assert not np.isnan(out).any()
    assert out.min() >= 0.0
    assert out.max() <= 1.0


@settings(max_examples=150, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 120), st.integers(1, 120)),
        elements=st.integers(0, 255),
    ),
    st.booleans(),
)
def test_any_uint8_crop_gives_valid_input(crop: np.ndarray, dark_ink: bool) -> None:
    _check(normalize(crop, dark_ink=dark_ink))


@settings(max_examples=80, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 60), st.integers(1, 60)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=32),
    )
)
def test_any_float_crop_even_nan_gives_valid_input(crop: np.ndarray) -> None:
    _check(normalize(crop))


@pytest.mark.parametrize("shape", [(1, 1), (1, 50), (50, 1), (3, 200), (300, 2)])
def test_degenerate_shapes(shape: tuple[int, int]) -> None:
    for value in (0, 255):
        _check(normalize(np.full(shape, value, np.uint8)))


def test_no_ink_is_all_zeros() -> None:
    assert normalize(np.full((40, 30), 255, np.uint8)).max() == 0.0
    assert normalize(np.zeros((40, 30), np.uint8), dark_ink=False).max() == 0.0


def test_all_ink_fills_the_glyph_box() -> None:
    out = normalize(np.zeros((40, 40), np.uint8))  # dark ink everywhere
    assert np.count_nonzero(out > 0.5) == defaults.GLYPH_BOX**2


def test_one_pixel_line_is_kept_and_thickened() -> None:
    page = np.full((100, 100), 255, np.uint8)
    page[10:90, 50] = 0  # a 1-px vertical stroke, 80 px long
    out = normalize(page)
    _check(out)
    rows = np.nonzero(out.max(axis=1) > 0.5)[0]
    assert rows.max() - rows.min() + 1 == defaults.GLYPH_BOX  # long side fitted to 20 px
    width = np.count_nonzero(out[14] > 0.2)
    assert width >= 2  # thickened, not a faint sub-pixel line


def test_mnist_convention_box_and_centre_of_mass() -> None:
    crop = np.full((90, 40), 255, np.uint8)
    cv2.ellipse(crop, (20, 45), (15, 40), 0, 0, 360, 0, 5)  # a tall "0"
    out = normalize(crop)
    ys, xs = np.nonzero(out > 0.2)
    assert ys.max() - ys.min() + 1 <= defaults.GLYPH_BOX + 1
    assert xs.max() - xs.min() + 1 < ys.max() - ys.min() + 1  # aspect ratio kept
    total = out.sum()
    cy = (out.sum(axis=1) * np.arange(28)).sum() / total
    cx = (out.sum(axis=0) * np.arange(28)).sum() / total
    assert abs(cy - 13.5) < 1.0
    assert abs(cx - 13.5) < 1.0


def test_polarity_flag() -> None:
    dark = np.full((40, 40), 255, np.uint8)
    cv2.line(dark, (20, 5), (20, 35), 0, 4)
    np.testing.assert_allclose(normalize(dark), normalize(255 - dark, dark_ink=False))


def test_grey_paper_is_stretched_to_black() -> None:
    crop = np.full((50, 50), 150, np.uint8)  # grey paper
    cv2.line(crop, (25, 5), (25, 45), 60, 5)  # faint pencil
    out = normalize(crop)
    assert out.max() == pytest.approx(1.0)
    assert out[0, 0] == 0.0 and out[27, 27] == 0.0


def test_rgba_transparent_background_is_paper() -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    cv2.line(rgba, (20, 5), (20, 35), (0, 0, 0, 255), 4)
    gray = np.full((40, 40), 255, np.uint8)
    cv2.line(gray, (20, 5), (20, 35), 0, 4)
    np.testing.assert_allclose(normalize(rgba), normalize(gray), atol=1 / 255)


def test_training_and_reading_paths_give_the_same_tensor() -> None:
    """Parity: a crop the reader cuts from a page and the same crop read as a training image."""
    crop = np.full((44, 36), 255, np.uint8)
    cv2.putText(crop, "7", (4, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.4, 0, 4)
    reading = model_input(crop)  # what the page reader feeds the classifier
    training = normalize_to_u8(crop, dark_ink=True)  # what training stores (uint8)
    np.testing.assert_allclose(reading, training.astype(np.float32) / 255.0, atol=0.5 / 255)


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 60), st.integers(1, 60)),
        elements=st.sampled_from([0, 1, 40, 90, 127, 128, 180, 200, 254, 255]),
    ),
    st.booleans(),
)
def test_uint8_lookup_path_equals_the_float_path_bit_for_bit(
    crop: np.ndarray, dark_ink: bool
) -> None:
    """uint8 crops go through per-level tables; the same crop as float32 v / 255 takes the
    general path. The outputs must be the same floats, not just close."""
    fast = normalize(crop, dark_ink=dark_ink)
    general = normalize(crop.astype(np.float32) / np.float32(255.0), dark_ink=dark_ink)
    assert fast.dtype == general.dtype == np.float32
    assert np.array_equal(fast.view(np.uint32), general.view(np.uint32))


def test_uint8_lookup_path_on_drawn_glyphs() -> None:
    rng = np.random.default_rng(3)
    for i in range(60):
        crop = np.full((int(rng.integers(12, 48)), int(rng.integers(8, 48))), 255, np.uint8)
        paper = int(rng.integers(120, 256))
        crop[:] = paper
        h, w = crop.shape
        ink = int(rng.integers(0, paper - 10))
        cv2.line(crop, (w // 2, 1), (int(rng.integers(0, w)), h - 2), ink, int(rng.integers(1, 5)))
        crop = cv2.GaussianBlur(crop, (3, 3), 0) if i % 2 else crop
        for dark_ink in (True, False):
            a = normalize(crop, dark_ink=dark_ink)
            b = normalize(crop.astype(np.float32) / np.float32(255.0), dark_ink=dark_ink)
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
