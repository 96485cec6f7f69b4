"""Shared fixtures: the real CIFAR-10 folder (``$CIFAR10_DIR`` or ``../shared`` beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_COPY = REPO.parent / "shared" / "cifar10" / "cifar-10-batches-py"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("CIFAR10_DIR") or SHARED_COPY)
    if not (path / "data_batch_1").is_file():
        pytest.fail(f"the real CIFAR-10 folder is needed for the tests: set CIFAR10_DIR "
                    f"(looked at {path})")
    return path


@pytest.fixture(scope="session")
def cifar_train(data_dir):
    from cifar_search import data

    return data.load_train(data_dir)
