"""Readers for the character data sets used in training.

Every reader returns a :class:`training.data.LabeledImages`: uint8 (N, 28, 28), white ink on
black, each image passed through :func:`hwr_batch.normalize.normalize`, the same function the
page reader uses on crops cut from a scan. MNIST-style sources (idx, Kaggle CSV, USPS) go
through it too, with ``dark_ink=False``, so that training and reading see the same stroke
intensities and the same 20x20 fit (EMNIST and Kaggle rows are not always fitted exactly).

Formats:

* idx / idx.gz (:func:`read_idx`): MNIST, EMNIST. ``transpose=True`` for EMNIST, which stores
  each image transposed. Label maps for EMNIST's numbering in :data:`LABEL_MAPS`.
* Kaggle CSV (:func:`read_kaggle_csv`): the A-Z file (no header, ``label`` 0-25 then 784
  pixels), the digit-recognizer ``train.csv`` (header ``label,pixel0..pixel783``) and its
  ``test.csv`` (header, no label column: labels come back as ``""``). The header is detected
  from the first line, so a headerless file does not lose its first row. Read in chunks.
* A folder of class sub-folders (:func:`read_image_folder`): folder names as labels: one
  character (``A``, ``a``, ``0``), Chars74K's ``A_caps``, the original Chars74K ``Sample001``
  (1-based index into 0-9A-Za-z) and the canvas set's ``u<hex>`` code points (``u41`` = 'A').
* A CSV index of image files (:func:`read_image_index`): ``image,label`` as in the realcrops
  ``english.csv``; file names are matched case-insensitively.
* USPS ``zip.*.gz`` (:func:`read_usps`): label then 256 values in [-1, 1], 16x16, -1 = paper.

Ink polarity of image files is detected per image from the median of its border pixels
(:func:`is_dark_ink`) unless ``dark_ink`` is given: the canvas set is white ink on black, the
other PNG sets dark on light. The rule misreads a stroke drawn edge to edge in a narrow image
(8 of the canvas set's 5,234: 'I', 'l'), so pass ``dark_ink`` when a source's polarity is
known (:mod:`training.sources` does).

Bad data raises :class:`hwr_batch.errors.DataError` with one line naming the file and the line
or record. An unreadable image raises too, unless ``skip_unreadable=True``: then it is logged
as a warning and skipped (the choice for data a person curates by hand is to stop and say
which file, so a broken download is not silently trained around).

Writer hints found in the shipped sets' file names (``groups`` = "source/writer"):

* Chars74K ``A_caps.017.png``: 017 is the writer (55 writers, 001-055).
* FEMNIST ``client_K/train/<d>/<d>_<d>_<n>.png``: the client folder is the writer; the name
  holds the digit twice and a running number, nothing more.
* canvas ``u41-1730734299087.png``: a millisecond timestamp of the export, not of the
  drawing. Files come in class order at ~10 ms steps, in two export sessions (2024-11-04 and
  2024-11-05); the session date is the only writer proxy (:func:`writer_canvas`).
* realcrops ``CAP_A_17.png``: a per-class running number (0-99, digits 1-100). Neighbouring
  numbers of one class often share pen, paper and hand, so blocks of ten numbers are the proxy
  (:func:`writer_realcrops`); numbers do not line up across classes.
* MNIST, USPS, Kaggle: no writer in the files; the group is the source file.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from PIL import Image, UnidentifiedImageError

from hwr_batch.errors import DataError
from hwr_batch.normalize import normalize
from training.data import DIGITS, LabeledImages

log = logging.getLogger(__name__)

#: 62 classes in the EMNIST byclass / Chars74K ``SampleNNN`` order.
ALNUM62 = DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz"
#: The realcrops ``english.csv`` numbering: A-Z = 0-25, a-z = 26-51, 0-9 = 52-61 (checked
#: against its file names CAP_A_*, SMALL_a_*, DIGIT_0_*).
ENGLISH_CSV62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz" + DIGITS

#: Named label numberings: name -> (alphabet, first label). Label ``k`` is
#: ``alphabet[k - first]``.
LABEL_MAPS: dict[str, tuple[str, int]] = {
    "digits": (DIGITS, 0),
    "letters": ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 0),  # Kaggle A-Z CSV
    "emnist-letters": ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 1),  # 1..26, both cases merged
    "emnist-byclass": (ALNUM62, 0),
    "emnist-bymerge": (DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt", 0),
    "emnist-balanced": (DIGITS + "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt", 0),
    "emnist-digits": (DIGITS, 0),
    "emnist-mnist": (DIGITS, 0),
    "english-csv": (ENGLISH_CSV62, 0),
    "alnum62": (ALNUM62, 0),
}

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}

LabelMap = str | tuple[str, int] | None


def _resolve_map(label_map: LabelMap) -> tuple[str, int] | None:
    if label_map is None:
        return None
    if isinstance(label_map, tuple):
        return label_map
    if label_map in LABEL_MAPS:
        return LABEL_MAPS[label_map]
    # A bare alphabet string: label k -> label_map[k].
    return (label_map, 0)


def _to_u8(images: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def normalize_to_u8(crop: npt.ArrayLike, dark_ink: bool) -> npt.NDArray[np.uint8]:
    """:func:`hwr_batch.normalize.normalize` -> uint8 (28, 28), white ink on black."""
    return _to_u8(normalize(crop, dark_ink=dark_ink))


def normalize_many(crops: npt.NDArray[np.generic], dark_ink: bool) -> npt.NDArray[np.uint8]:
    """Normalise a stack of crops (N, H, W) -> uint8 (N, 28, 28)."""
    out = np.zeros((len(crops), 28, 28), np.uint8)
    for i, crop in enumerate(crops):
        out[i] = normalize_to_u8(crop, dark_ink)
    return out


def _str_array(values: list[str] | npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    arr = np.asarray(values, dtype=str)
    if arr.size == 0:
        return np.array([], "<U1")
    return arr


# --------------------------------------------------------------------------------------------
# idx
# --------------------------------------------------------------------------------------------

#: idx type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_all(path: Path) -> tuple[bytes, bool]:
    """Bytes of a plain or gzipped file -> (data, truncated). A gzip stream cut short gives
    what could be decompressed and ``truncated=True``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    if head != b"\x1f\x8b":
        return path.read_bytes(), False
    # zlib rather than gzip.open: on a stream cut short, gzip raises and drops the bytes it
    # had decompressed, and the error should say which record the data ends in.
    buf = io.BytesIO()
    inflater = zlib.decompressobj(wbits=31)
    member_done = False
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            while chunk:
                if member_done:
                    if not chunk.strip(b"\0"):
                        break  # zero padding after the last member, as gzip allows
                    # Concatenated gzip members: a new one starts on the leftover bytes.
                    inflater = zlib.decompressobj(wbits=31)
                    member_done = False
                try:
                    buf.write(inflater.decompress(chunk))
                except zlib.error:
                    return buf.getvalue(), True
                if inflater.eof:
                    member_done = True
                    chunk = inflater.unused_data
                else:
                    chunk = b""
    return buf.getvalue(), not member_done


def _parse_idx(path: Path, expect_ndim: int) -> npt.NDArray[np.generic]:
    data, gz_truncated = _read_all(path)
    if len(data) < 4:
        raise DataError(f"{path}: not an idx file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an idx file (magic {data[:4].hex()})")
    ndim = data[3]
    if ndim != expect_ndim:
        raise DataError(f"{path}: expected an idx file with {expect_ndim} dimensions, got {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    record = int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header
    if payload < dims[0] * record:
        complete = payload // record if record else 0
        why = "gzip stream ends early" if gz_truncated else "file ends early"
        raise DataError(
            f"{path}: truncated at record {complete} of {dims[0]} ({why}; header says "
            f"{dims[0]} records of {record} bytes)"
        )
    if payload > dims[0] * record:
        raise DataError(
            f"{path}: {payload - dims[0] * record} bytes after the {dims[0]} records the "
            "header announces"
        )
    return np.frombuffer(data, dtype, count=int(np.prod(dims)), offset=header).reshape(dims)


def read_idx(
    images_path: str | Path,
    labels_path: str | Path | None = None,
    *,
    transpose: bool = False,
    label_map: LabelMap = "digits",
    group: str | None = None,
) -> LabeledImages:
    """Read an idx image file (and optionally its idx label file), plain or gzipped.

    images_path: idx3 of uint8 (N, rows, cols), white ink on black (MNIST, EMNIST).
    labels_path: idx1 of N integer labels; None -> labels are "".
    transpose: EMNIST stores each image transposed; True turns them back.
    label_map: a name from :data:`LABEL_MAPS`, an alphabet string, or (alphabet, first label).
    group: the group of every row (default: the image file's name without ``.gz``).
    Returns images normalised with ``dark_ink=False``.
    """
    images_path = Path(images_path)
    images = _parse_idx(images_path, 3)
    if images.dtype != np.uint8:
        raise DataError(f"{images_path}: idx images must be unsigned bytes, got {images.dtype}")
    if transpose:
        images = images.transpose(0, 2, 1)
    n = len(images)
    if labels_path is not None:
        labels_path = Path(labels_path)
        raw = _parse_idx(labels_path, 1)
        if len(raw) != n:
            raise DataError(
                f"{labels_path}: {len(raw)} labels for {n} images in {images_path.name}"
            )
        labels = _map_labels(raw.astype(np.int64), label_map, labels_path, record_base=0)
    else:
        labels = np.full(n, "", dtype="<U1")
    name = group or images_path.name.removesuffix(".gz")
    return LabeledImages(
        normalize_many(images, dark_ink=False), labels, np.full(n, name, dtype=object).astype(str)
    )


def _map_labels(
    raw: npt.NDArray[np.int64],
    label_map: LabelMap,
    path: Path,
    record_base: int,
    what: str = "record",
) -> npt.NDArray[np.str_]:
    """Integer labels -> characters; an out-of-range label raises naming its record or line
    (``record_base + i`` for the i-th label)."""
    resolved = _resolve_map(label_map)
    if resolved is None:
        return np.asarray([str(v) for v in raw.tolist()], dtype=str)
    alphabet, first = resolved
    idx = raw - first
    bad = np.nonzero((idx < 0) | (idx >= len(alphabet)))[0]
    if bad.size:
        i = int(bad[0])
        where = record_base + i
        raise DataError(
            f"{path}: {what} {where}: label {int(raw[i])} out of range "
            f"{first}..{first + len(alphabet) - 1}"
        )
    table = np.array(list(alphabet), dtype="<U1")
    return table[idx]


# --------------------------------------------------------------------------------------------
# Kaggle CSV
# --------------------------------------------------------------------------------------------

_PIXELS = 28 * 28


def sniff_kaggle_csv(path: str | Path) -> tuple[bool, bool, int]:
    """Look at the first line -> (has_header, labeled, n_columns).

    A header is a first line whose first field is not a number (``label`` or ``pixel0``).
    A file is labeled when it has 785 columns (or its header starts with ``label``).
    """
    path = Path(path)
    try:
        with _open_text(path) as fh:
            first = fh.readline()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    if not first.strip():
        raise DataError(f"{path}: line 1: empty file or empty first line")
    fields = next(csv.reader([first]))
    ncols = len(fields)
    head = fields[0].strip()
    try:
        float(head)
        has_header = False
    except ValueError:
        has_header = True
    # With a header, the label column is named; without one, 785 columns means labeled.
    labeled = head.lower() == "label" if has_header else ncols == _PIXELS + 1
    if ncols != _PIXELS + int(labeled):
        raise DataError(
            f"{path}: line 1: expected {_PIXELS + int(labeled)} columns "
            f"({'label + ' if labeled else ''}784 pixels), found {ncols}"
        )
    return has_header, labeled, ncols


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def _chunk_integers(
    chunk: pd.DataFrame, path: Path, line: int, ncols: int
) -> npt.NDArray[np.int64]:
    """A parsed CSV chunk -> int64 (n, ncols), or DataError naming the first bad line.

    pandas parses clean integer columns as int64 (fast: no per-cell Python); a column with a
    blank field, a decimal or text comes back float or object, and only then is it searched.
    """
    if all(pd.api.types.is_integer_dtype(t) for t in chunk.dtypes):
        return chunk.to_numpy(np.int64)
    # Short rows and blank fields are NaN: a wrong column count.
    missing = chunk.isna().to_numpy()
    bad_row = missing.any(axis=1)
    not_int = np.zeros(chunk.shape, bool)
    for c, name in enumerate(chunk.columns):
        col = chunk[name]
        if pd.api.types.is_integer_dtype(col.dtype):
            continue
        as_num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
        not_int[:, c] = ~np.isnan(as_num) & (as_num != np.round(as_num))
        not_int[:, c] |= np.isnan(as_num) & ~missing[:, c]
    bad_row |= not_int.any(axis=1)
    rows = np.nonzero(bad_row)[0]
    if not rows.size:
        return chunk.to_numpy(np.float64).astype(np.int64)
    r = int(rows[0])
    if missing[r].any():
        present = np.nonzero(~missing[r])[0]
        found = int(present[-1]) + 1 if present.size else 0
        if missing[r, found:].all() and not missing[r, :found].any():
            raise DataError(f"{path}: line {line + r}: expected {ncols} columns, found {found}")
        c = int(np.nonzero(missing[r, :found])[0][0])
        raise DataError(f"{path}: line {line + r}: column {c + 1} is empty")
    c = int(np.nonzero(not_int[r])[0][0])
    value = chunk.iat[r, c]
    text = str(value.item() if isinstance(value, np.generic) else value)
    raise DataError(f"{path}: line {line + r}: column {c + 1}: {text!r} is not an integer")


def iter_kaggle_csv(
    path: str | Path,
    *,
    chunk_rows: int = 20000,
    label_range: int | None = None,
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8], int]]:
    """Stream a Kaggle-format CSV in chunks, validated, without normalising.

    Yields (labels int64 (n,) or empty when unlabeled, pixels uint8 (n, 28, 28), first line
    number of the chunk, 1-based in the file). Labels must be integers in
    ``0..label_range-1`` when ``label_range`` is given.
    """
    path = Path(path)
    has_header, labeled, ncols = sniff_kaggle_csv(path)
    skip = 1 if has_header else 0
    reader = pd.read_csv(  # closed in the finally below: a bad row stops mid-file
        path,
        header=None,
        names=range(ncols),
        skiprows=skip,
        chunksize=chunk_rows,
        engine="c",
        na_filter=True,
        skip_blank_lines=False,
        low_memory=False,
    )
    line = 1 + skip
    try:
        for chunk in reader:
            nums = _chunk_integers(chunk, path, line, ncols)
            pixels = nums[:, 1:] if labeled else nums
            bad = np.nonzero((pixels < 0) | (pixels > 255))
            if bad[0].size:
                r, c = int(bad[0][0]), int(bad[1][0])
                raise DataError(
                    f"{path}: line {line + r}: pixel {c} = {int(pixels[r, c])} outside 0..255"
                )
            labels = nums[:, 0] if labeled else np.zeros(0, np.int64)
            if labeled and label_range is not None:
                out = np.nonzero((labels < 0) | (labels >= label_range))[0]
                if out.size:
                    r = int(out[0])
                    raise DataError(
                        f"{path}: line {line + r}: label {int(labels[r])} out of range "
                        f"0..{label_range - 1}"
                    )
            yield labels, pixels.astype(np.uint8).reshape(-1, 28, 28), line
            line += len(chunk)
    except pd.errors.ParserError as e:
        # "Expected 785 fields in line 7, saw 786": pandas counts file lines, 1-based.
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        if m:
            raise DataError(f"{path}: line {m[2]}: expected {m[1]} columns, found {m[3]}") from None
        raise DataError(f"{path}: not a valid CSV: {str(e).splitlines()[0]}") from None
    finally:
        reader.close()


def read_kaggle_csv(
    path: str | Path,
    *,
    label_map: LabelMap | str = "auto",
    group: str | None = None,
    chunk_rows: int = 20000,
) -> LabeledImages:
    """Read a Kaggle-format CSV of 28x28 white-on-black images.

    label_map: "auto" = "letters" (A-Z) for a file without header (the A-Z file), "digits" for
        a file with a ``label`` header (digit-recognizer); or any :data:`LABEL_MAPS` name or
        alphabet. Unlabeled files (digit-recognizer ``test.csv``) get labels "".
    Raises DataError naming the file and line for a wrong column count, a non-integer value,
    a pixel outside 0..255 or a label out of range.
    """
    path = Path(path)
    has_header, labeled, _ = sniff_kaggle_csv(path)
    resolved = _resolve_map(
        ("digits" if has_header else "letters") if label_map == "auto" else label_map
    )
    assert resolved is not None
    alphabet, first = resolved
    images: list[npt.NDArray[np.uint8]] = []
    labels: list[npt.NDArray[np.str_]] = []
    for raw, pixels, line in iter_kaggle_csv(path, chunk_rows=chunk_rows):
        images.append(normalize_many(pixels, dark_ink=False))
        if labeled:
            labels.append(_map_labels(raw, (alphabet, first), path, line, "line"))
        else:
            labels.append(np.full(len(pixels), "", dtype="<U1"))
    if not images:
        raise DataError(f"{path}: no data rows")
    all_images = np.concatenate(images)
    n = len(all_images)
    return LabeledImages(
        all_images,
        np.concatenate(labels).astype(str),
        np.full(n, group or path.stem, dtype=object).astype(str),
    )


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------

_CHARS74K_CLASS = re.compile(r"^([A-Za-z])_caps$")
_SAMPLE_CLASS = re.compile(r"^Sample(\d{3})$")
_CODEPOINT_CLASS = re.compile(r"^u([0-9a-fA-F]{2,6})$")


def label_from_folder(name: str) -> str:
    """Class folder name -> the character it holds.

    ``A_caps`` -> 'A' (Chars74K capitals), ``a`` -> 'a', ``0`` -> '0', ``u41`` -> 'A'
    (canvas set: code point in hex), ``Sample011`` -> 'A' (Chars74K 1-based 0-9A-Za-z).
    Raises ValueError for anything else.
    """
    if len(name) == 1 and name.isprintable() and not name.isspace():
        return name
    if m := _CHARS74K_CLASS.match(name):
        return m[1].upper()
    if m := _CODEPOINT_CLASS.match(name):
        ch = chr(int(m[1], 16))
        if not ch.isprintable() or ch.isspace():
            raise ValueError(f"folder {name!r}: code point U+{m[1]} is not a printable character")
        return ch
    if (m := _SAMPLE_CLASS.match(name)) and 1 <= int(m[1]) <= len(ALNUM62):
        return ALNUM62[int(m[1]) - 1]
    raise ValueError(
        f"folder {name!r} is not a class name (one character, X_caps, u<hex> or SampleNNN)"
    )


def load_gray(path: Path) -> npt.NDArray[np.uint8]:
    """Read an image file -> uint8 (H, W) gray. Transparent pixels become white paper.

    Raises DataError naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if a.max() > 255 else 255.0
                return np.round(a / top * 255).astype(np.uint8)
            if im.mode == "P":
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "PA"):
                rgba = im.convert("RGBA")
                if rgba.getextrema()[3][0] < 255:
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    white.alpha_composite(rgba)
                    rgba = white
                return np.asarray(rgba.convert("L"))
            return np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image: {e}") from e


def is_dark_ink(gray: npt.NDArray[np.uint8]) -> bool:
    """True when the image is dark ink on light paper: the median of its one-pixel border is
    light. Characters rarely touch all four edges, so the border is paper."""
    if gray.shape[0] < 2 or gray.shape[1] < 2:
        return float(np.median(gray)) >= 128
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    return float(np.median(border)) >= 128


def _iter_image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


# Writer hints -------------------------------------------------------------------------------

_CHARS74K_FILE = re.compile(r"^.+\.(\d{3})\.[A-Za-z]+$")
_CANVAS_FILE = re.compile(r"^u[0-9a-fA-F]+-(\d{12,14})\.[A-Za-z]+$")
_REALCROPS_FILE = re.compile(r"^(CAP|SMALL|DIGIT)_[A-Za-z0-9]_(\d+)\.[A-Za-z]+$")
_FEMNIST_CLIENT = re.compile(r"^client_(\d+)$")


def writer_chars74k(path: Path) -> str | None:
    """``A_caps.017.png`` -> "w017" (Chars74K writer number)."""
    m = _CHARS74K_FILE.match(path.name)
    return f"w{m[1]}" if m else None


def writer_canvas(path: Path) -> str | None:
    """``u41-1730734299087.png`` -> "s2024-11-04": the UTC date of the export session, the
    only writer proxy the canvas set offers."""
    m = _CANVAS_FILE.match(path.name)
    if not m:
        return None
    import datetime as dt

    day = dt.datetime.fromtimestamp(int(m[1]) / 1000, tz=dt.timezone.utc).date()
    return f"s{day.isoformat()}"


def writer_realcrops(path: Path) -> str | None:
    """``CAP_A_17.png`` -> "b1": block of ten running numbers (digits are numbered 1-100, the
    rest 0-99; both map to blocks 0-9)."""
    m = _REALCROPS_FILE.match(path.name)
    if not m:
        return None
    number = int(m[2]) - (1 if m[1] == "DIGIT" else 0)
    return f"b{max(number, 0) // 10}"


def writer_femnist(path: Path) -> str | None:
    """``client_7/train/3/3_3_12.png`` -> "c07" (FEMNIST client = writer)."""
    for part in reversed(path.parts):
        if m := _FEMNIST_CLIENT.match(part):
            return f"c{int(m[1]):02d}"
    return None


def guess_writer(path: Path) -> str | None:
    """The writer hint of any shipped set's file name, or None."""
    for hint in (writer_chars74k, writer_canvas, writer_realcrops, writer_femnist):
        if (w := hint(path)) is not None:
            return w
    return None


def _read_images(
    files: list[tuple[Path, str]],
    *,
    source: str,
    dark_ink: bool | None,
    skip_unreadable: bool,
    writer: Callable[[Path], str | None] | None,
) -> LabeledImages:
    images = np.zeros((len(files), 28, 28), np.uint8)
    labels: list[str] = []
    groups: list[str] = []
    keep = np.zeros(len(files), bool)
    for i, (path, label) in enumerate(files):
        try:
            gray = load_gray(path)
        except DataError as e:
            if not skip_unreadable:
                raise
            log.warning("skipping %s", e)
            labels.append("")
            groups.append("")
            continue
        ink_dark = is_dark_ink(gray) if dark_ink is None else dark_ink
        images[i] = normalize_to_u8(gray, dark_ink=ink_dark)
        keep[i] = True
        labels.append(label)
        w = writer(path) if writer else None
        groups.append(f"{source}/{w}" if w else source)
    result = LabeledImages(images, _str_array(labels), _str_array(groups))
    return result if keep.all() else result.subset(keep)


def read_image_folder(
    root: str | Path,
    *,
    source: str | None = None,
    dark_ink: bool | None = None,
    skip_unreadable: bool = False,
    writer: Callable[[Path], str | None] | None = guess_writer,
    classes: Callable[[str], bool] | None = None,
) -> LabeledImages:
    """Read ``root/<class>/*.<image>``; the class folder's name gives the label
    (:func:`label_from_folder`).

    dark_ink: None = detect per image (:func:`is_dark_ink`); True/False force it.
    skip_unreadable: False = an undecodable image raises DataError naming it; True = warn
        and skip it.
    writer: file path -> writer id or None; groups are "source/writer" (or "source").
    classes: optional filter on the label (e.g. ``str.isalpha``) applied before decoding.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    source = source or root.name
    files: list[tuple[Path, str]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            label = label_from_folder(folder.name)
        except ValueError as e:
            raise DataError(f"{folder}: {e}") from None
        if classes is not None and not classes(label):
            continue
        files.extend((p, label) for p in _iter_image_files(folder))
    if not files:
        raise DataError(f"{root}: no images in class sub-folders")
    return _read_images(
        files, source=source, dark_ink=dark_ink, skip_unreadable=skip_unreadable, writer=writer
    )


def read_image_index(
    index_csv: str | Path,
    *,
    root: str | Path | None = None,
    label_map: LabelMap = "english-csv",
    image_column: str = "image",
    label_column: str = "label",
    source: str | None = None,
    dark_ink: bool | None = None,
    skip_unreadable: bool = False,
    skip_missing: bool = False,
    writer: Callable[[Path], str | None] | None = guess_writer,
    classes: Callable[[str], bool] | None = None,
) -> LabeledImages:
    """Read a CSV index ``image,label`` of image files (the realcrops ``english.csv``).

    root: folder the image paths are relative to (default: the CSV's folder). Names are
        matched case-insensitively (593 realcrops files end in ``.PNG``, the CSV says ``.png``).
    label_map: integer labels -> characters; "english-csv" is A-Z, a-z, 0-9 (as the realcrops
        file names confirm). None keeps the label text as it is (labels written as characters).
    skip_missing: False = a listed file that does not exist raises DataError with its line;
        True = warn and skip it (the shipped realcrops index lists ``DIGIT_<d>_0.png``, which
        is not on disk, while ``DIGIT_<d>_100.png`` is on disk and not listed).
    A label out of range or a missing column raises DataError with the line.
    """
    index_csv = Path(index_csv)
    root = Path(root) if root is not None else index_csv.parent
    try:
        table = pd.read_csv(index_csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{index_csv}: cannot read the index: {str(e).splitlines()[0]}") from e
    for col in (image_column, label_column):
        if col not in table.columns:
            raise DataError(f"{index_csv}: line 1: no column {col!r} (has {list(table.columns)})")
    by_lower: dict[str, dict[str, Path]] = {}
    resolved = _resolve_map(label_map)
    files: list[tuple[Path, str]] = []
    for r, (name, raw) in enumerate(zip(table[image_column], table[label_column], strict=True)):
        line = r + 2
        rel = Path(name.strip())
        folder = root / rel.parent
        if str(folder) not in by_lower:
            listing = {p.name.lower(): p for p in folder.iterdir()} if folder.is_dir() else {}
            by_lower[str(folder)] = listing
        path = by_lower[str(folder)].get(rel.name.lower())
        if path is None:
            msg = f"{index_csv}: line {line}: no file {rel} under {root}"
            if not skip_missing:
                raise DataError(msg)
            log.warning("skipping %s", msg)
            continue
        raw = raw.strip()
        if resolved is None:
            if len(raw) != 1:
                raise DataError(f"{index_csv}: line {line}: label {raw!r} is not one character")
            label = raw
        else:
            alphabet, first = resolved
            try:
                k = int(raw)
            except ValueError:
                raise DataError(
                    f"{index_csv}: line {line}: label {raw!r} is not an integer"
                ) from None
            if not first <= k < first + len(alphabet):
                raise DataError(
                    f"{index_csv}: line {line}: label {k} out of range "
                    f"{first}..{first + len(alphabet) - 1}"
                )
            label = alphabet[k - first]
        if classes is not None and not classes(label):
            continue
        files.append((path, label))
    if not files:
        raise DataError(f"{index_csv}: no images listed")
    return _read_images(
        files,
        source=source or index_csv.parent.name,
        dark_ink=dark_ink,
        skip_unreadable=skip_unreadable,
        writer=writer,
    )


# --------------------------------------------------------------------------------------------
# USPS
# --------------------------------------------------------------------------------------------


def read_usps(path: str | Path, *, group: str | None = None) -> LabeledImages:
    """Read USPS ``zip.train.gz`` / ``zip.test.gz`` (plain text also accepted).

    Each line: digit label (written as a float, ``6.0000``), then 256 values in [-1, 1],
    row-major 16x16, -1 = paper. Mapped to ink in [0, 1] and normalised (``dark_ink=False``).
    """
    path = Path(path)
    data, truncated = _read_all(path)
    if truncated:
        raise DataError(f"{path}: gzip stream ends early")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file: {e}") from None
    lines = text.splitlines()
    images = np.zeros((len(lines), 28, 28), np.uint8)
    labels: list[str] = []
    n = 0
    for lineno, row in enumerate(lines, 1):
        if not row.strip():
            continue
        fields = row.split()
        if len(fields) != 257:
            raise DataError(f"{path}: line {lineno}: expected 257 values, found {len(fields)}")
        try:
            values = np.array(fields, dtype=np.float64)
        except ValueError:
            raise DataError(f"{path}: line {lineno}: a value is not a number") from None
        label = values[0]
        if label != int(label) or not 0 <= label <= 9:
            raise DataError(f"{path}: line {lineno}: label {fields[0]} is not a digit 0-9")
        pix = values[1:]
        if not np.isfinite(pix).all() or pix.min() < -1.0001 or pix.max() > 1.0001:
            raise DataError(f"{path}: line {lineno}: pixel values outside [-1, 1]")
        ink = ((pix + 1.0) / 2.0).reshape(16, 16).astype(np.float32)
        images[n] = normalize_to_u8(ink, dark_ink=False)
        labels.append(str(int(label)))
        n += 1
    if n == 0:
        raise DataError(f"{path}: no data lines")
    name = group or path.name.removesuffix(".gz")
    return LabeledImages(images[:n], _str_array(labels), np.full(n, name, dtype=object).astype(str))


# --------------------------------------------------------------------------------------------
# Any of the above, by looking at the path
# --------------------------------------------------------------------------------------------

_EMNIST_SPLIT = re.compile(r"emnist-(letters|byclass|bymerge|balanced|digits|mnist)")


def _labels_for_idx(images: Path) -> Path | None:
    """``train-images-idx3-ubyte.gz`` -> ``train-labels-idx1-ubyte.gz`` when it exists."""
    name = images.name.replace("images-idx3", "labels-idx1").replace("images", "labels")
    candidate = images.with_name(name)
    return candidate if candidate != images and candidate.exists() else None


def read_dataset(path: str | Path, **kw: object) -> LabeledImages:
    """Read a data set of any supported format, chosen from the path.

    * folder with a CSV index (a ``.csv`` with ``image`` and ``label`` columns): that index;
    * other folder: class sub-folders of images;
    * ``*idx3*`` (``.gz`` or not): idx images with the matching ``*labels-idx1*`` file when it
      exists; a name with ``emnist-<split>`` sets ``transpose`` and EMNIST's label numbering;
    * ``zip.*`` / ``*.zip.gz``-style USPS text files (``zip.train.gz``);
    * ``.csv`` / ``.csv.gz``: an image index if its header has ``image`` and ``label``, else a
      Kaggle CSV.
    Extra keyword arguments go to the reader. Raises DataError for anything else.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    name = path.name.lower()
    if path.is_dir():
        for index in sorted(path.glob("*.csv")):
            with index.open(encoding="utf-8", errors="replace") as fh:
                header = [h.strip().lower() for h in fh.readline().split(",")]
            if "image" in header and "label" in header:
                return read_image_index(index, **kw)  # type: ignore[arg-type]
        return read_image_folder(path, **kw)  # type: ignore[arg-type]
    if "idx3" in name:
        if m := _EMNIST_SPLIT.search(name):
            kw.setdefault("transpose", True)
            kw.setdefault("label_map", f"emnist-{m[1]}")
        return read_idx(path, _labels_for_idx(path), **kw)  # type: ignore[arg-type]
    if name.startswith("zip.") and name != "zip.info.txt":
        return read_usps(path, **kw)  # type: ignore[arg-type]
    if name.endswith((".csv", ".csv.gz")):
        with _open_text(path) as fh:
            header = [h.strip().lower() for h in fh.readline().split(",")]
        if "image" in header and "label" in header:
            return read_image_index(path, **kw)  # type: ignore[arg-type]
        return read_kaggle_csv(path, **kw)  # type: ignore[arg-type]
    raise DataError(
        f"{path}: unknown data set format (expected a folder, idx, USPS zip.*, or .csv)"
    )
