"""Train and held-out splits of the three shipped models, built from ``../shared/datasets``.

Each source is read once (:mod:`training.datasets`), normalised, and cached as a compressed
``.npz`` under ``.cache/sources/`` in the repository (gitignored; ``$HWR_CACHE`` moves it); a
model's split is then a cheap selection over the cached sources. Building every cache takes
about 90 s on one free core (Chars74K's 1200x900 PNGs are two thirds of it), later loads take
about a second. The data folder is ``root=`` or the environment
variable ``HWR_DATASETS`` (default: ``<repo>/../shared/datasets``).

Held-out splits, by writer or source, never random rows (``groups`` say which is which):

=============  ==============================================  ================================
source         held out (split "test")                         group ("source/writer")
=============  ==============================================  ================================
mnist          the official 10,000-image test set              mnist/train, mnist/test
usps           the official 2,007-line ``zip.test.gz``         usps/train, usps/test
femnist        writers (clients) 3, 7 and 11 (client % 4 == 3)  femnist/c03 ...
kaggle_az      the whole ``az_sample_uniform.csv`` (balanced,   kaggle_az/uniform,
               115 a letter); training uses                     kaggle_az/original
               ``az_sample_original.csv`` minus every row
               whose pixels also appear in the uniform sample
chars74k       writers whose number % 5 == 0 (11 of 55)         chars74k/w017 ...
realcrops      running numbers 80-99 of every class (blocks     realcrops/b0 ... b9
               b8, b9: a writer proxy, see datasets.py)
canvas         the second export session, 2024-11-05 (the       canvas/s2024-11-04,
               only writer proxy in the canvas file names)      canvas/s2024-11-05
fonts          never (training only)                            font/<file stem>
=============  ==============================================  ================================

On top of that, :func:`load_split` drops from a training split every image whose normalised
pixels equal an image of the same model's test split (the two Kaggle samples share rows, and
a handful of identical images recur elsewhere), so no held-out image is trained on.

Ink polarity is fixed per source (dark on light: chars74k, realcrops, femnist; white on black:
canvas), not detected per image, and images with no ink after normalisation are dropped.

Models: ``digits`` (0-9) = mnist, usps, femnist and the digit classes of chars74k, realcrops,
canvas and fonts; ``letters`` (A-Z, small letters mapped to their capital) = kaggle_az,
chars74k, realcrops, canvas, fonts; ``alnum`` (0-9 A-Z) = all of them.

Run ``python -m training.sources build`` to build the caches, ``... report`` for per-source
counts, ``... export MODEL PATH`` for a single npz per model.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hwr_batch.errors import DataError
from training import datasets as ds
from training.data import LABEL_SETS, LabeledImages

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets"
DEFAULT_CACHE = REPO / ".cache" / "sources"
#: Bump when a reader, the normaliser or a split rule changes: old caches are then rebuilt.
CACHE_VERSION = 2

#: FEMNIST clients (writers) held out.
FEMNIST_HELD_OUT = frozenset({3, 7, 11})
#: Chars74K writers held out: number % 5 == 0.
CHARS74K_HELD_OUT_MOD = 5
#: realcrops blocks of running numbers held out (b8 = 80-89, b9 = 90-99).
REALCROPS_HELD_OUT = frozenset({"b8", "b9"})
#: Canvas export session held out.
CANVAS_HELD_OUT = "s2024-11-05"


def data_root(root: str | Path | None = None) -> Path:
    """The shared data folder: ``root``, else ``$HWR_DATASETS``, else ``../shared/datasets``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("HWR_DATASETS")
    return Path(env) if env else DEFAULT_ROOT


@dataclass(frozen=True)
class Part:
    """One cached source: images with a held-out flag per row (True = test split)."""

    data: LabeledImages
    held_out: npt.NDArray[np.bool_]


def _writer(groups: npt.NDArray[np.str_]) -> list[str]:
    return [g.rsplit("/", 1)[-1] for g in groups]


def _regroup(data: LabeledImages, source: str) -> LabeledImages:
    """Replace the reader's folder name with the short source name in every group."""
    groups = np.array([f"{source}/{w}" for w in _writer(data.groups)])
    return LabeledImages(data.images, data.labels, groups)


def build_mnist(root: Path) -> Part:
    m = root / "mnist"
    train = ds.read_idx(
        m / "train-images-idx3-ubyte.gz", m / "train-labels-idx1-ubyte.gz", group="mnist/train"
    )
    test = ds.read_idx(
        m / "t10k-images-idx3-ubyte.gz", m / "t10k-labels-idx1-ubyte.gz", group="mnist/test"
    )
    return _train_test(train, test)


def build_usps(root: Path) -> Part:
    train = ds.read_usps(root / "usps" / "zip.train.gz", group="usps/train")
    test = ds.read_usps(root / "usps" / "zip.test.gz", group="usps/test")
    return _train_test(train, test)


def _train_test(train: LabeledImages, test: LabeledImages) -> Part:
    held = np.r_[np.zeros(len(train), bool), np.ones(len(test), bool)]
    return Part(LabeledImages.concat([train, test]), held)


def build_femnist(root: Path) -> Part:
    folder = root / "femnist_digits"
    parts = []
    for client in sorted(folder.glob("client_*"), key=lambda p: int(p.name.split("_")[1])):
        data = ds.read_image_folder(client / "train", writer=ds.writer_femnist, dark_ink=True)
        parts.append(_regroup(data, "femnist"))
    data = LabeledImages.concat(parts)
    held = np.array([int(w[1:]) in FEMNIST_HELD_OUT for w in _writer(data.groups)])
    return Part(data, held)


def build_kaggle_az(root: Path) -> Part:
    letters = root / "letters"
    train = ds.read_kaggle_csv(letters / "az_sample_original.csv", group="kaggle_az/original")
    test = ds.read_kaggle_csv(letters / "az_sample_uniform.csv", group="kaggle_az/uniform")
    return _train_test(train, test)


def build_chars74k(root: Path) -> Part:
    data = ds.read_image_folder(
        root / "letters" / "chars74k_train", writer=ds.writer_chars74k, dark_ink=True
    )
    data = _regroup(data, "chars74k")
    held = np.array([int(w[1:]) % CHARS74K_HELD_OUT_MOD == 0 for w in _writer(data.groups)])
    return Part(data, held)


def build_realcrops(root: Path) -> Part:
    folder = root / "letters" / "realcrops_62class"
    data = ds.read_image_index(
        folder / "english.csv", writer=ds.writer_realcrops, skip_missing=True, dark_ink=True
    )
    data = _regroup(data, "realcrops")
    held = np.array([w in REALCROPS_HELD_OUT for w in _writer(data.groups)])
    return Part(data, held)


def build_canvas(root: Path) -> Part:
    # White ink on black. Per-image detection misreads 8 of its 5,234 images: narrow strokes
    # ('I', 'l') drawn edge to edge leave a border that is mostly ink.
    data = ds.read_image_folder(
        root / "letters" / "ateam_latin62", writer=ds.writer_canvas, dark_ink=False
    )
    data = _regroup(data, "canvas")
    held = np.array([w == CANVAS_HELD_OUT for w in _writer(data.groups)])
    return Part(data, held)


def build_fonts(root: Path) -> Part:
    from training.synth_fonts import render_font_glyphs

    data = render_font_glyphs()
    return Part(data, np.zeros(len(data), bool))


def _drop_blank(part: Part, name: str) -> Part:
    """Drop images with no ink after normalisation: not characters (realcrops has a 2x1-pixel
    ``SMALL_i_83.png``), and an all-black test image labelled 'I' would only add noise."""
    inked = part.data.images.reshape(len(part.data), -1).max(axis=1) > 0
    if inked.all():
        return part
    dropped = part.data.subset(~inked)
    log.warning("%s: dropped %d blank images (%s)", name, len(dropped), ", ".join(dropped.groups))
    return Part(part.data.subset(inked), part.held_out[inked])


#: name -> builder(root) -> Part.
SOURCES: dict[str, Callable[[Path], Part]] = {
    "mnist": build_mnist,
    "usps": build_usps,
    "femnist": build_femnist,
    "kaggle_az": build_kaggle_az,
    "chars74k": build_chars74k,
    "realcrops": build_realcrops,
    "canvas": build_canvas,
    "fonts": build_fonts,
}

_LETTER_SOURCES = ("kaggle_az", "chars74k", "realcrops", "canvas", "fonts")
MODEL_SOURCES: dict[str, tuple[str, ...]] = {
    "digits": ("mnist", "usps", "femnist", "chars74k", "realcrops", "canvas", "fonts"),
    "letters": _LETTER_SOURCES,
    "alnum": ("mnist", "usps", "femnist", *_LETTER_SOURCES),
}


def _normaliser_fingerprint() -> str:
    """Short hash of the normaliser's source: a changed normaliser invalidates every cache
    without anyone having to remember to bump CACHE_VERSION (cached images are its output)."""
    import importlib

    # importlib, not `import hwr_batch.normalize`: the package re-exports the function under
    # the module's name.
    module = importlib.import_module("hwr_batch.normalize")
    source = Path(str(module.__file__)).read_bytes()
    return hashlib.sha256(source).hexdigest()[:8]


def _cache_path(cache_dir: Path, name: str) -> Path:
    return cache_dir / f"{name}-v{CACHE_VERSION}-{_normaliser_fingerprint()}.npz"


def load_source(
    name: str,
    *,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
) -> Part:
    """One source, from its cache or built (and cached) from the data folder."""
    if name not in SOURCES:
        raise DataError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    cache_dir = Path(cache_dir or os.environ.get("HWR_CACHE") or DEFAULT_CACHE)
    path = _cache_path(cache_dir, name)
    if path.exists() and not rebuild:
        with np.load(path, allow_pickle=False) as z:
            return Part(LabeledImages(z["images"], z["labels"], z["groups"]), z["held_out"])
    base = data_root(root)
    if not base.is_dir():
        raise DataError(f"{base}: data folder not found (set HWR_DATASETS or pass root)")
    start = time.perf_counter()
    part = _drop_blank(SOURCES[name](base), name)
    log.info("built %s: %d images in %.1f s", name, len(part.data), time.perf_counter() - start)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One temporary name per process: parallel builders (benchmark page generators) must not
    # rename each other's half-written file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        images=part.data.images,
        labels=part.data.labels,
        groups=part.data.groups,
        held_out=part.held_out,
    )
    tmp.replace(path)
    return part


def _pixel_hashes(images: npt.NDArray[np.uint8]) -> list[bytes]:
    return [hashlib.blake2b(im.tobytes(), digest_size=16).digest() for im in images]


def model_labels(model: str, labels: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    """Labels as the model sees them: small letters map to capitals for letters and alnum."""
    if model == "digits":
        return labels
    return np.char.upper(labels)


def load_split(
    model: str,
    split: str,
    *,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    sources: tuple[str, ...] | None = None,
    map_case: bool = True,
) -> LabeledImages:
    """The train or held-out split of a shipped model.

    model: "digits", "letters" or "alnum"; split: "train" or "test".
    sources: restrict to these sources (default: :data:`MODEL_SOURCES` [model]).
    map_case: True = labels as the model sees them (small letters upper-cased for letters and
        alnum); False = as written ('a' stays 'a'), same rows.
    Returns images uint8 (N, 28, 28) white on black, labels str (N,), groups "source/writer"
    str (N,). A training split never holds an image whose pixels equal one in the model's
    test split.
    """
    if model not in MODEL_SOURCES:
        raise DataError(f"unknown model {model!r}; known: {', '.join(MODEL_SOURCES)}")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use train or test")
    names = sources or MODEL_SOURCES[model]
    charset = set(LABEL_SETS[model])
    train_parts, test_parts = [], []
    for name in names:
        part = load_source(name, root=root, cache_dir=cache_dir)
        labels = model_labels(model, part.data.labels)
        keep = np.isin(labels, list(charset))
        data = LabeledImages(
            part.data.images, labels if map_case else part.data.labels, part.data.groups
        )
        test_parts.append(data.subset(keep & part.held_out))
        train_parts.append(data.subset(keep & ~part.held_out))
    test = LabeledImages.concat(test_parts)
    if split == "test":
        return test
    train = LabeledImages.concat(train_parts)
    held = set(_pixel_hashes(test.images))
    fresh = np.array([h not in held for h in _pixel_hashes(train.images)], bool)
    if (~fresh).any():
        log.info("%s: dropped %d training images equal to held-out ones", model, (~fresh).sum())
    return train.subset(fresh)


def export_npz(
    model: str,
    path: str | Path,
    *,
    split: str | None = None,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Write a model's data as one compressed npz (load with ``np.load``, no pickle).

    split "train" or "test": that split only, as ``images`` uint8 (N, 28, 28), ``labels`` and
    ``groups`` (str (N,)), plus ``label_set`` (e.g. "0123456789") and ``split``: the form
    ``hwr-train fit``/``evaluate`` read for an .npz.
    split None: both in one file: ``images``/``labels``/``groups`` hold the TRAIN split and
    ``test_images``/``test_labels``/``test_groups`` the held-out one (read with
    :func:`load_npz`). A reader that only knows ``images`` then sees training rows, never
    held-out ones.
    """
    path = Path(path)
    splits = ("train", "test") if split is None else (split,)
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "label_set": np.array(LABEL_SETS[model]),
        "split": np.array(split or "train+test"),
    }
    for name in splits:
        data = load_split(model, name, root=root, cache_dir=cache_dir)
        prefix = "test_" if split is None and name == "test" else ""
        arrays[prefix + "images"] = data.images
        arrays[prefix + "labels"] = data.labels
        arrays[prefix + "groups"] = data.groups
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
    return path


def load_npz(path: str | Path, split: str = "train") -> LabeledImages:
    """Read an :func:`export_npz` file -> the rows of ``split`` ("train" or "test")."""
    with np.load(path, allow_pickle=False) as z:
        kind = str(z["split"]) if "split" in z.files else "train"
        if kind == "train+test":
            prefix = "test_" if split == "test" else ""
        elif kind != split:
            raise DataError(f"{path}: holds the {kind} split, not {split}")
        else:
            prefix = ""
        return LabeledImages(
            z[prefix + "images"], z[prefix + "labels"].astype(str), z[prefix + "groups"].astype(str)
        )


def split_report(model: str, **kw: str | Path | None) -> dict[str, dict[str, int]]:
    """Per source: {"train": n, "test": n} of a model's splits (after deduplication)."""
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "test"):
        data = load_split(model, split, **kw)  # type: ignore[arg-type]
        sources, n = np.unique([g.split("/", 1)[0] for g in data.groups], return_counts=True)
        for s, k in zip(sources, n, strict=True):
            counts.setdefault(str(s), {"train": 0, "test": 0})[split] = int(k)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.sources", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", help="data folder (default $HWR_DATASETS or ../shared/datasets)")
    parser.add_argument("--cache", help="cache folder (default .cache/sources)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or rebuild) the source caches")
    b.add_argument("sources", nargs="*", default=list(SOURCES))
    b.add_argument("--rebuild", action="store_true")
    r = sub.add_parser("report", help="per-source train/test counts of each model")
    r.add_argument("models", nargs="*", default=list(MODEL_SOURCES))
    e = sub.add_parser("export", help="write one npz with both splits of a model")
    e.add_argument("model", choices=list(MODEL_SOURCES))
    e.add_argument("path")
    e.add_argument(
        "--split", choices=["train", "test"], help="one split only (default: both in one file)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kw = {"root": args.root, "cache_dir": args.cache}
    try:
        if args.cmd == "build":
            for name in args.sources:
                start = time.perf_counter()
                part = load_source(name, rebuild=args.rebuild, **kw)
                print(
                    f"{name}: {len(part.data)} images ({int(part.held_out.sum())} held out), "
                    f"{time.perf_counter() - start:.1f} s"
                )
        elif args.cmd == "report":
            for model in args.models:
                print(f"{model}:")
                for source, n in split_report(model, **kw).items():
                    print(f"  {source:10s} train {n['train']:6d}  test {n['test']:6d}")
        else:
            out = export_npz(args.model, args.path, split=args.split, **kw)
            print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return int(err.exit_code)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
