"""The in-memory form every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Label sets of the three shipped models.
DIGITS = "0123456789"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ALNUM = DIGITS + LETTERS
LABEL_SETS = {"digits": DIGITS, "letters": LETTERS, "alnum": ALNUM}


@dataclass
class LabeledImages:
    """Character images with labels.

    images: uint8 (N, 28, 28), white ink on black, already passed through
        ``hwr_batch.normalize`` (or MNIST-style at the source).
    labels: str array (N,), one character per image as written ("a" stays "a"; mapping
        small letters to capitals is the training recipe's choice, not the reader's).
    groups: str array (N,), the source and writer (or the best proxy) of each image, used for
        held-out splits by writer: e.g. "chars74k/w017", "mnist/test".
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.str_]
    groups: npt.NDArray[np.str_]

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (28, 28):
            raise ValueError(
                f"images must be uint8 (N, 28, 28), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.labels) != n or len(self.groups) != n:
            raise ValueError("images, labels and groups differ in length")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> LabeledImages:
        return LabeledImages(self.images[mask], self.labels[mask], self.groups[mask])

    @staticmethod
    def concat(parts: list[LabeledImages]) -> LabeledImages:
        if not parts:
            return LabeledImages(
                np.zeros((0, 28, 28), np.uint8), np.array([], "<U1"), np.array([], "<U1")
            )
        return LabeledImages(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.groups for p in parts]),
        )
