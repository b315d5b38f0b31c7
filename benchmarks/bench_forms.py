"""Forms benchmark: exact-match rate of 5-digit fields, auto detection vs template, registration.

Generates forms with ``training.formgen`` (closed boxes, combs and underlines with MNIST *test*
digits, some touching or crossing borders, printed heading and prompts, 10% empty fields), each
scanned with a random rotation (+-3 deg), shift (+-3% of the page), rescale (+-5%), blur and
noise. For every layout a template is made the way a user would: ``template init`` on the blank
form, then fields renamed and given ``length: 5``.

Reported:
- auto: share of filled 5-digit fields whose detected field (matched to the truth by box overlap)
  reads exactly right; a field that is not detected counts as wrong. Empty fields are scored
  apart (right when the value comes back empty).
- template: the same, with the fields taken from the registered template.
- registration error: distance between where the template's field corners land on the scan and
  where they truly are (known from the generator's transform), as a share of the page width.

Run from the repository root::

    python -m benchmarks.bench_forms --layouts 4 --forms 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from hwr_batch.classify import load_classifier
from hwr_batch.forms import FormsResult, field_model, read_fields
from hwr_batch.template import Template
from training.formgen import (
    GeneratedForm,
    box_iou,
    load_mnist_test,
    make_layout,
    render_form,
    template_for_layout,
)


def registration_error(
    tpl: Template, result: FormsResult, form: GeneratedForm, shape: tuple[int, int]
) -> float:
    """Mean corner distance (px) of the template's fields: registered vs true position."""
    h, w = shape
    reg = result.registration
    if reg is None or result.deskew is None:
        raise ValueError("the form was not registered")
    inv = cv2.invertAffineTransform(result.deskew)
    errs = []
    for f in tpl.fields:
        x, y, bw, bh = f.box[0] * w, f.box[1] * h, f.box[2] * w, f.box[3] * h
        corners = np.array([[x, y], [x + bw, y], [x, y + bh], [x + bw, y + bh]])
        desk = np.column_stack([reg.sx * corners[:, 0] + reg.tx, reg.sy * corners[:, 1] + reg.ty])
        found = desk @ inv[:, :2].T + inv[:, 2]
        truth = corners @ form.transform[:, :2].T + form.transform[:, 2]
        errs.extend(np.hypot(*(found - truth).T))
    return float(np.mean(errs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", type=int, default=4, help="different blank forms")
    ap.add_argument("--forms", type=int, default=10, help="filled scans per layout")
    ap.add_argument("--fields", type=int, default=10, help="fields per form")
    ap.add_argument(
        "--width", type=int, default=2480, help="page width in px (2480 = A4 at 300 dpi)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="digits", help="digits model name or .onnx path")
    ap.add_argument("--mnist", default="../shared/datasets/mnist", help="MNIST idx folder")
    ap.add_argument("--touch", type=float, default=0.25, help="chance a digit touches a border")
    ap.add_argument("--cross", type=float, default=0.15, help="chance a digit crosses a border")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--show-errors", action="store_true")
    args = ap.parse_args(argv)

    if not (Path(args.mnist) / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"MNIST test split not found under {args.mnist}", file=sys.stderr)
        return 2
    digits = load_mnist_test(args.mnist)
    clf = load_classifier(args.model)
    rng = np.random.default_rng(args.seed)
    height = int(round(args.width * 297 / 210))

    n_auto = n_tpl = n_filled = 0
    n_empty = n_empty_auto = n_empty_tpl = 0
    n_review_wrong = n_wrong = 0
    n_flagged = n_flagged_wrong = 0
    reg_err: list[float] = []
    n_reg_fail = 0
    seconds: list[float] = []
    kind_errors: dict[str, int] = {}
    for _li in range(args.layouts):
        layout = make_layout(rng, args.width, height, n_fields=args.fields)
        tpl = template_for_layout(layout, digits, rng, name="bench", min_iou=0.3)
        for _fi in range(args.forms):
            form = render_form(layout, digits, rng, touch_prob=args.touch, cross_prob=args.cross)
            t0 = time.perf_counter()
            auto = read_fields(form.gray, charset="digits", classifier=clf)
            seconds.append(time.perf_counter() - t0)
            with_tpl = read_fields(form.gray, template=tpl, classifier=clf)
            by_name = {f.name: f for f in with_tpl.fields}
            if with_tpl.registration is None or not with_tpl.registration.ok:
                n_reg_fail += 1
            else:
                reg_err.append(registration_error(tpl, with_tpl, form, form.gray.shape))
            for truth in form.fields:
                match = max(auto.fields, key=lambda f: box_iou(f.bbox, truth.bbox), default=None)
                if match is not None and box_iou(match.bbox, truth.bbox) < 0.5:
                    match = None
                got_auto = match.value if match is not None else None
                got_tpl = by_name[truth.name].value if truth.name in by_name else None
                if truth.value == "":
                    n_empty += 1
                    n_empty_auto += got_auto == ""
                    n_empty_tpl += got_tpl == ""
                    continue
                n_filled += 1
                n_auto += got_auto == truth.value
                n_tpl += got_tpl == truth.value
                if truth.name in by_name and by_name[truth.name].needs_review:
                    n_flagged += 1
                    n_flagged_wrong += got_tpl != truth.value
                if got_tpl != truth.value:
                    n_wrong += 1
                    n_review_wrong += bool(by_name[truth.name].needs_review)
                    kind_errors[truth.kind] = kind_errors.get(truth.kind, 0) + 1
                    if args.show_errors:
                        print(
                            f"  tpl {truth.kind:9s} truth {truth.value} got {got_tpl!r} "
                            f"auto {got_auto!r}"
                        )

    figures = {
        "forms": args.layouts * args.forms,
        "filled_fields": n_filled,
        "empty_fields": n_empty,
        "exact_auto": n_auto / max(1, n_filled),
        "exact_template": n_tpl / max(1, n_filled),
        "empty_right_auto": n_empty_auto / max(1, n_empty),
        "empty_right_template": n_empty_tpl / max(1, n_empty),
        "template_errors_flagged_for_review": n_review_wrong / max(1, n_wrong) if n_wrong else None,
        "template_flag_precision": n_flagged_wrong / n_flagged if n_flagged else None,
        "template_fields_flagged": n_flagged / max(1, n_filled),
        "registration_failures": n_reg_fail,
        "registration_error_mean_of_width": float(np.mean(reg_err)) / args.width
        if reg_err
        else None,
        "registration_error_max_of_width": float(np.max(reg_err)) / args.width if reg_err else None,
        "seconds_per_form_auto": float(np.mean(seconds)) if seconds else None,
        "template_errors_by_kind": kind_errors,
        "model": field_model(clf).path,
    }
    for k, v in figures.items():
        print(f"{k:38s} {v:.4f}" if isinstance(v, float) else f"{k:38s} {v}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
