"""Field values under constraints: the most probable string that fits a field's rules.

A field is read as a *segmentation lattice*: nodes ``0..n`` are cut positions from left to right
and each edge ``(i, j)`` is one candidate character (the ink between cuts ``i`` and ``j``) with the
classifier's probability row for it. A comb field, one character per cell, is the simple chain
``0 -> 1 -> ... -> n``; a free box whose ink may hold touching or broken characters also gets
edges that split or merge pieces, and *blank* edges that read a small fragment as no character
at all; the search picks the segmentation and the labels together.

The value is the highest-probability path whose string fits the constraint: labels from the
field's charset, an exact length, and a full-match regular expression. Paths are enumerated
best first (A* with an exact heuristic, so the first complete path popped is the unconstrained
best and later ones come in order of decreasing probability), and the first one that fits wins.
When none fits within the search budget the best path is returned with ``fits=False``.

Confidence of a value is the product of its characters' probabilities: the probability of the
whole string if characters are independent, which is what "this field is right" means. The
probabilities are the classifier's raw ones (not renormalised over the allowed labels), so a
digits-only field read from an alnum model as "O" -> "0" keeps a low confidence.
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

#: Labels a field's charset allows.
CHARSET_LABELS = {
    "digits": "0123456789",
    "letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "alnum": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
}

#: Labels per candidate character kept in the search; the 6th-best digit of a well-written
#: character has probability ~1e-6, so deeper alternatives only cost time.
MAX_LABELS_PER_EDGE = 6
#: Probabilities below this are never proposed (log of 0 is -inf; such labels are noise).
MIN_LABEL_PROB = 1e-6
#: Complete paths examined before giving up on finding one that fits. A 5-digit field where
#: every character is ambiguous between 6 labels has 7,776 strings; 20,000 pops covers it.
MAX_POPS = 20_000


@dataclass(frozen=True)
class Constraint:
    """What a field's value may be.

    charset: "digits", "letters" or "alnum" (labels in :data:`CHARSET_LABELS`).
    length: exact number of characters, or None.
    pattern: a regular expression the whole value must match (``re.fullmatch``), or None.
    """

    charset: str = "digits"
    length: int | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.charset not in CHARSET_LABELS:
            raise ValueError(f"unknown charset {self.charset!r}; use {sorted(CHARSET_LABELS)}")
        if self.length is not None and self.length < 0:
            raise ValueError(f"length must be >= 0, got {self.length}")
        if self.pattern is not None:
            re.compile(self.pattern)

    def fits(self, value: str) -> bool:
        allowed = CHARSET_LABELS[self.charset]
        if any(c not in allowed for c in value):
            return False
        if self.length is not None and len(value) != self.length:
            return False
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True)
class Edge:
    """One candidate character: the ink between cuts ``start`` and ``end``.

    proba: float32 (C,), the classifier's probabilities over ``labels`` of the lattice.
    """

    start: int
    end: int
    proba: npt.NDArray[np.float32]
    #: When set, the edge reads *no* character (ink that is not one: a fragment of a broken
    #: stroke, a speck) with this probability; ``proba`` is then ignored.
    blank: float | None = None


@dataclass(frozen=True)
class Decoded:
    """The chosen value.

    edges: indices into the lattice's edge list, one per character of ``value``.
    char_probs: probability of each chosen label.
    fits: False when no path satisfied the constraint (``value`` is then the best path anyway).
    """

    value: str
    confidence: float
    char_probs: tuple[float, ...]
    edges: tuple[int, ...]
    fits: bool


def decode_lattice(
    n_nodes: int,
    edges: list[Edge],
    labels: str,
    constraint: Constraint,
    max_pops: int = MAX_POPS,
) -> Decoded:
    """Best path through a left-to-right lattice whose string fits ``constraint``.

    n_nodes: number of cut positions (characters lie between them); node 0 is the start and
    node ``n_nodes - 1`` the end. A lattice with ``n_nodes <= 1`` is an empty field.
    labels: the classifier's labels, in the order of each edge's ``proba``.
    """
    end = n_nodes - 1
    if end <= 0:
        fits = constraint.fits("")
        return Decoded("", 1.0 if fits else 0.0, (), (), fits)

    allowed = set(CHARSET_LABELS[constraint.charset])
    # Per edge: candidate (cost, label, prob), cheapest first; cost = -log p.
    options: list[list[tuple[float, str, float]]] = []
    for e in edges:
        if e.blank is not None:
            options.append([(-math.log(max(e.blank, 1e-12)), "", e.blank)] if e.blank > 0 else [])
            continue
        p = np.asarray(e.proba, np.float64)
        order = np.argsort(-p)
        opts: list[tuple[float, str, float]] = []
        for k in order:
            lab = labels[int(k)]
            if lab not in allowed:
                continue
            pk = float(p[k])
            if pk < MIN_LABEL_PROB and opts:
                break
            opts.append((-math.log(max(pk, 1e-12)), lab, pk))
            if len(opts) >= MAX_LABELS_PER_EDGE:
                break
        options.append(opts)

    out_edges: list[list[int]] = [[] for _ in range(n_nodes)]
    for idx, e in enumerate(edges):
        if not 0 <= e.start < e.end <= end:
            raise ValueError(f"edge {idx} ({e.start}->{e.end}) outside 0..{end} or backwards")
        if options[idx]:
            out_edges[e.start].append(idx)

    # Exact heuristic (best cost to the end) and hop bounds, by a backward pass.
    inf = float("inf")
    h = [inf] * n_nodes
    min_hops = [10**9] * n_nodes
    max_hops = [-1] * n_nodes
    h[end], min_hops[end], max_hops[end] = 0.0, 0, 0
    for node in range(end - 1, -1, -1):
        for idx in out_edges[node]:
            nxt = edges[idx].end
            hop = 0 if edges[idx].blank is not None else 1
            if h[nxt] < inf:
                h[node] = min(h[node], options[idx][0][0] + h[nxt])
                min_hops[node] = min(min_hops[node], min_hops[nxt] + hop)
                max_hops[node] = max(max_hops[node], max_hops[nxt] + hop)
    if h[0] == inf:
        return Decoded("", 0.0, (), (), False)

    length = constraint.length
    # Heap of (f = g + h, tie, g, node, string, probs, edges).
    heap: list[tuple[float, int, float, int, str, tuple[float, ...], tuple[int, ...]]] = [
        (h[0], 0, 0.0, 0, "", (), ())
    ]
    tie = 1
    best: tuple[str, tuple[float, ...], tuple[int, ...], float] | None = None
    pops = 0
    while heap and pops < max_pops:
        _f, _t, g, node, s, probs, path = heapq.heappop(heap)
        pops += 1
        if node == end:
            if best is None:
                best = (s, probs, path, g)
            if constraint.fits(s):
                return Decoded(s, float(math.exp(-g)), probs, path, True)
            continue
        for idx in out_edges[node]:
            nxt = edges[idx].end
            if h[nxt] == inf:
                continue
            hop = 0 if edges[idx].blank is not None else 1
            if length is not None and not (min_hops[nxt] <= length - len(s) - hop <= max_hops[nxt]):
                continue
            for cost, lab, pk in options[idx]:
                g2 = g + cost
                if not lab:
                    # A blank edge: part of the path's probability, not a character of it.
                    heapq.heappush(heap, (g2 + h[nxt], tie, g2, nxt, s, probs, path))
                else:
                    heapq.heappush(
                        heap, (g2 + h[nxt], tie, g2, nxt, s + lab, probs + (pk,), path + (idx,))
                    )
                tie += 1
    if best is None:
        # The length bound pruned every path: fall back to the unconstrained best.
        loose = decode_lattice(
            n_nodes, edges, labels, Constraint(constraint.charset), max_pops=max_pops
        )
        return replace(loose, fits=False)
    s, probs, path, g = best
    return Decoded(s, float(math.exp(-g)), probs, path, False)


def decode_positions(
    proba: npt.NDArray[np.float32], labels: str, constraint: Constraint
) -> Decoded:
    """Best string with one character per row of ``proba`` (N, C) that fits ``constraint``.

    This is the comb-field case: the segmentation is fixed by the cells.
    """
    p = np.asarray(proba, np.float32)
    if p.ndim != 2 or (len(p) and p.shape[1] != len(labels)):
        raise ValueError(f"proba must be (N, {len(labels)}), got {p.shape}")
    edges = [Edge(i, i + 1, p[i]) for i in range(len(p))]
    return decode_lattice(len(p) + 1, edges, labels, constraint)
