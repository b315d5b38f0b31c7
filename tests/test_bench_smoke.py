"""benchmarks/bench_pages.py runs end to end on two tiny pages, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks" / "bench_pages.py"
DATASETS = Path(os.environ.get("HWR_DATASETS", REPO.parent / "shared" / "datasets"))


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pages", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_tidy_text_and_scoring() -> None:
    bench = _bench()
    assert bench.tidy_text("  12  34 \n\n 5\n") == "12 34\n5"
    assert bench.tidy_text("ab c", upper=True) == "AB C"
    truth = {"a.png": "12 34\n56", "b.png": "78"}
    # One substitution on a.png (word gaps and line breaks do not count), b.png not read at
    # all (a failed page counts as read empty).
    run = bench.RunResult("x", "digits", 1, 2.0, {"a.png": "1234 \n 59"}, chars_read=6)
    score = bench.score_run(run, truth)
    assert (score.truth_chars, score.edits, score.failed) == (8, 1 + 2, 1)
    assert score.cer == pytest.approx(3 / 8)
    assert score.pages_per_s == pytest.approx(0.5)
    # Letter pages compare upper-cased: the letter model answers capitals.
    run = bench.RunResult("x", "letters", 1, 1.0, {"a.png": "abc"})
    assert bench.score_run(run, {"a.png": "ABC"}).edits == 0


def test_worker_detection() -> None:
    bench = _bench()
    worker = [sys.executable, "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"]
    tracker = [sys.executable, "-c", "from multiprocessing.resource_tracker import main;main(5)"]
    assert bench._is_batch_worker(worker)
    assert not bench._is_batch_worker(tracker)


@pytest.mark.skipif(
    not (DATASETS / "mnist").is_dir(), reason=f"{DATASETS} not found: pages are drawn from it"
)
@pytest.mark.skipif(
    not (REPO / "hwr_batch" / "models" / "digits.onnx").is_file(),
    reason="no bundled digits model (hwr_batch/models/digits.onnx) to read pages with",
)
def test_benchmark_runs_on_two_tiny_pages(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    cmd = [
        sys.executable,
        str(BENCH),
        "--pages",
        "2",
        "--kind",
        "digits",
        "--size",
        "800x560",
        "--chars",
        "24",
        "--jobs",
        "2",
        "--stage-pages",
        "1",
        "--rss-every",
        "0.1",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| digits | hwr-batch | 2 |" in done.stdout
    doc = json.loads((out / "bench_pages.json").read_text(encoding="utf-8"))
    assert doc["meta"]["page_size"] == [800, 560]
    ours = next(r for r in doc["results"] if r["reader"] == "hwr-batch")
    assert ours["pages"] == 2 and ours["failed"] == 0
    # At most 24 a page; fewer when the small page fills up first.
    truth = json.loads((out / "truth_digits.json").read_text(encoding="utf-8"))
    assert ours["truth_chars"] == sum(
        len(t.split()) and len("".join(t.split())) for t in truth.values()
    )
    assert 0 < ours["truth_chars"] <= 48
    # The reader reads something: an empty or garbled reading would score near 1.
    assert 0.0 <= ours["cer"] < 0.5
    assert ours["pages_per_s"] > 0 and ours["chars_per_s"] > 0
    # Two workers were seen, each with the model loaded (tens of MB at least: ~48 MB measured on
    # these 800x560 pages).
    peaks = doc["memory"]["digits"]["peak_mb_per_worker"]
    assert len(peaks) == 2 and all(20 < p < 4000 for p in peaks)
    stages = doc["stage_seconds"]["digits"]
    assert stages["load"] > 0 and len(stages) >= 3
    if shutil.which("tesseract"):
        theirs = next(r for r in doc["results"] if r["reader"] == "tesseract")
        assert theirs["pages"] == 2 and theirs["cer"] >= 0.0
        assert "pages/s ratio" in done.stdout
    # Pages and outputs are removed unless --keep-pages.
    assert not (out / "pages").exists()


@pytest.mark.skipif(
    not (DATASETS / "mnist").is_dir(), reason=f"{DATASETS} not found: pages are drawn from it"
)
def test_conditions_benchmark_runs_on_a_tiny_page(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_conditions.py"), "--pages", "1"]
    cmd += ["--size", "800x560", "--chars", "24", "--out", str(tmp_path)]
    cmd += ["--conditions", "as-is,negative,black-frame"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "bench_conditions.json").read_text())["conditions"]
    by_name = {r["condition"]: r for r in rows}
    assert list(by_name) == ["as-is", "negative", "black-frame"]
    assert by_name["as-is"]["truth_chars"] > 0
    assert len({r["truth_chars"] for r in rows}) == 1  # the same page under each condition
    # A negative reads as its positive does, and says so.
    assert by_name["negative"]["errors"] == by_name["as-is"]["errors"]
    assert by_name["negative"]["warnings"] == ["light ink on a dark ground"]
    assert "dark margins around the sheet ignored" in by_name["black-frame"]["warnings"]
    bad = subprocess.run(cmd[:2] + ["--conditions", "fog"], capture_output=True, check=False)
    assert bad.returncode == 2
    usage = subprocess.run(cmd[:2] + ["--help"], capture_output=True, text=True, check=False)
    assert usage.returncode == 0 and "speckle-1%" in usage.stdout
