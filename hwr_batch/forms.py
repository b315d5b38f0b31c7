"""Form fields: find boxes, comb fields and underlines on a page, and read each as one value.

Stages, each a plain function on arrays:

1. :func:`ink_mask` - dark ink on light paper -> binary ink, after flattening the background.
2. :func:`estimate_skew` / :func:`rotate_page` - forms are full of long straight lines, so the
   skew comes from them (Hough segments, length-weighted median angle).
3. :func:`detect_fields` - structural lines by morphological opening; closed cells are the holes
   of the line mask that are rectangles; cells side by side in a row make a comb; long
   horizontal lines that belong to no box are underlines. Fields are named in reading order.
4. :func:`clean_ink` - the structural lines are removed from the ink, except where a stroke
   crosses them (ink on both sides), so characters that touch or cross a border survive.
5. :func:`read_fields` - connected components of the clean ink are given to the field (and for
   combs, the cell) holding most of their pixels; ink outside every field (headings, printed
   prompts) is ignored. Each candidate character is normalised with the shared normaliser,
   all of a page's candidates are classified in one batch per model (unsure ones read again
   under small warps and by a second model, averaged), and each field's value is decoded under
   its constraint (:mod:`hwr_batch.fieldvalue`).

Coordinates: detection works on the deskewed page; every box handed back in a
:class:`~hwr_batch.records.Field` is mapped back to the page as loaded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt

from hwr_batch.fieldvalue import CHARSET_LABELS, Constraint, Decoded, Edge, decode_lattice
from hwr_batch.normalize import normalize
from hwr_batch.records import BBox, Char, Field

if TYPE_CHECKING:
    from hwr_batch.classify import Classifier
    from hwr_batch.template import Registration, Template

# Constants with a reason (form mode only, so they live here rather than in defaults.py).

#: Structural lines are at least this fraction of the page width long. At 150-300 dpi an A4
#: comb cell is 40-90 px wide and a handwritten stroke's straight run rarely exceeds 2% of
#: the width, so 1/50 keeps cell borders and drops most strokes.
LINE_MIN_FRACTION = 1 / 50
#: Width of the copy the skew's Hough search runs on.
SKEW_WORK_WIDTH = 1000
#: Share of its columns a ruled line must cover to count for skew (text baselines have gaps).
LINE_SOLIDITY = 0.9
#: An underline is a horizontal line at least this fraction of the page width long, and not a
#: side of a box. Shorter rules are more likely table strokes or a crossed-out word.
UNDERLINE_MIN_FRACTION = 1 / 12
#: Smallest cell side as a fraction of page width: 0.8% (20 px at 300 dpi) is below any
#: writable box; smaller rectangles are letter counters in printed text.
CELL_MIN_FRACTION = 0.02
#: A frame's top and bottom lines cover at least this share of its width (strokes crossing the
#: side borders can stick out sideways and widen the piece a little).
FRAME_COVERAGE = 0.8
#: A vertical line is a cell border when it covers this share of the frame's inner height.
SEPARATOR_COVERAGE = 0.9
#: A single box wider than this many times its height holds several characters.
MULTI_CHAR_ASPECT = 1.3
#: Writing zone above an underline, in multiples of the median cell height on the page, or as a
#: fraction of page width when the page has no cells (4.5% ~ a 5 mm high handwritten digit
#: line with its ascenders on A4).
UNDERLINE_ZONE_CELLS = 1.2
UNDERLINE_ZONE_FRACTION = 0.045
#: Ink components smaller than this share of the field's height squared are specks (scanner
#: dust, leftovers of a removed border), not strokes.
SPECK_FRACTION = 0.004
#: A character of a free box or underline wider than this many times its height may be two
#: touching characters; the lattice then also offers split alternatives.
SPLIT_ASPECT = 1.15
#: How far from a structural line (pixels, beyond the one-pixel dilation of the line mask)
#: stroke ink must lie on both sides for the line pixels between to count as a crossing.
CROSS_REACH = 2
#: Share of a component's pixels that must lie in a reading zone for it to belong there.
MIN_INSIDE_SHARE = 0.25
#: Probability factor for a character cut out of a wider piece of ink. Without it, two
#: confident halves of one wide 0 (a "6" and a "1") outscore the whole 0, since the product of
#: two 0.97s beats a single 0.9; a real cut must be clearly better than no cut.
SPLIT_PENALTY = 0.6
#: Neighbouring pieces at most this wide together (in character heights) and this far apart
#: may be one broken character.
MERGE_WIDTH = 1.1
MERGE_GAP = 0.15
#: A piece of a free field whose width and height are both under this share of the field's
#: median character height is a fragment (the loose bar of a 5, a broken-off bit of a 1, a
#: blot): digits written in one field differ in height by less than a factor two.
FRAGMENT_SIZE = 0.5
#: A fragment is offered as no character with this probability, and as a character of its own
#: with its probability times FRAGMENT_PENALTY: a fragment is more often part of a neighbour or
#: noise than a character, so reading it alone must be clearly better than dropping it.
FRAGMENT_BLANK = 0.5
FRAGMENT_PENALTY = 0.5
#: A fragment may be merged with a neighbour this far away (in character heights): broken
#: strokes of pen-lifts leave wider gaps than the MERGE_GAP between parts of one stroke.
FRAGMENT_GAP = 0.4
#: Faint strokes: pixels lighter than the ink threshold t but darker than t + FAINT_SHARE *
#: (255 - t) are ink when connected to ink. On the generated scans (flattened paper ~252, noise
#: sd 6, t ~155) half way is ~203, eight noise sd clear of paper.
FAINT_SHARE = 0.5
#: Pixels either side of a border's fully covered rows (or columns) that still count as border.
BORDER_SLACK = 2
#: A stroke "leaves" a border when there is ink 1 and this many pixels away from it, in line.
STROKE_LEAVE = 4
#: A candidate whose best label the field's model gives under this probability gets a second
#: opinion: the same model on small warps of its input and, where one is bundled, a second
#: model (:data:`SECOND_MODEL`), averaged with the first reading. The digits model gives ~0.96
#: to a character it is sure of; 7-8% of a form's ~130 candidates (all views) fall under 0.9,
#: most of them touching a border, so the extra model calls stay a fraction of the page's
#: (classification 0.032 -> 0.056 s of a ~0.6 s form, one thread).
#: bench_forms seeds 5/6/7 (6 layouts x 15 forms): template exact 98.26/97.76/98.37% ->
#: 98.63/97.88/98.62%, auto 98.13/97.63/98.24% -> 98.51/97.76/98.49%, with no field read
#: right before and wrong after; 0.97, and the warps alone, did no better.
SECOND_OPINION_BELOW = 0.9
#: The warps of that re-reading, applied to the 28x28 model input: (rotation in degrees, x
#: shift, y shift in pixels). Handwriting varies in slant by about 8 degrees and the
#: normaliser centres by the centre of mass, so a pixel's shift is a plausible other placing.
SECOND_OPINION_WARPS: tuple[tuple[float, float, float], ...] = (
    (-8.0, 0.0, 0.0),
    (8.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, -1.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.0, 0.0, -1.0),
)
#: Second model per field charset, its probabilities taken over the field model's labels and
#: renormalised. Over the digit labels the alnum model is about as accurate as the digits
#: model (held-out USPS 32 vs 34 errors of 2,007, FEMNIST 17 vs 17 of 1,505) but was trained
#: on another mix (letters too) and errs partly elsewhere. Averaged on unsure characters it
#: fixes MNIST-style digits (the forms above) and leaves USPS/FEMNIST as they were (35, 17).
SECOND_MODEL: dict[str, str] = {"digits": "alnum"}
#: Bundled model that reads the fields of a charset in place of the page model. The page
#: reader's digits model is tuned on characters cut from scanned pages (blurred, thresholded,
#: a neighbour's stroke at the edge); a box or comb cell holds one clean character, which
#: models trained on the data sets alone read better: bench_forms seeds 5/6/7 template exact
#: 98.63/97.88/98.62% with the data-set model against 98.51/97.76/97.99% with the page-tuned
#: one. digits_forms.onnx is now the mean of that model and a second one trained apart
#: (``hwr-train ensemble``): 98.88/98.13/98.49% (model card: hwr_batch/models/digits_forms.md).
FIELD_MODEL: dict[str, str] = {"digits": "digits_forms"}
#: A component with at least this share of its pixels in another comb cell also counts there
#: (each cell then reads only its own columns).
COMB_SHARE = 0.2
#: Gaps (in border widths) along a border between two points where strokes leave it that are
#: filled back as stroke: the top of a loop resting on the line.
TANGENT_GAP_WIDTHS = 5
#: Fields whose value's probability is under this go to review. A 5-digit field whose digits
#: are each 0.95 sure has probability 0.77; one doubtful digit at 0.6 brings it under 0.5.
FIELD_MIN_CONFIDENCE = 0.5
#: A field also goes to review when any one of its characters is under this: a field of sure
#: digits can hide a single doubtful one that the product alone lets through. The digits
#: model gives ~0.96 to a character it is sure of; on generated forms (seeds 5 and 6) the
#: misread characters of wrong fields lie mostly under 0.85, and 0.9 flags 2.7% more right
#: fields for one more wrong one.
CHAR_MIN_CONFIDENCE = 0.85
#: A field also goes to review when one view of a chosen character (binary or gray crop,
#: with or without border pixels) gives the chosen label under this: that view reads another
#: character outright. Seeds 5 and 6: catches 2 more wrong fields for 0.5% more flags.
VIEW_MIN_PROB = 0.03


@dataclass(frozen=True)
class FieldGeometry:
    """Where a field is on the deskewed page.

    kind: "box", "comb" or "underline".
    bbox: the field's outer box (frame included; for an underline, the writing zone and line).
    cells: reading zones: one per comb cell, the interior for a box, the zone above an
        underline.
    """

    kind: str
    bbox: BBox
    cells: tuple[BBox, ...]


@dataclass(frozen=True)
class FieldSpec:
    """A field to read: geometry plus what its value may be (from a template, or defaults)."""

    name: str
    geometry: FieldGeometry
    constraint: Constraint = field(default_factory=Constraint)
    #: Read every character as unreadable (used when a template did not register).
    unreadable: bool = False


@dataclass(frozen=True)
class FormsResult:
    """Fields of one page plus what the caller needs for the PageResult."""

    fields: tuple[Field, ...]
    skew_angle: float
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict, compare=False)
    #: 2x3 affine page-as-loaded -> deskewed page.
    deskew: npt.NDArray[np.float64] | None = field(default=None, compare=False)
    #: Template fit (template pixels -> deskewed page), when a template was given.
    registration: Registration | None = None


# --------------------------------------------------------------------------------------------
# 1-2. Ink and skew


def ink_levels(gray: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], float]:
    """The page with its background flattened, and the ink/paper threshold.

    gray: uint8 (H, W), dark ink on light paper. Returns ``(flat, t)``: flat uint8 (H, W), the
    page divided by its paper level (paper near 255), and ``t``: pixels ``<= t`` are ink. The
    background (paper colour and uneven lighting) is estimated by a large median of a shrunken
    copy and divided out; Otsu then splits ink from paper.
    """
    g = np.asarray(gray)
    if g.ndim != 2 or g.dtype != np.uint8:
        raise ValueError(f"gray must be uint8 (H, W), got {g.dtype} {g.shape}")
    h, w = g.shape
    small = cv2.resize(g, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
    # Paper level: a local maximum (ink strokes are thinner than 5 px at 1/8 scale, so they
    # vanish), then a median to smooth it.
    bg_small = cv2.dilate(small, np.ones((5, 5), np.uint8))
    k = max(3, (min(small.shape) // 10) | 1)
    bg_small = cv2.medianBlur(bg_small, min(k, 255))
    bg = cv2.resize(bg_small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    flat = np.clip(g.astype(np.float32) / np.maximum(bg, 1.0) * 255.0, 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(flat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Blank paper has no bimodality and Otsu splits the noise; ink must be clearly darker.
    return flat, min(float(t), 200.0)


def ink_mask(gray: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Binary ink of a page: gray uint8 (H, W), dark ink on light paper -> uint8 (H, W) 0/255,
    thresholded as :func:`ink_levels` says."""
    flat, t = ink_levels(gray)
    return np.where(flat <= t, 255, 0).astype(np.uint8)


def faint_ink(
    flat: npt.NDArray[np.uint8], t: float, ink: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8]:
    """``ink`` plus the faint strokes attached to it (hysteresis).

    flat, t: from :func:`ink_levels`; ink: uint8 (H, W) 0/255, ``flat <= t``. Pixels darker than
    ``t + FAINT_SHARE * (255 - t)`` join the ink when they are connected to it, so the light
    bar of a quick 7 stays with its stem while paper noise, which touches no ink, stays out.
    """
    weak = (flat <= t + FAINT_SHARE * (255.0 - t)).astype(np.uint8)
    n, lab_any = cv2.connectedComponents(weak, connectivity=8)
    lab = np.asarray(lab_any, np.int32)
    keep = np.zeros(n, bool)
    keep[np.unique(lab[ink > 0])] = True
    keep[0] = False
    return np.where(keep[lab], 255, 0).astype(np.uint8)


def estimate_skew(ink: npt.NDArray[np.uint8], max_angle: float = 10.0) -> float:
    """Skew in degrees (positive = counter-clockwise text) from the page's long straight lines.

    ink: uint8 (H, W) 0/255. Returns 0.0 when the page has no long lines.
    """
    h, w = ink.shape
    # Hough on a copy at most SKEW_WORK_WIDTH wide (its cost grows with the pixel count); the
    # refit below recovers full-resolution precision.
    f = max(1, int(math.ceil(w / SKEW_WORK_WIDTH)))
    small = ink if f == 1 else cv2.resize(ink, (w // f, h // f), interpolation=cv2.INTER_AREA)
    small = np.where(small > 0, 255, 0).astype(np.uint8)
    min_len = max(30, int(small.shape[1] * UNDERLINE_MIN_FRACTION))
    segs = cv2.HoughLinesP(
        small, 1, np.pi / 720, threshold=min_len // 2, minLineLength=min_len, maxLineGap=3
    )
    if segs is None:
        return 0.0
    s = np.asarray(segs).reshape(-1, 4).astype(np.float64) * f
    dx, dy = s[:, 2] - s[:, 0], s[:, 3] - s[:, 1]
    length = np.hypot(dx, dy)
    # Image y grows downwards: a line rising to the right has dy < 0, i.e. a positive angle.
    angle = np.degrees(np.arctan2(-dy, dx))
    angle = (angle + 90.0) % 180.0 - 90.0
    keep = np.abs(angle) <= max_angle
    if not keep.any():
        return 0.0
    # Hough angles come in 0.125 deg steps and follow the pixel staircase of a thick line;
    # refit each long segment to the ink pixels along it for a precise angle.
    refined, weights = [], []
    for k in np.argsort(-length * keep)[: min(60, int(keep.sum()))]:
        fit = _fit_segment(ink, s[k], slack=3.0 + f)
        if fit is not None and abs(fit) <= max_angle:
            refined.append(fit)
            weights.append(length[k])
    if not refined:
        return 0.0
    a, wt = np.array(refined), np.array(weights)
    order = np.argsort(a)
    cum = np.cumsum(wt[order])
    return float(a[order][np.searchsorted(cum, cum[-1] / 2.0)])


def _fit_segment(
    ink: npt.NDArray[np.uint8], seg: npt.NDArray[np.float64], slack: float = 3.0
) -> float | None:
    """Angle (degrees, counter-clockwise positive) of the ruled line near a Hough segment.

    seg: (x1, y1, x2, y2), known to within ``slack`` pixels. The ink within that band is fitted
    by least squares (y on x), then refitted to the ink within 2 px of the first fit, so a
    thick line's staircase and the segment's coarseness do not bias the angle.
    """
    x1, y1, x2, y2 = (float(v) for v in seg)
    h, w = ink.shape
    if x2 == x1:
        return None
    pad = int(math.ceil(slack)) + 2
    x0, xe = int(max(0, min(x1, x2))), int(min(w, max(x1, x2) + 1))
    y0, ye = int(max(0, min(y1, y2) - pad)), int(min(h, max(y1, y2) + pad + 1))
    ys, xs = np.nonzero(ink[y0:ye, x0:xe])
    if xs.size < 10:
        return None
    xf, yf = (xs + x0).astype(np.float64), (ys + y0).astype(np.float64)
    slope, icpt = (y2 - y1) / (x2 - x1), y1 - (y2 - y1) / (x2 - x1) * x1
    band = slack
    for _ in range(3):
        near = np.abs(yf - (slope * xf + icpt)) <= band
        if near.sum() < 10 or np.ptp(xf[near]) < 10:
            return None
        slope, icpt = np.polyfit(xf[near], yf[near], 1)
        band = 2.0
    # A ruled line is solid: ink within 2 px of the fit in nearly every column. The aligned
    # bases of a row of printed characters also make a Hough segment, but a gappy one.
    on_line = np.abs(yf - (slope * xf + icpt)) <= 2
    if np.unique(xs[on_line]).size < LINE_SOLIDITY * (xe - x0):
        return None
    return float(-np.degrees(np.arctan(slope)))


def rotation_matrix(angle: float, shape: tuple[int, int]) -> npt.NDArray[np.float64]:
    """2x3 affine that undoes a skew of ``angle`` degrees about the page centre."""
    h, w = shape
    return np.asarray(cv2.getRotationMatrix2D((w / 2.0, h / 2.0), -angle, 1.0), np.float64)


def rotate_page(
    gray: npt.NDArray[np.uint8], angle: float
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """Deskewed copy of ``gray`` (same size, white fill) and the 2x3 matrix used."""
    m = rotation_matrix(angle, gray.shape[:2])
    if abs(angle) < 0.05:
        return gray, m
    out = cv2.warpAffine(
        gray,
        m,
        (gray.shape[1], gray.shape[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=255,
    )
    return np.asarray(out, np.uint8), m


def map_box(box: BBox, m: npt.NDArray[np.float64], shape: tuple[int, int]) -> BBox:
    """Axis-aligned box around ``box`` mapped by the 2x3 affine ``m``, clipped to ``shape``."""
    pts = np.array([[box.x, box.y], [box.x2, box.y], [box.x, box.y2], [box.x2, box.y2]], np.float64)
    q = pts @ m[:, :2].T + m[:, 2]
    h, w = shape
    x0 = int(np.clip(np.floor(q[:, 0].min()), 0, w))
    y0 = int(np.clip(np.floor(q[:, 1].min()), 0, h))
    x1 = int(np.clip(np.ceil(q[:, 0].max()), 0, w))
    y1 = int(np.clip(np.ceil(q[:, 1].max()), 0, h))
    return BBox(x0, y0, max(0, x1 - x0), max(0, y1 - y0))


# --------------------------------------------------------------------------------------------
# 3. Structure


@dataclass(frozen=True)
class Structure:
    """The form's printed structure on the deskewed page.

    h_lines, v_lines: uint8 (H, W) 0/255, the horizontal (frame tops and bottoms,
        underlines) and vertical (frame sides, comb separators) border pixels.
    fields: detected fields in reading order.
    line_width: typical border thickness in pixels.
    """

    h_lines: npt.NDArray[np.uint8]
    v_lines: npt.NDArray[np.uint8]
    fields: tuple[FieldGeometry, ...]
    line_width: int


def _line_candidates(
    ink: npt.NDArray[np.uint8],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Horizontal and vertical straight runs (uint8 0/255) of at least LINE_MIN_FRACTION."""
    w = ink.shape[1]
    n = max(12, int(round(w * LINE_MIN_FRACTION)))
    horiz = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (n, 1)))
    vert = cv2.morphologyEx(ink, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, n)))
    return np.asarray(horiz, np.uint8), np.asarray(vert, np.uint8)


def _runs(flags: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.nonzero(d == 1)[0].tolist(), np.nonzero(d == -1)[0].tolist(), strict=True))


def _find_frames(lines: npt.NDArray[np.uint8], page_w: int) -> list[tuple[list[BBox], list[BBox]]]:
    """Closed frames formed by ``lines`` (uint8 0/255): (cell interiors, border rectangles).

    A frame is a connected piece of the line mask with a top and a bottom line that each run
    across most of its width, and left and right borders; full-height vertical lines inside it
    separate comb cells. Working from the frame's edges rather than the holes of the mask means a
    stroke that touches the border from inside, or even spans a cell, cannot split or hide it.
    """
    closed = cv2.morphologyEx(lines, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    n, lab, stats, _c = cv2.connectedComponentsWithStats(closed, connectivity=8)
    min_side = max(8, int(page_w * CELL_MIN_FRACTION))
    frames: list[tuple[BBox, list[BBox], list[BBox]]] = []
    for i in range(1, n):
        x, y, w, h = (int(v) for v in stats[i, :4])
        if w < min_side or h < min_side:
            continue
        sub = lab[y : y + h, x : x + w] == i
        full_rows = np.nonzero(sub.mean(axis=1) >= FRAME_COVERAGE)[0]
        if full_rows.size < 2:
            continue
        row_runs = _runs(np.isin(np.arange(h), full_rows))
        top_in, bot_in = row_runs[0][1], row_runs[-1][0]
        if len(row_runs) < 2 or bot_in - top_in < min_side:
            continue
        interior = sub[top_in:bot_in]
        col_runs = _runs(interior.mean(axis=0) >= SEPARATOR_COVERAGE)
        if len(col_runs) < 2:
            continue
        cells = []
        for (_a0, a1), (b0, _b1) in zip(col_runs[:-1], col_runs[1:], strict=True):
            if b0 - a1 >= min_side:
                cells.append(BBox(x + a1, y + top_in, b0 - a1, bot_in - top_in))
            elif cells:
                # A sliver between two vertical strokes (a "1" pressed against a border):
                # not a cell; give its width to the previous one.
                last = cells[-1]
                cells[-1] = BBox(last.x, last.y, x + b0 - last.x, last.h)
        if cells:
            outer = BBox(x + col_runs[0][0], y + row_runs[0][0], 0, 0)
            outer = BBox(
                outer.x, outer.y, x + col_runs[-1][1] - outer.x, y + row_runs[-1][1] - outer.y
            )
            # The border itself: the full rows of the top and bottom lines, the full columns
            # of the side borders and separators. Only these are erased later, so a stroke
            # lying along a border keeps whatever sticks out of the line.
            x0, x1 = x + col_runs[0][0], x + col_runs[-1][1]
            borders = [BBox(x0, y + r0, x1 - x0, r1 - r0) for r0, r1 in (row_runs[0], row_runs[-1])]
            borders += [BBox(x + c0, y + top_in, c1 - c0, bot_in - top_in) for c0, c1 in col_runs]
            frames.append((outer, cells, borders))

    # A frame inside another: a squarish loop of handwriting drawn in a box (smaller than the
    # cell holding it) is ink, not a frame; a frame around field-sized frames is a section
    # border, not a field.
    def inside(a: BBox, b: BBox) -> bool:
        return a.x >= b.x and a.y >= b.y and a.x2 <= b.x2 and a.y2 <= b.y2

    drop: set[int] = set()
    for k, (outer, cells, _b) in enumerate(frames):
        for j, (o, _cells, _bb) in enumerate(frames):
            if j == k or not inside(o, outer):
                continue
            host = next((c for c in cells if inside(o, c)), None)
            if host is not None and o.h < 0.8 * host.h:
                drop.add(j)
            else:
                drop.add(k)
    keep = [(cells, borders) for k, (_o, cells, borders) in enumerate(frames) if k not in drop]
    return keep


def _group_combs(cells: list[BBox], line_width: int) -> list[list[BBox]]:
    """Cells side by side on one row with shared or close borders -> groups (left to right)."""
    cells = sorted(cells, key=lambda b: (b.x, b.y))
    used = [False] * len(cells)
    groups: list[list[BBox]] = []
    for i, c in enumerate(cells):
        if used[i]:
            continue
        used[i] = True
        group = [c]
        while True:
            last = group[-1]
            tol = max(3, int(0.15 * last.h))
            gap_max = 2 * line_width + max(3, int(0.1 * last.h))
            nxt = None
            for j, d in enumerate(cells):
                if used[j]:
                    continue
                gap = d.x - last.x2
                if (
                    -line_width <= gap <= gap_max
                    and abs(d.y - last.y) <= tol
                    and abs(d.y2 - last.y2) <= tol
                ):
                    nxt = j
                    break
            if nxt is None:
                break
            used[nxt] = True
            group.append(cells[nxt])
        groups.append(group)
    return groups


def _line_width(horiz: npt.NDArray[np.uint8]) -> int:
    """Median thickness of long horizontal lines (area / length), at least 1."""
    n, _lab, stats, _c = cv2.connectedComponentsWithStats(horiz, connectivity=8)
    widths = [
        stats[i, cv2.CC_STAT_AREA] / stats[i, cv2.CC_STAT_WIDTH]
        for i in range(1, n)
        if stats[i, cv2.CC_STAT_WIDTH] >= 4 * stats[i, cv2.CC_STAT_HEIGHT]
    ]
    return max(1, int(round(float(np.median(widths))))) if widths else 2


def _frame_band(cell: BBox, lw: int, shape: tuple[int, int]) -> tuple[slice, slice, BBox]:
    """Slices of the cell grown by its border (plus slack), and the cell shrunk by one pixel."""
    h, w = shape
    pad = lw + 2
    ys = slice(max(0, cell.y - pad), min(h, cell.y2 + pad))
    xs = slice(max(0, cell.x - pad), min(w, cell.x2 + pad))
    inner = BBox(cell.x + 1, cell.y + 1, max(0, cell.w - 2), max(0, cell.h - 2))
    return ys, xs, inner


def reading_order(boxes: Sequence[BBox]) -> list[int]:
    """Indices of ``boxes`` top to bottom, then left to right within a row.

    Boxes whose vertical extents overlap by more than half the smaller height share a row.
    """
    order = sorted(range(len(boxes)), key=lambda i: boxes[i].y + boxes[i].h / 2)
    rows: list[list[int]] = []
    for i in order:
        b = boxes[i]
        placed = False
        for row in rows:
            r = boxes[row[0]]
            overlap = min(b.y2, r.y2) - max(b.y, r.y)
            if overlap > 0.5 * min(b.h, r.h):
                row.append(i)
                placed = True
                break
        if not placed:
            rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda k: boxes[k].x)]


def detect_fields(ink: npt.NDArray[np.uint8]) -> Structure:
    """Boxes, combs and underlines of a deskewed page.

    ink: uint8 (H, W) 0/255 from :func:`ink_mask`, already deskewed.
    """
    h, w = ink.shape
    horiz, vert = _line_candidates(ink)
    lw = _line_width(horiz)
    lines = np.asarray(cv2.bitwise_or(horiz, vert), np.uint8)
    frames = _find_frames(lines, w)
    cells = [c for f, _b in frames for c in f]
    singles = [f[0] for f, _b in frames if len(f) == 1]
    groups = [f for f, _b in frames if len(f) > 1] + _group_combs(singles, lw)

    h_struct = np.zeros_like(ink)
    v_struct = np.zeros_like(ink)
    # Border rows/columns found by coverage miss the line's ragged, partly covered edge rows
    # (blur, residual skew); all ink within BORDER_SLACK pixels of them is border too.
    for _cells, borders in frames:
        for b in borders:
            c = _clip(
                BBox(
                    b.x - BORDER_SLACK,
                    b.y - BORDER_SLACK,
                    b.w + 2 * BORDER_SLACK,
                    b.h + 2 * BORDER_SLACK,
                ),
                ink.shape,
            )
            target = h_struct if b.w > b.h else v_struct
            target[c.y : c.y2, c.x : c.x2] = 255
    fields: list[FieldGeometry] = []
    for group in groups:
        outer = BBox.union(group)
        outer = BBox(outer.x - lw - 1, outer.y - lw - 1, outer.w + 2 * lw + 2, outer.h + 2 * lw + 2)
        kind = "comb" if len(group) > 1 else "box"
        fields.append(FieldGeometry(kind, _clip(outer, ink.shape), tuple(group)))

    # Underlines: long horizontal runs not already part of a box frame.
    cell_h = float(np.median([c.h for c in cells])) if cells else 0.0
    zone_h = (
        int(round(cell_h * UNDERLINE_ZONE_CELLS)) if cells else int(w * UNDERLINE_ZONE_FRACTION)
    )
    zone_h = max(zone_h, 8)
    min_len = max(20, int(w * UNDERLINE_MIN_FRACTION))
    n, lab, stats, _c = cv2.connectedComponentsWithStats(horiz, connectivity=8)
    for i in range(1, n):
        x, y, cw, ch = (int(v) for v in stats[i, :4])
        if cw < min_len:
            continue
        # The line is the rows it fills end to end; strokes lying on it (the base of a 2)
        # make the piece taller but not those rows more numerous.
        piece = lab[y : y + ch, x : x + cw] == i
        full = np.nonzero(piece.mean(axis=1) >= FRAME_COVERAGE)[0]
        if full.size == 0 or full.size > max(3 * lw, 6):
            continue
        ly0, ly1 = y + int(full.min()), y + int(full.max()) + 1
        seg = BBox(x, ly0, cw, ly1 - ly0)
        if any(_overlaps(seg, f.bbox) for f in fields if f.kind != "underline"):
            continue
        top = max(0, ly0 - zone_h)
        zone = BBox(x, top, cw, ly0 - top)
        fields.append(FieldGeometry("underline", BBox.union([zone, seg]), (zone,)))
        r0 = max(0, ly0 - BORDER_SLACK)
        r1 = min(h, ly1 + BORDER_SLACK)
        h_struct[r0:r1, x : x + cw] = 255

    order = reading_order([f.bbox for f in fields])
    return Structure(
        np.asarray(cv2.bitwise_and(h_struct, ink), np.uint8),
        np.asarray(cv2.bitwise_and(v_struct, ink), np.uint8),
        tuple(fields[i] for i in order),
        lw,
    )


def _overlaps(a: BBox, b: BBox) -> bool:
    return a.x < b.x2 and b.x < a.x2 and a.y < b.y2 and b.y < a.y2


def _clip(b: BBox, shape: tuple[int, ...]) -> BBox:
    h, w = shape[:2]
    x0, y0 = max(0, b.x), max(0, b.y)
    x1, y1 = min(w, b.x2), min(h, b.y2)
    return BBox(x0, y0, max(0, x1 - x0), max(0, y1 - y0))


# --------------------------------------------------------------------------------------------
# 4. Border removal that keeps crossing strokes


def _shift(a: npt.NDArray[np.bool_], dy: int, dx: int) -> npt.NDArray[np.bool_]:
    """``a`` moved by (dy, dx) with zero fill."""
    out = np.zeros_like(a)
    h, w = a.shape
    ys_src = slice(max(0, -dy), min(h, h - dy))
    xs_src = slice(max(0, -dx), min(w, w - dx))
    ys_dst = slice(max(0, dy), min(h, h + dy))
    xs_dst = slice(max(0, dx), min(w, w + dx))
    out[ys_dst, xs_dst] = a[ys_src, xs_src]
    return out


def clean_ink(
    ink: npt.NDArray[np.uint8],
    h_lines: npt.NDArray[np.uint8],
    v_lines: npt.NDArray[np.uint8],
    line_width: int,
) -> npt.NDArray[np.uint8]:
    """Ink without the structural lines, keeping the line pixels that strokes cross or touch.

    ink: uint8 (H, W) 0/255; h_lines, v_lines: the horizontal and vertical border pixels
    (uint8 0/255). Walking across a border from stroke ink that meets it (within
    ``CROSS_REACH`` pixels, one pixel of slack sideways for slanted strokes), the border pixels
    on the way are kept:

    - when a stroke meets the border on both sides (it crosses), or
    - when a stroke leaves the border on one side (ink 1 and ``STROKE_LEAVE`` pixels away): a 2
      whose base rests on the line or a 7 whose bar hangs from it keeps that stroke, with the
      bit of line under it, rather than losing it with the border.

    Border pixels no stroke meets are removed.
    """
    ink_b = ink > 0
    hb = (h_lines > 0) & ink_b
    vb = (v_lines > 0) & ink_b
    rest = ink_b & ~(hb | vb)
    widened = rest | _shift(rest, 0, 1) | _shift(rest, 0, -1)
    tall = rest | _shift(rest, 1, 0) | _shift(rest, -1, 0)
    steps = line_width + 2 * BORDER_SLACK + 4

    def walk(
        src: npt.NDArray[np.bool_], line_b: npt.NDArray[np.bool_], dy: int, dx: int, strong: bool
    ) -> npt.NDArray[np.bool_]:
        seed = np.zeros_like(rest)
        for k in range(1, CROSS_REACH + 1):
            near = _shift(src, k * dy, k * dx)
            if strong:
                far = k + STROKE_LEAVE - 1
                near &= _shift(src, far * dy, far * dx)
            seed |= near
        flag = seed & line_b
        for _ in range(steps):
            step = _shift(flag, dy, dx)
            if not strong:
                # A slanted stroke (the stem of a 7) crosses a thick border sideways: let the
                # walk spread one pixel sideways per step; the two walks' overlap is the stroke.
                step |= _shift(step, dx, dy) | _shift(step, -dx, -dy)
            flag |= step & line_b
        return flag

    down, up = walk(widened, hb, 1, 0, False), walk(widened, hb, -1, 0, False)
    right, left = walk(tall, vb, 0, 1, False), walk(tall, vb, 0, -1, False)
    cross_h, cross_v = down & up, right & left
    # One-sided leaves, per side of the border: from above, below, the left, the right.
    leaves_h = (walk(widened, hb, 1, 0, True), walk(widened, hb, -1, 0, True))
    leaves_v = (walk(tall, vb, 0, 1, True), walk(tall, vb, 0, -1, True))
    keep = cross_h | cross_v | leaves_h[0] | leaves_h[1] | leaves_v[0] | leaves_v[1]
    # A loop tangent to a border (the top of a 9 or 0 under a box's top line) leaves it at two
    # nearby points on the same side; the border between them is the loop's own stroke: close
    # short gaps. Only between leaves on one side, and away from strokes that cross: a 7
    # crossing a top line leaves it upward with its bar and crosses it with its stem, and
    # filling between the two closes a loop under the bar (a 9).
    gap = TANGENT_GAP_WIDTHS * line_width + 2
    reach = line_width + 2 * BORDER_SLACK
    near_cross_h = cv2.dilate(cross_h.astype(np.uint8), np.ones((1, 2 * reach + 1), np.uint8)) > 0
    near_cross_v = cv2.dilate(cross_v.astype(np.uint8), np.ones((2 * reach + 1, 1), np.uint8)) > 0
    # Never across a cell separator: two digits of a comb leaving the same border would be
    # joined into one.
    sep_cols = np.asarray(v_lines.any(axis=0), bool)
    sep_rows = np.asarray(h_lines.any(axis=1), bool)
    for side in leaves_h:
        one_sided = (side & hb & ~near_cross_h).astype(np.uint8)
        kh = cv2.morphologyEx(one_sided, cv2.MORPH_CLOSE, np.ones((1, gap), np.uint8))
        keep |= kh.astype(bool) & hb & ~sep_cols[None, :]
    for side in leaves_v:
        one_sided = (side & vb & ~near_cross_v).astype(np.uint8)
        kv = cv2.morphologyEx(one_sided, cv2.MORPH_CLOSE, np.ones((gap, 1), np.uint8))
        keep |= kv.astype(bool) & vb & ~sep_rows[:, None]
    return np.where(rest | keep, 255, 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# 5. Characters of each field


#: A candidate character's crop (uint8, dark ink on white) and its top-left on the deskewed page.
_CropAt = tuple[npt.NDArray[np.uint8], tuple[int, int]]


@dataclass
class _Candidate:
    """A field's reading lattice: pieces' pixel masks and the edges that combine them."""

    spec: FieldSpec
    #: (n_nodes, [(start, end, bbox, crop index)]) per field.
    n_nodes: int = 1
    edges: list[tuple[int, int, BBox, int]] = field(default_factory=list)
    #: For combs: the cell of each node step; empty cells are skipped.
    cell_of_edge: list[int] = field(default_factory=list)
    #: Probability factor of edges by (start, end): a character cut out of a wider piece of ink
    #: (SPLIT_PENALTY), a fragment read as a character of its own (FRAGMENT_PENALTY).
    span_factor: dict[tuple[int, int], float] = field(default_factory=dict)
    #: (start, end, probability) of blank edges: a fragment read as no character.
    blanks: list[tuple[int, int, float]] = field(default_factory=list)


def _component_zones(
    labels: npt.NDArray[np.int32], n_labels: int, zone_map: npt.NDArray[np.int32], n_zones: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For each component, the zone (1..n_zones) holding most of its pixels (0 for none), and
    the pixel counts per component and zone, int64 (n_labels, n_zones + 1)."""
    both = labels.astype(np.int64) * (n_zones + 1) + zone_map
    counts = np.bincount(both.ravel(), minlength=n_labels * (n_zones + 1))
    counts = counts.reshape(n_labels, n_zones + 1)
    total = counts.sum(axis=1)
    counts[:, 0] = 0
    best = counts.argmax(axis=1)
    # A component belongs to a zone only if a good share of it lies inside: a stroke crossing a
    # border keeps most of its ink in its cell, a prompt or frame grazing a zone does not.
    inside = counts.max(axis=1)
    best[inside < MIN_INSIDE_SHARE * np.maximum(total, 1)] = 0
    return best, counts


def _crop(
    labels: npt.NDArray[np.int32], comps: Sequence[int], box: BBox, col_range: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """Ink of components ``comps`` inside ``box``, columns [c0, c1): dark on white uint8."""
    sub = labels[box.y : box.y2, box.x : box.x2]
    m = np.isin(sub, comps)
    c0, c1 = col_range
    m[:, : max(0, c0 - box.x)] = False
    m[:, max(0, c1 - box.x) :] = False
    return np.where(m, 0, 255).astype(np.uint8)


def _split_cuts(mask: npt.NDArray[np.bool_], n_parts: int) -> list[int]:
    """Column cut positions (relative) splitting ``mask`` into ``n_parts`` at ink minima."""
    h, w = mask.shape
    prof = mask.sum(axis=0).astype(np.float64)
    cuts = []
    for k in range(1, n_parts):
        centre = int(round(k * w / n_parts))
        lo, hi = max(1, centre - w // (2 * n_parts)), min(w - 1, centre + w // (2 * n_parts))
        if hi <= lo:
            cuts.append(centre)
            continue
        cuts.append(lo + int(np.argmin(prof[lo:hi])))
    return sorted(set(cuts))


def _free_field_lattice(
    labels: npt.NDArray[np.int32],
    stats: npt.NDArray[np.int32],
    comps: list[int],
    crops: list[_CropAt],
    cand: _Candidate,
    slot_w: float | None = None,
) -> tuple[int, list[tuple[int, int, BBox, int]]]:
    """Lattice of a box or underline field from its components; penalties and blank edges go
    into ``cand.span_factor`` and ``cand.blanks``.

    Components overlapping in x are one character (broken strokes, the dot of a j); a group
    much wider than tall may be touching characters, so its pieces between ink minima are
    offered alone and merged. A small group (a fragment: the loose bar of a 5, a broken-off bit
    of a 1) may also be read as nothing, or together with its neighbour. ``slot_w``: the width
    of one character's slot when the field's length is known (zone width / length); any two
    neighbouring groups that fit in it together are then also offered as one character.
    """
    if not comps:
        return 1, []
    boxes = {c: BBox(*(int(v) for v in stats[c, :4])) for c in comps}
    comps = sorted(comps, key=lambda c: boxes[c].x)
    groups: list[list[int]] = []
    for c in comps:
        b = boxes[c]
        if groups:
            last = BBox.union(boxes[k] for k in groups[-1])
            overlap = min(last.x2, b.x2) - max(last.x, b.x)
            if overlap > 0.5 * min(last.w, b.w):
                groups[-1].append(c)
                continue
        groups.append([c])

    # Character height: the median over pieces of at least FRAGMENT_SIZE of the tallest. With
    # five characters, a 5 whose bar came loose and one more small piece pull the plain median
    # down to a fragment's height; the 5's body and bar then look too wide to be one character.
    heights = [BBox.union(boxes[k] for k in g).h for g in groups]
    char_h = float(np.median([h for h in heights if h >= FRAGMENT_SIZE * max(heights)]))
    edges: list[tuple[int, int, BBox, int]] = []
    node = 0
    singles: list[tuple[int, list[int], BBox]] = []  # unsplit groups: start node, comps, box
    for g in groups:
        gb = BBox.union(boxes[k] for k in g)
        parts = 1
        if gb.w > SPLIT_ASPECT * max(gb.h, char_h):
            parts = min(4, max(2, int(round(gb.w / (0.7 * max(gb.h, char_h))))))
        if parts == 1:
            crops.append((_crop(labels, g, gb, (gb.x, gb.x2)), (gb.x, gb.y)))
            edges.append((node, node + 1, gb, len(crops) - 1))
            singles.append((node, g, gb))
            if max(gb.w, gb.h) < FRAGMENT_SIZE * char_h:
                cand.span_factor[(node, node + 1)] = FRAGMENT_PENALTY
                cand.blanks.append((node, node + 1, FRAGMENT_BLANK))
            node += 1
            continue
        mask = np.isin(labels[gb.y : gb.y2, gb.x : gb.x2], g)
        cuts = [0, *_split_cuts(mask, parts), gb.w]
        n_pieces = len(cuts) - 1
        for i in range(n_pieces):
            for j in range(i + 1, n_pieces + 1):
                c0, c1 = gb.x + cuts[i], gb.x + cuts[j]
                crop = _crop(labels, g, gb, (c0, c1))
                ink_cols = np.nonzero((crop < 128).any(axis=0))[0]
                if ink_cols.size == 0:
                    continue
                ink_rows = np.nonzero((crop < 128).any(axis=1))[0]
                box = BBox(
                    gb.x + int(ink_cols[0]),
                    gb.y + int(ink_rows[0]),
                    int(ink_cols[-1] - ink_cols[0] + 1),
                    int(ink_rows[-1] - ink_rows[0] + 1),
                )
                crops.append((crop, (gb.x, gb.y)))
                edges.append((node + i, node + j, box, len(crops) - 1))
                if (i, j) != (0, n_pieces):
                    cand.span_factor[(node + i, node + j)] = SPLIT_PENALTY
        node += n_pieces
    # Two neighbouring pieces may be one broken character (a 5 whose top came loose): offer
    # the merge when together they are no wider than a character and nearly touch (a
    # fragment may lie further off), or, with a known length, fit in one character's slot.
    for (n0, g0, b0), (n1, g1, b1) in zip(singles[:-1], singles[1:], strict=True):
        if n1 != n0 + 1:
            continue
        both = BBox.union([b0, b1])
        small = min(max(b0.w, b0.h), max(b1.w, b1.h)) < FRAGMENT_SIZE * char_h
        gap = (FRAGMENT_GAP if small else MERGE_GAP) * char_h
        near = both.w <= MERGE_WIDTH * char_h and b1.x - b0.x2 <= gap
        if near or (slot_w is not None and both.w <= slot_w):
            crops.append((_crop(labels, g0 + g1, both, (both.x, both.x2)), (both.x, both.y)))
            edges.append((n0, n1 + 1, both, len(crops) - 1))
    return node + 1, edges


def _prepare(
    spec: FieldSpec,
    labels: npt.NDArray[np.int32],
    stats: npt.NDArray[np.int32],
    comps_by_zone: Mapping[int, list[int]],
    zone_ids: list[int],
    crops: list[_CropAt],
) -> _Candidate:
    cand = _Candidate(spec)
    if spec.unreadable:
        return cand
    geo = spec.geometry
    if geo.kind == "comb":
        node = 0
        for cell_idx, zid in enumerate(zone_ids):
            comps = comps_by_zone.get(zid, [])
            if not comps:
                continue
            box = BBox.union(BBox(*(int(v) for v in stats[c, :4])) for c in comps)
            # One character per cell: ink that runs on into a neighbouring cell (two digits
            # joined through the separator) is cut at the separator.
            cell = geo.cells[cell_idx]
            margin = max(2, cell.w // 8)
            lo, hi = max(box.x, cell.x - margin), min(box.x2, cell.x2 + margin)
            crop = _crop(labels, comps, box, (lo, hi))
            ys, xs = np.nonzero(crop < 128)
            if ys.size == 0:
                continue
            box = BBox(
                box.x + int(xs.min()),
                box.y + int(ys.min()),
                int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1),
            )
            crops.append((crop[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], (box.x, box.y)))
            cand.edges.append((node, node + 1, box, len(crops) - 1))
            cand.cell_of_edge.append(cell_idx)
            node += 1
        cand.n_nodes = node + 1
        return cand
    comps = [c for zid in zone_ids for c in comps_by_zone.get(zid, [])]
    length = spec.constraint.length
    slot_w = sum(c.w for c in geo.cells) / length if length else None
    cand.n_nodes, cand.edges = _free_field_lattice(labels, stats, comps, crops, cand, slot_w)
    return cand


def _add_border_variants(
    cands: list[_Candidate], crops: list[_CropAt], structure: Structure
) -> None:
    """Offer a second reading of each character that touches a border.

    Where a stroke meets a border, :func:`clean_ink` keeps the border pixels under it; that
    is right for a 2 resting on the line and wrong for a 7 whose bar was drawn just below it.
    The same character without any border pixels becomes a parallel edge of the lattice, and
    the decoder takes whichever reading is more probable.
    """
    lines = np.maximum(structure.h_lines, structure.v_lines)
    for cand in cands:
        extra = []
        for s, e, box, ci in cand.edges:
            crop, (x0, y0) = crops[ci]
            h, w = crop.shape
            sub = lines[y0 : y0 + h, x0 : x0 + w] > 0
            ink = crop < 128
            if sub.shape != crop.shape or not (sub & ink).any():
                continue
            variant = np.where(sub, 255, crop).astype(np.uint8)
            if (variant < 128).sum() < 0.5 * ink.sum():
                continue
            crops.append((variant, (x0, y0)))
            extra.append((s, e, box, len(crops) - 1))
        cand.edges.extend(extra)


def _add_gray_variants(
    cands: list[_Candidate], crops: list[_CropAt], desk: npt.NDArray[np.uint8]
) -> None:
    """A second view of every candidate: the scan's own gray levels under its ink mask.

    The binary crop loses the pen's soft edges and faint strokes that Otsu cut; the gray one
    keeps them but also keeps paper noise. The lattice gets both as parallel edges and the
    decoder keeps the more probable reading of each character.
    """
    kernel = np.ones((3, 3), np.uint8)
    for cand in cands:
        extra = []
        for s, e, box, ci in cand.edges:
            crop, (x0, y0) = crops[ci]
            h, w = crop.shape
            page = desk[y0 : y0 + h, x0 : x0 + w]
            if page.shape != crop.shape:
                continue
            mask = cv2.dilate((crop < 128).astype(np.uint8), kernel) > 0
            crops.append((np.where(mask, page, 255).astype(np.uint8), (x0, y0)))
            extra.append((s, e, box, len(crops) - 1))
        cand.edges.extend(extra)


def read_fields(
    gray: npt.NDArray[np.uint8],
    *,
    charset: str = "digits",
    template: Template | str | os.PathLike[str] | None = None,
    classifier: Classifier | None = None,
    classifiers: Mapping[str, Classifier] | None = None,
    load: Callable[[str], Classifier] | None = None,
    second_opinion: bool = True,
) -> FormsResult:
    """Find and read the form fields of a page.

    gray: uint8 (H, W), dark ink on light paper, the page as loaded.
    charset: charset of detected fields when there is no template.
    template: a :class:`~hwr_batch.template.Template` or the path of a template JSON file;
        fields then come from the template (registered to this scan) with their own charsets
        and constraints.
    classifier: model to use for fields whose charset is ``charset`` (saves a reload).
    classifiers: models by charset name, overriding loading. ``load`` loads a model by charset
        (default :func:`hwr_batch.load_classifier`).
    second_opinion: re-read unsure candidates under small warps and with a second model
        (:func:`_with_second_opinion`). With ``classifiers`` given, the second model is taken
        only from that mapping (by model name, e.g. "alnum"), never loaded.
    """
    import time

    from hwr_batch import template as tmpl

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    g = np.asarray(gray)
    if g.ndim == 3:
        g = np.asarray(cv2.cvtColor(g, cv2.COLOR_BGR2GRAY))
    g = g.astype(np.uint8)
    shape = g.shape[:2]

    flat, ink_t = ink_levels(g)
    ink = np.where(flat <= ink_t, 255, 0).astype(np.uint8)
    angle = estimate_skew(ink)
    desk, m = rotate_page(g, angle)
    if desk is not g:
        flat, ink_t = ink_levels(desk)
        ink = np.where(flat <= ink_t, 255, 0).astype(np.uint8)
    structure = detect_fields(ink)
    timings["forms_detect"] = time.perf_counter() - t0

    warnings: list[str] = []
    specs: list[FieldSpec]
    registration = None
    if template is not None:
        tpl = tmpl.load_template(template) if not isinstance(template, tmpl.Template) else template
        specs, reg_warnings, registration = tmpl.fields_from_template(tpl, structure, shape)
        warnings.extend(reg_warnings)
    else:
        specs = [
            FieldSpec(f"field_{i:03d}", geo, Constraint(charset))
            for i, geo in enumerate(structure.fields, start=1)
        ]

    t1 = time.perf_counter()
    # Borders only exist around detected fields: clean those windows, leave the rest as is.
    clean = ink.copy()
    pad = 4 * structure.line_width + 8
    for geo in structure.fields:
        win = _clip(
            BBox(geo.bbox.x - pad, geo.bbox.y - pad, geo.bbox.w + 2 * pad, geo.bbox.h + 2 * pad),
            shape,
        )
        ys, xs = slice(win.y, win.y2), slice(win.x, win.x2)
        # Characters are read from the ink with its faint strokes; the borders' own faint
        # edges (blur) near the border pixels count as border.
        win_ink = faint_ink(flat[ys, xs], ink_t, ink[ys, xs])
        faint = (win_ink > 0) & (ink[ys, xs] == 0)
        band = np.ones((2 * BORDER_SLACK + 1, 2 * BORDER_SLACK + 1), np.uint8)
        h_win, v_win = structure.h_lines[ys, xs], structure.v_lines[ys, xs]
        h_win = np.where((cv2.dilate(h_win, band) > 0) & faint, 255, h_win).astype(np.uint8)
        v_win = np.where((cv2.dilate(v_win, band) > 0) & faint, 255, v_win).astype(np.uint8)
        clean[ys, xs] = clean_ink(win_ink, h_win, v_win, structure.line_width)
    n_lab, labels_any, stats_any, _cent = cv2.connectedComponentsWithStats(clean, connectivity=8)
    labels = np.asarray(labels_any, np.int32)
    stats = np.asarray(stats_any, np.int32)

    # Zone map: every reading zone (comb cell, box interior, underline zone) gets an id.
    zone_map = np.zeros(shape, np.int32)
    zone_ids: list[list[int]] = []
    zid = 0
    for spec in specs:
        ids = []
        for cell in spec.geometry.cells:
            zid += 1
            c = _clip(cell, shape)
            zone_map[c.y : c.y2, c.x : c.x2] = zid
            ids.append(zid)
        zone_ids.append(ids)
    comp_zone, zone_counts = _component_zones(labels, n_lab, zone_map, zid)
    comb_zones = {
        z
        for spec, ids in zip(specs, zone_ids, strict=True)
        if spec.geometry.kind == "comb"
        for z in ids
    }

    # Specks: tiny components, and leftovers lying entirely in a border band.
    comps_by_zone: dict[int, list[int]] = {}
    zone_h = {z: 0 for z in range(1, zid + 1)}
    for spec, ids in zip(specs, zone_ids, strict=True):
        for z, cell in zip(ids, spec.geometry.cells, strict=True):
            zone_h[z] = cell.h
    for comp in range(1, n_lab):
        z = int(comp_zone[comp])
        if z == 0:
            continue
        area = int(stats[comp, cv2.CC_STAT_AREA])
        if area < max(3.0, SPECK_FRACTION * zone_h[z] ** 2):
            continue
        comps_by_zone.setdefault(z, []).append(comp)
        if z in comb_zones:
            # Digits joined through a comb separator: the piece in the next cell is its own.
            share = zone_counts[comp] >= COMB_SHARE * area
            for z2 in np.nonzero(share)[0].tolist():
                if z2 != z and z2 in comb_zones:
                    comps_by_zone.setdefault(z2, []).append(comp)

    crops: list[_CropAt] = []
    cands = [
        _prepare(spec, labels, stats, comps_by_zone, ids, crops)
        for spec, ids in zip(specs, zone_ids, strict=True)
    ]
    _add_border_variants(cands, crops, structure)
    _add_gray_variants(cands, crops, desk)
    timings["forms_segment"] = time.perf_counter() - t1

    # One batch per model: every candidate of every field with that charset.
    t2 = time.perf_counter()
    probas: dict[int, tuple[npt.NDArray[np.float32], str]] = {}
    by_charset: dict[str, list[int]] = {}
    for cand in cands:
        for _s, _e, _b, ci in cand.edges:
            by_charset.setdefault(cand.spec.constraint.charset, []).append(ci)
    for cs, idxs in by_charset.items():
        clf = _model_for(cs, charset, classifier, classifiers, load)
        batch = np.stack([normalize(crops[i][0]) for i in idxs])
        p = clf.predict_proba(batch)
        if second_opinion:
            second = _second_model(cs, clf, classifiers, load)
            p = _with_second_opinion(p, batch, clf, second)
        for row, i in enumerate(idxs):
            probas[i] = (p[row], clf.labels)
    timings["forms_classify"] = time.perf_counter() - t2

    fields: list[Field] = []
    for cand in cands:
        fields.append(_decode_field(cand, probas, m, shape))
    timings["forms_total"] = time.perf_counter() - t0
    return FormsResult(tuple(fields), angle, tuple(warnings), timings, m, registration)


def _model_for(
    cs: str,
    page_charset: str,
    classifier: Classifier | None,
    classifiers: Mapping[str, Classifier] | None,
    load: Callable[[str], Classifier] | None,
) -> Classifier:
    if classifiers is not None and cs in classifiers:
        return classifiers[cs]
    if classifier is not None and (
        cs == page_charset or set(CHARSET_LABELS[cs]) <= set(classifier.labels)
    ):
        base = classifier
    elif load is not None:
        base = load(cs)
    else:
        from hwr_batch.classify import load_classifier

        base = load_classifier(cs)
    return field_model(base)


def field_model(clf: Classifier) -> Classifier:
    """The model that reads fields in place of ``clf``: the bundled :data:`FIELD_MODEL` of a
    bundled page model (digits -> digits_forms), else ``clf`` itself (a model given by path is
    used as it is, as is every model when the field model cannot be loaded)."""
    from hwr_batch.classify import is_bundled, load_classifier
    from hwr_batch.errors import ModelError

    name = FIELD_MODEL.get(clf.name)
    if name is None or not is_bundled(clf):
        return clf
    try:
        return load_classifier(name)
    except (ModelError, OSError):
        return clf


def _second_model(
    cs: str,
    first: Classifier,
    classifiers: Mapping[str, Classifier] | None,
    load: Callable[[str], Classifier] | None,
) -> Classifier | None:
    """The second model for fields of charset ``cs``, or None when there is none to be had."""
    from hwr_batch.errors import ModelError

    name = SECOND_MODEL.get(cs)
    if name is None:
        return None
    if classifiers is not None:
        second = classifiers.get(name)
    else:
        try:
            if load is not None:
                second = load(name)
            else:
                from hwr_batch.classify import load_classifier

                second = load_classifier(name)
        except ModelError:
            return None
    if second is None or second is first or not set(first.labels) <= set(second.labels):
        return None
    return second


def _warp_input(
    x: npt.NDArray[np.float32], angle: float, dx: float, dy: float
) -> npt.NDArray[np.float32]:
    """A 28x28 model input (white ink on black) rotated about its centre, then shifted."""
    h, w = x.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
    m[0, 2] += dx
    m[1, 2] += dy
    out = cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return np.asarray(out, np.float32)


def _with_second_opinion(
    proba: npt.NDArray[np.float32],
    batch: npt.NDArray[np.float32],
    clf: Classifier,
    second: Classifier | None,
) -> npt.NDArray[np.float32]:
    """Probabilities with the unsure rows replaced by the mean of several readings.

    proba: float32 (N, C) from ``clf`` on ``batch`` (N, 28, 28). Rows whose best probability
    is under :data:`SECOND_OPINION_BELOW` become the mean of three readings: the first one,
    the mean of ``clf`` over :data:`SECOND_OPINION_WARPS` of the input, and ``second`` (when
    given) taken over ``clf``'s labels and renormalised. Sure rows are returned unchanged.
    """
    unsure = np.flatnonzero(proba.max(axis=1) < SECOND_OPINION_BELOW)
    if unsure.size == 0:
        return proba
    x = batch[unsure]
    readings = [proba[unsure].astype(np.float64)]
    warped = np.concatenate([[_warp_input(c, *w) for c in x] for w in SECOND_OPINION_WARPS])
    tta = np.asarray(clf.predict_proba(warped), np.float64)
    readings.append(tta.reshape(len(SECOND_OPINION_WARPS), len(x), -1).mean(axis=0))
    if second is not None:
        from hwr_batch.classify import proba_over

        readings.append(proba_over(second, x, clf.labels))
    out = proba.copy()
    out[unsure] = np.mean(readings, axis=0).astype(np.float32)
    return out


def _decode_field(
    cand: _Candidate,
    probas: Mapping[int, tuple[npt.NDArray[np.float32], str]],
    m: npt.NDArray[np.float64],
    shape: tuple[int, int],
) -> Field:
    """Decode one field's lattice and map its boxes back to the page as loaded."""
    spec = cand.spec
    inv = np.asarray(cv2.invertAffineTransform(m), np.float64)
    bbox = map_box(spec.geometry.bbox, inv, shape)
    if spec.unreadable:
        return Field(
            spec.name, spec.geometry.kind, bbox, "", 0.0, (), True, spec.constraint.charset
        )
    if not cand.edges:
        dec = decode_lattice(1, [], CHARSET_LABELS[spec.constraint.charset], spec.constraint)
        chars: tuple[Char, ...] = ()
    else:
        labels = probas[cand.edges[0][3]][1]
        edges = [
            Edge(s, e, probas[ci][0] * cand.span_factor.get((s, e), 1.0))
            for s, e, _b, ci in cand.edges
        ]
        # Blank edges come after the character edges, so the decoder's edge indices into
        # the character edges are indices into ``cand.edges``.
        edges += [Edge(s, e, np.zeros(0, np.float32), blank=p) for s, e, p in cand.blanks]
        dec = decode_lattice(cand.n_nodes, edges, labels, spec.constraint)
        chars = tuple(
            _make_char(cand.edges[k][2], lab, pk, probas[cand.edges[k][3]], inv, shape)
            for k, lab, pk in zip(dec.edges, dec.value, dec.char_probs, strict=True)
        )
    confidence = float(min(1.0, max(0.0, dec.confidence)))
    least = min((float(p) for p in dec.char_probs), default=1.0)
    review = (
        (not dec.fits)
        or confidence < FIELD_MIN_CONFIDENCE
        or least < CHAR_MIN_CONFIDENCE
        or _views_disagree(cand, probas, dec)
    )
    return Field(
        spec.name,
        spec.geometry.kind,
        bbox,
        dec.value,
        confidence,
        chars,
        review,
        spec.constraint.charset,
    )


def _views_disagree(
    cand: _Candidate,
    probas: Mapping[int, tuple[npt.NDArray[np.float32], str]],
    dec: Decoded,
) -> bool:
    """Whether some view of a chosen character gives its label under :data:`VIEW_MIN_PROB`.

    A character is read from up to four views of the same ink (binary or gray, with or
    without the border pixels under its strokes) and the decoder keeps the surest. When
    another view of the same span reads something else outright, the value hangs on how the
    ink was cut out, and the reader is then wrong far more often than its confidence says.
    """
    for k, lab in zip(dec.edges, dec.value, strict=True):
        span = (cand.edges[k][0], cand.edges[k][1])
        for s, e, _b, ci in cand.edges:
            if (s, e) != span:
                continue
            p, labels = probas[ci]
            if float(p[labels.index(lab)]) < VIEW_MIN_PROB:
                return True
    return False


def _make_char(
    box: BBox,
    label: str,
    prob: float,
    proba_labels: tuple[npt.NDArray[np.float32], str],
    inv: npt.NDArray[np.float64],
    shape: tuple[int, int],
) -> Char:
    from hwr_batch import defaults

    p, labels = proba_labels
    order = np.argsort(-p)[: defaults.TOP_K]
    alts = [(label, float(min(1.0, max(0.0, prob))))]
    alts += [(labels[int(k)], float(p[k])) for k in order if labels[int(k)] != label]
    return Char(
        map_box(box, inv, shape),
        label,
        float(min(1.0, max(0.0, prob))),
        tuple(alts[: defaults.TOP_K]),
    )


__all__ = [
    "FieldGeometry",
    "FieldSpec",
    "FormsResult",
    "Structure",
    "clean_ink",
    "detect_fields",
    "estimate_skew",
    "ink_mask",
    "map_box",
    "read_fields",
    "reading_order",
    "rotate_page",
    "rotation_matrix",
]
