"""Per-window FAISS store: exact cross-window search, ties, LRU, missing files, atomic writes, disk check."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import faiss
import numpy as np
import pandas as pd
import pytest

from selectflow.index.build import build_window_index, build_windows
from selectflow.index.layout import WindowFiles
from selectflow.index.store import WindowStore
from selectflow.index.summary import summarize_windows
from selectflow.index.windows import item_windows
from selectflow.runtime.errors import CorruptFileError, SelectFlowError

METRICS = {"flat_l2": faiss.METRIC_L2, "flat_ip": faiss.METRIC_INNER_PRODUCT, "flat_l1": faiss.METRIC_L1}


def brute_force(x: np.ndarray, q: np.ndarray, index_type: str) -> np.ndarray:
    """float64 distance matrix [q, n] in the index metric (squared L2, inner product, L1)."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if index_type == "flat_l2":
        return ((q[:, None, :] - x[None]) ** 2).sum(-1)
    if index_type == "flat_l1":
        return np.abs(q[:, None, :] - x[None]).sum(-1)
    return q @ x.T


def reference_top_k(dist: np.ndarray, k: int, index_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by (distance, global row): the documented tie rule."""
    key = -dist if index_type == "flat_ip" else dist
    rows = np.broadcast_to(np.arange(dist.shape[1]), dist.shape)
    order = np.lexsort((rows, key), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, -1), order


def build(tmp_path, x, window_size, index_type="flat_l2", **kw):
    ids = [f"s{i}" for i in range(len(x))]
    wins = item_windows(len(x), window_size)
    build_windows(
        lambda w, span: (x[span[0] : span[1]], ids[span[0] : span[1]]),
        wins,
        tmp_path / index_type,
        index_type=index_type,
        progress=False,
        **kw,
    )
    return tmp_path / index_type


def rows_of(sample_ids) -> np.ndarray:
    return np.array([[int(s[1:]) for s in row] for row in sample_ids])


@pytest.mark.parametrize("index_type", list(METRICS))
def test_search_all_matches_brute_force_with_heavy_ties(tmp_path, index_type):
    # Small integers: every distance is exact in float32, and thousands tie, so only
    # the tie rule (distance, then global row) decides which items make the top k.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, size=(1500, 5)).astype(np.float32)
    q = rng.integers(0, 3, size=(60, 5)).astype(np.float32)
    store = WindowStore(build(tmp_path, x, 173, index_type), max_open=3)
    for k in (1, 7, 40, 400):
        dist, ids, windows = store.search_all(q, k, progress=False)
        ref_d, ref_rows = reference_top_k(brute_force(x, q, index_type), k, index_type)
        np.testing.assert_array_equal(rows_of(ids), ref_rows)
        np.testing.assert_array_equal(dist, ref_d.astype(np.float32))
        np.testing.assert_array_equal(windows, ref_rows // 173)
        # within one window, too (FAISS alone keeps an arbitrary subset of the items tied at the k-th distance)
        dist, ids = store.search_window(0, q, k)
        ref_d, ref_rows = reference_top_k(brute_force(x[:173], q, index_type), k, index_type)
        np.testing.assert_array_equal(rows_of(ids), ref_rows)


@pytest.mark.parametrize("index_type", list(METRICS))
def test_search_all_equals_one_flat_index_bit_for_bit(tmp_path, index_type):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 64)).astype(np.float32)
    x[1500] = x[3]  # duplicates in different windows must tie and resolve by global row
    x[777] = x[3]
    # queries x dim >= 128000: a plain FAISS search would switch to BLAS and its rounding
    q = np.concatenate([rng.standard_normal((2000, 64)).astype(np.float32), x[[3, 10]]])
    k = 12
    path = build(tmp_path, x, 300, index_type)
    dist, ids, _ = WindowStore(path, max_open=2).search_all(q, k, progress=False)

    # One flat index over everything, one query per call (FAISS then uses its per-pair
    # kernel, the one the store pins), hits ordered by the tie rule. Random floats tie
    # only at the planted copies, so the first 64 hits hold the top 12 under the rule.
    flat = faiss.IndexFlat(64, METRICS[index_type])
    flat.add(x)
    hits = [flat.search(q[i : i + 1], 64) for i in range(len(q))]
    ref_d = np.concatenate([d for d, _ in hits])
    labels = np.concatenate([i for _, i in hits])
    order = np.lexsort((labels, -ref_d if index_type == "flat_ip" else ref_d), axis=-1)[:, :k]
    ref_d, ref_rows = np.take_along_axis(ref_d, order, -1), np.take_along_axis(labels, order, -1)
    np.testing.assert_array_equal(rows_of(ids), ref_rows)
    np.testing.assert_array_equal(dist, ref_d)
    if index_type != "flat_ip":  # x[3] queried: its two copies tie at 0 and follow in row order
        assert rows_of(ids)[-2, :3].tolist() == [3, 777, 1500]
    # and the values are the metric's (float64 within float32 rounding)
    exact = np.stack([brute_force(x[r], q[i : i + 1], index_type)[0] for i, r in enumerate(rows_of(ids))])
    np.testing.assert_allclose(dist, exact, rtol=1e-5, atol=1e-4)
    # exact=False (FAISS free to use BLAS): same neighbours up to last-bit near-ties
    fast_d, fast_ids, _ = WindowStore(path, exact=False, max_open=4).search_all(q, k, progress=False)
    assert (rows_of(fast_ids) == rows_of(ids)).mean() > 0.99
    np.testing.assert_allclose(fast_d, dist, rtol=1e-4, atol=1e-3)


def test_search_window_returns_only_that_windows_items(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((900, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    store = WindowStore(build(tmp_path, x, 250, "flat_l1"), max_open=4)
    for w, (start, stop) in enumerate(item_windows(900, 250)):
        dist, ids = store.search_window(w, q, 10)
        rows = rows_of(ids)
        assert ((rows >= start) & (rows < stop)).all()
        ref_d, ref_rows = reference_top_k(brute_force(x[start:stop], q, "flat_l1"), 10, "flat_l1")
        np.testing.assert_array_equal(rows - start, ref_rows)
        np.testing.assert_allclose(dist, ref_d, rtol=1e-5)
    # k beyond the window size is clipped to the window
    dist, ids = store.search_window(3, q, 500)
    assert dist.shape == (20, 150) and len(set(ids[0])) == 150


def test_lru_eviction_under_max_open_and_ram_budget(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    path = build(tmp_path, x, 100)
    store = WindowStore(path, max_open=2)
    q = x[:2]
    for w in (0, 1, 0, 2):
        store.search_window(w, q, 3)
    s = store.stats()
    assert s["open_windows"] == [0, 2] and s["loads"] == 3 and s["evictions"] == 1 and s["hits"] >= 1
    store.search_window(1, q, 3)  # 0 is now least recently used
    assert store.stats()["open_windows"] == [2, 1] and store.stats()["loads"] == 4
    assert store.stats()["mmap_open"] == 2  # flat indexes are memory-mapped

    one = store.stats()["ram_held_bytes"] // 2
    budget = WindowStore(path, max_open=10, ram_budget_bytes=int(one * 2.5))
    for w in range(5):
        budget.search_window(w, q, 3)
        assert budget.stats()["ram_held_bytes"] <= int(one * 2.5)
    assert budget.stats()["open_windows"] == [3, 4] and budget.stats()["evictions"] == 3


def test_missing_window_file_is_a_clear_error(tmp_path):
    x = np.random.default_rng(5).standard_normal((400, 8)).astype(np.float32)
    path = build(tmp_path, x, 100)
    store = WindowStore(path, max_open=4)
    os.unlink(WindowFiles.of(path, 2).faiss)
    # deleted after the store was opened: named when the window is needed
    with pytest.raises(SelectFlowError, match=r"window_00002\.faiss is missing.*rule index_window rebuilds it"):
        store.search_window(2, x[:1], 3)
    with pytest.raises(SelectFlowError, match=r"window_00002\.faiss.*rule index_window rebuilds it"):
        WindowStore(path, max_open=4)
    # a whole window gone: the recorded window count still names it
    for p in WindowFiles.of(path, 3).__dict__.values():
        os.unlink(p)
    with pytest.raises(SelectFlowError, match=r"2 window index file\(s\) missing.*window_00003\.faiss"):
        WindowStore(path, max_open=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SelectFlowError, match="no window indexes"):
        WindowStore(tmp_path / "empty", max_open=4)


def test_corrupt_files_are_reported(tmp_path):
    x = np.random.default_rng(6).standard_normal((200, 8)).astype(np.float32)
    path = build(tmp_path, x, 100)
    faiss_path = WindowFiles.of(path, 0).faiss
    faiss_path.write_bytes(faiss_path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"window_00000\.faiss is not a readable FAISS index"):
        WindowStore(path, max_open=4).search_window(0, x[:1], 3)
    ids_path = WindowFiles.of(path, 1).ids
    ids_path.write_text("row\tsample_id\n0\ts100\n")
    with pytest.raises(CorruptFileError, match="different builds"):
        WindowStore(path, max_open=4).search_window(1, x[:1], 3)


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    x = np.random.default_rng(7).standard_normal((300, 8)).astype(np.float32)
    path = build(tmp_path, x, 100)
    names = sorted(p.name for p in path.iterdir())
    expected = sorted(f"window_{w:05d}{ext}" for w in range(3) for ext in (".faiss", ".ids.tsv", ".json"))
    assert names == expected
    meta = json.loads(WindowFiles.of(path, 1).meta.read_text())
    assert meta["n"] == 100 and meta["dim"] == 8 and meta["n_windows"] == 3 and meta["span"] == [100, 200]
    assert meta["faiss_bytes"] == WindowFiles.of(path, 1).faiss.stat().st_size
    ids = pd.read_csv(WindowFiles.of(path, 1).ids, sep="\t", dtype=str)
    assert ids["sample_id"].tolist() == [f"s{i}" for i in range(100, 200)]
    # a rejected build writes nothing
    with pytest.raises(SelectFlowError, match="NaN"):
        build_window_index(
            np.full((4, 8), np.nan, np.float32),
            list("abcd"),
            tmp_path / "bad" / "window_00000.faiss",
            index_type="flat_l2",
        )
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_sigkill_during_builds_leaves_whole_windows_or_none(tmp_path):
    # A real SIGKILL at an arbitrary point of a build loop: every window the store can
    # see must be whole; an unfinished one reads as missing (its metadata lands last).
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from selectflow.index.build import build_window_index
        x = np.random.default_rng(0).standard_normal((60000, 64)).astype(np.float32)
        ids = [f"s{{i}}" for i in range(len(x))]
        for w in range(100):
            build_window_index(x, ids, r"{tmp_path}/idx/window_%05d.faiss" % (w % 3), n_windows=3, index_type="flat_l2")
            print(w, flush=True)
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "0"
    time.sleep(0.7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    complete = []
    for w in range(3):
        files = WindowFiles.of(tmp_path / "idx", w)
        if files.meta.exists():
            assert faiss.read_index(str(files.faiss)).ntotal == 60000
            assert len(pd.read_csv(files.ids, sep="\t")) == 60000
            complete.append(w)
    if len(complete) < 3:
        with pytest.raises(SelectFlowError, match="missing.*rule index_window rebuilds it"):
            WindowStore(tmp_path / "idx", max_open=4)
    else:
        assert WindowStore(tmp_path / "idx", max_open=4).search_window(2, np.zeros((1, 64), np.float32), 2)[
            0
        ].shape == (1, 2)


def test_disk_check_fails_early_with_the_numbers(tmp_path):
    x = np.zeros((1000, 16), np.float32)
    out = tmp_path / "w" / "window_00000.faiss"
    with pytest.raises(SelectFlowError, match=r"not enough disk for .*needs ~\d+\.\d KiB.*must stay free.*free"):
        build_window_index(x, [str(i) for i in range(1000)], out, min_free_bytes=1 << 62, index_type="flat_l2")
    assert not any(out.parent.iterdir())


def test_ivfpq_builds_for_large_windows_and_falls_back_when_small(tmp_path, caplog):
    rng = np.random.default_rng(8)
    centers = rng.standard_normal((50, 32)).astype(np.float32) * 4
    x = (centers[rng.integers(0, 50, 10000)] + rng.standard_normal((10000, 32)).astype(np.float32)).astype(np.float32)
    ids = [f"s{i}" for i in range(len(x))]
    meta = build_window_index(x, ids, tmp_path / "big" / "window_00000.faiss", index_type="ivfpq", ivf_nlist=64)
    assert (
        meta["index_type"] == "ivfpq"
        and (meta["nlist"], meta["pq_m"]) == (64, 4)
        and meta["built_on"] in ("cpu", "gpu")
    )
    store = WindowStore(tmp_path / "big", nprobe=16, max_open=4)
    _, got = store.search_window(0, x[:200] + 0.01, 10)
    assert np.mean([f"s{i}" in row for i, row in enumerate(got)]) > 0.9  # approximate, but finds the item itself
    assert meta["faiss_bytes"] < x.nbytes / 4  # PQ codes, not raw vectors

    with caplog.at_level(logging.WARNING, logger="selectflow.index.build"):
        small = build_window_index(x[:500], ids[:500], tmp_path / "small" / "window_00000.faiss", index_type="ivfpq")
    assert small["index_type"] == "flat_l2" and small["requested_index_type"] == "ivfpq"
    assert "too few to train" in caplog.text
    with pytest.raises(SelectFlowError, match="pq_m=5 does not divide"):
        build_window_index(x, ids, tmp_path / "bad" / "window_00000.faiss", index_type="ivfpq", pq_m=5)


def test_positions_windows_refuse_merged_search(tmp_path):
    x = np.random.default_rng(9).standard_normal((50, 8)).astype(np.float32)
    ids = [f"h{i}" for i in range(50)]
    for w in range(2):
        build_window_index(
            x + w,
            ids,
            tmp_path / f"window_{w:05d}.faiss",
            n_windows=2,
            kind="positions",
            span=(w, w + 4),
            index_type="flat_l2",
        )
    store = WindowStore(tmp_path, max_open=4)
    assert store.search_window(1, x[:1] + 1, 1)[1] == [["h0"]]
    with pytest.raises(SelectFlowError, match="position windows"):
        store.search_all(x[:1], 3)
    with pytest.raises(SelectFlowError, match="8-dimensional"):
        store.search_window(0, np.zeros((1, 9), np.float32), 3)


def test_summary_reports_build_time_disk_and_ram(tmp_path):
    x = np.random.default_rng(10).standard_normal((300, 8)).astype(np.float32)
    path = build(tmp_path, x, 100)
    store = WindowStore(path, max_open=4)
    store.search_window(1, x[:1], 2)
    table = summarize_windows(store, tmp_path / "summary.tsv")
    back = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    assert back["window"].tolist() == [0, 1, 2] and back["open"].tolist() == [False, True, False]
    sizes = [
        WindowFiles.of(path, w).faiss.stat().st_size + WindowFiles.of(path, w).ids.stat().st_size for w in range(3)
    ]
    assert back["disk_bytes"].tolist() == sizes
    assert (back["build_seconds"] >= 0).all()
    assert table["ram_bytes"].tolist()[0] == 0 and table["ram_bytes"].tolist()[1] > 0


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="needs faiss with GPU support")
def test_gpu_build_writes_a_cpu_readable_index(tmp_path):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((20000, 64)).astype(np.float32)
    meta = build_window_index(
        x,
        [str(i) for i in range(len(x))],
        tmp_path / "window_00000.faiss",
        index_type="ivfpq",
        use_gpu=True,
        ivf_nlist=64,
        pq_m=16,
    )
    assert meta["built_on"] == "gpu"
    _, ids = WindowStore(tmp_path, nprobe=64, max_open=4).search_window(0, x[:50], 1)
    assert np.mean([row[0] == str(i) for i, row in enumerate(ids)]) > 0.8
