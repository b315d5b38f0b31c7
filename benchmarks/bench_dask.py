"""Scale-out benchmark: pages/s of the same batch on the local process pool and on Dask.

What it does:

1. generates ``--pages`` scanned-looking digit pages (A4 at 300 dpi, about 300 characters each)
   with :mod:`training.pagegen` from the MNIST *test* split, alternating the "scan" style
   (rotation, touching and broken characters, uneven light, grain, blur, noise; stored as JPEG)
   and the "ruled" style (ruled lines; stored as PNG);
2. reads that same folder once per configuration with the batch runner users run
   (:func:`hwr_batch.batch.run_batch`, bundled ``digits`` model, every output written: page
   JSON, CSV and review crops), ``--force`` so every page is read each time. Configurations are
   ``pool:N`` (the local process pool, ``--jobs N``) and ``dask:N`` (``--scheduler local:N``, a
   Dask LocalCluster of N single-threaded worker processes);
3. reports, per configuration: the start-up time (pool or cluster up, model loaded in every
   worker), the whole run's wall time, pages/s over the whole run (what a user sees) and pages/s
   after start-up (the steady rate that a long batch converges to);
4. checks that every configuration wrote the same page JSONs byte for byte as the first one, so
   each one did the same work.

It prints a markdown table and writes ``bench_dask.json`` under ``--out``. The machine may be
shared; run it under ``nice`` and give the load average (printed) beside the figures.

    python benchmarks/bench_dask.py --pages 24 --configs pool:1,pool:2,dask:1,dask:2
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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere, the repo not pip-installed
    sys.path.insert(0, str(REPO))

#: Styles drawn in turn, and the file format each is stored in.
STYLES = (("scan", ".jpg"), ("ruled", ".png"))


def _make_page(job: tuple[int, int, str, str | None]) -> tuple[str, int]:
    import cv2

    from training import pagegen

    i, seed, dest, mnist = job
    style_name, suffix = STYLES[i % len(STYLES)]
    gray, truth = pagegen.generate_page(_glyphs(mnist), style_name, seed=seed * 100_003 + i)
    name = f"page_{i:04d}{suffix}"
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if suffix == ".jpg" else []
    if not cv2.imwrite(str(Path(dest) / name), gray, params):
        raise OSError(f"cannot write {Path(dest) / name}")
    return name, truth.n_chars


_GLYPHS: list[Any] = []


def _glyphs(mnist: str | None) -> Any:
    if not _GLYPHS:
        from training import pagegen

        _GLYPHS.append(pagegen.mnist_test(mnist))
    return _GLYPHS[0]


def generate_pages(n: int, seed: int, dest: Path, jobs: int, mnist: str | None = None) -> int:
    """Write ``n`` pages into ``dest``; return the number of characters drawn.

    ``mnist``: folder with the MNIST t10k idx files (default: ../shared/datasets/mnist).
    """
    dest.mkdir(parents=True, exist_ok=True)
    work = [(i, seed, str(dest), mnist) for i in range(n)]
    if jobs > 1 and n > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            made = list(pool.map(_make_page, work))
    else:
        made = [_make_page(w) for w in work]
    return sum(chars for _, chars in made)


@dataclass
class Run:
    config: str
    workers: int
    pages: int
    chars: int
    startup_s: float
    wall_s: float
    pages_per_s: float
    steady_pages_per_s: float
    failed: int


def make_executor(config: str, options: Any) -> Any:
    from hwr_batch import batch
    from hwr_batch.executors import LocalPoolExecutor

    kind, _, n = config.partition(":")
    workers = int(n or 1)
    if kind == "pool":
        ex = LocalPoolExecutor(workers, batch.prepare_worker, options)
        # The pool starts its processes lazily; start them now (and load the model in each)
        # so that start-up is measured the same way for both back ends.
        for i in range(workers):
            ex.submit(_warm, options, ("warm", i))
        while ex.in_flight():
            ex.wait(timeout=1.0)
        return ex
    if kind == "dask":
        from hwr_batch.dask_executor import DaskExecutor

        return DaskExecutor(f"local:{workers}", batch.prepare_worker, options)
    raise SystemExit(f"bench_dask: unknown configuration {config!r} (pool:N or dask:N)")


def _warm(options: Any) -> int:
    import time as _time

    from hwr_batch import batch

    batch.prepare_worker(options)
    # Hold the worker a moment so that each warm-up task lands in a different process.
    _time.sleep(0.2)
    return os.getpid()


def run_config(config: str, pages_dir: Path, out: Path) -> tuple[Run, dict[str, bytes]]:
    from hwr_batch import batch

    options = batch.ReadOptions(charset="digits")
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    ex = make_executor(config, options)
    t_ready = time.perf_counter()
    try:
        report = batch.run_batch([str(pages_dir)], str(out), options, executor=ex, force=True)
    finally:
        ex.close()
    t_end = time.perf_counter()
    n = report.pages_read
    steady = t_end - t_ready
    run = Run(
        config=config,
        workers=ex.workers,
        pages=n,
        chars=report.chars_read,
        startup_s=round(t_ready - t0, 2),
        wall_s=round(t_end - t0, 2),
        pages_per_s=round(n / (t_end - t0), 3),
        steady_pages_per_s=round(n / steady, 3),
        failed=report.pages_failed + report.files_failed,
    )
    jsons = {p.name: p.read_bytes() for p in sorted(out.glob("*.json"))}
    return run, jsons


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_dask",
        description="pages/s of one batch on the local process pool and on a Dask LocalCluster",
    )
    p.add_argument("--pages", type=int, default=24, help="pages to generate (default: 24)")
    p.add_argument(
        "--configs",
        default="pool:1,pool:2,dask:1,dask:2",
        help="comma-separated pool:N / dask:N (default: pool:1,pool:2,dask:1,dask:2)",
    )
    p.add_argument("--gen-jobs", type=int, default=2, help="processes drawing the pages")
    p.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="page generator seed")
    p.add_argument(
        "--mnist",
        metavar="DIR",
        help="folder with MNIST t10k-*-idx*-ubyte.gz (default: ../shared/datasets/mnist)",
    )
    p.add_argument("--keep", action="store_true", help="keep the pages and outputs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="hwr-bench-dask-"))
    out.mkdir(parents=True, exist_ok=True)
    pages_dir = out / "pages"
    if pages_dir.exists():
        shutil.rmtree(pages_dir)
    t0 = time.perf_counter()
    chars = generate_pages(args.pages, args.seed, pages_dir, args.gen_jobs, args.mnist)
    print(
        f"{args.pages} pages ({chars} characters) generated in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    meta: dict[str, Any] = {
        "command": " ".join(["benchmarks/bench_dask.py", *(argv or sys.argv[1:])]),
        "pages": args.pages,
        "chars_drawn": chars,
        "cpus": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    runs: list[Run] = []
    reference: dict[str, bytes] | None = None
    for config in configs:
        run, jsons = run_config(config, pages_dir, out / "out" / config.replace(":", "-"))
        runs.append(run)
        print(f"{config}: {run.pages_per_s} pages/s ({run.wall_s} s)", file=sys.stderr)
        if reference is None:
            reference = jsons
        elif jsons != reference:
            print(f"bench_dask: {config} wrote different page JSONs", file=sys.stderr)
            return 1
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\n{args.pages} pages, {chars} characters; {meta['cpus']} CPUs; {meta['platform']}; "
        f"load average {meta['loadavg_start']} -> {meta['loadavg_end']}\n"
    )
    print("| config | workers | start-up s | wall s | pages/s | pages/s after start-up |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.config} | {r.workers} | {r.startup_s} | {r.wall_s} | {r.pages_per_s} "
            f"| {r.steady_pages_per_s} |"
        )
    print("\nevery configuration wrote the same page JSONs, byte for byte")
    result = {"meta": meta, "runs": [asdict(r) for r in runs]}
    (out / "bench_dask.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    if args.keep or args.out:
        print(f"outputs in {out}", file=sys.stderr)
    else:
        shutil.rmtree(out / "out", ignore_errors=True)
        shutil.rmtree(pages_dir, ignore_errors=True)
    return 0 if all(r.failed == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
