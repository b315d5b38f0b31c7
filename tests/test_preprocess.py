"""Preprocess stage on synthetic pages: deskew, flattening and binarisation, line removal."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hwr_batch import defaults
from hwr_batch.preprocess import (
    binarize,
    ink_threshold,
    is_negative,
    median_u8,
    percentile_u8,
    preprocess,
    remove_lines,
    rotate,
    sauvola_threshold,
    skew_angle,
)

RNG = np.random.default_rng(0)


def text_ink(
    shape: tuple[int, int] = (1200, 900), lines: int = 8, size: float = 1.6, seed: int = 0
) -> np.ndarray:
    """Ink mask (bool) of lines of digits drawn with a Hershey font: about 45 px tall."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros(shape, np.uint8)
    for i in range(lines):
        digits = "".join(str(d) for d in rng.integers(0, 10, 14))
        text = " ".join(digits[k : k + int(rng.integers(2, 6))] for k in range(0, 14, 5))
        y = 150 + i * int(shape[0] * 0.8 / lines)
        cv2.putText(canvas, text, (80, y), cv2.FONT_HERSHEY_SIMPLEX, size, 255, 5, cv2.LINE_AA)
    return canvas > 127


def render(ink: np.ndarray, paper: float = 235.0, ink_level: float = 30.0) -> np.ndarray:
    return np.where(ink, ink_level, paper).astype(np.uint8)


def rotated(gray: np.ndarray, angle: float) -> np.ndarray:
    h, w = gray.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return cv2.warpAffine(gray, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=235)


@pytest.mark.parametrize("angle", [-7.0, -2.5, 0.0, 4.0, 9.0])
def test_deskew_recovers_known_angle(angle: float) -> None:
    page = rotated(render(text_ink()), angle)
    prep = preprocess(page)
    # preprocess reports the rotation that undoes the skew.
    assert prep.angle == pytest.approx(-angle, abs=0.35)
    assert not any("clipped" in w for w in prep.warnings)


def test_deskew_with_few_characters() -> None:
    ink = np.zeros((800, 800), bool)
    ink[:] = text_ink((800, 800), lines=1, seed=3)
    page = rotated(render(ink), 5.0)
    assert preprocess(page).angle == pytest.approx(-5.0, abs=0.5)


def test_skew_angle_on_small_mask_is_clipped_at_the_range() -> None:
    ink = text_ink((600, 600), lines=5)
    tilted = rotated(render(ink), 13.0) < 128
    angle, clipped = skew_angle(tilted, max_deg=10.0)
    assert abs(angle) <= 10.0
    assert clipped


def test_binarisation_survives_lighting_gradient() -> None:
    ink = text_ink()
    h, w = ink.shape
    # Light falls from 250 on the left to 90 on the right; ink keeps 15% of the light.
    light = np.linspace(250, 90, w, dtype=np.float32)[None, :].repeat(h, 0)
    page = np.where(ink, light * 0.15, light)
    page = np.clip(page + RNG.normal(0, 3, page.shape), 0, 255).astype(np.uint8)
    prep = preprocess(page)
    found = prep.ink
    assert prep.angle == 0.0
    truth = ink
    recall = (found & truth).sum() / truth.sum()
    false_ink = (found & ~cv2.dilate(truth.astype(np.uint8), np.ones((5, 5))).astype(bool)).sum()
    assert recall > 0.9
    # A single global threshold on the raw page would call the dark right side ink.
    assert false_ink / (~truth).sum() < 0.002


def test_binarize_picks_sauvola_for_uneven_contrast() -> None:
    ink = text_ink((900, 900), lines=6)
    flat = np.full(ink.shape, 255, np.uint8)
    left = np.zeros_like(ink)
    left[:, :450] = True
    flat[ink & left] = 150  # faint pencil on the left half
    flat[ink & ~left] = 10  # dark pen on the right half
    small = cv2.resize(flat, (225, 225), interpolation=cv2.INTER_AREA)
    mask, method, _ = binarize(flat, small, 4)
    assert method == "sauvola"
    assert (mask & ink & left).sum() / (ink & left).sum() > 0.8
    assert (mask & ~ink).sum() < 0.002 * ink.size


def test_blank_and_noisy_blank_pages_have_no_ink() -> None:
    blank = np.full((1000, 800), 230, np.uint8)
    assert not preprocess(blank).ink.any()
    noisy = np.clip(230 + RNG.normal(0, 8, (1000, 800)), 0, 255).astype(np.uint8)
    prep = preprocess(noisy)
    assert prep.ink.mean() < 0.001


def test_all_black_page_is_reported_not_thresholded() -> None:
    prep = preprocess(np.zeros((600, 500), np.uint8))
    assert not prep.ink.any()
    assert prep.binarization == "none"
    assert any("dark" in w for w in prep.warnings)


def test_negative_pages_are_told_from_dark_ones() -> None:
    """Light strokes on a dark ground are a negative, under uneven light too; black, noisy
    black, an ordinary page, the same page photographed dim, and a sheet of paper on a dark
    desk are not."""
    ink = text_ink()
    page = render(ink)
    assert not is_negative(page)
    assert is_negative(255 - page)
    assert is_negative(np.where(ink, 255, 0).astype(np.uint8))
    ramp = np.linspace(0.3, 1.0, page.shape[1])[None, :]
    assert is_negative(((255 - page) * ramp).astype(np.uint8))
    assert not is_negative((page * 0.35).astype(np.uint8))
    assert not is_negative(np.zeros((600, 500), np.uint8))
    assert not is_negative(RNG.integers(0, 25, (600, 500)).astype(np.uint8))
    desk = np.full((2400, 2400), 30, np.uint8)
    desk[400:1400, 700:1500] = cv2.resize(page, (800, 1000), interpolation=cv2.INTER_AREA)
    assert not is_negative(desk)


def test_dark_margins_around_the_sheet_are_ignored() -> None:
    """A skewed sheet on a scanner's dark bed: the margins' straight edges neither pull the
    deskew angle to zero nor count as ink."""
    page = rotated(render(text_ink()), 3.0)
    framed = np.full((page.shape[0] + 160, page.shape[1] + 160), 12, np.uint8)
    framed[80:-80, 80:-80] = page
    prep = preprocess(framed)
    assert prep.angle == pytest.approx(-3.0, abs=0.35)
    assert "dark margins around the sheet ignored" in prep.warnings
    assert prep.binarization == "otsu"
    assert prep.ink.sum() == pytest.approx(preprocess(page).ink.sum(), rel=0.03)
    assert not any("margins" in w for w in preprocess(page).warnings)


def test_ruled_lines_running_off_the_page_are_not_margins() -> None:
    """Dark rules drawn edge to edge are long, flat and dark like a margin, but thin."""
    page = render(text_ink())
    for y in range(60, page.shape[0], 90):
        page[y : y + 3, :] = 80
    prep = preprocess(page)
    assert not any("margins" in w for w in prep.warnings)
    assert prep.lines_removed.any()


def test_a_dim_corner_of_the_sheet_is_not_a_margin() -> None:
    """Light falling off to a third at the left edge leaves paper as dark as a margin there,
    but with ink on it: it is read, not painted over."""
    ink = text_ink()
    ramp = np.linspace(0.3, 1.0, ink.shape[1])[None, :]
    dim = (render(ink).astype(np.float64) * ramp).astype(np.uint8)
    prep = preprocess(dim)
    assert not any("margins" in w for w in prep.warnings)
    left = slice(0, ink.shape[1] // 4)
    assert prep.ink[:, left].sum() == pytest.approx(ink[:, left].sum(), rel=0.15)


def test_ruled_line_removed_but_crossing_stroke_kept() -> None:
    ink = np.zeros((600, 1000), bool)
    ink[300:303, 20:980] = True  # a ruled line, 3 px thick
    ink[250:350, 500:506] = True  # a stroke crossing it
    ink[200:260, 100:106] = True  # a stroke ending on it from above ...
    ink[303:330, 700:706] = True  # ... and one hanging below it
    cleaned, removed = remove_lines(ink, text_h=60.0)
    assert not cleaned[301, 50] and not cleaned[301, 900]  # the line is gone
    assert removed[301, 50]
    assert cleaned[300:303, 500:506].all()  # the crossing stroke is whole
    n, _ = cv2.connectedComponents(cleaned[:, 450:560].astype(np.uint8))
    assert n - 1 == 1  # ... in one piece
    assert cleaned[250:300, 500:506].all() and cleaned[303:350, 500:506].all()
    assert cleaned[200:260, 100:106].all() and cleaned[310:330, 700:706].all()


def test_vertical_border_removed_and_downscaled_search_agrees() -> None:
    ink = np.zeros((800, 600), bool)
    ink[50:750, 300:303] = True  # a box border
    ink[400:406, 250:350] = True  # a horizontal stroke crossing it
    for factor in (1, 4):
        cleaned, removed = remove_lines(ink, text_h=60.0, factor=factor)
        assert not cleaned[100, 301] and removed[100, 301]
        assert cleaned[400:406, 250:350].all()


def test_short_strokes_are_not_lines() -> None:
    ink = np.zeros((400, 400), bool)
    ink[200:205, 100:220] = True  # 120 px: two text heights, a long stroke, not a rule
    cleaned, removed = remove_lines(ink, text_h=60.0)
    assert cleaned[200:205, 100:220].all() and not removed.any()


def test_ruled_page_end_to_end() -> None:
    ink = text_ink()
    for y in range(110, 1200, 119):
        ink[y : y + 3, :] = True
    prep = preprocess(rotated(render(ink), 3.0))
    assert prep.angle == pytest.approx(-3.0, abs=0.35)
    assert prep.lines_removed.sum() > 0.8 * 9 * 3 * 900
    n, _, stats, _ = cv2.connectedComponentsWithStats(prep.ink.astype(np.uint8))
    assert stats[1:, cv2.CC_STAT_WIDTH].max() < 300  # no rule left


def test_dashed_line_found_under_the_looser_mask() -> None:
    ink = np.zeros((400, 1000), bool)
    for x in range(20, 980, 24):
        ink[200, x : x + 12] = True  # a faint 1-px rule that thresholded into dashes
    ink[150:250, 500:505] = True  # a stroke crossing it
    kept, _ = remove_lines(ink, text_h=60.0)
    assert kept[200, 20:32].all()  # no run of ink is long enough: the dashes stay ...
    loose = ink.copy()
    loose[200, 20:980] = True  # ... but the rule is whole under a looser threshold
    cleaned, removed = remove_lines(ink, text_h=60.0, line_ink=loose)
    assert not cleaned[200, :490].any() and not cleaned[200, 510:].any()
    assert not (removed & ~ink).any()  # only ink is ever removed
    assert cleaned[150:250, 500:505].all()  # the crossing stroke is whole


def test_faint_dashed_rules_removed_end_to_end() -> None:
    ink = text_ink()
    page = render(ink)
    # Faint 1-px rules whose level swings either side of the ink threshold, as a thin line
    # does after anti-aliasing and downscaling where it steps between pixel rows.
    swing = np.where((np.arange(900) // 12) % 2 == 0, 100, 160).astype(np.uint8)
    for y in range(110, 1200, 119):
        page[y] = np.minimum(page[y], swing)
    prep = preprocess(page)
    assert (page[110] <= ink_threshold(page)).sum() < 0.6 * 900  # dashes under plain Otsu
    n, _, stats, _ = cv2.connectedComponentsWithStats(prep.ink.astype(np.uint8))
    assert stats[1:, cv2.CC_STAT_WIDTH].max() < 300  # no rule left, no words joined by one
    for y in range(110, 1200, 119):
        assert prep.ink[y, :60].sum() == 0  # the margin, where only the rule lies, is clean


def test_boxes_map_back_through_the_rotation() -> None:
    page = np.full((500, 700), 235, np.uint8)
    page[200:240, 300:330] = 20
    rot = rotated(page, 6.0)
    prep = preprocess(rot)
    # Find the block on the deskewed canvas and map its box back to the page.
    ys, xs = np.nonzero(prep.gray < 128)
    box = np.array([[xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]])
    x, y, w, h = prep.boxes_to_page(box)[0]
    ys0, xs0 = np.nonzero(rot < 128)
    assert abs(x - xs0.min()) <= 4 and abs(y - ys0.min()) <= 4
    assert abs((x + w) - xs0.max()) <= 4 and abs((y + h) - ys0.max()) <= 4


def test_rotate_keeps_the_whole_page() -> None:
    page = np.zeros((100, 200), np.uint8)
    out, back = rotate(page, 10.0, fill=0)
    assert out.shape[0] > 100 and out.shape[1] > 200
    assert back.shape == (2, 3)


def test_sauvola_matches_scikit_image() -> None:
    from skimage.filters import threshold_sauvola

    gray = (np.random.default_rng(0).random((300, 260)) * 255).astype(np.uint8)
    gray[100:200, 60:120] = 20
    ours = sauvola_threshold(gray, 31, 0.2)
    ref = threshold_sauvola(gray, window_size=31, k=0.2)
    # Borders are padded differently; inside the window's reach they agree.
    assert np.abs(ours - ref)[16:-16, 16:-16].max() < 0.1


def test_sauvola_path_on_a_large_page() -> None:
    ink = text_ink((2400, 1800), lines=10, size=3.0)
    flat = np.full(ink.shape, 255, np.uint8)
    left = np.zeros_like(ink)
    left[:1200] = True  # the faint half is the top one here
    flat[ink & left] = 150
    flat[ink & ~left] = 10
    small = cv2.resize(flat, (900, 1200), interpolation=cv2.INTER_AREA)
    mask, method, _ = binarize(flat, small, 2)
    assert method == "sauvola"
    assert (mask & ink).sum() / ink.sum() > 0.8
    assert (mask & ~ink).sum() < 0.002 * ink.size


def _samples(seed: int) -> list[np.ndarray]:
    """uint8 arrays of odd and even sizes: uniform, few levels, paper-like, nearly constant."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(400):
        n = int(rng.integers(1, 3000))
        if i % 4 == 0:
            a = rng.integers(0, 256, n)
        elif i % 4 == 1:
            a = rng.integers(0, 4, n) * 60
        elif i % 4 == 2:
            a = np.clip(rng.normal(200, 30, n), 0, 255)
        else:
            a = np.full(n, rng.integers(0, 256))
            a[: n // 3] = rng.integers(0, 256)
        out.append(a.astype(np.uint8))
    return out


def test_histogram_median_and_percentile_equal_numpy() -> None:
    for a in _samples(1):
        assert median_u8(a) == float(np.median(a))
        for q in (10, 50, 90, 99):
            assert percentile_u8(a, q) == float(np.percentile(a, q))
    page = np.asarray(
        cv2.GaussianBlur(RNG.integers(0, 256, (300, 201)).astype(np.uint8), (5, 5), 0)
    )
    assert median_u8(page) == float(np.median(page))
    assert percentile_u8(page, 90) == float(np.percentile(page, 90))


def test_ink_threshold_equals_the_sorting_definition() -> None:
    def by_sorting(flat: np.ndarray) -> float:
        paper = float(np.median(flat))
        mad = float(np.median(np.abs(flat.astype(np.float32) - paper)))
        t, _ = cv2.threshold(flat.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return min(float(t), paper - max(defaults.MIN_INK_CONTRAST, 4.0 * 1.4826 * mad))

    for a in _samples(2):
        assert ink_threshold(a) == by_sorting(a)
