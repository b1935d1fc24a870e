"""Features, exact distances, block files (values, coverage, corruption, a real memory limit)."""

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from selectflow.runtime.errors import CorruptFileError, SelectFlowError
from selectflow.select.distance import (
    BLOCK_REBUILD_HINT,
    BlockMatrix,
    block_count,
    block_path,
    compute_block,
    features,
    grid_bits,
    pairwise,
    read_block,
    seed_style_wasserstein,
)


def probs(n, layers=3, experts=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(experts, 0.5), size=(n, layers)).astype(np.float32)


def naive(fa, fb, metric):
    """Float64 numpy distances, one pair at a time, rounded to float32 like the library."""
    a, b = fa.astype(np.float64), fb.astype(np.float64)
    out = np.empty((len(a), len(b)), dtype=np.float32)
    for i in range(len(a)):
        for j in range(len(b)):
            if metric == "wasserstein":
                out[i, j] = np.abs(a[i] - b[j]).sum()
            elif metric == "l2":
                out[i, j] = np.sqrt(((a[i] - b[j]) ** 2).sum())
            else:
                out[i, j] = max(0.0, 1.0 - (a[i] * b[j]).sum())
    return out


def test_wasserstein_features_are_grid_snapped_cdfs():
    p = probs(5)
    f = features(p, "wasserstein")
    q = grid_bits("wasserstein", 3 * 8)
    assert f.dtype == np.float32 and f.shape == (5, 24)
    np.testing.assert_array_equal(f * 2.0**q, np.rint(f * 2.0**q))
    np.testing.assert_allclose(f, np.cumsum(p, axis=2).reshape(5, -1), atol=2.0 ** -(q + 1) + 1e-7)


@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
def test_pairwise_is_bit_identical_to_naive_float64(metric):
    f = features(probs(40, seed=1), metric)
    f[7] = f[3]  # a duplicate: distance exactly 0
    got = pairwise(torch.from_numpy(f[:25]), torch.from_numpy(f), metric).numpy()
    np.testing.assert_array_equal(got, naive(f[:25], f, metric))
    assert got[7, 3] == 0.0


def test_one_query_against_many_rows_is_exact():
    # large enough that the CPU path spreads the rows over threads
    f = features(probs(9000, seed=6), "wasserstein")
    got = pairwise(torch.from_numpy(f[:1]), torch.from_numpy(f), "wasserstein").numpy()
    want = np.abs(f[:1].astype(np.float64) - f.astype(np.float64)).sum(1).astype(np.float32)
    np.testing.assert_array_equal(got[0], want)


def test_wasserstein_equals_seed_style_within_grid_tolerance():
    p = probs(30, layers=4, experts=16, seed=2)
    dim = 4 * 16
    ours = pairwise(
        torch.from_numpy(features(p, "wasserstein")), torch.from_numpy(features(p, "wasserstein")), "wasserstein"
    ).numpy()
    seed = seed_style_wasserstein(p, p).numpy()
    # each snapped CDF entry moves by <= 2^-(q+1), so a distance moves by <= dim * 2^-q,
    # plus float32 rounding of the seed's own sum
    tol = dim * 2.0 ** -grid_bits("wasserstein", dim) + 1e-5 * seed.max()
    assert np.abs(ours - seed).max() <= tol
    assert tol < 0.01 * np.median(seed[seed > 0])


@pytest.mark.parametrize("n, block_size", [(23, 10), (20, 20), (7, 3)])
def test_blocks_cover_the_matrix_and_rows_are_exact(tmp_path, n, block_size):
    p = probs(n, seed=3)
    f = features(p, "wasserstein")
    nb = block_count(n, block_size)
    for i in range(nb):
        for j in range(i, nb):
            compute_block(
                f, i, j, block_size, block_path(tmp_path, i, j), device="cpu", sub_chunk=4, metric="wasserstein"
            )
    full = naive(f, f, "wasserstein")
    for i in range(nb):
        for j in range(i, nb):
            block = read_block(block_path(tmp_path, i, j), n=n, metric="wasserstein")
            np.testing.assert_array_equal(
                block, full[i * block_size : (i + 1) * block_size, j * block_size : (j + 1) * block_size]
            )
    seed = seed_style_wasserstein(p, p).numpy()
    matrix = BlockMatrix(tmp_path, n, block_size, "wasserstein")
    rows = np.stack([matrix.row(r) for r in range(n)])
    np.testing.assert_array_equal(rows, full)
    np.testing.assert_allclose(rows, seed, atol=24 * 2.0 ** -grid_bits("wasserstein", 24) + 1e-5)


def test_block_outside_triangle_rejected(tmp_path):
    with pytest.raises(SelectFlowError, match=r"block \(1, 0\) does not exist"):
        compute_block(
            features(probs(10), "wasserstein"), 1, 0, 5, tmp_path / "b.h5", device="cpu", metric="wasserstein"
        )


def _one_block(tmp_path):
    f = features(probs(12, seed=4), "wasserstein")
    path = block_path(tmp_path, 0, 0)
    compute_block(f, 0, 0, 12, path, device="cpu", metric="wasserstein")
    return path


def test_truncated_block_rejected_with_rebuild_hint(tmp_path):
    path = _one_block(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError) as err:
        read_block(path)
    assert str(path) in str(err.value) and "rule distance_block rebuilds it" in str(err.value)


def test_half_written_and_stale_blocks_rejected(tmp_path):
    path = _one_block(tmp_path)
    with h5py.File(path, "a") as f:
        del f.attrs["complete"]
    with pytest.raises(CorruptFileError, match="half-written.*rule distance_block rebuilds it"):
        read_block(path)
    path = _one_block(tmp_path)
    with pytest.raises(CorruptFileError, match=r"n=12, expected 13 \(stale"):
        BlockMatrix(tmp_path, 13, 13, "wasserstein")
    path.unlink()
    with pytest.raises(CorruptFileError, match=f"distance block is missing; {BLOCK_REBUILD_HINT}"):
        BlockMatrix(tmp_path, 12, 12, "wasserstein")


def test_block_under_real_memory_limit_halves_sub_chunk(tmp_path):
    """A whole-block sub-chunk cannot fit under RLIMIT_AS; halving must still give the exact block."""
    script = textwrap.dedent(
        f"""
        import logging, resource, sys
        import numpy as np, psutil, torch
        from selectflow.select.distance import compute_block, read_block, pairwise
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
        f = np.round(np.random.default_rng(0).random((3000, 64), dtype=np.float32) * 2**14) / 2**14
        # 36 MB, computed before the limit
        ref = pairwise(torch.from_numpy(f), torch.from_numpy(f), "wasserstein").numpy()
        limit = psutil.Process().memory_info().vms + 20 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        compute_block(f, 0, 0, 3000, r"{tmp_path}/b.h5", metric="wasserstein", device="cpu", sub_chunk=3000)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("EXACT", np.array_equal(read_block(r"{tmp_path}/b.h5"), ref))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "out of memory on distance block (0, 0) rows" in out.stdout
    assert "EXACT True" in out.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("metric", ["wasserstein", "cosine", "l2"])
def test_cuda_distances_bit_identical_to_cpu(metric):
    f = torch.from_numpy(features(probs(300, layers=8, experts=64, seed=5), metric))
    cpu = pairwise(f[:50], f, metric)
    gpu = pairwise(f[:50].cuda(), f.cuda(), metric).cpu()
    assert torch.equal(cpu, gpu)
