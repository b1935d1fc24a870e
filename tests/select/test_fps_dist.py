"""Distributed FPS over W gloo ranks on CPU: the same picks and curve as one process, ties included."""

import numpy as np
import pytest
import torch.multiprocessing as mp

from selectflow.select.distance import features
from selectflow.select.fps import fps_streaming
from selectflow.select.fps_dist import row_range
from tests.select.test_fps import probs, rank_weights, with_ties


def lattice():
    """One-hot routing on one layer: many exact ties (see test_fps.test_lattice_ties_go_to_lowest_index)."""
    experts = [4, 8, 0, 6, 2, 8, 0, 4, 8, 1, 7, 3]
    p = np.zeros((len(experts), 1, 9), dtype=np.float32)
    p[np.arange(len(experts)), 0, experts] = 1.0
    return features(p, "wasserstein")


def strata_of(n, seed):
    rng = np.random.default_rng(seed)
    strata = rng.integers(0, 3, size=n)
    quota = np.minimum(np.bincount(strata, minlength=3), [4, 0, 5])
    return strata, quota


# name -> (features, k, metric, start, strata, quota, weight); n from 3 (fewer rows than ranks) to 60
CASES = {
    "wasserstein_ties": (with_ties(60, 0, "wasserstein"), 25, "wasserstein", 0, None, None, None),
    "wasserstein_all": (with_ties(23, 1, "wasserstein"), 100, "wasserstein", 7, None, None, None),
    "lattice": (lattice(), 12, "wasserstein", 0, None, None, None),
    "cosine_ties": (with_ties(45, 2, "cosine"), 20, "cosine", 3, None, None, None),
    "l2_ties": (with_ties(41, 3, "l2"), 41, "l2", 40, None, None, None),
    "tiny": (features(probs(3, seed=4), "wasserstein"), 3, "wasserstein", 1, None, None, None),
    "strata": (with_ties(50, 5, "wasserstein"), 9, "wasserstein", 0, *strata_of(50, 5), None),
    "weighted": (with_ties(60, 6, "wasserstein"), 25, "wasserstein", 0, None, None, rank_weights(60, 6)),
    "weighted_strata": (with_ties(50, 7, "l2"), 9, "l2", 0, *strata_of(50, 7), rank_weights(50, 7)),
}


# snapped FPS (selection.fps_snap: density): name of a case above -> neighbours of its k-NN graph
SNAPPED = {"wasserstein_ties": 4, "cosine_ties": 3, "strata": 5, "weighted_strata": 4, "tiny": 2}


def snap_for(name):
    """The Snap of a snapped case, or None: each rank builds the graph with knn_graph_distributed, the
    reference with one process's knn_graph."""
    from selectflow.select.diversity import knn_graph, mean_spread
    from selectflow.select.fps import Snap

    if not name.endswith("+snap"):
        return None
    base = name.removesuffix("+snap")
    f, metric = CASES[base][0], CASES[base][2]
    nbr, dist = knn_graph(f, SNAPPED[base], metric)
    return Snap(nbr, mean_spread(dist))


def all_cases():
    """CASES and the snapped cases (``<name>+snap``)."""
    return {**CASES, **{f"{name}+snap": CASES[name] for name in SNAPPED}}


def _rank(rank, world, store, out_dir):
    """One rank: every case, chunk 4 (several chunks per rank); rank r writes its results as .npy."""
    import torch.distributed as dist

    from selectflow.select.diversity import mean_spread
    from selectflow.select.fps import Snap
    from selectflow.select.fps_dist import fps_distributed, knn_graph_distributed

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for name, (f, k, metric, start, strata, quota, weight) in all_cases().items():
            snap = None
            if name.endswith("+snap"):
                nbr, far = knn_graph_distributed(f, SNAPPED[name.removesuffix("+snap")], metric)
                snap = Snap(nbr, mean_spread(far))
            got = fps_distributed(
                f,
                k,
                metric=metric,
                start=start,
                chunk=4,
                strata=strata,
                quota=quota,
                log_interval=100,
                weight=weight,
                snap=snap,
            )
            np.save(f"{out_dir}/{name}.{rank}.picks.npy", got.picks)
            np.save(f"{out_dir}/{name}.{rank}.at.npy", got.min_distance)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_pick_what_one_process_picks(tmp_path, world):
    mp.spawn(_rank, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    for name, (f, k, metric, start, strata, quota, weight) in all_cases().items():
        want = fps_streaming(
            f,
            k,
            metric=metric,
            start=start,
            device="cpu",
            strata=strata,
            quota=quota,
            log_interval=100,
            weight=weight,
            snap=snap_for(name),
        )
        for rank in range(world):
            picks = np.load(tmp_path / f"{name}.{rank}.picks.npy")
            at = np.load(tmp_path / f"{name}.{rank}.at.npy")
            np.testing.assert_array_equal(picks, want.picks, err_msg=f"{name}, rank {rank} of {world}")
            np.testing.assert_array_equal(at, want.min_distance, err_msg=f"{name}, rank {rank} of {world}")


def test_snapped_cases_differ_from_plain_fps():
    # the snapped cases are only a test of snapping if it changes their picks
    for name in SNAPPED:
        f, k, metric, start, strata, quota, weight = CASES[name]
        kw = dict(metric=metric, start=start, device="cpu", strata=strata, quota=quota, log_interval=100, weight=weight)
        plain, snapped = fps_streaming(f, k, **kw), fps_streaming(f, k, snap=snap_for(f"{name}+snap"), **kw)
        assert name == "tiny" or not np.array_equal(plain.picks, snapped.picks), name


def test_lattice_reference_has_ties():
    # the lattice case is only a tie test if the single-process curve repeats values
    want = fps_streaming(lattice(), 12, device="cpu", metric="wasserstein", log_interval=100)
    assert len(set(want.min_distance[1:].tolist())) < len(want.min_distance) - 1


def test_row_ranges_cover_each_row_once():
    for n in (0, 1, 3, 10, 1001):
        for world in (1, 2, 4, 7):
            spans = [row_range(n, world, r) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
