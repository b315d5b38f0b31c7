"""Templates (format, init, registration, mismatch) and constrained field values."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from hwr_batch import forms
from hwr_batch.errors import BadArguments
from hwr_batch.fieldvalue import Constraint, Edge, decode_lattice, decode_positions
from hwr_batch.template import (
    Template,
    TemplateField,
    load_template,
    propose_template,
    save_template,
)
from training.formgen import make_layout, render_form

DIGITS = "0123456789"


# ------------------------------------------------------------------ constrained values


def _rows(*pairs: tuple[dict[str, float]]) -> np.ndarray:
    p = np.full((len(pairs), 10), 1e-4, np.float32)
    for i, row in enumerate(pairs):
        for lab, v in row.items():  # type: ignore[attr-defined]
            p[i, int(lab)] = v
    return p


def test_argmax_when_it_fits() -> None:
    p = _rows({"1": 0.9}, {"2": 0.8, "7": 0.1}, {"3": 0.95})
    d = decode_positions(p, DIGITS, Constraint(length=3))
    assert d.value == "123" and d.fits
    assert d.confidence == pytest.approx(0.9 * 0.8 * 0.95, rel=1e-4)
    assert d.char_probs == pytest.approx((0.9, 0.8, 0.95), rel=1e-4)


def test_pattern_picks_the_best_string_that_fits() -> None:
    # Argmax "1234" breaks the rule "ends in an even digit"; changing the last digit costs
    # less than changing any other.
    p = _rows({"1": 0.9}, {"2": 0.9}, {"3": 0.9}, {"5": 0.6, "6": 0.35, "8": 0.04})
    d = decode_positions(p, DIGITS, Constraint(pattern=r"\d{3}[02468]"))
    assert d.value == "1236" and d.fits
    assert d.confidence == pytest.approx(0.9**3 * 0.35, rel=1e-3)


def test_no_candidate_fits_is_flagged() -> None:
    p = _rows({"1": 0.9}, {"2": 0.9})
    d = decode_positions(p, DIGITS, Constraint(length=5))
    assert not d.fits
    assert d.value == "12"  # the best reading is still shown for review


def test_empty_field() -> None:
    assert decode_positions(np.zeros((0, 10), np.float32), DIGITS, Constraint()).value == ""
    assert decode_positions(np.zeros((0, 10), np.float32), DIGITS, Constraint()).fits
    assert not decode_positions(np.zeros((0, 10), np.float32), DIGITS, Constraint(length=5)).fits


def test_charset_restricts_labels() -> None:
    labels = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    p = np.full((1, 36), 1e-4, np.float32)
    p[0, labels.index("O")] = 0.7
    p[0, labels.index("0")] = 0.25
    d = decode_positions(p, labels, Constraint(charset="digits"))
    assert d.value == "0"
    assert d.confidence == pytest.approx(0.25, rel=1e-3), "raw probability, not renormalised"


def test_lattice_chooses_segmentation_to_fit_length() -> None:
    # Two pieces that read as "1" "7" alone, or together as a "4" with a bit less certainty.
    one = _rows({"1": 0.9})[0]
    seven = _rows({"7": 0.9})[0]
    four = _rows({"4": 0.6})[0]
    edges = [Edge(0, 1, one), Edge(1, 2, seven), Edge(0, 2, four)]
    assert decode_lattice(3, edges, DIGITS, Constraint()).value == "17"
    d = decode_lattice(3, edges, DIGITS, Constraint(length=1))
    assert d.value == "4" and d.fits and d.edges == (2,)


def test_blank_edge_drops_a_fragment_to_fit_length() -> None:
    # "1", a fragment that reads as a confident "1", then "2": three characters unless the
    # fragment is read as nothing, which a length of 2 asks for.
    one = _rows({"1": 0.9})[0]
    two = _rows({"2": 0.9})[0]
    edges = [Edge(0, 1, one), Edge(1, 2, one * 0.5), Edge(2, 3, two)]
    edges.append(Edge(1, 2, np.zeros(0, np.float32), blank=0.4))
    assert decode_lattice(4, edges, DIGITS, Constraint()).value == "112"
    d = decode_lattice(4, edges, DIGITS, Constraint(length=2))
    assert d.value == "12" and d.fits
    assert d.edges == (0, 2), "the blank edge is no character of the value"
    assert d.char_probs == pytest.approx((0.9, 0.9), rel=1e-4)
    assert d.confidence == pytest.approx(0.9 * 0.4 * 0.9, rel=1e-4), "the blank's cost counts"
    # A more probable blank wins without any length.
    edges[-1] = Edge(1, 2, np.zeros(0, np.float32), blank=0.6)
    assert decode_lattice(4, edges, DIGITS, Constraint()).value == "12"


def test_constraint_validation() -> None:
    with pytest.raises(ValueError):
        Constraint(charset="hex")
    with pytest.raises(Exception):  # noqa: B017 - re.error
        Constraint(pattern="([")


# ------------------------------------------------------------------ template format


def _template() -> Template:
    return Template(
        name="t",
        width=1000,
        height=1400,
        fields=(
            TemplateField("postcode", "comb", (0.3, 0.2, 0.2, 0.04), cells=5, length=5),
            TemplateField("amount", "underline", (0.3, 0.4, 0.25, 0.05), pattern=r"\d+"),
        ),
    )


def test_template_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "form.json"
    save_template(_template(), path)
    data = json.loads(path.read_text())
    assert data["schema"] == "hwr-batch/template/v1"
    assert data["fields"][0]["box"] == [0.3, 0.2, 0.2, 0.04]
    assert load_template(path) == _template()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"schema": "other", "fields": []}', "not a hwr-batch/template/v1"),
        (
            '{"schema": "hwr-batch/template/v1", "fields": [{"name": "a", "kind": "circle",'
            ' "box": [0, 0, 0.1, 0.1]}]}',
            "kind must be one of",
        ),
        (
            '{"schema": "hwr-batch/template/v1", "fields": [{"name": "a", "box": [0, 0, 0.1]}]}',
            "box must be",
        ),
        ('{"schema": "hwr-batch/template/v1", "fields": []}', "no fields"),
    ],
)
def test_bad_template_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BadArguments, match=message) as exc:
        load_template(path)
    assert str(path) in str(exc.value)


def test_missing_template_file(tmp_path: Path) -> None:
    with pytest.raises(BadArguments, match="cannot read template"):
        load_template(tmp_path / "nope.json")


# ------------------------------------------------------------------ init and registration


def _digit_bank() -> tuple[np.ndarray, np.ndarray]:
    """Hershey-drawn digits as a stand-in for MNIST (white on black 28x28)."""
    images = np.zeros((10, 28, 28), np.uint8)
    for d in range(10):
        cv2.putText(images[d], str(d), (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)
    return images, np.array(list(DIGITS))


class FixedReader:
    """Stand-in classifier: "3" for every crop (registration tests need no model)."""

    labels = DIGITS

    def predict_proba(self, crops: np.ndarray) -> np.ndarray:
        p = np.full((len(crops), 10), 0.01, np.float32)
        p[:, 3] = 0.91
        return p


@pytest.fixture(scope="module")
def layout_and_template() -> tuple[object, Template]:
    rng = np.random.default_rng(5)
    layout = make_layout(rng, width=800, height=1131, n_fields=6)
    blank = render_form(
        layout, _digit_bank(), rng, empty_prob=1.0, max_angle=0, max_shift=0, max_scale=0
    )
    return layout, propose_template(blank.gray, name="six")


def test_template_init_proposes_every_field(layout_and_template: tuple) -> None:
    layout, tpl = layout_and_template
    assert [f.kind for f in tpl.fields] == [f.kind for f in layout.fields]
    assert [f.name for f in tpl.fields] == [f"field_{i:03d}" for i in range(1, 7)]
    for tf, lf in zip(tpl.fields, layout.fields, strict=True):
        if lf.kind == "comb":
            assert tf.cells == lf.cells and tf.length == lf.cells
        x = tf.box[0] * layout.width
        assert abs(x - lf.box.x) <= 6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_registration_on_shifted_rotated_rescaled_scans(
    layout_and_template: tuple, seed: int
) -> None:
    layout, tpl = layout_and_template
    rng = np.random.default_rng(seed)
    form = render_form(layout, _digit_bank(), rng, max_angle=3, max_shift=0.03, max_scale=0.05)
    res = forms.read_fields(form.gray, template=tpl, classifiers={"digits": FixedReader()})  # type: ignore[dict-item]
    assert res.warnings == ()
    reg = res.registration
    assert reg is not None and reg.ok and reg.matched >= reg.total - 1
    # Where the template's field corners land on the scan vs where they truly are.
    w, h = layout.width, layout.height
    inv = cv2.invertAffineTransform(res.deskew)
    errs = []
    for f in tpl.fields:
        x, y, bw, bh = f.box[0] * w, f.box[1] * h, f.box[2] * w, f.box[3] * h
        pts = np.array([[x, y], [x + bw, y + bh]])
        desk = np.column_stack([reg.sx * pts[:, 0] + reg.tx, reg.sy * pts[:, 1] + reg.ty])
        found = desk @ inv[:, :2].T + inv[:, 2]
        truth = pts @ form.transform[:, :2].T + form.transform[:, 2]
        errs.extend(np.hypot(*(found - truth).T))
    assert max(errs) < 0.005 * w
    # Field values follow the template's names and filled/empty state.
    by_name = {f.name: f for f in res.fields}
    for tf, truth in zip(tpl.fields, form.fields, strict=True):
        got = by_name[tf.name]
        assert (got.value == "") == (truth.value == "")


def test_template_constraints_apply(layout_and_template: tuple) -> None:
    layout, tpl = layout_and_template
    # Demand letters-only in the first field: the digit reader's "3" cannot fit.
    first = replace(tpl.fields[0], pattern=r"9{5}", length=5)
    tpl2 = replace(tpl, fields=(first, *tpl.fields[1:]))
    rng = np.random.default_rng(11)
    form = render_form(layout, _digit_bank(), rng, empty_prob=0.0)
    res = forms.read_fields(form.gray, template=tpl2, classifiers={"digits": FixedReader()})  # type: ignore[dict-item]
    f = res.fields[0]
    assert f.name == "field_001" and f.needs_review


def test_mismatched_template_warns_and_flags(layout_and_template: tuple) -> None:
    _layout, tpl = layout_and_template
    rng = np.random.default_rng(99)
    other = make_layout(rng, width=800, height=1131, n_fields=3, kinds=("underline",))
    other = replace(
        other,
        fields=tuple(
            replace(f, box=replace(f.box, x=f.box.x - 60, y=f.box.y + 300)) for f in other.fields
        ),
    )
    form = render_form(other, _digit_bank(), rng, empty_prob=0.0)
    res = forms.read_fields(form.gray, template=tpl, classifiers={"digits": FixedReader()})  # type: ignore[dict-item]
    assert any("does not match" in w for w in res.warnings)
    assert [f.name for f in res.fields] == [f.name for f in tpl.fields]
    assert all(f.needs_review and f.value == "" and f.confidence == 0.0 for f in res.fields)


def test_read_page_with_template_file(layout_and_template: tuple, tmp_path: Path) -> None:
    layout, tpl = layout_and_template
    path = tmp_path / "form.json"
    save_template(tpl, path)
    form = render_form(layout, _digit_bank(), np.random.default_rng(4), empty_prob=0.0)
    res = forms.read_fields(form.gray, template=str(path), classifiers={"digits": FixedReader()})  # type: ignore[dict-item]
    assert len(res.fields) == len(tpl.fields)
    assert all(f.value for f in res.fields)


# ------------------------------------------------------------------ command line


def test_cli_template_init_and_batch_fields_csv(layout_and_template: tuple, tmp_path: Path) -> None:
    from hwr_batch.classify import model_path
    from hwr_batch.cli import main
    from hwr_batch.errors import ModelError

    layout, _tpl = layout_and_template
    rng = np.random.default_rng(21)
    blank = render_form(layout, _digit_bank(), rng, empty_prob=1.0, max_angle=0, max_shift=0)
    scan = tmp_path / "blank.png"
    cv2.imwrite(str(scan), blank.gray)
    out = tmp_path / "form.json"
    assert main(["template", "init", str(scan), "-o", str(out)]) == 0
    tpl = load_template(out)
    assert [f.kind for f in tpl.fields] == [f.kind for f in layout.fields]

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main([str(scan), "-o", str(tmp_path / "o"), "--template", str(bad), "-q"]) == 2

    try:
        model_path("digits")
    except ModelError:
        pytest.skip("digits model not built yet")
    filled = render_form(layout, _digit_bank(), rng, empty_prob=0.0)
    cv2.imwrite(str(tmp_path / "filled.png"), filled.gray)
    rc = main(
        [
            str(tmp_path / "filled.png"),
            "-o",
            str(tmp_path / "o"),
            "--template",
            str(out),
            "-q",
            "-j",
            "1",
        ]
    )
    assert rc == 0
    rows = (tmp_path / "o" / "fields.csv").read_text().splitlines()
    assert rows[0] == "file,page,field,value,confidence,needs_review"
    assert [r.split(",")[2] for r in rows[1:]] == [f.name for f in tpl.fields]
    assert all(r.split(",")[3] for r in rows[1:])
