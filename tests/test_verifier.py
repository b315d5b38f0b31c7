"""The single-character verifier: its candidates, labels, training, export and loading."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from hwr_batch.classify import load_verifier
from hwr_batch.errors import ModelError
from training.cli import main
from training.data import LabeledImages
from training.verifier import VerifierConfig, _label, strip_candidates, train_verifier


def _drawn(chars: str, per_char: int, seed: int) -> LabeledImages:
    """Glyphs drawn with OpenCV's Hershey font: 28x28, white on black, jittered."""
    rng = np.random.default_rng(seed)
    images = []
    for c in chars:
        for _ in range(per_char):
            img = np.zeros((28, 28), np.uint8)
            org = (int(rng.integers(5, 9)), int(rng.integers(20, 24)))
            scale = float(rng.uniform(0.7, 0.9))
            thick = int(rng.integers(2, 4))
            cv2.putText(img, c, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
            images.append(img)
    labels = np.array([c for c in chars for _ in range(per_char)])
    return LabeledImages(np.stack(images), labels, np.full(len(labels), "drawn/w0"))


def test_label_rules_from_ink_owners() -> None:
    owner = np.full((10, 20), -1)
    owner[:, 0:10] = 0
    owner[:, 10:20] = 1
    totals = np.array([100, 100])
    whole = np.zeros((10, 20), bool)
    whole[:, 0:10] = True
    assert _label(whole, owner, totals) == 1  # all of one character, nothing else
    sliver = whole.copy()
    sliver[:, 10] = True
    assert _label(sliver, owner, totals) == 1  # plus a neighbour's sliver: still one
    half = np.zeros((10, 20), bool)
    half[:, 0:4] = True
    assert _label(half, owner, totals) == 0  # a fragment
    both = np.ones((10, 20), bool)
    assert _label(both, owner, totals) == 0  # two characters
    between = np.zeros((10, 20), bool)
    between[:, 0:7] = True
    assert _label(between, owner, totals) is None  # 70% of one: neither answer is right
    assert _label(np.zeros((10, 20), bool), owner, totals) is None


def test_strip_candidates_are_reader_inputs_with_both_labels() -> None:
    data = _drawn("0147", 10, seed=1)
    got = strip_candidates(data, 60, seed=2)
    assert got.images.dtype == np.uint8 and got.images.shape[1:] == (28, 28)
    assert len(got.images) == len(got.labels) == len(got.kind) > 60
    assert set(got.labels.tolist()) == {0, 1}
    # Whole strips: one character is one, two or three are never.
    assert (got.labels[got.kind == "whole1"] == 1).all()
    assert (got.labels[got.kind == "whole2+"] == 0).all()
    assert (got.kind == "whole2+").any() and (got.kind == "piece").any()
    # Every candidate carries ink, normalised as the reader normalises (20-px glyph box).
    assert (got.images.reshape(len(got.images), -1).max(axis=1) > 128).all()
    again = strip_candidates(data, 60, seed=2)
    assert np.array_equal(again.images, got.images)  # seeded


def test_train_export_load_and_resume(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    def load(model: str, split: str) -> LabeledImages:
        calls.append((model, split))
        return _drawn("0147" if split == "train" else "258", 8, seed=len(calls))

    cfg = VerifierConfig(
        out_dir=str(tmp_path / "run"),
        output=str(tmp_path / "verifier.onnx"),
        sources=("digits",),
        strips=40,
        test_strips=10,
        epochs=1,
        batch_size=64,
        threads=1,
        command="test",
    )
    metrics = train_verifier(cfg, load=load, log=lambda _: None)
    # Training candidates come from the training split, the figures from the test split.
    assert calls == [("digits", "train"), ("digits", "test")]
    test = metrics["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and test["n"] > 0
    assert 0.0 <= test["single_rejected"] <= 1.0
    ver = load_verifier(cfg.output, threads=1)
    assert ver.metadata["task"] == "single-character verifier"
    assert json.loads(ver.metadata["outputs"])[1] == "one_character"
    # The int8 companion made from the same file is what the reader runs.
    assert ver.fast is not None and ver.recheck_below == 0.0
    assert 0.0 <= metrics["test_int8"]["accuracy"] <= 1.0
    p = ver.predict_proba(np.random.default_rng(0).random((5, 28, 28), np.float32))
    assert p.shape == (5, 2) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # A second run with the same config reuses the data and the finished checkpoint.
    calls.clear()
    again = train_verifier(cfg, load=load, log=lambda _: None)
    assert calls == []
    assert again["test"]["accuracy"] == pytest.approx(test["accuracy"])


def test_a_character_model_is_not_a_verifier() -> None:
    from hwr_batch.classify import model_path

    with pytest.raises(ModelError, match="not a single-character verifier"):
        load_verifier(model_path("digits"))
    with pytest.raises(ModelError, match="not found"):
        load_verifier("/nonexistent/verifier.onnx")


def test_cli_rejects_unknown_sources(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verifier", "--sources", "digits,klingon"]) != 0
    assert "--sources" in capsys.readouterr().err


def _drawn_page_crop(draw) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Model input of strokes drawn on paper (dark on light), cropped to their ink."""
    from hwr_batch.normalize import normalize

    ink = np.zeros((120, 200), np.uint8)
    draw(ink)
    gray = np.where(ink > 127, 25, 235).astype(np.uint8)
    ys, xs = np.nonzero(ink > 127)
    return normalize(gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def test_bundled_verifier_tells_one_character_from_two_and_from_half() -> None:
    ver = load_verifier()

    def zeros(n: int):  # type: ignore[no-untyped-def]
        def draw(ink: np.ndarray) -> None:
            for k in range(n):
                cv2.ellipse(ink, (40 + 38 * k, 60), (20, 30), 0, 0, 360, 255, 6)

        return draw

    def seven(ink: np.ndarray) -> None:
        cv2.line(ink, (40, 30), (80, 30), 255, 6)
        cv2.line(ink, (80, 30), (55, 95), 255, 6)

    def half_zero(ink: np.ndarray) -> None:
        cv2.ellipse(ink, (60, 60), (20, 30), 0, 90, 270, 255, 6)

    crops = np.stack(
        [_drawn_page_crop(d) for d in (zeros(1), seven, zeros(2), zeros(3), half_zero)]
    )
    p_one = ver.predict_proba(crops)[:, 1]
    assert p_one[0] > 0.9 and p_one[1] > 0.9  # one zero, one seven
    assert p_one[2] < 0.1 and p_one[3] < 0.1  # touching zeros
    assert p_one[4] < 0.5  # the left half of a zero
