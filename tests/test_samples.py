"""samples/: the committed scans agree with truth.json, and make_samples.py is deterministic."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from hwr_batch.load import count_pages, iter_pages

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
TRUTH = SAMPLES / "truth.json"
DATASETS = Path(os.environ.get("HWR_DATASETS", REPO.parent / "shared" / "datasets"))
CHARSETS = {
    "digits": set("0123456789"),
    "letters": set("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    "alnum": set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
}

needs_datasets = pytest.mark.skipif(
    not (DATASETS / "mnist").is_dir(),
    reason=f"{DATASETS} not found: the samples are drawn from its test splits",
)


def _make_samples_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def _truth() -> dict:
    return json.loads(TRUTH.read_text(encoding="utf-8"))


def test_samples_folder_is_small_and_complete() -> None:
    doc = _truth()
    assert doc["schema"] == "hwr-batch/samples-truth/v1"
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 3 * 2**20, f"samples/ is {total / 2**20:.1f} MB"
    suffixes = {Path(rel).suffix for rel in doc["files"]}
    # What the issue asks for: PNG pages, a JPEG with noise, a multi-page TIFF and a PDF.
    assert {".png", ".jpg", ".tif", ".pdf"} <= suffixes
    kinds = {f["kind"] for f in doc["files"].values()}
    assert kinds == {"digits", "letters", "mixed"}
    assert any(len(f["pages"]) >= 2 for rel, f in doc["files"].items() if rel.endswith(".tif"))
    assert any(len(f["pages"]) == 2 for rel, f in doc["files"].items() if rel.endswith(".pdf"))
    assert any(f["style"] == "ruled" for f in doc["files"].values())
    # Every scan in the folders this script writes has its truth (no stray or forgotten file).
    # Other folders (samples/forms/) have their own generator and truth.
    folders = {Path(rel).parts[0] for rel in doc["files"]}
    scans = {
        p.relative_to(SAMPLES).as_posix()
        for folder in folders
        for p in (SAMPLES / folder).rglob("*")
        if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pdf"}
    }
    assert scans == set(doc["files"])


@pytest.mark.parametrize("rel", sorted(_truth()["files"]))
def test_sample_pages_match_their_truth(rel: str) -> None:
    entry = _truth()["files"][rel]
    path = SAMPLES / rel
    assert count_pages(path) == len(entry["pages"])
    pages = list(iter_pages(path))
    assert len(pages) == len(entry["pages"])
    for loaded, want in zip(pages, entry["pages"], strict=True):
        h, w = loaded.gray.shape
        # A PDF page is stored in points; rendering at 300 dpi may round up by one pixel.
        assert abs(w - want["width"]) <= 1 and abs(h - want["height"]) <= 1, rel
        chars = want["chars"]
        assert len(chars) == want["n_chars"] > 0
        labels = [c[0] for c in chars]
        assert set(labels) <= CHARSETS[entry["charset"]], rel
        # The text holds exactly the boxed characters, in the same order.
        assert want["text"].replace(" ", "").replace("\n", "") == "".join(labels)
        gray = loaded.gray.astype(np.float32)
        for label, x, y, bw, bh in chars:
            assert bw > 0 and bh > 0 and x >= 0 and y >= 0
            assert x + bw <= w and y + bh <= h, (rel, label, x, y)
            box = gray[y : y + bh, x : x + bw]
            # The character's ink is in its box: some of it clearly darker than the paper
            # (a thin, blurred stroke on dim paper is only ~40 levels darker).
            paper = np.percentile(box, 95)
            dark = (box < paper - 30).mean()
            assert dark > 0.04, f"{rel}: no ink in the box of {label!r} at {x},{y}"


def _decoded(path: Path) -> list[np.ndarray]:
    return [p.gray for p in iter_pages(path)]


@needs_datasets
def test_make_samples_is_deterministic(tmp_path: Path) -> None:
    mod = _make_samples_module()
    # Small versions of a PNG, the multi-page TIFF and the PDF: the same code path, quickly.
    picked = [
        next(s for s in mod.SAMPLES if s.path.endswith(suffix))
        for suffix in (".png", ".tif", ".pdf")
    ]
    small = tuple(replace(s, size=(360, 260), n_chars=12) for s in picked)
    a, b = tmp_path / "a", tmp_path / "b"
    mod.make_samples(a, small)
    mod.make_samples(b, small)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == len(small) + 1  # + truth.json
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@needs_datasets
def test_committed_samples_are_what_the_script_makes(tmp_path: Path) -> None:
    """Regenerate samples/ and compare with the committed files: same truth, same pixels
    (lossless files exactly, JPEG and PDF within JPEG noise). If this fails, the generator or a
    test split changed: run ``python samples/make_samples.py`` and commit the result."""
    mod = _make_samples_module()
    doc = mod.make_samples(tmp_path)
    assert doc == _truth()
    for rel in doc["files"]:
        new, old = _decoded(tmp_path / rel), _decoded(SAMPLES / rel)
        assert len(new) == len(old)
        for n, o in zip(new, old, strict=True):
            assert n.shape == o.shape, rel
            diff = np.abs(n.astype(np.int16) - o.astype(np.int16))
            if Path(rel).suffix in (".png", ".tif"):
                assert diff.max() == 0, rel
            else:
                assert diff.mean() < 1.0, rel


def test_truth_json_is_sorted_by_reading_order() -> None:
    # Lines go top to bottom: the first character of each line lies below the previous
    # line's first character (pages are rotated by a few degrees at most).
    for rel, entry in _truth()["files"].items():
        for page in entry["pages"]:
            lines = page["text"].split("\n")
            chars = iter(page["chars"])
            tops = []
            for line in lines:
                n = len(line.replace(" ", ""))
                first = next(chars)
                for _ in range(n - 1):
                    next(chars)
                tops.append(first[2])
            assert tops == sorted(tops), rel


def test_sample_images_carry_300_dpi() -> None:
    for rel in _truth()["files"]:
        if rel.endswith((".png", ".jpg", ".tif")):
            with Image.open(SAMPLES / rel) as im:
                dpi = im.info.get("dpi")
                assert dpi is not None and round(float(dpi[0])) == 300, rel
