"""Model splits: held-out rules by writer/source, deduplication, caching and npz export.

Runs on a tiny copy of the shared folder's layout made here; one check on the real folder.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hwr_batch.errors import DataError
from training import sources
from training.data import LabeledImages
from training.synth_fonts import find_handwriting_fonts, render_font_glyphs

# Normalisation removes shifts, so images that must differ differ in face and weight.
_FACES = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
)


def glyph(char: str, seed: int = 0) -> np.ndarray:
    """uint8 (28, 28) white-on-black ``char``; ``seed`` picks face and weight."""
    img = np.zeros((28, 28), np.uint8)
    face, weight = _FACES[seed % 5], 1 + (seed // 5) % 2
    cv2.putText(img, char, (5, 22), face, 0.7, 255, weight)
    return img


def dark_png(path: Path, char: str, seed: int = 0, invert: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((64, 48), 255, np.uint8)
    face, weight = _FACES[seed % 5], 2 + (seed // 5) % 2
    cv2.putText(img, char, (6, 50), face, 1.4, 0, weight)
    Image.fromarray(255 - img if invert else img).save(path)


def idx_gz(path: Path, array: np.ndarray) -> None:
    head = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(head + array.astype(np.uint8).tobytes()))


def usps_gz(path: Path, digits: str) -> None:
    lines = []
    for i, d in enumerate(digits):
        ink = cv2.resize(glyph(d, i), (16, 16), interpolation=cv2.INTER_AREA) / 255.0
        lines.append(f"{d}.0000 " + " ".join(f"{v * 2 - 1:.4f}" for v in ink.reshape(-1)))
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


def kaggle_csv(path: Path, rows: list[tuple[str, int]]) -> None:
    text = ""
    for ch, seed in rows:
        text += ",".join(str(v) for v in [ord(ch) - 65, *glyph(ch, seed).reshape(-1)]) + "\n"
    path.write_text(text)


@pytest.fixture
def fake_root(tmp_path) -> Path:
    """The shared data folder's layout, a few images per source."""
    root = tmp_path / "datasets"
    (root / "mnist").mkdir(parents=True)
    (root / "README.md").write_text("fake\n")
    for prefix, digits in (("train", "0123"), ("t10k", "45")):
        idx_gz(
            root / "mnist" / f"{prefix}-images-idx3-ubyte.gz", np.stack([glyph(d) for d in digits])
        )
        idx_gz(
            root / "mnist" / f"{prefix}-labels-idx1-ubyte.gz", np.array([int(d) for d in digits])
        )
    (root / "usps").mkdir()
    usps_gz(root / "usps" / "zip.train.gz", "678")
    usps_gz(root / "usps" / "zip.test.gz", "9")
    for client, digit in ((0, "1"), (3, "2"), (7, "5"), (10, "6")):
        folder = root / "femnist_digits" / f"client_{client}" / "train" / digit
        dark_png(folder / f"{digit}_{digit}_{client}.png", digit, client)
    letters = root / "letters"
    letters.mkdir()
    # Row ("O", 1) is in both Kaggle samples: it must not be trained on.
    kaggle_csv(letters / "az_sample_original.csv", [("O", 1), ("O", 2), ("S", 3)])
    kaggle_csv(letters / "az_sample_uniform.csv", [("O", 1), ("Q", 4)])
    c74 = letters / "chars74k_train"
    dark_png(c74 / "A_caps" / "A_caps.001.png", "A", 1)
    dark_png(c74 / "A_caps" / "A_caps.005.png", "A", 5)  # writer 5: held out
    dark_png(c74 / "e" / "e.012.png", "e", 12)
    dark_png(c74 / "3" / "3.010.png", "3", 10)  # writer 10: held out
    rc = letters / "realcrops_62class"
    dark_png(rc / "PNG" / "CAP_B_3.png", "B", 3)
    dark_png(rc / "PNG" / "SMALL_h_85.PNG", "h", 85)  # running number 85: held out
    dark_png(rc / "PNG" / "DIGIT_4_12.png", "4", 12)
    (rc / "english.csv").write_text(
        "image,label\nPNG/CAP_B_3.png,1\nPNG/SMALL_h_85.png,33\nPNG/DIGIT_4_12.png,56\n"
    )
    canvas = letters / "ateam_latin62"
    dark_png(canvas / "u43" / "u43-1730734299087.png", "C", 2, invert=True)  # 2024-11-04
    dark_png(canvas / "u64" / "u64-1730826133994.png", "d", 3, invert=True)  # 2024-11-05
    dark_png(canvas / "u37" / "u37-1730734299990.png", "7", 4, invert=True)
    return root


@pytest.fixture
def no_fonts(monkeypatch):
    """Fonts render the whole installed set (seconds): swap in two glyphs."""

    def two_glyphs(root: Path) -> sources.Part:
        data = LabeledImages(
            np.stack([glyph("K"), glyph("9")]), np.array(["K", "9"]), np.array(["font/x"] * 2)
        )
        return sources.Part(data, np.zeros(2, bool))

    monkeypatch.setitem(sources.SOURCES, "fonts", two_glyphs)


def groups_of(data: LabeledImages) -> list[str]:
    return sorted(set(data.groups.tolist()))


def test_letter_splits_by_writer_and_source(fake_root, tmp_path, no_fonts):
    cache = tmp_path / "cache"
    test = sources.load_split("letters", "test", root=fake_root, cache_dir=cache)
    train = sources.load_split("letters", "train", root=fake_root, cache_dir=cache)
    assert groups_of(test) == [
        "canvas/s2024-11-05",
        "chars74k/w005",
        "kaggle_az/uniform",
        "realcrops/b8",
    ]
    assert groups_of(train) == [
        "canvas/s2024-11-04",
        "chars74k/w001",
        "chars74k/w012",
        "font/x",
        "kaggle_az/original",
        "realcrops/b0",
    ]
    # Small letters are capitals to the model; digits are not letters.
    assert sorted(test.labels.tolist()) == ["A", "D", "H", "O", "Q"]
    assert sorted(train.labels.tolist()) == ["A", "B", "C", "E", "K", "O", "S"]
    # The Kaggle row present in both samples stays in the test split only.
    held = {im.tobytes() for im in test.images}
    assert not any(im.tobytes() in held for im in train.images)
    assert (train.groups == "kaggle_az/original").sum() == 2
    as_written = sources.load_split(
        "letters", "test", root=fake_root, cache_dir=cache, map_case=False
    )
    assert sorted(as_written.labels.tolist()) == ["A", "O", "Q", "d", "h"]


def test_digit_and_alnum_splits(fake_root, tmp_path, no_fonts):
    kw = {"root": fake_root, "cache_dir": tmp_path / "cache"}
    test = sources.load_split("digits", "test", **kw)
    train = sources.load_split("digits", "train", **kw)
    assert sorted(test.labels.tolist()) == ["2", "3", "4", "5", "5", "9"]
    assert "femnist/c03" in test.groups and "femnist/c07" in test.groups
    assert "mnist/test" in test.groups and "usps/test" in test.groups
    assert sorted(train.labels.tolist()) == list("011234667789")
    assert {"femnist/c00", "femnist/c10", "canvas/s2024-11-04"} <= set(train.groups)

    alnum_test = sources.load_split("alnum", "test", **kw)
    assert sorted(alnum_test.labels.tolist()) == list("234559ADHOQ")
    with pytest.raises(DataError, match="unknown model"):
        sources.load_split("greek", "train", **kw)
    with pytest.raises(DataError, match="unknown split"):
        sources.load_split("digits", "val", **kw)


def test_cache_is_reused_and_exports(fake_root, tmp_path, no_fonts, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HWR_DATASETS", str(fake_root))
    first = sources.load_split("letters", "train", cache_dir=cache)
    assert sources._cache_path(cache, "chars74k").is_file()
    assert not list(cache.glob("*.tmp.npz"))  # no temporary file left behind
    # Built once: with the data folder gone, the cache still answers.
    monkeypatch.setenv("HWR_DATASETS", str(tmp_path / "gone"))
    again = sources.load_split("letters", "train", cache_dir=cache)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.groups.tolist() == again.groups.tolist()
    with pytest.raises(DataError, match="data folder not found"):
        sources.load_split("letters", "train", cache_dir=tmp_path / "empty")

    both = sources.export_npz("letters", tmp_path / "letters.npz", cache_dir=cache)
    with np.load(both) as z:
        assert str(z["label_set"]) == "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        assert len(z["images"]) == len(first) and "test_images" in z.files
    np.testing.assert_array_equal(sources.load_npz(both, "train").images, first.images)
    test = sources.load_npz(both, "test")
    assert groups_of(test)[0] == "canvas/s2024-11-05"

    only_test = sources.export_npz("letters", tmp_path / "lt.npz", split="test", cache_dir=cache)
    with np.load(only_test) as z:
        assert sorted(z.files) == ["groups", "images", "label_set", "labels", "split"]
    assert sources.load_npz(only_test, "test").labels.tolist() == test.labels.tolist()
    with pytest.raises(DataError, match="holds the test split"):
        sources.load_npz(only_test, "train")


def test_cli_report(fake_root, tmp_path, no_fonts, capsys):
    args = ["--root", str(fake_root), "--cache", str(tmp_path / "c")]
    assert sources.main([*args, "report", "letters"]) == 0
    out = capsys.readouterr().out
    assert "chars74k   train      2  test      1" in out
    assert (
        sources.main(
            ["--root", str(tmp_path / "none"), "--cache", str(tmp_path / "d"), "build", "usps"]
        )
        == 4
    )
    assert "data folder not found" in capsys.readouterr().err


def test_font_glyphs():
    fonts = find_handwriting_fonts()
    if not fonts:
        pytest.skip("no handwriting fonts installed (fonts-dkg-handwriting, ...)")
    data = render_font_glyphs(fonts[:1], chars="Ag7\ue001", variants=((48, 0), (48, 2)))
    # The private-use character has no glyph in a handwriting font: dropped, not a box.
    assert data.labels.tolist() == ["A", "A", "g", "g", "7", "7"]
    assert set(data.groups) == {f"font/{fonts[0].stem}"}
    assert data.images.max() == 255 and (data.images[:, 0, :] == 0).all()
    # The heavier pen gives more ink.
    assert data.images[1].astype(int).sum() > data.images[0].astype(int).sum()


@pytest.mark.slow
def test_real_splits_have_no_shared_images(shared_datasets):
    """Builds every cache from the shared folder when absent (~90 s on one core)."""
    for model in ("digits", "letters", "alnum"):
        train = sources.load_split(model, "train", root=shared_datasets)
        test = sources.load_split(model, "test", root=shared_datasets)
        held = {im.tobytes() for im in test.images}
        assert not any(im.tobytes() in held for im in train.images)
        assert not any(g.startswith("font/") for g in test.groups)
        assert len(test) > 1000
