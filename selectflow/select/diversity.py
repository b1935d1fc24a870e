"""Representative selection over the candidates, next to FPS: facility location, k-means round-robin and a
stratified draw.

FPS (:mod:`selectflow.select.fps`) picks the candidate farthest from every earlier pick, so it
seeks outliers. The two methods here pick candidates that stand for many others instead.
Both take the candidates' grid features ``feats`` [m, D] float32
(:func:`selectflow.select.distance.features`), their quality float64 [m] and ``sample_id`` [m],
and return ``k`` candidate indices int64 in pick order; with ``strata`` int [m] and ``quota``
int [S] (summing to k) a stratum whose quota is filled leaves the race, as in FPS.
Neither holds an m×m matrix.

* :func:`facility_location`: lazy greedy maximisation of the quality-weighted facility
  location function over the k-NN graph of the candidates (:func:`knn_graph`, exact, computed
  ``chunk`` rows at a time: O(m·n_neighbors) memory; or approximate, :func:`ivf_graph`, above
  ``selection.knn_exact_max`` candidates). Candidate j covers candidate i with
  similarity ``s_ij = exp(-(d_ij/σ)²)`` when j is one of i's ``n_neighbors`` nearest (i itself
  included), else 0; σ is the median distance of a candidate to its farthest kept neighbour.
  The gain of j is ``w_j · Σ_i max(0, s_ij - cover_i)`` with ``cover_i`` the largest similarity
  of i to a pick so far. ``w_j`` = 1 - rank_j / m, rank in quality order (0 = best): a weight on
  the pick, not a prior, because a scaled monotone submodular gain keeps the lazy greedy exact
  (a stale gain stays an upper bound), and ranks, unlike raw scores, mean the same for every
  quality method (log IFD, p(good), loss). Ties go to the lowest candidate index.
* :func:`density_weight`: the weights of density-weighted FPS (``selection.fps_weight: density``),
  ``1 - rank/m`` by the mean distance to the nearest candidates in the same k-NN graph
  (:func:`neighbour_spread`); snapped FPS (``selection.fps_snap: density``) picks by the same
  spreads among the graph's neighbours (:class:`selectflow.select.fps.Snap`), ``fps_snap: quality``
  by :func:`quality_rank`, ``fps_snap: length`` by the response tokens; :func:`lof_weight`
  (``fps_weight: lof``) by each candidate's spread relative to its neighbours' spreads;
  :func:`lof_cut_weight` holds back only the candidates whose ratio is extreme (``fps_weight: lof_cut``);
  :func:`quality_hold_back` holds back the lowest share by quality (``fps_quality_hold_back``).
* :func:`kmeans_round_robin` (Select-MoE's later method): FAISS k-means of the candidates
  (:func:`selectflow.select.baselines.kmeans_labels`), then
  :func:`selectflow.select.baselines.round_robin` by quality, the code compare's ``kmeans``
  baseline runs.
* :func:`stratified`: a seeded random draw inside each stratum's quota, the candidates the hold-backs
  flag drawn last: the kept pool's mix, less what looks like junk.
"""

from __future__ import annotations

import heapq
import logging
import math

import numpy as np
from tqdm import tqdm

from selectflow.runtime.errors import SelectFlowError
from selectflow.schema import schema_enum
from selectflow.select import baselines, distance
from selectflow.select.quality import robust_z

log = logging.getLogger(__name__)

DIVERSITY = schema_enum("selection", "diversity")
KNN_BLOCK = 1 << 24  # distances [rows, m] computed at a time for the k-NN graph: 64 MiB of float32


def knn_graph(
    feats: np.ndarray,
    n_neighbors: int,
    metric: str,
    chunk: int = 1024,
    device: str = "cpu",
    rows: tuple[int, int] | None = None,
    probes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``n_neighbors`` + 1 nearest rows (itself included): indices int64 and distances float32 [m, kk].

    Exact (distances on the feature grid, :func:`selectflow.select.distance.pairwise`), sorted
    by distance, ties by row index; ``chunk`` rows of distances [chunk, m] at a time, at most
    :data:`KNN_BLOCK` distances (so the peak memory stays O(m·n_neighbors + KNN_BLOCK)), on
    ``device`` (``auto``, ``cpu``, ``cuda``: the same graph, the distances being exact).
    ``rows`` ``(lo, hi)``: only the neighbours of rows ``lo..hi-1`` (among all rows), [hi - lo, kk]:
    the same values as those rows of the whole graph.
    ``probes``: approximate instead, searching that many inverted lists per row (:func:`ivf_graph`,
    on the CPU; ``chunk`` and ``device`` unused); None = exact.
    """
    import torch

    from selectflow.runtime.device import resolve_device

    if probes is not None:
        return ivf_graph(feats, n_neighbors, metric, probes, rows)
    m = len(feats)
    first, last = (0, m) if rows is None else (int(rows[0]), int(rows[1]))
    kk = min(int(n_neighbors) + 1, m)
    chunk = max(1, min(int(chunk), KNN_BLOCK // max(m, 1)))
    x = torch.as_tensor(np.ascontiguousarray(feats, dtype=np.float32)).to(distance.compute_dtype(metric))
    x = x.to(resolve_device(device))
    nbr = np.empty((last - first, kk), dtype=np.int64)
    dist = np.empty((last - first, kk), dtype=np.float32)
    log.info(
        "%d-NN graph of %d candidates, rows [%d, %d): %d blocks of %d rows (%d distances)",
        kk - 1,
        m,
        first,
        last,
        -(-(last - first) // chunk),
        chunk,
        (last - first) * m,
    )
    for lo in tqdm(range(first, last, chunk), desc=f"{kk - 1}-NN graph", unit="block", disable=None):
        d = distance.pairwise(x[lo : min(lo + chunk, last)], x, metric)
        top_val, top_idx = torch.topk(d, kk, dim=1, largest=False)
        tied = ((d <= top_val[:, -1:]).sum(1) > kk).cpu().numpy()
        top_val, top_idx = top_val.cpu().numpy(), top_idx.cpu().numpy()
        order = np.lexsort((top_idx, top_val), axis=1)
        idx, val = np.take_along_axis(top_idx, order, 1), np.take_along_axis(top_val, order, 1)
        # topk picks any of the rows tied at the boundary: redo those rows by (distance, index)
        for r in np.flatnonzero(tied):
            idx[r], val[r] = _nearest(d[r].cpu().numpy(), kk)
        nbr[lo - first : lo - first + len(idx)], dist[lo - first : lo - first + len(idx)] = idx, val
    return nbr, dist


def _nearest(row: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``kk`` smallest of one row's distances [m]: indices and distances, by (distance, index)."""
    cand = np.argpartition(row, kk - 1)[:kk] if kk < len(row) else np.arange(len(row))
    cand = np.flatnonzero(row <= row[cand].max())
    cand = cand[np.lexsort((cand, row[cand]))[:kk]]
    return cand, row[cand]


IVF_MIN_PER_LIST = 39  # FAISS's k-means wants at least this many training rows per list
IVF_TRAIN_PER_LIST = 64  # k-means trains on at most this many sampled rows per list (FAISS copies them)
IVF_BLOCK = 1 << 20  # distances, and query feature values, of one list computed at a time
_EMPTY = np.iinfo(np.int64).max  # no neighbour found yet: after every (distance, index) key


def ivf_lists(m: int) -> int:
    """The inverted lists of :func:`ivf_graph` over ``m`` rows: about √m, each of at least
    :data:`IVF_MIN_PER_LIST` rows."""
    return max(1, min(round(math.sqrt(m)), m // IVF_MIN_PER_LIST))


def ivf_graph(
    feats: np.ndarray,
    n_neighbors: int,
    metric: str,
    probes: int,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`knn_graph`'s arrays, approximate: the nearest rows found in ``probes`` inverted lists.

    About √m lists over all rows of ``feats`` [m, D]: FAISS k-means (L2; spherical inner product
    for cosine) on at most :data:`IVF_TRAIN_PER_LIST` seeded rows per list, fixed seed, so the same
    lists on every run, thread count and rank; each row is filed in its nearest list and searched in
    the ``probes`` lists nearest to it. The lists hold row indices only: each list's rows are
    compared with the rows that search it straight from ``feats``, by
    :func:`selectflow.select.distance.pairwise` (exact on the grid), and each row keeps its nearest
    by (distance, index). So searching every list gives the exact graph, and a row always finds
    itself (or a copy), its own list being its nearest. A neighbour outside the searched lists is
    missed and a farther one takes its place; a row whose lists hold fewer than ``n_neighbors`` + 1
    rows is computed exactly (:func:`exact_rows`). The log gives the recall on :func:`check_rows`, a
    seeded sample of 256 rows whose exact neighbours are computed (256·m distances). Memory: no copy
    of ``feats`` (float32 ``feats`` is read in place), the graph, ``probes`` list numbers per row,
    the k-means sample and :data:`IVF_BLOCK` distances; time about ``probes``/√m of the exact
    graph's distances. ``rows`` as in :func:`knn_graph`.
    """
    import torch

    distance.check_metric(metric)
    m = len(feats)
    first, last = (0, m) if rows is None else (int(rows[0]), int(rows[1]))
    kk = min(int(n_neighbors) + 1, m)
    x = np.ascontiguousarray(feats, dtype=np.float32)
    lists = ivf_lists(m)
    probes = min(int(probes), lists)
    log.info(
        "approximate %d-NN graph of %d candidates, rows [%d, %d): %d inverted lists, %d searched per row",
        kk - 1,
        m,
        first,
        last,
        lists,
        probes,
    )
    own, searched = _inverted_lists(x, lists, metric, probes, first, last)
    members, member_at = _by_list(own, lists)  # the rows of each list
    queries, query_at = _by_list(searched.ravel(), lists)  # the rows (× probes) searching each list
    queries //= probes
    del own, searched
    best = torch.full((last - first, kk), _EMPTY, dtype=torch.int64)
    for li in tqdm(range(lists), desc=f"approximate {kk - 1}-NN graph", unit="list", disable=None):
        cols = members[member_at[li] : member_at[li + 1]]
        asking = queries[query_at[li] : query_at[li + 1]]
        if not len(cols) or not len(asking):
            continue
        b, col_ids = torch.as_tensor(x[cols]), torch.as_tensor(cols.astype(np.int64))
        step = max(1, IVF_BLOCK // max(len(cols), x.shape[1]))
        for lo in range(0, len(asking), step):
            q = torch.as_tensor(asking[lo : lo + step].astype(np.int64))
            d = distance.pairwise(torch.as_tensor(x[q.numpy() + first]), b, metric).add_(0.0)  # -0.0 → +0.0
            # (distance, index) in one int64: the bits of a float32 >= 0 sort as the float does
            keys = d.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(col_ids)
            found = torch.topk(keys, min(kk, len(cols)), dim=1, largest=False).values
            best[q] = torch.topk(torch.cat([best[q], found], 1), kk, dim=1, largest=False).values
    short = np.flatnonzero((best == _EMPTY).any(1).numpy())
    nbr = (best & 0xFFFFFFFF).numpy()
    dist = (best >> 32).to(torch.int32).view(torch.float32).numpy()
    if len(short):
        log.info("%d rows found fewer than %d neighbours in their lists: computed exactly", len(short), kk - 1)
        nbr[short], dist[short] = exact_rows(x, first + short, kk, metric)
    check = check_rows(first, last)
    if len(check):
        found = graph_recall(nbr[check - first], exact_rows(x, check, kk, metric)[0])
        log.info(
            "approximate %d-NN graph: recall %.3f against the exact neighbours of %d sampled rows "
            "(selection.knn_probes raises it)",
            kk - 1,
            found,
            len(check),
        )
    return nbr, dist


def _by_list(lists_of: np.ndarray, lists: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions int32 of ``lists_of`` (each position's list, [n]) grouped by list, ascending within
    each, and where each list's start int64 [lists + 1]: list l's positions are ``out[at[l] : at[l + 1]]``."""
    at = np.zeros(lists + 1, dtype=np.int64)
    np.cumsum(np.bincount(lists_of, minlength=lists), out=at[1:])
    return np.argsort(lists_of, kind="stable").astype(np.int32), at


def _inverted_lists(
    x: np.ndarray, lists: int, metric: str, probes: int, first: int, last: int
) -> tuple[np.ndarray, np.ndarray]:
    """The list int32 [m] each row of ``x`` is filed in (its nearest k-means centroid) and the ``probes``
    lists int32 [last - first, probes] that rows ``first..last-1`` search, nearest first."""
    import faiss

    dim = x.shape[1]
    cp = faiss.ClusteringParameters()
    cp.niter, cp.seed, cp.max_points_per_centroid = 10, 0, IVF_TRAIN_PER_LIST
    cp.spherical = metric == "cosine"
    centroids = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    faiss.Clustering(dim, lists, cp).train(x, centroids)
    own = np.empty(len(x), dtype=np.int32)
    searched = np.empty((last - first, probes), dtype=np.int32)
    rows = max(1, IVF_BLOCK // dim)  # rows assigned at a time
    for lo in range(0, len(x), rows):
        hi = min(lo + rows, len(x))
        near = centroids.search(x[lo:hi], probes)[1]
        own[lo:hi] = near[:, 0]
        a, b = max(lo, first), min(hi, last)
        if a < b:
            searched[a - first : b - first] = near[a - lo : b - lo]
    return own, searched


IVF_CHECK_ROWS = 256  # rows of the approximate graph checked against their exact neighbours


def check_rows(first: int, last: int) -> np.ndarray:
    """The rows int64 of ``first..last-1`` whose approximate neighbours :func:`ivf_graph` checks against
    the exact ones (a seeded sample of :data:`IVF_CHECK_ROWS`, sorted; all when there are fewer)."""
    if last - first <= IVF_CHECK_ROWS:
        return np.arange(first, last)
    return np.sort(np.random.default_rng(0).choice(np.arange(first, last), IVF_CHECK_ROWS, replace=False))


def exact_rows(x: np.ndarray, rows: np.ndarray, kk: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``kk`` nearest rows of ``x`` [m, D] float32 to each of ``rows`` (any order): indices
    int64 and distances float32 [len(rows), kk], by (distance, index), as :func:`knn_graph` has them.
    At most :data:`KNN_BLOCK` distances at a time, and ``x`` converted to the metric's dtype
    :data:`KNN_BLOCK` values at a time (no whole copy)."""
    import torch

    dtype, m = distance.compute_dtype(metric), len(x)
    cols = max(1, KNN_BLOCK // x.shape[1])  # rows of x converted at a time: at most KNN_BLOCK values
    nbr = np.empty((len(rows), kk), dtype=np.int64)
    dist = np.empty((len(rows), kk), dtype=np.float32)
    step = max(1, KNN_BLOCK // m)  # rows whose m distances are held at a time
    for lo in range(0, len(rows), step):
        part = rows[lo : lo + step]
        a = torch.as_tensor(x[part]).to(dtype)
        d = np.empty((len(part), m), dtype=np.float32)
        for c in range(0, m, cols):
            d[:, c : c + cols] = distance.pairwise(a, torch.as_tensor(x[c : c + cols]).to(dtype), metric).numpy()
        for i, row in enumerate(d):
            nbr[lo + i], dist[lo + i] = _nearest(row, kk)
    return nbr, dist


def graph_recall(found: np.ndarray, exact: np.ndarray) -> float:
    """The share of the exact neighbours ``exact`` [r, kk] that ``found`` [r, kk] holds, over all rows."""
    return float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, exact)]) / exact.shape[1])


def similarities(dist: np.ndarray) -> np.ndarray:
    """``exp(-(d/σ)²)`` float64 [m, kk], σ the median of each row's largest distance (1 when that is 0)."""
    sigma = float(np.median(dist[:, -1])) or 1.0
    return np.exp(-np.square(dist.astype(np.float64) / sigma))


def quality_rank(quality: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each row's rank float64 [m] in :func:`~selectflow.select.baselines.quality_order` (best = 0)."""
    rank = np.empty(len(quality), dtype=np.float64)
    rank[baselines.quality_order(quality, ids)] = np.arange(len(quality))
    return rank


def quality_weight(quality: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``1 - rank/m`` float64 [m], rank by :func:`quality_rank` (best = 1)."""
    return 1.0 - quality_rank(quality, ids) / len(quality)


def mean_spread(dist: np.ndarray) -> np.ndarray:
    """Each row's mean distance float64 [m] to its neighbours in :func:`knn_graph`'s ``dist`` [m, kk] (the
    first column, the row itself, left out; 0 when there is no other row)."""
    return dist[:, 1:].astype(np.float64).mean(1) if dist.shape[1] > 1 else np.zeros(len(dist))


def snap_score(
    mode: str, dist: np.ndarray, quality: np.ndarray, ids: np.ndarray, tokens: np.ndarray | None = None
) -> np.ndarray:
    """The :class:`selectflow.select.fps.Snap` score float64 [m] (smaller first) of ``selection.fps_snap``
    ``mode``: ``density`` the :func:`mean_spread` of the k-NN graph's ``dist`` [m, kk] (the densest),
    ``quality`` the :func:`quality_rank` (the best), ``length`` minus the response ``tokens`` (the
    longest; ties to the lower index, the better quality)."""
    if mode == "density":
        return mean_spread(dist)
    if mode == "quality":
        return quality_rank(quality, ids)
    if mode == "length":
        return -np.asarray(tokens, dtype=np.float64)
    raise ValueError(f"unknown fps_snap {mode!r}")


def neighbour_spread(
    feats: np.ndarray, n_neighbors: int, metric: str, device: str = "cpu", rows: tuple[int, int] | None = None
) -> np.ndarray:
    """Mean distance float64 [m] (``rows`` ``(lo, hi)``: [hi - lo], those rows') to the ``n_neighbors``
    nearest other rows of ``feats`` (:func:`knn_graph`, :func:`mean_spread`)."""
    return mean_spread(knn_graph(feats, n_neighbors, metric, device=device, rows=rows)[1])


def density_weight(
    feats: np.ndarray,
    ids: np.ndarray,
    n_neighbors: int,
    metric: str,
    device: str = "cpu",
    spread: np.ndarray | None = None,
) -> np.ndarray:
    """``1 - rank/m`` float64 [m], rank in order of the mean distance to the ``n_neighbors`` nearest
    other candidates (:func:`neighbour_spread`), densest first, ties by ``sample_id`` (densest = 1).

    The weight of density-weighted FPS (``selection.fps_weight: density``): a candidate with few
    near neighbours, an outlier of the candidates, must lie that much farther from the picks to
    be picked. Memory: the k-NN graph, O(m · n_neighbors) plus :data:`KNN_BLOCK` distances.
    ``spread``: those mean distances when the caller has them already (the graph is not built again).
    """
    if spread is None:
        spread = neighbour_spread(feats, n_neighbors, metric, device)
    return quality_weight(-np.asarray(spread, dtype=np.float64), ids)


def outlier_ratio(spread: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """Each row's :func:`mean_spread` over the mean spread of its neighbours, float64 [m] (a local
    outlier factor, Breunig et al. 2000, with the mean distance for the reachability distance).

    ``spread`` [m]: the rows' mean distances to their neighbours; ``nbr`` [m, kk]: :func:`knn_graph`'s
    indices, whose first column (the row itself, or a copy of it at distance 0) is left out. About 1
    where a row is as sparse as its neighbours, in a dense region or a sparse one alike; above 1 where
    a row lies farther out than the rows around it. 1 for a row whose neighbours and itself have
    spread 0 (copies), infinite for a row with spread above 0 whose neighbours all have 0.
    """
    spread = np.asarray(spread, dtype=np.float64)
    if nbr.shape[1] < 2:
        return np.ones(len(spread))
    around = spread[nbr[:, 1:]].mean(1)
    ratio = np.full(len(spread), np.inf)
    np.divide(spread, around, out=ratio, where=around > 0)
    ratio[(around == 0) & (spread == 0)] = 1.0
    return ratio


def lof_weight(spread: np.ndarray, nbr: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``1 - rank/m`` float64 [m], rank in order of :func:`outlier_ratio`, the lowest first, ties by
    ``sample_id``: the weight of ``selection.fps_weight: lof``. A candidate farther out than its
    own neighbours must lie that much farther from the picks to be picked; unlike
    :func:`density_weight` it does not hold back a candidate of a sparse region whose neighbours are
    as sparse (on the real-text pools the sparse regions are the long answers)."""
    return quality_weight(-outlier_ratio(spread, nbr), ids)


# the weight of a candidate fps_weight: lof_cut holds back: an FPS step picks it only where nothing else is left
LOF_CUT_WEIGHT = 1e-6


def lof_cut_weight(spread: np.ndarray, nbr: np.ndarray, z_cut: float) -> np.ndarray:
    """Float64 [m]: 1, or :data:`LOF_CUT_WEIGHT` for a candidate whose local outlier factor
    (:func:`outlier_ratio`) is extreme for these candidates: the robust z-score of its log
    (:func:`~selectflow.select.quality.robust_z`, median and MAD over the candidates) above ``z_cut``,
    or infinite. The weight of ``selection.fps_weight: lof_cut``: FPS stays plain FPS among the rest
    (its reach and the long answers of sparse regions kept, unlike :func:`lof_weight`'s ranks), and
    an FPS step picks a held-back candidate only when every other candidate still in the race lies a
    million times closer to the picks (in effect: where its stratum has nothing else left; the start,
    the best candidate by quality, is picked whatever its weight, as with every weight). A candidate with
    spread 0 (log -inf: a copy among copies) is never held back."""
    ratio = outlier_ratio(spread, nbr)
    with np.errstate(divide="ignore"):
        z = robust_z(np.log(ratio))
    out = (z > z_cut) | np.isposinf(ratio)
    log.info(
        "fps_weight lof_cut: %d of %d candidates (%.1f %%) held back, local outlier factor beyond robust z %g",
        out.sum(),
        len(ratio),
        100 * out.mean() if len(ratio) else 0.0,
        z_cut,
    )
    return np.where(out, LOF_CUT_WEIGHT, 1.0)


def quality_hold_back(weight: np.ndarray | None, quality: np.ndarray, ids: np.ndarray, share: float) -> np.ndarray:
    """``weight`` (None: 1 for every candidate) float64 [m] with the ``floor(share · m)`` lowest candidates by
    :func:`quality_rank` set to :data:`LOF_CUT_WEIGHT`: the weight of ``selection.fps_quality_hold_back``.
    An FPS step picks a held-back candidate only where its stratum has nothing else left, as with
    :func:`lof_cut_weight`; the other candidates keep their weights, so FPS among them is unchanged."""
    m = len(quality)
    out, n_held = _hold_back(weight, baselines.quality_order(quality, ids)[::-1], share)
    log.info(
        "fps_quality_hold_back: the %d lowest of %d candidates by quality (%.1f %%) held back",
        n_held,
        m,
        100 * n_held / m if m else 0.0,
    )
    return out


def _hold_back(weight: np.ndarray | None, worst_first: np.ndarray, share: float) -> tuple[np.ndarray, int]:
    """``weight`` (None: 1 for every row) float64 [m] with the first ``floor(share · m)`` rows of ``worst_first``
    (a permutation of the rows) set to :data:`LOF_CUT_WEIGHT`, and that count; ``weight`` is not changed."""
    out = np.ones(len(worst_first)) if weight is None else np.array(weight, dtype=np.float64)
    n_held = math.floor(share * len(worst_first))
    out[worst_first[:n_held]] = LOF_CUT_WEIGHT
    return out, n_held


def relevance_hold_back(
    weight: np.ndarray | None,
    quality: np.ndarray,
    coverage: np.ndarray,
    dataset: np.ndarray,
    ids: np.ndarray,
    share: float,
) -> np.ndarray:
    """``weight`` (None: 1 for every candidate) float64 [m] with the ``floor(share · m)`` least relevant
    candidates set to :data:`LOF_CUT_WEIGHT`: the weight of ``selection.fps_relevance_hold_back``.

    Relevance: the mean of a candidate's two places within its ``dataset``'s candidates, each its rank
    over the dataset's size (0 = the best) in :func:`~selectflow.select.baselines.quality_order` of
    ``quality`` and of ``coverage`` (the prompt coverage,
    :func:`~selectflow.select.quality.prompt_coverage`); the least relevant are those with the largest
    mean, ties by ``ids``. Held back as :func:`quality_hold_back` holds back."""
    m = len(quality)
    place = (_place_within(quality, dataset, ids) + _place_within(coverage, dataset, ids)) / 2
    out, n_held = _hold_back(weight, np.lexsort((np.asarray(ids).astype(str), -place)), share)
    log.info(
        "fps_relevance_hold_back: the %d least relevant of %d candidates (%.1f %%; quality and prompt coverage) "
        "held back",
        n_held,
        m,
        100 * n_held / m if m else 0.0,
    )
    return out


def boilerplate_hold_back(
    weight: np.ndarray | None, share: np.ndarray, dataset: np.ndarray, z_cut: float
) -> np.ndarray:
    """``weight`` (None: 1 for every candidate) float64 [m] with the candidates whose boilerplate share
    (:func:`~selectflow.select.quality.boilerplate_share`) is extreme for their ``dataset``'s candidates,
    :func:`~selectflow.select.quality.robust_z` above ``z_cut``, set to :data:`LOF_CUT_WEIGHT`: the weight
    of ``selection.fps_boilerplate_cut_z``. Held back as :func:`quality_hold_back` holds back. A templated
    task's labels are no boilerplate where its prompts are alike (the share's likeness test); where most
    of a dataset's answers share their sentences anyway, the median is high and none is extreme."""
    out = np.ones(len(share)) if weight is None else np.array(weight, dtype=np.float64)
    held = robust_z(np.asarray(share, dtype=np.float64), np.asarray(dataset).astype(str)) > z_cut
    out[held] = LOF_CUT_WEIGHT
    log.info(
        "fps_boilerplate_cut_z: %d of %d candidates (%.1f %%) held back, their answers' sentences boilerplate "
        "beyond z %g",
        int(held.sum()),
        len(share),
        100 * held.mean() if len(share) else 0.0,
        z_cut,
    )
    return out


def _place_within(values: np.ndarray, groups: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each row's :func:`quality_rank` of ``values`` among the rows of its group, over the group's size:
    float64 [m] in [0, 1), 0 = the group's best."""
    groups = np.asarray(groups).astype(str)
    values, ids = np.asarray(values), np.asarray(ids)
    out = np.empty(len(values), dtype=np.float64)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out[rows] = quality_rank(values[rows], ids[rows]) / len(rows)
    return out


def graph_weight(
    kind: str,
    feats: np.ndarray,
    ids: np.ndarray,
    nbr: np.ndarray,
    dist: np.ndarray,
    metric: str,
    lof_cut_z: float,
) -> np.ndarray:
    """The FPS weight float64 [m] of ``selection.fps_weight`` ``kind`` that reads the k-NN graph: ``density``
    (:func:`density_weight`), ``lof`` (:func:`lof_weight`) or ``lof_cut`` (:func:`lof_cut_weight`, cut-off
    ``lof_cut_z``), from :func:`knn_graph`'s ``nbr`` and ``dist`` [m, n + 1] of the n nearest neighbours."""
    spread = mean_spread(dist)
    if kind == "lof":
        return lof_weight(spread, nbr, ids)
    if kind == "lof_cut":
        return lof_cut_weight(spread, nbr, lof_cut_z)
    if kind == "density":
        return density_weight(feats, ids, nbr.shape[1] - 1, metric, spread=spread)
    raise ValueError(f"fps weight {kind!r} does not read the k-NN graph; one of density, lof, lof_cut")


class _Quota:
    """Picks left per stratum; every candidate in one stratum when there are no strata."""

    def __init__(self, m: int, k: int, strata: np.ndarray | None, quota: np.ndarray | None):
        if strata is None:
            self.strata, self.left = np.zeros(m, dtype=np.int64), np.array([k], dtype=np.int64)
        else:
            self.strata, self.left = np.asarray(strata), np.asarray(quota, dtype=np.int64).copy()
            if (
                self.strata.shape != (m,)
                or self.left.sum() != k
                or (self.left > np.bincount(self.strata, minlength=len(self.left))).any()
            ):
                raise SelectFlowError(
                    "diversity strata and quota do not fit the candidates (quota must sum to k, each <= its stratum)"
                )

    def open(self, j: int) -> bool:
        return self.left[self.strata[j]] > 0

    def take(self, j: int) -> None:
        self.left[self.strata[j]] -= 1


def _take_in_order(order: np.ndarray, slots: _Quota, k: int) -> np.ndarray:
    """The first ``k`` candidates of ``order`` whose stratum still has room in ``slots``, int64 [k]."""
    picks = []
    for j in order:
        if slots.open(j):
            picks.append(int(j))
            slots.take(j)
            if len(picks) == k:
                break
    return np.asarray(picks, dtype=np.int64)


def _check(m: int, k: int) -> int:
    if m == 0:
        raise SelectFlowError("diversity selection got no candidates")
    if not 1 <= int(k) <= m:
        raise SelectFlowError(f"cannot select {k} of {m} candidates: k must be in [1, {m}]")
    return int(k)


def facility_location(
    nbr: np.ndarray,
    sim: np.ndarray,
    weight: np.ndarray,
    k: int,
    strata: np.ndarray | None = None,
    quota: np.ndarray | None = None,
) -> np.ndarray:
    """Lazy greedy picks int64 [k] of the weighted facility location over the k-NN graph ``nbr``/``sim`` [m, kk]."""
    m = len(nbr)
    k = _check(m, k)
    slots = _Quota(m, k, strata, quota)
    cols = nbr.ravel()
    by_col = np.argsort(cols, kind="stable")
    covered = np.repeat(np.arange(m), nbr.shape[1])[by_col]  # who each candidate can cover, grouped by candidate
    covered_sim = sim.ravel()[by_col]
    start = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=m))])
    cover = np.zeros(m, dtype=np.float64)

    def gain(j: int) -> float:
        s, e = start[j], start[j + 1]
        return float(weight[j] * np.maximum(0.0, covered_sim[s:e] - cover[covered[s:e]]).sum())

    heap = [(-gain(j), j) for j in range(m)]
    heapq.heapify(heap)
    picks: list[int] = []
    while len(picks) < k:
        _, j = heapq.heappop(heap)
        if not slots.open(j):
            continue
        entry = (-gain(j), j)
        if heap and entry > heap[0]:  # a stale bound may still beat it: look again later
            heapq.heappush(heap, entry)
            continue
        picks.append(j)
        slots.take(j)
        s, e = start[j], start[j + 1]
        np.maximum.at(cover, covered[s:e], covered_sim[s:e])
    return np.asarray(picks, dtype=np.int64)


def kmeans_round_robin(
    feats: np.ndarray,
    quality: np.ndarray,
    ids: np.ndarray,
    k: int,
    n_clusters: int,
    seed: int = 0,
    strata: np.ndarray | None = None,
    quota: np.ndarray | None = None,
) -> np.ndarray:
    """Round-robin by quality over FAISS k-means clusters; with strata, full strata are skipped."""
    m = len(quality)
    k = _check(m, k)
    labels = baselines.kmeans_labels(feats, n_clusters, seed)
    if strata is None:
        return baselines.round_robin(labels, quality, ids, k)
    return _take_in_order(baselines.round_robin(labels, quality, ids, m), _Quota(m, k, strata, quota), k)


def stratified(
    m: int,
    k: int,
    seed: int,
    strata: np.ndarray | None = None,
    quota: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """A seeded random draw of ``k`` of ``m`` candidates, each stratum's ``quota`` from its own candidates (without
    strata, k of all), the held-back ones last: those whose hold-back ``weight`` (:func:`lof_cut_weight`,
    :func:`quality_hold_back`, ...; None: none held back) is below 1 are drawn only where their stratum has no
    other candidate left. Indices int64 [k] in draw order: one random key per candidate (``seed``), then by
    held-back-ness and key. It draws what a random pick of the kept pool draws, routing region by routing
    region (the strata's quotas follow their kept samples), less what the hold-backs flag."""
    k = _check(m, k)
    key = np.random.default_rng(seed).random(m)
    held = np.zeros(m, dtype=bool) if weight is None else np.asarray(weight) < 1.0
    picks = _take_in_order(np.lexsort((key, held)), _Quota(m, k, strata, quota), k)
    log.info("stratified: %d of %d candidates drawn (seed %d), %d of them held back", k, m, seed, held[picks].sum())
    return picks


def select(
    method: str,
    feats: np.ndarray,
    quality: np.ndarray,
    ids: np.ndarray,
    k: int,
    *,
    metric: str,
    n_neighbors: int,
    n_clusters: int,
    strata: np.ndarray | None = None,
    quota: np.ndarray | None = None,
    chunk: int = 1024,
    device: str = "cpu",
    probes: int | None = None,
    weight: np.ndarray | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Candidate indices picked by ``method``: ``facility_location``, ``kmeans`` or ``stratified`` (FPS is
    :mod:`~selectflow.select.fps`); ``probes``: facility location's k-NN graph approximate (:func:`knn_graph`);
    ``weight`` and ``seed``: :func:`stratified`'s hold-back weights and seed."""
    if method == "stratified":
        if seed is None:
            raise SelectFlowError("diversity stratified draws with a seed (selection.strata_seed): pass seed")
        return stratified(len(quality), k, seed, strata, quota, weight)
    if method == "facility_location":
        nbr, dist = knn_graph(feats, n_neighbors, metric, chunk, device, probes=probes)
        log.info("facility location: %d-NN graph of %d candidates", nbr.shape[1] - 1, len(nbr))
        return facility_location(nbr, similarities(dist), quality_weight(quality, ids), k, strata, quota)
    if method == "kmeans":
        return kmeans_round_robin(feats, quality, ids, k, n_clusters, 0, strata, quota)
    raise SelectFlowError(f"unknown selection.diversity {method!r}; use one of {', '.join(DIVERSITY)}")
