"""Result records: small frozen dataclasses with ``to_dict()`` for JSON.

Coordinates are pixels of the page as loaded (before deskew), origin top-left; a box is
``(x, y, w, h)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Versioned name of the per-page JSON schema (documented in README.md). Bump on breaking change.
PAGE_SCHEMA = "hwr-batch/page/v1"


@dataclass(frozen=True)
class BBox:
    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if self.w < 0 or self.h < 0:
            raise ValueError(f"negative box size: {self}")

    @property
    def x2(self) -> int:
        return self.x + self.w

    @property
    def y2(self) -> int:
        return self.y + self.h

    @staticmethod
    def union(boxes: Iterable[BBox]) -> BBox:
        boxes = list(boxes)
        if not boxes:
            return BBox(0, 0, 0, 0)
        x = min(b.x for b in boxes)
        y = min(b.y for b in boxes)
        return BBox(x, y, max(b.x2 for b in boxes) - x, max(b.y2 for b in boxes) - y)

    def to_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


@dataclass(frozen=True)
class Char:
    """One classified character: its box, best label, confidence, and top-k alternatives."""

    bbox: BBox
    label: str
    confidence: float
    #: (label, probability) pairs, best first; the first is ``(label, confidence)``.
    alternatives: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence out of [0, 1]: {self.confidence}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox": self.bbox.to_list(),
            "label": self.label,
            "confidence": round(float(self.confidence), 4),
            "alternatives": [
                {"label": lab, "confidence": round(float(p), 4)} for lab, p in self.alternatives
            ],
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Char:
        return Char(
            bbox=BBox(*d["bbox"]),
            label=d["label"],
            confidence=d["confidence"],
            alternatives=tuple((a["label"], a["confidence"]) for a in d.get("alternatives", [])),
        )


@dataclass(frozen=True)
class Word:
    chars: tuple[Char, ...]

    @property
    def text(self) -> str:
        return "".join(c.label for c in self.chars)

    @property
    def bbox(self) -> BBox:
        return BBox.union(c.bbox for c in self.chars)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "bbox": self.bbox.to_list(),
            "chars": [c.to_dict() for c in self.chars],
        }


@dataclass(frozen=True)
class Line:
    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    @property
    def chars(self) -> tuple[Char, ...]:
        return tuple(c for w in self.words for c in w.chars)

    @property
    def bbox(self) -> BBox:
        return BBox.union(w.bbox for w in self.words)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "bbox": self.bbox.to_list(),
            "words": [w.to_dict() for w in self.words],
        }


@dataclass(frozen=True)
class Field:
    """A form field read as one value."""

    name: str
    #: "box", "comb", "underline" or "template".
    kind: str
    bbox: BBox
    value: str
    confidence: float
    chars: tuple[Char, ...] = ()
    needs_review: bool = False
    charset: str = "digits"

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence out of [0, 1]: {self.confidence}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "charset": self.charset,
            "bbox": self.bbox.to_list(),
            "value": self.value,
            "confidence": round(float(self.confidence), 4),
            "needs_review": self.needs_review,
            "chars": [c.to_dict() for c in self.chars],
        }


@dataclass(frozen=True)
class PageResult:
    """Everything read from one page."""

    source: str
    #: 1-based page number within the source file.
    page: int
    width: int
    height: int
    charset: str
    lines: tuple[Line, ...] = ()
    fields: tuple[Field, ...] = ()
    #: Skew angle (degrees) that was corrected before segmentation.
    skew_angle: float = 0.0
    warnings: tuple[str, ...] = ()
    #: Seconds spent per stage, for benchmarks; not part of the stable schema.
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.page < 1:
            raise ValueError(f"page numbers start at 1, got {self.page}")

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    @property
    def chars(self) -> tuple[Char, ...]:
        return tuple(c for line in self.lines for c in line.chars)

    def to_dict(self) -> dict[str, Any]:
        chars = self.chars
        return {
            "schema": PAGE_SCHEMA,
            "source": self.source,
            "page": self.page,
            "width": self.width,
            "height": self.height,
            "charset": self.charset,
            "skew_angle": round(float(self.skew_angle), 3),
            "text": self.text,
            "n_chars": len(chars),
            "mean_confidence": (
                round(float(sum(c.confidence for c in chars) / len(chars)), 4) if chars else None
            ),
            "lines": [line.to_dict() for line in self.lines],
            "fields": [f.to_dict() for f in self.fields],
            "warnings": list(self.warnings),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PageResult:
        if d.get("schema") != PAGE_SCHEMA:
            raise ValueError(f"not a {PAGE_SCHEMA} document: schema={d.get('schema')!r}")
        lines = tuple(
            Line(tuple(Word(tuple(Char.from_dict(c) for c in w["chars"])) for w in line["words"]))
            for line in d["lines"]
        )
        fields = tuple(
            Field(
                name=f["name"],
                kind=f["kind"],
                bbox=BBox(*f["bbox"]),
                value=f["value"],
                confidence=f["confidence"],
                chars=tuple(Char.from_dict(c) for c in f["chars"]),
                needs_review=f["needs_review"],
                charset=f.get("charset", "digits"),
            )
            for f in d.get("fields", [])
        )
        return PageResult(
            source=d["source"],
            page=d["page"],
            width=d["width"],
            height=d["height"],
            charset=d["charset"],
            lines=lines,
            fields=fields,
            skew_angle=d.get("skew_angle", 0.0),
            warnings=tuple(d.get("warnings", [])),
        )
