"""``hwr-batch``: read folders of scanned pages into per-page JSON/CSV.

One error boundary (:func:`main`): an :class:`~hwr_batch.errors.HwrError` becomes one line on
stderr (``hwr-batch: error: <file>: <reason>``) and its exit code; anything else is a bug and gets
a traceback only with ``-v``. stdout carries data only (the final one-line summary).

Sub-commands: ``hwr-batch NAME ...`` where NAME is a key of :data:`SUBCOMMANDS` hands the rest
of the command line to that module's ``main(argv) -> int``; anything else is the batch command.
A new sub-command is one line in :data:`SUBCOMMANDS`; a new batch option is one
``add_argument`` in :func:`build_parser` plus a field of ``ReadOptions`` or a keyword of
``run_batch``. An input that happens to be named like a sub-command is given as ``./NAME``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from hwr_batch import defaults
from hwr_batch.errors import BadArguments, ExitCode, HwrError

PROG = "hwr-batch"

#: Sub-command name -> "module:function"; the function takes argv (list[str]) and returns an
#: exit code. Modules are imported only when their sub-command is used.
SUBCOMMANDS: dict[str, str] = {
    "serve": "hwr_batch.web:serve_main",
    "template": "hwr_batch.template:main",
}

EPILOG = """\
outputs (under OUTDIR, mirroring the input tree):
  <file>.pNNN.json         page result (schema hwr-batch/page/v1), written last
  <file>.pNNN.csv          one row per character
  <file>.pNNN.overlay.png  boxes and labels (--overlay)
  <file>.pNNN.review/      crops of characters under --min-confidence
  summary.csv, errors.csv, review.csv   for the whole batch, rebuilt every run

resume: pages whose JSON exists are skipped; --force reads them again.

exit codes:
  0    every page was read (or kept from an earlier run)
  1    some inputs failed (see errors.csv); every readable page was written
  2    bad arguments: unknown option, missing input, no input files, unusable model
  3    every input failed
  130  interrupted (Ctrl-C); run the same command again to resume
"""


class UsageError(BadArguments):
    """A command line argparse rejects; its traceback would say nothing, even with -v."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports through the CLI's single error boundary (one line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number_in(low: float, high: float, says: str) -> Callable[[str], float]:
    """An argparse type: a float in [low, high]; ``says`` names the range in the error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {says}, got {text}")
        return value

    return parse


_confidence = _number_in(0.0, 1.0, "between 0 and 1")
# Finite: an infinite limit is "no limit", which is 0.
_seconds = _number_in(0.0, sys.float_info.max, "0 or a positive number of seconds")


def build_parser() -> argparse.ArgumentParser:
    """The batch command's parser (sub-commands have their own)."""
    parser = _Parser(
        prog=PROG,
        description="Read scanned pages of handwritten characters into per-page JSON and CSV.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image/PDF files or folders (searched recursively): "
        "png jpg jpeg bmp webp tif tiff pdf",
    )
    parser.add_argument("-o", "--outdir", required=True, metavar="OUTDIR", help="output folder")
    reading = parser.add_argument_group("reading")
    reading.add_argument(
        "--charset",
        choices=defaults.CHARSETS,
        default="digits",
        help="which bundled model reads the characters (default: digits)",
    )
    reading.add_argument("--model", metavar="PATH", help="an .onnx model instead of --charset's")
    reading.add_argument(
        "--forms",
        action="store_true",
        help="form mode: find boxes, combs and underlines and read each as a field "
        "(fields.csv); headings and printed prompts are not transcribed",
    )
    reading.add_argument(
        "--template",
        metavar="FORM.json",
        help="read the fields named in a form template (implies --forms; make one with "
        "'hwr-batch template init SCAN')",
    )
    reading.add_argument(
        "--dpi",
        type=_positive_int,
        default=defaults.PDF_DPI,
        help=f"PDF rendering resolution (default: {defaults.PDF_DPI})",
    )
    reading.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=defaults.MAX_PIXELS,
        metavar="N",
        help=f"refuse pages over N pixels (default: {defaults.MAX_PIXELS:,})",
    )
    out = parser.add_argument_group("outputs")
    out.add_argument(
        "--min-confidence",
        type=_confidence,
        default=defaults.MIN_CONFIDENCE,
        metavar="P",
        help=f"characters under P go to review.csv (default: {defaults.MIN_CONFIDENCE})",
    )
    out.add_argument("--overlay", action="store_true", help="write each page with boxes drawn")
    out.add_argument("--force", action="store_true", help="read pages again even if done")
    run = parser.add_argument_group("running")
    run.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes (default: number of cores)",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDR",
        default=None,
        help="run on Dask (pip install 'hwr-batch[dask]'): a scheduler address tcp://HOST:8786, "
        "or local[:N] for a cluster of N worker processes here (docs/scale-out.md)",
    )
    run.add_argument(
        "--page-timeout",
        type=_seconds,
        default=defaults.PAGE_TIMEOUT_S,
        metavar="S",
        help="give up on a page after S seconds: an errors.csv row, the batch goes on "
        f"(default: {defaults.PAGE_TIMEOUT_S:g}; 0: no limit; local workers only, not Dask)",
    )
    talk = run.add_mutually_exclusive_group()
    talk.add_argument(
        "-v", "--verbose", action="store_true", help="tracebacks and per-file details"
    )
    talk.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return parser


def run_batch_command(argv: Sequence[str]) -> int:
    """The batch command: parse, run, print the summary line, return the exit code."""
    args = build_parser().parse_args(list(argv))
    # Imported here so `hwr-batch --help` and sub-commands stay fast.
    from hwr_batch.batch import ReadOptions, TaskFailed, run_batch
    from hwr_batch.progress import make_progress

    options = ReadOptions(
        charset=args.charset,
        model=args.model,
        dpi=args.dpi,
        max_pixels=args.max_pixels,
        min_confidence=args.min_confidence,
        overlay=args.overlay,
        forms=args.forms or args.template is not None,
        template=args.template,
        page_timeout=args.page_timeout or None,
    )
    if args.template is not None:
        from hwr_batch.template import load_template

        load_template(args.template)  # a bad template: one error line before any page is read

    def on_failure(f: TaskFailed) -> None:
        where = f.source if f.page is None else f"{f.source} (page {f.page})"
        # Shown even with -q: each is also a row in errors.csv, and the run goes on.
        log.error("error: %s: %s", where, f.reason)
        if args.verbose and f.detail:
            log.debug("%s", f.detail.rstrip())

    # Errors in the batch are per file and go on; they are printed as they happen, not fatal.
    inputs, outdir = args.inputs, args.outdir
    if args.scheduler is not None and "://" in args.scheduler:
        # Workers of a remote cluster resolve paths themselves, each in its own working folder:
        # local paths must be absolute (on storage mounted at the same place everywhere).
        inputs = [p if "://" in p else os.path.abspath(p) for p in inputs]  # noqa: PTH100
        outdir = outdir if "://" in outdir else os.path.abspath(outdir)  # noqa: PTH100
    progress = make_progress(quiet=args.quiet)
    report = run_batch(
        inputs,
        outdir,
        options,
        jobs=args.jobs,
        force=args.force,
        scheduler=args.scheduler,
        progress=progress,
        on_failure=on_failure,
    )
    print(report.summary_line(), flush=True)
    if report.review_without_crop:
        log.warning(
            "%d review characters have no crop (pages read with a lower --min-confidence); "
            "use --force to regenerate them",
            report.review_without_crop,
        )
    if report.interrupted:
        return int(ExitCode.interrupted)
    failed = report.files_failed + report.pages_failed
    if failed == 0:
        return int(ExitCode.ok)
    if report.pages_ok == 0:
        return int(ExitCode.all_inputs_failed)
    return int(ExitCode.some_inputs_failed)


log = logging.getLogger(PROG)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever sys.stderr is at the time, so lines logged while the rich progress
    display redirects stderr appear above the bar instead of tearing it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)


def _resolve(name: str) -> Callable[[list[str]], int]:
    module, _, func = SUBCOMMANDS[name].partition(":")
    fn: Callable[[list[str]], int] = getattr(importlib.import_module(module), func or "main")
    return fn


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (the script wrapper passes it to sys.exit)."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in args or "--verbose" in args
    _setup_logging(verbose, "-q" in args or "--quiet" in args)
    try:
        if args and args[0] in SUBCOMMANDS:
            return int(_resolve(args[0])(args[1:]))
        return run_batch_command(args)
    except HwrError as exc:
        if verbose and not isinstance(exc, UsageError):
            traceback.print_exc(file=sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return int(ExitCode.interrupted)
    except BrokenPipeError:
        # stdout closed early (`| head`): not an error of ours; silence the interpreter's
        # second complaint at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.ok)
    except Exception as exc:
        if verbose:
            traceback.print_exc(file=sys.stderr)
        print(
            f"{PROG}: internal error: {type(exc).__name__}: {exc} (run with -v for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
