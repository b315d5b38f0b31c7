"""Receiving one uploaded file: streamed to a temporary folder, capped while reading, sniffed.

FastAPI's ``UploadFile`` spools anything over 1 MiB to an anonymous file in the system temp
folder and only then hands it to the endpoint, so neither the size cap nor the "nothing outside
our temporary folder" rule could be kept with it. Here the request body is read chunk by chunk,
fed to python-multipart's streaming parser, and the one file part is written into a folder the
caller owns (a ``tempfile.TemporaryDirectory``); the upload is refused with 413 the moment it
passes the cap, before the rest is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

#: Room for the multipart envelope (boundaries, part headers, a few small fields) on top of the
#: file itself; a browser's envelope is a few hundred bytes.
ENVELOPE_BYTES = 64 * 1024

#: Leading bytes of each accepted format. The file name and the declared content type are
#: ignored: both are chosen by the client.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"%PDF-", "pdf"),
)

IMAGE_KINDS = ("png", "jpeg", "tiff", "bmp", "gif", "webp")
_SUFFIX = {"jpeg": "jpg", "tiff": "tif"}


class UploadError(Exception):
    """A request the client can fix; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Upload:
    """The uploaded file as saved: ``path`` inside the caller's temporary folder."""

    path: Path
    #: Name the client gave the file (for messages and the result's ``source``); never a path.
    filename: str
    size: int
    #: Format found from the content: one of :data:`IMAGE_KINDS` or "pdf".
    kind: str


def sniff(head: bytes) -> str | None:
    """The format of a file from its first bytes, or None when it is not one we read."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    # PDF readers accept a header within the first 1024 bytes (ISO 32000-1, 7.5.2 note).
    if b"%PDF-" in head[:1024]:
        return "pdf"
    return None


def _safe_name(raw: bytes | None) -> str:
    name = (raw or b"").decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:200] or "upload"


class _FilePart:
    """python-multipart callbacks that write the part named ``field`` to ``out``."""

    def __init__(self, field: str, out: BinaryIO, max_bytes: int) -> None:
        self.field = field.encode()
        self.out = out
        self.max_bytes = max_bytes
        self.size = 0
        self.found = False
        self.too_large = False
        self.filename: bytes | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._active = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._headers = {}
        self._header_name = self._header_value = b""
        self._active = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        # Only the first part with the right name is kept; a second one is ignored.
        if opts.get(b"name") == self.field and not self.found:
            self.found = True
            self._active = True
            self.filename = opts.get(b"filename")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._active or self.too_large:
            return
        n = end - start
        if self.size + n > self.max_bytes:
            self.too_large = True
            return
        self.out.write(data[start:end])
        self.size += n

    def on_part_end(self) -> None:
        self._active = False


async def receive_upload(
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    folder: Path,
    max_bytes: int,
    field: str = "file",
) -> Upload:
    """Stream a multipart/form-data body and save its part ``field`` under ``folder``.

    Raises :class:`UploadError`: 415 when the body is not multipart or the file is not an image
    or PDF (by content), 413 as soon as more than ``max_bytes`` of file arrive, 422 when the
    field is missing, 400 when it is empty or the body is malformed.
    """
    mime, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise UploadError(415, f"send the file as multipart/form-data in the form field '{field}'")
    limit_mb = max_bytes / 2**20
    too_large = UploadError(413, f"upload is larger than the {limit_mb:.3g} MB limit")
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise UploadError(400, "bad Content-Length header") from None
        if declared > max_bytes + ENVELOPE_BYTES:
            raise too_large

    path = folder / "upload.bin"
    received = 0
    with path.open("wb") as out:
        part = _FilePart(field, out, max_bytes)
        parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
        try:
            async for chunk in body:
                received += len(chunk)
                if received > max_bytes + ENVELOPE_BYTES:
                    raise too_large
                parser.write(chunk)
                if part.too_large:
                    raise too_large
            parser.finalize()
        except MultipartParseError as exc:
            raise UploadError(400, f"malformed multipart body ({exc})") from None
    if not part.found:
        raise UploadError(422, f"missing the form field '{field}' with the file")
    if part.size == 0:
        raise UploadError(400, f"{_safe_name(part.filename)}: the uploaded file is empty")
    with path.open("rb") as f:
        head = f.read(1024)
    name = _safe_name(part.filename)
    kind = sniff(head)
    if kind is None:
        raise UploadError(
            415, f"{name}: not an image (PNG, JPEG, TIFF, BMP, GIF, WebP) or a PDF, by its content"
        )
    # Loaders may go by suffix (PIL, pypdfium2 do not, but a person listing the folder does).
    typed = path.with_suffix("." + _SUFFIX.get(kind, kind))
    path.rename(typed)
    return Upload(path=typed, filename=name, size=part.size, kind=kind)
