"""Write the sample scans in ``samples/`` and their ground truth, from the *test* splits only.

    python samples/make_samples.py            # rewrite samples/ in place
    python samples/make_samples.py --out DIR  # write elsewhere (the tests do, to compare)

Every page is drawn by :func:`training.pagegen.generate_page` from characters no shipped
model was trained on: digits from MNIST t10k, letters from the held-out split of
:mod:`training.sources` (``load_split("letters", "test")``: the Kaggle A-Z uniform sample, the
held-out Chars74K writers, realcrops blocks b8-b9 and the second canvas session; small letters
count as their capital, as the letter model reads them). Pages are A6 or smaller at 300 dpi
(1240 px wide) so the folder stays small; the characters have the size they would have on a
full page.

Each sample has a fixed seed, and the files are written so that the same inputs give the same
bytes (no time stamps in the PDF), so re-running the script changes nothing.

``truth.json`` (schema ``hwr-batch/samples-truth/v1``) maps each file, relative to
``samples/``, to the charset that reads it and its pages: width, height, text (lines joined by
"\\n", words by " ", the format of ``PageResult.text``) and the box of every character.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # run as a script, the repo not pip-installed
    sys.path.insert(0, str(REPO))

from training import pagegen  # noqa: E402
from training.data import LabeledImages  # noqa: E402

TRUTH_SCHEMA = "hwr-batch/samples-truth/v1"
#: A6 at 300 dpi, portrait; and the top half of it, for the pages of the TIFF.
A6 = (1240, 1748)
A7_LANDSCAPE = (1240, 874)
#: Fixed PDF dates, so the file's bytes depend on its pixels only.
PDF_DATE = time.struct_time((2026, 1, 1, 0, 0, 0, 3, 1, 0))

#: Looks without sensor noise or paper grain: a noisy page does not compress, and a PNG of one
#: would take a megabyte. Rotation, uneven light, blur, pen width, touching and broken
#: characters and ruled lines stay; the JPEG and the PDF carry the full noisy scan look.
QUIET = {"noise_std": 0.0, "paper_texture": 0.0, "jpeg_quality": 0}


@dataclass(frozen=True)
class Sample:
    """One sample file: where it goes, what is on it, how it looks, how it is stored."""

    path: str  # relative to samples/
    kind: str  # digits | letters | mixed
    style: str  # a training.pagegen style name
    seed: int
    pages: int = 1
    size: tuple[int, int] = A6
    n_chars: int = 100
    changes: dict[str, Any] = field(default_factory=dict)
    description: str = ""


SAMPLES: tuple[Sample, ...] = (
    Sample(
        "digits/digits_scan.png",
        "digits",
        "scan",
        101,
        changes=QUIET,
        description="digits; rotated page, uneven light, blur, touching and broken digits",
    ),
    Sample(
        "digits/digits_noisy.jpg",
        "digits",
        "scan",
        102,
        changes={"noise_std": 8.0, "jpeg_quality": 0},
        description="digits; the full scan look with heavy noise and paper grain, as JPEG",
    ),
    Sample(
        "digits/digits_3pages.tif",
        "digits",
        "scan",
        103,
        pages=3,
        size=A7_LANDSCAPE,
        n_chars=50,
        changes=QUIET,
        description="digits; a three-page TIFF (deflate)",
    ),
    Sample(
        "letters/letters_scan.png",
        "letters",
        "scan",
        201,
        changes=QUIET,
        description="capital and small letters; rotated page, uneven light, blur",
    ),
    Sample(
        "letters/letters_ruled.png",
        "letters",
        "ruled",
        202,
        changes=QUIET,
        description="letters on ruled paper",
    ),
    Sample(
        "mixed/mixed_ruled.png",
        "mixed",
        "ruled",
        301,
        changes=QUIET,
        description="letters and digits on ruled paper",
    ),
    Sample(
        "mixed/mixed_2pages.pdf",
        "mixed",
        "scan",
        302,
        pages=2,
        changes={"jpeg_quality": 0},
        description="letters and digits; a two-page PDF of noisy scans (JPEG inside)",
    ),
)

#: The bundled model that reads each kind of page.
CHARSET_OF_KIND = {"digits": "digits", "letters": "letters", "mixed": "alnum"}


def draw(sample: Sample, glyphs: LabeledImages) -> list[tuple[npt.NDArray[np.uint8], Any]]:
    """The pages of a sample: [(gray uint8 (H, W), PageTruth)]."""
    st = pagegen.style(sample.style, size=sample.size, n_chars=sample.n_chars, **sample.changes)
    return [
        pagegen.generate_page(glyphs, st, seed=sample.seed * 1000 + i) for i in range(sample.pages)
    ]


def encode(sample: Sample, grays: list[npt.NDArray[np.uint8]]) -> bytes:
    """The file's bytes: PNG, JPEG (quality 80), multi-page TIFF (deflate) or PDF at 300 dpi."""
    images = [Image.fromarray(g, mode="L") for g in grays]
    suffix = Path(sample.path).suffix.lower()
    buf = io.BytesIO()
    first, rest = images[0], images[1:]
    if suffix == ".png":
        first.save(buf, "PNG", optimize=True, dpi=(300, 300))
    elif suffix in (".jpg", ".jpeg"):
        first.save(buf, "JPEG", quality=80, dpi=(300, 300))
    elif suffix in (".tif", ".tiff"):
        first.save(
            buf,
            "TIFF",
            save_all=True,
            append_images=rest,
            compression="tiff_deflate",
            dpi=(300, 300),
        )
    elif suffix == ".pdf":
        first.save(
            buf,
            "PDF",
            save_all=True,
            append_images=rest,
            resolution=300.0,
            quality=80,
            title=Path(sample.path).stem,
            creationDate=PDF_DATE,
            modDate=PDF_DATE,
        )
    else:
        raise ValueError(f"{sample.path}: no encoder for {suffix}")
    return buf.getvalue()


def page_truth(gray: npt.NDArray[np.uint8], truth: Any) -> dict[str, Any]:
    return {
        "width": int(gray.shape[1]),
        "height": int(gray.shape[0]),
        "skew_angle": round(float(truth.skew_angle), 3),
        "text": truth.text,
        "n_chars": truth.n_chars,
        # [label, x, y, w, h] per character, in reading order (lines, then left to right).
        "chars": [[c.label, *c.bbox.to_list()] for line in truth.lines for c in line],
    }


def make_samples(out: Path, samples: tuple[Sample, ...] = SAMPLES) -> dict[str, Any]:
    """Write every sample under ``out`` and ``out/truth.json``; return the truth document."""
    glyph_cache: dict[str, LabeledImages] = {}
    files: dict[str, Any] = {}
    for sample in samples:
        if sample.kind not in glyph_cache:
            glyph_cache[sample.kind] = pagegen.test_glyphs(sample.kind)
        pages = draw(sample, glyph_cache[sample.kind])
        target = out / sample.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode(sample, [g for g, _ in pages]))
        files[sample.path] = {
            "charset": CHARSET_OF_KIND[sample.kind],
            "kind": sample.kind,
            "description": sample.description,
            "style": sample.style,
            "seed": sample.seed,
            "pages": [page_truth(g, t) for g, t in pages],
        }
    doc = {
        "schema": TRUTH_SCHEMA,
        "made_by": "python samples/make_samples.py",
        "glyphs": {
            "digits": "MNIST t10k (test split)",
            "letters": "training.sources.load_split('letters', 'test') (held-out split)",
            "mixed": "the letters above plus as many MNIST t10k digits",
        },
        "files": files,
    }
    (out / "truth.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE, help="folder to write (default: samples/)")
    args = p.parse_args(argv)
    doc = make_samples(args.out)
    total = sum((args.out / rel).stat().st_size for rel in doc["files"])
    n_pages = sum(len(f["pages"]) for f in doc["files"].values())
    print(f"{len(doc['files'])} files, {n_pages} pages, {total / 1024:.0f} KB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
