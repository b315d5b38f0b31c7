"""Segment stage: a preprocessed page -> one 28x28 model input per character.

1. connected components of the ink mask (8-connected);
2. fragments of one character are merged: pieces stacked one above the other (the detached
   top of a 5, the dot of an i or j) and pieces side by side across a hair-line gap (a broken
   stroke);
3. noise is dropped relative to the page's own text height: specks, and blobs far taller than
   any character;
4. groups wider than one character are split by recognition: candidate cuts come from the
   column profile and the upper and lower contours, the candidate pieces are scored by the
   classifier in one batch, and the cheapest path through the cuts (sum of -log confidence plus
   a penalty per extra piece, for digits a small bonus) wins; so "000" written in one stroke
   becomes three zeros. Pieces that could not beat their whole group even if read with
   certainty are left unscored: the same path wins, from fewer crops. A single-character
   verifier (P(exactly one whole character), see ``hwr-train verifier``) adds -log P(one) to
   each piece's cost and sends groups the classifier reads confidently (and narrow ones) but
   the verifier doubts to the search, so a touching "91" read as a 9 loses to a 9 and a 1, and
   half a character loses to the whole;
5. each character is cut from the deskewed gray page with only its own ink (neighbours blanked)
   and normalised with :func:`hwr_batch.normalize.normalize`.

Boxes are on the deskewed canvas of :class:`~hwr_batch.preprocess.Preprocessed`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from hwr_batch import defaults
from hwr_batch.errors import ModelError
from hwr_batch.normalize import normalize
from hwr_batch.preprocess import Preprocessed

#: Scores model inputs: float32 (N, 28, 28) -> class probabilities float32 (N, C).
Scorer = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]

_DILATE = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class CharCandidate:
    """One character found on the page.

    bbox: (x, y, w, h) of its ink on the deskewed canvas.
    image: float32 (28, 28) in [0, 1], the normalised model input.
    proba: class probabilities when the split search already scored this piece, else None.
    """

    bbox: tuple[int, int, int, int]
    image: npt.NDArray[np.float32]
    proba: npt.NDArray[np.float32] | None = None


@dataclass
class Segmentation:
    """The characters of a page (unordered) and what was done to find them."""

    chars: list[CharCandidate]
    text_height: float
    n_components: int = 0
    n_noise: int = 0
    n_merged: int = 0
    n_split: int = 0
    warnings: list[str] = field(default_factory=list)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return int(root)

    def union(self, i: int, j: int) -> bool:
        a, b = self.find(i), self.find(j)
        if a == b:
            return False
        self.parent[max(a, b)] = min(a, b)
        return True


def pairs_within(
    x0: npt.NDArray[np.float64],
    y0: npt.NDArray[np.float64],
    x1: npt.NDArray[np.float64],
    y1: npt.NDArray[np.float64],
    max_w: float,
    max_h: float,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Every pair of boxes whose union is at most ``max_w`` wide and ``max_h`` tall.

    x0, y0, x1, y1: float64 (N,) box corners (x1 = x0 + width). Returns (ii, jj), intp (P,)
    with ii < jj, in row-major order (as ``np.nonzero`` of the upper triangle of the pairwise
    test lists them). The boxes are swept in x order and a box is only compared with those
    starting less than ``max_w`` to its right, so a page of thousands of characters costs
    about N times its characters per line-width of ``max_w``, not N squared.
    """
    n = len(x0)
    order = np.argsort(x0, kind="stable")
    xs = x0[order]
    # For the box at sorted position p: partners are the positions p+1 .. stop[p]-1.
    stop = np.searchsorted(xs, xs + max_w, side="right")
    counts = stop - np.arange(n) - 1
    total = int(counts.sum())
    if total == 0:
        empty = np.zeros(0, np.intp)
        return empty, empty
    p = np.repeat(np.arange(n), counts)
    # q runs p+1, p+2, ... within each p's block.
    starts = np.cumsum(counts) - counts
    q = p + 1 + (np.arange(total) - np.repeat(starts, counts))
    a, b = order[p], order[q]
    ii, jj = np.minimum(a, b), np.maximum(a, b)
    uw = np.maximum(x1[ii], x1[jj]) - np.minimum(x0[ii], x0[jj])
    uh = np.maximum(y1[ii], y1[jj]) - np.minimum(y0[ii], y0[jj])
    fits = (uw <= max_w) & (uh <= max_h)
    ii, jj = ii[fits], jj[fits]
    rows = np.lexsort((jj, ii))
    return ii[rows], jj[rows]


def merge_fragments(stats: npt.NDArray[np.int32], text_h: float) -> list[list[int]]:
    """Group component indices that belong to one character.

    stats: int (N, 4) x, y, w, h of each component. Returns groups of indices (into stats).
    Two pieces merge when (a) one is stacked over the other: their columns overlap by at least
    MERGE_X_OVERLAP of the narrower one and the vertical gap is under MERGE_Y_GAP text heights;
    or (b) one is a small fragment within FRAGMENT_GAP of the other. Either way the union must
    stay the size of one character (MERGE_MAX_H x MERGE_MAX_W text heights). Pieces side by
    side are left to :func:`_merge_beside`, which asks the classifier.
    """
    n = len(stats)
    uf = _UnionFind(n)
    if n < 2:
        return [[i] for i in range(n)]
    x = stats[:, 0].astype(np.float64)
    y = stats[:, 1].astype(np.float64)
    w = stats[:, 2].astype(np.float64)
    h = stats[:, 3].astype(np.float64)
    x2, y2 = x + w, y + h
    max_h, max_w = defaults.MERGE_MAX_H * text_h, defaults.MERGE_MAX_W * text_h
    # Only pairs whose union could be one character are looked at.
    ii, jj = pairs_within(x, y, x2, y2, max_w, max_h)
    x_ov = np.minimum(x2[ii], x2[jj]) - np.maximum(x[ii], x[jj])
    y_ov = np.minimum(y2[ii], y2[jj]) - np.maximum(y[ii], y[jj])
    min_w = np.minimum(w[ii], w[jj])
    min_h = np.minimum(h[ii], h[jj])
    # One above the other: columns overlap, rows barely (else it is two neighbours whose
    # slanted boxes overlap).
    stacked = (
        (x_ov >= defaults.MERGE_X_OVERLAP * min_w)
        & (-y_ov <= defaults.MERGE_Y_GAP * text_h)
        & (y_ov <= defaults.MERGE_STACK_MAX_Y_OVERLAP * min_h)
    )
    # A small fragment (a detached bar, a dot, the tail of a broken 8) may sit a little
    # further away than a hair-line crack between two big pieces.
    small = (np.maximum(w, h) < defaults.FRAGMENT_MAX_SIZE * text_h) | (
        h < defaults.FRAGMENT_MAX_FLAT * text_h
    )
    near = (-x_ov <= defaults.FRAGMENT_GAP * text_h) & (-y_ov <= defaults.FRAGMENT_GAP * text_h)
    fragment = near & (small[ii] | small[jj])
    # Boxes that mostly overlap belong to one character broken in two (an open 0).
    nested = (x_ov >= 0.5 * min_w) & (y_ov >= 0.5 * min_h)
    keep = stacked | fragment | nested
    ii, jj, x_ov, y_ov = ii[keep], jj[keep], x_ov[keep], y_ov[keep]
    # Closest pairs first, so a fragment joins its nearest neighbour.
    dist = np.maximum(-x_ov, 0) + np.maximum(-y_ov, 0)
    order = np.argsort(dist, kind="stable")
    # Bounding box of each current group, indexed by its root.
    gx0, gy0, gx1, gy1 = x.copy(), y.copy(), x2.copy(), y2.copy()
    for k in order:
        ri, rj = uf.find(int(ii[k])), uf.find(int(jj[k]))
        if ri == rj:
            continue
        # The union of the two current groups, not just of the pair, must fit one character.
        ux0, uy0 = min(gx0[ri], gx0[rj]), min(gy0[ri], gy0[rj])
        ux1, uy1 = max(gx1[ri], gx1[rj]), max(gy1[ri], gy1[rj])
        if uy1 - uy0 <= max_h and ux1 - ux0 <= max_w:
            uf.union(ri, rj)
            r = uf.find(ri)
            gx0[r], gy0[r], gx1[r], gy1[r] = ux0, uy0, ux1, uy1
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(uf.find(i), []).append(i)
    return list(groups.values())


#: A cut through a group: the straight line x = c + slant * (y - (h - 1) / 2) in group pixels
#: (c: its column at mid-height; slant: columns per row).
Cut = tuple[float, float]


def _cut_candidates(
    mask: npt.NDArray[np.bool_], text_h: float, max_cuts: int | None = None
) -> list[Cut]:
    """Candidate cuts through a wide group's mask (h, w), left to right.

    Every column at mid-height is tried at each slant of SPLIT_SLANTS and keeps the slant that
    crosses the least ink: two handwritten characters touch where one leans into the other (a
    slanted 1), so the line between them is often not vertical. Candidates are the valleys of
    that least-ink profile, of the upper contour (top ink row, a valley is where it dips) and of
    the lower contour, plus evenly spaced cuts for the expected number of characters;
    near-duplicates and cuts that would cross a kept one inside the group are dropped; the
    deepest ``max_cuts`` (default SPLIT_MAX_CUTS) are kept.
    """
    h, w = mask.shape
    has = mask.any(axis=0)
    top = np.where(has, mask.argmax(axis=0), h).astype(np.float64)
    bottom = np.where(has, h - 1 - mask[::-1].argmax(axis=0), 0).astype(np.float64)
    # Ink crossed by the line through (c, mid-height) at each slant: (n_slants, w). Slant 0
    # comes first, so ties keep the cut vertical.
    slants = np.asarray(defaults.SPLIT_SLANTS, np.float64)
    dy = np.arange(h, dtype=np.float64) - (h - 1) / 2
    xs = np.rint(np.arange(w)[None, None, :] + slants[:, None, None] * dy[None, :, None])
    xs = xs.astype(np.int64)
    inside = (xs >= 0) & (xs < w)
    rows = np.broadcast_to(np.arange(h)[None, :, None], xs.shape)
    crossed = np.where(inside, mask[rows, np.clip(xs, 0, w - 1)], False).sum(axis=1)
    best_slant = crossed.argmin(axis=0)
    col = crossed[best_slant, np.arange(w)].astype(np.float64)
    k = max(3, int(0.08 * text_h) | 1)
    kern = np.ones(k) / k
    margin = max(2, int(defaults.SPLIT_MIN_PIECE * text_h))

    # Each profile smoothed, and its valleys: columns in [margin, w - margin) that are the
    # minimum of their (2k + 1) window (an erosion, the border counting as +inf). Every valley
    # is ranked by how deep it is relative to the profile's typical value.
    profiles = ((col, max(col.max(), 1.0)), (-top, float(h)), (bottom, float(h)))
    smooth = np.stack([np.convolve(sig, kern, mode="same") for sig, _ in profiles])
    local_min = cv2.erode(smooth, np.ones((1, 2 * k + 1), np.uint8))
    inner = slice(margin, w - margin)
    scored: list[tuple[float, int, float]] = []
    for r, (sig, scale) in enumerate(profiles):
        at = np.flatnonzero(smooth[r, inner] <= local_min[r, inner] + 1e-9) + margin
        peak = float(sig.max())
        for c in at.tolist():
            slope = float(slants[best_slant[c]]) if r == 0 else 0.0
            scored.append(((float(smooth[r, c]) - peak) / scale, c, slope))
    scored.sort()
    n_exp = max(2, int(round(w / (defaults.SPLIT_CHAR_WIDTH * text_h))))
    even = [int(round(w * i / n_exp)) for i in range(1, n_exp)]
    cands = [(c, slope) for _, c, slope in scored]
    cands += [(c, float(slants[best_slant[c]])) for c in even if 0 <= c < w]
    cuts: list[Cut] = []
    min_sep = max(2, int(defaults.SPLIT_MIN_PIECE * text_h))
    half = (h - 1) / 2
    for c, slope in cands:
        # Kept apart by min_sep at mid-height and not crossing inside the group (top and bottom
        # rows on the same side).
        if margin <= c <= w - margin and all(
            abs(c - d) >= min_sep and abs(c - d) > abs(slope - e) * half for d, e in cuts
        ):
            cuts.append((float(c), slope))
        if len(cuts) >= (defaults.SPLIT_MAX_CUTS if max_cuts is None else max_cuts):
            break
    return sorted(cuts)


@dataclass
class _Group:
    labels: list[int]
    x: int
    y: int
    w: int
    h: int


def _group_crop(
    gray: npt.NDArray[np.uint8],
    label_img: npt.NDArray[np.int32],
    ink: npt.NDArray[np.bool_],
    g: _Group,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Gray crop of a group with every pixel that is not its ink (or a 1-px rim) set to paper.

    Returns (gray crop uint8 (h, w) with neighbours blanked, the group's ink mask (h, w)).
    """
    sl = (slice(g.y, g.y + g.h), slice(g.x, g.x + g.w))
    lab = label_img[sl]
    own = np.isin(lab, g.labels) if len(g.labels) > 1 else lab == g.labels[0]
    rim = cv2.dilate(own.view(np.uint8), _DILATE).astype(bool)
    keep = rim & ~(ink[sl] & ~own)
    crop = np.where(keep, gray[sl], np.uint8(255)).astype(np.uint8)
    return crop, own


def _piece(
    crop: npt.NDArray[np.uint8], own: npt.NDArray[np.bool_], a: Cut, b: Cut
) -> tuple[npt.NDArray[np.uint8], tuple[int, int, int, int]] | None:
    """The part of a group crop between cuts a and b, trimmed to its ink.

    Returns (crop with the group's ink outside the two cuts blanked, (dx, dy, w, h)) or None.
    """
    h, w = own.shape
    dy = np.arange(h, dtype=np.float64) - (h - 1) / 2
    lo = np.rint(a[0] + a[1] * dy)
    hi = np.rint(b[0] + b[1] * dy)
    xs = np.arange(w)
    between = (xs[None, :] >= lo[:, None]) & (xs[None, :] < hi[:, None])
    m = own & between
    rows = np.flatnonzero(m.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    # Ink of this group beyond the cuts is another character: blank it.
    sub = np.where(between[r0:r1, c0:c1], crop[r0:r1, c0:c1], np.uint8(255)).astype(np.uint8)
    return sub, (c0, r0, c1 - c0, r1 - r0)


@lru_cache(maxsize=1)
def _bundled_verifier() -> Scorer | None:
    try:
        from hwr_batch.classify import load_verifier

        return load_verifier().predict_proba
    except ModelError:
        return None


def _resolve_verifier(verifier: Scorer | bool) -> Scorer | None:
    if verifier is False:
        return None
    if verifier is True:
        if os.environ.get(defaults.VERIFIER_ENV, "1") == "0":
            return None
        return _bundled_verifier()
    return verifier


def segment(
    prep: Preprocessed,
    scorer: Scorer | None = None,
    region: tuple[int, int, int, int] | None = None,
    verifier: Scorer | bool = True,
) -> Segmentation:
    """Find the characters of a preprocessed page.

    prep: the page. scorer: class probabilities for (N, 28, 28) inputs, used to choose cuts
    through touching characters; without it wide groups are cut evenly by their width.
    region: (x, y, w, h) on the deskewed canvas; only components whose centre lies inside are
    read (form fields).
    verifier: with a scorer, the single-character verifier used by the split search: True for
    the bundled one (if present and not turned off with VERIFIER_ENV=0), False for none, or a
    callable (N, 28, 28) -> (N, 2) whose column 1 is P(one whole character).
    """
    verify = _resolve_verifier(verifier) if scorer is not None else None
    th = prep.text_height
    seg = Segmentation(chars=[], text_height=th)
    if th <= 0 or not prep.ink.any():
        return seg
    ink = prep.ink
    # Label only the part of the page that holds ink (a page of 300 characters fills half of
    # it): labelling costs per pixel. Boxes are shifted back to page coordinates below.
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    oy, ox = int(rows[0]), int(cols[0])
    window = (slice(oy, int(rows[-1]) + 1), slice(ox, int(cols[-1]) + 1))
    n, labels_raw, stats_all, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(ink[window], dtype=np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    label_img = np.zeros(ink.shape, np.int32)
    label_img[window] = labels_raw
    stats_all = stats_all.copy()
    stats_all[:, 0] += ox
    stats_all[:, 1] += oy
    stats = stats_all[1:, :4]
    ids = np.arange(1, n)
    seg.n_components = len(ids)
    if region is not None:
        rx, ry, rw, rh = region
        cx = stats[:, 0] + stats[:, 2] / 2
        cy = stats[:, 1] + stats[:, 3] / 2
        inside = (cx >= rx) & (cx < rx + rw) & (cy >= ry) & (cy < ry + rh)
        stats, ids = stats[inside], ids[inside]
    # Tiny specks can neither be characters nor fragments worth keeping; dropping them before
    # the pairwise merge keeps it small on noisy pages.
    area = stats_all[ids, cv2.CC_STAT_AREA]
    speck = (np.maximum(stats[:, 2], stats[:, 3]) < defaults.SPECK_TEXT_HEIGHTS * th) | (
        area < (defaults.SPECK_TEXT_HEIGHTS * th) ** 2 / 4
    )
    # Slivers thinner than any pen stroke are what is left of a faint ruled line.
    sliver = (stats[:, 3] <= max(2.0, defaults.SLIVER_TEXT_HEIGHTS * th)) & (
        stats[:, 2] >= 3 * stats[:, 3]
    )
    huge = stats[:, 3] > defaults.NOISE_MAX_H * th
    keep = ~speck & ~sliver & ~huge
    seg.n_noise = int(np.count_nonzero(~keep))
    if np.count_nonzero(huge):
        seg.warnings.append(
            f"{int(np.count_nonzero(huge))} blob(s) taller than {defaults.NOISE_MAX_H:g} text "
            "heights ignored"
        )
    stats, ids = stats[keep], ids[keep]
    if len(ids) > defaults.MAX_COMPONENTS:
        seg.warnings.append(
            f"{len(ids)} components, more than {defaults.MAX_COMPONENTS:,}: the page looks "
            f"mostly noise; kept the {defaults.MAX_COMPONENTS:,} largest"
        )
        top = np.argsort(-(stats[:, 2] * stats[:, 3]))[: defaults.MAX_COMPONENTS]
        stats, ids = stats[top], ids[top]

    groups_idx = merge_fragments(stats, th)
    groups: list[_Group] = []
    for members in groups_idx:
        s = stats[members]
        x0, y0 = int(s[:, 0].min()), int(s[:, 1].min())
        x1 = int((s[:, 0] + s[:, 2]).max())
        y1 = int((s[:, 1] + s[:, 3]).max())
        g = _Group([int(ids[m]) for m in members], x0, y0, x1 - x0, y1 - y0)
        # A group small in both directions after merging is noise (a stray mark, a dot with no
        # stem).
        if max(g.w, g.h) < defaults.NOISE_MIN_SIZE * th:
            seg.n_noise += 1
            continue
        groups.append(g)
        if len(members) > 1:
            seg.n_merged += len(members) - 1

    gray = prep.gray
    crops = [_group_crop(gray, label_img, ink, g) for g in groups]
    images = [model_input(crop) for crop, _ in crops]
    probas: list[npt.NDArray[np.float32] | None] = [None] * len(groups)
    if scorer is not None and groups:
        # The page's one batched classification; the split search below only scores pieces.
        probas = list(scorer(np.stack(images)))
        merged = _merge_beside(
            groups, crops, images, probas, gray, label_img, ink, th, scorer, verify
        )
        groups, crops, images, probas, n_beside = merged
        seg.n_merged += n_beside
    wide: list[_Wide] = []
    # Groups read confidently as one character (and narrow ones) are searched only if the
    # verifier doubts them: (group, crop, image, proba, P(one) bar, most cuts).
    doubtful: list[tuple[_Group, _Crop, npt.NDArray[np.float32], _Proba, float, int | None]] = []
    for g, (crop, own), image, proba in zip(groups, crops, images, probas, strict=True):
        wide_enough = g.w > defaults.SPLIT_MIN_ASPECT * max(g.h, th)
        if wide_enough and not (
            proba is not None
            and float(proba.max()) >= defaults.SPLIT_CONFIDENT
            and g.w / max(g.h, 1) <= defaults.SPLIT_ALWAYS_ASPECT
        ):
            cuts = _cut_candidates(own, th)
            if cuts:
                wide.append(_Wide(g, crop, own, cuts, image, proba))
                continue
        elif verify is not None and (
            wide_enough or g.w > defaults.SPLIT_NARROW_ASPECT * max(g.h, th)
        ):
            below = _search_bar(proba, wide_enough)
            if below > 0:
                most = None if wide_enough else defaults.SPLIT_NARROW_MAX_CUTS
                doubtful.append((g, (crop, own), image, proba, below, most))
                continue
        seg.chars.append(CharCandidate((g.x, g.y, g.w, g.h), image, proba))
    if doubtful and verify is not None:
        p_one = verify(np.stack([d[2] for d in doubtful]))[:, 1]
        for (g, (crop, own), image, proba, below, most), p in zip(
            doubtful, p_one.tolist(), strict=True
        ):
            cuts = _cut_candidates(own, th, most) if p < below else []
            if cuts:
                wide.append(_Wide(g, crop, own, cuts, image, proba, p))
            else:
                seg.chars.append(CharCandidate((g.x, g.y, g.w, g.h), image, proba))

    if wide:
        _split_wide(wide, th, scorer, seg, verify)
    return seg


def _search_bar(proba: npt.NDArray[np.float32] | None, wide_enough: bool) -> float:
    """The verifier's P(one) under which a group read as one character is still searched:
    VERIFY_SEARCH_BELOW for groups wide enough to hold two, VERIFY_NARROW_BELOW for narrower
    ones, each with its _MANY value for models of over SPLIT_MANY_CLASSES classes (0: never)."""
    many = proba is not None and len(proba) > defaults.SPLIT_MANY_CLASSES
    if wide_enough:
        return defaults.VERIFY_SEARCH_BELOW_MANY if many else defaults.VERIFY_SEARCH_BELOW
    return defaults.VERIFY_NARROW_BELOW_MANY if many else defaults.VERIFY_NARROW_BELOW


def model_input(crop: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """A character crop -> the normalised model input, float32 (28, 28).

    Crops far larger than the model's input are first shrunk (area averaging) to
    NORMALIZE_MAX_SIDE on their long side: the normaliser fits the glyph into a 20-px box anyway,
    and its cost grows with the crop's pixels.
    """
    h, w = crop.shape
    side = max(h, w)
    if side > defaults.NORMALIZE_MAX_SIDE:
        f = defaults.NORMALIZE_MAX_SIDE / side
        crop = np.asarray(
            cv2.resize(
                crop,
                (max(1, int(round(w * f))), max(1, int(round(h * f)))),
                interpolation=cv2.INTER_AREA,
            ),
            np.uint8,
        )
    return normalize(crop)


@dataclass
class _Wide:
    """A group that may hold several touching characters, with what the split search needs."""

    group: _Group
    crop: npt.NDArray[np.uint8]
    own: npt.NDArray[np.bool_]
    cuts: list[Cut]
    image: npt.NDArray[np.float32]
    proba: npt.NDArray[np.float32] | None
    #: The verifier's P(one character) of the whole group, when already asked.
    p_one: float | None = None


_Crop = tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]
_Proba = npt.NDArray[np.float32] | None


def _merge_beside(
    groups: list[_Group],
    crops: list[_Crop],
    images: list[npt.NDArray[np.float32]],
    probas: list[_Proba],
    gray: npt.NDArray[np.uint8],
    label_img: npt.NDArray[np.int32],
    ink: npt.NDArray[np.bool_],
    th: float,
    scorer: Scorer,
    verify: Scorer | None = None,
) -> tuple[list[_Group], list[_Crop], list[npt.NDArray[np.float32]], list[_Proba], int]:
    """Merge neighbours side by side when the classifier reads them better as one.

    A stroke broken by a pen lift or a faint scan leaves two pieces side by side across a
    hair-line gap, exactly like a narrow character (a 1) next to another. Geometry cannot tell
    them apart; the classifier can: the pair merges when -log p(merged) is lower than
    -log p(left) - log p(right) + MERGE_BESIDE_BONUS. The pieces' probabilities come from the
    page's batch; the unions are scored in one more call. With ``verify``, each side's cost
    also has MERGE_VERIFY_WEIGHT * -log(P(one character) / 0.5): the halves of a broken
    character are not one, their union is.
    """
    same = (groups, crops, images, probas, 0)
    if len(groups) < 2:
        return same
    b = np.array([[g.x, g.y, g.w, g.h] for g in groups], np.float64)
    x, y, w, h = b.T
    x2, y2 = x + w, y + h
    # The union may be as wide as the page's wide characters: letters (an M, a W) run wider
    # than digits, so the limit follows the median width of the confidently read groups.
    max_w = defaults.MERGE_BESIDE_MAX_W * th
    sure = [
        g.w
        for g, p in zip(groups, probas, strict=True)
        if p is not None and float(p.max()) >= defaults.SPLIT_CONFIDENT
    ]
    if len(sure) >= defaults.MERGE_BESIDE_MIN_SURE:
        max_w = max(max_w, defaults.MERGE_BESIDE_WIDTH_FACTOR * float(np.median(sure)))
    ii, jj = pairs_within(x, y, x2, y2, max_w, defaults.MERGE_MAX_H * th)
    x_ov = np.minimum(x2[ii], x2[jj]) - np.maximum(x[ii], x[jj])
    y_ov = np.minimum(y2[ii], y2[jj]) - np.maximum(y[ii], y[jj])
    min_h = np.minimum(h[ii], h[jj])
    beside = (-x_ov <= defaults.MERGE_X_GAP * th) & (y_ov >= defaults.MERGE_Y_OVERLAP * min_h)
    # A stroke cut across (a slanted 1 in two, an 0 opened on a diagonal) leaves pieces that
    # are neither side by side nor squarely stacked, a small gap apart in both directions.
    near = np.maximum(-x_ov, -y_ov) <= defaults.MERGE_NEAR_GAP * th
    keep = beside | near
    ii, jj = ii[keep], jj[keep]
    if len(ii) == 0:
        return same
    merged_groups: list[_Group] = []
    merged_crops: list[_Crop] = []
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        gi, gj = groups[i], groups[j]
        x0, y0 = min(gi.x, gj.x), min(gi.y, gj.y)
        mg = _Group(
            gi.labels + gj.labels,
            x0,
            y0,
            max(gi.x + gi.w, gj.x + gj.w) - x0,
            max(gi.y + gi.h, gj.y + gj.h) - y0,
        )
        merged_groups.append(mg)
        merged_crops.append(_group_crop(gray, label_img, ink, mg))
    merged_images = [model_input(c) for c, _ in merged_crops]
    merged_proba = scorer(np.stack(merged_images))

    def cost(p: _Proba) -> float:
        return float(-np.log(np.clip(p.max(), 1e-6, 1.0))) if p is not None else 0.0

    gain = [
        cost(probas[i]) + cost(probas[j]) + defaults.MERGE_BESIDE_BONUS - cost(merged_proba[k])
        for k, (i, j) in enumerate(zip(ii.tolist(), jj.tolist(), strict=True))
    ]
    if verify is not None and defaults.MERGE_VERIFY_WEIGHT > 0:
        sides = sorted(set(ii.tolist()) | set(jj.tolist()))
        p_one = verify(np.stack([images[k] for k in sides] + merged_images))[:, 1]
        doubt = _doubt(p_one, defaults.MERGE_VERIFY_WEIGHT)
        side_doubt = dict(zip(sides, doubt[: len(sides)].tolist(), strict=True))
        merged_doubt = doubt[len(sides) :]
        gain = [
            gn + side_doubt[i] + side_doubt[j] - float(merged_doubt[k])
            for k, (gn, i, j) in enumerate(zip(gain, ii.tolist(), jj.tolist(), strict=True))
        ]
    taken: set[int] = set()
    replace: dict[int, int] = {}
    for best in np.argsort(gain)[::-1]:
        pair = int(best)
        left, right = int(ii[pair]), int(jj[pair])
        if gain[pair] <= 0:
            break
        if left in taken or right in taken:
            continue
        taken.update((left, right))
        replace[left] = pair
    if not replace:
        return same
    out: tuple[list[_Group], list[_Crop], list[npt.NDArray[np.float32]], list[_Proba]] = (
        [],
        [],
        [],
        [],
    )
    for k in range(len(groups)):
        if k in replace:
            pair = replace[k]
            row = (merged_groups[pair], merged_crops[pair], merged_images[pair], merged_proba[pair])
        elif k not in taken:
            row = (groups[k], crops[k], images[k], probas[k])
        else:
            continue
        for column, value in zip(out, row, strict=True):
            column.append(value)  # type: ignore[attr-defined]
    return out[0], out[1], out[2], out[3], len(replace)


def _doubt(
    p_one: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    weight: float | npt.NDArray[np.float64],
) -> Any:
    """Cost (nats) of the verifier's P(one character) of each candidate: -weight * log(p / 0.5).

    The verifier is trained with both answers equally likely, so 0.5 is "no opinion" and costs
    nothing: a plain -log p would charge every extra piece log 2 even when the verifier cannot
    tell, which is the split penalty's job. Floored at VERIFY_FLOOR.
    """
    p = np.clip(np.asarray(p_one, np.float64), defaults.VERIFY_FLOOR, 1.0)
    return -weight * np.log(p / 0.5)


#: A piece of a wide group: (wide index, start point, end point, box (dx, dy, w, h) in the group).
_PieceRef = tuple[int, int, int, tuple[int, int, int, int]]


@dataclass
class _Lattice:
    """The candidate pieces of every wide group of a page, whole groups included.

    ``pieces[wholes[gi]]`` is group gi whole; ``by_group[gi]`` lists its pieces. Model inputs
    are made on demand (:meth:`inputs`): normalising is a good part of a piece's cost, and most
    pieces are never scored.
    """

    pieces: list[_PieceRef] = field(default_factory=list)
    wholes: dict[int, int] = field(default_factory=dict)
    by_group: dict[int, list[int]] = field(default_factory=dict)
    subs: list[npt.NDArray[np.uint8] | None] = field(default_factory=list)
    images: list[npt.NDArray[np.float32] | None] = field(default_factory=list)

    def add(
        self,
        piece: _PieceRef,
        sub: npt.NDArray[np.uint8] | None,
        image: npt.NDArray[np.float32] | None = None,
    ) -> int:
        k = len(self.pieces)
        self.pieces.append(piece)
        self.subs.append(sub)
        self.images.append(image)
        self.by_group.setdefault(piece[0], []).append(k)
        return k

    def n_points(self, gi: int) -> int:
        """Cut points of group ``gi``, its two ends included (its whole spans them all)."""
        return self.pieces[self.wholes[gi]][2] + 1

    def inputs(self, ks: Sequence[int]) -> npt.NDArray[np.float32]:
        """Model inputs of pieces ``ks``, float32 (len(ks), 28, 28)."""
        out = []
        for k in ks:
            image, sub = self.images[k], self.subs[k]
            if image is None:
                assert sub is not None  # only wholes come without a crop, and with an image
                image = self.images[k] = model_input(sub)
            out.append(image)
        return np.stack(out)


def _lattice(wide: Sequence[_Wide], th: float) -> _Lattice:
    """Every group whole, and every piece between two of its cut points that is a plausible
    character width (SPLIT_MIN_PIECE to SPLIT_MAX_PIECE text heights)."""
    min_w = defaults.SPLIT_MIN_PIECE * th
    max_w = defaults.SPLIT_MAX_PIECE * th
    lat = _Lattice()
    for gi, wd in enumerate(wide):
        g = wd.group
        points: list[Cut] = [(0.0, 0.0), *wd.cuts, (float(g.w), 0.0)]
        lat.wholes[gi] = lat.add((gi, 0, len(points) - 1, (0, 0, g.w, g.h)), None, wd.image)
        for i in range(len(points)):
            # A piece spans at most SPLIT_MAX_SPAN cut intervals: cuts fall at least between
            # characters, and rarely more than twice inside one.
            for j in range(i + 1, min(len(points), i + 1 + defaults.SPLIT_MAX_SPAN)):
                a, b = points[i], points[j]
                if (i == 0 and j == len(points) - 1) or not min_w <= b[0] - a[0] <= max_w:
                    continue
                cut = _piece(wd.crop, wd.own, a, b)
                if cut is not None:
                    sub, box = cut
                    lat.add((gi, i, j, box), sub)
    return lat


def _shape_costs(
    lat: _Lattice, wide: Sequence[_Wide], th: float, piece_penalty: float, classified: bool
) -> npt.NDArray[np.float64]:
    """The costs of each piece that its shape alone sets, float64 (len(lat.pieces),)."""
    cost = np.zeros(len(lat.pieces))
    for k, (gi, i, _, (_, _, pw, ph)) in enumerate(lat.pieces):
        g = wide[gi].group
        c = piece_penalty if i > 0 else 0.0
        if not classified:
            # No classifier: prefer pieces about one character wide.
            c += abs(pw / th - defaults.SPLIT_CHAR_WIDTH)
        # A piece much shorter than its group is a slice of a character, not one.
        c += defaults.SPLIT_SHORT_COST * max(0.0, defaults.SPLIT_MIN_HEIGHT - ph / g.h)
        # Handwritten characters are rarely much wider than tall: a wide piece pays for it,
        # which keeps two touching characters from passing as one confident guess.
        c += defaults.SPLIT_WIDE_COST * max(0.0, pw / max(ph, 0.8 * th) - 1.0)
        cost[k] = c
    return cost


def _worth_reading(
    lat: _Lattice,
    cost: npt.NDArray[np.float64],
    read_cost: npt.NDArray[np.float64],
) -> list[int]:
    """The pieces (indices into ``lat.pieces``, wholes excluded) that could lie on a path
    cheaper than their whole group, given floors ``cost`` for the pieces' costs (readings left
    out) and the wholes' full costs (``cost`` + ``read_cost``): those whose cheapest path under
    the floors costs less than the whole. The others cannot be chosen."""
    out: list[int] = []
    for gi, whole in lat.wholes.items():
        parts = [k for k in lat.by_group[gi] if k != whole]
        n_pts = lat.n_points(gi)
        ahead = np.full(n_pts, np.inf)  # cheapest path under the floors to each point ...
        ahead[0] = 0.0
        behind = np.full(n_pts, np.inf)  # ... and from each point to the end
        behind[-1] = 0.0
        for k in sorted(parts, key=lambda k: lat.pieces[k][2]):
            i, j = lat.pieces[k][1], lat.pieces[k][2]
            ahead[j] = min(ahead[j], ahead[i] + cost[k])
        for k in sorted(parts, key=lambda k: -lat.pieces[k][1]):
            i, j = lat.pieces[k][1], lat.pieces[k][2]
            behind[i] = min(behind[i], behind[j] + cost[k])
        limit = read_cost[whole] + cost[whole]
        out.extend(
            k for k in parts if ahead[lat.pieces[k][1]] + cost[k] + behind[lat.pieces[k][2]] < limit
        )
    return out


def _reading_cost(proba: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """-log of each row's best probability (floored at 1e-6): what reading a piece costs."""
    return -np.log(np.clip(proba.max(axis=1), 1e-6, 1.0))


def _score_pieces(
    wide: Sequence[_Wide],
    lat: _Lattice,
    shape_cost: npt.NDArray[np.float64],
    whole_proba: dict[int, npt.NDArray[np.float32]],
    scorer: Scorer,
    verify: Scorer | None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Verify and classify the pieces that could matter -> (proba, read cost, shape cost with
    the verifier's doubt); pieces left out cost +inf.

    A reading costs at least nothing and the verifier's doubt at least its value at P(one) = 1,
    so a path through a piece costs at least its cheapest path under those floors; a piece
    whose floor is no cheaper than its whole group (fully scored) cannot be chosen. On letter
    pages that spares most pieces; the choice is the same as scoring them all.
    """
    n = len(lat.pieces)
    is_whole = np.zeros(n, bool)
    is_whole[list(lat.wholes.values())] = True
    n_classes = len(next(iter(whole_proba.values())))
    proba = np.zeros((n, n_classes), np.float32)
    for gi, k in lat.wholes.items():
        proba[k] = whole_proba[gi]
    read_cost = np.zeros(n)
    read_cost[is_whole] = _reading_cost(proba[is_whole])
    cost = shape_cost.copy()
    if verify is not None:
        known = {lat.wholes[gi]: wd.p_one for gi, wd in enumerate(wide) if wd.p_one is not None}
        ask = [k for k in lat.wholes.values() if k not in known]
        if ask:
            known.update(zip(ask, verify(lat.inputs(ask))[:, 1].tolist(), strict=True))
        whole_ids = list(lat.wholes.values())
        cost[whole_ids] += _doubt(np.array([known[k] for k in whole_ids]), defaults.VERIFY_WEIGHT)
        piece_weight = defaults.VERIFY_WEIGHT * defaults.VERIFY_PIECE_FACTOR
        floored = cost + np.where(is_whole, 0.0, _doubt(np.ones(1), piece_weight)[0])
        ask = _worth_reading(lat, floored, read_cost)
        if ask:
            cost[ask] += _doubt(verify(lat.inputs(ask))[:, 1], piece_weight)
        unasked = ~is_whole
        unasked[ask] = False
        cost[unasked] = np.inf
    todo = _worth_reading(lat, cost, read_cost)
    if todo:
        proba[todo] = scorer(lat.inputs(todo))
        read_cost[todo] = _reading_cost(proba[todo])
    unread = ~is_whole
    unread[todo] = False
    read_cost[unread] = np.inf
    return proba, read_cost, cost


def _split_wide(
    wide: Sequence[_Wide],
    th: float,
    scorer: Scorer | None,
    seg: Segmentation,
    verify: Scorer | None = None,
) -> None:
    """Choose cuts for every wide group; the pieces of all groups are scored in one call.

    The whole group is always a candidate (its probabilities come from the page's batch), so
    a wide single character stays whole when no split reads better. With ``verify``, each
    candidate (whole groups included) also costs VERIFY_WEIGHT * -log(P(one character) / 0.5).
    Only pieces that could lie on a path cheaper than their whole group are normalised,
    verified and classified (:func:`_score_pieces`); the cuts chosen are the same as if
    every piece were scored.
    """
    lat = _lattice(wide, th)
    # The wholes' probabilities come from the page's batch; the pieces are scored below.
    whole_proba: dict[int, npt.NDArray[np.float32]] = {}
    if scorer is not None:
        missing = [gi for gi, wd in enumerate(wide) if wd.proba is None]
        if missing:
            scored = scorer(lat.inputs([lat.wholes[gi] for gi in missing]))
            whole_proba.update(zip(missing, scored, strict=True))
        whole_proba.update((gi, wd.proba) for gi, wd in enumerate(wide) if wd.proba is not None)
    n_classes = len(next(iter(whole_proba.values()))) if whole_proba else 0
    # Letters models (26 or more classes) read a slice of a wide letter (an m, a w) as another
    # letter (n, v) more readily than the digit model reads a slice of a digit: each extra
    # piece must buy more confidence.
    penalty = defaults.SPLIT_PENALTY
    if n_classes > defaults.SPLIT_MANY_CLASSES:
        penalty = defaults.SPLIT_PENALTY_MANY
    # Without a classifier a split is never rewarded, only (at most) charged.
    piece_penalty = penalty if scorer is not None else max(penalty, 0.0)
    shape_cost = _shape_costs(lat, wide, th, piece_penalty, scorer is not None)
    proba: npt.NDArray[np.float32] | None = None
    read_cost = np.zeros(len(lat.pieces))
    if scorer is not None:
        proba, read_cost, shape_cost = _score_pieces(
            wide, lat, shape_cost, whole_proba, scorer, verify
        )
    for gi, wd in enumerate(wide):
        g = wd.group
        path = _cheapest_path(lat, gi, read_cost, shape_cost)
        if path is None:
            seg.chars.append(CharCandidate((g.x, g.y, g.w, g.h), wd.image, wd.proba))
            continue
        seg.n_split += len(path) - 1
        for k, image in zip(path, lat.inputs(path), strict=True):
            dx, dy, w, h = lat.pieces[k][3]
            seg.chars.append(
                CharCandidate(
                    (g.x + dx, g.y + dy, w, h),
                    image,
                    None if proba is None else proba[k],
                )
            )


def _cheapest_path(
    lat: _Lattice,
    gi: int,
    read_cost: npt.NDArray[np.float64],
    shape_cost: npt.NDArray[np.float64],
) -> list[int] | None:
    """The pieces of group ``gi`` on its cheapest path from the first cut point to the last
    (left to right; a piece costs its reading plus its shape), or None if no path has a
    finite cost."""
    n_pts = lat.n_points(gi)
    best = np.full(n_pts, np.inf)
    back = np.full(n_pts, -1)
    best[0] = 0.0
    edges: dict[int, list[int]] = {}
    for k in lat.by_group.get(gi, []):
        edges.setdefault(lat.pieces[k][2], []).append(k)
    for j in range(1, n_pts):
        for k in edges.get(j, []):
            c = best[lat.pieces[k][1]] + read_cost[k] + shape_cost[k]
            if c < best[j]:
                best[j] = c
                back[j] = k
    if not np.isfinite(best[-1]):
        return None
    path = []
    j = n_pts - 1
    while j > 0:
        k = int(back[j])
        path.append(k)
        j = lat.pieces[k][1]
    path.reverse()
    return path
