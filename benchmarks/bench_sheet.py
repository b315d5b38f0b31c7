"""Real handwriting on one dense page: OpenCV's sheet of 5,000 digits, read as a user would.

``../shared/datasets/sheets/opencv_digits.png`` (from Debian's opencv-doc) holds 5,000
handwritten digits in 20x20 cells, 100 to a row, 50 rows, white ink on black: rows 0-4 are
0s, rows 5-9 are 1s, and so on. It is the only page of real (not generated) handwriting on
these machines, and it is dense (about 16 px characters touching their cell borders), so it
checks what the generated pages do not: real strokes, a negative, thousands of characters on
one page.

1. ``hwr-batch SHEET -o OUT --charset digits --jobs 1``, wall time from process start to the
   last file written, the page's JSON read back;
2. Tesseract 5.3 (``--psm 6``, digit whitelist) on the same file, and on its inverse (dark on
   light, which Tesseract expects), the better of the two reported;
3. CER (``training.pagegen.cer``: edit distance over the characters in reading order, line
   after line) against the known layout, errors per digit, lines found.

Usage: ``python benchmarks/bench_sheet.py [--sheet PATH] [--out DIR] [--no-tesseract]``.
It prints a markdown table and writes ``bench_sheet.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere, the repo not pip-installed
    sys.path.insert(0, str(REPO))

from benchmarks.bench_pages import (  # noqa: E402
    WHITELIST,
    _tesseract_one,
    run_cli,
    tesseract_version,
    tidy_text,
)

DEFAULT_SHEET = REPO.parent / "shared" / "datasets" / "sheets" / "opencv_digits.png"
#: The sheet's layout: ROWS rows of PER_ROW digits, ROWS_PER_DIGIT rows of each digit in turn.
ROWS, PER_ROW, ROWS_PER_DIGIT = 50, 100, 5


def sheet_truth() -> str:
    """The sheet's text: one line per row of cells, digits without spaces."""
    return "\n".join(str(r // ROWS_PER_DIGIT) * PER_ROW for r in range(ROWS))


def score(text: str, truth: str) -> dict[str, Any]:
    """CER of ``text`` against the sheet, errors per truth line's digit, lines found."""
    from training.pagegen import cer

    got, want = tidy_text(text), tidy_text(truth)
    res = cer(got, want)
    per_digit: dict[str, int] = {}
    if res.per_line:
        for r, (errors, _) in enumerate(res.per_line):
            d = str(r // ROWS_PER_DIGIT)
            per_digit[d] = per_digit.get(d, 0) + errors
    return {
        "cer": res.cer,
        "errors": res.errors,
        "truth_chars": res.total,
        "lines": len([ln for ln in got.split("\n") if ln.strip()]),
        "errors_per_digit": per_digit,
    }


def run_ours(sheet: Path, work: Path) -> dict[str, Any]:
    pages = work / "pages"
    pages.mkdir(parents=True, exist_ok=True)
    shutil.copy(sheet, pages / sheet.name)
    run = run_cli("digits", pages, work / "out", jobs=1)
    page_json = next((work / "out").glob("*.p001.json"))
    doc = json.loads(page_json.read_text(encoding="utf-8"))
    out = score(run.texts[sheet.name], sheet_truth())
    out.update(
        seconds=run.seconds,
        chars_read=run.chars_read,
        warnings=doc.get("warnings", []),
        peak_rss_mb=run.memory.max_peak_mb if run.memory is not None else None,
    )
    return out


def run_tesseract_both(sheet: Path, work: Path) -> dict[str, Any]:
    """Tesseract on the file and on its inverse; the better-scoring reading is reported."""
    import cv2

    gray = cv2.imread(str(sheet), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise RuntimeError(f"cannot read {sheet}")
    inverse = work / f"inverse_{sheet.name}"
    cv2.imwrite(str(inverse), 255 - gray)
    tried = {}
    for label, path in (("as is", sheet), ("inverted", inverse)):
        t0 = time.perf_counter()
        text = _tesseract_one(path, WHITELIST["digits"])
        seconds = time.perf_counter() - t0
        tried[label] = score(text, sheet_truth()) | {"seconds": seconds}
    best = min(tried, key=lambda k: tried[k]["errors"])
    return {"best": best, **tried[best], "tried": tried}


def markdown(ours: dict[str, Any], theirs: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines = [
        f"OpenCV digit sheet ({meta['sheet']}), {meta['host']}, load average "
        f"{meta['loadavg_start']} at the start. Tesseract: {meta['tesseract'] or 'not run'}.",
        "",
        "| reader | CER | errors / digits | lines | seconds | digits/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, r: dict[str, Any]) -> str:
        return (
            f"| {name} | {100 * r['cer']:.2f}% | {r['errors']} / {r['truth_chars']} | "
            f"{r['lines']} | {r['seconds']:.1f} | {r['truth_chars'] / r['seconds']:.0f} |"
        )

    lines.append(row("hwr-batch (the file as is)", ours))
    if theirs is not None:
        lines.append(row(f"tesseract ({theirs['best']})", theirs))
    lines.append("")
    lines.append(f"hwr-batch warnings: {ours['warnings'] or 'none'}")
    if ours["errors_per_digit"]:
        per = ", ".join(f"{d}: {n}" for d, n in sorted(ours["errors_per_digit"].items()))
        lines.append(f"hwr-batch errors per digit (500 each): {per}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_sheet",
        description="Read OpenCV's sheet of 5,000 handwritten digits with hwr-batch (and "
        "Tesseract); report CER and time.",
    )
    p.add_argument("--sheet", type=Path, default=DEFAULT_SHEET, help="the sheet PNG")
    p.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    p.add_argument("--no-tesseract", action="store_true", help="skip the Tesseract comparison")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.sheet.is_file():
        print(
            f"bench_sheet: no sheet at {args.sheet} (it comes with ../shared/datasets/sheets)",
            file=sys.stderr,
        )
        return 2
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_sheet_"))
    work.mkdir(parents=True, exist_ok=True)
    tess = None if args.no_tesseract else tesseract_version()
    meta = {
        "sheet": args.sheet.name,
        "host": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "loadavg_start": round(os.getloadavg()[0], 2),
        "tesseract": tess,
    }
    ours = run_ours(args.sheet, work / "hwr")
    theirs = run_tesseract_both(args.sheet, work) if tess else None
    meta["loadavg_end"] = round(os.getloadavg()[0], 2)
    report = markdown(ours, theirs, meta)
    print(report)
    (work / "bench_sheet.json").write_text(
        json.dumps({"meta": meta, "hwr-batch": ours, "tesseract": theirs}, indent=2),
        encoding="utf-8",
    )
    (work / "bench_sheet.md").write_text(report + "\n", encoding="utf-8")
    print(f"\nwritten: {work / 'bench_sheet.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
