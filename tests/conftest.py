"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import DatasetDict

from reid_transformers.data import load_reid_dataset, make_synthetic_reid


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Market-1501 layout (8 identities, 2 cameras), made
    once per test module; tests that damage files work on a copy."""
    return make_synthetic_reid(
        tmp_path_factory.mktemp("synthetic") / "data", num_identities=8, num_cameras=2,
        image_size=(64, 32), num_distractors=2, num_junk=1, progress=False,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> DatasetDict:
    """A loaded synthetic Market-1501-layout dataset for training runs (16 identities, 3
    cameras, distractors and junk), made once per test module."""
    root = make_synthetic_reid(
        tmp_path_factory.mktemp("synthetic") / "data", num_identities=16, num_cameras=3,
        image_size=(64, 32), num_distractors=3, num_junk=2, progress=False,
    )
    return load_reid_dataset("market1501", root, progress=False)
