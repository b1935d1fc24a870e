"""Window cutting (items, positions with stride/overlap and tail) and HDF5 window reads."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from selectflow.index.windows import (
    item_windows,
    read_sequence_window,
    sequence_windows,
)
from selectflow.runtime.errors import SelectFlowError


def test_item_windows_are_consecutive_and_cover_every_item():
    assert item_windows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert item_windows(8, 4) == [(0, 4), (4, 8)]
    assert item_windows(3, 10) == [(0, 3)]
    assert item_windows(0, 5) == []
    with pytest.raises(SelectFlowError, match="window_size"):
        item_windows(10, 0)


@pytest.mark.parametrize(
    "n, size, stride, expected",
    [
        (10, 4, 4, [(0, 4), (4, 8), (6, 10)]),  # tail window ends at n, overlapping its neighbour
        (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),  # overlap, tail lands exactly
        (11, 4, 3, [(0, 4), (3, 7), (6, 10), (7, 11)]),
        (8, 4, 4, [(0, 4), (4, 8)]),
        (3, 4, 2, [(0, 3)]),  # shorter than one window
        (4, 4, 1, [(0, 4)]),
    ],
)
def test_sequence_windows_cut_the_expected_positions(n, size, stride, expected):
    assert sequence_windows(n, size, stride) == expected


@pytest.mark.parametrize("n, size, stride", [(1000, 64, 64), (1000, 64, 48), (1000, 64, 1), (1001, 100, 33), (5, 3, 2)])
def test_sequence_windows_invariants(n, size, stride):
    wins = sequence_windows(n, size, stride)
    covered = np.zeros(n, dtype=bool)
    for start, stop in wins:
        assert stop - start == size
        covered[start:stop] = True
    assert covered.all()
    starts = [s for s, _ in wins]
    assert starts[0] == 0 and wins[-1][1] == n
    assert all(b - a == stride for a, b in zip(starts[:-2], starts[1:-1]))
    assert 0 < starts[-1] - starts[-2] <= stride


def test_sequence_windows_reject_gaps():
    with pytest.raises(SelectFlowError, match="skip positions"):
        sequence_windows(100, 10, 11)


@pytest.fixture()
def seq_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "seq.h5"
    tokens = rng.integers(0, 4, size=(7, 50), dtype=np.int8)
    feats = rng.standard_normal((7, 50, 3)).astype(np.float64)
    with h5py.File(path, "w") as f:
        f.create_dataset("tokens", data=tokens, chunks=(7, 8))
        f.create_dataset("feats", data=feats)
        f.create_dataset("flat", data=np.zeros(5))
    return path, tokens, feats


def test_read_sequence_window_flattens_each_items_slice(seq_file):
    path, tokens, feats = seq_file
    got = read_sequence_window(path, "feats", 10, 14)
    assert got.dtype == np.float32 and got.shape == (7, 12)
    np.testing.assert_array_equal(got, feats[:, 10:14, :].reshape(7, 12).astype(np.float32))
    # row-major flattening: position-major, features inner
    np.testing.assert_array_equal(got[2, 3:6], feats[2, 11, :].astype(np.float32))
    got2 = read_sequence_window(path, "tokens", 45, 50)
    np.testing.assert_array_equal(got2, tokens[:, 45:50].astype(np.float32))


def test_windows_read_back_reassemble_the_array(seq_file):
    path, tokens, _ = seq_file
    wins = sequence_windows(50, 8, 8)
    rebuilt = np.empty((7, 50), dtype=np.float32)
    for start, stop in wins:
        rebuilt[:, start:stop] = read_sequence_window(path, "tokens", start, stop)
    np.testing.assert_array_equal(rebuilt, tokens.astype(np.float32))


def test_read_sequence_window_errors_name_the_problem(seq_file, tmp_path):
    path, _, _ = seq_file
    with pytest.raises(SelectFlowError, match="outside the 50 positions"):
        read_sequence_window(path, "tokens", 40, 51)
    with pytest.raises(SelectFlowError, match="no dataset 'nope'"):
        read_sequence_window(path, "nope", 0, 5)
    with pytest.raises(SelectFlowError, match=r"expected \[items, positions\]"):
        read_sequence_window(path, "flat", 0, 2)
    with pytest.raises(SelectFlowError, match="does not exist"):
        read_sequence_window(tmp_path / "missing.h5", "tokens", 0, 5)
