"""Preprocess stage: a gray page -> deskewed, illumination-flattened gray and an ink mask.

Steps, each cheap enough for several pages a second on one core at 300 dpi:

1. background estimate on a downscaled copy (grey closing removes the ink, a box blur smooths
   the rest), upscaled and divided out: uneven light, coloured or textured paper become flat;
2. skew angle within +-MAX_SKEW_DEG from the projection profile of the ink pixels of the small
   copy (coarse then fine search), rotation of the full page on an enlarged canvas;
3. binarisation: Otsu on the flattened page, or Sauvola (box-filter form) when the Otsu
   thresholds of the page's tiles disagree (flattening left uneven contrast), a floor under
   the contrast so a blank, noisy page stays blank;
4. text height from the connected components of the small copy;
5. ruled lines and box borders: long thin horizontal / vertical runs (morphological opening),
   removed except where a stroke crosses them (ink directly above and below the line, or left
   and right of a vertical one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from hwr_batch import defaults

U8 = npt.NDArray[np.uint8]
BoolArr = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Preprocessed:
    """A page ready for segmentation.

    gray: uint8 (H', W'), the page flattened (background divided out) and deskewed; dark ink
        on white. H', W' are the size of the rotated canvas (equal to the input when the page
        was not rotated).
    ink: bool (H', W'), ink after ruled-line removal.
    lines_removed: bool (H', W'), pixels removed as ruled lines or box borders.
    angle: the skew (degrees, counter-clockwise positive as in OpenCV) that was corrected.
    text_height: estimated character height in pixels (median of plausible components).
    to_page: float64 (2, 3) affine map from the deskewed canvas back to the input page.
    binarization: "otsu", "sauvola", or "none" (blank or all-dark page).
    warnings: one-line notes for the page's result.
    """

    gray: U8
    ink: BoolArr
    lines_removed: BoolArr
    angle: float
    text_height: float
    to_page: npt.NDArray[np.float64]
    binarization: str
    original_shape: tuple[int, int]
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    def boxes_to_page(self, boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Map boxes (N, 4) x, y, w, h on the deskewed canvas to the input page.

        Returns int64 (N, 4): the axis-aligned box around the four mapped corners, clipped to
        the page.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            return np.zeros((0, 4), np.int64)
        x0, y0 = boxes[:, 0], boxes[:, 1]
        x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
        corners = np.stack(
            [
                np.stack([x0, y0], 1),
                np.stack([x1, y0], 1),
                np.stack([x0, y1], 1),
                np.stack([x1, y1], 1),
            ],
            axis=1,
        )  # (N, 4, 2)
        a = self.to_page
        mapped = corners @ a[:, :2].T + a[:, 2]
        h, w = self.original_shape
        lo = np.floor(mapped.min(axis=1))
        hi = np.ceil(mapped.max(axis=1))
        lo = np.clip(lo, 0, [w, h])
        hi = np.clip(hi, 0, [w, h])
        out = np.concatenate([lo, hi - lo], axis=1)
        return out.astype(np.int64)


def _downscale_factor(shape: tuple[int, int]) -> int:
    return max(1, int(round(max(shape) / defaults.ANALYSIS_SIDE)))


def estimate_background(small: U8, kernel: int) -> U8:
    """Paper brightness of a (small) page: grey closing removes dark ink, a blur smooths.

    small: uint8 (h, w). kernel: closing size in pixels, larger than a character's ink.
    """
    k = max(3, kernel | 1)
    se = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    bg = cv2.morphologyEx(small, cv2.MORPH_CLOSE, se)
    bg = cv2.blur(bg, (k, k))
    return np.maximum(np.asarray(bg, np.uint8), 1)


def flatten(gray: U8, background: U8) -> U8:
    """Divide the page by its background: paper -> 255, ink keeps its contrast ratio."""
    return np.asarray(cv2.divide(gray, background, scale=255.0), np.uint8)


def _otsu(values: U8) -> float:
    t, _ = cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t)


def _sorted_at(values: npt.NDArray[np.float64], cum: npt.NDArray[np.int64], k: int) -> float:
    """The k-th (0-based) element of the sorted sample whose distinct ``values`` (ascending)
    occur with cumulative counts ``cum``."""
    return float(values[int(np.searchsorted(cum, k + 1))])


def _median_of_counts(values: npt.NDArray[np.float64], counts: npt.NDArray[np.int64]) -> float:
    """``np.median`` of a sample given as distinct ``values`` (ascending) and their counts.

    Exact: the middle element, or the mean of the two middle ones, as numpy takes them.
    """
    cum = np.cumsum(counts)
    n = int(cum[-1])
    upper = _sorted_at(values, cum, n // 2)
    if n % 2:
        return upper
    return (_sorted_at(values, cum, n // 2 - 1) + upper) / 2.0


def median_u8(a: U8) -> float:
    """``float(np.median(a))`` of a uint8 array, exactly, from its 256-bin histogram.

    np.median partitions a copy of the array: about 3 ms on a 900-px page copy, called several
    times a page; the histogram costs a fraction of that.
    """
    hist = np.bincount(a.ravel(), minlength=256)
    return _median_of_counts(np.arange(256, dtype=np.float64), hist)


def percentile_u8(a: U8, q: float) -> float:
    """``float(np.percentile(a, q))`` of a uint8 array (linear interpolation), exactly.

    Read off the histogram when the order statistics around the interpolation point are equal
    (the usual case: it falls inside the paper's peak), else computed by numpy.
    """
    hist = np.bincount(a.ravel(), minlength=256)
    cum = np.cumsum(hist)
    n = int(cum[-1])
    if n == 0:
        return float(np.percentile(a, q))
    lo = int(np.floor((n - 1) * q / 100.0))
    # One neighbour more on each side than interpolation needs: rounding of the virtual index
    # cannot then pick elements outside the run of equal values.
    ks = [max(0, lo - 1), min(n - 1, lo + 2)]
    first, last = (int(np.searchsorted(cum, k + 1)) for k in ks)
    if first == last:
        return float(first)
    return float(np.percentile(a, q))


def ink_threshold(flat: U8) -> float:
    """Global threshold for a flattened page, with a contrast floor.

    Ink is ``flat <= threshold`` (cv2 puts the Otsu value in the dark class). Otsu splits any
    histogram in two, so on a blank page it would call half the paper noise
    "ink". The threshold is kept at least MIN_INK_CONTRAST plus four noise sigmas (from the
    median absolute deviation of the paper) below the paper level. Both medians come from the
    page's histogram (equal to np.median's, without its sort).
    """
    hist = np.bincount(flat.ravel(), minlength=256)
    paper = _median_of_counts(np.arange(256, dtype=np.float64), hist)
    # |level - paper| for every grey level present, sorted, with its pixel count.
    levels = np.flatnonzero(hist)
    dev = np.abs(levels.astype(np.float64) - paper)
    order = np.argsort(dev, kind="stable")
    mad = _median_of_counts(dev[order], hist[levels][order])
    sigma = 1.4826 * mad
    ceiling = paper - max(defaults.MIN_INK_CONTRAST, 4.0 * sigma)
    return min(_otsu(flat), ceiling)


def is_negative(gray: U8) -> bool:
    """True when a page is light ink on a dark ground (a negative scan, a white-on-black sheet).

    gray: uint8 (H, W). Judged on a sample of the pixels (every step-th of every step-th row,
    about NEGATIVE_SAMPLE_SIDE on the long side). A page whose median is mid-grey or lighter
    is not a negative (one histogram: the cost on an ordinary page). Otherwise each sampled
    pixel is compared with the median of its neighbourhood (NEGATIVE_WINDOW of the long side):
    ink differs from its ground by at least MIN_INK_CONTRAST, darker on a page, lighter on a
    negative. The page is a negative when at least NEGATIVE_MIN_INK of its pixels are such
    light ink and they outnumber the dark ones NEGATIVE_RATIO to one. Being relative to the
    local ground, this holds under uneven light; a page photographed dim, or a sheet of paper
    on a dark desk, still has ink darker than its surroundings, so neither is inverted.
    """
    step = max(1, max(gray.shape) // defaults.NEGATIVE_SAMPLE_SIDE)
    sample = np.ascontiguousarray(gray[::step, ::step])
    if sample.size == 0 or median_u8(sample) >= 128:
        return False
    k = max(3, int(defaults.NEGATIVE_WINDOW * max(sample.shape)) | 1)
    ground = np.asarray(cv2.medianBlur(sample, k), np.int16)
    dev = sample.astype(np.int16) - ground
    light = int(np.count_nonzero(dev >= defaults.MIN_INK_CONTRAST))
    dark = int(np.count_nonzero(dev <= -defaults.MIN_INK_CONTRAST))
    enough = light >= defaults.NEGATIVE_MIN_INK * sample.size
    return enough and light > defaults.NEGATIVE_RATIO * dark


def outside_the_sheet(small: U8, paper: float) -> BoolArr | None:
    """Pixels of a small page copy that lie outside the sheet of paper, or None if none do.

    small: uint8 (h, w), a downscaled page; paper: its paper level. A scanner's lid left open,
    a page smaller than the bed, a photo of a page on a desk: dark regions that reach the
    image's edge. Such a region counts when it is under OUTSIDE_LEVEL of the paper level, at
    least OUTSIDE_MIN_THICK pixels thick (ruled lines running off the page are not margins),
    covers OUTSIDE_MIN_AREA of the image or runs along OUTSIDE_MIN_EDGE of one of its sides
    (ink that touches the edge of a cropped scan is far smaller), and is flat: its 5th and
    95th percentiles within MIN_INK_CONTRAST (a corner of the sheet dimmed by uneven light
    still holds ink far darker than its paper). The mask is grown by a pixel to take the
    blurred rim along the sheet's edge. Left in, the margins' straight edges pull the deskew
    angle to zero and their contrast tips binarisation to Sauvola.
    """
    h, w = small.shape
    dark = (small < defaults.OUTSIDE_LEVEL * paper).view(np.uint8)
    if not (dark[0].any() or dark[-1].any() or dark[:, 0].any() or dark[:, -1].any()):
        return None
    # Margins are thick; ruled lines and box borders that run to the edge are not.
    thick = np.ones((defaults.OUTSIDE_MIN_THICK, defaults.OUTSIDE_MIN_THICK), np.uint8)
    dark = np.asarray(cv2.morphologyEx(dark, cv2.MORPH_OPEN, thick), np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    x, y, bw, bh, area = (stats[1:, i] for i in range(5))
    touches = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    edge_run = np.maximum(bw / w, bh / h)
    big = (area >= defaults.OUTSIDE_MIN_AREA * h * w) | (edge_run >= defaults.OUTSIDE_MIN_EDGE)
    # A margin is flat; a dim corner of the sheet itself still holds ink darker than it.
    keep = []
    for label in (np.flatnonzero(touches & big) + 1).tolist():
        levels = small[labels == label]
        if percentile_u8(levels, 95) - percentile_u8(levels, 5) < defaults.MIN_INK_CONTRAST:
            keep.append(label)
    if not keep:
        return None
    mask = np.isin(labels, keep).view(np.uint8)
    return np.asarray(cv2.dilate(mask, np.ones((3, 3), np.uint8)), np.uint8).view(np.bool_)


def skew_angle(ink: BoolArr, max_deg: float = defaults.MAX_SKEW_DEG) -> tuple[float, bool]:
    """Skew of the text in a small binary page by projection profile.

    ink: bool (h, w). Returns (angle in degrees to rotate by with cv2 to straighten, clipped),
    where clipped says the best angle lay at the edge of the search range. The score of an angle
    is the sum of squares of the row histogram of the ink pixels projected at that angle: it is
    largest when text lines (and ruled lines) are horizontal. A coarse 1-degree search is
    refined in 0.1-degree steps.
    """
    ys, xs = np.nonzero(ink)
    if len(ys) < 20:
        return 0.0, False
    if len(ys) > defaults.SKEW_MAX_POINTS:
        # An even subsample keeps the profile's shape and bounds the cost.
        step = len(ys) // defaults.SKEW_MAX_POINTS + 1
        ys, xs = ys[::step], xs[::step]
    xc = xs.astype(np.float64) - xs.mean()
    yc = ys.astype(np.float64) - ys.mean()
    diag = int(np.ceil(np.hypot(ink.shape[0], ink.shape[1]))) + 1
    span = 2 * diag + 1

    def score(deg: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        rad = np.deg2rad(deg)
        # Row of each pixel after rotating by each angle: (A, N).
        rows = np.rint(yc[None, :] * np.cos(rad)[:, None] - xc[None, :] * np.sin(rad)[:, None])
        rows = (rows + diag).astype(np.int64)
        offs = (np.arange(len(deg)) * span)[:, None]
        hist = np.bincount((rows + offs).ravel(), minlength=len(deg) * span)
        hist = hist.reshape(len(deg), span).astype(np.float64)
        return (hist**2).sum(axis=1)

    coarse = np.arange(-max_deg, max_deg + 0.5, 1.0)
    best = float(coarse[int(np.argmax(score(coarse)))])
    fine = np.clip(np.arange(best - 1.0, best + 1.05, 0.1), -max_deg, max_deg)
    s = score(fine)
    angle = float(fine[int(np.argmax(s))])
    clipped = abs(angle) >= max_deg - 0.05 and abs(best) >= max_deg
    # Rows y' = y cos a - x sin a line up with text that runs at angle a below the x axis in
    # image coordinates (y down); cv2's positive angle turns the page counter-clockwise on
    # screen, which lifts the right end of such a line back to horizontal.
    return angle, clipped


def rotate(gray: U8, angle: float, fill: int = 255) -> tuple[U8, npt.NDArray[np.float64]]:
    """Rotate by ``angle`` degrees (cv2 convention) on a canvas that holds the whole page.

    Returns the rotated uint8 image and the (2, 3) affine map from the rotated canvas back to
    the input.
    """
    h, w = gray.shape
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw = int(np.ceil(w * cos + h * sin))
    nh = int(np.ceil(h * cos + w * sin))
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    out = cv2.warpAffine(
        gray,
        m,
        (nw, nh),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )
    return np.asarray(out, np.uint8), cv2.invertAffineTransform(m).astype(np.float64)


def text_height(ink_small: BoolArr, factor: int) -> float:
    """Median height (full-resolution pixels) of character-like components of a small mask.

    Page-long rules are opened away first so that characters touching them still count.
    Returns 0.0 when no component looks like a character.
    """
    mask = ink_small.astype(np.uint8)
    w = mask.shape[1]
    long_k = max(15, w // 8)
    rules = np.asarray(
        cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((1, long_k), np.uint8)), np.uint8
    )
    rules |= np.asarray(
        cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((long_k, 1), np.uint8)), np.uint8
    )
    mask &= 1 - rules
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return 0.0
    hs = stats[1:, cv2.CC_STAT_HEIGHT].astype(np.float64)
    ws = stats[1:, cv2.CC_STAT_WIDTH].astype(np.float64)
    area = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    # Specks are at most a few small pixels; long thin things are rules or underlines.
    plausible = (hs >= 3) & (area >= 4) & (ws <= 6 * hs) & (hs <= 0.3 * mask.shape[0])
    if not plausible.any():
        return 0.0
    hs, area = hs[plausible], area[plausible]
    # The median weighted by ink: specks, dots and fragments are many but hold little ink.
    order = np.argsort(hs)
    cum = np.cumsum(area[order])
    return float(hs[order][np.searchsorted(cum, cum[-1] / 2)]) * factor


#: Rows (columns) taken along each side of a detected line, with it: the ragged edge that a
#: rotated, anti-aliased line leaves after thresholding.
_RIM = 7


def _block_ink(ink: BoolArr, factor: int) -> U8:
    """uint8 0/1 (H // factor, W // factor): a block is ink if any of its pixels is."""
    h, w = ink.shape
    if factor <= 1:
        return np.ascontiguousarray(ink, dtype=np.uint8)
    # 0/255 so that one inked pixel keeps its block above zero after averaging.
    small = cv2.resize(
        ink.view(np.uint8) * np.uint8(255),
        (max(1, w // factor), max(1, h // factor)),
        interpolation=cv2.INTER_AREA,
    )
    return (np.asarray(small) > 0).astype(np.uint8)


def _line_bands(
    small: U8, shape: tuple[int, int], length: int, factor: int, horizontal: bool
) -> list[tuple[slice, slice]]:
    """Regions (row slice, column slice) of the full page that hold a long straight run.

    small: the page's ink by blocks of ``factor`` (:func:`_block_ink`), where the opening is
    cheap; shape: the full page's (H, W). Each region is the run's box grown by two blocks.
    """
    h, w = shape
    k = max(3, length // factor - 1)
    kernel = np.ones((1, k) if horizontal else (k, 1), np.uint8)
    # Bridge the gaps of dashed (faint) lines and the steps of slightly slanted ones.
    gap = np.ones((2, 3) if horizontal else (3, 2), np.uint8)
    runs = cv2.morphologyEx(cv2.morphologyEx(small, cv2.MORPH_CLOSE, gap), cv2.MORPH_OPEN, kernel)
    if not runs.any():
        return []
    n, _, stats, _ = cv2.connectedComponentsWithStats(runs, connectivity=8)
    bands = []
    for x, y, bw, bh, _ in stats[1:]:
        pad = 2 * factor
        y0, y1 = max(0, y * factor - pad), min(h, (y + bh) * factor + pad)
        x0, x1 = max(0, x * factor - pad), min(w, (x + bw) * factor + pad)
        bands.append((slice(int(y0), int(y1)), slice(int(x0), int(x1))))
    return bands


def remove_lines(
    ink: BoolArr,
    text_h: float,
    factor: int = 1,
    px_scale: int = 1,
    line_ink: BoolArr | None = None,
) -> tuple[BoolArr, BoolArr]:
    """Remove ruled lines and box borders, keep strokes that cross them.

    ink: bool (H, W). A line is a horizontal (vertical) run of ink at least
    LINE_MIN_LENGTH_TEXT_HEIGHTS character heights long; the rim of pixels along it (the
    ragged edge a rotated, anti-aliased line leaves after thresholding) goes with it. Removed
    pixels that have ink directly above and below (left and right for vertical lines) within
    LINE_BRIDGE_TEXT_HEIGHTS are put back: that is a stroke crossing the line. Lines are looked
    for on a copy downscaled by ``factor`` and measured exactly at full resolution inside the
    bands found, so the cost follows the length of the lines, not the size of the page.

    line_ink: bool (H, W), a looser ink mask (a higher threshold) in which lines are looked
    for; None: ``ink`` itself. A faint one-pixel line thresholds into dashes where it steps
    from one row to the next; under a looser threshold it stays whole. Only pixels of ``ink``
    are ever removed.

    Returns (ink without lines, removed pixels), both bool (H, W).
    """
    removed = np.zeros_like(ink)
    if text_h <= 0 or not ink.any():
        return ink, removed
    length = max(
        defaults.LINE_MIN_LENGTH_PX // px_scale, int(defaults.LINE_MIN_LENGTH_TEXT_HEIGHTS * text_h)
    )
    rim_px = max(2, int(round(_RIM / px_scale)))
    bridge = max(3, int(round(defaults.LINE_BRIDGE_TEXT_HEIGHTS * text_h)) | 1)
    h, w = ink.shape
    find_in = ink if line_ink is None else line_ink
    small = _block_ink(find_in, factor)
    for horizontal in (True, False):
        run_kernel = np.ones((1, length) if horizontal else (length, 1), np.uint8)
        rim_kernel = np.ones((rim_px, 1) if horizontal else (1, rim_px), np.uint8)
        # The gap to bridge is the line plus its rim on both sides.
        across = bridge + rim_px
        bridge_kernel = np.ones((across, 1) if horizontal else (1, across), np.uint8)
        gap_kernel = np.ones((3, bridge) if horizontal else (bridge, 3), np.uint8)
        for rows, cols in _line_bands(small, (h, w), length, factor, horizontal):
            # Grow the band across the line so the bridge sees the strokes on both sides.
            if horizontal:
                rows = slice(max(0, rows.start - across), min(h, rows.stop + across))
            else:
                cols = slice(max(0, cols.start - across), min(w, cols.stop + across))
            band = np.ascontiguousarray(ink[rows, cols], dtype=np.uint8)
            src = band if line_ink is None else np.asarray(find_in[rows, cols], np.uint8)
            # A faint line thresholds into dashes and stair steps: close short gaps first.
            joined = cv2.morphologyEx(src, cv2.MORPH_CLOSE, gap_kernel)
            line = cv2.morphologyEx(joined, cv2.MORPH_OPEN, run_kernel)
            if not line.any():
                continue
            line = np.asarray(cv2.dilate(line, rim_kernel), np.uint8) & band
            kept = band & (1 - line)
            # A closing across the line bridges the gap only where ink lies on both sides.
            crossing = np.asarray(cv2.morphologyEx(kept, cv2.MORPH_CLOSE, bridge_kernel), np.uint8)
            removed[rows, cols] |= (line & (1 - crossing)).astype(bool)
    if not removed.any():
        return ink, removed
    return ink & ~removed, removed


def binarize(
    flat: U8, small_flat: U8, factor: int, px_scale: int = 1
) -> tuple[BoolArr, str, float]:
    """Ink mask of a flattened page; Otsu, or Sauvola when the page's tiles disagree.

    flat: uint8 (H, W) full resolution; small_flat: the same, downscaled by ``factor``.
    Returns (ink bool (H, W), method name, global threshold).
    """
    t = ink_threshold(small_flat)
    tiles = _tile_thresholds(small_flat, t)
    uneven = len(tiles) >= 4 and float(np.ptp(tiles)) > defaults.TILE_THRESHOLD_SPREAD
    if not uneven:
        return flat <= t, "otsu", t
    # The threshold surface is smooth at the scale of the window: compute it at half
    # resolution on large pages (a quarter of the cost) and interpolate it back up.
    h, w = flat.shape
    half = h * w > defaults.SAUVOLA_HALF_RES_PIXELS
    src = cv2.resize(flat, (w // 2, h // 2), interpolation=cv2.INTER_AREA) if half else flat
    window = max(15, (int(defaults.SAUVOLA_WINDOW_PX / px_scale / (2 if half else 1)) // 2) * 2 + 1)
    local = sauvola_threshold(np.asarray(src, np.uint8), window, defaults.SAUVOLA_K)
    if half:
        local = np.asarray(cv2.resize(local, (w, h), interpolation=cv2.INTER_LINEAR), np.float32)
    # Sauvola alone marks paper texture in blank areas; the global contrast floor stops that.
    ceiling = median_u8(small_flat) - defaults.MIN_INK_CONTRAST
    return (flat <= local) & (flat <= ceiling), "sauvola", t


def sauvola_threshold(gray: U8, window: int, k: float, r: float = 128.0) -> npt.NDArray[np.float32]:
    """Sauvola's local threshold T = m * (1 + k * (s / r - 1)) over a ``window`` square.

    gray: uint8 (H, W). Returns float32 (H, W). The same formula as scikit-image's
    ``threshold_sauvola``; the local mean and standard deviation come from OpenCV box filters,
    which is about 40 times faster on a 300 dpi page.
    """
    f = gray.astype(np.float32)
    size = (window, window)
    mean = cv2.boxFilter(f, -1, size, borderType=cv2.BORDER_REFLECT)
    sq_mean = cv2.boxFilter(f * f, -1, size, borderType=cv2.BORDER_REFLECT)
    std = np.sqrt(np.maximum(sq_mean - mean * mean, 0.0))
    return np.asarray(mean * (1.0 + k * (std / r - 1.0)), np.float32)


def _tile_thresholds(small_flat: U8, global_t: float) -> npt.NDArray[np.float64]:
    """Otsu threshold of every tile of the small page that holds a fair amount of ink."""
    h, w = small_flat.shape
    n = defaults.BINARIZE_TILES
    out = []
    for i in range(n):
        for j in range(n):
            tile = small_flat[i * h // n : (i + 1) * h // n, j * w // n : (j + 1) * w // n]
            if tile.size == 0:
                continue
            frac = float(np.count_nonzero(tile <= global_t)) / tile.size
            if 0.02 <= frac <= 0.5:
                out.append(_otsu(tile))
    return np.asarray(out, np.float64)


def preprocess(
    gray: U8, max_skew: float = defaults.MAX_SKEW_DEG, px_scale: int = 1
) -> Preprocessed:
    """Deskew, flatten, binarise and remove lines from a gray page.

    gray: uint8 (H, W), dark ink on light paper. Returns a :class:`Preprocessed`.
    """
    import time

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D gray page, got shape {gray.shape}")
    h, w = gray.shape
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    notes: list[str] = []

    factor = _downscale_factor((h, w))
    small = np.asarray(
        cv2.resize(gray, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA),
        np.uint8,
    )
    paper_level = percentile_u8(small, 90)
    if paper_level < defaults.DARK_PAGE_LEVEL:
        notes.append("page is almost entirely dark: no paper found, nothing read")
        empty = np.zeros((h, w), bool)
        return Preprocessed(
            gray,
            empty,
            empty,
            0.0,
            0.0,
            identity,
            "none",
            (h, w),
            tuple(notes),
            {"preprocess": time.perf_counter() - t0},
        )

    outside = outside_the_sheet(small, paper_level)
    if outside is not None:
        # A scanner's dark bed or a desk around the sheet: paper to everything below.
        small = np.where(outside, np.uint8(paper_level), small)
        full = cv2.resize(outside.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
        gray = np.where(full.view(np.bool_), np.uint8(paper_level), gray)
        notes.append("dark margins around the sheet ignored")

    bg_kernel = max(3, int(defaults.BACKGROUND_KERNEL_PX / px_scale / factor))
    bg_small = estimate_background(small, bg_kernel)
    small_flat = flatten(small, bg_small)
    t_small = ink_threshold(small_flat)
    ink_small = small_flat <= t_small
    timings["background"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    angle, clipped = skew_angle(ink_small, max_skew)
    if clipped:
        notes.append(f"skew clipped at {max_skew:g} deg")
    timings["deskew_angle"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    background = np.asarray(cv2.resize(bg_small, (w, h), interpolation=cv2.INTER_LINEAR), np.uint8)
    flat = flatten(gray, background)
    to_page = identity
    if abs(angle) > defaults.MIN_DESKEW_DEG + 1e-9:
        flat, to_page = rotate(flat, angle)
        small_flat_r, _ = rotate(small_flat, angle)
        ink_small = small_flat_r <= t_small
    else:
        angle = 0.0
        small_flat_r = small_flat
    timings["flatten_rotate"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    ink, method, t_global = binarize(flat, small_flat_r, factor, px_scale)
    th = text_height(ink_small, factor)
    timings["binarize"] = time.perf_counter() - t1

    t1 = time.perf_counter()
    paper = median_u8(small_flat_r)
    loose = t_global + defaults.LINE_LOOSE_THRESHOLD * max(0.0, paper - t_global)
    ink, removed = remove_lines(ink, th, factor, px_scale, line_ink=ink | (flat <= loose))
    timings["remove_lines"] = time.perf_counter() - t1
    timings["preprocess"] = time.perf_counter() - t0
    return Preprocessed(
        gray=flat,
        ink=ink,
        lines_removed=removed,
        angle=float(angle),
        text_height=th,
        to_page=to_page,
        binarization=method,
        original_shape=(h, w),
        warnings=tuple(notes),
        timings=timings,
    )
