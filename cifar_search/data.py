"""CIFAR-10 from the official "python version" folder, validated, plus labels and the split.

The pickles are untrusted input, so they are read with an allow-list unpickler that can only
rebuild numpy arrays. Train and test are separate functions on purpose: the search imports
and calls :func:`load_train` only; the test set is read by ``finalize`` alone.

This module does not import TensorFlow, so loading and splitting stay cheap to test.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from cifar_search.errors import CifarSearchError

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
ENV_VAR = "CIFAR10_DIR"
# Said wherever a test score is published: the shared copy is not the original byte for byte.
TEST_NOTE = "23 of the 10,000 test images in this CIFAR-10 copy are JPEG-decoded (lossy)"

# Where Keras' own cifar10.load_data() downloads from, with its checksum.
_KERAS_ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_KERAS_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except those needed to rebuild a numpy array."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ``cifar-10-batches-py`` folder: the argument, else ``$CIFAR10_DIR``, else download.

    The folder itself or its parent may be given. Only when neither the argument nor the
    environment variable is set is the dataset downloaded, the way ``keras.datasets`` does it.
    """
    given = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    if given is None:
        return _download()
    path = Path(given).expanduser()
    if (path / FOLDER_NAME).is_dir():
        path = path / FOLDER_NAME
    if not path.is_dir():
        raise CifarSearchError(
            f"CIFAR-10 folder not found: {path} (give the '{FOLDER_NAME}' folder with "
            f"--data-dir or ${ENV_VAR}, or set neither to download it)"
        )
    return path


def _download() -> Path:
    from keras.utils import get_file  # Deferred: only a download needs Keras.

    try:
        root = get_file(
            fname="cifar-10-batches-py-target",
            origin=_KERAS_ORIGIN,
            extract=True,
            file_hash=_KERAS_SHA256,
        )
    except Exception as exc:  # Network errors come in many types; all mean the same here.
        raise CifarSearchError(
            f"could not download CIFAR-10 ({exc}); give a local '{FOLDER_NAME}' folder "
            f"with --data-dir or ${ENV_VAR}"
        ) from exc
    return Path(root) / FOLDER_NAME


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file into (N x 32 x 32 x 3 uint8 images, N int64 labels)."""
    if not path.is_file():
        raise CifarSearchError(f"CIFAR-10 file missing: {path}")
    try:
        with path.open("rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # Truncated or tampered pickles raise many error types.
        raise CifarSearchError(f"CIFAR-10 file unreadable: {path} ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise CifarSearchError(f"CIFAR-10 file malformed: {path} (no b'data'/b'labels' keys)")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise CifarSearchError(f"CIFAR-10 file malformed: {path} (data is not a uint8 matrix)")
    if data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise CifarSearchError(
            f"CIFAR-10 file malformed: {path} (data {data.shape}, labels {labels.shape})"
        )
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise CifarSearchError(f"CIFAR-10 file malformed: {path} (labels outside 0..9)")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _read(folder: Path, names: tuple[str, ...], expected: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [_read_batch(folder / name) for name in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(x) != expected:
        raise CifarSearchError(f"CIFAR-10 folder {folder} holds {len(x)} images, not {expected}")
    return x, y


def load_train(data_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 50,000 training images (uint8, N x 32 x 32 x 3) and labels (int64, N)."""
    return _read(resolve_data_dir(data_dir), TRAIN_FILES, 50_000)


def load_test(data_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 test images and labels. Called by ``finalize`` only, never by the search."""
    return _read(resolve_data_dir(data_dir), (TEST_FILE,), 10_000)


def to_one_hot(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Integer labels of shape (n,) or (n, 1) to a float32 (n, num_classes) one-hot matrix."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,) or (n, 1), got {labels.shape}")
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0
                        or labels.max() >= num_classes):
        raise ValueError(f"labels must be integers in 0..{num_classes - 1}")
    one_hot = np.zeros((labels.size, num_classes), dtype=np.float32)
    one_hot[np.arange(labels.size), labels] = 1.0
    return one_hot


def split_indices(
    labels: np.ndarray, seed: int, val_size: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into sorted (train, validation) indices.

    The same labels and seed always give the same split, on every worker and machine.
    """
    train, val = train_test_split(
        np.arange(len(labels)), test_size=val_size, random_state=seed, stratify=labels
    )
    return np.sort(train), np.sort(val)


def subsample(indices: np.ndarray, labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """A seeded stratified subset of ``indices`` of the given size (all of them when None)."""
    if size is None or size >= len(indices):
        return indices
    keep, _ = train_test_split(
        indices, train_size=size, random_state=seed, stratify=labels[indices]
    )
    return np.sort(keep)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """A short hash of images and labels, so every worker can check it reads the same data."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]
