"""Batch progress on stderr: a rich bar on a terminal, plain periodic lines otherwise.

Only the parent process reports progress; workers return small records and the batch runner
calls :class:`Progress` methods as they arrive. The page total grows while the batch runs
(multi-page files are counted by the workers), so the ETA is an estimate from pages known so far.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO


class Progress(Protocol):
    def add_files(self, n: int) -> None: ...
    def add_pages(self, n: int) -> None: ...
    def page_done(self, chars: int, *, skipped: bool = False, failed: bool = False) -> None: ...
    def file_done(self) -> None: ...
    def close(self) -> None: ...


class _Counts:
    def __init__(self) -> None:
        self.files_total = 0
        self.files_done = 0
        self.pages_total = 0
        self.pages_done = 0
        #: Pages actually read this run (skipped ones do not count towards speed or ETA).
        self.pages_read = 0
        self.pages_failed = 0
        self.chars = 0
        self.start = time.monotonic()

    def add_files(self, n: int) -> None:
        self.files_total += n

    def add_pages(self, n: int) -> None:
        self.pages_total += n

    def page_done(self, chars: int, *, skipped: bool = False, failed: bool = False) -> None:
        self.pages_done += 1
        self.chars += chars
        if failed:
            self.pages_failed += 1
        elif not skipped:
            self.pages_read += 1

    def file_done(self) -> None:
        self.files_done += 1

    def close(self) -> None:
        pass

    def rates(self) -> tuple[float, float, float | None]:
        """(pages/s, chars/s, ETA seconds or None) over pages read this run."""
        elapsed = max(time.monotonic() - self.start, 1e-6)
        pages_s = self.pages_read / elapsed
        chars_s = self.chars / elapsed
        left = self.pages_total - self.pages_done
        eta = left / pages_s if pages_s > 0 else None
        return pages_s, chars_s, eta


class NullProgress(_Counts):
    """Counts only (``-q``)."""


def _fmt_eta(eta: float | None) -> str:
    if eta is None:
        return "--:--"
    m, s = divmod(int(eta + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class PlainProgress(_Counts):
    """One line every ``interval`` seconds on ``stream`` (a log file, CI output)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._last = time.monotonic()

    def _line(self) -> str:
        pages_s, chars_s, eta = self.rates()
        return (
            f"hwr-batch: files {self.files_done}/{self.files_total}, "
            f"pages {self.pages_done}/{self.pages_total} ({self.pages_failed} failed), "
            f"{chars_s:.0f} chars/s, {pages_s:.1f} pages/s, ETA {_fmt_eta(eta)}"
        )

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            print(self._line(), file=self.stream, flush=True)

    def page_done(self, chars: int, *, skipped: bool = False, failed: bool = False) -> None:
        super().page_done(chars, skipped=skipped, failed=failed)
        self._maybe_print()

    def close(self) -> None:
        print(self._line(), file=self.stream, flush=True)


class RichProgress(_Counts):
    """A live rich progress display on stderr."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(file=stream if stream is not None else sys.stderr),
            transient=False,
            refresh_per_second=4,
        )
        self._task: Any = self._progress.add_task("pages", total=None, detail="")
        self._progress.start()

    def _refresh(self) -> None:
        pages_s, chars_s, eta = self.rates()
        self._progress.update(
            self._task,
            total=max(self.pages_total, 1),
            completed=self.pages_done,
            detail=(
                f"pages {self.pages_done}/{self.pages_total} "
                f"files {self.files_done}/{self.files_total} "
                f"failed {self.pages_failed}  {chars_s:,.0f} chars/s  ETA {_fmt_eta(eta)}"
            ),
        )

    def add_files(self, n: int) -> None:
        super().add_files(n)
        self._refresh()

    def add_pages(self, n: int) -> None:
        super().add_pages(n)
        self._refresh()

    def page_done(self, chars: int, *, skipped: bool = False, failed: bool = False) -> None:
        super().page_done(chars, skipped=skipped, failed=failed)
        self._refresh()

    def file_done(self) -> None:
        super().file_done()
        self._refresh()

    def close(self) -> None:
        self._refresh()
        self._progress.stop()


def make_progress(quiet: bool = False, stream: TextIO | None = None) -> _Counts:
    """Rich display when ``stream`` (default stderr) is a terminal, plain lines otherwise."""
    s = stream if stream is not None else sys.stderr
    if quiet:
        return NullProgress()
    if s.isatty():
        return RichProgress(s)
    return PlainProgress(s)
