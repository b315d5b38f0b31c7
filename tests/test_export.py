"""Per-page outputs: JSON schema round trip, CSV rows, overlay, review crops, atomic writes."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from hwr_batch import export
from hwr_batch.records import PAGE_SCHEMA, BBox, Char, Field, Line, PageResult, Word


def _char(x: int, label: str, conf: float) -> Char:
    other = "7" if label != "7" else "1"
    return Char(BBox(x, 20, 18, 30), label, conf, ((label, conf), (other, round(1.0 - conf, 4))))


def _page() -> PageResult:
    w1 = Word((_char(10, "1", 0.99), _char(30, "2", 0.55)))
    w2 = Word((_char(80, "3", 0.97),))
    w3 = Word((_char(120, "4", 0.30),))
    fld = Field("zip", "box", BBox(200, 10, 60, 40), "5", 0.7, (_char(210, "5", 0.7),))
    return PageResult(
        source="in/a.png",
        page=1,
        width=300,
        height=120,
        charset="digits",
        lines=(Line((w1, w2)), Line((w3,))),
        fields=(fld,),
        warnings=("test",),
    )


def _gray() -> np.ndarray:
    gray = np.full((120, 300), 255, np.uint8)
    cv2.putText(gray, "12 3", (10, 48), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 0, 2)
    return gray


def test_json_schema_round_trip(tmp_path: Path) -> None:
    res = _page()
    path = export.write_page_json(res, tmp_path / "sub" / "a.png.p001.json")
    doc = json.loads(Path(path).read_text("utf-8"))
    assert doc["schema"] == PAGE_SCHEMA
    assert list(doc)[:4] == ["schema", "source", "page", "width"]
    assert doc["text"] == "12 3\n4"
    assert doc["n_chars"] == 4
    ch = doc["lines"][0]["words"][0]["chars"][0]
    assert ch["bbox"] == [10, 20, 18, 30] and ch["label"] == "1"
    assert ch["alternatives"][0] == {"label": "1", "confidence": 0.99}
    back = PageResult.from_dict(doc)
    assert back == res


def test_csv_one_row_per_char(tmp_path: Path) -> None:
    path = export.write_page_csv(_page(), tmp_path / "a.csv")
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text("utf-8"))))
    assert list(rows[0]) == export.CSV_COLUMNS
    assert [r["label"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["index"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert (rows[2]["line"], rows[2]["word"], rows[2]["char"]) == ("0", "1", "0")
    assert (rows[4]["field"], rows[4]["line"]) == ("zip", "")
    assert rows[1]["alt2_label"] == "7" and float(rows[1]["alt2_confidence"]) == pytest.approx(0.45)
    assert rows[1]["alt3_label"] == ""
    assert [int(rows[0][k]) for k in "xywh"] == [10, 20, 18, 30]


def test_overlay_draws_boxes(tmp_path: Path) -> None:
    path = export.write_overlay(_gray(), _page(), tmp_path / "a.overlay.png", 0.8)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img.shape == (120, 300, 3)
    # Confident char 0: green box edge; low-confidence char 1 (x=30): red box edge.
    assert tuple(img[35, 10]) == (0, 160, 0)
    assert tuple(img[35, 30]) == (0, 0, 230)


def test_review_crops_match_threshold(tmp_path: Path) -> None:
    gray = _gray()
    d = tmp_path / "a.p001.review"
    written = export.write_review_crops(gray, _page(), d, 0.8)
    assert sorted(Path(p).name for p in written) == ["c0001.png", "c0003.png", "c0004.png"]
    crop = cv2.imread(str(d / "c0001.png"), cv2.IMREAD_GRAYSCALE)
    pad = export.REVIEW_MIN_PAD + 4  # 0.25 * 30 rounds to 8
    assert crop.shape == (30 + 2 * pad, 18 + 2 * pad)
    np.testing.assert_array_equal(crop, gray[20 - pad : 50 + pad, 30 - pad : 48 + pad])
    # A lower threshold later: crops no longer under it are removed, the folder goes when empty.
    export.write_review_crops(gray, _page(), d, 0.5)
    assert sorted(p.name for p in d.iterdir()) == ["c0003.png"]
    export.write_review_crops(gray, _page(), d, 0.1)
    assert not d.exists()


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x" / "f.json"
    export.atomic_write_text(target, "old")
    export.atomic_write_text(target, "new content")
    assert target.read_text() == "new content"
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_atomic_write_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.csv"
    export.atomic_write_text(target, "old")

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    monkeypatch.setattr(Path, "replace", lambda self, dst: boom(self, dst))
    with pytest.raises(OSError, match="disk full"):
        export.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.csv"]


def test_remove_stale_temps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    stale = tmp_path / "a" / ".page.p001.json.abc123.tmp"
    stale.write_text("{partial")
    keep = tmp_path / "a" / "page.p001.json"
    keep.write_text("{}")
    assert export.remove_stale_temps(tmp_path) == 1
    assert not stale.exists() and keep.exists()
