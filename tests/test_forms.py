"""Form field detection, border removal and field reading on synthetic forms."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hwr_batch import forms
from hwr_batch.classify import load_classifier, model_path
from hwr_batch.errors import ModelError
from hwr_batch.fieldvalue import Decoded
from hwr_batch.records import BBox
from training.formgen import load_mnist_test, make_layout, render_form

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"


def _blank(h: int = 900, w: int = 800) -> np.ndarray:
    return np.full((h, w), 245, np.uint8)


def _draw_form(page: np.ndarray) -> dict[str, BBox]:
    """A box, a 5-cell comb and an underline top to bottom, each with a printed prompt."""
    cv2.putText(page, "REGISTRATION", (60, 70), cv2.FONT_HERSHEY_DUPLEX, 1.4, 20, 2)
    boxes = {"box": BBox(300, 150, 220, 56), "comb": BBox(300, 300, 225, 56)}
    cv2.rectangle(page, (300, 150), (520, 206), 20, 2)
    cv2.rectangle(page, (300, 300), (525, 356), 20, 2)
    for k in range(1, 5):
        cv2.line(page, (300 + 45 * k, 300), (300 + 45 * k, 356), 20, 2)
    cv2.line(page, (300, 500), (560, 500), 20, 2)
    boxes["underline"] = BBox(300, 440, 260, 62)
    for y, text in ((190, "Name:"), (340, "Code:"), (490, "Amount:")):
        cv2.putText(page, text, (60, y), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 20, 2)
    return boxes


def _write(page: np.ndarray, text: str, x: int, y_base: int, size: float = 1.3) -> None:
    """Printed-digit stand-in for handwriting: thick Hershey strokes (geometry tests only)."""
    cv2.putText(page, text, (x, y_base), cv2.FONT_HERSHEY_SIMPLEX, size, 30, 4)


class InkCounter:
    """A stand-in classifier for geometry tests: says "7" for every crop, and records them."""

    labels = "0123456789"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append(len(crops))
        p = np.full((len(crops), 10), 0.01, np.float32)
        p[:, 7] = 0.91
        return p


def test_ink_mask_ignores_uneven_lighting() -> None:
    yy, xx = np.mgrid[0:400, 0:600]
    page = (250 - 0.15 * xx - 0.1 * yy).astype(np.uint8)  # paper from 250 down to ~120
    cv2.line(page, (50, 200), (550, 200), 10, 3)
    ink = forms.ink_mask(page)
    assert ink[200, 300] == 255
    assert ink[100, 500] == 0 and ink[350, 550] == 0
    assert np.count_nonzero(ink) < 600 * 10


@pytest.mark.parametrize("angle", [-3.0, -1.2, 0.0, 2.5])
def test_estimate_skew_from_form_lines(angle: float) -> None:
    page = _blank()
    _draw_form(page)
    m = cv2.getRotationMatrix2D((400, 450), angle, 1.0)
    turned = cv2.warpAffine(page, m, (800, 900), borderValue=245)
    assert forms.estimate_skew(forms.ink_mask(turned)) == pytest.approx(angle, abs=0.15)


def test_estimate_skew_without_lines_is_zero() -> None:
    page = _blank()
    _write(page, "12345", 100, 200)
    assert forms.estimate_skew(forms.ink_mask(page)) == 0.0


def test_detects_each_kind_in_reading_order() -> None:
    page = _blank()
    truth = _draw_form(page)
    structure = forms.detect_fields(forms.ink_mask(page))
    kinds = [f.kind for f in structure.fields]
    assert kinds == ["box", "comb", "underline"]
    comb = structure.fields[1]
    assert len(comb.cells) == 5
    widths = [c.w for c in comb.cells]
    assert max(widths) - min(widths) <= 3
    for f in structure.fields:
        t = truth[f.kind]
        assert abs(f.bbox.x - t.x) <= 6 and abs(f.bbox.x2 - t.x2) <= 6
        assert abs(f.bbox.y2 - t.y2) <= 6


def test_heading_and_prompts_are_not_fields() -> None:
    page = _blank()
    cv2.putText(page, "ORDER FORM 2024", (60, 100), cv2.FONT_HERSHEY_DUPLEX, 2.0, 20, 3)
    cv2.putText(page, "Please write in capitals", (60, 300), cv2.FONT_HERSHEY_SIMPLEX, 1, 20, 2)
    assert forms.detect_fields(forms.ink_mask(page)).fields == ()


def test_stroke_crossing_a_border_is_kept_and_border_removed() -> None:
    page = _blank(300, 400)
    cv2.rectangle(page, (100, 100), (300, 160), 20, 2)
    cv2.line(page, (200, 120), (205, 185), 20, 4)  # crosses the bottom border
    ink = forms.ink_mask(page)
    s = forms.detect_fields(ink)
    clean = forms.clean_ink(ink, s.h_lines, s.v_lines, s.line_width)
    n, labels = cv2.connectedComponents(clean)
    stroke = labels[130, 201]
    assert stroke > 0 and labels[180, 204] == stroke, "the stroke was cut at the border"
    assert clean[160, 150] == 0 and clean[130, 100] == 0, "border pixels left in the ink"
    assert n - 1 == 1


def test_stroke_resting_on_a_border_keeps_its_shape() -> None:
    page = _blank(300, 400)
    cv2.rectangle(page, (100, 100), (300, 160), 20, 2)
    # The base of a "2": a horizontal stroke lying on the bottom border, with its body above.
    cv2.line(page, (180, 158), (220, 158), 20, 4)
    cv2.line(page, (180, 158), (215, 115), 20, 4)
    ink = forms.ink_mask(page)
    s = forms.detect_fields(ink)
    clean = forms.clean_ink(ink, s.h_lines, s.v_lines, s.line_width)
    base = clean[150:165, 180:222] > 0
    assert base.any(axis=0).mean() > 0.9, "the stroke along the border was erased"
    assert clean[160, 120] == 0 and clean[160, 280] == 0


def test_faint_stroke_attached_to_ink_is_kept_and_faint_noise_is_not() -> None:
    # A flattened page as ink_levels gives it for the generated scans: paper ~252, ink
    # threshold 155.
    flat = np.full((300, 400), 252, np.uint8)
    cv2.line(flat, (150, 100), (190, 100), 190, 3)  # the light bar of a quick 7
    cv2.line(flat, (190, 100), (160, 200), 40, 4)  # its dark stem
    cv2.circle(flat, (300, 150), 4, 190, -1)  # a light blot touching no ink
    t = 155.0
    ink = np.where(flat <= t, 255, 0).astype(np.uint8)
    assert ink[100, 160] == 0, "the bar is lighter than the ink threshold"
    full = forms.faint_ink(flat, t, ink)
    assert full[100, 160] > 0, "the faint bar was not joined to its stem"
    assert full[150, 300] == 0, "faint ink touching no ink was kept"
    assert (full >= ink).all(), "ink was lost"


def _holes(mask: np.ndarray) -> int:
    """Number of enclosed holes of a 0/255 mask."""
    _c, hier = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return 0 if hier is None else int((hier[0][:, 3] >= 0).sum())


def test_loop_tangent_under_a_border_stays_closed() -> None:
    page = _blank(300, 400)
    cv2.rectangle(page, (100, 100), (300, 160), 20, 2)
    # The loop of a "0" whose top runs along the box's top line, from inside.
    cv2.ellipse(page, (200, 128), (16, 27), 0, 0, 360, 20, 3)
    ink = forms.ink_mask(page)
    s = forms.detect_fields(ink)
    clean = forms.clean_ink(ink, s.h_lines, s.v_lines, s.line_width)
    assert _holes(clean[95:165, 170:230]) == 1, "the loop's top was erased with the border"
    assert clean[100, 130] == 0 and clean[100, 270] == 0


def test_seven_crossing_a_border_is_not_closed_into_a_loop() -> None:
    page = _blank(300, 1000)  # wide: a 42 px bar is no underline (1/12 of the width)
    cv2.rectangle(page, (100, 100), (300, 160), 20, 2)
    # A "7" written too high: its bar above the top line, the bar's left end hooked down onto
    # the line, the stem crossing it. The line between hook and stem is border, not stroke;
    # keeping it closes a loop under the bar and the 7 reads as a 9.
    cv2.line(page, (194, 84), (216, 84), 20, 3)
    cv2.line(page, (194, 84), (194, 99), 20, 3)
    cv2.line(page, (216, 84), (202, 140), 20, 3)
    ink = forms.ink_mask(page)
    s = forms.detect_fields(ink)
    clean = forms.clean_ink(ink, s.h_lines, s.v_lines, s.line_width)
    assert _holes(clean[75:150, 160:230]) == 0, "a loop was closed along the border"
    n, labels = cv2.connectedComponents(clean)
    assert labels[84, 205] > 0 and labels[84, 205] == labels[130, 204], "the stem was cut"


def test_read_fields_one_batch_prompts_ignored_and_empty_fields() -> None:
    page = _blank()
    _draw_form(page)
    for k in (0, 1, 3):  # comb cells 1, 2 and 4 filled
        _write(page, "4", 300 + 45 * k + 10, 345)
    _write(page, "12", 320, 492)  # on the underline
    counter = InkCounter()
    res = forms.read_fields(page, classifiers={"digits": counter})  # type: ignore[dict-item]
    assert [f.name for f in res.fields] == ["field_001", "field_002", "field_003"]
    box, comb, under = res.fields
    assert box.value == "" and box.chars == () and not box.needs_review
    assert comb.value == "777" and len(comb.chars) == 3
    assert under.value == "77"
    # 5 characters, each seen twice (binary and gray crop), all in one batch for the page.
    assert counter.batches == [10], "all candidates of a page go in one batch"
    # Character boxes lie inside their cells (page coordinates; this page is not skewed).
    assert comb.chars[0].bbox.x >= 300 and comb.chars[0].bbox.x2 <= 350


class ByWidth:
    """A stand-in classifier for geometry tests: a crop at least half as wide as tall reads
    "4", a narrow one (a bar or a fragment) "1"; both confidently."""

    labels = "0123456789"

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        p = np.full((len(crops), 10), 0.005, np.float32)
        for i, c in enumerate(crops):
            cols = np.nonzero(c.max(axis=0) > 0.3)[0]
            rows = np.nonzero(c.max(axis=1) > 0.3)[0]
            wide = cols.size and rows.size and np.ptp(cols) >= 0.5 * np.ptp(rows)
            p[i, 4 if wide else 1] = 0.95
        return p


def test_fragment_in_a_free_box_is_dropped_or_merged() -> None:
    page = _blank()
    cv2.rectangle(page, (300, 150), (560, 220), 20, 2)
    for x in (320, 380, 440):  # three wide characters
        cv2.rectangle(page, (x, 165), (x + 34, 205), 20, 4)
    # A broken-off bit 14 px right of the first character: small against the 40 px
    # characters, and too far from it for an ordinary merge.
    cv2.line(page, (368, 190), (368, 204), 20, 3)
    res = forms.read_fields(page, classifiers={"digits": ByWidth()})  # type: ignore[dict-item]
    (box,) = res.fields
    assert box.value == "444", "the fragment was read as a character"
    assert box.needs_review, "dropping a fragment costs confidence"


def test_field_boxes_map_back_to_the_skewed_page() -> None:
    page = _blank()
    truth = _draw_form(page)
    m = cv2.getRotationMatrix2D((400, 450), 2.0, 1.0)
    turned = cv2.warpAffine(page, m, (800, 900), borderValue=245)
    res = forms.read_fields(turned, classifiers={"digits": InkCounter()})  # type: ignore[dict-item]
    assert res.skew_angle == pytest.approx(2.0, abs=0.15)
    comb = res.fields[1]
    expected = forms.map_box(truth["comb"], m, turned.shape)
    assert abs(comb.bbox.x - expected.x) <= 8 and abs(comb.bbox.y - expected.y) <= 8
    assert abs(comb.bbox.w - expected.w) <= 12


def _have_model() -> bool:
    try:
        model_path("digits")
    except ModelError:
        return False
    return True


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="MNIST absent")
@pytest.mark.skipif(not _have_model(), reason="digits model not built yet")
def test_reads_generated_forms_with_the_digit_model() -> None:
    digits = load_mnist_test(MNIST)
    rng = np.random.default_rng(7)
    clf = load_classifier("digits")
    right = total = 0
    for _ in range(2):
        layout = make_layout(rng, n_fields=8)
        form = render_form(layout, digits, rng, touch_prob=0.1, cross_prob=0.05)
        res = forms.read_fields(form.gray, classifier=clf)
        assert len(res.fields) == len(form.fields)
        for f, t in zip(res.fields, form.fields, strict=True):
            assert f.kind == t.kind
            total += 1
            right += f.value == t.value
    assert right / total >= 0.8


def test_loose_bar_of_a_small_five_is_merged_without_a_known_length() -> None:
    page = _blank()
    cv2.rectangle(page, (300, 150), (560, 220), 20, 2)
    for x in (310, 355, 400):  # three tall characters
        cv2.rectangle(page, (x, 165), (x + 34, 205), 20, 4)
    cv2.rectangle(page, (450, 183), (468, 205), 20, -1)  # a small character
    # A small 5 whose bar came loose: the body, and the bar above it to the right. With two
    # small pieces and the bar, a plain median height is no longer a character's height.
    cv2.rectangle(page, (480, 187), (500, 205), 20, -1)
    cv2.rectangle(page, (492, 174), (520, 180), 20, -1)
    res = forms.read_fields(page, classifiers={"digits": ByWidth()})  # type: ignore[dict-item]
    (box,) = res.fields
    assert box.value == "44444", "the 5's body and bar were read as two characters"


def test_a_view_reading_something_else_outright_sends_the_field_to_review() -> None:
    spec = forms.FieldSpec("f", forms.FieldGeometry("box", BBox(0, 0, 100, 40), ()))
    cand = forms._Candidate(spec)
    box = BBox(5, 5, 20, 30)
    # One character seen in three views: two read it as 7 surely, one as 1.
    cand.edges = [(0, 1, box, 0), (0, 1, box, 1), (0, 1, box, 2)]
    rows = np.full((3, 10), 0.005, np.float32)
    rows[0, 7], rows[1, 7], rows[2, 1] = 0.96, 0.95, 0.96
    probas = {i: (rows[i], "0123456789") for i in range(3)}
    dec = Decoded("7", 0.96, (0.96,), (0,), True)
    assert forms._views_disagree(cand, probas, dec)
    rows[2, 7], rows[2, 1] = 0.5, 0.4  # the third view doubts, but does not say otherwise
    assert not forms._views_disagree(cand, probas, dec)


class Unsure:
    """A stand-in model torn between "3" and "8" on every crop; counts the crops it sees."""

    labels = "0123456789"

    def __init__(self, p3: float = 0.5, p8: float = 0.4) -> None:
        self.p3, self.p8 = p3, p8
        self.seen = 0

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        self.seen += len(crops)
        p = np.full((len(crops), 10), (1.0 - self.p3 - self.p8) / 8, np.float32)
        p[:, 3], p[:, 8] = self.p3, self.p8
        return p


class SureEight:
    """A stand-in second model with more labels than the first: reads "8" surely."""

    labels = "0123456789AB"

    def __init__(self) -> None:
        self.seen = 0

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        self.seen += len(crops)
        p = np.full((len(crops), 12), 0.01, np.float32)
        p[:, 8] = 0.7
        p[:, 10] = 0.2  # a letter: dropped, the rest renormalised over the digits
        return p


def test_second_opinion_averages_warps_and_a_second_model_on_unsure_rows() -> None:
    first, second = Unsure(), SureEight()
    batch = np.zeros((3, 28, 28), np.float32)
    batch[:, 6:22, 12:16] = 1.0
    proba = first.predict_proba(batch)
    proba[1] = 0.01
    proba[1, 5] = 0.91  # a sure row
    first.seen = 0
    out = forms._with_second_opinion(proba, batch, first, second)  # type: ignore[arg-type]
    assert second.seen == 2, "only the two unsure rows go to the second model"
    assert first.seen == 2 * len(forms.SECOND_OPINION_WARPS)
    np.testing.assert_array_equal(out[1], proba[1])
    # First reading 3 (0.5) over 8 (0.4), the warps the same, the second model 8 at 0.7 of
    # the 0.79 its digits share:
    # the mean reads 8 at (0.4 + 0.4 + 0.7 / 0.79) / 3.
    assert int(out[0].argmax()) == 8
    assert out[0, 8] == pytest.approx((0.4 + 0.4 + 0.7 / 0.79) / 3, abs=1e-5)
    assert out[0].sum() == pytest.approx(1.0, abs=1e-5)
    # Without a second model only the warps count, and they agree with the first reading.
    alone = forms._with_second_opinion(proba, batch, first, None)  # type: ignore[arg-type]
    assert int(alone[0].argmax()) == 3


def test_warped_input_moves_the_ink() -> None:
    x = np.zeros((28, 28), np.float32)
    x[2:26, 13] = 1.0  # a vertical bar
    right = forms._warp_input(x, 0.0, 1.0, 0.0)
    assert right[2:26, 14].min() == pytest.approx(1.0) and right[:, 13].max() == 0.0
    turned = forms._warp_input(x, 8.0, 0.0, 0.0)
    cols = np.nonzero(turned > 0.5)[1]
    assert np.ptp(cols) >= 3, "an 8 degree turn slants a 24 px bar by over 3 px"
    assert turned.sum() == pytest.approx(x.sum(), rel=0.1)


def test_second_model_comes_only_from_the_given_mapping() -> None:
    page = _blank()
    _draw_form(page)
    _write(page, "12", 320, 492)  # on the underline
    first, second = Unsure(), SureEight()
    res = forms.read_fields(page, classifiers={"digits": first, "alnum": second})  # type: ignore[dict-item]
    assert res.fields[2].value == "88" and second.seen > 0
    only = Unsure()
    res = forms.read_fields(page, classifiers={"digits": only})  # type: ignore[dict-item]
    assert res.fields[2].value == "33", "no second model was loaded behind the caller's back"
    off, second = Unsure(), SureEight()
    res = forms.read_fields(
        page,
        classifiers={"digits": off, "alnum": second},  # type: ignore[dict-item]
        second_opinion=False,
    )
    assert res.fields[2].value == "33" and second.seen == 0


def test_second_model_is_loaded_by_name_and_a_missing_one_is_skipped() -> None:
    first, second = Unsure(), SureEight()
    asked: list[str] = []

    def load(name: str) -> SureEight:
        asked.append(name)
        return second

    got = forms._second_model("digits", first, None, load)  # type: ignore[arg-type]
    assert got is second and asked == [forms.SECOND_MODEL["digits"]]

    def missing(name: str) -> SureEight:
        raise ModelError(f"{name}: not found")

    assert forms._second_model("digits", first, None, missing) is None  # type: ignore[arg-type]
    # No second model for a charset without one, nor the field's own model a second time.
    assert forms._second_model("letters", first, None, load) is None  # type: ignore[arg-type]
    same = forms._second_model("digits", first, {"alnum": first}, None)  # type: ignore[arg-type, dict-item]
    assert same is None


def test_digit_fields_are_read_with_the_forms_digits_model(tmp_path: Path) -> None:
    """The bundled page model for digits hands fields to the bundled forms model; a model
    given by path, and models with no forms counterpart, read fields themselves."""
    from hwr_batch.forms import field_model

    digits = load_classifier("digits")
    forms_model = field_model(digits)
    assert forms_model.name == "digits_forms" and forms_model.labels == digits.labels
    assert Path(forms_model.path).parent == Path(digits.path).parent
    letters = load_classifier("letters")
    assert field_model(letters) is letters
    copy = tmp_path / "my_digits.onnx"
    copy.write_bytes(Path(digits.path).read_bytes())
    mine = load_classifier(copy)
    assert field_model(mine) is mine
