"""The one normaliser: a crop of one character -> the 28x28 model input.

Training and reading both call :func:`normalize`, so a crop gives the same tensor on both paths.
"""

from __future__ import annotations

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


def _stretch(ink: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Map the background level to 0 and the ink level to 1.

    Photographed crops sit on grey paper and pencil is faint; without this the CNN sees a grey
    square. Levels come from an Otsu split of the crop itself, so a crop that is all ink or all
    paper (no bimodality) is left as it is. The statistics are read off a 256-bin histogram
    (exact for uint8 input): sorting for a median and a percentile cost twice the rest of the
    normaliser on reader-sized crops.
    """
    q = np.round(ink * 255.0).astype(np.uint8)
    hist = np.bincount(q.ravel(), minlength=256)
    levels = np.flatnonzero(hist)
    if levels[-1] - levels[0] < 1:
        return ink
    t, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    t = int(t)
    below, above = hist[: t + 1], hist[t + 1 :]
    n_below, n_above = int(below.sum()), int(above.sum())
    if n_below == 0 or n_above == 0:
        return ink
    # Median of the paper side and 90th percentile of the ink side, as histogram quantiles.
    bg = float(np.searchsorted(np.cumsum(below), (n_below + 1) / 2)) / 255.0
    fg = float(t + 1 + np.searchsorted(np.cumsum(above), 0.9 * n_above)) / 255.0
    if fg - bg < 0.1:
        # Low contrast: noise, not a character. Keep it faint so it stays "empty".
        return np.clip(ink - bg, 0.0, 1.0)
    return np.clip((ink - bg) / (fg - bg), 0.0, 1.0).astype(np.float32)


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
    gray = _to_float_gray(crop)
    ink = 1.0 - gray if dark_ink else gray
    ink = _stretch(ink)
    size = defaults.MODEL_SIZE
    out = np.zeros((size, size), np.float32)

    mask = (ink > defaults.INK_THRESHOLD).astype(np.uint8)
    if not mask.any():
        return out
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
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
    small = np.clip(small, 0.0, 1.0)
    if small.max() > 0:
        # Area-averaging a very thin stroke dims it; restore full ink intensity.
        small = small / small.max()

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
