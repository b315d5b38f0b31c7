"""Throughput of the shipped character models and the reader's cold start.

For each model in hwr_batch/models: crops per second through ``Classifier.predict`` (the page
reader's own path: uint8 crops in, labels and confidences out) with onnxruntime limited to
``--threads`` intra-op threads, at ``--batch`` crops per call. The crops are real normalised
glyphs (MNIST test images when ../shared/datasets is there, else glyphs drawn with OpenCV and
passed through hwr_batch.normalize); a CNN's cost does not depend on the pixels, but this keeps
the input honest. The "path" column says what ``predict`` ran: the int8 companion alone, the
companion with float re-checks under its threshold (how many crops are re-checked depends on
the crops: clean MNIST digits fewer than page crops), or the float model (``HWR_EXACT=1``).

Also reported: crops per CPU-second (process time), which a busy shared machine disturbs much
less than wall-clock rates; with N threads fully busy, N times it is the uncontended rate.

Cold start: a fresh ``python -c`` process that imports hwr_batch, loads the digits model and
classifies one crop, timed from outside (spawn to exit) and inside (import to answer).

    python benchmarks/bench_models.py [--threads 2] [--batch 256] [--seconds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hwr_batch  # noqa: E402
from hwr_batch import defaults  # noqa: E402

MNIST_TEST = REPO.parent / "shared" / "datasets" / "mnist" / "t10k-images-idx3-ubyte.gz"

COLD_START = (
    "import time; t0 = time.perf_counter(); import numpy as np; import hwr_batch; "
    "clf = hwr_batch.load_classifier('digits', threads={threads}); "
    "labels, conf = clf.predict(np.zeros((1, 28, 28), np.uint8)); "
    "print(time.perf_counter() - t0)"
)


def sample_crops(n: int) -> tuple[np.ndarray, str]:
    """uint8 (n, 28, 28) white-on-black crops and where they came from."""
    if MNIST_TEST.is_file():
        with gzip.open(MNIST_TEST) as fh:
            images = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        return np.ascontiguousarray(images[:n]), "MNIST test images"
    import cv2

    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        page = np.full((60, 48), 255, np.uint8)
        cv2.putText(
            page,
            "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i % 36],
            (6, 48),
            cv2.FONT_HERSHEY_SIMPLEX,
            1.6,
            0,
            int(rng.integers(2, 5)),
        )
        crops.append(np.round(hwr_batch.normalize(page) * 255).astype(np.uint8))
    return np.stack(crops), "OpenCV-drawn glyphs through hwr_batch.normalize"


def crops_per_second(name: str, crops: np.ndarray, threads: int, seconds: float) -> dict:
    clf = hwr_batch.load_classifier(name, threads=threads)
    batch = len(crops)
    for _ in range(3):
        clf.predict(crops, batch_size=batch)
    rates: list[float] = []
    cpu0 = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 5:
        t = time.perf_counter()
        clf.predict(crops, batch_size=batch)
        rates.append(batch / (time.perf_counter() - t))
    cpu_s = time.process_time() - cpu0
    params = json.loads(clf.metadata.get("metrics", "{}")).get("parameters")
    if clf.fast is None:
        path = "float"
    elif clf.recheck_below > 0:
        path = f"int8, float < {clf.recheck_below:g}"
    else:
        path = "int8"
    return {
        "model": name,
        "path": path,
        "classes": len(clf.labels),
        "parameters": params,
        "architecture": clf.metadata.get("architecture", "?"),
        "file_kb": round(Path(clf.path).stat().st_size / 1024),
        "crops_per_s_median": round(statistics.median(rates)),
        "crops_per_s_best": round(max(rates)),
        "calls": len(rates),
        # Contention-free view: crops per second of CPU time this process got. On a shared
        # machine wall-clock rates fall with the load; this one does not (much).
        "crops_per_cpu_s": round(batch * len(rates) / cpu_s) if cpu_s > 0 else None,
    }


def cold_start(threads: int, repeats: int) -> dict:
    outer, inner = [], []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", COLD_START.format(threads=threads)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outer.append(time.perf_counter() - t)
        inner.append(float(proc.stdout.strip().splitlines()[-1]))
    return {
        "process_s_median": round(statistics.median(outer), 3),
        "import_to_answer_s_median": round(statistics.median(inner), 3),
        "repeats": repeats,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=defaults.BATCH_SIZE)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per model")
    p.add_argument("--repeats", type=int, default=5, help="cold-start processes")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()

    crops, origin = sample_crops(args.batch)
    rows = [crops_per_second(n, crops, args.threads, args.seconds) for n in defaults.CHARSETS]
    cold = cold_start(args.threads, args.repeats)

    cpu = os.cpu_count()
    print(
        f"onnxruntime, {args.threads} intra-op threads, batch {args.batch}, {origin}, "
        f"{cpu} CPUs visible, load average {os.getloadavg()[0]:.2f}"
    )
    head = (
        f"{'model':8s} {'classes':>7s} {'params':>8s} {'arch':22s} {'KiB':>5s} "
        f"{'crops/s (median)':>17s} {'crops/s (best)':>15s} {'crops/CPU-s':>12s}  path"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['model']:8s} {r['classes']:7d} {r['parameters'] or 0:8d} "
            f"{r['architecture']:22s} {r['file_kb']:5d} {r['crops_per_s_median']:17d} "
            f"{r['crops_per_s_best']:15d} {r['crops_per_cpu_s'] or 0:12d}  {r['path']}"
        )
    print(
        f"cold start (fresh process: import hwr_batch, load digits, classify 1 crop): "
        f"{cold['process_s_median']:.3f} s process, "
        f"{cold['import_to_answer_s_median']:.3f} s import-to-answer "
        f"(median of {cold['repeats']})"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"models": rows, "cold_start": cold, "threads": args.threads, "batch": args.batch},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
