"""Assemble stage: lines, words and reading order from character boxes."""

from __future__ import annotations

import numpy as np
import pytest

from hwr_batch.assemble import assemble, group_lines, word_gap_threshold
from hwr_batch.records import BBox, Char


def layout(
    lines: list[str],
    th: int = 60,
    gap: int = 12,
    word_gap: int = 70,
    jitter: int = 0,
    seed: int = 0,
) -> tuple[np.ndarray, list[Char]]:
    """Boxes and chars for text lines ('12 345'), with baseline jitter, in shuffled order."""
    rng = np.random.default_rng(seed)
    boxes, chars = [], []
    for li, text in enumerate(lines):
        x = 50
        base = 100 + li * int(1.9 * th)
        for ch in text:
            if ch == " ":
                x += word_gap - gap
                continue
            w = 40
            y = base + (int(rng.integers(-jitter, jitter + 1)) if jitter else 0)
            boxes.append([x, y, w, th])
            chars.append(Char(BBox(x, y, w, th), ch, 0.9, ((ch, 0.9),)))
            x += w + gap
    order = rng.permutation(len(boxes))
    return np.array(boxes, np.float64)[order], [chars[i] for i in order]


def page_text(lines) -> str:
    return "\n".join(line.text for line in lines)


def test_lines_words_and_reading_order() -> None:
    text = ["123 45 6789", "0 12", "345678 9"]
    boxes, chars = layout(text)
    lines = assemble(boxes, chars, 60.0)
    assert page_text(lines) == "\n".join(text)
    assert [len(line.words) for line in lines] == [3, 2, 2]


def test_baseline_jitter_does_not_break_lines() -> None:
    text = ["1234567890 1234", "98765 43210"]
    boxes, chars = layout(text, jitter=14, seed=3)  # +-0.23 text heights
    assert page_text(assemble(boxes, chars, 60.0)) == "\n".join(text)


def test_touching_characters_stay_in_one_word() -> None:
    text = ["1234 5678"]
    boxes, chars = layout(text, gap=-6)  # overlapping boxes
    assert page_text(assemble(boxes, chars, 60.0)) == "1234 5678"


def test_word_gap_threshold_follows_the_page() -> None:
    # Wide handwriting: gaps inside words of ~30 px; breaks must be well above that.
    gaps = np.array([30.0] * 20 + [120.0] * 3)
    assert 60 < word_gap_threshold(gaps, 60.0) < 120
    # Tight handwriting: the text height sets the floor.
    assert word_gap_threshold(np.array([2.0] * 10), 60.0) == pytest.approx(27.0)


def test_group_lines_orders_top_to_bottom() -> None:
    boxes = np.array([[10, 300, 20, 50], [10, 100, 20, 50], [50, 105, 20, 50]], np.float64)
    assert group_lines(boxes, 50.0) == [[1, 2], [0]]


def test_empty_and_mismatched_inputs() -> None:
    assert assemble(np.zeros((0, 4)), [], 50.0) == ()
    with pytest.raises(ValueError, match="2 boxes"):
        assemble(np.zeros((2, 4)), [], 50.0)
