"""The batch runner: list inputs, split them into page tasks, resume, record errors, summarise.

Layout under OUTDIR (mirrors the input tree; the input's full file name, suffix included, is
kept, so ``a/scan.png`` and ``a/scan.tif`` cannot collide)::

    OUTDIR/a/scan.png.p001.json          page result, schema hwr-batch/page/v1 (written LAST)
    OUTDIR/a/scan.png.p001.csv           one row per character
    OUTDIR/a/scan.png.p001.overlay.png   with --overlay
    OUTDIR/a/scan.png.p001.review/c0007.png   crop of character 7 (under --min-confidence)
    OUTDIR/a/scan.pdf.p001.json, ...p002.json ...   one set per page of a multi-page file
    OUTDIR/summary.csv  OUTDIR/errors.csv  OUTDIR/review.csv   batch files (rebuilt every run)
    OUTDIR/fields.csv   form fields of every page (--forms / --template)

The tree is mirrored from the single input folder, or else from the deepest folder that contains
every input, so distinct inputs always get distinct outputs.

Who writes what: a worker reads one page and writes that page's files itself (CSV, overlay,
review crops, then the JSON last), and returns a small record. The overlay and the crops need the
page's pixels, which only the worker has; shipping a 9-Mpx page back to the parent through a pipe
(or over the network from a Dask worker) would cost more than the page takes to read. The parent
alone writes the batch files and moves the progress bar. Since the JSON is written last and
atomically, "the JSON exists" means "the page is complete"; that is the resume test.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hwr_batch import defaults, export, storage
from hwr_batch.errors import (
    BadArguments,
    HwrError,
    PageTimeout,
    UnreadableInput,
    UnsupportedInput,
)
from hwr_batch.executors import Executor, WorkerCrashed, create_executor
from hwr_batch.load import SUFFIXES
from hwr_batch.progress import NullProgress, Progress

#: Input suffixes the loader reads (lower case).
SUPPORTED_SUFFIXES = SUFFIXES
#: Files that may hold several pages; their pages are counted by a worker and read as separate
#: tasks, so one 500-page PDF spreads over every worker.
MULTIPAGE_SUFFIXES = (".tif", ".tiff", ".pdf")

SUMMARY_COLUMNS = [
    "file",
    "page",
    "characters",
    "mean_confidence",
    "low_confidence",
    "status",
    "error",
    "output",
]
ERRORS_COLUMNS = ["file", "page", "error_type", "reason"]
#: fields.csv (form mode): one row per form field of every page.
FIELDS_COLUMNS = ["file", "page", "field", "value", "confidence", "needs_review"]
REVIEW_COLUMNS = [
    "crop",
    "file",
    "page",
    "index",
    "line",
    "word",
    "char",
    "field",
    "x",
    "y",
    "w",
    "h",
    "label",
    "confidence",
    "alternatives",
]

_PAGE_JSON_RE = re.compile(r"\.p(\d{3,})\.json$")


# --------------------------------------------------------------------------------------------
# Options, tasks and results: small and picklable, they cross process (and machine) boundaries.


@dataclass(frozen=True)
class ReadOptions:
    """How every page of the batch is read and what is written for it."""

    charset: str = "digits"
    #: A model file; None: the bundled model of ``charset``.
    model: str | None = None
    dpi: int = defaults.PDF_DPI
    max_pixels: int = defaults.MAX_PIXELS
    min_confidence: float = defaults.MIN_CONFIDENCE
    overlay: bool = False
    forms: bool = False
    template: str | None = None
    #: Seconds a page may take; None: no limit.
    page_timeout: float | None = defaults.PAGE_TIMEOUT_S

    @property
    def model_ref(self) -> str:
        return self.model if self.model is not None else self.charset


@dataclass(frozen=True)
class CountTask:
    source: str


@dataclass(frozen=True)
class PageTask:
    source: str
    page: int
    #: Output path without suffix: OUTDIR/<relative input path>.pNNN
    stem: str
    options: ReadOptions


@dataclass(frozen=True)
class PageDone:
    source: str
    page: int
    chars: int
    seconds: float


@dataclass(frozen=True)
class TaskFailed:
    """An input (or one page of it) that could not be read; one errors.csv row."""

    source: str
    page: int | None
    error_type: str
    reason: str
    #: Traceback for unexpected errors (shown with -v), empty for typed input errors.
    detail: str = ""


def _one_line(exc: BaseException, source: str) -> str:
    msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    # Typed errors name the file first ("scan.pdf: encrypted"); the row has a file column.
    for prefix in (f"{source}: ", f"{Path(source).name}: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def _failure(exc: BaseException, source: str, page: int | None) -> TaskFailed:
    detail = "" if isinstance(exc, HwrError) else traceback.format_exc()
    return TaskFailed(source, page, type(exc).__name__, _one_line(exc, source), detail)


# --------------------------------------------------------------------------------------------
# Worker side.

_prepared: set[str] = set()


def prepare_worker(options: ReadOptions) -> None:
    """Make this process a batch worker: one thread each for onnxruntime and OpenCV, model loaded.

    Idempotent and cheap after the first call, so executors without an initialiser hook (Dask)
    can call it at the start of every task. Several workers on one machine each using every core
    would fight for them; one thread per worker and one worker per core keeps every core busy
    without oversubscription.
    """
    if options.model_ref in _prepared:
        return
    os.environ["HWR_THREADS"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)
    from hwr_batch.classify import load_classifier, second_models

    # The page's model and, for a bundled one, the models of its second opinion.
    second_models(load_classifier(options.model_ref, threads=1))
    _prepared.add(options.model_ref)


def count_file_pages(task: CountTask) -> int | TaskFailed:
    """Worker task: the number of pages in a multi-page file, or why it cannot be read."""
    from hwr_batch.load import count_pages

    try:
        return int(count_pages(task.source))
    except Exception as exc:  # every failure is recorded against the file; the batch goes on
        return _failure(exc, task.source, None)


def page_paths(stem: str) -> dict[str, str]:
    """Output files of one page from its stem (``OUTDIR/<rel>.pNNN``)."""
    return {
        "json": f"{stem}.json",
        "csv": f"{stem}.csv",
        "overlay": f"{stem}.overlay.png",
        "review": f"{stem}.review",
    }


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`PageTimeout` in the block after ``seconds``; stop the worker at twice that.

    The soft limit is a SIGALRM whose handler raises, which Python delivers as soon as control
    returns from native code (OpenCV and onnxruntime calls on one page take milliseconds). A page
    stuck inside one native call never returns, so in a worker process a watchdog thread ends the
    process at ``PAGE_TIMEOUT_HARD_FACTOR`` times the limit; the batch then replaces the worker
    and records the page. Signals reach only the main thread: tasks that run in threads (Dask
    workers) get no limit.
    """
    if (
        not seconds
        or threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "setitimer")
    ):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise PageTimeout(f"took longer than {seconds:g} s (--page-timeout); skipped")

    watchdog: threading.Timer | None = None
    if multiprocessing.parent_process() is not None:
        watchdog = threading.Timer(seconds * defaults.PAGE_TIMEOUT_HARD_FACTOR, os._exit, (70,))
        watchdog.daemon = True
        watchdog.start()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if watchdog is not None:
            watchdog.cancel()


def read_page_task(task: PageTask) -> PageDone | TaskFailed:
    """Worker task: read one page and write its files (JSON last); return a small record."""
    t0 = time.perf_counter()
    opts = task.options
    paths = page_paths(task.stem)
    try:
        prepare_worker(opts)
        from hwr_batch.classify import load_classifier
        from hwr_batch.load import load_page
        from hwr_batch.pipeline import read_page

        # A redone page (--force) is "not done" until its new JSON lands; if reading fails now,
        # no stale JSON claims otherwise.
        local_json = storage.to_local(paths["json"])
        if local_json is not None:
            local_json.unlink(missing_ok=True)
        clf = load_classifier(opts.model_ref, threads=1)
        # Reading only: the writes below are short and atomic, and are not cut off half way.
        with _time_limit(opts.page_timeout):
            loaded = load_page(task.source, task.page, dpi=opts.dpi, max_pixels=opts.max_pixels)
            result = read_page(
                loaded.gray,
                # The JSON's "charset" names the model that read the page.
                opts.charset if opts.model is None else clf.name,
                page=task.page,
                source=task.source,
                classifier=clf,
                dpi=opts.dpi,
                forms=opts.forms,
                template=opts.template,
            )
        export.write_page_csv(result, paths["csv"])
        if opts.overlay:
            export.write_overlay(loaded.gray, result, paths["overlay"], opts.min_confidence)
        export.write_review_crops(loaded.gray, result, paths["review"], opts.min_confidence)
        export.write_page_json(result, paths["json"])
        n_chars = sum(1 for _ in export.iter_char_rows(result))
    except Exception as exc:  # one bad page never stops the batch
        return _failure(exc, task.source, task.page)
    return PageDone(task.source, task.page, n_chars, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Listing inputs and the output layout.


@dataclass(frozen=True)
class InputFile:
    #: The file as the batch names it (CSV "file" column, JSON "source").
    source: str
    #: Path relative to the mirrored root, "/"-separated: the output location under OUTDIR.
    rel: str

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.rel).suffix.lower()

    @property
    def multipage(self) -> bool:
        return self.suffix in MULTIPAGE_SUFFIXES


def page_stem(outdir: str, rel: str, page: int) -> str:
    """``OUTDIR/<rel>.pNNN``: the common prefix of a page's output files."""
    return storage.join(outdir, f"{rel}.p{page:03d}")


def _abs(p: str) -> str:
    # abspath, not resolve(): keep the user's symlinked folder names in the mirrored tree.
    return p if storage.is_url(p) else os.path.abspath(p)  # noqa: PTH100


def _mirror_root(inputs: Sequence[str]) -> str:
    if len(inputs) == 1 and storage.is_dir(inputs[0]):
        return _abs(inputs[0])
    parents = []
    for p in inputs:
        a = _abs(p).rstrip("/")
        parents.append(a.rsplit("/", 1)[0] if storage.is_url(a) else str(Path(a).parent))
    urls = {storage.is_url(p) for p in parents}
    if len(urls) > 1:
        raise BadArguments("inputs mix local paths and URLs; use one kind per batch")
    if urls == {True}:
        schemes = {p.split("://", 1)[0] for p in parents}
        if len(schemes) > 1:
            raise BadArguments("inputs on different storage systems; use one per batch")
        scheme = schemes.pop()
        common = os.path.commonpath([p.split("://", 1)[1] for p in parents])
        return f"{scheme}://{common}"
    return os.path.commonpath(parents)


def list_inputs(inputs: Sequence[str], outdir: str | None = None) -> list[InputFile]:
    """Every input file under ``inputs`` (folders recursively, supported suffixes, no hidden
    files), each with its collision-free relative output path. Files named explicitly are kept
    whatever their suffix (an unsupported one becomes an errors.csv row).

    Raises BadArguments for an input that does not exist.
    """
    if not inputs:
        raise BadArguments("no input given")
    for p in inputs:
        if not storage.exists(p):
            raise BadArguments(f"{p}: no such file or folder")
    root = _mirror_root(inputs)
    out_abs = _abs(outdir).rstrip("/") if outdir is not None else None
    seen: set[str] = set()
    files: list[InputFile] = []
    for p in inputs:
        is_folder = storage.is_dir(p)
        listed = storage.list_files(p, SUPPORTED_SUFFIXES if is_folder else None)
        for f in listed:
            fa = _abs(f)
            # Outputs written inside an input folder (overlays are PNGs) are not inputs.
            if out_abs is not None and (fa == out_abs or fa.startswith(out_abs + os.sep)):
                continue
            key = fa if storage.is_url(fa) else os.path.realpath(fa)
            if key in seen:
                continue
            seen.add(key)
            if storage.is_url(fa):
                rel = str(storage.relative_to(fa, root))
            else:
                rel = PurePosixPath(*Path(os.path.relpath(fa, root)).parts).as_posix()
            files.append(InputFile(f, rel))
    return files


# --------------------------------------------------------------------------------------------
# Batch files, rebuilt from every page JSON under OUTDIR.


def iter_page_jsons(outdir: str) -> Iterator[str]:
    """Paths of the page JSONs under OUTDIR (``*.pNNN.json``), sorted."""
    if storage.is_url(outdir):
        yield from (p for p in storage.list_files(outdir, [".json"]) if _PAGE_JSON_RE.search(p))
        return
    base = Path(outdir)
    found = []
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not d.endswith(".review")]
        found += [str(Path(dirpath, f)) for f in files if _PAGE_JSON_RE.search(f)]
    yield from sorted(found)


def _rel_out(path: str, outdir: str) -> str:
    return (
        str(storage.relative_to(path, outdir))
        if storage.is_url(path)
        else (Path(os.path.relpath(path, outdir)).as_posix())
    )


def _list_names(folder: str) -> set[str]:
    """Names of the files in a folder (plain path or URL); empty when it does not exist."""
    if storage.is_url(folder):
        return (
            {PurePosixPath(p).name for p in storage.list_files(folder)}
            if storage.is_dir(folder)
            else set()
        )
    try:
        return {p.name for p in Path(folder).iterdir()}
    except OSError:
        return set()


def write_batch_files(
    outdir: str,
    errors: Sequence[TaskFailed],
    read_stems: set[str],
    min_confidence: float,
) -> dict[str, int]:
    """Rebuild summary.csv, errors.csv and review.csv from every page JSON plus ``errors``.

    ``read_stems``: stems of the pages read in this run (status "read"; other JSONs "kept").
    Returns counts: pages, review rows, and review rows without a crop (crops are written when a
    page is read, for the threshold of that run; a higher threshold later finds none).
    """
    summary: list[list[Any]] = []
    review: list[list[Any]] = []
    fields: list[list[Any]] = []
    missing_crops = 0
    error_rows = [
        [e.source, "" if e.page is None else e.page, e.error_type, e.reason] for e in errors
    ]
    for jpath in iter_page_jsons(outdir):
        stem = jpath[: -len(".json")]
        try:
            doc = json.loads(storage.read_bytes(jpath))
            rows = list(export.iter_dict_char_rows(doc))
            source, page = str(doc["source"]), int(doc["page"])
        except (OSError, ValueError, KeyError, TypeError, HwrError) as exc:
            # Cannot come from our atomic writes; a hand-edited or foreign file. Say so.
            reason = f"unreadable page JSON {_rel_out(jpath, outdir)} ({exc}); rerun with --force"
            error_rows.append([jpath, "", "UnreadableOutput", reason.splitlines()[0]])
            continue
        for fld in doc.get("fields", []):
            fields.append(
                [source, page, fld["name"], fld["value"], fld["confidence"], fld["needs_review"]]
            )
        confs = [r.confidence for r in rows]
        low = [r for r in rows if r.confidence < min_confidence]
        summary.append(
            [
                source,
                page,
                len(rows),
                round(sum(confs) / len(confs), 4) if confs else "",
                len(low),
                "read" if stem in read_stems else "kept",
                "",
                _rel_out(jpath, outdir),
            ]
        )
        review_dir = page_paths(stem)["review"]
        review_rel = _rel_out(review_dir, outdir)
        # One listing per page rather than one existence check per crop.
        crops = _list_names(review_dir) if low else set()
        for r in low:
            crop_name = export.review_crop_name(r.index)
            if crop_name in crops:
                crop_rel = f"{review_rel}/{crop_name}"
            else:
                crop_rel = ""
                missing_crops += 1
            ch = r.char
            review.append(
                [
                    crop_rel,
                    source,
                    page,
                    r.index,
                    "" if r.line is None else r.line,
                    "" if r.word is None else r.word,
                    "" if r.pos is None else r.pos,
                    r.field,
                    *ch.bbox.to_list(),
                    ch.label,
                    round(float(ch.confidence), 4),
                    " ".join(f"{lab}:{p:.4f}" for lab, p in ch.alternatives),
                ]
            )
    for e in errors:
        summary.append(
            [e.source, "" if e.page is None else e.page, 0, "", 0, "failed", e.reason, ""]
        )

    def order(row: list[Any]) -> tuple[str, int]:
        return (str(row[0]), row[1] if isinstance(row[1], int) else 0)

    summary.sort(key=order)
    error_rows.sort(key=order)
    review.sort(key=lambda r: (str(r[1]), r[2], r[3]))
    export.write_rows_csv(storage.join(outdir, "summary.csv"), SUMMARY_COLUMNS, summary)
    export.write_rows_csv(storage.join(outdir, "errors.csv"), ERRORS_COLUMNS, error_rows)
    export.write_rows_csv(storage.join(outdir, "review.csv"), REVIEW_COLUMNS, review)
    if fields:
        # Rows keep the page's field order (reading order, or the template's).
        fields.sort(key=lambda r: (str(r[0]), r[1]))
        export.write_rows_csv(storage.join(outdir, "fields.csv"), FIELDS_COLUMNS, fields)
    return {"pages": len(summary) - len(errors), "review": len(review), "no_crop": missing_crops}


# --------------------------------------------------------------------------------------------
# The run.


@dataclass
class BatchReport:
    """What a run did; the CLI turns it into the final line and the exit code."""

    outdir: str
    files: int = 0
    files_failed: int = 0
    pages_read: int = 0
    pages_kept: int = 0
    pages_failed: int = 0
    chars_read: int = 0
    seconds: float = 0.0
    worker_restarts: int = 0
    interrupted: bool = False
    errors: list[TaskFailed] = field(default_factory=list)
    review_rows: int = 0
    review_without_crop: int = 0

    @property
    def pages_ok(self) -> int:
        return self.pages_read + self.pages_kept

    def summary_line(self) -> str:
        rate = self.pages_read / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"{self.files} files: {self.pages_read} pages read, {self.pages_kept} kept from "
            f"earlier runs, {self.pages_failed + self.files_failed} failed; "
            f"{self.chars_read} characters, {self.review_rows} to review; "
            f"{rate:.1f} pages/s; outputs in {self.outdir}"
        )
        return line + (" (interrupted; run again to resume)" if self.interrupted else "")


@contextlib.contextmanager
def _outdir_lock(outdir: str) -> Iterator[None]:
    """Hold an exclusive lock on a local OUTDIR: two runs into one folder would clean each
    other's temporary files and race on the batch files."""
    local = None if storage.is_url(outdir) else Path(outdir)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run per folder is on the user
        local = None
    if local is None:
        yield
        return
    fh = (local / ".hwr-batch.lock").open("a")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BadArguments(f"{outdir}: another hwr-batch run is writing here") from exc
        yield
    finally:
        fh.close()


#: Tasks kept in flight per worker: enough to keep workers busy between parent wake-ups, few
#: enough that a crashed pool has little to re-run and memory stays flat on huge batches.
IN_FLIGHT_PER_WORKER = 2
#: Seconds between parent wake-ups when no task finishes (progress refresh, Ctrl-C latency).
WAIT_TICK_S = 0.5


def run_batch(
    inputs: Sequence[str],
    outdir: str,
    options: ReadOptions,
    *,
    jobs: int | None = None,
    force: bool = False,
    scheduler: str | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    on_failure: Callable[[TaskFailed], None] | None = None,
) -> BatchReport:
    """Read every page of ``inputs`` into ``outdir``; resume unless ``force``.

    Raises BadArguments/ModelError (exit code 2) before any work for a missing input, no input
    files, or an unusable model. Every other problem is a row in errors.csv. ``on_failure`` is
    called in the parent for each failure as it happens (the CLI prints it). Ctrl-C stops
    submitting, lets running pages finish, writes the batch files and returns with
    ``interrupted=True``.
    """
    t_start = time.monotonic()
    files = list_inputs(inputs, outdir)
    if not files:
        raise BadArguments(f"{', '.join(inputs)}: no input files ({' '.join(SUPPORTED_SUFFIXES)})")
    from hwr_batch.classify import load_classifier

    # Fail before any work on a model that cannot be loaded (exit code 2, not N error rows).
    load_classifier(options.model_ref, threads=1)
    storage.makedirs(outdir)
    report = BatchReport(outdir=outdir, files=len(files))
    prog: Progress = progress if progress is not None else NullProgress()
    read_stems: set[str] = set()

    with _outdir_lock(outdir):
        export.remove_stale_temps(outdir)
        own_executor = executor is None
        ex = executor or create_executor(scheduler, jobs, prepare_worker, options)
        try:
            _drive(files, outdir, options, force, ex, prog, report, read_stems, on_failure)
        except KeyboardInterrupt:
            report.interrupted = True
            # Running pages finish and write their files (workers ignore SIGINT); queued ones
            # are dropped and will be picked up by the next run.
            ex.close(cancel=True)
        finally:
            if own_executor:
                ex.close(cancel=True)
            report.worker_restarts = int(getattr(ex, "restarts", 0))
            prog.close()
        counts = write_batch_files(outdir, report.errors, read_stems, options.min_confidence)
        report.review_rows = counts["review"]
        report.review_without_crop = counts["no_crop"]
    report.seconds = time.monotonic() - t_start
    return report


def _drive(
    files: list[InputFile],
    outdir: str,
    options: ReadOptions,
    force: bool,
    ex: Executor,
    prog: Progress,
    report: BatchReport,
    read_stems: set[str],
    on_failure: Callable[[TaskFailed], None] | None,
) -> None:
    queue: deque[tuple[Callable[[Any], Any], Any, Hashable]] = deque()
    #: Tasks that were in a worker that died: re-run one at a time to find the culprit.
    suspects: deque[tuple[Callable[[Any], Any], Any, Hashable]] = deque()
    solo: Hashable | None = None
    pages_left: dict[str, int] = {}
    tasks: dict[Hashable, tuple[Callable[[Any], Any], Any, Hashable]] = {}
    failed_files: set[str] = set()
    prog.add_files(len(files))

    def fail(f: TaskFailed) -> None:
        report.errors.append(f)
        if f.page is None:
            report.files_failed += 1
            failed_files.add(f.source)
        else:
            report.pages_failed += 1
            prog.page_done(0, failed=True)
        if on_failure is not None:
            on_failure(f)

    def page_finished(source: str) -> None:
        pages_left[source] -= 1
        if pages_left[source] == 0:
            prog.file_done()

    def add_pages(f: InputFile, n: int) -> None:
        pages_left[f.source] = n
        prog.add_pages(n)
        new = []
        for page in range(1, n + 1):
            stem = page_stem(outdir, f.rel, page)
            if not force and storage.exists(page_paths(stem)["json"]):
                report.pages_kept += 1
                prog.page_done(0, skipped=True)
                page_finished(f.source)
            else:
                key = ("page", f.source, page)
                new.append((read_page_task, PageTask(f.source, page, stem, options), key))
        # Pages of a file just counted go first, so files complete one after another.
        queue.extendleft(reversed(new))

    by_source = {f.source: f for f in files}
    for f in files:
        if f.suffix not in SUPPORTED_SUFFIXES:
            fail(
                _failure(
                    UnsupportedInput(f"unsupported file type {f.suffix or '(none)'!r}"),
                    f.source,
                    None,
                )
            )
            prog.file_done()
        elif f.multipage:
            queue.append((count_file_pages, CountTask(f.source), ("count", f.source)))
        else:
            add_pages(f, 1)

    while queue or suspects or ex.in_flight():
        # Read every round: a Dask cluster may gain or lose workers while the batch runs.
        limit = max(1, ex.workers * IN_FLIGHT_PER_WORKER)
        if suspects or solo is not None:
            if ex.in_flight() == 0 and suspects:
                item = suspects.popleft()
                solo = item[2]
                tasks[item[2]] = item
                ex.submit(*item)
        else:
            while queue and ex.in_flight() < limit:
                item = queue.popleft()
                tasks[item[2]] = item
                ex.submit(*item)
        for outcome in ex.wait(timeout=WAIT_TICK_S):
            item = tasks.pop(outcome.key)
            kind, source = outcome.key[0], outcome.key[1]  # type: ignore[index]
            page = outcome.key[2] if kind == "page" else None  # type: ignore[index]
            was_solo = outcome.key == solo
            if was_solo:
                solo = None
            value = outcome.value
            if isinstance(outcome.error, WorkerCrashed):
                if was_solo:
                    value = TaskFailed(
                        source,
                        page,
                        "WorkerCrashed",
                        "the worker process died while reading this "
                        + ("page" if page else "file")
                        + " (crash, out of memory, killed, or stuck past --page-timeout)",
                    )
                else:
                    suspects.append(item)
                    continue
            elif outcome.error is not None:
                value = _failure_from(outcome.error, source, page)
            if isinstance(value, TaskFailed):
                fail(value)
                if kind == "page":
                    page_finished(source)
                else:
                    prog.file_done()
            elif kind == "count":
                n = int(value)
                if n < 1:
                    fail(_failure(UnreadableInput("no pages"), source, None))
                    prog.file_done()
                else:
                    add_pages(by_source[source], n)
            else:
                assert isinstance(value, PageDone)
                report.pages_read += 1
                report.chars_read += value.chars
                read_stems.add(item[1].stem)
                prog.page_done(value.chars)
                page_finished(source)


def _failure_from(exc: BaseException, source: str, page: int | None) -> TaskFailed:
    # An exception raised outside the task's own try (e.g. unpicklable result); no traceback
    # context here, so format the exception itself.
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return TaskFailed(source, page, type(exc).__name__, _one_line(exc, source), detail)
