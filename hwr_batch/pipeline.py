"""The page reader: the list of stages, top to bottom.

    load -> (negative?) -> preprocess -> segment (with split-by-recognition) -> classify
         -> (sideways or upside down?) -> assemble

``read_page`` reads one page (a file and page number, or a gray array) into a
:class:`~hwr_batch.records.PageResult`; ``read_file`` yields one result per page of a file.
Boxes in the result are pixels of the page as loaded (the deskew rotation, and a quarter or
half turn of a page scanned sideways or upside down, are mapped back).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hwr_batch import defaults
from hwr_batch.assemble import assemble
from hwr_batch.classify import (
    Classifier,
    blend_second_opinion,
    load_classifier,
    second_models,
)
from hwr_batch.errors import BadArguments
from hwr_batch.load import LoadedPage, iter_pages, load_page, to_gray
from hwr_batch.preprocess import (
    Preprocessed,
    estimate_background,
    flatten,
    is_negative,
    percentile_u8,
    preprocess,
    text_height,
)
from hwr_batch.records import BBox, Char, PageResult
from hwr_batch.segment import Segmentation, segment


def configure_worker(threads: int = 1) -> None:
    """Limit OpenCV to ``threads`` threads in this process (batch workers call this once).

    Not done at import: a single interactive process should use every core.
    """
    import cv2

    cv2.setNumThreads(threads)


def _classifier(charset: str, classifier: Classifier | None) -> Classifier:
    if classifier is not None:
        return classifier
    if charset not in defaults.CHARSETS:
        raise BadArguments(
            f"unknown charset {charset!r}; choose one of {', '.join(defaults.CHARSETS)}"
        )
    return load_classifier(charset)


def _as_gray(image: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """An array page (gray, RGB or RGBA; uint8, uint16 or float) -> gray uint8 (H, W)."""
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 2 and a.dtype == np.uint8:
        return a
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        if a.dtype == np.bool_:
            return np.where(a, 255, 0).astype(np.uint8)
        if np.issubdtype(a.dtype, np.floating):
            top = 1.0 if float(np.nanmax(a, initial=0.0)) <= 1.0 else 255.0
            return np.clip(np.nan_to_num(a) / top * 255 + 0.5, 0, 255).astype(np.uint8)
        if a.size and int(a.max()) > 255:
            return (a.astype(np.uint32) // 257).clip(0, 255).astype(np.uint8)
        return a.clip(0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] in (3, 4) and a.dtype == np.uint8:
        return to_gray(Image.fromarray(a, "RGBA" if a.shape[2] == 4 else "RGB"))
    raise ValueError(
        f"expected a gray (H, W) or RGB(A) (H, W, 3|4) uint8 page, got {a.dtype} {a.shape}"
    )


@dataclass
class PageAnalysis:
    """Everything the reader found on one page, before it is turned into a PageResult.

    Forms and overlays need more than the result: the deskewed page, the ink and removed
    lines (box borders), and the characters on the deskewed canvas.
    The page is analysed at ``1 / scale`` of its size (see :func:`analysis_scale`): ``prep``,
    ``seg`` and ``canvas_boxes`` are in the pixels of that copy (``prep.text_height`` too, so
    grouping by canvas boxes and text height is unchanged); ``chars`` carry boxes on the
    original page.
    prep: the preprocessed page. seg: the character candidates.
    canvas_boxes: float64 (N, 4) character boxes on the deskewed canvas.
    chars: the N classified characters, boxes on the original page.
    scale: int >= 1, the page was downscaled by this factor before analysis.
    """

    prep: Preprocessed
    seg: Segmentation
    canvas_boxes: npt.NDArray[np.float64]
    chars: list[Char]
    timings: dict[str, float]
    scale: int = 1


#: The warning of a page read as its negative (see :func:`upright`).
NEGATIVE_NOTE = "light ink on a dark ground: read as its negative"


def upright(gray: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], tuple[str, ...]]:
    """The page as dark ink on light paper, and a note when it had to be inverted.

    gray: uint8 (H, W). A negative (:func:`hwr_batch.preprocess.is_negative`: a white-on-black
    sheet, a negative scan) comes back inverted with NEGATIVE_NOTE; any other page as it is.
    """
    if is_negative(gray):
        import cv2

        return np.asarray(cv2.bitwise_not(gray), np.uint8), (NEGATIVE_NOTE,)
    return gray, ()


def estimate_text_height(gray: npt.NDArray[np.uint8]) -> float:
    """Character height (pixels of ``gray``) from a small copy; 0.0 if none is found.

    gray: uint8 (H, W), dark ink on paper. The estimate preprocess makes (background
    flattened, Otsu with a contrast floor under the paper level, ink-weighted median component
    height) on a copy about TEXT_HEIGHT_ESTIMATE_SIDE pixels long, with the paper level from a
    histogram, so it costs a few milliseconds.
    """
    import cv2

    h, w = gray.shape
    factor = max(1, int(round(max(h, w) / defaults.TEXT_HEIGHT_ESTIMATE_SIDE)))
    # Whole blocks only (no padded copy of the page): the estimate needs no exact edge.
    small = downscale(gray[: h - h % factor, : w - w % factor], factor)
    if percentile_u8(small, 90) < defaults.DARK_PAGE_LEVEL:
        return 0.0
    bg = estimate_background(small, max(3, int(defaults.BACKGROUND_KERNEL_PX / factor)))
    flat = flatten(small, bg)
    otsu, _ = cv2.threshold(flat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cum = np.cumsum(np.bincount(flat.ravel(), minlength=256))
    paper = float(np.searchsorted(cum, cum[-1] / 2))
    return text_height(flat <= min(float(otsu), paper - defaults.MIN_INK_CONTRAST), factor)


def analysis_scale(gray: npt.NDArray[np.uint8]) -> int:
    """The integer factor by which to downscale a page before analysing it (1 = not at all).

    The model sees a 20-px glyph, so characters far taller than that cost preprocessing and
    segmentation time (four times the pixels per halving) without helping the reading. The
    factor is the largest that keeps the estimated text height at or above
    ANALYSIS_MIN_TEXT_PX, at most ANALYSIS_MAX_SCALE. Pages whose long side is under
    ANALYSIS_ESTIMATE_MIN_SIDE are read at full size without estimating anything (no cost);
    so are pages where no text height is found.
    gray: uint8 (H, W).
    """
    if defaults.ANALYSIS_MAX_SCALE <= 1 or max(gray.shape) < defaults.ANALYSIS_ESTIMATE_MIN_SIDE:
        return 1
    th = estimate_text_height(gray)
    if th <= 0:
        return 1
    return int(max(1, min(defaults.ANALYSIS_MAX_SCALE, th // defaults.ANALYSIS_MIN_TEXT_PX)))


def downscale(gray: npt.NDArray[np.uint8], scale: int) -> npt.NDArray[np.uint8]:
    """Shrink a page by an integer factor, exactly: pixel (y, x) of the result is the mean of
    the block ``gray[y*s:(y+1)*s, x*s:(x+1)*s]`` (within a grey level or two
    of rounding).

    gray: uint8 (H, W). Returns uint8 (ceil(H/s), ceil(W/s)); the last row and column of
    blocks are padded by repeating the page's edge, so no block straddles two source pixels.
    A power of two is done as repeated halvings: OpenCV's 2x2 area mean is a fast path, about
    ten times faster than its general integer-ratio one.
    """
    import cv2

    if scale <= 1:
        return gray
    h, w = gray.shape
    ph, pw = -h % scale, -w % scale
    src = gray
    if ph or pw:
        src = np.asarray(cv2.copyMakeBorder(gray, 0, ph, 0, pw, cv2.BORDER_REPLICATE), np.uint8)
    if scale & (scale - 1) == 0:
        # Halvings of a page padded to a multiple of the scale: the same block means.
        while scale > 1:
            sh, sw = src.shape
            src = np.asarray(
                cv2.resize(src, (sw // 2, sh // 2), interpolation=cv2.INTER_AREA), np.uint8
            )
            scale //= 2
        return src
    size = ((w + pw) // scale, (h + ph) // scale)
    return np.asarray(cv2.resize(src, size, interpolation=cv2.INTER_AREA), np.uint8)


def classify_candidates(
    seg: Segmentation,
    prep: Preprocessed,
    clf: Classifier,
    scale: int = 1,
    page_shape: tuple[int, int] | None = None,
    fast: bool = False,
    second: Sequence[Classifier] = (),
) -> list[Char]:
    """One batched classification of every character of a page -> Chars (page boxes).

    fast: segmentation scored with :meth:`Classifier.predict_proba_fast`; its probabilities
    are rechecked here. second: a second model for the unsure characters
    (:func:`~hwr_batch.classify.blend_second_opinion`); none by default.

    scale: the page was analysed at 1/scale; boxes are mapped back to the page of
    ``page_shape`` (H, W) (default: the analysed page), each analysed pixel covering a
    scale x scale block.
    """
    if not seg.chars:
        return []
    # Segmentation already classified most characters (it needs their confidence to decide
    # merges and splits); only the rest are classified here, in one batch.
    images = np.stack([c.image for c in seg.chars])
    done = np.array([c.proba is not None for c in seg.chars])
    todo = np.flatnonzero(~done)
    proba = np.zeros((len(seg.chars), len(clf.labels)), np.float32)
    for i, c in enumerate(seg.chars):
        if c.proba is not None:
            proba[i] = c.proba
    if len(todo):
        proba[todo] = clf.predict_proba(images[todo])
    if fast:
        # The search scored its candidates with the int8 model alone: the characters kept
        # get the float model's answer where the int8 one is unsure, as any other crop does.
        idx = np.flatnonzero(done)
        if len(idx):
            proba[idx] = clf.recheck(images[idx], proba[idx])
    if second:
        proba = blend_second_opinion(proba, images, clf, second)
    top = clf.topk(proba, defaults.TOP_K)
    boxes = prep.boxes_to_page(np.array([c.bbox for c in seg.chars], np.float64))
    if scale > 1:
        h, w = page_shape if page_shape is not None else prep.original_shape
        x0 = np.minimum(boxes[:, 0] * scale, w)
        y0 = np.minimum(boxes[:, 1] * scale, h)
        x1 = np.minimum((boxes[:, 0] + boxes[:, 2]) * scale, w)
        y1 = np.minimum((boxes[:, 1] + boxes[:, 3]) * scale, h)
        boxes = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
    out = []
    for alts, box in zip(top, boxes, strict=True):
        label, conf = alts[0]
        out.append(
            Char(
                bbox=BBox(int(box[0]), int(box[1]), int(box[2]), int(box[3])),
                label=label,
                confidence=float(min(max(conf, 0.0), 1.0)),
                alternatives=tuple((lab, float(min(max(p, 0.0), 1.0))) for lab, p in alts),
            )
        )
    return out


def analyse_page(
    gray: npt.NDArray[np.uint8], clf: Classifier, scale: int | None = None
) -> PageAnalysis:
    """Preprocess, segment and classify a gray page (uint8 (H, W), dark ink on paper).

    scale: analyse the page downscaled by this integer factor (None: :func:`analysis_scale`
    picks it from the text height; 1: full resolution). Character boxes come back in the
    pixels of ``gray`` whatever the scale. A negative page (light ink on a dark ground) is
    read inverted, with a warning (:func:`upright`).
    """
    timings: dict[str, float] = {}
    t = time.perf_counter()
    gray, notes = upright(gray)
    if scale is None:
        scale = analysis_scale(gray)
    scale = max(1, int(scale))
    page_shape = (int(gray.shape[0]), int(gray.shape[1]))
    work = downscale(gray, scale)
    timings["scale"] = time.perf_counter() - t

    t = time.perf_counter()
    prep = preprocess(work, px_scale=scale)
    del work
    if notes:
        prep = dataclasses.replace(prep, warnings=notes + prep.warnings)
    timings["preprocess"] = time.perf_counter() - t
    for k, v in prep.timings.items():
        if k != "preprocess":
            timings[f"preprocess.{k}"] = v

    t = time.perf_counter()
    seg = segment(prep, scorer=clf.predict_proba_fast)
    timings["segment"] = time.perf_counter() - t

    t = time.perf_counter()
    chars = classify_candidates(
        seg, prep, clf, scale, page_shape, fast=True, second=second_models(clf)
    )
    timings["classify"] = time.perf_counter() - t
    canvas = np.array([c.bbox for c in seg.chars], np.float64).reshape(-1, 4)
    return PageAnalysis(prep, seg, canvas, chars, timings, scale)


#: What a page read after k quarter turns counter-clockwise was (see :func:`turn_upright`).
_TURNED = {
    1: "90 degrees counter-clockwise: the page was scanned sideways",
    2: "180 degrees: the page was upside down",
    3: "90 degrees clockwise: the page was scanned sideways",
}


def _mean_log(confidences: npt.ArrayLike) -> float:
    """Mean log of confidences (each floored at 1e-4): how surely a set of characters reads."""
    return float(np.mean(np.log(np.maximum(confidences, 1e-4))))


def _mean_log_confidence(chars: Sequence[Char]) -> float:
    return _mean_log([c.confidence for c in chars])


def _unturn(box: BBox, turns: int, shape: tuple[int, int]) -> BBox:
    """A box on ``np.rot90(page, turns)`` -> the same pixels' box on ``page`` of ``shape``."""
    h, w = shape
    if turns == 1:
        return BBox(w - box.y - box.h, box.x, box.h, box.w)
    if turns == 2:
        return BBox(w - box.x - box.w, h - box.y - box.h, box.w, box.h)
    if turns == 3:
        return BBox(box.y, h - box.x - box.w, box.h, box.w)
    return box


def turn_upright(
    gray: npt.NDArray[np.uint8], clf: Classifier, analysis: PageAnalysis
) -> tuple[PageAnalysis, int]:
    """The reading of a page scanned sideways or upside down, done the right way up.

    gray: the page, uint8 (H, W); analysis: :func:`analyse_page` of it. A page read with a mean
    log confidence of ORIENT_CHECK_BELOW or more is upright: it comes back as it is, at no
    cost. Otherwise its characters' model inputs (those whose boxes are between
    ORIENT_MIN_ASPECT and its inverse wide for their height) are classified again turned by one,
    two and three quarter turns; if a turn reads them better by ORIENT_MARGIN (mean log confidence),
    the whole page is read again turned that way, and that reading is kept if it is better by
    the same margin. Returns (analysis, quarter turns counter-clockwise, 0-3); the kept
    reading's character boxes are on ``gray``, its canvas boxes (reading order) on the turned
    page.
    """
    if not analysis.chars or _mean_log_confidence(analysis.chars) >= defaults.ORIENT_CHECK_BELOW:
        return analysis, 0
    # Votes from character-shaped boxes only: on a ruled page lying sideways the rules are
    # vertical, escape line removal and break into hundreds of thin dashes.
    boxes = np.array([c.bbox for c in analysis.seg.chars], np.float64)
    aspect = boxes[:, 2] / np.maximum(boxes[:, 3], 1.0)
    shaped = (aspect > defaults.ORIENT_MIN_ASPECT) & (aspect < 1.0 / defaults.ORIENT_MIN_ASPECT)
    chars = [c for c, ok in zip(analysis.seg.chars, shaped.tolist(), strict=True) if ok]
    if len(chars) < defaults.ORIENT_MIN_VOTERS:
        chars = list(analysis.seg.chars)
    images = np.stack([c.image for c in chars])
    votes = [
        _mean_log(proba.max(axis=1))
        for proba in (
            clf.predict_proba_fast(np.ascontiguousarray(np.rot90(images, k, axes=(1, 2))))
            for k in range(4)
        )
    ]
    turns = int(np.argmax(votes))
    if turns == 0 or votes[turns] < votes[0] + defaults.ORIENT_MARGIN:
        return analysis, 0
    turned = analyse_page(np.ascontiguousarray(np.rot90(gray, turns)), clf)
    if not turned.chars or _mean_log_confidence(turned.chars) < (
        _mean_log_confidence(analysis.chars) + defaults.ORIENT_MARGIN
    ):
        return analysis, 0
    shape = (int(gray.shape[0]), int(gray.shape[1]))
    turned.chars = [
        dataclasses.replace(c, bbox=_unturn(c.bbox, turns, shape)) for c in turned.chars
    ]
    return turned, turns


def read_page(
    image: str | os.PathLike[str] | npt.NDArray[np.generic],
    charset: str = "digits",
    *,
    page: int = 1,
    source: str | None = None,
    classifier: Classifier | None = None,
    dpi: float = defaults.PDF_DPI,
    forms: bool = False,
    template: str | os.PathLike[str] | None = None,
) -> PageResult:
    """Read one page.

    image: a file path (``page`` picks the page of a multi-page TIFF or PDF, rendered at
    ``dpi``) or an array (gray uint8 (H, W), or RGB/RGBA). charset: "digits", "letters" or
    "alnum" picks the bundled model; ``classifier`` overrides it. ``source`` names the page in
    the result (default: the path, or "<array>").
    Raises InputError subclasses for unreadable input, BadArguments for a bad charset.
    """
    t0 = time.perf_counter()
    clf = _classifier(charset, classifier)
    if isinstance(image, (str, os.PathLike)):
        loaded = load_page(image, page, dpi=dpi)
        gray = loaded.gray
        name = source if source is not None else str(image)
    else:
        gray = _as_gray(image)
        name = source if source is not None else "<array>"
    load_s = time.perf_counter() - t0
    return _read_gray(gray, name, page, charset, clf, load_s, t0, forms, template)


def _read_gray(
    gray: npt.NDArray[np.uint8],
    source: str,
    page: int,
    charset: str,
    clf: Classifier,
    load_s: float,
    t0: float,
    forms: bool,
    template: str | os.PathLike[str] | None,
) -> PageResult:
    if forms or template is not None:
        # Form mode (issue 4): only the fields are read; headings and prompts are not.
        from hwr_batch.forms import read_fields

        h, w = gray.shape
        gray, notes = upright(gray)
        fr = read_fields(gray, charset=charset, template=template, classifier=clf)
        return PageResult(
            source=source,
            page=page,
            width=int(w),
            height=int(h),
            charset=charset,
            fields=fr.fields,
            skew_angle=fr.skew_angle,
            warnings=notes + tuple(fr.warnings),
            timings={"load": load_s, **fr.timings, "total": time.perf_counter() - t0},
        )
    analysis = analyse_page(gray, clf)
    t = time.perf_counter()
    analysis, turns = turn_upright(gray, clf, analysis)
    orient_s = time.perf_counter() - t
    t = time.perf_counter()
    lines = assemble(analysis.canvas_boxes, analysis.chars, analysis.prep.text_height)
    timings = {"load": load_s, **analysis.timings, "assemble": time.perf_counter() - t}
    if orient_s > 1e-3:
        timings["orient"] = orient_s
    timings["total"] = time.perf_counter() - t0

    warnings = list(analysis.prep.warnings) + list(analysis.seg.warnings)
    if turns:
        warnings.insert(0, f"read turned {_TURNED[turns]}")
    if not analysis.chars and not any("dark" in w for w in warnings):
        warnings.append("no characters found")
    h, w = gray.shape
    return PageResult(
        source=source,
        page=page,
        width=int(w),
        height=int(h),
        charset=charset,
        lines=lines,
        skew_angle=float(analysis.prep.angle),
        warnings=tuple(warnings),
        timings=timings,
    )


def read_loaded(
    loaded: LoadedPage,
    charset: str = "digits",
    *,
    classifier: Classifier | None = None,
    forms: bool = False,
    template: str | os.PathLike[str] | None = None,
    load_s: float = 0.0,
) -> PageResult:
    """Read a page that :func:`hwr_batch.load.iter_pages` already loaded."""
    t0 = time.perf_counter() - load_s
    clf = _classifier(charset, classifier)
    return _read_gray(
        loaded.gray, loaded.source, loaded.page, charset, clf, load_s, t0, forms, template
    )


def read_file(
    path: str | os.PathLike[str],
    charset: str = "digits",
    *,
    classifier: Classifier | None = None,
    dpi: float = defaults.PDF_DPI,
    max_pixels: int = defaults.MAX_PIXELS,
    forms: bool = False,
    template: str | os.PathLike[str] | None = None,
    source: str | None = None,
) -> Iterator[PageResult]:
    """Read every page of a file, one PageResult per page, streaming (one page in memory).

    Errors of the file (unreadable, encrypted, too large) are raised when met; pages before a
    bad page have been yielded by then.
    """
    clf = _classifier(charset, classifier)
    name = source if source is not None else str(path)
    pages = iter_pages(path, dpi=dpi, max_pixels=max_pixels)
    while True:
        t0 = time.perf_counter()
        try:
            loaded = next(pages)
        except StopIteration:
            return
        load_s = time.perf_counter() - t0
        yield _read_gray(loaded.gray, name, loaded.page, charset, clf, load_s, t0, forms, template)
