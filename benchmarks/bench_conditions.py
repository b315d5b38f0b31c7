"""The same generated pages under the conditions real scans bring: CER and CPU per condition.

``bench_pages.py`` draws its pages in two looks (a skewed, unevenly lit JPEG scan and a ruled
PNG). Scans in the wild also come at other resolutions, framed by a scanner's dark bed, as
negatives, sideways or upside down, heavily compressed, speckled, with the back of the sheet
showing through, or out of focus. This benchmark draws ``--pages`` pages of ``--kind`` from the
test splits (as ``bench_pages.py`` does, same seeds), applies each condition to every page and
reads the result in-process with one thread through ``hwr_batch.read_page``, reporting CER
(``training.pagegen.cer``), CPU seconds a page, and the warnings the reader gave.

Usage: ``python benchmarks/bench_conditions.py [--pages 6] [--kind digits] [--seed 0]
[--conditions as-is,negative,...] [--size WxH] [--chars N] [--out DIR]``. Prints a markdown
table and writes ``bench_conditions.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere, the repo not pip-installed
    sys.path.insert(0, str(REPO))

from benchmarks.bench_pages import (  # noqa: E402
    CHARSET_OF_KIND,
    KINDS,
    add_page_shape_args,
    generate_pages,
    tidy_text,
)

U8 = npt.NDArray[np.uint8]


def _resize(gray: U8, f: float) -> U8:
    import cv2

    h, w = gray.shape
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(gray, (round(w * f), round(h * f)), interpolation=interp))


def _framed(level: int) -> Callable[[U8], U8]:
    def frame(gray: U8) -> U8:
        out = np.full((gray.shape[0] + 200, gray.shape[1] + 200), level, np.uint8)
        out[100:-100, 100:-100] = gray
        return out

    return frame


def _jpeg(gray: U8) -> U8:
    import cv2

    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 25])
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)) if ok else gray


def _speckled(gray: U8) -> U8:
    rng = np.random.default_rng(0)
    out = gray.copy()
    u = rng.random(gray.shape)
    out[u < 0.005] = 0
    out[u > 0.995] = 255
    return out


def _bleed_through(share: float) -> Callable[[U8], U8]:
    """The back of the sheet (the page mirrored) showing through at ``share`` of its ink."""

    def bleed(gray: U8) -> U8:
        import cv2

        back = 255.0 - cv2.flip(gray, 1).astype(np.float64)
        return np.clip(gray.astype(np.float64) - share * back, 0, 255).astype(np.uint8)

    return bleed


def _blurred(gray: U8) -> U8:
    import cv2

    return np.asarray(cv2.GaussianBlur(gray, (0, 0), 3.0))


#: Condition name -> what it does to a 300 dpi page (uint8 (H, W) -> uint8).
CONDITIONS: dict[str, Callable[[U8], U8]] = {
    "as-is": lambda g: g,
    "150dpi": lambda g: _resize(g, 1 / 2),
    "100dpi": lambda g: _resize(g, 1 / 3),
    "75dpi": lambda g: _resize(g, 1 / 4),
    "600dpi": lambda g: _resize(g, 2),
    "black-frame": _framed(10),
    "grey-frame": _framed(125),
    "negative": lambda g: np.asarray(255 - g, np.uint8),
    "upside-down": lambda g: np.ascontiguousarray(np.rot90(g, 2)),
    "sideways-left": lambda g: np.ascontiguousarray(np.rot90(g, 1)),
    "sideways-right": lambda g: np.ascontiguousarray(np.rot90(g, 3)),
    "jpeg-25": _jpeg,
    "speckle-1%": _speckled,
    "bleed-through-15%": _bleed_through(0.15),
    "bleed-through-25%": _bleed_through(0.25),
    "blur-3px": _blurred,
}


def run(
    kind: str, files: list[Path], truth: dict[str, str], names: list[str]
) -> list[dict[str, Any]]:
    from hwr_batch.classify import load_classifier
    from hwr_batch.load import load_page
    from hwr_batch.pipeline import configure_worker, read_page
    from training.pagegen import cer

    configure_worker(1)
    charset = CHARSET_OF_KIND[kind]
    clf = load_classifier(charset, threads=1)
    pages = {p.name: load_page(p).gray for p in files}
    upper = kind != "digits"
    read_page(next(iter(pages.values())), charset, classifier=clf)  # warm up
    rows = []
    for name in names:
        edits = total = 0
        cpu = 0.0
        warnings: set[str] = set()
        for fname, gray in pages.items():
            page = CONDITIONS[name](gray)
            t = time.process_time()
            res = read_page(page, charset, classifier=clf)
            cpu += time.process_time() - t
            score = cer(tidy_text(res.text, upper=upper), tidy_text(truth[fname], upper=upper))
            edits, total = edits + score.errors, total + score.total
            warnings.update(w.split(":")[0] for w in res.warnings)
        rate = edits / total if total else 0.0
        rows.append(
            {
                "condition": name,
                "cer": rate,
                "errors": edits,
                "truth_chars": total,
                "cpu_s_per_page": cpu / len(pages),
                "warnings": sorted(warnings),
            }
        )
        print(f"{name}: {100 * rate:.2f}%", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    base = next((r for r in rows if r["condition"] == "as-is"), None)
    out = [
        f"{meta['pages']} {meta['kind']} pages (seed {meta['seed']}), read in-process on one "
        f"thread, {meta['host']}, load average {meta['loadavg_start']} at the start.",
        "",
        "| condition | CER | errors | CPU s/page | warnings |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        rel = ""
        if base is not None and r is not base and base["cer"] > 0:
            rel = f" ({r['cer'] / base['cer']:.2f}x)"
        out.append(
            f"| {r['condition']} | {100 * r['cer']:.2f}%{rel} | {r['errors']} / "
            f"{r['truth_chars']} | {r['cpu_s_per_page']:.3f} | "
            f"{'; '.join(r['warnings']) or '-'} |"
        )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_conditions",
        description="Read generated pages under the conditions real scans bring; report CER "
        "and CPU per condition.",
    )
    p.add_argument("--pages", type=int, default=6, help="pages (default: 6)")
    p.add_argument("--kind", choices=KINDS, default="digits", help="page kind (default: digits)")
    p.add_argument("--seed", type=int, default=0, help="page generator seed (default: 0)")
    p.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        # argparse formats help with %: the names' percent signs are doubled.
        help=f"comma-separated, from: {', '.join(CONDITIONS).replace('%', '%%')} (default: all)",
    )
    add_page_shape_args(p)
    p.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    p.add_argument(
        "--datasets",
        type=Path,
        help="data folder (default: $HWR_DATASETS, else ../shared/datasets)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONDITIONS]
    if unknown or args.pages < 1:
        print(
            f"bench_conditions: unknown condition(s) {unknown}"
            if unknown
            else "bench_conditions: --pages must be at least 1",
            file=sys.stderr,
        )
        return 2
    if args.datasets is not None:
        os.environ["HWR_DATASETS"] = str(args.datasets.resolve())
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_conditions_"))
    work.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": args.kind,
        "pages": args.pages,
        "seed": args.seed,
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "loadavg_start": round(os.getloadavg()[0], 2),
    }
    truth = generate_pages(
        args.kind, args.pages, args.seed, work / "pages", jobs=1, size=args.size, n_chars=args.chars
    )
    files = sorted((work / "pages").iterdir())
    files = [f for f in files if f.name in truth]
    rows = run(args.kind, files, truth, names)
    meta["loadavg_end"] = round(os.getloadavg()[0], 2)
    report = markdown(rows, meta)
    print(report)
    (work / "bench_conditions.json").write_text(
        json.dumps({"meta": meta, "conditions": rows}, indent=2), encoding="utf-8"
    )
    (work / "bench_conditions.md").write_text(report + "\n", encoding="utf-8")
    print(f"\nwritten: {work / 'bench_conditions.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
