"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The shared data folder (``$HWR_DATASETS`` or ``../shared/datasets``); skips when absent."""
    root = Path(os.environ.get("HWR_DATASETS") or _REPO.parent / "shared" / "datasets")
    if not (root / "README.md").is_file():
        pytest.skip(f"shared data sets not found at {root} (set HWR_DATASETS)")
    return root
