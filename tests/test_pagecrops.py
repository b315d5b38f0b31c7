"""training.pagecrops: box matching, and the reader's crops of generated training pages."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.fit import load_npz
from training.pagecrops import box_iou, match_boxes, page_crops, save_npz

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def test_box_iou_of_known_boxes() -> None:
    a = np.array([[0, 0, 10, 10], [100, 100, 5, 5]], np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 4, 4]], np.float64)
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])


def test_match_boxes_is_one_to_one_best_first() -> None:
    found = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [40, 0, 10, 10]], np.float64)
    truth = np.array([[1, 0, 10, 10], [60, 0, 10, 10]], np.float64)
    # found[1] is truth[0] exactly; found[0] overlaps it too but loses; found[2] matches none.
    assert match_boxes(found, truth) == [(1, 0)]
    assert match_boxes(found[:0], truth) == []


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/datasets not present")
def test_page_crops_are_labelled_reader_crops(tmp_path: Path) -> None:
    data = page_crops("digits", 2, seed=7, jobs=1)
    # Two pages of 300 placed characters; nearly all are cut as the page drew them.
    assert 540 <= len(data) <= 600
    assert set(Counter(data.labels.tolist())) == set("0123456789")
    assert set(data.groups.tolist()) == {"pagecrops/scan"}
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (28, 28)
    assert all(img.max() > 100 for img in data.images)  # every crop holds ink
    import hwr_batch

    clf = hwr_batch.load_classifier("digits")
    labels, _ = clf.predict(data.images)
    assert (np.array(labels) == data.labels).mean() > 0.95  # the labels belong to the crops
    back = load_npz(save_npz(data, tmp_path / "pc.npz"))
    assert (back.images == data.images).all() and (back.labels == data.labels).all()


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/datasets not present")
def test_hwr_train_pagecrops_writes_an_npz_fit_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.cli import main

    out = tmp_path / "crops.npz"
    assert main(["pagecrops", "digits", str(out), "--pages", "1", "--jobs", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    data = load_npz(out)
    assert report["images"] == len(data) > 250 and report["pages"] == 1
