"""Page-reading benchmark: accuracy, speed and memory of the real batch path, beside Tesseract.

What it does, per page kind (digits, letters, mixed):

1. generates ``--pages`` scanned-looking pages with :mod:`training.pagegen` from the *test*
   splits only (rotation, noise, blur, JPEG, pen width, ruled lines, touching characters), each
   written to disk as a PNG or JPEG with its ground-truth text;
2. reads them with the command users run, ``python -m hwr_batch.cli PAGES -o OUT --jobs N``,
   so the figures include process start, model loading, image decoding and writing every
   output (JSON, CSV, review crops); while it runs, the RSS of every worker process is sampled
   (``/proc/<pid>/status`` VmRSS and VmHWM, through psutil);
3. scores the page JSONs it wrote against the truth (character error rate);
4. if ``tesseract`` is on PATH (and not ``--no-tesseract``), reads the *same files* with it,
   ``--psm 6`` and a character whitelist, ``--jobs`` processes at once with one thread each;
5. times every reader stage in-process on a few pages (``PageResult.timings``; the batch
   workers do not send timings back), one thread, as the per-page cost on one core.

It prints a markdown table and writes ``bench_pages.json`` under ``--out``.

Memory flatness: ``--pages 1000 --kind digits --no-tesseract --rss-every 5`` reads 1,000
pages in one batch and reports worker RSS at intervals, first sample against last.

The machine this runs on may be shared; run it under ``nice`` and say so beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere, the repo not pip-installed
    sys.path.insert(0, str(REPO))

KINDS = ("digits", "letters", "mixed")
#: The bundled model that reads each page kind.
CHARSET_OF_KIND = {"digits": "digits", "letters": "letters", "mixed": "alnum"}
_DIGITS = "0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Tesseract whitelists. Letter pages may be written in small letters; our letter model answers
#: capitals, so Tesseract may answer either case and its output is upper-cased before scoring.
WHITELIST = {
    "digits": _DIGITS,
    "letters": _UPPER + _UPPER.lower(),
    "mixed": _DIGITS + _UPPER + _UPPER.lower(),
}
#: Targets from issue 3 ("Done when"); reported against, never tuned for.
#: Pages of the benchmark: A4 at 300 dpi (width, height) with about 300 characters.
A4_300DPI = (2480, 3508)
TARGETS = {
    "cer_digits": 0.015,
    "cer_letters": 0.06,
    "pages_per_s": 10.0,
    "worker_peak_rss_mb": 400.0,
}


# ------------------------------------------------------------------------------------------
# Worker memory, sampled from outside while the batch runs.


def _is_batch_worker(cmdline: Sequence[str]) -> bool:
    """Batch workers are ``spawn`` children (``spawn_main``); the resource tracker is not."""
    return "spawn_main" in " ".join(cmdline)


def _vm_hwm_bytes(pid: int) -> int | None:
    """Peak resident set size of a live process (Linux ``VmHWM``), or None."""
    try:
        with Path(f"/proc/{pid}/status").open(encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _count_page_jsons(outdir: Path) -> int:
    n = 0
    for _dirpath, dirs, files in os.walk(outdir):
        dirs[:] = [d for d in dirs if not d.endswith(".review")]
        n += sum(1 for f in files if f.endswith(".json") and ".p" in f)
    return n


@dataclass
class RssSample:
    t: float
    pages_done: int
    #: RSS in MB of each live worker process, by pid.
    rss_mb: dict[int, float]


@dataclass
class MemoryReport:
    #: Peak RSS (VmHWM, MB) of each worker process seen, by pid.
    peak_mb: dict[int, float] = field(default_factory=dict)
    samples: list[RssSample] = field(default_factory=list)

    @property
    def max_peak_mb(self) -> float:
        return max(self.peak_mb.values(), default=0.0)


class RssMonitor(threading.Thread):
    """Sample the RSS of the batch's worker processes every ``interval`` seconds.

    Peaks come from VmHWM, which the kernel keeps per process, so a spike between two samples
    still counts as long as one sample lands before the worker exits. ``every`` (seconds, or 0)
    keeps a time series of (pages done, RSS per worker) for the flatness check.
    """

    def __init__(self, pid: int, outdir: Path, interval: float = 0.2, every: float = 0.0):
        super().__init__(daemon=True)
        self.pid = pid
        self.outdir = outdir
        self.interval = interval
        self.every = every
        self.report = MemoryReport()
        self._halt = threading.Event()

    def stop(self) -> MemoryReport:
        self._halt.set()
        self.join()
        return self.report

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        t0 = time.monotonic()
        next_sample = 0.0
        cmdlines: dict[int, bool] = {}
        while not self._halt.is_set():
            rss: dict[int, float] = {}
            try:
                children = root.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    if child.pid not in cmdlines:
                        cmdlines[child.pid] = _is_batch_worker(child.cmdline())
                    if not cmdlines[child.pid]:
                        continue
                    rss[child.pid] = child.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                hwm = _vm_hwm_bytes(child.pid)
                if hwm is not None:
                    mb = hwm / 2**20
                    self.report.peak_mb[child.pid] = max(self.report.peak_mb.get(child.pid, 0), mb)
            now = time.monotonic() - t0
            if self.every > 0 and now >= next_sample and rss:
                self.report.samples.append(
                    RssSample(round(now, 2), _count_page_jsons(self.outdir), rss)
                )
                next_sample = now + self.every
            self._halt.wait(self.interval)


# ------------------------------------------------------------------------------------------
# Our reader, through the CLI.


@dataclass
class RunResult:
    reader: str
    kind: str
    pages: int
    seconds: float
    #: Page file name -> text read.
    texts: dict[str, str]
    chars_read: int = 0
    memory: MemoryReport | None = None
    failed: int = 0
    #: Seconds from launch to the first page written (process start, model load, first page).
    first_page_s: float | None = None
    #: Pages per second between the first and the last page written (start-up excluded).
    steady_pages_per_s: float | None = None


#: CPUs the readers may use (``--cpus``); None: no pinning.
_CPUS: set[int] | None = None


def _pinned(cmd: list[str]) -> list[str]:
    """``cmd`` run on ``--cpus`` only, through ``taskset`` (child processes inherit the mask;
    a ``preexec_fn`` would not be safe next to the Tesseract threads)."""
    if not _CPUS:
        return cmd
    return ["taskset", "-c", ",".join(map(str, sorted(_CPUS))), *cmd]


def run_cli(
    kind: str, pages_dir: Path, outdir: Path, jobs: int, rss_every: float = 0.0
) -> RunResult:
    """Read every page under ``pages_dir`` with ``hwr-batch``; wall time includes start-up."""
    from hwr_batch.records import PageResult

    if outdir.exists():
        shutil.rmtree(outdir)
    cmd = [
        sys.executable,
        "-m",
        "hwr_batch.cli",
        str(pages_dir),
        "-o",
        str(outdir),
        "--charset",
        CHARSET_OF_KIND[kind],
        "--jobs",
        str(jobs),
        "--quiet",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    wall0 = time.time()
    proc = subprocess.Popen(_pinned(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    monitor = RssMonitor(proc.pid, outdir, every=rss_every)
    monitor.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    memory = monitor.stop()
    if proc.returncode not in (0, 1):
        raise RuntimeError(
            f"hwr-batch exited {proc.returncode}: {err.decode(errors='replace').strip()[-2000:]}"
        )
    texts: dict[str, str] = {}
    chars = 0
    written: list[float] = []
    for jpath in sorted(outdir.glob("*.p001.json")):
        res = PageResult.from_dict(json.loads(jpath.read_text(encoding="utf-8")))
        texts[Path(res.source).name] = res.text
        chars += len(res.chars)
        written.append(jpath.stat().st_mtime - wall0)
    failed = sum(1 for _ in pages_dir.iterdir()) - len(texts)
    run = RunResult("hwr-batch", kind, len(texts), seconds, texts, chars, memory, failed)
    if written:
        written.sort()
        run.first_page_s = written[0]
        if len(written) > 2 and written[-1] > written[0]:
            run.steady_pages_per_s = (len(written) - 1) / (written[-1] - written[0])
    return run


# ------------------------------------------------------------------------------------------
# Tesseract on the same files.


def tesseract_version() -> str | None:
    exe = shutil.which("tesseract")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def _tesseract_one(path: Path, whitelist: str) -> str:
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    cmd = [
        "tesseract",
        str(path),
        "stdout",
        "--psm",
        "6",
        "-c",
        f"tessedit_char_whitelist={whitelist}",
    ]
    done = subprocess.run(_pinned(cmd), capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tesseract failed on {path}: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode("utf-8", errors="replace")


def run_tesseract(kind: str, files: list[Path], jobs: int) -> RunResult:
    """Read ``files`` with ``jobs`` tesseract processes at once, one OpenMP thread each."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outs = list(pool.map(lambda p: _tesseract_one(p, WHITELIST[kind]), files))
    seconds = time.perf_counter() - t0
    texts = {p.name: tidy_text(t, upper=kind != "digits") for p, t in zip(files, outs, strict=True)}
    chars = sum(len(t.replace(" ", "").replace("\n", "")) for t in texts.values())
    return RunResult("tesseract", kind, len(files), seconds, texts, chars)


def tidy_text(text: str, upper: bool = False) -> str:
    """One space between words, no blank lines, no trailing space; optionally upper-cased.

    Applied to every reader's output and to the truth alike, so layout whitespace (Tesseract's
    blank lines between paragraphs, double spaces) does not count as errors for anyone.
    """
    lines = [" ".join(line.split()) for line in text.splitlines()]
    out = "\n".join(line for line in lines if line)
    return out.upper() if upper else out


# ------------------------------------------------------------------------------------------
# Per-stage seconds, in-process.


def stage_seconds(kind: str, files: list[Path], n: int) -> dict[str, float]:
    """Mean seconds per page of each reader stage over the first ``n`` files, one thread.

    ``load`` (decoding the file) is timed here; the other stages come from
    ``PageResult.timings``. The first page is read once before timing (model and kernels warm).
    """
    import cv2

    from hwr_batch.classify import load_classifier
    from hwr_batch.load import load_page
    from hwr_batch.pipeline import read_page

    cv2.setNumThreads(1)
    if _CPUS:
        os.sched_setaffinity(0, _CPUS)
    charset = CHARSET_OF_KIND[kind]
    clf = load_classifier(charset, threads=1)
    files = files[:n]
    if not files:
        return {}
    read_page(load_page(str(files[0]), 1).gray, charset, classifier=clf)
    totals: dict[str, float] = {}
    for f in files:
        t0 = time.perf_counter()
        loaded = load_page(str(f), 1)
        totals["load"] = totals.get("load", 0.0) + time.perf_counter() - t0
        t1 = time.perf_counter()
        res = read_page(loaded.gray, charset, source=str(f), classifier=clf)
        totals["read_page (total)"] = totals.get("read_page (total)", 0.0) + (
            time.perf_counter() - t1
        )
        for stage, sec in res.timings.items():
            totals[stage] = totals.get(stage, 0.0) + float(sec)
    return {k: v / len(files) for k, v in totals.items()}


# ------------------------------------------------------------------------------------------
# Scoring and reporting.


@dataclass
class Score:
    reader: str
    kind: str
    pages: int
    failed: int
    truth_chars: int
    edits: int
    seconds: float
    chars_read: int
    peak_rss_mb: float | None = None
    first_page_s: float | None = None
    steady_pages_per_s: float | None = None

    @property
    def cer(self) -> float:
        return self.edits / self.truth_chars if self.truth_chars else 0.0

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0

    @property
    def chars_per_s(self) -> float:
        return self.chars_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            cer=round(self.cer, 5),
            pages_per_s=round(self.pages_per_s, 3),
            chars_per_s=round(self.chars_per_s, 1),
        )
        return d


def score_run(run: RunResult, truth: dict[str, str]) -> Score:
    """Character error rate over all pages of ``truth``: edit distance / truth characters.

    Scored with :func:`training.pagegen.cer`: the characters of the page in reading order,
    line after line, spaces and line breaks not counted (word gaps are layout, not reading).
    A page the reader failed on counts as read empty: every truth character is an error.
    Letters compare upper-cased, since the letter and alnum models answer capitals for both
    cases.
    """
    from training.pagegen import cer

    upper = run.kind != "digits"
    edits = 0
    n_truth = 0
    for name, want in truth.items():
        res = cer(tidy_text(run.texts.get(name, ""), upper=upper), tidy_text(want, upper=upper))
        edits += res.errors
        n_truth += res.total
    peak = run.memory.max_peak_mb if run.memory is not None else None
    return Score(
        run.reader,
        run.kind,
        run.pages,
        len(truth) - len(run.texts),
        n_truth,
        edits,
        run.seconds,
        run.chars_read,
        peak,
        run.first_page_s,
        run.steady_pages_per_s,
    )


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown_report(
    scores: list[Score],
    stages: dict[str, dict[str, float]],
    memory: dict[str, MemoryReport],
    meta: dict[str, Any],
) -> str:
    out = [
        f"## hwr-batch page benchmark ({meta['pages_per_kind']} pages per kind of "
        f"{meta['page_size'][0]}x{meta['page_size'][1]} px with about "
        f"{meta['chars_per_page']} characters, --jobs {meta['jobs']}, seed {meta['seed']})",
        "",
        f"Machine: {meta['cpu_count']} CPUs"
        + (f" (readers pinned to CPUs {meta['cpus']})" if meta["cpus"] else "")
        + f", {meta['platform']}; load average at start {meta['loadavg_start']}, at end "
        f"{meta.get('loadavg_end', '?')}. Tesseract: {meta['tesseract'] or 'not run'}.",
        "",
        "| kind | reader | pages | failed | truth chars | CER | pages/s | chars/s "
        "| pages/s after 1st page | 1st page s | peak RSS/worker MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scores:
        out.append(
            f"| {s.kind} | {s.reader} | {s.pages} | {s.failed} | {s.truth_chars} "
            f"| {100 * s.cer:.2f}% | {s.pages_per_s:.2f} | {s.chars_per_s:.0f} "
            f"| {_fmt(s.steady_pages_per_s, '.2f')} | {_fmt(s.first_page_s, '.1f')} "
            f"| {_fmt(s.peak_rss_mb, '.0f')} |"
        )
    out += [
        "",
        "pages/s and chars/s: pages (characters read) over the wall time of the whole run, "
        "start-up included (hwr-batch: process start, model loading, every output written; "
        "Tesseract: one process per page). CER: edit distance over truth characters, spaces "
        "and line breaks not counted; a failed page counts as read empty.",
    ]
    by_key = {(s.kind, s.reader): s for s in scores}
    ratio_rows = []
    for kind in dict.fromkeys(s.kind for s in scores):
        ours, tess = by_key.get((kind, "hwr-batch")), by_key.get((kind, "tesseract"))
        if ours is None or tess is None:
            continue
        speed = ours.pages_per_s / tess.pages_per_s if tess.pages_per_s else float("inf")
        cer = ours.cer / tess.cer if tess.cer else float("inf")
        ratio_rows.append(f"| {kind} | {speed:.2f}x | {cer:.3f} |")
    if ratio_rows:
        out += [
            "",
            "Ours / Tesseract (speed: higher is faster for us; CER: lower is better for us)",
            "",
            "| kind | pages/s ratio | CER ratio |",
            "|---|---:|---:|",
            *ratio_rows,
        ]
    if stages:
        names = list(dict.fromkeys(k for st in stages.values() for k in st))
        out += [
            "",
            f"Seconds per page by stage (in-process, 1 thread, mean of "
            f"{meta['stage_pages']} pages)",
            "",
            "| stage | " + " | ".join(stages) + " |",
            "|---|" + "---:|" * len(stages),
        ]
        for name in names:
            cells = [_fmt(stages[k].get(name), ".4f") for k in stages]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    for kind, mem in memory.items():
        if not mem.samples:
            continue
        # The first sample after a page is done: before that the workers are still starting.
        first = next((x for x in mem.samples if x.pages_done > 0), mem.samples[0])
        last = mem.samples[-1]
        out += [
            "",
            f"Worker RSS over the {kind} run ({len(mem.samples)} samples): first at "
            f"{first.pages_done} pages done: "
            + ", ".join(f"{v:.0f} MB" for v in first.rss_mb.values())
            + f"; last at {last.pages_done} pages done: "
            + ", ".join(f"{v:.0f} MB" for v in last.rss_mb.values())
            + "; peak (VmHWM) per worker: "
            + ", ".join(f"{v:.0f} MB" for v in mem.peak_mb.values()),
            "",
            "| seconds | pages done | RSS per worker MB |",
            "|---:|---:|---|",
        ]
        # Up to 8 samples, evenly spaced, first and last included.
        step = max(1, (len(mem.samples) - 1) // 7)
        picked = mem.samples[::step]
        if picked[-1] is not mem.samples[-1]:
            picked.append(mem.samples[-1])
        out += [
            f"| {x.t:.0f} | {x.pages_done} | "
            + ", ".join(f"{v:.0f}" for v in x.rss_mb.values())
            + " |"
            for x in picked
        ]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------
# Pages: generated from the test splits only.


def glyphs_for(kind: str, seed: int) -> Any:
    """Character images of the *test* splits for a page kind (``pagegen.test_glyphs``)."""
    from training import pagegen

    return pagegen.test_glyphs(kind, seed)


#: Page looks, drawn in turn: the "scan" style (rotation up to 4 degrees, touching and broken
#: characters, uneven light, paper grain, blur, noise, JPEG 75) and the "ruled" style (ruled
#: lines, touching characters, blur, noise, JPEG 85). Pen width varies per page (2-5 px).
PAGE_STYLES = ("scan", "scan", "ruled")


def _page_name(kind: str, i: int, style_name: str) -> str:
    # Scans are stored as JPEG and ruled pages as PNG: both formats users bring.
    return f"{kind}_{i:04d}.{'jpg' if style_name == 'scan' else 'png'}"


@dataclass(frozen=True)
class PageJob:
    kind: str
    index: int
    seed: int
    dest: Path
    size: tuple[int, int]
    n_chars: int


def _make_page(job: PageJob) -> tuple[str, str, int]:
    import cv2

    from training import pagegen

    kind, i = job.kind, job.index
    style_name = PAGE_STYLES[i % len(PAGE_STYLES)]
    data = _GLYPHS.get(kind)
    if data is None:
        data = _GLYPHS[kind] = glyphs_for(kind, job.seed)
    look = pagegen.style(style_name, size=job.size, n_chars=job.n_chars)
    gray, truth = pagegen.generate_page(data, look, seed=job.seed * 100_003 + i)
    dest = job.dest
    name = _page_name(kind, i, style_name)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if name.endswith(".jpg") else []
    if not cv2.imwrite(str(dest / name), gray, params):
        raise OSError(f"cannot write {dest / name}")
    return name, truth.text, truth.n_chars


_GLYPHS: dict[str, Any] = {}


def generate_pages(
    kind: str,
    n: int,
    seed: int,
    dest: Path,
    jobs: int,
    unique: int | None = None,
    size: tuple[int, int] = A4_300DPI,
    n_chars: int = 300,
) -> dict[str, str]:
    """Write ``n`` pages of ``kind`` into ``dest``; return {file name: truth text}.

    ``unique`` < ``n``: only that many distinct pages are drawn and the rest are hard links to
    them (for long memory runs, where drawing 1,000 pages would take longer than reading them);
    every file is still read in full by the batch.
    """
    from concurrent.futures import ProcessPoolExecutor

    dest.mkdir(parents=True, exist_ok=True)
    n_unique = n if unique is None else max(1, min(unique, n))
    jobs_list = [PageJob(kind, i, seed, dest, size, n_chars) for i in range(n_unique)]
    if jobs > 1 and n_unique > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            made = list(pool.map(_make_page, jobs_list, chunksize=4))
    else:
        made = [_make_page(j) for j in jobs_list]
    truth = {name: text for name, text, _ in made}
    for i in range(n_unique, n):
        src_name, text, _ = made[i % n_unique]
        name = f"{kind}_{i:04d}{Path(src_name).suffix}"
        os.link(dest / src_name, dest / name)
        truth[name] = text
    return truth


# ------------------------------------------------------------------------------------------
# The command.


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not WxH: {text!r}") from None
    return w, h


def add_page_shape_args(p: argparse.ArgumentParser) -> None:
    """``--size WxH`` and ``--chars N``: the generated pages' size and characters a page."""
    p.add_argument(
        "--size",
        type=_size,
        default=A4_300DPI,
        metavar="WxH",
        help="page size in pixels (default: 2480x3508, A4 at 300 dpi)",
    )
    p.add_argument("--chars", type=int, default=300, help="characters per page (default: 300)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_pages",
        description="Read generated pages with hwr-batch (and Tesseract); report CER, speed, "
        "memory and per-stage seconds.",
    )
    p.add_argument("--pages", type=int, default=30, help="pages per kind (default: 30)")
    p.add_argument("--kind", choices=(*KINDS, "all"), default="all", help="page kind")
    p.add_argument("--jobs", type=int, default=2, help="worker processes, ours and Tesseract's")
    p.add_argument("--no-tesseract", action="store_true", help="skip the Tesseract comparison")
    p.add_argument(
        "--cpus",
        type=lambda t: {int(c) for c in t.split(",")},
        metavar="LIST",
        help="pin both readers (and the stage timing) to these CPUs, e.g. 0,1 (default: none)",
    )
    p.add_argument(
        "--gen-jobs", type=int, help="processes drawing the pages (default: --jobs; not timed)"
    )
    p.add_argument("--out", type=Path, help="working folder (default: a new temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="page generator seed")
    p.add_argument(
        "--datasets",
        type=Path,
        help="data folder with mnist/ (default: $HWR_DATASETS, else ../shared/datasets)",
    )
    add_page_shape_args(p)
    p.add_argument(
        "--stage-pages",
        type=int,
        default=5,
        help="pages per kind timed stage by stage in-process (0: skip)",
    )
    p.add_argument(
        "--rss-every",
        type=float,
        default=0.0,
        metavar="S",
        help="record worker RSS every S seconds (memory flatness; 0: peaks only)",
    )
    p.add_argument(
        "--unique",
        type=int,
        default=None,
        metavar="K",
        help="draw only K distinct pages per kind, the rest hard links (long memory runs)",
    )
    p.add_argument("--keep-pages", action="store_true", help="keep the generated pages and outputs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.pages < 1 or args.jobs < 1:
        print("bench_pages: --pages and --jobs must be at least 1", file=sys.stderr)
        return 2
    global _CPUS
    _CPUS = args.cpus
    if args.datasets is not None:
        os.environ["HWR_DATASETS"] = str(args.datasets.resolve())
    kinds = list(KINDS) if args.kind == "all" else [args.kind]
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="hwr-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    tess = None if args.no_tesseract else tesseract_version()
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "pages_per_kind": args.pages,
        "unique_pages_per_kind": args.unique or args.pages,
        "jobs": args.jobs,
        "cpus": sorted(args.cpus) if args.cpus else None,
        "seed": args.seed,
        "page_size": list(args.size),
        "chars_per_page": args.chars,
        "stage_pages": args.stage_pages,
        "cpu_count": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "tesseract": tess,
        "targets": TARGETS,
    }
    scores: list[Score] = []
    memory: dict[str, MemoryReport] = {}
    stages: dict[str, dict[str, float]] = {}
    page_files: dict[str, list[Path]] = {}
    for kind in kinds:
        pages_dir = out / "pages" / kind
        if pages_dir.exists():
            shutil.rmtree(pages_dir)
        t0 = time.perf_counter()
        truth = generate_pages(
            kind,
            args.pages,
            args.seed,
            pages_dir,
            args.gen_jobs or args.jobs,
            args.unique,
            args.size,
            args.chars,
        )
        (out / f"truth_{kind}.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
        print(
            f"{kind}: {len(truth)} pages generated in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        files = sorted(pages_dir / name for name in truth)
        page_files[kind] = files
        ours = run_cli(kind, pages_dir, out / "hwr-batch" / kind, args.jobs, args.rss_every)
        scores.append(score_run(ours, truth))
        if ours.memory is not None:
            memory[kind] = ours.memory
        print(f"{kind}: hwr-batch {ours.pages} pages in {ours.seconds:.1f} s", file=sys.stderr)
        if tess is not None:
            theirs = run_tesseract(kind, files, args.jobs)
            scores.append(score_run(theirs, truth))
            print(
                f"{kind}: tesseract {theirs.pages} pages in {theirs.seconds:.1f} s",
                file=sys.stderr,
            )
    status = 0
    if args.stage_pages > 0:
        for kind in kinds:
            try:
                stages[kind] = stage_seconds(kind, page_files[kind], args.stage_pages)
            except Exception as exc:  # keep the figures already measured; say what failed
                print(f"{kind}: stage timing failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                meta.setdefault("stage_errors", {})[kind] = f"{type(exc).__name__}: {exc}"
                status = 1
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = markdown_report(scores, stages, memory, meta)
    print(report)
    doc = {
        "meta": meta,
        "results": [s.to_dict() for s in scores],
        "stage_seconds": stages,
        "memory": {
            kind: {
                "peak_mb_per_worker": list(m.peak_mb.values()),
                "samples": [asdict(x) for x in m.samples],
            }
            for kind, m in memory.items()
        },
    }
    (out / "bench_pages.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
    (out / "bench_pages.md").write_text(report, encoding="utf-8")
    if not args.keep_pages:
        for sub in ("pages", "hwr-batch"):
            shutil.rmtree(out / sub, ignore_errors=True)
    print(f"figures written to {out / 'bench_pages.json'}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
