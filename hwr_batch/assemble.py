"""Assemble stage: classified characters -> lines -> words, in reading order.

Grouping works on the boxes of the deskewed canvas, where text lines are horizontal; the
records carry the boxes of the original page.

- Lines: characters sorted by vertical centre are cut where consecutive centres jump by more
  than LINE_CENTER_TOLERANCE text heights, which tolerates baseline jitter and the small skew
  that deskewing leaves; lines are then ordered top to bottom, characters left to right.
- Words: a gap between neighbours wider than max(WORD_GAP_TEXT_HEIGHTS text heights,
  WORD_GAP_MEDIAN_FACTOR x the page's median gap between neighbours) starts a new word.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from hwr_batch import defaults
from hwr_batch.records import Char, Line, Word


def group_lines(boxes: npt.NDArray[np.float64], text_height: float) -> list[list[int]]:
    """Indices of the characters of each line, lines top to bottom, characters left to right.

    boxes: (N, 4) x, y, w, h on the deskewed canvas.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    if n == 0:
        return []
    th = text_height if text_height > 0 else float(np.median(boxes[:, 3]))
    cy = boxes[:, 1] + boxes[:, 3] / 2
    order = np.argsort(cy, kind="stable")
    jumps = np.flatnonzero(np.diff(cy[order]) > defaults.LINE_CENTER_TOLERANCE * th)
    clusters = np.split(order, jumps + 1)
    lines = []
    for members in clusters:
        cx = boxes[members, 0] + boxes[members, 2] / 2
        lines.append([int(i) for i in members[np.argsort(cx, kind="stable")]])
    lines.sort(key=lambda m: float(np.median(cy[m])))
    return lines


def word_gap_threshold(gaps: npt.NDArray[np.float64], text_height: float) -> float:
    """Gap (pixels) above which two neighbouring characters belong to different words.

    gaps: horizontal gaps between neighbours of the same line over the whole page (negative
    when boxes overlap). The page's median gap is a gap inside a word on any page that has
    more letters than word breaks.
    """
    floor = defaults.WORD_GAP_TEXT_HEIGHTS * text_height
    if len(gaps) == 0:
        return floor
    typical = float(np.median(np.clip(gaps, 0, None)))
    return max(floor, defaults.WORD_GAP_MEDIAN_FACTOR * typical)


def assemble(
    boxes: npt.NDArray[np.float64], chars: Sequence[Char], text_height: float
) -> tuple[Line, ...]:
    """Build lines and words.

    boxes: (N, 4) x, y, w, h of each character on the deskewed canvas (for grouping).
    chars: the N classified characters (boxes on the original page).
    """
    if len(chars) != len(boxes):
        raise ValueError(f"{len(chars)} characters but {len(boxes)} boxes")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    line_idx = group_lines(boxes, text_height)
    if not line_idx:
        return ()
    th = text_height if text_height > 0 else float(np.median(boxes[:, 3]))
    all_gaps = [
        boxes[m[1:], 0] - (boxes[m[:-1], 0] + boxes[m[:-1], 2]) for m in line_idx if len(m) > 1
    ]
    gaps = np.concatenate(all_gaps) if all_gaps else np.zeros(0)
    limit = word_gap_threshold(gaps, th)
    lines: list[Line] = []
    for members in line_idx:
        words: list[Word] = []
        current = [chars[members[0]]]
        for prev, cur in zip(members, members[1:], strict=False):
            gap = boxes[cur, 0] - (boxes[prev, 0] + boxes[prev, 2])
            if gap > limit:
                words.append(Word(tuple(current)))
                current = []
            current.append(chars[cur])
        words.append(Word(tuple(current)))
        lines.append(Line(tuple(words)))
    return tuple(lines)
