"""``hwr-train convert``: CSV -> PNG folder -> CSV, and bad data as one line."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
from PIL import Image

from hwr_batch.errors import BadArguments, DataError, ExitCode
from training import convert
from training import datasets as ds


def glyph(char: str, seed: int) -> np.ndarray:
    """uint8 (28, 28) white-on-black ``char`` with a little noise so rows differ."""
    img = np.zeros((28, 28), np.uint8)
    cv2.putText(img, char, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2, cv2.LINE_AA)
    noise = np.random.default_rng(seed).integers(0, 3, (28, 28))
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def kaggle_text(rows: list[tuple[int | None, np.ndarray]], header: str | None = None) -> str:
    lines = [header] if header else []
    for label, image in rows:
        values = ([] if label is None else [label]) + image.reshape(-1).tolist()
        lines.append(",".join(str(v) for v in values))
    return "\n".join(lines) + "\n"


def test_az_round_trip_identical(tmp_path):
    rows = [
        (k, glyph(ch, i)) for i, (k, ch) in enumerate([(0, "A"), (25, "Z"), (0, "A"), (7, "H")])
    ]
    src = tmp_path / "az.csv"
    src.write_text(kaggle_text(rows))
    folder = tmp_path / "png"
    assert convert.csv_to_folder(src, folder) == 4
    assert sorted(p.name for p in folder.iterdir()) == ["A", "H", "Z", "convert.json"]
    assert sorted(p.name for p in (folder / "A").iterdir()) == ["r0000001.png", "r0000003.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "Z" / "r0000002.png")), rows[1][1])
    # The folder reads as a data set too.
    assert sorted(ds.read_image_folder(folder).labels.tolist()) == ["A", "A", "H", "Z"]

    back = tmp_path / "back.csv"
    assert convert.folder_to_csv(folder, back) == 4
    assert back.read_bytes() == src.read_bytes()


def test_digit_recognizer_round_trips(tmp_path):
    header = ",".join(["label"] + [f"pixel{i}" for i in range(784)])
    train = tmp_path / "train.csv"
    train.write_text(kaggle_text([(d, glyph(str(d), d)) for d in (3, 0, 9)], header))
    convert.csv_to_folder(train, tmp_path / "train")
    convert.folder_to_csv(tmp_path / "train", tmp_path / "train2.csv")
    assert (tmp_path / "train2.csv").read_bytes() == train.read_bytes()

    test = tmp_path / "test.csv"
    test.write_text(kaggle_text([(None, glyph(c, 1)) for c in "71"], header.split(",", 1)[1]))
    convert.csv_to_folder(test, tmp_path / "test")
    assert sorted(p.name for p in (tmp_path / "test").glob("*.png")) == [
        "r0000002.png",
        "r0000003.png",
    ]
    convert.folder_to_csv(tmp_path / "test", tmp_path / "test2.csv")
    assert (tmp_path / "test2.csv").read_bytes() == test.read_bytes()


def test_folder_of_large_images_is_normalised(tmp_path):
    """A Chars74K-style folder (big dark-on-light PNGs) becomes MNIST-style CSV rows."""
    big = np.full((90, 120), 255, np.uint8)
    cv2.putText(big, "B", (30, 75), cv2.FONT_HERSHEY_SIMPLEX, 2.5, 0, 4)
    (tmp_path / "set" / "B_caps").mkdir(parents=True)
    Image.fromarray(big).save(tmp_path / "set" / "B_caps" / "B_caps.003.png")
    (tmp_path / "set" / "b").mkdir()
    Image.fromarray(big).save(tmp_path / "set" / "b" / "b.003.png")
    out = tmp_path / "set.csv"
    assert convert.folder_to_csv(tmp_path / "set", out) == 2
    rows = np.loadtxt(out, delimiter=",", dtype=np.int64)
    # 'b' maps to the capital's number when the numbering (A-Z) has no small letters.
    assert rows[:, 0].tolist() == [1, 1]
    want = ds.normalize_to_u8(big, dark_ink=True).reshape(-1)
    np.testing.assert_array_equal(rows[0, 1:], want)


def test_existing_output_needs_force(tmp_path):
    src = tmp_path / "az.csv"
    src.write_text(kaggle_text([(1, glyph("B", 0))]))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(BadArguments, match="--force"):
        convert.csv_to_folder(src, tmp_path / "out")
    convert.csv_to_folder(src, tmp_path / "out", force=True)
    assert not (tmp_path / "out" / "keep.txt").exists()
    with pytest.raises(BadArguments, match="--force"):
        convert.folder_to_csv(tmp_path / "out", src)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    convert.add_convert_parser(sub)
    return convert.run_convert(parser.parse_args(["convert", *argv]))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (",".join(["1"] * 700), "line 3: expected 785 columns, found 700"),
        (",".join(["30"] + ["0"] * 784), r"line 3: label 30 out of range 0..25"),
    ],
    ids=["columns", "label"],
)
def test_bad_csv_is_one_line_and_leaves_nothing(tmp_path, capsys, bad, message):
    src = tmp_path / "az.csv"
    src.write_text(kaggle_text([(0, glyph("A", 0)), (1, glyph("B", 1))]) + bad + "\n")
    out = tmp_path / "png"
    assert run([str(src), str(out)]) == ExitCode.bad_data
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(src) in err and message in err
    assert not out.exists() and not (tmp_path / "png.partial").exists()


def test_unreadable_image_is_one_line(tmp_path, capsys):
    (tmp_path / "set" / "A").mkdir(parents=True)
    (tmp_path / "set" / "A" / "x.png").write_bytes(b"not a png")
    assert run([str(tmp_path / "set"), str(tmp_path / "o.csv")]) == ExitCode.bad_data
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.png: unreadable image" in err
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o.csv.partial").exists()


def test_cli_both_directions(tmp_path, capsys):
    src = tmp_path / "az.csv"
    src.write_text(kaggle_text([(2, glyph("C", 0)), (3, glyph("D", 1))]))
    assert run([str(src), str(tmp_path / "png")]) == 0
    assert run([str(tmp_path / "png"), str(tmp_path / "back.csv")]) == 0
    assert (tmp_path / "back.csv").read_bytes() == src.read_bytes()
    assert "wrote 2 rows" in capsys.readouterr().out
    assert run([str(tmp_path / "missing.csv"), str(tmp_path / "x")]) == ExitCode.bad_arguments


def test_folder_class_outside_numbering(tmp_path):
    (tmp_path / "set" / "7").mkdir(parents=True)
    Image.fromarray(glyph("7", 0)).save(tmp_path / "set" / "7" / "a.png")
    with pytest.raises(DataError, match="class '7' is not in the label set"):
        convert.folder_to_csv(tmp_path / "set", tmp_path / "o.csv", label_map="letters")
