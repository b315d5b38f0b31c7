"""``hwr-train convert``: a Kaggle-format CSV to a folder of PNGs per class, and back.

CSV -> folder (:func:`csv_to_folder`): every row becomes ``<out>/<class>/r<line>.png``, a
28x28 8-bit gray PNG with the row's pixels unchanged (no normalisation: a format change, not a
preprocessing step). ``<class>`` is the character (``A``, ``7``); an unlabeled file (the
digit-recognizer ``test.csv``) gives flat files ``<out>/r<line>.png``. A ``convert.json`` in the
folder records the header and label numbering, so converting back gives the same CSV.

Folder -> CSV (:func:`folder_to_csv`): class sub-folders named as
:func:`training.datasets.read_image_folder` reads them (``A``, ``A_caps``, ``u41``, ``7``),
rows ordered by the line number in the file name when there is one (``r000012.png``), then by
class and name. A 28x28 single-channel image
is written as it is; any other image (a Chars74K 1200x900 PNG, a photographed crop) goes
through :func:`hwr_batch.normalize.normalize` (polarity detected per image) so the CSV keeps
the Kaggle convention, white ink on black; ``normalize=True`` forces that for every image.

Bad data stops with one line naming the file and the line or image (:class:`DataError`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from hwr_batch.errors import BadArguments, DataError, HwrError
from training import datasets as ds

MANIFEST = "convert.json"
_ROW_FILE = re.compile(r"^r(\d+)$")


def _label_alphabet(label_map: ds.LabelMap | str, has_header: bool) -> tuple[str, int]:
    if label_map == "auto":
        label_map = "digits" if has_header else "letters"
    resolved = ds._resolve_map(label_map)
    if resolved is None:
        raise BadArguments("a label map is needed (digits, letters, or an alphabet)")
    return resolved


def csv_to_folder(
    csv_path: str | Path,
    outdir: str | Path,
    *,
    label_map: ds.LabelMap | str = "auto",
    force: bool = False,
    chunk_rows: int = 20000,
) -> int:
    """Write every row of a Kaggle-format CSV as a PNG; return the number of images.

    label_map: "auto" (A-Z for a headerless file, 0-9 for one with a ``label`` header), a
        :data:`training.datasets.LABEL_MAPS` name, or an alphabet string.
    force: replace ``outdir`` when it exists. The folder appears only when complete.
    """
    csv_path, outdir = Path(csv_path), Path(outdir)
    if outdir.exists() and any(outdir.iterdir()) and not force:
        raise BadArguments(f"{outdir}: exists and is not empty (use --force to replace it)")
    has_header, labeled, _ = ds.sniff_kaggle_csv(csv_path)
    alphabet, first = _label_alphabet(label_map, has_header)
    partial = outdir.with_name(outdir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    count = 0
    made: set[str] = set()
    try:
        for raw, pixels, line in ds.iter_kaggle_csv(csv_path, chunk_rows=chunk_rows):
            if labeled:
                chars = ds._map_labels(raw, (alphabet, first), csv_path, line, "line")
            for i, image in enumerate(pixels):
                folder = partial
                if labeled:
                    folder = partial / str(chars[i])
                    if folder.name not in made:
                        folder.mkdir(exist_ok=True)
                        made.add(folder.name)
                Image.fromarray(image, mode="L").save(folder / f"r{line + i:07d}.png")
                count += 1
        manifest = {
            "source": csv_path.name,
            "header": has_header,
            "labeled": labeled,
            "alphabet": alphabet,
            "first_label": first,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if outdir.exists():
        shutil.rmtree(outdir)
    partial.rename(outdir)
    return count


def _row_image(path: Path, normalize: bool) -> npt.NDArray[np.uint8]:
    """An image file -> uint8 (28, 28) for a CSV row (see module docstring)."""
    if not normalize:
        try:
            with Image.open(path) as im:
                if im.size == (28, 28) and im.mode == "L":
                    return np.asarray(im).copy()
        except OSError as e:
            raise DataError(f"{path}: unreadable image: {e}") from e
    gray = ds.load_gray(path)
    return ds.normalize_to_u8(gray, dark_ink=ds.is_dark_ink(gray))


def folder_to_csv(
    folder: str | Path,
    csv_path: str | Path,
    *,
    label_map: ds.LabelMap | str | None = None,
    header: bool | None = None,
    normalize: bool = False,
    force: bool = False,
) -> int:
    """Write a folder of class sub-folders (or flat images: unlabeled) as a Kaggle CSV.

    label_map: characters -> integer labels; default: the folder's ``convert.json``, else
        "letters" when every class is a letter, "digits" when every class is a digit.
    header: write ``label,pixel0..pixel783``; default: ``convert.json``, else no header.
    Returns the number of rows. The CSV is written to a temporary name and renamed.
    """
    folder, csv_path = Path(folder), Path(csv_path)
    if not folder.is_dir():
        raise BadArguments(f"{folder}: not a folder")
    if csv_path.exists() and not force:
        raise BadArguments(f"{csv_path}: exists (use --force to replace it)")
    manifest: dict[str, Any] = {}
    if (folder / MANIFEST).is_file():
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DataError(f"{folder / MANIFEST}: unreadable: {e}") from e

    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries: list[tuple[Path, str | None]] = []
    if class_dirs:
        for d in class_dirs:
            try:
                char = ds.label_from_folder(d.name)
            except ValueError as e:
                raise DataError(f"{d}: {e}") from None
            entries.extend((p, char) for p in ds._iter_image_files(d))
    else:
        entries = [(p, None) for p in ds._iter_image_files(folder)]
    if not entries:
        raise DataError(f"{folder}: no images")
    labeled = entries[0][1] is not None

    alphabet, first = "", 0
    if labeled:
        if label_map is None and "alphabet" in manifest:
            alphabet, first = str(manifest["alphabet"]), int(manifest["first_label"])
        else:
            if label_map is None:
                chars = {lab for _, lab in entries if lab is not None}
                label_map = "digits" if all(c.isdigit() for c in chars) else "letters"
            resolved = ds._resolve_map(label_map)
            assert resolved is not None
            alphabet, first = resolved
    if header is None:
        header = bool(manifest.get("header", False))

    def order(entry: tuple[Path, str | None]) -> tuple[int, str, str]:
        m = _ROW_FILE.match(entry[0].stem)
        return (int(m[1]) if m else sys.maxsize, entry[1] or "", entry[0].name)

    entries.sort(key=order)
    tmp = csv_path.with_name(csv_path.name + ".partial")
    try:
        with tmp.open("w", encoding="ascii", newline="") as out:
            if header:
                cols = [f"pixel{i}" for i in range(28 * 28)]
                out.write(",".join((["label"] if labeled else []) + cols) + "\n")
            for path, label in entries:
                pixels = _row_image(path, normalize).reshape(-1)
                fields = [str(v) for v in pixels.tolist()]
                if label is not None:
                    if label not in alphabet:
                        # Small letters go to capitals when the numbering has no small ones.
                        if label.upper() in alphabet and not any(c.islower() for c in alphabet):
                            label = label.upper()
                        else:
                            raise DataError(
                                f"{path}: class {label!r} is not in the label set {alphabet!r}"
                            )
                    fields.insert(0, str(alphabet.index(label) + first))
                out.write(",".join(fields) + "\n")
        tmp.replace(csv_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(entries)


def add_convert_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``convert`` to an argparse sub-command set (``hwr-train``'s)."""
    p = subparsers.add_parser(
        "convert",
        help="Kaggle-format CSV <-> folder of PNGs per class",
        description="CSV -> folder of PNGs per class when INPUT is a file; folder -> CSV when "
        "INPUT is a folder.",
    )
    p.add_argument("input", help="a Kaggle-format .csv, or a folder of class sub-folders")
    p.add_argument("output", help="the folder (from a CSV) or the .csv (from a folder) to write")
    p.add_argument(
        "--labels",
        default=None,
        help="label numbering: digits, letters, emnist-byclass, ... or an alphabet "
        "(default: A-Z for a CSV without header, 0-9 with one; from convert.json going back)",
    )
    hdr = p.add_mutually_exclusive_group()
    hdr.add_argument(
        "--header",
        dest="header",
        action="store_true",
        default=None,
        help="folder -> CSV: write the label,pixel0..pixel783 header (default: as convert.json)",
    )
    hdr.add_argument("--no-header", dest="header", action="store_false", help="no header line")
    p.add_argument(
        "--normalize",
        action="store_true",
        help="folder -> CSV: pass every image through the reader's normaliser",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    return p


def run_convert(args: argparse.Namespace) -> int:
    """Run the ``convert`` sub-command; bad data is one line on stderr. Returns an exit code."""
    src, dst = Path(args.input), Path(args.output)
    try:
        if src.is_dir():
            n = folder_to_csv(
                src,
                dst,
                label_map=args.labels,
                header=args.header,
                normalize=args.normalize,
                force=args.force,
            )
            print(f"wrote {n} rows to {dst}")
        elif src.is_file():
            n = csv_to_folder(src, dst, label_map=args.labels or "auto", force=args.force)
            print(f"wrote {n} images to {dst}")
        else:
            raise BadArguments(f"{src}: no such file or folder")
    except HwrError as e:
        print(f"hwr-train convert: error: {e}", file=sys.stderr)
        return int(e.exit_code)
    except OSError as e:
        print(f"hwr-train convert: error: {e}", file=sys.stderr)
        return int(BadArguments.exit_code)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m training.convert INPUT OUTPUT``: the sub-command on its own."""
    parser = argparse.ArgumentParser(prog="python -m training.convert")
    sub = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(sub)
    return run_convert(parser.parse_args(["convert", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
