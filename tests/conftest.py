"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hwr_batch.classify import Classifier, load_classifier
from hwr_batch.errors import ModelError

_REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The shared data folder (``$HWR_DATASETS`` or ``../shared/datasets``); skips when absent."""
    root = Path(os.environ.get("HWR_DATASETS") or _REPO.parent / "shared" / "datasets")
    if not (root / "README.md").is_file():
        pytest.skip(f"shared data sets not found at {root} (set HWR_DATASETS)")
    return root


@pytest.fixture(scope="session")
def digits() -> Classifier:
    """The bundled digits model; skips when it is not installed."""
    try:
        return load_classifier("digits")
    except ModelError as exc:
        pytest.skip(f"no digits model in hwr_batch/models ({exc})")
