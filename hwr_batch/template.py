"""Form templates: a JSON file naming each field, and registration of a scan to it.

Format (``"schema": "hwr-batch/template/v1"``)::

    {
      "schema": "hwr-batch/template/v1",
      "name": "application form",
      "page": {"width": 1240, "height": 1754},
      "fields": [
        {"name": "postcode", "kind": "comb", "box": [0.3319, 0.1699, 0.2016, 0.0351],
         "cells": 5, "charset": "digits", "length": 5, "pattern": "[0-9]{5}"},
        {"name": "amount", "kind": "underline", "box": [0.35, 0.30, 0.25, 0.04],
         "charset": "digits"}
      ],
      "anchors": [{"kind": "box", "box": [0.1, 0.9, 0.3, 0.04]}]
    }

- ``box`` is ``[x, y, w, h]`` relative to the page: x and w are fractions of the page width, y
  and h of its height, so one template serves scans of any resolution. For "box" and "comb" it
  is the frame's outer edge; for "underline" it spans the writing zone and the line under it.
- ``kind``: "box" (a closed box, one or more characters), "comb" (a row of ``cells`` cells, one
  character each) or "underline".
- ``charset``: "digits", "letters" or "alnum" (default "digits"); ``length`` (exact number of
  characters) and ``pattern`` (a regular expression the whole value must match) are optional.
- ``page``: size in pixels of the scan the template was made from (for reference).
- ``anchors``: optional printed boxes that are not fields but help registration; when absent the
  fields' own boxes are used.

Registration: the scan is deskewed and its boxes detected (:func:`hwr_batch.forms.detect_fields`);
then a scale and translation per axis is fitted that maps the template's boxes onto the detected
ones: every template/detection pair of the same kind proposes a transform, the one that brings the
most template boxes onto a detection wins (so stray detections and missing boxes do not matter),
and a least-squares fit on its matches refines it. A scan where too few template boxes are found
is reported as not matching the template; its fields come back empty and flagged for review.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hwr_batch.errors import BadArguments
from hwr_batch.fieldvalue import CHARSET_LABELS, Constraint
from hwr_batch.forms import FieldGeometry, FieldSpec, Structure
from hwr_batch.records import BBox

TEMPLATE_SCHEMA = "hwr-batch/template/v1"
KINDS = ("box", "comb", "underline")

#: A template box is found on the scan when its edges land within this fraction of the page
#: width of a detected box's edges after registration. Detection jitter is 1-3 px; 1.5% of the
#: width (19 px at 150 dpi) also absorbs a hand-edited box, yet is less than the gap between
#: two fields.
MATCH_TOLERANCE = 0.015
#: The share of template boxes that must be found for the scan to count as this form. Half
#: survives fields lost to heavy writing, while a different form rarely aligns half its boxes.
MIN_MATCHED_SHARE = 0.5
#: A detected field replaces the template's geometry (for exact cells) when they overlap this
#: much (intersection over union).
MIN_IOU = 0.5


@dataclass(frozen=True)
class TemplateField:
    """One field of a template; ``box`` is (x, y, w, h) as fractions of the page."""

    name: str
    kind: str
    box: tuple[float, float, float, float]
    charset: str = "digits"
    cells: int | None = None
    length: int | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind must be one of {KINDS}, not {self.kind!r}")
        if self.charset not in CHARSET_LABELS:
            raise ValueError(f"field {self.name!r}: unknown charset {self.charset!r}")
        x, y, w, h = self.box
        if not (w > 0 and h > 0 and -0.5 <= x <= 1.5 and -0.5 <= y <= 1.5):
            raise ValueError(f"field {self.name!r}: box {list(self.box)} is not page-relative")
        if self.kind == "comb" and (self.cells is None or self.cells < 1):
            raise ValueError(f"field {self.name!r}: a comb needs 'cells' >= 1")
        Constraint(self.charset, self.length, self.pattern)

    @property
    def constraint(self) -> Constraint:
        return Constraint(self.charset, self.length, self.pattern)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "box": [round(v, 5) for v in self.box],
            "charset": self.charset,
        }
        if self.cells is not None:
            d["cells"] = self.cells
        if self.length is not None:
            d["length"] = self.length
        if self.pattern is not None:
            d["pattern"] = self.pattern
        return d


@dataclass(frozen=True)
class Template:
    name: str
    width: int
    height: int
    fields: tuple[TemplateField, ...]
    #: (kind, box) pairs of extra printed boxes for registration.
    anchors: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": TEMPLATE_SCHEMA,
            "name": self.name,
            "page": {"width": self.width, "height": self.height},
            "fields": [f.to_dict() for f in self.fields],
            "anchors": [{"kind": k, "box": [round(v, 5) for v in b]} for k, b in self.anchors],
        }

    @staticmethod
    def from_dict(d: dict[str, Any], source: str = "template") -> Template:
        """Parse and validate; errors name ``source`` and the offending field."""
        if not isinstance(d, dict) or d.get("schema") != TEMPLATE_SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise BadArguments(f"{source}: not a {TEMPLATE_SCHEMA} template (schema={got!r})")
        try:
            page = d.get("page", {})
            fields = tuple(
                TemplateField(
                    name=str(f["name"]),
                    kind=str(f.get("kind", "box")),
                    box=_box4(f["box"]),
                    charset=str(f.get("charset", "digits")),
                    cells=None if f.get("cells") is None else int(f["cells"]),
                    length=None if f.get("length") is None else int(f["length"]),
                    pattern=f.get("pattern"),
                )
                for f in d["fields"]
            )
            anchors = tuple(
                (str(a.get("kind", "box")), _box4(a["box"])) for a in d.get("anchors", [])
            )
            tpl = Template(
                name=str(d.get("name", Path(source).stem)),
                width=int(page.get("width", 0)),
                height=int(page.get("height", 0)),
                fields=fields,
                anchors=anchors,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadArguments(f"{source}: invalid template: {exc}") from exc
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise BadArguments(f"{source}: field names must be unique")
        if not fields:
            raise BadArguments(f"{source}: template has no fields")
        return tpl


def _box4(v: Any) -> tuple[float, float, float, float]:
    if not isinstance(v, list | tuple) or len(v) != 4:
        raise ValueError(f"box must be [x, y, w, h], got {v!r}")
    x, y, w, h = (float(t) for t in v)
    if not all(math.isfinite(t) for t in (x, y, w, h)):
        raise ValueError(f"box must be finite numbers, got {v!r}")
    return (x, y, w, h)


def load_template(path: str | os.PathLike[str]) -> Template:
    """Read a template JSON file; a missing or invalid file raises BadArguments naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadArguments(f"{p}: cannot read template ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadArguments(
            f"{p}: template is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from exc
    return Template.from_dict(data, source=str(p))


def save_template(tpl: Template, path: str | os.PathLike[str]) -> None:
    """Write ``tpl`` as JSON (atomically: temporary file, then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(tpl.to_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(p)


# --------------------------------------------------------------------------------------------
# Proposing a template from a scan


def propose_template(
    gray: npt.NDArray[np.uint8], name: str = "form", charset: str = "digits"
) -> Template:
    """A template with one field per box, comb and underline found on ``gray``.

    gray: uint8 (H, W) dark ink on light paper, a blank or filled form. Fields are named
    field_001... in reading order; combs get their cell count (and that as ``length``).
    """
    from hwr_batch import forms

    ink = forms.ink_mask(gray)
    angle = forms.estimate_skew(ink)
    desk, _m = forms.rotate_page(gray, angle)
    structure = forms.detect_fields(forms.ink_mask(desk) if abs(angle) >= 0.05 else ink)
    h, w = gray.shape[:2]
    fields = []
    for i, geo in enumerate(structure.fields, start=1):
        cells = len(geo.cells) if geo.kind == "comb" else None
        fields.append(
            TemplateField(
                name=f"field_{i:03d}",
                kind=geo.kind,
                box=_to_rel(geo.bbox, w, h),
                charset=charset,
                cells=cells,
                length=cells,
            )
        )
    return Template(name=name, width=w, height=h, fields=tuple(fields))


def _to_rel(b: BBox, w: int, h: int) -> tuple[float, float, float, float]:
    return (b.x / w, b.y / h, b.w / w, b.h / h)


# --------------------------------------------------------------------------------------------
# Registration


@dataclass(frozen=True)
class Registration:
    """Maps template pixels (fractions times the scan's size) to the deskewed scan:
    ``x' = sx * x + tx``, ``y' = sy * y + ty``.

    matched / total: template boxes found on the scan / boxes tried. rms: residual in pixels.
    """

    sx: float
    sy: float
    tx: float
    ty: float
    matched: int
    total: int
    rms: float

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.matched >= max(1, math.ceil(MIN_MATCHED_SHARE * self.total))

    def apply(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """(x, y, w, h) in template pixels -> deskewed scan pixels."""
        x, y, w, h = box
        return (self.sx * x + self.tx, self.sy * y + self.ty, self.sx * w, self.sy * h)


def _edges(boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, 4) x, y, w, h -> (N, 4) x1, y1, x2, y2."""
    return np.column_stack(
        [boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]]
    )


def register(tpl: Template, structure: Structure, shape: tuple[int, int]) -> Registration:
    """Fit the template to the boxes detected on a deskewed scan of size ``shape`` (H, W)."""
    h, w = shape
    refs = list(tpl.anchors) + [(f.kind, f.box) for f in tpl.fields]
    t_kind = np.array([k for k, _b in refs])
    t_box = np.array([[b[0] * w, b[1] * h, b[2] * w, b[3] * h] for _k, b in refs], np.float64)
    dets = structure.fields
    if not dets or not refs:
        return Registration(1.0, 1.0, 0.0, 0.0, 0, len(refs), float("inf"))
    d_kind = np.array([g.kind for g in dets])
    d_box = np.array([g.bbox.to_list() for g in dets], np.float64)
    te, de = _edges(t_box), _edges(d_box)
    # Underline zones depend on the handwriting height; only their line (bottom) and ends count.
    t_under = t_kind == "underline"
    same = t_kind[:, None] == d_kind[None, :]
    # Combs and boxes blur into each other when a cell border is faint; let them pair up.
    framed = (t_kind != "underline")[:, None] & (d_kind != "underline")[None, :]
    compatible = same | framed
    tol = MATCH_TOLERANCE * w

    def evaluate(
        sx: float, sy: float, tx: float, ty: float
    ) -> tuple[int, float, list[tuple[int, int]]]:
        mapped = te * np.array([sx, sy, sx, sy]) + np.array([tx, ty, tx, ty])
        err = np.abs(mapped[:, None, :] - de[None, :, :])  # (T, D, 4)
        err[..., 1] = np.where(t_under[:, None], 0.0, err[..., 1])
        worst = err.max(axis=2)
        worst = np.where(compatible, worst, np.inf)
        pairs: list[tuple[int, int]] = []
        used: set[int] = set()
        total_err = 0.0
        for i in np.argsort(worst.min(axis=1)):
            j = int(np.argmin(worst[i]))
            if worst[i, j] <= tol and j not in used:
                used.add(j)
                pairs.append((int(i), j))
                total_err += float(worst[i, j])
        return len(pairs), total_err, pairs

    best: tuple[int, float, tuple[float, float, float, float], list[tuple[int, int]]] | None = None
    for i in range(len(refs)):
        for j in range(len(dets)):
            if not compatible[i, j] or t_box[i, 2] <= 0:
                continue
            s = d_box[j, 2] / t_box[i, 2]
            if not 0.8 <= s <= 1.25:
                continue
            tx = de[j, 0] - s * te[i, 0]
            # Anchor the y shift on the bottom edge: the line of an underline, the frame of a box.
            ty = de[j, 3] - s * te[i, 3]
            n, err, pairs = evaluate(s, s, tx, ty)
            if best is None or n > best[0] or (n == best[0] and err < best[1]):
                best = (n, err, (s, s, tx, ty), pairs)
    if best is None or best[0] == 0:
        return Registration(1.0, 1.0, 0.0, 0.0, 0, len(refs), float("inf"))

    sx, sy, tx, ty = best[2]
    pairs = best[3]
    for _ in range(2):
        sx, tx = _fit_axis(
            [(te[i, 0], de[j, 0]) for i, j in pairs] + [(te[i, 2], de[j, 2]) for i, j in pairs],
            sx,
            tx,
        )
        ys = [(te[i, 3], de[j, 3]) for i, j in pairs]
        ys += [(te[i, 1], de[j, 1]) for i, j in pairs if not t_under[i]]
        sy, ty = _fit_axis(ys, sy, ty)
        n, _err, pairs = evaluate(sx, sy, tx, ty)
    mapped = te * np.array([sx, sy, sx, sy]) + np.array([tx, ty, tx, ty])
    res = [
        mapped[i, k] - de[j, k] for i, j in pairs for k in range(4) if not (k == 1 and t_under[i])
    ]
    rms = float(np.sqrt(np.mean(np.square(res)))) if res else float("inf")
    return Registration(sx, sy, tx, ty, len(pairs), len(refs), rms)


def _fit_axis(pairs: list[tuple[float, float]], s0: float, t0: float) -> tuple[float, float]:
    """Least-squares ``dst = s * src + t``; keeps (s0, t0)'s scale when the spread is too small."""
    if not pairs:
        return s0, t0
    src = np.array([p[0] for p in pairs])
    dst = np.array([p[1] for p in pairs])
    if len(pairs) >= 2 and np.ptp(src) > 1e-6 * max(1.0, float(np.abs(src).max())):
        a = np.column_stack([src, np.ones_like(src)])
        (s, t), *_ = np.linalg.lstsq(a, dst, rcond=None)
        if 0.7 <= s <= 1.4:
            return float(s), float(t)
    return s0, float(np.mean(dst - s0 * src))


def _iou(a: BBox, b: BBox) -> float:
    ix = max(0, min(a.x2, b.x2) - max(a.x, b.x))
    iy = max(0, min(a.y2, b.y2) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def _geometry_from_box(f: TemplateField, box: BBox, line_width: int) -> FieldGeometry:
    """Reading zones for a template field whose box was not detected on the scan."""
    pad = line_width + 1
    if f.kind == "underline":
        zone = BBox(box.x, box.y, box.w, max(1, box.h - 2 * pad))
        return FieldGeometry("underline", box, (zone,))
    inner = BBox(box.x + pad, box.y + pad, max(1, box.w - 2 * pad), max(1, box.h - 2 * pad))
    if f.kind == "comb" and f.cells and f.cells > 1:
        edges = np.linspace(inner.x, inner.x2, f.cells + 1)
        cells = tuple(
            BBox(int(round(a)) + pad, inner.y, max(1, int(round(b - a)) - 2 * pad), inner.h)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        )
        return FieldGeometry("comb", box, cells)
    return FieldGeometry(f.kind, box, (inner,))


def fields_from_template(
    tpl: Template, structure: Structure, shape: tuple[int, int]
) -> tuple[list[FieldSpec], list[str], Registration]:
    """Register ``tpl`` to a deskewed scan and return the fields to read, warnings, and the fit.

    Each field uses the detected box it lands on (for exact cells) or else the template's box
    mapped onto the scan. When registration fails every field is marked unreadable.
    """
    h, w = shape
    reg = register(tpl, structure, shape)
    warnings: list[str] = []
    if not reg.ok:
        warnings.append(
            f"template {tpl.name!r} does not match this page: {reg.matched} of {reg.total} "
            "template boxes found; fields left empty and flagged for review"
        )
    specs: list[FieldSpec] = []
    for f in tpl.fields:
        x, y, bw, bh = reg.apply((f.box[0] * w, f.box[1] * h, f.box[2] * w, f.box[3] * h))
        box = BBox(int(round(x)), int(round(y)), max(1, int(round(bw))), max(1, int(round(bh))))
        geo = None
        if reg.ok:
            best_iou, best_geo = 0.0, None
            for d in structure.fields:
                compatible = d.kind == f.kind or (d.kind != "underline" and f.kind != "underline")
                iou = _iou(box, d.bbox)
                if compatible and iou > best_iou:
                    best_iou, best_geo = iou, d
            if best_geo is not None and best_iou >= MIN_IOU:
                geo = best_geo
                if f.kind == "comb" and best_geo.kind != "comb":
                    geo = _geometry_from_box(f, best_geo.bbox, structure.line_width)
        if geo is None:
            geo = _geometry_from_box(f, box, structure.line_width)
        specs.append(FieldSpec(f.name, geo, f.constraint, unreadable=not reg.ok))
    return specs, warnings, reg


# --------------------------------------------------------------------------------------------
# Command line: ``hwr-batch template init SCAN``


def main(argv: list[str]) -> int:
    """``hwr-batch template init SCAN [-o form.json]``: propose a template to edit by hand.

    Prints a one-line summary per field to stderr and writes the JSON (stdout with ``-o -``).
    """
    import argparse
    import sys

    from hwr_batch.load import load_page

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise BadArguments(f"template: {message}")

    parser = _Parser(prog="hwr-batch template", description="Form templates.")
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser(
        "init",
        help="propose a template from the boxes found on a blank or filled form",
        description="Find the boxes, combs and underlines of SCAN and write a template "
        "(fields field_001... in reading order) to edit: rename fields, set charset, "
        "length or pattern.",
    )
    init.add_argument("scan", metavar="SCAN", help="image or PDF of the form")
    init.add_argument("-o", "--output", default="-", help="template file (default: stdout)")
    init.add_argument("--page", type=int, default=1, help="page of a multi-page file")
    init.add_argument("--dpi", type=int, default=300, help="PDF rendering resolution")
    init.add_argument("--charset", choices=sorted(CHARSET_LABELS), default="digits")
    init.add_argument("--name", default=None, help="template name (default: the file's stem)")
    args = parser.parse_args(argv)

    loaded = load_page(args.scan, args.page, dpi=args.dpi)
    tpl = propose_template(
        loaded.gray, name=args.name or Path(args.scan).stem, charset=args.charset
    )
    if not tpl.fields:
        raise BadArguments(f"{args.scan}: no boxes, combs or underlines found")
    for f in tpl.fields:
        cells = f" ({f.cells} cells)" if f.cells else ""
        print(f"{f.name}: {f.kind}{cells} at {[round(v, 3) for v in f.box]}", file=sys.stderr)
    if args.output == "-":
        print(json.dumps(tpl.to_dict(), indent=2))
    else:
        save_template(tpl, args.output)
        print(f"wrote {args.output} ({len(tpl.fields)} fields)", file=sys.stderr)
    return 0
