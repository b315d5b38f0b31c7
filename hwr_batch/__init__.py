"""hwr-batch: batch OCR for scanned pages of handwritten characters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hwr_batch.classify import Classifier, load_classifier
from hwr_batch.errors import ExitCode, HwrError
from hwr_batch.normalize import normalize
from hwr_batch.records import BBox, Char, Field, Line, PageResult, Word

__version__ = "0.1.0"

__all__ = [
    "BBox",
    "Char",
    "Classifier",
    "ExitCode",
    "Field",
    "HwrError",
    "Line",
    "PageResult",
    "Word",
    "load_classifier",
    "normalize",
    "read_file",
    "read_page",
]

if TYPE_CHECKING:
    from hwr_batch.pipeline import read_file, read_page


def __getattr__(name: str) -> Any:
    # The page pipeline pulls in scikit-image and pypdfium2; import it only when asked so that
    # `import hwr_batch` for classification alone stays fast.
    if name in ("read_page", "read_file"):
        from hwr_batch import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
