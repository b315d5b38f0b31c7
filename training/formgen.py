"""Synthetic filled-in forms with ground truth, for tests, samples and the forms benchmark.

A :class:`Layout` is a blank form: a printed heading, and rows of printed prompts each followed
by a field (a closed box, a comb of cells, or an underline), in page pixels. :func:`render_form`
fills a layout with handwritten digits (MNIST crops, dark ink), some touching or crossing the
borders, leaves some fields empty, then scans it: rotation, shift, rescale, blur and noise. The
ground truth gives every field's value and its box on the scan, and the exact layout -> scan
transform, so a template's registration can be scored.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from hwr_batch.records import BBox
from hwr_batch.template import Template, propose_template

PROMPTS = (
    "Postcode",
    "Customer no.",
    "Account",
    "Amount",
    "Reference",
    "Branch",
    "Policy no.",
    "Member ID",
    "Invoice",
    "Order",
    "Ticket",
    "Claim no.",
)


@dataclass(frozen=True)
class FieldLayout:
    """One blank field: kind ("box", "comb", "underline"), its outer box, cells, prompt."""

    name: str
    kind: str
    box: BBox
    cells: int
    length: int
    prompt: str


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    title: str
    fields: tuple[FieldLayout, ...]
    line_width: int


@dataclass(frozen=True)
class FieldTruth:
    name: str
    kind: str
    value: str
    #: Box of the field on the scan (axis-aligned around the transformed layout box).
    bbox: BBox


@dataclass(frozen=True)
class GeneratedForm:
    """gray: uint8 (H, W) dark ink on light paper; transform: 2x3 layout -> scan affine."""

    gray: npt.NDArray[np.uint8]
    fields: tuple[FieldTruth, ...]
    transform: npt.NDArray[np.float64]
    angle: float
    scale: float
    shift: tuple[float, float]


def load_mnist_test(root: str | Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.str_]]:
    """MNIST *test* split from ``root`` (idx files, gzipped): uint8 (N, 28, 28), labels str."""
    root = Path(root)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(n, 28, 28)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        lab = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, lab.astype(str)


def make_layout(
    rng: np.random.Generator,
    width: int = 1240,
    height: int = 1754,
    n_fields: int = 10,
    kinds: tuple[str, ...] = ("box", "comb", "underline"),
    length: int = 5,
) -> Layout:
    """A blank form with ``n_fields`` fields of ``length`` characters in rows.

    Sizes scale with ``width`` (1240 px = A4 at 150 dpi): cells ~4.5% of the width high.
    Margins of 9% keep every field on the page after a +-3% shift, +-5% scale and +-3 deg turn.
    """
    u = width / 1240.0
    margin_x, top = int(0.09 * width), int(0.16 * height)
    cell_h = int(round(rng.uniform(50, 62) * u))
    cell_w = int(round(cell_h * rng.uniform(0.78, 0.9)))
    lw = max(2, int(round(2 * u)))
    row_h = int(cell_h * 2.1)
    usable = height - top - int(0.1 * height)
    n_rows = min(n_fields, usable // row_h)
    fields = []
    for r in range(n_rows):
        kind = kinds[r % len(kinds)] if len(kinds) < 3 else kinds[int(rng.integers(len(kinds)))]
        prompt = PROMPTS[r % len(PROMPTS)]
        y = top + r * row_h
        x = margin_x + int(0.22 * width) + int(rng.integers(0, int(0.08 * width)))
        if kind == "comb":
            box = BBox(x, y, length * cell_w, cell_h)
        elif kind == "box":
            box = BBox(x, y, int(length * cell_w * 1.05), cell_h)
        else:
            box = BBox(x, y, int(length * cell_w * 1.15), cell_h)
        fields.append(FieldLayout(f"f{r + 1:02d}", kind, box, length, length, prompt))
    return Layout(width, height, "APPLICATION FORM", tuple(fields), lw)


def _draw_layout(layout: Layout) -> npt.NDArray[np.float32]:
    """Printed heading, prompts, boxes, cells and underlines: float32 (H, W), paper 1.0."""
    page = np.full((layout.height, layout.width), 255, np.uint8)
    u = layout.width / 1240.0
    lw = layout.line_width
    cv2.putText(
        page,
        layout.title,
        (int(0.09 * layout.width), int(0.09 * layout.height)),
        cv2.FONT_HERSHEY_DUPLEX,
        1.6 * u,
        25,
        max(1, int(round(2 * u))),
        cv2.LINE_AA,
    )
    for f in layout.fields:
        b = f.box
        cv2.putText(
            page,
            f.prompt + ":",
            (int(0.09 * layout.width), b.y2 - int(0.25 * b.h)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.9 * u,
            25,
            max(1, int(round(2 * u))),
            cv2.LINE_AA,
        )
        if f.kind in ("box", "comb"):
            cv2.rectangle(page, (b.x, b.y), (b.x2, b.y2), 25, lw)
            if f.kind == "comb":
                for k in range(1, f.cells):
                    x = b.x + int(round(k * b.w / f.cells))
                    cv2.line(page, (x, b.y), (x, b.y2), 25, lw)
        else:
            cv2.line(page, (b.x, b.y2), (b.x2, b.y2), 25, lw)
    return page.astype(np.float32) / 255.0


def fit_height(digit: npt.NDArray[np.uint8], height: float, max_width: float) -> float:
    """``height``, reduced if the digit drawn that high would be wider than ``max_width``."""
    ys, xs = np.nonzero(digit > 30)
    aspect = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
    return float(min(height, max_width / (1.1 * aspect)))


def _paste_digit(
    page: npt.NDArray[np.float32],
    digit: npt.NDArray[np.uint8],
    cx: float,
    cy: float,
    height: float,
    ink: float,
    rng: np.random.Generator,
    max_width: float | None = None,
) -> None:
    """Draw an MNIST digit (white on black 28x28) as dark ink, its ink box centred at (cx, cy).

    A digit wider than ``max_width`` is drawn smaller: people write inside the slot they have.
    """
    ys, xs = np.nonzero(digit > 30)
    crop = digit[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255.0
    if max_width is not None:
        height = fit_height(digit, height, max_width)
    s = height / crop.shape[0]
    w = max(2, int(round(crop.shape[1] * s * rng.uniform(0.9, 1.1))))
    h = max(2, int(round(height)))
    glyph = cv2.resize(crop, (w, h), interpolation=cv2.INTER_CUBIC)
    glyph = np.clip(glyph, 0, 1)
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    ph, pw = page.shape
    gx0, gy0 = max(0, -x0), max(0, -y0)
    x0c, y0c = max(0, x0), max(0, y0)
    x1c, y1c = min(pw, x0 + w), min(ph, y0 + h)
    if x1c <= x0c or y1c <= y0c:
        return
    g = glyph[gy0 : gy0 + (y1c - y0c), gx0 : gx0 + (x1c - x0c)]
    region = page[y0c:y1c, x0c:x1c]
    np.minimum(region, 1.0 - g * (1.0 - ink), out=region)


def render_form(
    layout: Layout,
    digits: tuple[npt.NDArray[np.uint8], npt.NDArray[np.str_]],
    rng: np.random.Generator,
    *,
    empty_prob: float = 0.1,
    touch_prob: float = 0.25,
    cross_prob: float = 0.15,
    max_angle: float = 3.0,
    max_shift: float = 0.03,
    max_scale: float = 0.05,
    noise: float = 6.0,
) -> GeneratedForm:
    """Fill ``layout`` with digits and scan it.

    digits: MNIST-style (images uint8 (N, 28, 28) white on black, labels str (N,)).
    touch_prob / cross_prob: per character, the chance its ink reaches exactly to the cell's
    top or bottom border, or crosses it by 15-30% of its height.
    """
    images, labels = digits
    page = _draw_layout(layout)
    values: dict[str, str] = {}
    for f in layout.fields:
        if rng.random() < empty_prob:
            values[f.name] = ""
            continue
        idx = rng.integers(0, len(images), size=f.length)
        values[f.name] = "".join(str(labels[i]) for i in idx)
        ink = float(rng.uniform(0.0, 0.25))
        b = f.box
        slot_w = b.w / f.cells if f.kind == "comb" else (b.w - 0.3 * b.h) / f.length
        for k, i in enumerate(idx):
            height = fit_height(images[i], b.h * rng.uniform(0.6, 0.78), 0.85 * slot_w)
            if f.kind == "comb":
                cx = b.x + (k + 0.5) * slot_w + rng.uniform(-0.06, 0.06) * slot_w
            else:
                cx = b.x + 0.15 * b.h + (k + 0.5) * slot_w + rng.uniform(-0.05, 0.05) * slot_w
            cy = b.y + b.h / 2 + rng.uniform(-0.05, 0.05) * b.h
            if f.kind == "underline":
                # Written on the line: the bottom sits near it, sometimes through it.
                cy = b.y2 - height / 2 - rng.uniform(0.03, 0.1) * b.h
            r = rng.random()
            if r < touch_prob:
                if f.kind == "underline" or rng.random() < 0.5:
                    cy = b.y2 - height / 2 + 1
                else:
                    cy = b.y + height / 2 - 1
            elif r < touch_prob + cross_prob:
                over = height * rng.uniform(0.15, 0.3)
                if f.kind == "underline" or rng.random() < 0.5:
                    cy = b.y2 - height / 2 + over
                else:
                    cy = b.y + height / 2 - over
            _paste_digit(page, images[i], cx, cy, height, ink, rng, max_width=0.85 * slot_w)

    angle = float(rng.uniform(-max_angle, max_angle))
    scale = float(1.0 + rng.uniform(-max_scale, max_scale))
    shift = (
        float(rng.uniform(-max_shift, max_shift) * layout.width),
        float(rng.uniform(-max_shift, max_shift) * layout.height),
    )
    m = np.asarray(
        cv2.getRotationMatrix2D((layout.width / 2, layout.height / 2), angle, scale), np.float64
    )
    m[0, 2] += shift[0]
    m[1, 2] += shift[1]
    scan = cv2.warpAffine(
        page,
        m,
        (layout.width, layout.height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=1.0,
    )
    scan = cv2.GaussianBlur(scan, (3, 3), 0.6)
    scan = scan * 235.0 + 10.0 + rng.normal(0.0, noise, scan.shape)
    gray = np.clip(scan, 0, 255).astype(np.uint8)

    truths = []
    for f in layout.fields:
        truths.append(FieldTruth(f.name, f.kind, values[f.name], _map(f.box, m)))
    return GeneratedForm(gray, tuple(truths), m, angle, scale, shift)


def _map(b: BBox, m: npt.NDArray[np.float64]) -> BBox:
    pts = np.array([[b.x, b.y], [b.x2, b.y], [b.x, b.y2], [b.x2, b.y2]], np.float64)
    q = pts @ m[:, :2].T + m[:, 2]
    x0, y0 = q.min(axis=0)
    x1, y1 = q.max(axis=0)
    return BBox(int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0)))


def map_points(
    points: npt.NDArray[np.float64], m: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """(N, 2) points through a 2x3 affine."""
    return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


def box_iou(a: BBox, b: BBox) -> float:
    """Intersection over union of two boxes (0 when both are empty)."""
    ix = max(0, min(a.x2, b.x2) - max(a.x, b.x))
    iy = max(0, min(a.y2, b.y2) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union else 0.0


def template_for_layout(
    layout: Layout,
    digits: tuple[npt.NDArray[np.uint8], npt.NDArray[np.str_]],
    rng: np.random.Generator,
    name: str,
    min_iou: float = 0.0,
) -> Template:
    """``template init`` on the layout's blank form, each proposed field renamed after the layout
    field it overlaps most and given that field's length (fields overlapping none by at least
    ``min_iou`` are dropped): the template a person would make by editing the proposal."""
    blank = render_form(
        layout, digits, rng, empty_prob=1.0, max_angle=0, max_shift=0, max_scale=0, noise=2.0
    )
    proposed = propose_template(blank.gray, name=name)
    fields = []
    for tf in proposed.fields:
        box = BBox(
            int(tf.box[0] * layout.width),
            int(tf.box[1] * layout.height),
            int(tf.box[2] * layout.width),
            int(tf.box[3] * layout.height),
        )
        best = max(layout.fields, key=lambda lf: box_iou(box, lf.box))
        if box_iou(box, best.box) < min_iou:
            continue
        fields.append(replace(tf, name=best.name, length=best.length, pattern=None))
    return replace(proposed, fields=tuple(fields))
