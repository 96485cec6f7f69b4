from __future__ import annotations

import pickle

import numpy as np
import pytest

from cifar_search import data
from cifar_search.errors import CifarSearchError


def test_train_set_is_complete_and_valid(cifar_train):
    x, y = cifar_train
    assert x.shape == (50_000, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (50_000,)
    assert np.bincount(y, minlength=10).tolist() == [5_000] * 10
    # The first labels of data_batch_1 of the original CIFAR-10 (frog, truck, truck, deer, ...).
    assert y[:6].tolist() == [6, 9, 9, 4, 1, 1]
    # Published per-channel means on a 0-255 scale (R, G, B).
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), [125.307, 122.950, 113.865], atol=0.01)


def test_test_set_loads_separately(data_dir):
    x, y = data.load_test(data_dir)
    assert x.shape == (10_000, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [1_000] * 10


def test_parent_folder_is_accepted(data_dir):
    assert data.resolve_data_dir(data_dir.parent) == data_dir


def test_environment_variable_is_used(data_dir, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(data_dir))
    assert data.resolve_data_dir() == data_dir


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(CifarSearchError, match="CIFAR-10 folder not found"):
        data.load_train(tmp_path / "nowhere")


def _copy_folder(src, dst, names=(*data.TRAIN_FILES, data.TEST_FILE)):
    dst.mkdir()
    for name in names:
        (dst / name).symlink_to(src / name)
    return dst


def test_missing_file_is_named(data_dir, tmp_path):
    folder = _copy_folder(data_dir, tmp_path / "d", names=data.TRAIN_FILES[1:])
    with pytest.raises(CifarSearchError, match="missing: .*data_batch_1"):
        data.load_train(folder)


def test_truncated_file_is_named(data_dir, tmp_path):
    folder = _copy_folder(data_dir, tmp_path / "d", names=data.TRAIN_FILES[1:])
    (folder / "data_batch_1").write_bytes((data_dir / "data_batch_1").read_bytes()[:5000])
    with pytest.raises(CifarSearchError, match="unreadable: .*data_batch_1"):
        data.load_train(folder)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_foreign_globals_is_refused(data_dir, tmp_path):
    folder = _copy_folder(data_dir, tmp_path / "d", names=data.TRAIN_FILES[1:])
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    with pytest.raises(CifarSearchError, match="refused global builtins.print"):
        data.load_train(folder)


def test_wrong_labels_are_refused(data_dir, tmp_path):
    folder = _copy_folder(data_dir, tmp_path / "d", names=data.TRAIN_FILES[1:])
    batch = {b"data": np.zeros((10_000, 3072), np.uint8), b"labels": [11] * 10_000}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(CifarSearchError, match="labels outside 0..9"):
        data.load_train(folder)


@pytest.mark.parametrize("shape", [(5,), (5, 1)])
def test_to_one_hot(shape):
    labels = np.array([0, 3, 9, 3, 1]).reshape(shape)
    one_hot = data.to_one_hot(labels)
    assert one_hot.shape == (5, 10) and one_hot.dtype == np.float32
    assert one_hot.sum(axis=1).tolist() == [1] * 5
    assert one_hot.argmax(axis=1).tolist() == [0, 3, 9, 3, 1]


@pytest.mark.parametrize("labels", [[0, 10], [-1, 2], [[1, 2], [3, 4]], [0.5, 1.0]])
def test_to_one_hot_rejects_bad_labels(labels):
    with pytest.raises(ValueError):
        data.to_one_hot(np.array(labels))


def test_split_is_seeded_stratified_and_disjoint(cifar_train):
    _, y = cifar_train
    train, val = data.split_indices(y, seed=0)
    assert len(train) == 40_000 and len(val) == 10_000
    assert not set(train) & set(val)
    assert np.bincount(y[val], minlength=10).tolist() == [1_000] * 10
    again, _ = data.split_indices(y, seed=0)
    other, _ = data.split_indices(y, seed=1)
    assert np.array_equal(train, again)
    assert not np.array_equal(train, other)


def test_subsample_is_stratified(cifar_train):
    _, y = cifar_train
    train, _ = data.split_indices(y, seed=0)
    small = data.subsample(train, y, 1_000, seed=0)
    assert len(small) == 1_000 and set(small) <= set(train)
    assert np.bincount(y[small], minlength=10).tolist() == [100] * 10


def test_fingerprint_sees_a_changed_label(cifar_train):
    x, y = cifar_train
    changed = y.copy()
    changed[0] = (changed[0] + 1) % 10
    assert data.fingerprint(x[:100], y[:100]) != data.fingerprint(x[:100], changed[:100])
