"""Load stage: a file -> its pages as gray uint8 arrays, one at a time.

Images (PNG, JPEG, BMP, WebP, TIFF with every page of a multi-page TIFF) are decoded with
Pillow; PDFs are rendered page by page with pypdfium2. Every page's pixel count is checked
against ``max_pixels`` from the header (or the PDF page size) *before* it is decoded, so a
decompression bomb is refused without allocating it. Every failure is a typed
:class:`~hwr_batch.errors.InputError` with a one-line message that starts with the file name.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from hwr_batch import defaults, storage
from hwr_batch.errors import (
    EncryptedPdf,
    InputError,
    TooLarge,
    UnreadableInput,
    UnsupportedInput,
)

#: File suffixes the loader reads (lower case). Content decides the decoder; the suffix only
#: decides whether an undecodable file is "corrupt" (it claims to be an image) or "unsupported".
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
PDF_SUFFIXES = (".pdf",)
SUFFIXES = IMAGE_SUFFIXES + PDF_SUFFIXES

_PDF_MAGIC = b"%PDF"
_PT_PER_INCH = 72.0
#: EXIF tag of the image orientation (1 = upright).
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedPage:
    """One page as loaded.

    source: the file it came from (as given). page: 1-based page number within the file.
    gray: uint8 (H, W), dark ink on light paper, EXIF orientation applied, alpha composited
    on white.
    """

    source: str
    page: int
    gray: npt.NDArray[np.uint8]


def _name(path: str | os.PathLike[str]) -> str:
    return str(path)


def _is_pdf(local: Path) -> bool:
    with local.open("rb") as fh:
        return fh.read(1024).lstrip().startswith(_PDF_MAGIC)


def _check_size(path: str, page: int, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UnreadableInput(f"{path}: page {page} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooLarge(
            f"{path}: page {page} is {width}x{height} = {width * height:,} pixels, over the "
            f"limit of {max_pixels:,}"
        )


def to_gray(im: Image.Image) -> npt.NDArray[np.uint8]:
    """Any Pillow image -> gray uint8 (H, W).

    Handles EXIF orientation, 1-bit, palette (with transparency), 16-bit and 32-bit integer,
    float, CMYK, and alpha (composited on white: transparent means paper).
    """
    if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        # exif_transpose copies the page even when there is nothing to turn: only call it
        # when the orientation tag asks for a turn.
        im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode == "L":
        # The common case (gray scans): no conversion, one copy into numpy.
        return np.asarray(im, dtype=np.uint8)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("L"), dtype=np.uint8)
    if mode in ("L", "1", "RGB", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    # 16/32-bit integer and float modes: scale by the type's range, not the page's.
    a = np.asarray(im)
    if a.ndim == 3:
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if np.issubdtype(a.dtype, np.floating):
        top = 1.0 if float(np.nanmax(a, initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(a) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if mode.startswith("I;16") or (a.size and int(a.max()) > 255):
        return (a.astype(np.uint32) // 257).clip(0, 255).astype(np.uint8)
    return a.clip(0, 255).astype(np.uint8)


@contextlib.contextmanager
def _open_image(path: str, local: Path) -> Iterator[Image.Image]:
    """Open an image lazily (header only). Pillow's own bomb check becomes TooLarge."""
    try:
        with warnings.catch_warnings():
            # We apply our own limit from the header; Pillow's warning would be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(local)
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"{path}: image over the pixel limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        if local.suffix.lower() in IMAGE_SUFFIXES:
            raise UnreadableInput(
                f"{path}: not a valid {local.suffix.lstrip('.').upper()} image "
                "(corrupt or another kind of file)"
            ) from exc
        raise UnsupportedInput(f"{path}: not an image or PDF that hwr-batch can read") from exc
    except OSError as exc:
        raise UnreadableInput(f"{path}: cannot open ({exc})") from exc
    try:
        yield im
    finally:
        im.close()


def _decode_frame(path: str, page: int, frame: Image.Image, max_pixels: int) -> LoadedPage:
    _check_size(path, page, frame.width, frame.height, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            frame.load()
            gray = to_gray(frame)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow reports truncated or damaged data as OSError/ValueError/SyntaxError.
        raise UnreadableInput(f"{path}: page {page} is corrupt ({exc})") from exc
    return LoadedPage(path, page, np.ascontiguousarray(gray))


def _iter_image(path: str, local: Path, max_pixels: int) -> Iterator[LoadedPage]:
    with _open_image(path, local) as im:
        try:
            for i, frame in enumerate(ImageSequence.Iterator(im), start=1):
                yield _decode_frame(path, i, frame, max_pixels)
        except EOFError as exc:
            raise UnreadableInput(f"{path}: truncated multi-page image ({exc})") from exc


def _open_pdf(path: str, local: Path) -> Any:
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(local))
    except pdfium.PdfiumError as exc:
        msg = str(exc).lower()
        if "password" in msg or "security" in msg:
            raise EncryptedPdf(f"{path}: the PDF is password-protected") from exc
        raise UnreadableInput(f"{path}: not a readable PDF ({exc})") from exc


def _render_pdf_page(path: str, doc: Any, index: int, dpi: float, max_pixels: int) -> LoadedPage:
    page_no = index + 1
    pdf_page = doc[index]
    try:
        w_pt, h_pt = pdf_page.get_size()
        scale = dpi / _PT_PER_INCH
        _check_size(path, page_no, round(w_pt * scale), round(h_pt * scale), max_pixels)
        bitmap = pdf_page.render(scale=scale, grayscale=True, may_draw_forms=True)
        arr = bitmap.to_numpy()
        if arr.ndim == 3:
            arr = arr[..., 0] if arr.shape[2] == 1 else to_gray(Image.fromarray(arr[..., :3]))
        return LoadedPage(path, page_no, np.ascontiguousarray(arr, dtype=np.uint8))
    except InputError:
        raise
    except Exception as exc:  # pypdfium2 raises PdfiumError and plain errors alike
        raise UnreadableInput(f"{path}: page {page_no} cannot be rendered ({exc})") from exc
    finally:
        pdf_page.close()


def _iter_pdf(path: str, local: Path, dpi: float, max_pixels: int) -> Iterator[LoadedPage]:
    doc = _open_pdf(path, local)
    try:
        for index in range(len(doc)):
            yield _render_pdf_page(path, doc, index, dpi, max_pixels)
    finally:
        doc.close()


def _check_file(path: str, local: Path) -> None:
    try:
        size = local.stat().st_size
    except FileNotFoundError as exc:
        raise UnreadableInput(f"{path}: file not found") from exc
    except OSError as exc:
        raise UnreadableInput(f"{path}: cannot read ({exc})") from exc
    if local.is_dir():
        raise UnreadableInput(f"{path}: is a folder, not a file")
    if size == 0:
        raise UnreadableInput(f"{path}: empty file")


def iter_pages(
    path: str | os.PathLike[str],
    dpi: float = defaults.PDF_DPI,
    max_pixels: int = defaults.MAX_PIXELS,
) -> Iterator[LoadedPage]:
    """Yield the pages of an image or PDF one at a time (1-based ``page``).

    PDF pages are rendered at ``dpi``. Raises UnreadableInput (missing, empty, corrupt, not an
    image), UnsupportedInput (a file type the reader does not handle), EncryptedPdf, or
    TooLarge (a page over ``max_pixels``, checked before decoding). Pages before a bad page of
    a multi-page file have already been yielded when the error is raised.
    """
    name = _name(path)
    with storage.local_copy(path) as local:
        _check_file(name, local)
        if _is_pdf(local):
            yield from _iter_pdf(name, local, dpi, max_pixels)
        else:
            yield from _iter_image(name, local, max_pixels)


def count_pages(path: str | os.PathLike[str]) -> int:
    """Number of pages in a file without decoding any (TIFF frames, PDF pages, else 1)."""
    name = _name(path)
    with storage.local_copy(path) as local:
        _check_file(name, local)
        if _is_pdf(local):
            doc = _open_pdf(name, local)
            try:
                return len(doc)
            finally:
                doc.close()
        with _open_image(name, local) as im:
            return int(getattr(im, "n_frames", 1))


def load_page(
    path: str | os.PathLike[str],
    page: int = 1,
    dpi: float = defaults.PDF_DPI,
    max_pixels: int = defaults.MAX_PIXELS,
) -> LoadedPage:
    """Load one page (1-based) of a file; errors as :func:`iter_pages`, plus UnreadableInput
    when the file has fewer pages."""
    name = _name(path)
    if page < 1:
        raise ValueError(f"page numbers start at 1, got {page}")
    with storage.local_copy(path) as local:
        _check_file(name, local)
        if _is_pdf(local):
            doc = _open_pdf(name, local)
            try:
                if page > len(doc):
                    raise UnreadableInput(f"{name}: has {len(doc)} pages, no page {page}")
                return _render_pdf_page(name, doc, page - 1, dpi, max_pixels)
            finally:
                doc.close()
        with _open_image(name, local) as im:
            n = int(getattr(im, "n_frames", 1))
            if page > n:
                raise UnreadableInput(f"{name}: has {n} pages, no page {page}")
            try:
                im.seek(page - 1)
            except (EOFError, OSError) as exc:
                raise UnreadableInput(f"{name}: cannot reach page {page} ({exc})") from exc
            return _decode_frame(name, page, im, max_pixels)
