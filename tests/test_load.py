"""Load stage: every format, multi-page files, and every kind of bad input."""

from __future__ import annotations

import hashlib
import inspect
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hwr_batch.errors import EncryptedPdf, TooLarge, UnreadableInput, UnsupportedInput
from hwr_batch.load import count_pages, iter_pages, load_page


def _page(seed: int = 0, size: tuple[int, int] = (120, 90)) -> np.ndarray:
    """A light page with a dark block whose position depends on ``seed`` (gray uint8)."""
    w, h = size
    a = np.full((h, w), 240, np.uint8)
    x = 10 + 7 * seed
    a[20:40, x : x + 15] = 20
    return a


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tif"])
def test_single_image_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"page{suffix}"
    Image.fromarray(_page()).save(path)
    pages = list(iter_pages(path))
    assert len(pages) == 1
    p = pages[0]
    assert p.page == 1 and p.source == str(path)
    assert p.gray.dtype == np.uint8 and p.gray.shape == (90, 120)
    assert p.gray[30, 15] < 80 and p.gray[70, 100] > 200


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((50, 60, 4), np.uint8)  # fully transparent black
    rgba[10:20, 10:20] = (0, 0, 0, 255)  # opaque black square
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    gray = load_page(path).gray
    assert gray[15, 15] == 0
    assert gray[40, 40] == 255  # transparent = paper, not black


def test_palette_and_16bit(tmp_path: Path) -> None:
    pal = Image.fromarray(_page()).convert("P")
    pal.save(tmp_path / "pal.png")
    g = load_page(tmp_path / "pal.png").gray
    assert g[30, 15] < 80 and g[70, 100] > 200

    a16 = _page().astype(np.uint16) * 257
    Image.fromarray(a16).save(tmp_path / "deep.png")
    g16 = load_page(tmp_path / "deep.png").gray
    assert g16.dtype == np.uint8
    assert abs(int(g16[30, 15]) - 20) <= 1 and abs(int(g16[70, 100]) - 240) <= 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.fromarray(_page(size=(120, 90)))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif)
    gray = load_page(path).gray
    assert gray.shape == (120, 90)


def test_multipage_tiff_streams_every_page(tmp_path: Path) -> None:
    frames = [Image.fromarray(_page(seed=i)) for i in range(3)]
    path = tmp_path / "scan.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert count_pages(path) == 3
    gen = iter_pages(path)
    assert inspect.isgenerator(gen)
    pages = list(gen)
    assert [p.page for p in pages] == [1, 2, 3]
    for i, p in enumerate(pages):
        x = 10 + 7 * i
        assert p.gray[30, x + 2] < 80  # each page is its own frame
    assert np.array_equal(load_page(path, 2).gray, pages[1].gray)
    with pytest.raises(UnreadableInput, match="no page 4"):
        load_page(path, 4)


def test_pdf_every_page_rendered_at_dpi(tmp_path: Path) -> None:
    frames = [Image.fromarray(_page(seed=i, size=(200, 100))).convert("RGB") for i in range(2)]
    path = tmp_path / "doc.pdf"
    # 72 dpi in the file: a 200x100 image is a 200x100 pt page.
    frames[0].save(path, save_all=True, append_images=frames[1:], resolution=72.0)
    assert count_pages(path) == 2
    pages = list(iter_pages(path, dpi=144))
    assert [p.page for p in pages] == [1, 2]
    for i, p in enumerate(pages):
        assert p.gray.shape == (200, 400)  # 2x the points at 144 dpi
        x = 2 * (10 + 7 * i)
        assert p.gray[60, x + 4] < 100 and p.gray[180, 390] > 200
    assert load_page(path, 2, dpi=72).gray.shape == (100, 200)


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def _encrypted_pdf(path: Path, user_password: bytes = b"secret") -> None:
    """A one-page PDF with the standard security handler (RC4 40-bit, revision 2).

    Written by hand following the PDF specification (7.6.3, algorithms 2, 3 and 4), since no
    PDF writer with encryption is installed; the page content is really encrypted.
    """
    pad = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")

    def padded(pw: bytes) -> bytes:
        return (pw + pad)[:32]

    owner_key = hashlib.md5(padded(b"owner")).digest()[:5]
    o_entry = _rc4(owner_key, padded(user_password))
    perms = -44
    file_id = hashlib.md5(b"hwr-batch test").digest()
    key = hashlib.md5(
        padded(user_password) + o_entry + struct.pack("<i", perms) + file_id
    ).digest()[:5]
    u_entry = _rc4(key, pad)
    content = b"0 0 0 rg 10 10 50 50 re f"
    obj_key = hashlib.md5(key + (4).to_bytes(3, "little") + (0).to_bytes(2, "little")).digest()
    stream = _rc4(obj_key[:10], content)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Filter /Standard /V 1 /R 2 /O <"
        + o_entry.hex().encode()
        + b"> /U <"
        + u_entry.hex().encode()
        + b"> /P %d >>" % perms,
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 5 0 R /ID [<%s> <%s>] >>\n" % (
        len(objects) + 1,
        file_id.hex().encode(),
        file_id.hex().encode(),
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    path.write_bytes(bytes(out))


def test_encrypted_pdf(tmp_path: Path) -> None:
    path = tmp_path / "locked.pdf"
    _encrypted_pdf(path)
    with pytest.raises(EncryptedPdf, match="locked.pdf"):
        list(iter_pages(path))
    with pytest.raises(EncryptedPdf):
        count_pages(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(UnreadableInput, match=r"empty\.png: empty file"):
        list(iter_pages(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnreadableInput, match="not found"):
        list(iter_pages(tmp_path / "nope.png"))


def test_text_with_image_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(UnreadableInput, match=r"notes\.png: not a valid PNG image"):
        list(iter_pages(path))


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("plain text\n")
    with pytest.raises(UnsupportedInput, match=r"notes\.txt"):
        list(iter_pages(path))


def test_truncated_png(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableInput, match=r"cut\.png: page 1 is corrupt"):
        list(iter_pages(path))


def test_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    noise = np.random.default_rng(0).integers(0, 255, (200, 200), np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableInput, match=r"cut\.jpg: page 1 is corrupt"):
        list(iter_pages(path))


def test_corrupt_pdf(tmp_path: Path) -> None:
    path = tmp_path / "bad.pdf"
    path.write_bytes(b"%PDF-1.4\n garbage without objects")
    with pytest.raises(UnreadableInput, match=r"bad\.pdf"):
        list(iter_pages(path))


def test_pixel_limit_from_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_page(size=(200, 100))).save(path)
    with pytest.raises(TooLarge, match=r"big\.png: page 1 is 200x100"):
        list(iter_pages(path, max_pixels=10_000))
    assert len(list(iter_pages(path, max_pixels=20_000))) == 1


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims a huge image, with a few bytes of data: a decompression bomb
    must be refused from the header, before anything is decoded or allocated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_bomb_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    _png_header_only(path, 60_000, 60_000)  # 3.6 Gpx: decoding would need 3.6 GB
    with pytest.raises(TooLarge, match=r"bomb\.png"):
        list(iter_pages(path))
    path2 = tmp_path / "bomb2.png"
    _png_header_only(path2, 12_000, 12_000)  # 144 Mpx: over our limit, under Pillow's
    with pytest.raises(TooLarge, match=r"12000x12000"):
        list(iter_pages(path2))


def test_pdf_pixel_limit_uses_page_size_and_dpi(tmp_path: Path) -> None:
    path = tmp_path / "doc.pdf"
    Image.fromarray(_page(size=(200, 100))).convert("RGB").save(path, resolution=72.0)
    with pytest.raises(TooLarge, match=r"doc\.pdf: page 1 is 2778x1389"):
        list(iter_pages(path, dpi=1000, max_pixels=1_000_000))
