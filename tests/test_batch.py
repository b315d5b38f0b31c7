"""Batch runner: input listing and output layout, resume/--force, bad inputs, worker crashes.

Pages are drawn with cv2.putText (pure plumbing: what is read does not matter here, that every
page is read once and lands where it should does). The model is a tiny ONNX network built here
(random weights, real onnxruntime), so these tests do not depend on the trained models.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from hwr_batch import batch
from hwr_batch.executors import LocalPoolExecutor, WorkerCrashed

# --------------------------------------------------------------------------------------------
# Fixtures made here, shared with test_cli.py.


def draw_page(seed: int, width: int = 360, height: int = 200) -> np.ndarray:
    """A white page with two lines of handwritten-looking digits; uint8 (H, W)."""
    rng = np.random.default_rng(seed)
    page = np.full((height, width), 255, np.uint8)
    for row, y in enumerate((70, 150)):
        digits = "".join(str(d) for d in rng.integers(0, 10, 6))
        text = f"{digits[:3]} {digits[3:]}" if row else digits
        cv2.putText(page, text, (20, y), cv2.FONT_HERSHEY_SIMPLEX, 1.6, 0, 4)
    return page


def save_png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), draw_page(seed))
    return path


def save_pdf(path: Path, seeds: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = [Image.fromarray(draw_page(s)).convert("RGB") for s in seeds]
    pages[0].save(path, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


def save_tiff(path: Path, seeds: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = [Image.fromarray(draw_page(s)) for s in seeds]
    pages[0].save(path, "TIFF", save_all=True, append_images=pages[1:])
    return path


def encrypted_pdf_bytes() -> bytes:
    """A one-page PDF protected by a (non-empty, unknown) user password."""
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        b"<< /Filter /Standard /V 1 /R 2 /O <"
        + b"11" * 32
        + b"> /U <"
        + b"22" * 32
        + b"> /P -4 >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    file_id = b"<00112233445566778899aabbccddeeff>"
    out += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [%s %s] >>\n" % (
        len(objs) + 1,
        file_id,
        file_id,
    )
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def make_bad_inputs(folder: Path) -> dict[str, str]:
    """One file per kind of bad input; returns {file name: expected error type}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = cv2.imencode(".png", draw_page(99))[1].tobytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is a text file, not an image\n")
    (folder / "locked.pdf").write_bytes(encrypted_pdf_bytes())
    Image.new("L", (5000, 5000), 255).save(folder / "huge.png")
    return {
        "truncated.png": "UnreadableInput",
        "empty.png": "UnreadableInput",
        "notes.png": "UnreadableInput",
        "locked.pdf": "EncryptedPdf",
        "huge.png": "TooLarge",
    }


#: Under the 5000x5000 bomb, over the test pages.
TEST_MAX_PIXELS = 4_000_000


def tiny_model(path: Path) -> Path:
    """A real ONNX digit model (linear + softmax, fixed random weights) with labels metadata."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.05, (784, 10)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(10, np.float32), "b")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 10])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"labels": "0123456789", "name": "tiny-test"})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def page_jsons(outdir: Path) -> list[Path]:
    return sorted(p for p in outdir.rglob("*.json") if batch._PAGE_JSON_RE.search(p.name))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx"))


# --------------------------------------------------------------------------------------------
# Listing and layout (no reading).


def test_layout_keeps_colliding_names_apart(tmp_path: Path) -> None:
    src = tmp_path / "in"
    save_png(src / "a" / "scan.png", 1)
    save_tiff(src / "a" / "scan.tif", [2])
    save_png(src / "b" / "scan.png", 3)
    (src / ".hidden.png").write_bytes(b"x")
    (src / ".cache").mkdir()
    save_png(src / ".cache" / "c.png", 4)
    (src / "readme.txt").write_text("not an input")
    files = batch.list_inputs([str(src)], str(tmp_path / "out"))
    assert [f.rel for f in files] == ["a/scan.png", "a/scan.tif", "b/scan.png"]
    stems = {batch.page_stem("OUT", f.rel, 1) for f in files}
    assert len(stems) == 3
    assert batch.page_stem("OUT", "a/scan.pdf", 2) == str(Path("OUT", "a/scan.pdf.p002"))


def test_layout_several_inputs_and_outdir_inside_input(tmp_path: Path) -> None:
    save_png(tmp_path / "x" / "a.png", 1)
    save_png(tmp_path / "y" / "a.png", 2)
    single = save_png(tmp_path / "x" / "deep" / "b.png", 3)
    files = batch.list_inputs([str(tmp_path / "x"), str(tmp_path / "y")], None)
    assert [f.rel for f in files] == ["x/a.png", "x/deep/b.png", "y/a.png"]
    # The same file named twice is read once; a single file mirrors to its name.
    assert [f.rel for f in batch.list_inputs([str(single), str(single)])] == ["b.png"]
    # Outputs written inside the input folder (overlay PNGs) are never taken as inputs.
    save_png(tmp_path / "x" / "out" / "a.png.p001.overlay.png", 4)
    files = batch.list_inputs([str(tmp_path / "x")], str(tmp_path / "x" / "out"))
    assert [f.rel for f in files] == ["a.png", "deep/b.png"]


def test_missing_input_is_bad_arguments(tmp_path: Path) -> None:
    from hwr_batch.errors import BadArguments

    with pytest.raises(BadArguments, match="no such file"):
        batch.list_inputs([str(tmp_path / "nope")])


# --------------------------------------------------------------------------------------------
# Running batches.


def _opts(model: str, **kw: Any) -> batch.ReadOptions:
    return batch.ReadOptions(model=model, max_pixels=TEST_MAX_PIXELS, **kw)


def test_batch_multipage_resume_and_force(tmp_path: Path, model: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    save_png(src / "a" / "scan.png", 1)
    save_tiff(src / "a" / "scan.tif", [2, 3])
    save_pdf(src / "doc.pdf", [4, 5, 6])
    report = batch.run_batch([str(src)], str(out), _opts(model, overlay=True), jobs=2)
    assert (report.pages_read, report.pages_kept, report.pages_failed) == (6, 0, 0)
    names = [p.relative_to(out).as_posix() for p in page_jsons(out)]
    assert names == [
        "a/scan.png.p001.json",
        "a/scan.tif.p001.json",
        "a/scan.tif.p002.json",
        "doc.pdf.p001.json",
        "doc.pdf.p002.json",
        "doc.pdf.p003.json",
    ]
    for p in page_jsons(out):
        doc = json.loads(p.read_text("utf-8"))
        assert doc["schema"] == "hwr-batch/page/v1"
        stem = str(p)[: -len(".json")]
        assert Path(stem + ".csv").is_file() and Path(stem + ".overlay.png").is_file()
    pdf_pages = [json.loads((out / f"doc.pdf.p00{i}.json").read_text())["page"] for i in (1, 2, 3)]
    assert pdf_pages == [1, 2, 3]
    summary = read_csv(out / "summary.csv")
    assert [(r["file"], r["page"], r["status"]) for r in summary] == [
        (str(src / "a" / "scan.png"), "1", "read"),
        (str(src / "a" / "scan.tif"), "1", "read"),
        (str(src / "a" / "scan.tif"), "2", "read"),
        (str(src / "doc.pdf"), "1", "read"),
        (str(src / "doc.pdf"), "2", "read"),
        (str(src / "doc.pdf"), "3", "read"),
    ]
    assert read_csv(out / "errors.csv") == []
    # review.csv: one row per character under the threshold, each with an existing crop.
    review = read_csv(out / "review.csv")
    low = sum(int(r["low_confidence"]) for r in summary)
    assert len(review) == low
    assert all((out / r["crop"]).is_file() for r in review)

    # Resume: nothing is read again, no file is rewritten, batch files are complete; debris of
    # a killed run (a temporary file) is cleared.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.p0*.*")}
    debris = out / "a" / ".scan.png.p001.json.k3x9q.tmp"
    debris.write_text('{"schema": "hwr-ba')
    report = batch.run_batch([str(src)], str(out), _opts(model, overlay=True), jobs=2)
    assert (report.pages_read, report.pages_kept) == (0, 6)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.p0*.*")} == stamps
    assert not debris.exists()
    summary2 = read_csv(out / "summary.csv")
    assert [r["status"] for r in summary2] == ["kept"] * 6
    assert [r["characters"] for r in summary2] == [r["characters"] for r in summary]
    assert len(read_csv(out / "review.csv")) == len(review)

    # A deleted page JSON is the only page redone.
    (out / "doc.pdf.p002.json").unlink()
    report = batch.run_batch([str(src)], str(out), _opts(model), jobs=1)
    assert (report.pages_read, report.pages_kept) == (1, 5)

    # --force reads everything again.
    report = batch.run_batch([str(src)], str(out), _opts(model), jobs=2, force=True)
    assert (report.pages_read, report.pages_kept) == (6, 0)
    assert [r["status"] for r in read_csv(out / "summary.csv")] == ["read"] * 6


def test_bad_inputs_each_get_one_error_row(tmp_path: Path, model: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    expected = make_bad_inputs(src)
    save_png(src / "good.png", 7)
    # Blank and all-black pages are not errors: they are read, with no characters.
    cv2.imwrite(str(src / "blank.png"), np.full((200, 300), 255, np.uint8))
    cv2.imwrite(str(src / "black.png"), np.zeros((200, 300), np.uint8))
    (src / "odd.xyz").write_text("not listed: unsupported suffix inside a folder")
    report = batch.run_batch([str(src)], str(out), _opts(model), jobs=2)
    assert report.pages_read == 3
    for name in ("blank.png", "black.png"):
        doc = json.loads((out / f"{name}.p001.json").read_text("utf-8"))
        assert doc["n_chars"] == 0 and doc["text"] == ""
    errors = read_csv(out / "errors.csv")
    assert sorted(Path(r["file"]).name for r in errors) == sorted(expected)
    for row in errors:
        assert row["error_type"] == expected[Path(row["file"]).name], row
        assert row["reason"] and "\n" not in row["reason"]
    summary = read_csv(out / "summary.csv")
    assert sorted((Path(r["file"]).name, r["status"]) for r in summary) == sorted(
        [(n, "failed") for n in expected]
        + [(n, "read") for n in ("good.png", "blank.png", "black.png")]
    )
    # Failed inputs are retried by the next run (they have no JSON), and fail again.
    report = batch.run_batch([str(src)], str(out), _opts(model), jobs=1)
    assert (report.pages_read, report.pages_kept, len(report.errors)) == (0, 3, 5)
    assert len(read_csv(out / "errors.csv")) == 5


def _die(task: batch.PageTask) -> None:
    os._exit(9)  # a worker killed mid-page: no exception, no result, the process is gone


def _stuck(task: batch.PageTask) -> None:
    # A page stuck inside native code: the time limit's SIGALRM cannot reach Python here.
    with batch._time_limit(task.options.page_timeout):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)


class CrashingExecutor(LocalPoolExecutor):
    """Runs one chosen page in a function that kills its worker process (or hangs it)."""

    def __init__(
        self,
        workers: int,
        poison: tuple[str, int],
        options: batch.ReadOptions,
        fn: Any = _die,
    ):
        super().__init__(workers, batch.prepare_worker, options)
        self.poison = poison
        self.poison_fn = fn

    def submit(self, fn: Any, arg: Any, key: Any) -> None:
        if isinstance(arg, batch.PageTask) and (Path(arg.source).name, arg.page) == self.poison:
            fn = self.poison_fn
        super().submit(fn, arg, key)


def test_worker_crash_is_recorded_and_batch_completes(tmp_path: Path, model: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    save_pdf(src / "doc.pdf", [1, 2, 3, 4])
    for i in range(4):
        save_png(src / f"p{i}.png", 10 + i)
    opts = _opts(model)
    ex = CrashingExecutor(2, ("doc.pdf", 2), opts)
    try:
        report = batch.run_batch([str(src)], str(out), opts, executor=ex)
    finally:
        ex.close()
    assert ex.restarts >= 1
    assert (report.pages_read, report.pages_failed) == (7, 1)
    errors = read_csv(out / "errors.csv")
    assert [(Path(r["file"]).name, r["page"], r["error_type"]) for r in errors] == [
        ("doc.pdf", "2", "WorkerCrashed")
    ]
    assert len(page_jsons(out)) == 7


def test_page_over_the_time_limit_is_an_error_row_and_rerun_reads_it(
    tmp_path: Path, model: str
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save_png(src / f"p{i}.png", 20 + i)
    # 0.1 ms: loading and reading any page takes longer.
    report = batch.run_batch([str(src)], str(out), _opts(model, page_timeout=1e-4), jobs=2)
    assert (report.pages_read, report.pages_failed) == (0, 3)
    errors = read_csv(out / "errors.csv")
    assert {r["error_type"] for r in errors} == {"PageTimeout"}
    assert errors[0]["reason"] == "took longer than 0.0001 s (--page-timeout); skipped"
    assert page_jsons(out) == []
    report = batch.run_batch([str(src)], str(out), _opts(model), jobs=2)
    assert (report.pages_read, report.pages_failed) == (3, 0)
    assert read_csv(out / "errors.csv") == []


def test_page_stuck_in_native_code_ends_its_worker_and_batch_completes(
    tmp_path: Path, model: str
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save_png(src / f"p{i}.png", 30 + i)
    opts = _opts(model, page_timeout=0.3)
    ex = CrashingExecutor(2, ("p1.png", 1), opts, fn=_stuck)
    t0 = time.monotonic()
    try:
        report = batch.run_batch([str(src)], str(out), opts, executor=ex)
    finally:
        ex.close()
    # Ended at twice the limit, once in the pool and once alone, not after the 60 s sleep.
    assert time.monotonic() - t0 < 30
    assert (report.pages_read, report.pages_failed) == (2, 1)
    errors = read_csv(out / "errors.csv")
    assert [(r["file"], r["error_type"]) for r in errors] == [
        (str(src / "p1.png"), "WorkerCrashed")
    ]
    assert "--page-timeout" in errors[0]["reason"]


def _square(x: int) -> int:
    return x * x


def _exit_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


def test_local_pool_executor_outcomes() -> None:
    with LocalPoolExecutor(2) as ex:
        for i in range(5):
            ex.submit(_square, i, ("sq", i))
        got: dict[Any, Any] = {}
        while ex.in_flight():
            for o in ex.wait(timeout=5):
                got[o.key] = o.value
        assert got == {("sq", i): i * i for i in range(5)}
        ex.submit(_exit_on_three, 3, "crash")
        outcomes = []
        while ex.in_flight():
            outcomes += ex.wait(timeout=5)
        assert [(o.key, type(o.error)) for o in outcomes] == [("crash", WorkerCrashed)]
        # A fresh pool takes the next task.
        ex.submit(_square, 4, "after")
        outcomes = []
        while ex.in_flight():
            outcomes += ex.wait(timeout=5)
        assert [(o.key, o.value) for o in outcomes] == [("after", 16)]


def test_force_on_a_page_that_now_fails_leaves_no_stale_result(tmp_path: Path, model: str) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    scan = save_png(src / "scan.png", 1)
    save_png(src / "other.png", 2)
    assert batch.run_batch([str(src)], str(out), _opts(model), jobs=1).pages_read == 2
    scan.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = batch.run_batch([str(src)], str(out), _opts(model), jobs=1, force=True)
    assert (report.pages_read, report.pages_failed) == (1, 1)
    assert not (out / "scan.png.p001.json").exists()
    summary = read_csv(out / "summary.csv")
    assert [(Path(r["file"]).name, r["status"]) for r in summary] == [
        ("other.png", "read"),
        ("scan.png", "failed"),
    ]


def test_unsupported_file_named_explicitly_and_locked_outdir(tmp_path: Path, model: str) -> None:
    from hwr_batch.errors import BadArguments

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    good = save_png(tmp_path / "good.png", 3)
    out = tmp_path / "out"
    report = batch.run_batch([str(notes), str(good)], str(out), _opts(model), jobs=1)
    assert (report.pages_read, report.files_failed) == (1, 1)
    errors = read_csv(out / "errors.csv")
    assert [(Path(r["file"]).name, r["page"], r["error_type"]) for r in errors] == [
        ("notes.txt", "", "UnsupportedInput")
    ]
    # A second run into a folder another run is writing to is refused before any work.
    with batch._outdir_lock(str(out)), pytest.raises(BadArguments, match="another hwr-batch"):
        batch.run_batch([str(good)], str(out), _opts(model), jobs=1)
