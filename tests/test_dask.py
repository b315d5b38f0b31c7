"""Dask scale-out: a real LocalCluster (2 worker processes) behind the batch's executor interface.

- the same per-page outputs, byte for byte, as the local process pool;
- fsspec ``file://`` URLs for inputs and outputs, resolved on the workers;
- a worker process SIGKILLed mid-batch: its page is rerun elsewhere, every page written once;
- an input that kills every worker that touches it: one errors.csv row, the batch finishes;
- Dask stays optional: the plain CLI never imports it, and ``--scheduler`` without it is one line.

One cluster serves the module (starting one costs seconds on a small machine); its scheduler
allows one worker death per task (``allowed_failures=1``) so the poison test stays short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_batch import (
    TEST_MAX_PIXELS,
    page_jsons,
    read_csv,
    save_pdf,
    save_png,
    save_tiff,
    tiny_model,
)

from hwr_batch import batch, cli, storage
from hwr_batch.errors import BadArguments, ExitCode, UnreadableInput
from hwr_batch.executors import LocalPoolExecutor, Outcome

pytest.importorskip("distributed", reason="Dask is an optional extra: pip install '.[dask]'")

from hwr_batch.dask_executor import DaskExecutor, parse_scheduler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx"))


@pytest.fixture(scope="module")
def options(model: str) -> batch.ReadOptions:
    return batch.ReadOptions(model=model, max_pixels=TEST_MAX_PIXELS)


@pytest.fixture(scope="module")
def cluster(options: batch.ReadOptions) -> Iterator[DaskExecutor]:
    ex = DaskExecutor("local:2", batch.prepare_worker, options, allowed_failures=1)
    try:
        yield ex
    finally:
        ex.close(cancel=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Single-page images in a tree, a 3-page PDF and a 2-page TIFF: 9 pages."""
    src = tmp_path_factory.mktemp("in")
    save_png(src / "a" / "scan.png", 1)
    save_png(src / "a" / "b" / "form.png", 2)
    save_png(src / "c.png", 3)
    save_png(src / "d.png", 4)
    save_pdf(src / "doc.pdf", [5, 6, 7])
    save_tiff(src / "a" / "scan.tif", [8, 9])
    return src


N_PAGES = 9


@pytest.fixture(scope="module")
def local_run(
    inputs: Path, options: batch.ReadOptions, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The reference: the same batch on the local process pool."""
    out = tmp_path_factory.mktemp("out-local")
    with LocalPoolExecutor(2, batch.prepare_worker, options) as ex:
        report = batch.run_batch([str(inputs)], str(out), options, executor=ex)
    assert (report.pages_read, report.pages_failed) == (N_PAGES, 0)
    return out


def output_files(outdir: Path) -> dict[str, bytes]:
    """Every file under OUTDIR by relative path, except the run's lock file."""
    return {
        p.relative_to(outdir).as_posix(): p.read_bytes()
        for p in sorted(outdir.rglob("*"))
        if p.is_file() and p.name != ".hwr-batch.lock"
    }


def worker_pids(ex: DaskExecutor, n: int = 2) -> set[int]:
    """PIDs of the cluster's worker processes once ``n`` are up (restarts settle first)."""
    deadline = time.monotonic() + 60
    while True:
        ex.client.wait_for_workers(n, timeout=60)
        try:
            pids = set(ex.client.run(os.getpid).values())
        except OSError:  # a worker left between the count and the call (CommClosedError)
            pids = set()
        if len(pids) == n or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def _model_loads() -> tuple[int, int]:
    """(loads, cache hits) of the classifier cache in this process."""
    from hwr_batch import classify

    info = classify._load.cache_info()
    return info.misses, info.hits


def test_parse_scheduler() -> None:
    assert parse_scheduler("local:3") == ("local", 3, None)
    assert parse_scheduler("local", jobs=5) == ("local", 5, None)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", None, "tcp://10.0.0.5:8786")
    for bad in ("local:0", "local:x", "tcp://", "http://host:8786", "loca"):
        with pytest.raises(BadArguments):
            parse_scheduler(bad)


def test_same_outputs_byte_for_byte_as_local_pool(
    inputs: Path, options: batch.ReadOptions, cluster: DaskExecutor, local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = batch.run_batch([str(inputs)], str(out), options, executor=cluster)
    assert (report.pages_read, report.pages_failed) == (N_PAGES, 0)
    # Pages were read on the workers, not in this process.
    pids = worker_pids(cluster)
    assert os.getpid() not in pids and len(pids) == 2
    # Each worker loaded the model once (its plugin, at start) and reused it for every page.
    loads = cluster.client.run(_model_loads)
    assert all(misses == 1 and hits >= 1 for misses, hits in loads.values()), loads
    assert sum(hits for _, hits in loads.values()) >= N_PAGES
    got, want = output_files(out), output_files(local_run)
    assert sorted(got) == sorted(want)
    assert sum(name.endswith(".json") for name in got) == N_PAGES
    assert sum(name.endswith(".csv") for name in got) == N_PAGES + 3  # + summary/errors/review
    for name in want:
        assert got[name] == want[name], f"{name} differs between the local pool and Dask"
    # Resume on the cluster: nothing is read again, nothing rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in page_jsons(out)}
    report = batch.run_batch([str(inputs)], str(out), options, executor=cluster)
    assert (report.pages_read, report.pages_kept) == (0, N_PAGES)
    assert {p: p.stat().st_mtime_ns for p in page_jsons(out)} == stamps


def test_existing_cluster_by_address(
    inputs: Path, options: batch.ReadOptions, cluster: DaskExecutor, local_run: Path, tmp_path: Path
) -> None:
    # --scheduler tcp://HOST:PORT: connect to a running scheduler (here the module's cluster),
    # check that it can run our tasks, and leave the cluster running when done.
    address = cluster.client.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    out = tmp_path / "out"
    with DaskExecutor(address, batch.prepare_worker, options) as ex:
        assert ex.workers == 2
        report = batch.run_batch([str(inputs)], str(out), options, executor=ex)
    assert (report.pages_read, report.pages_failed) == (N_PAGES, 0)
    assert output_files(out) == output_files(local_run)
    assert len(worker_pids(cluster)) == 2


def test_file_urls_are_resolved_on_the_workers(
    inputs: Path, options: batch.ReadOptions, cluster: DaskExecutor, local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    report = batch.run_batch([f"file://{inputs}"], f"file://{out}", options, executor=cluster)
    assert (report.pages_read, report.pages_failed) == (N_PAGES, 0)
    got, want = output_files(out), output_files(local_run)
    assert sorted(got) == sorted(want)
    for name, data in want.items():
        if name.endswith(".json"):
            # Identical but for the source, which names the input as it was given (a URL).
            doc, ref = json.loads(got[name]), json.loads(data)
            assert doc.pop("source") == "file://" + ref.pop("source")
            assert doc == ref
        elif not name.endswith(("summary.csv", "review.csv", "errors.csv")):
            assert got[name] == data, name
    assert [r["file"] for r in read_csv(out / "summary.csv")] == [
        "file://" + r["file"] for r in read_csv(local_run / "summary.csv")
    ]


def _kill_own_worker(task: Any) -> None:
    os._exit(9)  # the worker process vanishes mid-task: no exception, no result


def _die_on_first_try(task: Any) -> Any:
    """Kill this worker process the first time any worker runs the task; read it after that.

    The marker file beside the outputs is the memory shared by all workers and their
    successors (each try runs in whichever process the scheduler picks).
    """
    marker = Path(f"{task.stem}.died")
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return batch.read_page_task(task)


class FaultExecutor:
    """Wraps an executor and swaps the task function of one chosen page (fault injection at
    the transport, like test_batch.CrashingExecutor for the local pool)."""

    def __init__(self, inner: DaskExecutor, page: tuple[str, int], fault: Any) -> None:
        self.inner, self.page, self.fault = inner, page, fault
        self.workers = inner.workers

    def submit(self, fn: Any, arg: Any, key: Any) -> None:
        if isinstance(arg, batch.PageTask) and (Path(arg.source).name, arg.page) == self.page:
            fn = self.fault
        self.inner.submit(fn, arg, key)

    def in_flight(self) -> int:
        return self.inner.in_flight()

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        return self.inner.wait(timeout)

    def close(self, cancel: bool = False) -> None:
        self.inner.close(cancel)


def test_worker_killed_mid_batch_every_page_written_once(
    inputs: Path, options: batch.ReadOptions, cluster: DaskExecutor, local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pids_before = worker_pids(cluster)
    ex = FaultExecutor(cluster, ("doc.pdf", 2), _die_on_first_try)
    report = batch.run_batch([str(inputs)], str(out), options, executor=ex)  # type: ignore[arg-type]
    marker = out / "doc.pdf.p002.died"
    assert marker.exists(), "the worker was not killed"
    killed = int(marker.read_text())
    marker.unlink()
    assert killed in pids_before
    assert killed not in worker_pids(cluster)
    # The scheduler ran the page again on another worker: every page read exactly once as far
    # as the batch is concerned, none failed, none lost ...
    assert (report.pages_read, report.pages_kept, report.pages_failed) == (N_PAGES, 0, 0)
    summary = read_csv(out / "summary.csv")
    assert len({(r["file"], r["page"]) for r in summary}) == len(summary) == N_PAGES
    assert all(r["status"] == "read" for r in summary)
    assert read_csv(out / "errors.csv") == []
    # ... no half-written file left behind, and every output is exactly the local pool's.
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert output_files(out) == output_files(local_run)


def test_input_that_always_kills_its_worker_is_one_error_row(
    inputs: Path, options: batch.ReadOptions, cluster: DaskExecutor, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pids_before = worker_pids(cluster)
    ex = FaultExecutor(cluster, ("doc.pdf", 2), _kill_own_worker)
    report = batch.run_batch([str(inputs)], str(out), options, executor=ex)  # type: ignore[arg-type]
    assert (report.pages_read, report.pages_failed) == (N_PAGES - 1, 1)
    errors = read_csv(out / "errors.csv")
    assert [(Path(r["file"]).name, r["page"], r["error_type"]) for r in errors] == [
        ("doc.pdf", "2", "WorkerCrashed")
    ]
    assert "died" in errors[0]["reason"]
    assert len(page_jsons(out)) == N_PAGES - 1
    assert not (out / "doc.pdf.p002.json").exists()
    # The workers it killed are replaced: the cluster is whole again for the next batch.
    pids_after = worker_pids(cluster)
    assert len(pids_after) == 2 and pids_after != pids_before


def test_plain_cli_never_imports_dask() -> None:
    code = (
        "import sys, hwr_batch, hwr_batch.cli, hwr_batch.batch, hwr_batch.executors;"
        "hwr_batch.cli.build_parser().parse_args(['x', '-o', 'y']);"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_scheduler_without_dask_is_one_line(
    tmp_path: Path, model: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    save_png(tmp_path / "in" / "p.png", 1)
    # As if the [dask] extra were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "hwr_batch.dask_executor")
    argv = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", model, "-q"]
    code = cli.main([*argv, "--scheduler", "local:1"])
    err = capsys.readouterr().err.strip()
    assert code == ExitCode.bad_arguments
    assert err == (
        "hwr-batch: error: --scheduler needs Dask; install the extra: pip install 'hwr-batch[dask]'"
    )


def test_storage_urls_and_atomic_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # memory:// is a real fsspec file system with no rename: the non-local write path.
    root = "memory://hwr-test/batch"
    storage.write_atomic(f"{root}/a/x.json", '{"k": 1}')
    storage.write_atomic(f"{root}/a/.hidden.png", b"debris")
    storage.write_atomic(f"{root}/b.PNG", b"\x89PNG")
    assert storage.list_files(root, [".json", ".png"]) == [f"{root}/a/x.json", f"{root}/b.PNG"]
    assert storage.read_bytes(f"{root}/a/x.json") == b'{"k": 1}'
    assert storage.is_dir(root) and storage.exists(f"{root}/b.PNG")
    assert str(storage.relative_to(f"{root}/a/x.json", root)) == "a/x.json"
    with storage.local_copy(f"{root}/b.PNG") as local:
        assert local.suffix == ".PNG" and local.read_bytes() == b"\x89PNG"
    assert not local.exists()
    with pytest.raises(UnreadableInput, match="not found"):
        storage.read_bytes(f"{root}/missing.png")
    # file:// URLs are local paths; a failed local write leaves neither target nor temp file.
    target = tmp_path / "d" / "page.json"
    assert storage.to_local(f"file://{target}") == target
    storage.write_atomic(f"file://{target}", "old")

    def no_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_disk)
    with pytest.raises(OSError, match="No space"):
        storage.write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["page.json"]
    with pytest.raises(BadArguments, match="nosuchproto"):
        storage.list_files("nosuchproto://x/y")
