"""Synthetic character glyphs rendered from installed handwriting fonts (training data only).

Fonts are found with ``fc-list`` in the folders of the Debian handwriting font packages
(:data:`HANDWRITING_FONT_DIRS`: fonts-dkg-handwriting, breip, femkeklaver, rufscript, sjfonts,
comic-neue, humor-sans, bwht, dancingscript, klee, kristi). Each character is drawn dark on
white with PIL at a few sizes and stroke weights, then passed through the same
:func:`hwr_batch.normalize.normalize` as a crop cut from a page.

A font that lacks a character draws its ``.notdef`` glyph (usually a box) or nothing: a
character whose rendering is empty, or equal to the rendering of a private-use code point the
font surely lacks, is dropped for that font. Groups are "font/<file stem>".

These glyphs never go into a test split: a printed-looking glyph says nothing about accuracy
on handwriting.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from training.data import LabeledImages
from training.datasets import ALNUM62, normalize_to_u8

log = logging.getLogger(__name__)

#: Folder names (last path component) of the installed handwriting font packages.
HANDWRITING_FONT_DIRS = (
    "bwht",
    "comic-neue",
    "dancingscript",
    "breip",
    "femkeklaver",
    "fifthhorseman",  # fonts-dkg-handwriting
    "humor-sans",
    "klee",
    "kristi",
    "rufscript",
    "sjfonts",
)

#: Font files (stems) left out, with the reason.
EXCLUDED_FONTS = {
    # Hollow outline letters filled with dots: nothing a pen writes.
    "femkeklaver": "outlined decorative letters",
}

#: (font size in px, stroke width in px): thin to heavy pens. After normalisation to a 20x20
#: box only the stroke-to-size ratio survives; a ratio above ~1/20 fills small counters.
RENDER_VARIANTS: tuple[tuple[int, int], ...] = ((64, 0), (64, 1), (64, 3), (32, 0))

#: A private-use code point no handwriting font defines: its rendering is the .notdef glyph.
_MISSING_PROBE = "\ue000"


def find_handwriting_fonts(dirs: Iterable[str] = HANDWRITING_FONT_DIRS) -> list[Path]:
    """Font files known to fontconfig whose folder is one of ``dirs``, sorted by path."""
    wanted = set(dirs)
    try:
        out = subprocess.run(
            ["fc-list", "--format", "%{file}\n"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("fc-list failed (%s): no font glyphs", e)
        return []
    files = {Path(line.strip()) for line in out.splitlines() if line.strip()}
    return sorted(
        p for p in files if p.parent.name in wanted and p.stem not in EXCLUDED_FONTS and p.exists()
    )


def render_char(font: ImageFont.FreeTypeFont, char: str, stroke: int = 0) -> npt.NDArray[np.uint8]:
    """Draw one character dark on white, tightly padded -> uint8 (H, W) gray."""
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    pad = 4 + stroke
    w = max(1, int(right - left) + 2 * pad)
    h = max(1, int(bottom - top) + 2 * pad)
    img = Image.new("L", (w, h), 255)
    ImageDraw.Draw(img).text(
        (pad - left, pad - top), char, font=font, fill=0, stroke_width=stroke, stroke_fill=0
    )
    return np.asarray(img)


def _has_glyph(font: ImageFont.FreeTypeFont, char: str, notdef: npt.NDArray[np.uint8]) -> bool:
    glyph = render_char(font, char)
    if glyph.min() > 128:
        return False  # draws nothing
    return not (glyph.shape == notdef.shape and np.array_equal(glyph, notdef))


def render_font_glyphs(
    fonts: Iterable[Path] | None = None,
    chars: str = ALNUM62,
    variants: tuple[tuple[int, int], ...] = RENDER_VARIANTS,
) -> LabeledImages:
    """Render ``chars`` in every font and variant -> normalised LabeledImages.

    labels: the character as drawn ('a' stays 'a'); groups: "font/<file stem>".
    """
    fonts = list(find_handwriting_fonts() if fonts is None else fonts)
    images: list[npt.NDArray[np.uint8]] = []
    labels: list[str] = []
    groups: list[str] = []
    for path in fonts:
        try:
            probe = ImageFont.truetype(str(path), variants[0][0])
        except OSError as e:
            log.warning("skipping font %s: %s", path, e)
            continue
        notdef = render_char(probe, _MISSING_PROBE)
        present = [c for c in chars if _has_glyph(probe, c, notdef)]
        if len(present) < len(chars):
            missing = "".join(c for c in chars if c not in present)
            log.info("font %s lacks %r", path.name, missing)
        sized = {size: ImageFont.truetype(str(path), size) for size, _ in variants}
        for char in present:
            for size, stroke in variants:
                gray = render_char(sized[size], char, stroke)
                images.append(normalize_to_u8(gray, dark_ink=True))
                labels.append(char)
                groups.append(f"font/{path.stem}")
    if not images:
        return LabeledImages.concat([])
    return LabeledImages(np.stack(images), np.array(labels), np.array(groups))
