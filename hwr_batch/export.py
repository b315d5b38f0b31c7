"""Writing results: per-page JSON, CSV, overlay and review crops, all written atomically.

Every file goes through :func:`atomic_write_bytes` (:func:`hwr_batch.storage.write_atomic`): the
bytes are written to a temporary file in the destination's own directory (``.<name>.<random>.tmp``),
flushed and fsync'ed, then moved over the destination with ``os.replace``, which is atomic within
one file system (object stores: one PUT, atomic by itself). A reader sees either the old file or
the whole new one, never a prefix. A process killed mid-write leaves only a hidden ``.tmp`` file,
which :func:`remove_stale_temps` clears at the start of the next batch.

Per-page JSON schema ``hwr-batch/page/v1``
-------------------------------------------
One JSON object per page (``records.PageResult.to_dict()``), UTF-8, keys in this order::

    schema           "hwr-batch/page/v1" (bumped on any breaking change)
    source           the input file as listed by the batch (str)
    page             1-based page number within the source file (int)
    width, height    page size in pixels as loaded (PDF pages: rendered at --dpi) (int)
    charset          model used: "digits", "letters", "alnum", or a model file's name (str)
    skew_angle       degrees of skew corrected before segmentation (float, 3 decimals)
    text             the page text: lines joined by "\\n", words by " " (str)
    n_chars          number of characters in ``lines`` (int)
    mean_confidence  mean of their confidences, null when there are none (float | null)
    lines            [ {text, bbox, words: [ {text, bbox, chars: [CHAR, ...]} ]} ] reading order
    fields           [ {name, kind, charset, bbox, value, confidence, needs_review,
                        chars: [CHAR, ...]} ] form fields (empty unless forms are read)
    warnings         [str] one-line notes about the page (blank page, heavy skew, ...)

    CHAR = {bbox: [x, y, w, h], label: str, confidence: float 0-1 (4 decimals),
            alternatives: [ {label, confidence}, ... ] top-3 best first, the first is the label}

Boxes are ``[x, y, w, h]`` in pixels of the page as loaded, origin top-left.

Per-page CSV
------------
One row per character, in reading order, then the characters of form fields: ``index`` (0-based
within the page, also the review crop's name), ``line``, ``word``, ``char`` (0-based positions in
the JSON arrays; empty for field characters), ``field`` (field name, empty for text),
``label``, ``confidence``, ``x``, ``y``, ``w``, ``h``, then ``alt1_label``, ``alt1_confidence``
... ``alt3_label``, ``alt3_confidence``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from hwr_batch import defaults, storage
from hwr_batch.records import Char, PageResult

#: Temporary files of storage.write_atomic are ".<name>.<random>.tmp"; under OUTDIR, such a file
#: is debris of a killed run.
TEMP_SUFFIX = ".tmp"

CSV_COLUMNS = [
    "index",
    "line",
    "word",
    "char",
    "field",
    "label",
    "confidence",
    "x",
    "y",
    "w",
    "h",
] + [f"alt{i}_{part}" for i in range(1, defaults.TOP_K + 1) for part in ("label", "confidence")]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> str:
    """Write ``data`` to ``path`` (plain path or fsspec URL) atomically; parents are created.

    See :func:`hwr_batch.storage.write_atomic`. Returns the destination as a string.
    """
    storage.write_atomic(path, data)
    return str(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> str:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_unsynced(path: str | os.PathLike[str], data: bytes) -> str:
    """Like :func:`atomic_write_bytes` (temp file + rename: never half-visible, even after a
    kill) but without fsync, for small derived files whose loss on a power cut is harmless.

    Review crops use it: an fsync costs ~4 ms here, a page can have dozens of crops, and a crop
    lost to a power cut is reported by the next run (review.csv row without a crop) and redone
    with --force. Page JSON, CSV and overlay keep full durability.
    """
    local = None if storage.is_url(path) else Path(path)
    if local is None:
        return atomic_write_bytes(path, data)
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=TEMP_SUFFIX, dir=local.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        Path(tmp).replace(local)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    return str(local)


def is_temp_name(name: str) -> bool:
    """True for the name of an in-flight temporary file of :func:`storage.write_atomic`."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def remove_stale_temps(root: str | os.PathLike[str]) -> int:
    """Delete temporary files under a local ``root`` left by a killed run; return how many.

    Only safe while no other run writes to ``root`` (the batch holds a lock on it).
    """
    base = storage.to_local(root) if not storage.is_url(root) else None
    if base is None or not base.is_dir():
        return 0
    n = 0
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            if is_temp_name(name):
                with contextlib.suppress(FileNotFoundError):
                    (Path(dirpath) / name).unlink()
                    n += 1
    return n


def page_json_bytes(result: PageResult) -> bytes:
    """The page's JSON document (schema ``hwr-batch/page/v1``) as UTF-8 bytes."""
    # Compact: a 300-character page is ~50 kB and 3 ms this way, 2.4x that indented (use jq).
    doc = json.dumps(result.to_dict(), ensure_ascii=False, separators=(",", ":"))
    return (doc + "\n").encode("utf-8")


def write_page_json(result: PageResult, path: str | os.PathLike[str]) -> str:
    return atomic_write_bytes(path, page_json_bytes(result))


@dataclass(frozen=True)
class CharRow:
    """One character with its position in the page structure (0-based indices)."""

    index: int
    char: Char
    line: int | None = None
    word: int | None = None
    pos: int | None = None
    field: str = ""


def iter_char_rows(result: PageResult) -> Iterator[CharRow]:
    """Every character of the page: text in reading order, then form-field characters."""
    index = 0
    for li, line in enumerate(result.lines):
        for wi, word in enumerate(line.words):
            for ci, ch in enumerate(word.chars):
                yield CharRow(index, ch, li, wi, ci)
                index += 1
    for fld in result.fields:
        for ch in fld.chars:
            yield CharRow(index, ch, field=fld.name)
            index += 1


@dataclass(frozen=True, slots=True)
class RawCharRow:
    """A character of a parsed page JSON, left as its dict (building records for every
    character of a large batch costs more than reading the JSON)."""

    index: int
    line: int | None
    word: int | None
    pos: int | None
    field: str
    raw: dict[str, Any]

    @property
    def confidence(self) -> float:
        return float(self.raw["confidence"])

    @property
    def char(self) -> Char:
        return Char.from_dict(self.raw)


def iter_dict_char_rows(doc: dict[str, Any]) -> Iterator[RawCharRow]:
    """The rows of :func:`iter_char_rows`, over an already-parsed page JSON."""
    index = 0
    for li, line in enumerate(doc.get("lines", [])):
        for wi, word in enumerate(line["words"]):
            for ci, ch in enumerate(word["chars"]):
                yield RawCharRow(index, li, wi, ci, "", ch)
                index += 1
    for fld in doc.get("fields", []):
        for ch in fld["chars"]:
            yield RawCharRow(index, None, None, None, fld["name"], ch)
            index += 1


def _blank(v: int | None) -> str | int:
    return "" if v is None else v


def page_csv_text(result: PageResult) -> str:
    """The per-page CSV (one row per character, columns :data:`CSV_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in iter_char_rows(result):
        ch = row.char
        alts: list[str | float] = []
        for i in range(defaults.TOP_K):
            if i < len(ch.alternatives):
                lab, p = ch.alternatives[i]
                alts += [lab, round(float(p), 4)]
            else:
                alts += ["", ""]
        writer.writerow(
            [
                row.index,
                _blank(row.line),
                _blank(row.word),
                _blank(row.pos),
                row.field,
                ch.label,
                round(float(ch.confidence), 4),
                *ch.bbox.to_list(),
                *alts,
            ]
        )
    return buf.getvalue()


def write_page_csv(result: PageResult, path: str | os.PathLike[str]) -> str:
    return atomic_write_text(path, page_csv_text(result))


def encode_png(image: npt.NDArray[np.uint8], huffman_only: bool = False) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) BGR image.

    huffman_only: no search for repeated runs, for small crops of scanned paper, whose grain
    and JPEG noise leave few to find (a review crop: 0.28 ms and 10.2 kB against 0.42 ms and
    11.7 kB, mean of 240 crops of generated scans).
    """
    # Level 1: overlays of 300-dpi pages are several Mpx; higher levels cost 3-5x the time
    # for ~10% smaller files.
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if huffman_only:
        params += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    ok, buf = cv2.imencode(".png", image, params)
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {image.shape}")
    return bytes(buf.tobytes())


def draw_overlay(
    gray: npt.NDArray[np.uint8],
    result: PageResult,
    min_confidence: float = defaults.MIN_CONFIDENCE,
) -> npt.NDArray[np.uint8]:
    """The page with every character's box and label drawn.

    gray: uint8 (H, W), the page as loaded (the coordinate frame of the boxes).
    Returns uint8 (H, W, 3) BGR: green boxes for confident characters, red under
    ``min_confidence``; the label is written above each box, scaled to the box height.
    """
    canvas: npt.NDArray[np.uint8] = np.repeat(
        np.ascontiguousarray(gray, dtype=np.uint8)[:, :, None], 3, axis=2
    )
    thickness = max(1, round(min(gray.shape[:2]) / 800))
    for row in iter_char_rows(result):
        ch = row.char
        b = ch.bbox
        color = (0, 160, 0) if ch.confidence >= min_confidence else (0, 0, 230)
        cv2.rectangle(canvas, (b.x, b.y), (b.x2 - 1, b.y2 - 1), color, thickness)
        scale = max(0.3, 0.5 * b.h / 22)  # Hershey simplex glyphs are ~22 px tall at scale 1
        org = (b.x, max(b.y - 3, int(14 * scale)))
        cv2.putText(canvas, ch.label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness)
    return canvas


def write_overlay(
    gray: npt.NDArray[np.uint8],
    result: PageResult,
    path: str | os.PathLike[str],
    min_confidence: float = defaults.MIN_CONFIDENCE,
) -> str:
    return atomic_write_bytes(path, encode_png(draw_overlay(gray, result, min_confidence)))


#: Context around a review crop, as a fraction of the box's longer side, and its minimum (px):
#: enough to see neighbouring strokes that explain a doubtful reading.
REVIEW_PAD_FRACTION = 0.25
REVIEW_MIN_PAD = 4


def review_crop(gray: npt.NDArray[np.uint8], char: Char) -> npt.NDArray[np.uint8]:
    """The character's box from the page with a margin of context, uint8 (h, w)."""
    b = char.bbox
    pad = max(REVIEW_MIN_PAD, round(REVIEW_PAD_FRACTION * max(b.w, b.h)))
    height, width = gray.shape[:2]
    x0, y0 = max(0, b.x - pad), max(0, b.y - pad)
    x1, y1 = min(width, b.x2 + pad), min(height, b.y2 + pad)
    crop = gray[y0:y1, x0:x1]
    if crop.size == 0:  # a box outside the page: still give the reviewer something to see
        crop = np.full((max(1, b.h), max(1, b.w)), 255, np.uint8)
    return np.ascontiguousarray(crop)


def review_crop_name(index: int) -> str:
    """File name of the review crop of the page's ``index``-th character (CSV ``index``)."""
    return f"c{index:04d}.png"


def write_review_crops(
    gray: npt.NDArray[np.uint8],
    result: PageResult,
    directory: str | os.PathLike[str],
    min_confidence: float = defaults.MIN_CONFIDENCE,
) -> list[str]:
    """Write a crop PNG for every character under ``min_confidence`` into ``directory``.

    Crops left there by an earlier run of the same page that are no longer under the threshold
    are removed, so the directory always matches the page JSON. Returns the written paths.
    """
    written: list[str] = []
    for row in iter_char_rows(result):
        if row.char.confidence < min_confidence:
            written.append(
                atomic_write_unsynced(
                    storage.join(directory, review_crop_name(row.index)),
                    encode_png(review_crop(gray, row.char), huffman_only=True),
                )
            )
    out_dir = None if storage.is_url(directory) else Path(directory)
    if out_dir is not None and out_dir.is_dir():
        keep = {PurePosixPath(p).name for p in written}
        for old in out_dir.glob("c*.png"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out_dir.rmdir()  # only succeeds when empty: no low-confidence characters
    return written


def write_rows_csv(path: str | os.PathLike[str], header: list[str], rows: list[list[Any]]) -> str:
    """Write a CSV (header + rows) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
