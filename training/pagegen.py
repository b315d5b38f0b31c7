"""Synthetic scanned pages of handwritten characters, with ground truth.

Characters come from a labelled set of 28x28 white-on-black images (a :class:`LabeledImages`,
or raw images and labels): for test and benchmark pages pass a *test* split (MNIST t10k via
:func:`mnist_test`), never data a model was trained on. Each character is cropped to its ink,
scaled to the page's character height, rotated and jittered, and placed in words along lines;
then the page gets the troubles of a real scan: pen width, touching and broken characters,
ruled lines, uneven lighting, paper texture, whole-page rotation, blur, noise and JPEG.

``generate_page(...) -> (gray uint8 (H, W), PageTruth)``; :func:`cer` scores a reading.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from hwr_batch.records import BBox
from training.data import LabeledImages

#: A4 at 300 dpi.
A4_300DPI = (2480, 3508)
#: Default location of the shared data sets, relative to the project root.


class TruthChar(NamedTuple):
    """One placed character: its label, its box on the final page, and its word number."""

    label: str
    bbox: BBox
    word: int


@dataclass
class PageTruth:
    """Ground truth of a generated page: lines top to bottom, characters left to right."""

    lines: list[list[TruthChar]]
    skew_angle: float = 0.0

    @property
    def text(self) -> str:
        """Lines joined by "\\n", words by " " (the format of PageResult.text)."""
        return "\n".join(line_text(line) for line in self.lines)

    @property
    def n_chars(self) -> int:
        return sum(len(line) for line in self.lines)


def line_text(line: Sequence[TruthChar]) -> str:
    out: list[str] = []
    for i, ch in enumerate(line):
        if i and ch.word != line[i - 1].word:
            out.append(" ")
        out.append(ch.label)
    return "".join(out)


@dataclass(frozen=True)
class PageStyle:
    """How a generated page looks. Lengths in pixels of the final page; ranges are (lo, hi)."""

    size: tuple[int, int] = A4_300DPI  # (width, height)
    n_chars: int = 300
    char_height: tuple[float, float] = (60.0, 80.0)
    line_spacing: float = 1.9  # baseline to baseline, in character heights
    margin: float = 0.08  # fraction of the page width
    word_len: tuple[int, int] = (2, 8)
    char_gap: tuple[float, float] = (0.08, 0.3)  # in character heights
    word_gap: tuple[float, float] = (0.9, 1.6)
    baseline_jitter: float = 0.06  # in character heights
    size_jitter: float = 0.12
    char_rotation_deg: float = 6.0
    page_rotation_deg: float = 0.0  # the page is rotated by a uniform angle in +-this
    pen_width: tuple[int, int] = (2, 5)  # dilation kernel at page scale
    p_touch: float = 0.0  # probability that a character overlaps the previous one
    p_broken: float = 0.0  # probability that a stroke of a character is cut
    ruled: bool = False
    lighting: float = 0.0  # depth of the lighting gradient, 0 = even
    paper_texture: float = 0.0  # std of the paper's grain, 0-255 scale
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    jpeg_quality: int = 0  # 0 = no JPEG round trip
    ink_level: tuple[int, int] = (20, 70)  # darkness of the ink, 0-255
    paper_level: tuple[int, int] = (225, 250)


#: Named styles for tests, samples and benchmarks.
STYLES: dict[str, PageStyle] = {
    "clean": PageStyle(),
    "scan": PageStyle(
        page_rotation_deg=4.0,
        p_touch=0.08,
        p_broken=0.05,
        lighting=0.35,
        paper_texture=4.0,
        blur_sigma=0.8,
        noise_std=6.0,
        jpeg_quality=75,
    ),
    "ruled": PageStyle(
        page_rotation_deg=2.0,
        ruled=True,
        p_touch=0.05,
        lighting=0.2,
        blur_sigma=0.6,
        noise_std=4.0,
        jpeg_quality=85,
    ),
}


def style(name: str = "scan", **changes: object) -> PageStyle:
    """A named style with some fields changed, e.g. ``style("scan", size=(1240, 1754))``."""
    return replace(STYLES[name], **changes)  # type: ignore[arg-type]


def _glyph_bank(
    images: npt.NDArray[np.uint8], labels: npt.NDArray[np.str_]
) -> dict[str, list[npt.NDArray[np.uint8]]]:
    bank: dict[str, list[npt.NDArray[np.uint8]]] = {}
    for img, lab in zip(images, labels, strict=True):
        bank.setdefault(str(lab), []).append(img)
    return bank


def _ink_crop(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8] | None:
    ys, xs = np.nonzero(img > 40)
    if len(ys) == 0:
        return None
    return img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _stroke_width(mask: npt.NDArray[np.bool_]) -> float:
    """Mean stroke width of a binary glyph: 2 * area / perimeter."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, closed=True) for c in contours)
    return 2.0 * float(mask.sum()) / perimeter if perimeter > 0 else 1.0


def _render_glyph(
    img: npt.NDArray[np.uint8],
    height: float,
    angle: float,
    pen: int,
    broken: bool,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32] | None:
    """A 28x28 white-on-black glyph -> float32 ink (h, w) in [0, 1] at page scale."""
    crop = _ink_crop(img)
    if crop is None:
        return None
    # MNIST glyphs are 20 px tall in their box; scale the ink box to the wanted height.
    scale = height / max(crop.shape[0], 1)
    w = max(1, int(round(crop.shape[1] * scale)))
    h = max(1, int(round(crop.shape[0] * scale)))
    g = cv2.resize(crop, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    # MNIST keeps the scanner's grey levels; a pen on paper gives even ink. Stretch so the
    # glyph's own strokes are full ink and its faint rim stays soft.
    g = np.clip(
        g / max(float(np.percentile(g[g > 40], 90)) if (g > 40).any() else 255.0, 1.0), 0.0, 1.0
    )
    pad = int(0.25 * max(h, w)) + pen
    g = np.pad(g, pad)
    if angle:
        c = (g.shape[1] / 2.0, g.shape[0] / 2.0)
        m = cv2.getRotationMatrix2D(c, angle, 1.0)
        g = np.asarray(
            cv2.warpAffine(g, m, (g.shape[1], g.shape[0]), flags=cv2.INTER_LINEAR), np.float32
        )
    # MNIST strokes are ~2.5 px at 28 px; scaled up they are ~8-10 px. Thin or thicken to
    # the page's pen by eroding / dilating in page pixels.
    target = pen * 2 + 1
    diff = int(round(target - _stroke_width(g > 0.5)))
    k = abs(diff) // 2 * 2 + 1
    if diff < -1:
        g = np.asarray(
            cv2.erode(g, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))), np.float32
        )
    elif diff > 1:
        g = np.asarray(
            cv2.dilate(g, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))), np.float32
        )
    g = np.where(g > 0.45, 1.0, g / 0.45 * 0.5).astype(np.float32)
    ys, xs = np.nonzero(g > 0.5)
    if len(ys) == 0:
        return None
    g = g[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    if broken and min(g.shape) > 12:
        # Cut one stroke: a thin band across the glyph, horizontal or vertical.
        band = int(rng.integers(2, 5))
        if rng.random() < 0.5:
            y = int(rng.integers(g.shape[0] // 4, 3 * g.shape[0] // 4))
            g[y : y + band] = 0
        else:
            x = int(rng.integers(g.shape[1] // 4, 3 * g.shape[1] // 4))
            g[:, x : x + band] = 0
    return g


def generate_page(
    data: LabeledImages | tuple[npt.NDArray[np.uint8], Sequence[str]],
    page_style: PageStyle | str = "scan",
    seed: int = 0,
) -> tuple[npt.NDArray[np.uint8], PageTruth]:
    """Draw one page.

    data: LabeledImages, or (images uint8 (N, 28, 28) white ink on black, labels (N,)).
    Returns (gray uint8 (H, W), dark ink on light paper; truth with boxes on that page).
    """
    st = STYLES[page_style] if isinstance(page_style, str) else page_style
    if isinstance(data, LabeledImages):
        images, labels = data.images, np.asarray(data.labels)
    else:
        images, labels = np.asarray(data[0], np.uint8), np.asarray(data[1])
    if len(images) == 0:
        raise ValueError("no character images to draw from")
    rng = np.random.default_rng(seed)
    width, height = st.size
    ink = np.zeros((height, width), np.float32)
    char_h = float(rng.uniform(*st.char_height))
    pen = int(rng.integers(st.pen_width[0], st.pen_width[1] + 1))
    left = int(st.margin * width)
    right = width - left
    top = int(st.margin * width) + char_h
    baselines: list[float] = []
    lines: list[list[TruthChar]] = []
    placed = 0
    word_no = 0
    baseline = top + char_h
    order = rng.permutation(len(images))
    pick = 0

    while placed < st.n_chars and baseline < height - int(st.margin * width):
        line: list[TruthChar] = []
        x = float(left + rng.uniform(0, 0.5) * char_h)
        while placed < st.n_chars:
            n = int(rng.integers(st.word_len[0], st.word_len[1] + 1))
            n = min(n, st.n_chars - placed)
            glyphs = []
            for _ in range(n):
                while True:
                    idx = int(order[pick % len(order)])
                    pick += 1
                    h = char_h * float(rng.uniform(1 - st.size_jitter, 1 + st.size_jitter))
                    ang = float(rng.uniform(-st.char_rotation_deg, st.char_rotation_deg))
                    g = _render_glyph(
                        images[idx], h, ang, pen, bool(rng.random() < st.p_broken), rng
                    )
                    if g is not None:
                        break
                glyphs.append((str(labels[idx]), g))
            word_w = sum(g.shape[1] for _, g in glyphs) + char_h * 0.2 * (n - 1)
            if x + word_w > right:
                if not line:
                    x = float(left)
                break
            for i, (lab, g) in enumerate(glyphs):
                if i:
                    if rng.random() < st.p_touch:
                        # Overlap so the two characters' ink touches.
                        x -= float(rng.uniform(0.08, 0.2)) * min(g.shape[1], char_h * 0.6)
                    else:
                        x += float(rng.uniform(*st.char_gap)) * char_h
                gh, gw = g.shape
                y_bottom = baseline + float(rng.normal(0, st.baseline_jitter)) * char_h
                y0 = int(round(y_bottom - gh))
                x0 = int(round(x))
                if y0 < 0 or x0 + gw > width or y0 + gh > height:
                    continue
                region = ink[y0 : y0 + gh, x0 : x0 + gw]
                np.maximum(region, g, out=region)
                line.append(TruthChar(lab, BBox(x0, y0, gw, gh), word_no))
                placed += 1
                x += gw
            word_no += 1
            x += float(rng.uniform(*st.word_gap)) * char_h
        if line:
            lines.append(line)
        baselines.append(baseline)
        baseline += st.line_spacing * char_h

    rule_layer = np.zeros_like(ink)
    if st.ruled:
        thick = int(rng.integers(2, 5))
        spacing = st.line_spacing * char_h
        y = baselines[0] if baselines else top
        y -= np.floor(y / spacing) * spacing
        while y < height:
            yi = int(round(y + 0.05 * char_h))
            rule_layer[yi : yi + thick, :] = float(rng.uniform(0.55, 0.8))
            y += spacing

    page = _paper(st, rng, (height, width))
    ink_level = float(rng.uniform(*st.ink_level))
    cover = np.maximum(ink, rule_layer)
    # float32 throughout (paper, ink and rules are); astype only states it.
    gray = (page * (1.0 - cover) + ink_level * cover).astype(np.float32, copy=False)

    angle = 0.0
    truth_lines = lines
    if st.page_rotation_deg:
        angle = float(rng.uniform(-st.page_rotation_deg, st.page_rotation_deg))
        gray, truth_lines = _rotate_page(gray, lines, angle, float(np.median(page)))
    if st.lighting:
        gray = gray * _lighting(st.lighting, rng, gray.shape)
    if st.blur_sigma:
        sigma = float(rng.uniform(0.5, 1.0)) * st.blur_sigma
        gray = np.asarray(cv2.GaussianBlur(gray, (0, 0), sigma), np.float32)
    if st.noise_std:
        gray = gray + rng.normal(0, st.noise_std, gray.shape).astype(np.float32)
    out = np.clip(gray + 0.5, 0, 255).astype(np.uint8)
    if st.jpeg_quality:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, st.jpeg_quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else None
        if decoded is not None:
            out = np.asarray(decoded, np.uint8)
    return out, PageTruth(truth_lines, skew_angle=angle)


def _paper(
    st: PageStyle, rng: np.random.Generator, shape: tuple[int, int]
) -> npt.NDArray[np.float32]:
    level = float(rng.uniform(*st.paper_level))
    page = np.full(shape, level, np.float32)
    if st.paper_texture:
        # Grain: low-resolution noise blown up, so it looks like fibres, not sensor noise.
        small = rng.normal(0, st.paper_texture, (shape[0] // 4 + 1, shape[1] // 4 + 1))
        grain = cv2.resize(
            small.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR
        )
        page += grain
    return page


def _lighting(
    depth: float, rng: np.random.Generator, shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    """A smooth multiplicative light field in [1 - depth, 1]: a linear gradient plus a spot."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h:16, 0:w:16].astype(np.float32)
    a = float(rng.uniform(0, 2 * np.pi))
    lin = np.cos(a) * xx / w + np.sin(a) * yy / h
    lin = (lin - lin.min()) / max(float(np.ptp(lin)), 1e-6)
    cy, cx = float(rng.uniform(0, h)), float(rng.uniform(0, w))
    spot = np.exp(-(((yy - cy) / (0.6 * h)) ** 2 + ((xx - cx) / (0.6 * w)) ** 2))
    field_small = 0.6 * lin + 0.4 * (1 - spot)
    field_small = (field_small - field_small.min()) / max(float(np.ptp(field_small)), 1e-6)
    light = 1.0 - depth * field_small
    return np.asarray(
        cv2.resize(light.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), np.float32
    )


def _rotate_page(
    gray: npt.NDArray[np.float32], lines: list[list[TruthChar]], angle: float, fill: float
) -> tuple[npt.NDArray[np.float32], list[list[TruthChar]]]:
    """Rotate the page about its centre (same size) and move the truth boxes with it."""
    h, w = gray.shape
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    out = np.asarray(
        cv2.warpAffine(
            gray,
            m,
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=fill,
        ),
        np.float32,
    )
    new_lines = []
    for line in lines:
        new_line = []
        for ch in line:
            b = ch.bbox
            # The box of the rotated glyph: rotate its corners, keep the enclosing box. This
            # overestimates the ink box a little; truth boxes are only used for matching.
            pts = np.array([[b.x, b.y], [b.x2, b.y], [b.x, b.y2], [b.x2, b.y2]], np.float64)
            q = pts @ m[:, :2].T + m[:, 2]
            x0, y0 = np.floor(q.min(0)).astype(int)
            x1, y1 = np.ceil(q.max(0)).astype(int)
            x0, y0 = max(0, x0), max(0, y0)
            x1, y1 = min(w, x1), min(h, y1)
            if x1 <= x0 or y1 <= y0:
                continue
            new_line.append(
                TruthChar(ch.label, BBox(int(x0), int(y0), int(x1 - x0), int(y1 - y0)), ch.word)
            )
        if new_line:
            new_lines.append(new_line)
    return out, new_lines


# --------------------------------------------------------------------------- data


def read_idx(path: str | Path) -> npt.NDArray[np.uint8]:
    """Read a (gzipped) MNIST idx file: images (N, 28, 28) or labels (N,), uint8."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist_test(root: str | Path | None = None) -> LabeledImages:
    """MNIST t10k (the test split) as LabeledImages; raises FileNotFoundError if absent.

    root: the MNIST folder; default ``mnist/`` of the shared data folder ($HWR_DATASETS or
    ../shared/datasets).
    """
    from training.sources import data_root

    base = Path(root) if root is not None else data_root() / "mnist"
    images = read_idx(base / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(base / "t10k-labels-idx1-ubyte.gz").astype(str)
    return LabeledImages(images.copy(), labels, np.full(len(labels), "mnist/test"))


def test_glyphs(kind: str, seed: int = 0) -> LabeledImages:
    """Character images of the *test* splits for a page kind: never data a model trained on.

    digits: MNIST t10k. letters: the held-out letter split of :mod:`training.sources`
    (Kaggle A-Z uniform sample, held-out Chars74K writers, realcrops blocks b8-b9, the second
    canvas session). mixed: those letters plus as many MNIST t10k digits (drawn with ``seed``),
    so about half the characters of a mixed page are letters.
    """
    from training import sources

    digits = mnist_test()
    if kind == "digits":
        return digits
    letters = sources.load_split("letters", "test")
    if kind == "letters":
        return letters
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(digits), size=min(len(letters), len(digits)), replace=False))
    return LabeledImages.concat([letters, digits.subset(pick)])


# --------------------------------------------------------------------------- scoring


def edit_distance(a: Sequence[str] | str, b: Sequence[str] | str) -> int:
    """Levenshtein distance between two strings (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = np.arange(len(b) + 1)
    bb = np.array([ord(c) for c in b])
    steps = np.arange(len(b) + 1)
    for i, ca in enumerate(a, start=1):
        sub = prev[:-1] + (bb != ord(ca))
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(prev[1:] + 1, sub)
        # Insertions chain along the row: cur[j] = min over k <= j of cur[k] + (j - k), a
        # running minimum of cur - j shifted back by j.
        cur = np.minimum.accumulate(cur - steps) + steps
        prev = cur
    return int(prev[-1])


@dataclass
class CerResult:
    errors: int = 0
    total: int = 0
    per_line: list[tuple[int, int]] = field(default_factory=list)

    @property
    def cer(self) -> float:
        return self.errors / self.total if self.total else 0.0

    def __add__(self, other: CerResult) -> CerResult:
        return CerResult(
            self.errors + other.errors, self.total + other.total, self.per_line + other.per_line
        )


def cer(predicted: str, truth: str, spaces: bool = False) -> CerResult:
    """Character error rate of a page reading.

    predicted, truth: page texts, lines joined by "\\n". Errors are the edit distance between
    the two pages read line after line (newlines dropped), so a line split in two or a missing
    line costs only its own characters; ``per_line`` holds (errors, length) per truth line
    when both pages have the same number of lines. ``spaces=False`` (default) scores the
    characters only, ignoring word breaks.
    """

    def norm(s: str) -> list[str]:
        lines = [ln if spaces else ln.replace(" ", "") for ln in s.split("\n")]
        return [ln for ln in lines if ln]

    p, t = norm(predicted), norm(truth)
    res = CerResult(errors=edit_distance("".join(p), "".join(t)), total=sum(map(len, t)))
    if len(p) == len(t):
        res.per_line = [(edit_distance(a, b), len(b)) for a, b in zip(p, t, strict=True)]
    return res
