"""Typed errors and the CLI's exit codes.

Every error that a person can cause (a bad file, a bad argument) is an ``HwrError`` subclass
carrying its exit code; the CLI turns it into one line. Anything else is a bug and gets a
traceback with ``-v``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of ``hwr-batch`` and ``hwr-train`` (documented in the README)."""

    ok = 0
    #: Some inputs could not be read; every readable page was still written.
    some_inputs_failed = 1
    #: Bad command-line arguments, a missing input path, an unusable model or template.
    bad_arguments = 2
    #: Every input failed.
    all_inputs_failed = 3
    #: Bad training data (wrong column count, label out of range, truncated file).
    bad_data = 4
    #: Interrupted by the user (Ctrl-C); the run can be resumed.
    interrupted = 130


class HwrError(Exception):
    """Base class: a problem a person can fix, reported as one line."""

    exit_code: ExitCode = ExitCode.bad_arguments


class BadArguments(HwrError):
    exit_code = ExitCode.bad_arguments


class ModelError(HwrError):
    """A model file is missing, unreadable or lacks the metadata the reader needs."""

    exit_code = ExitCode.bad_arguments


class InputError(HwrError):
    """An input file could not be read. Subclasses say why."""

    exit_code = ExitCode.some_inputs_failed


class UnreadableInput(InputError):
    """Missing, empty, corrupt, or not an image/PDF at all."""


class UnsupportedInput(InputError):
    """A file type the reader does not handle."""


class EncryptedPdf(InputError):
    """A password-protected PDF."""


class TooLarge(InputError):
    """A page over the pixel limit (decompression-bomb guard)."""


class PageTimeout(InputError):
    """A page that took longer than the batch's per-page time limit."""


class DataError(HwrError):
    """Training data that does not match its format; the message names file and record."""

    exit_code = ExitCode.bad_data
