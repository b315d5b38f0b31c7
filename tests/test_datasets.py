"""Dataset readers: every format and every bad-data case, on tiny fixtures made here."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hwr_batch.errors import DataError
from hwr_batch.normalize import normalize
from training import datasets as ds


def glyph(char: str, size: int = 28, thickness: int = 2) -> np.ndarray:
    """uint8 (size, size): ``char`` drawn white on black, MNIST polarity."""
    img = np.zeros((size, size), np.uint8)
    scale = size / 36
    (w, h), _ = cv2.getTextSize(char, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    org = ((size - w) // 2, (size + h) // 2)
    cv2.putText(img, char, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    return img


def expected(raw: np.ndarray, dark_ink: bool) -> np.ndarray:
    return np.round(normalize(raw, dark_ink=dark_ink) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------- idx


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@pytest.fixture
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    return np.stack([glyph(str(d)) for d in labels]), labels


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reads_images_and_labels(tmp_path, digit_images, compress):
    images, labels = digit_images
    suffix = ".gz" if compress else ""
    img = write_idx(tmp_path / f"t-images-idx3-ubyte{suffix}", images, compress=compress)
    lab = write_idx(tmp_path / f"t-labels-idx1-ubyte{suffix}", labels, compress=compress)
    data = ds.read_idx(img, lab)
    assert data.images.shape == (5, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.tolist() == ["3", "1", "4", "1", "5"]
    assert set(data.groups) == {"t-images-idx3-ubyte"}
    # MNIST-style sources go through the reader's normaliser with dark_ink=False.
    for raw, got in zip(images, data.images, strict=True):
        np.testing.assert_array_equal(got, expected(raw, dark_ink=False))
    assert ds.read_dataset(img).labels.tolist() == data.labels.tolist()


def test_idx_truncated_names_file_and_record(tmp_path, digit_images):
    images, _ = digit_images
    path = write_idx(tmp_path / "cut-images-idx3-ubyte", images)
    full = path.read_bytes()
    path.write_bytes(full[: 16 + 2 * 784 + 100])  # two whole records, then part of the third
    with pytest.raises(DataError, match=r"cut-images-idx3-ubyte: truncated at record 2 of 5"):
        ds.read_idx(path)


def test_idx_gz_stream_cut_short(tmp_path, digit_images):
    images, _ = digit_images
    path = write_idx(tmp_path / "cut-images-idx3-ubyte.gz", images, compress=True)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut-images-idx3-ubyte.gz: truncated at record \d of 5"):
        ds.read_idx(path)


def test_idx_bad_magic_and_label_count(tmp_path, digit_images):
    images, labels = digit_images
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(b"\x1f\x00\x08\x03" + bytes(20))
    with pytest.raises(DataError, match="not an idx file"):
        ds.read_idx(bad)
    img = write_idx(tmp_path / "a-images-idx3-ubyte", images)
    with pytest.raises(DataError, match="expected an idx file with 1 dimensions"):
        ds.read_idx(img, img)
    lab = write_idx(tmp_path / "a-labels-idx1-ubyte", labels[:4])
    with pytest.raises(DataError, match="4 labels for 5 images"):
        ds.read_idx(img, lab)


def test_emnist_transposed_and_letter_numbering(tmp_path):
    letters = "LJFR"
    upright = np.stack([glyph(c) for c in letters])
    stored = upright.transpose(0, 2, 1)  # how EMNIST stores its images
    img = write_idx(tmp_path / "emnist-letters-train-images-idx3-ubyte.gz", stored, compress=True)
    lab = write_idx(
        tmp_path / "emnist-letters-train-labels-idx1-ubyte.gz",
        np.array([12, 10, 6, 18], np.uint8),  # EMNIST letters are 1..26
        compress=True,
    )
    data = ds.read_idx(img, lab, transpose=True, label_map="emnist-letters")
    assert data.labels.tolist() == list(letters)
    for raw, got in zip(upright, data.images, strict=True):
        np.testing.assert_array_equal(got, expected(raw, dark_ink=False))
    # Without the flag the images come out mirrored about the diagonal: not the same.
    plain = ds.read_idx(img, lab, label_map="emnist-letters")
    assert not np.array_equal(plain.images, data.images)
    # read_dataset recognises EMNIST from the name and sets both.
    auto = ds.read_dataset(img)
    np.testing.assert_array_equal(auto.images, data.images)
    assert auto.labels.tolist() == list(letters)

    write_idx(lab, np.array([12, 0, 6, 18], np.uint8), compress=True)
    with pytest.raises(DataError, match=r"record 1: label 0 out of range 1\.\.26"):
        ds.read_idx(img, lab, transpose=True, label_map="emnist-letters")


def test_emnist_byclass_numbering(tmp_path):
    img = write_idx(tmp_path / "x-images-idx3-ubyte", np.stack([glyph("a")] * 3))
    lab = write_idx(tmp_path / "x-labels-idx1-ubyte", np.array([9, 10, 36], np.uint8))
    assert ds.read_idx(img, lab, label_map="emnist-byclass").labels.tolist() == ["9", "A", "a"]


# ------------------------------------------------------------------------------- Kaggle CSV


def csv_row(label: int | None, image: np.ndarray) -> str:
    values = ([] if label is None else [label]) + image.reshape(-1).tolist()
    return ",".join(str(v) for v in values)


def write_az(path: Path, rows: list[tuple[int, str]]) -> Path:
    path.write_text("".join(csv_row(lab, glyph(ch)) + "\n" for lab, ch in rows))
    return path


def test_az_csv_without_header_keeps_first_row(tmp_path):
    path = write_az(tmp_path / "az.csv", [(0, "A"), (1, "B"), (25, "Z")])
    data = ds.read_kaggle_csv(path)
    assert data.labels.tolist() == ["A", "B", "Z"]
    np.testing.assert_array_equal(data.images[0], expected(glyph("A"), dark_ink=False))
    assert ds.read_dataset(path).labels.tolist() == ["A", "B", "Z"]


def test_digit_recognizer_train_and_test(tmp_path):
    header = ",".join(["label"] + [f"pixel{i}" for i in range(784)])
    train = tmp_path / "train.csv"
    train.write_text(header + "\n" + csv_row(7, glyph("7")) + "\n" + csv_row(2, glyph("2")) + "\n")
    data = ds.read_kaggle_csv(train)
    assert data.labels.tolist() == ["7", "2"]

    test = tmp_path / "test.csv"
    test.write_text(
        ",".join(f"pixel{i}" for i in range(784))
        + "\n"
        + "\n".join(csv_row(None, glyph(c)) for c in "305")
        + "\n"
    )
    unlabeled = ds.read_kaggle_csv(test)
    assert len(unlabeled) == 3 and unlabeled.labels.tolist() == ["", "", ""]
    np.testing.assert_array_equal(unlabeled.images[2], expected(glyph("5"), dark_ink=False))


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (",".join(["3"] + ["0"] * 783), r"line 3: expected 785 columns, found 784"),
        (",".join(["3"] + ["0"] * 785), r"line 3: expected 785 columns, found 786"),
        (",".join(["26"] + ["0"] * 784), r"line 3: label 26 out of range 0\.\.25"),
        (",".join(["-1"] + ["0"] * 784), r"line 3: label -1 out of range 0\.\.25"),
        (",".join(["3"] + ["0.5"] + ["0"] * 783), r"line 3: column 2: '0.5' is not an integer"),
        (",".join(["C"] + ["0"] * 784), r"line 3: column 1: 'C' is not an integer"),
        (",".join(["3"] + ["300"] + ["0"] * 783), r"line 3: pixel 0 = 300 outside 0\.\.255"),
        (",".join(["3", "1", ""] + ["0"] * 782), r"line 3: column 3 is empty"),
    ],
    ids=["short", "long", "label26", "label-1", "float", "letter", "pixel300", "blank"],
)
def test_kaggle_bad_rows_name_file_and_line(tmp_path, bad_line, message):
    path = write_az(tmp_path / "az.csv", [(0, "A"), (1, "B")])
    with path.open("a") as fh:
        fh.write(bad_line + "\n" + csv_row(2, glyph("C")) + "\n")
    with pytest.raises(DataError, match=rf"az\.csv: {message}"):
        ds.read_kaggle_csv(path)


def test_kaggle_line_numbers_across_chunks(tmp_path):
    path = write_az(tmp_path / "az.csv", [(i, "X") for i in range(6)])
    with path.open("a") as fh:
        fh.write(",".join(["99"] + ["0"] * 784) + "\n")
    with pytest.raises(DataError, match=r"line 7: label 99"):
        ds.read_kaggle_csv(path, chunk_rows=2)
    header = ",".join(["label"] + [f"pixel{i}" for i in range(784)])
    with_header = tmp_path / "train.csv"
    with_header.write_text(header + "\n" + "\n".join(csv_row(1, glyph("1")) for _ in range(4)))
    with with_header.open("a") as fh:
        fh.write("\n" + ",".join(["1"] * 700) + "\n")
    with pytest.raises(DataError, match=r"line 6: expected 785 columns, found 700"):
        ds.read_kaggle_csv(with_header, chunk_rows=3)


def test_kaggle_first_line_wrong_width(tmp_path):
    path = tmp_path / "narrow.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(DataError, match=r"narrow\.csv: line 1: expected 784 columns"):
        ds.read_kaggle_csv(path)


# ------------------------------------------------------------------------------ image files


def save_dark_on_light(path: Path, char: str, size: tuple[int, int] = (60, 80)) -> np.ndarray:
    """A larger dark-ink-on-white PNG of ``char`` (like Chars74K); returns its gray pixels."""
    h, w = size
    img = np.full((h, w), 255, np.uint8)
    cv2.putText(img, char, (w // 5, h * 3 // 4), cv2.FONT_HERSHEY_SIMPLEX, h / 40, 0, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return img


def test_label_from_folder_names():
    assert ds.label_from_folder("A_caps") == "A"
    assert ds.label_from_folder("a") == "a"
    assert ds.label_from_folder("0") == "0"
    assert ds.label_from_folder("u41") == "A"
    assert ds.label_from_folder("u7a") == "z"
    assert ds.label_from_folder("u30") == "0"
    assert ds.label_from_folder("Sample011") == "A"
    assert ds.label_from_folder("Sample037") == "a"
    for bad in ("caps", "u20", "Sample099", "AB"):
        with pytest.raises(ValueError):
            ds.label_from_folder(bad)


def test_image_folder_labels_polarity_and_writers(tmp_path):
    root = tmp_path / "set"
    a_caps = save_dark_on_light(root / "A_caps" / "A_caps.017.png", "A")
    save_dark_on_light(root / "a" / "a.005.png", "a")
    save_dark_on_light(root / "0" / "0.001.png", "0")
    # The canvas set: white ink on black, in a u<hex> folder.
    (root / "u42").mkdir()
    b_dark = save_dark_on_light(tmp_path / "tmp_b.png", "B")
    Image.fromarray(255 - b_dark).save(root / "u42" / "u42-1730734299087.png")
    (root / "u42" / "notes.txt").write_text("not an image")

    data = ds.read_image_folder(root)
    assert sorted(data.labels.tolist()) == ["0", "A", "B", "a"]
    by_label = dict(zip(data.labels.tolist(), data.groups.tolist(), strict=True))
    assert by_label["A"] == "set/w017"
    assert by_label["a"] == "set/w005"
    assert by_label["B"] == "set/s2024-11-04"
    i_a = data.labels.tolist().index("A")
    np.testing.assert_array_equal(data.images[i_a], expected(a_caps, dark_ink=True))
    # Polarity detection: the white-on-black B gives what the dark-on-light B gives.
    i_b = data.labels.tolist().index("B")
    np.testing.assert_array_equal(data.images[i_b], expected(b_dark, dark_ink=True))
    assert data.images[i_b].max() == 255 and data.images[i_b][0, 0] == 0

    only_caps = ds.read_image_folder(root, classes=str.isupper)
    assert sorted(only_caps.labels.tolist()) == ["A", "B"]


def test_image_folder_bad_class_name(tmp_path):
    save_dark_on_light(tmp_path / "set" / "capitals" / "x.png", "A")
    with pytest.raises(DataError, match="capitals"):
        ds.read_image_folder(tmp_path / "set")


def test_unreadable_image_raises_or_is_skipped(tmp_path, caplog):
    root = tmp_path / "set"
    save_dark_on_light(root / "A" / "good.png", "A")
    broken = root / "A" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        ds.read_image_folder(root)
    with caplog.at_level(logging.WARNING):
        data = ds.read_image_folder(root, skip_unreadable=True)
    assert len(data) == 1
    assert "broken.png" in caplog.text


def test_rgba_on_transparent_background(tmp_path):
    gray = save_dark_on_light(tmp_path / "g.png", "K")
    rgba = np.zeros((*gray.shape, 4), np.uint8)
    rgba[..., 3] = 255 - gray  # ink opaque, paper transparent
    (tmp_path / "set" / "K").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "set" / "K" / "k.png")
    data = ds.read_image_folder(tmp_path / "set")
    np.testing.assert_array_equal(data.images[0], expected(gray, dark_ink=True))


def test_csv_index_case_insensitive_and_numbering(tmp_path):
    root = tmp_path / "realcrops"
    save_dark_on_light(root / "PNG" / "CAP_A_0.png", "A")
    save_dark_on_light(root / "PNG" / "SMALL_b_3.PNG", "b")  # upper-case suffix on disk
    save_dark_on_light(root / "PNG" / "DIGIT_7_94.png", "7")
    index = root / "english.csv"
    index.write_text(
        "image,label\nPNG/CAP_A_0.png,0\nPNG/SMALL_b_3.png,27\nPNG/DIGIT_7_94.png,59\n"
    )
    data = ds.read_image_index(index)
    assert data.labels.tolist() == ["A", "b", "7"]
    assert data.groups.tolist() == ["realcrops/b0", "realcrops/b0", "realcrops/b9"]
    assert ds.read_dataset(root).labels.tolist() == ["A", "b", "7"]

    index.write_text("image,label\nPNG/CAP_A_0.png,0\nPNG/CAP_Q_1.png,16\n")
    with pytest.raises(DataError, match=r"english\.csv: line 3: no file PNG/CAP_Q_1\.png"):
        ds.read_image_index(index)
    assert ds.read_image_index(index, skip_missing=True).labels.tolist() == ["A"]

    index.write_text("image,label\nPNG/CAP_A_0.png,62\n")
    with pytest.raises(DataError, match=r"line 2: label 62 out of range 0\.\.61"):
        ds.read_image_index(index)
    index.write_text("file,label\nPNG/CAP_A_0.png,0\n")
    with pytest.raises(DataError, match="no column 'image'"):
        ds.read_image_index(index)


# ------------------------------------------------------------------------------------- USPS


def usps_line(label: int, ink: np.ndarray) -> str:
    values = ink.reshape(-1) * 2.0 - 1.0  # 0..1 ink -> -1 (paper) .. 1 (ink)
    return f"{label:.4f} " + " ".join(f"{v:.4f}" for v in values)


def test_usps_gz(tmp_path):
    inks = [cv2.resize(glyph(c), (16, 16), interpolation=cv2.INTER_AREA) / 255.0 for c in "69"]
    path = tmp_path / "zip.test.gz"
    path.write_bytes(
        gzip.compress(
            (
                "\n".join(usps_line(int(c), i) for c, i in zip("69", inks, strict=True)) + "\n"
            ).encode()
        )
    )
    data = ds.read_usps(path)
    assert data.labels.tolist() == ["6", "9"]
    assert set(data.groups) == {"zip.test"}
    want = np.round(normalize(np.round(inks[0], 4).astype(np.float32), dark_ink=False) * 255)
    assert np.abs(data.images[0].astype(int) - want.astype(int)).max() <= 1
    assert ds.read_dataset(path).labels.tolist() == ["6", "9"]


def test_usps_bad_lines(tmp_path):
    ink = np.zeros((16, 16))
    path = tmp_path / "zip.train.gz"
    good = usps_line(1, ink)
    path.write_bytes(gzip.compress((good + "\n" + good.rsplit(" ", 1)[0] + "\n").encode()))
    with pytest.raises(DataError, match=r"zip\.train\.gz: line 2: expected 257 values, found 256"):
        ds.read_usps(path)
    path.write_bytes(gzip.compress(("12.0000" + good[6:] + "\n").encode()))
    with pytest.raises(DataError, match=r"line 1: label 12.0000 is not a digit"):
        ds.read_usps(path)


def test_read_dataset_unknown(tmp_path):
    odd = tmp_path / "thing.bin"
    odd.write_bytes(b"x")
    with pytest.raises(DataError, match="unknown data set format"):
        ds.read_dataset(odd)
    with pytest.raises(DataError, match="no such file"):
        ds.read_dataset(tmp_path / "missing.csv")


# ------------------------------------------------------------------------ the shared sets


def test_shared_sets_read(shared_datasets):
    """A few files of every shipped set, read by the real readers (quick)."""
    letters = shared_datasets / "letters"
    m = shared_datasets / "mnist"
    labels = ds._parse_idx(m / "t10k-labels-idx1-ubyte.gz", 1)
    assert labels.shape == (10000,) and labels.max() == 9

    raw, pixels, line = next(ds.iter_kaggle_csv(letters / "az_sample_uniform.csv", chunk_rows=50))
    assert line == 1 and pixels.shape == (50, 28, 28) and raw.max() <= 25

    caps = ds.read_image_folder(letters / "chars74k_train", classes=lambda c: c == "Q")
    assert len(caps) == 44 and set(caps.labels) == {"Q"}
    assert all(g.startswith("chars74k_train/w") for g in caps.groups)

    canvas = ds.read_image_folder(letters / "ateam_latin62", classes=lambda c: c == "q")
    assert len(canvas) > 40 and {g.split("/")[1][:5] for g in canvas.groups} == {"s2024"}
    # White-on-black canvas and dark-on-white Chars74K both end white ink on black.
    for data in (caps, canvas):
        assert data.images[:, 0, :].mean() < 5 and data.images.max() == 255

    crops = ds.read_image_index(
        letters / "realcrops_62class" / "english.csv",
        skip_missing=True,
        classes=lambda c: c == "g",
    )
    assert len(crops) == 100 and set(crops.labels) == {"g"}
