"""Training images cut by the page reader itself from generated pages of *training* glyphs.

A classifier learns from 28x28 images of a data set, but at read time it sees what the reader
cut from a scan: a glyph drawn at another pen width, blurred, thresholded, with a neighbour's
stroke at its edge or a ruled line's remnant, then normalised back to 28x28. This module makes
those images with true labels: it draws pages with :mod:`training.pagegen` from a model's
*training* split (never its test split, so the benchmark pages stay unseen), reads each with the
reader's own analysis (:func:`hwr_batch.pipeline.analyse_page`), and keeps every character whose
box matches one placed character (intersection over union >= ``MIN_IOU``, one to one), labelled
with that character. Characters the reader cut wrongly have no match and are left out.

``page_crops(kind, pages, seed) -> LabeledImages`` (groups ``pagecrops/<style>``);
``hwr-train pagecrops`` writes them as an npz that ``hwr-train fit --extra`` takes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from training.data import LABEL_SETS, LabeledImages

#: A reader box and a placed character's box are the same character from this overlap on.
MIN_IOU = 0.5
#: Page looks drawn in turn, as benchmarks/bench_pages.py draws them.
STYLES = ("scan", "scan", "ruled")
#: Scans are stored as JPEG at this quality before reading (bench_pages.py does the same).
SCAN_JPEG_QUALITY = 90


def box_iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4),
    boxes as (x, y, w, h) -> float64 (N, M)."""
    ax0, ay0 = a[:, 0:1], a[:, 1:2]
    ax1, ay1 = ax0 + a[:, 2:3], ay0 + a[:, 3:4]
    bx0, by0 = b[:, 0], b[:, 1]
    bx1, by1 = bx0 + b[:, 2], by0 + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def match_boxes(
    found: npt.NDArray[np.float64], truth: npt.NDArray[np.float64], min_iou: float = MIN_IOU
) -> list[tuple[int, int]]:
    """One-to-one pairs (found index, truth index), best overlaps first, IoU >= ``min_iou``."""
    if len(found) == 0 or len(truth) == 0:
        return []
    iou = box_iou(found, truth)
    pairs = np.argwhere(iou >= min_iou)
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_f: set[int] = set()
    used_t: set[int] = set()
    out: list[tuple[int, int]] = []
    for fi, ti in pairs[order]:
        if fi in used_f or ti in used_t:
            continue
        used_f.add(int(fi))
        used_t.add(int(ti))
        out.append((int(fi), int(ti)))
    return out


@dataclass(frozen=True)
class _PageJob:
    kind: str
    index: int
    seed: int
    n_chars: int


_GLYPHS: dict[str, LabeledImages] = {}


def _glyphs(kind: str) -> LabeledImages:
    if kind not in _GLYPHS:
        from training import sources

        _GLYPHS[kind] = sources.load_split(kind, "train")
    return _GLYPHS[kind]


def _one_page(job: _PageJob) -> tuple[npt.NDArray[np.uint8], list[str], int, int]:
    """Draw and read one page -> (crops uint8 (K, 28, 28), labels, placed, matched)."""
    from hwr_batch.classify import load_classifier
    from hwr_batch.pipeline import analyse_page, configure_worker
    from training import pagegen

    configure_worker(1)
    style_name = STYLES[job.index % len(STYLES)]
    look = pagegen.style(style_name, n_chars=job.n_chars)
    gray, truth = pagegen.generate_page(
        _glyphs(job.kind), look, seed=job.seed * 100_003 + job.index
    )
    if style_name == "scan":
        ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, SCAN_JPEG_QUALITY])
        if ok:
            gray = np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE), np.uint8)
    analysis = analyse_page(gray, load_classifier(job.kind))
    placed = [c for line in truth.lines for c in line]
    found = np.array([c.bbox.to_list() for c in analysis.chars], np.float64).reshape(-1, 4)
    boxes = np.array([c.bbox.to_list() for c in placed], np.float64).reshape(-1, 4)
    pairs = match_boxes(found, boxes)
    crops = [
        np.round(np.clip(analysis.seg.chars[fi].image, 0, 1) * 255).astype(np.uint8)
        for fi, _ in pairs
    ]
    labels = [placed[ti].label for _, ti in pairs]
    images = np.stack(crops) if crops else np.zeros((0, 28, 28), np.uint8)
    return images, labels, len(placed), len(pairs)


def page_crops(
    kind: str,
    pages: int,
    seed: int = 1000,
    *,
    jobs: int | None = None,
    n_chars: int = 300,
    log: Callable[[str], None] | None = None,
) -> LabeledImages:
    """The reader's crops of ``pages`` generated pages of ``kind`` (digits, letters, alnum),
    drawn from the training split with page seeds ``seed * 100003 + i``, labelled by matching.

    jobs: worker processes (default: the number of cores). Returns images uint8 (N, 28, 28),
    labels as the model sees them, groups ``pagecrops/<style>``.
    """
    if kind not in LABEL_SETS:
        raise ValueError(f"unknown kind {kind!r}; use {', '.join(LABEL_SETS)}")
    todo = [_PageJob(kind, i, seed, n_chars) for i in range(pages)]
    parts: list[LabeledImages] = []
    placed_total = matched_total = 0
    workers = max(1, jobs or os.cpu_count() or 1)
    for job, (images, labels, placed, matched) in zip(todo, _map(workers, todo), strict=True):
        style_name = STYLES[job.index % len(STYLES)]
        parts.append(
            LabeledImages(
                images, np.array(labels, "<U1"), np.full(len(labels), f"pagecrops/{style_name}")
            )
        )
        placed_total += placed
        matched_total += matched
        if log is not None and (job.index + 1) % 10 == 0:
            log(f"page {job.index + 1}/{pages}: {matched_total} of {placed_total} matched")
    return LabeledImages.concat(parts)


def _map(
    workers: int, todo: list[_PageJob]
) -> Iterator[tuple[npt.NDArray[np.uint8], list[str], int, int]]:
    if workers == 1:
        yield from map(_one_page, todo)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_one_page, todo, chunksize=2)


def save_npz(data: LabeledImages, path: str | Path) -> Path:
    """Write ``images``, ``labels``, ``groups`` (the one-set layout of ``fit.load_npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, images=data.images, labels=data.labels, groups=data.groups)
    tmp.replace(path)
    return path
