"""Make samples/forms/: a filled-in form scan, its template, and the ground truth.

The form (printed heading and prompts; closed boxes, combs and underlines) is filled with
handwritten digits from the MNIST *test* split, some touching or crossing the borders, then
"scanned" turned, shifted and rescaled. The template is what ``hwr-batch template init`` proposes
for the blank form, with the fields renamed and given their length, as a user would edit it.

    python samples/make_form_sample.py [--mnist ../shared/datasets/mnist]

Then:

    hwr-batch samples/forms/form.jpg -o out --forms
    hwr-batch samples/forms/form.jpg -o out --template samples/forms/form.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hwr_batch.template import save_template  # noqa: E402
from training.formgen import (  # noqa: E402
    load_mnist_test,
    make_layout,
    render_form,
    template_for_layout,
)

NAMES = ("postcode", "customer_no", "account", "amount", "reference", "branch")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    ap.add_argument("--out", type=Path, default=ROOT / "samples" / "forms")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)

    digits = load_mnist_test(args.mnist)
    rng = np.random.default_rng(args.seed)
    layout = make_layout(rng, width=1240, height=1754, n_fields=len(NAMES))
    layout = replace(
        layout,
        fields=tuple(
            replace(f, name=n, prompt=n.replace("_", " ").capitalize())
            for f, n in zip(layout.fields, NAMES, strict=False)
        ),
    )
    template = template_for_layout(layout, digits, rng, name="sample form")

    form = render_form(layout, digits, rng, empty_prob=0.15, noise=2.0)
    args.out.mkdir(parents=True, exist_ok=True)
    # JPEG like most office scanners (a noisy PNG of this page is over 1 MB).
    cv2.imwrite(str(args.out / "form.jpg"), form.gray, [cv2.IMWRITE_JPEG_QUALITY, 90])
    save_template(template, args.out / "form.json")
    truth = {
        "source": "form.jpg",
        "made_by": "samples/make_form_sample.py (MNIST test digits)",
        "rotation_deg": round(form.angle, 3),
        "scale": round(form.scale, 4),
        "shift_px": [round(v, 1) for v in form.shift],
        "fields": [
            {"name": t.name, "kind": t.kind, "value": t.value, "bbox": t.bbox.to_list()}
            for t in form.fields
        ],
    }
    (args.out / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(f"wrote {args.out}/form.jpg, form.json, truth.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
