"""The page reader: the list of stages, top to bottom.

    load -> preprocess -> segment (with split-by-recognition) -> classify -> assemble

``read_page`` reads one page (a file and page number, or a gray array) into a
:class:`~hwr_batch.records.PageResult`; ``read_file`` yields one result per page of a file.
Boxes in the result are pixels of the page as loaded (the deskew rotation is mapped back).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hwr_batch import defaults
from hwr_batch.assemble import assemble
from hwr_batch.classify import Classifier, load_classifier
from hwr_batch.errors import BadArguments
from hwr_batch.load import LoadedPage, iter_pages, load_page, to_gray
from hwr_batch.preprocess import Preprocessed, preprocess
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
    prep: the preprocessed page. seg: the character candidates.
    canvas_boxes: float64 (N, 4) character boxes on the deskewed canvas.
    chars: the N classified characters, boxes on the original page.
    """

    prep: Preprocessed
    seg: Segmentation
    canvas_boxes: npt.NDArray[np.float64]
    chars: list[Char]
    timings: dict[str, float]


def classify_candidates(seg: Segmentation, prep: Preprocessed, clf: Classifier) -> list[Char]:
    """One batched classification of every character of a page -> Chars (page boxes)."""
    if not seg.chars:
        return []
    # Segmentation already classified most characters (it needs their confidence to decide
    # merges and splits); only the rest are classified here, in one batch.
    todo = [i for i, c in enumerate(seg.chars) if c.proba is None]
    fresh = clf.predict_proba(np.stack([seg.chars[i].image for i in todo])) if todo else None
    proba = np.zeros((len(seg.chars), len(clf.labels)), np.float32)
    for i, c in enumerate(seg.chars):
        if c.proba is not None:
            proba[i] = c.proba
    if fresh is not None:
        proba[todo] = fresh
    top = clf.topk(proba, defaults.TOP_K)
    boxes = prep.boxes_to_page(np.array([c.bbox for c in seg.chars], np.float64))
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


def analyse_page(gray: npt.NDArray[np.uint8], clf: Classifier) -> PageAnalysis:
    """Preprocess, segment and classify a gray page (uint8 (H, W), dark ink on paper)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    prep = preprocess(gray)
    timings["preprocess"] = time.perf_counter() - t
    for k, v in prep.timings.items():
        if k != "preprocess":
            timings[f"preprocess.{k}"] = v

    t = time.perf_counter()
    seg = segment(prep, scorer=clf.predict_proba)
    timings["segment"] = time.perf_counter() - t

    t = time.perf_counter()
    chars = classify_candidates(seg, prep, clf)
    timings["classify"] = time.perf_counter() - t
    canvas = np.array([c.bbox for c in seg.chars], np.float64).reshape(-1, 4)
    return PageAnalysis(prep, seg, canvas, chars, timings)


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

        fr = read_fields(gray, charset=charset, template=template, classifier=clf)
        h, w = gray.shape
        return PageResult(
            source=source,
            page=page,
            width=int(w),
            height=int(h),
            charset=charset,
            fields=fr.fields,
            skew_angle=fr.skew_angle,
            warnings=fr.warnings,
            timings={"load": load_s, **fr.timings, "total": time.perf_counter() - t0},
        )
    analysis = analyse_page(gray, clf)
    t = time.perf_counter()
    lines = assemble(analysis.canvas_boxes, analysis.chars, analysis.prep.text_height)
    timings = {"load": load_s, **analysis.timings, "assemble": time.perf_counter() - t}
    timings["total"] = time.perf_counter() - t0

    warnings = list(analysis.prep.warnings) + list(analysis.seg.warnings)
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
