"""The page reader end to end: read_page / read_file, page coordinates, errors, and CER."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import hwr_batch
from hwr_batch.classify import Classifier
from hwr_batch.errors import BadArguments, UnreadableInput
from hwr_batch.pipeline import (
    _unturn,
    analyse_page,
    analysis_scale,
    downscale,
    read_file,
    read_page,
)
from hwr_batch.records import BBox, PageResult
from training.pagegen import cer, edit_distance, generate_page, mnist_test, style


def zeros_page(n: int = 8, rows: int = 2, angle: float = 0.0) -> tuple[np.ndarray, list]:
    """A page of drawn zeros (ellipse outlines); returns (gray, centres on the page)."""
    h, w = 600, 900
    ink = np.zeros((h, w), np.uint8)
    centres = []
    for r in range(rows):
        for i in range(n):
            c = (100 + 80 * i + (60 if i >= n // 2 else 0), 150 + 200 * r)
            cv2.ellipse(ink, c, (20, 30), 0, 0, 360, 255, 6, cv2.LINE_AA)
            centres.append(c)
    gray = np.where(ink > 127, 30, 235).astype(np.uint8)
    if angle:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        gray = cv2.warpAffine(gray, m, (w, h), borderValue=235)
        pts = np.array(centres, np.float64)
        centres = [tuple(p) for p in pts @ m[:, :2].T + m[:, 2]]
    return gray, centres


def test_read_page_on_an_array(digits: Classifier) -> None:
    gray, _ = zeros_page()
    res = read_page(gray, classifier=digits)
    assert isinstance(res, PageResult)
    assert res.text == "0000 0000\n0000 0000"
    assert res.width == 900 and res.height == 600 and res.page == 1
    assert res.source == "<array>"
    c = res.chars[0]
    assert c.alternatives[0] == (c.label, c.confidence) and len(c.alternatives) == 3
    for stage in ("load", "preprocess", "segment", "classify", "assemble", "total"):
        assert stage in res.timings
    assert res.warnings == ()


def test_a_negative_page_is_read_inverted(digits: Classifier) -> None:
    """White ink on black (a negative scan, an MNIST-style sheet) reads as the same page
    upright does, boxes included, with a warning; before, it read as "no characters found"."""
    gray, _ = zeros_page()
    upright = read_page(gray, classifier=digits)
    negative = read_page(255 - gray, classifier=digits)
    assert negative.text == upright.text == "0000 0000\n0000 0000"
    assert [c.bbox for c in negative.chars] == [c.bbox for c in upright.chars]
    assert negative.warnings == ("light ink on a dark ground: read as its negative",)
    assert upright.warnings == ()


def test_boxes_are_in_original_page_pixels(digits: Classifier) -> None:
    gray, centres = zeros_page(angle=6.0)
    res = read_page(gray, classifier=digits)
    assert res.skew_angle == pytest.approx(-6.0, abs=0.4)
    assert len(res.chars) == len(centres)
    for c in res.chars:
        b = c.bbox
        cx, cy = b.x + b.w / 2, b.y + b.h / 2
        nearest = min(np.hypot(cx - x, cy - y) for x, y in centres)
        assert nearest < 6
        assert b.x >= 0 and b.x2 <= 900 and b.y >= 0 and b.y2 <= 600


def test_downscale_is_an_exact_block_mean() -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (37, 50), dtype=np.uint8)
    for s in (2, 3, 4, 8):
        small = downscale(gray, s)
        h, w = -(-37 // s), -(-50 // s)
        assert small.shape == (h, w) and small.dtype == np.uint8
        padded = np.pad(gray, ((0, h * s - 37), (0, w * s - 50)), mode="edge").astype(float)
        means = padded.reshape(h, s, w, s).mean(axis=(1, 3))
        # Powers of two are repeated halvings, each rounded.
        assert np.abs(small.astype(float) - means).max() <= 1.5
    assert downscale(gray, 1) is gray


def test_reduced_analysis_scale_keeps_page_coordinates(digits: Classifier) -> None:
    gray, centres = zeros_page(angle=3.0)
    full = analyse_page(gray, digits, scale=1)
    half = analyse_page(gray, digits, scale=2)
    assert full.scale == 1 and half.scale == 2
    assert half.prep.gray.shape[0] < gray.shape[0]  # really analysed the smaller copy
    assert [c.label for c in half.chars] == [c.label for c in full.chars]
    assert len(half.chars) == len(centres)
    for a, b in zip(full.chars, half.chars, strict=True):
        # Same character, same page pixels, within the 2-px block of the smaller copy.
        assert abs(a.bbox.x - b.bbox.x) <= 4 and abs(a.bbox.y - b.bbox.y) <= 4
        assert abs(a.bbox.x2 - b.bbox.x2) <= 4 and abs(a.bbox.y2 - b.bbox.y2) <= 4
        assert b.bbox.x >= 0 and b.bbox.x2 <= 900 and b.bbox.y >= 0 and b.bbox.y2 <= 600


def test_large_characters_are_read_at_a_reduced_scale(digits: Classifier) -> None:
    gray, centres = zeros_page()
    # The same page at five times the resolution (characters ~300 px tall, 4,500 px long).
    big = cv2.resize(gray, (900 * 5, 600 * 5), interpolation=cv2.INTER_LINEAR)
    assert analysis_scale(gray) == 1  # small page: no estimate, full size
    assert analysis_scale(big) == 4
    res = read_page(big, classifier=digits)
    assert res.text == "0000 0000\n0000 0000"
    assert (res.width, res.height) == (4500, 3000)
    for c in res.chars:
        b = c.bbox
        cx, cy = b.x + b.w / 2, b.y + b.h / 2
        assert min(np.hypot(cx - 5 * x, cy - 5 * y) for x, y in centres) < 15
        assert 310 < b.h < 360  # the ~66-px ellipse outline (with its stroke), times five


def test_blank_and_black_pages_give_empty_results(digits: Classifier) -> None:
    blank = read_page(np.full((500, 400), 240, np.uint8), classifier=digits)
    assert blank.lines == () and blank.text == ""
    assert blank.warnings == ("no characters found",)
    black = read_page(np.zeros((500, 400), np.uint8), classifier=digits)
    assert black.lines == ()
    assert any("dark" in w for w in black.warnings)


def test_read_file_multipage_tiff_and_pdf(tmp_path: Path, digits: Classifier) -> None:
    g1, _ = zeros_page(n=4, rows=1)
    g2, _ = zeros_page(n=6, rows=2)
    tif = tmp_path / "two.tif"
    Image.fromarray(g1).save(tif, save_all=True, append_images=[Image.fromarray(g2)])
    results = list(read_file(tif, classifier=digits))
    assert [r.page for r in results] == [1, 2]
    assert [len(r.chars) for r in results] == [4, 12]
    assert all(r.source == str(tif) for r in results)

    pdf = tmp_path / "two.pdf"
    Image.fromarray(g1).convert("RGB").save(
        pdf, save_all=True, append_images=[Image.fromarray(g2).convert("RGB")], resolution=150
    )
    results = list(read_file(pdf, classifier=digits, dpi=150))
    assert [r.page for r in results] == [1, 2]
    assert [r.text.replace(" ", "").replace("\n", "") for r in results] == ["0" * 4, "0" * 12]
    assert read_page(pdf, page=2, classifier=digits, dpi=150).text == results[1].text


def test_errors(tmp_path: Path, digits: Classifier) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(UnreadableInput, match="bad.png"):
        read_page(bad, classifier=digits)
    with pytest.raises(UnreadableInput, match="bad.png"):
        list(read_file(bad, classifier=digits))
    with pytest.raises(BadArguments, match="charset"):
        read_page(np.full((10, 10), 255, np.uint8), charset="greek")


def test_result_round_trips_through_json(digits: Classifier) -> None:
    gray, _ = zeros_page(n=4, rows=1)
    res = read_page(gray, classifier=digits, source="scan.png")
    d = json.loads(json.dumps(res.to_dict()))
    assert d["schema"] == "hwr-batch/page/v1" and d["text"] == res.text
    assert PageResult.from_dict(d).text == res.text


def test_package_level_api(digits: Classifier) -> None:
    gray, _ = zeros_page(n=4, rows=1)
    assert hwr_batch.read_page(gray, classifier=digits).text == "00 00"


def test_edit_distance_and_cer() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert edit_distance("0123", "0123") == 0
    r = cer("12 34\n56", "1234\n567")
    assert r.errors == 1 and r.total == 7
    assert r.per_line == [(0, 4), (1, 3)]
    assert cer("1234", "12 34", spaces=True).errors == 1
    assert cer("", "").cer == 0.0


def test_generated_page_with_truth(shared_datasets: Path) -> None:
    data = mnist_test(shared_datasets / "mnist")
    gray, truth = generate_page(
        data, style("scan", size=(1240, 1754), char_height=(32, 40), n_chars=120), seed=3
    )
    assert gray.shape == (1754, 1240) and gray.dtype == np.uint8
    assert truth.n_chars == 120
    for line in truth.lines:
        for ch in line:
            assert ch.bbox.x >= 0 and ch.bbox.x2 <= 1240 and ch.bbox.y2 <= 1754
            assert ch.label in "0123456789"
    # Ink lies where the truth says a character is.
    b = truth.lines[0][0].bbox
    assert gray[b.y : b.y2, b.x : b.x2].min() < 120


def test_end_to_end_generated_digit_page(shared_datasets: Path, digits: Classifier) -> None:
    data = mnist_test(shared_datasets / "mnist")
    errors = total = 0
    for seed in (11, 12):
        gray, truth = generate_page(data, style("scan", n_chars=150), seed=seed)
        res = read_page(gray, classifier=digits)
        assert len(res.lines) == len(truth.lines)
        assert res.skew_angle == pytest.approx(-truth.skew_angle, abs=0.3)
        r = cer(res.text, truth.text)
        errors, total = errors + r.errors, total + r.total
    # The bar is 1.5% over many pages (benchmarks/); two noisy pages get headroom.
    assert errors / total < 0.06


def test_unturn_maps_boxes_back_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(5, 40, 2))
        x, y = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        bw, bh = int(rng.integers(1, w - x + 1)), int(rng.integers(1, h - y + 1))
        page = np.zeros((h, w), np.uint8)
        page[y : y + bh, x : x + bw] = 1
        for turns in range(4):
            ys, xs = np.nonzero(np.rot90(page, turns))
            on_turned = BBox(int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1)
            assert _unturn(on_turned, turns, (h, w)) == BBox(x, y, bw, bh)


def test_pages_scanned_sideways_or_upside_down_are_read_upright(
    shared_datasets: Path, digits: Classifier
) -> None:
    """A page turned by a quarter, a half or three quarters reads as it does upright, with its
    boxes on the page as given and a warning; an upright page pays nothing for the check."""
    data = mnist_test(shared_datasets / "mnist")
    gray, truth = generate_page(data, style("scan", n_chars=150), seed=11)
    upright = read_page(gray, classifier=digits)
    assert "orient" not in upright.timings
    assert not any("turned" in w for w in upright.warnings)
    h, w = gray.shape
    first = upright.chars[0].bbox
    # np.rot90 turns counter-clockwise; the reader turns the page back the other way.
    for turns, back in ((1, "90 degrees clockwise"), (2, "180 degrees"), (3, "90 degrees counter")):
        page = np.ascontiguousarray(np.rot90(gray, turns))
        res = read_page(page, classifier=digits)
        assert res.text == upright.text
        assert res.warnings[0].startswith(f"read turned {back}")
        # The first character's box, on the turned page where its pixels now are.
        marks = np.zeros((h, w), np.uint8)
        marks[first.y : first.y2, first.x : first.x2] = 1
        ys, xs = np.nonzero(np.rot90(marks, turns))
        box = res.chars[0].bbox
        assert abs(box.x - xs.min()) <= 3 and abs(box.y - ys.min()) <= 3
        assert abs(box.x2 - xs.max() - 1) <= 3 and abs(box.y2 - ys.max() - 1) <= 3


def _drawn(text: str, seed: int) -> np.ndarray:
    """Model inputs (N, 28, 28) of characters drawn with a Hershey font, slanted at random."""
    from hwr_batch.normalize import normalize

    rng = np.random.default_rng(seed)
    out = []
    for ch in text:
        canvas = np.full((80, 80), 255, np.uint8)
        cv2.putText(canvas, ch, (18, 62), cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, 2.0, 0, 4)
        m = cv2.getRotationMatrix2D((40, 40), float(rng.uniform(-25, 25)), 1.0)
        out.append(normalize(cv2.warpAffine(canvas, m, (80, 80), borderValue=255)))
    return np.stack(out)


def test_second_opinion_blends_the_unsure_rows_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from hwr_batch.classify import blend_second_opinion, load_classifier, second_models

    monkeypatch.delenv("HWR_SECOND_OPINION", raising=False)
    digits, alnum = load_classifier("digits"), load_classifier("alnum")
    assert second_models(digits) == (alnum,)
    assert second_models(load_classifier("letters"))[0] is alnum
    assert second_models(alnum) == ()
    own = tmp_path / "digits.onnx"  # a user's model by path is read as it is
    shutil.copy(digits.path, own)
    assert second_models(load_classifier(own)) == ()
    monkeypatch.setenv("HWR_SECOND_OPINION", "0")
    assert second_models(digits) == ()

    images = _drawn("0123456789" * 3, seed=1)
    p = digits.predict_proba(images)
    below = float(np.median(p.max(axis=1)))
    out = blend_second_opinion(p, images, digits, alnum, below=below, weight=0.5)
    unsure = p.max(axis=1) < below
    assert unsure.any() and (~unsure).any()
    np.testing.assert_array_equal(out[~unsure], p[~unsure])
    p2 = alnum.predict_proba(images[unsure])[:, [alnum.labels.index(d) for d in "0123456789"]]
    p2 = p2 / p2.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out[unsure], 0.5 * p[unsure] + 0.5 * p2, atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert blend_second_opinion(p, images, digits, None) is p
    # Several second models: their mean is the second reading.
    both = blend_second_opinion(p, images, digits, (alnum, digits), below=below, weight=0.5)
    p1 = digits.predict_proba(images[unsure])
    np.testing.assert_allclose(both[unsure], 0.5 * p[unsure] + 0.25 * (p2 + p1), atol=1e-6)
    np.testing.assert_array_equal(both[~unsure], p[~unsure])
