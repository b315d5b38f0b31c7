"""The one normaliser: a crop of one character -> the 28x28 model input.

Training and reading both call :func:`normalize`, so a crop gives the same tensor on both paths.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from hwr_batch import defaults


def _to_float_gray(crop: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Any uint8/float gray, RGB or RGBA array -> float32 (H, W) in [0, 1], 1 = light paper."""
    a = np.asarray(crop)
    if a.ndim == 3:
        if a.shape[2] == 4:
            # Transparent pixels are paper: composite on white.
            alpha = a[..., 3:4].astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
            rgb = a[..., :3].astype(np.float32)
            white = 255.0 if a.dtype == np.uint8 else 1.0
            a = (rgb * alpha + white * (1.0 - alpha)).astype(a.dtype)
        elif a.shape[2] == 1:
            a = a[..., 0]
        if a.ndim == 3:
            a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            a = a / 255.0 if np.asarray(crop).dtype == np.uint8 else a
            return np.clip(np.nan_to_num(a), 0.0, 1.0).astype(np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D gray or 3-D color crop, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        return np.clip(a.astype(np.float32) / 255.0, 0.0, 1.0)
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)


def _stretch_levels(hist: npt.NDArray[np.intp], q: npt.NDArray[np.uint8]) -> tuple[float, float]:
    """Background and ink levels (0..1) of a crop from the 256-bin histogram of its ink.

    q: the ink quantised to uint8 (H, W) and ``hist`` its histogram. Returns (bg, fg), or
    (nan, nan) when the crop is all ink or all paper (no bimodality: leave it as it is).
    """
    cum = np.cumsum(hist)
    n = int(cum[-1])
    if int(hist.max()) == n:  # one grey level
        return np.nan, np.nan
    t, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    t = int(t)
    n_below = int(cum[t])
    n_above = n - n_below
    if n_below == 0 or n_above == 0:
        return np.nan, np.nan
    # Median of the paper side (levels 0..t) and 90th percentile of the ink side (above t):
    # the first level whose running count reaches the rank. Counts are integers, so "reaches
    # x" is "reaches ceil(x)", and both ranks are looked up in the crop's running count at once.
    ranks = [math.ceil((n_below + 1) / 2), n_below + math.ceil(0.9 * n_above)]
    bg_level, fg_level = np.searchsorted(cum, ranks)
    bg = float(bg_level) / 255.0
    fg = float(fg_level) / 255.0
    return bg, fg


def _apply_stretch(ink: npt.NDArray[np.float32], bg: float, fg: float) -> npt.NDArray[np.float32]:
    """Map ``bg`` to 0 and ``fg`` to 1 (float32 arithmetic, clipped to [0, 1])."""
    if math.isnan(bg):
        return ink
    if fg - bg < 0.1:
        # Low contrast: noise, not a character. Keep it faint so it stays "empty".
        return np.clip(ink - bg, 0.0, 1.0)
    return np.clip((ink - bg) / (fg - bg), 0.0, 1.0).astype(np.float32)


def _stretch(ink: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Map the background level to 0 and the ink level to 1.

    Photographed crops sit on grey paper and pencil is faint; without this the CNN sees a grey
    square. Levels come from an Otsu split of the crop itself, so a crop that is all ink or all
    paper (no bimodality) is left as it is. The statistics are read off a 256-bin histogram
    (exact for uint8 input): sorting for a median and a percentile cost twice the rest of the
    normaliser on reader-sized crops.
    """
    q = np.round(ink * 255.0).astype(np.uint8)
    bg, fg = _stretch_levels(np.bincount(q.ravel(), minlength=256), q)
    return _apply_stretch(ink, bg, fg)


_LEVELS = np.arange(256, dtype=np.uint8)[None, :]
#: For a uint8 crop every step up to the stretch is a function of the grey level alone, so it is
#: computed once for the 256 levels with the very operations of the general path, and a crop
#: is a table look-up (the same float32 values, bit for bit): ink of each level, dark ink first
#: (1 - v / 255), then light ink (v / 255).
_INK_OF_LEVEL = {True: (1.0 - _to_float_gray(_LEVELS))[0], False: _to_float_gray(_LEVELS)[0]}
#: ... and that ink quantised as :func:`_stretch` quantises it.
_Q_OF_LEVEL = {k: np.round(v * 255.0).astype(np.uint8) for k, v in _INK_OF_LEVEL.items()}


def _ink_u8(crop: npt.NDArray[np.uint8], dark_ink: bool) -> npt.NDArray[np.float32]:
    """``_stretch`` of the ink of a uint8 gray crop (H, W), by table look-up; same values."""
    q = _Q_OF_LEVEL[dark_ink].take(crop)
    hist = np.bincount(q.ravel(), minlength=256)
    bg, fg = _stretch_levels(hist, q)
    return _apply_stretch(_INK_OF_LEVEL[dark_ink], bg, fg).take(crop)


def _stroke_width(mask: npt.NDArray[np.uint8]) -> float:
    """Mean stroke width in pixels, as 2 * area / perimeter (exact for long thin strokes)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, closed=True) for c in contours)
    area = float(np.count_nonzero(mask))
    if perimeter <= 0:
        return 1.0
    return max(1.0, 2.0 * area / perimeter)


def normalize(crop: npt.ArrayLike, dark_ink: bool = True) -> npt.NDArray[np.float32]:
    """Turn a crop of one character into the model input.

    crop: gray uint8 (H, W) in 0..255 or float in [0, 1], or RGB/RGBA; any size. Dark ink on
    light paper, or ``dark_ink=False`` for white ink on black (MNIST, the Kaggle CSV, USPS).

    Returns float32 (28, 28) in [0, 1], white ink on black, following MNIST's convention: the
    ink's bounding box scaled to fit a 20x20 box keeping its aspect ratio, then placed in 28x28
    with its centre of mass at the centre. Strokes thinner than ``MIN_STROKE_PX`` at model scale
    are thickened first. A crop with no ink gives all zeros.
    """
    a = np.asarray(crop)
    if a.ndim == 2 and a.dtype == np.uint8:
        ink = _ink_u8(a, dark_ink)
    else:
        gray = _to_float_gray(a)
        ink = _stretch(1.0 - gray if dark_ink else gray)
    size = defaults.MODEL_SIZE
    out = np.zeros((size, size), np.float32)

    mask = (ink > defaults.INK_THRESHOLD).view(np.uint8)
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return out
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    glyph = ink[y0:y1, x0:x1]
    h, w = glyph.shape
    scale = defaults.GLYPH_BOX / max(h, w)

    # Thicken strokes that would be thinner than MIN_STROKE_PX after scaling.
    stroke = _stroke_width(mask[y0:y1, x0:x1]) if min(h, w) > 2 else 1.0
    target = defaults.MIN_STROKE_PX / scale
    if stroke < target and max(h, w) > defaults.GLYPH_BOX:
        k = int(round(target - stroke)) | 1  # odd kernel
        if k > 1:
            pad = k
            padded: npt.NDArray[np.float32] = np.pad(glyph, pad)
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
            padded = np.asarray(cv2.dilate(padded, kernel), np.float32)
            # Dilation grows the box; crop back to the ink so the 20x20 fit stays exact.
            pm = padded > defaults.INK_THRESHOLD
            pys, pxs = np.nonzero(pm)
            glyph = padded[pys.min() : pys.max() + 1, pxs.min() : pxs.max() + 1]
            h, w = glyph.shape
            scale = defaults.GLYPH_BOX / max(h, w)

    new_w = max(1, int(round(w * scale)))
    new_h = max(1, int(round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(glyph, (new_w, new_h), interpolation=interp)
    small = small.clip(0.0, 1.0)
    peak = small.max()
    if peak > 0:
        # Area-averaging a very thin stroke dims it; restore full ink intensity.
        small = small / peak

    total = float(small.sum())
    if total <= 0:
        return out
    cy = float((small.sum(axis=1) * np.arange(new_h)).sum() / total)
    cx = float((small.sum(axis=0) * np.arange(new_w)).sum() / total)
    # Top-left so that the centre of mass lands on the centre, clamped to keep the glyph inside.
    top = int(round(size / 2 - 0.5 - cy))
    left = int(round(size / 2 - 0.5 - cx))
    top = min(max(top, 0), size - new_h)
    left = min(max(left, 0), size - new_w)
    out[top : top + new_h, left : left + new_w] = small
    return out


def normalize_batch(crops: list[npt.ArrayLike], dark_ink: bool = True) -> npt.NDArray[np.float32]:
    """:func:`normalize` over a list of crops -> float32 (N, 28, 28)."""
    out = np.zeros((len(crops), defaults.MODEL_SIZE, defaults.MODEL_SIZE), np.float32)
    for i, crop in enumerate(crops):
        out[i] = normalize(crop, dark_ink=dark_ink)
    return out
