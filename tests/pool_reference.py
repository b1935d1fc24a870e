"""The tests' naive reference for the selection's pool: the whole pool in memory, every value at once.

:func:`whole_pool` reads every shard and stacks them (``concat_shards``), then computes each
per-sample value over the whole pool in one go (record facts, datasets, text, routing and
near-duplicate keys of every record) and serves the rows the selection reads back (features,
records) from the stacked arrays in memory (:class:`WholeRows`). That is what the selection did
before it streamed; :func:`selectflow.select.pool.scan_pool` keeps only per-shard results and reads
rows back from the shard files, and must give the same pool and the same outputs.
"""

import json

import numpy as np

from selectflow.router.routerfile import NO_HIDDEN, RouterShard, concat_shards
from selectflow.runtime.errors import SelectFlowError
from selectflow.select.candidates import candidates_of_pool
from selectflow.select.dedup import answer_keys, near_keys, routing_keys, text_keys
from selectflow.select.pool import Pool
from selectflow.select.quality import gate_good, record_facts


class WholeRows:
    """Rows of a stacked shard held in memory: the reference for :class:`selectflow.select.pool.ShardRows`."""

    def __init__(self, shard: RouterShard):
        self.shard = shard

    def records(self, rows):
        return self.shard.record[np.asarray(rows, dtype=np.int64)]

    def record_batches(self, rows):
        yield np.arange(len(rows)), self.records(rows)

    def vectors(self, rows, hidden, convert):
        values = self.shard.hidden if hidden else self.shard.moe_probs
        if values is None:
            raise SelectFlowError(f"the router data {NO_HIDDEN}")
        return convert(values[np.asarray(rows, dtype=np.int64)])


def whole_pool(paths, sel) -> Pool:
    """The pool of ``paths`` under selection section ``sel``, computed on the whole stacked pool."""
    whole = concat_shards(paths)
    records = whole.record
    facts, near = {}, {}
    if records is not None:
        field = sel.quality_field if sel.quality_method == "field" else None
        facts = {
            **record_facts(records, field),
            "text_key": text_keys(records, sel.dedup_system_turns),
            "dataset": np.array([json.loads(r).get("dataset", "") for r in records], dtype=object),
        }
        if sel.near_duplicate_threshold is not None:
            near = near_keys(records, sel.near_duplicate_threshold, sel.dedup_system_turns)
        if sel.shared_answer_min_words is not None:
            facts["answer_key"] = answer_keys(records, sel.shared_answer_min_words)
    return Pool(
        sample_id=whole.sample_id,
        dataset=facts.pop("dataset", np.full(len(whole), "", dtype=object)),
        nll_response=whole.nll_response,
        n_response_tokens=whole.n_response_tokens,
        routing_key=routing_keys(whole.moe_probs),
        rows=WholeRows(whole),
        gate_good=None if whole.quality_logits is None else gate_good(whole.quality_logits),
        nll_response_alone=whole.nll_response_alone,
        nll_eos=whole.nll_eos,
        near=near,
        **facts,
    )


def build_candidates_whole(paths, out_h5, quality_tsv, sel, exclude_ids=None) -> int:
    """``build_candidates`` on :func:`whole_pool` instead of the streamed pool; return k."""
    return candidates_of_pool(whole_pool(paths, sel), out_h5, quality_tsv, sel, exclude_ids)


def build_compare_pool_concat(router_paths, candidates_h5, quality_tsv, out_h5, cmp, sel) -> None:
    """``compare.build_pool`` as it was before its two passes: every shard's kept features gathered in a
    list, stacked, then re-ordered by ``sample_id`` (three copies of the pool's features at the peak). The
    reference :func:`selectflow.stages.compare.build_pool` must equal, and the baseline of
    ``bench_scale.py --steps candidates,compare_pool``."""
    from selectflow.report.yardstick import _kept_ids
    from selectflow.router.routerfile import read_router_shard
    from selectflow.runtime.tables import read_tsv
    from selectflow.select.candidates import read_candidates, shard_features
    from selectflow.stages.compare import write_pool

    cands = read_candidates(candidates_h5)
    metric, k = cands.attrs["metric"], int(cands.attrs["k"])
    table = read_tsv(quality_tsv, "quality table", nan_columns=("quality",)).set_index("sample_id")
    kept = set(_kept_ids(quality_tsv))
    ids, feats, lengths = [], [], []
    for path in router_paths:
        shard = read_router_shard(path)
        mask = np.array([sid in kept for sid in shard.sample_id], dtype=bool)
        if mask.any():
            ids.append(shard.sample_id[mask].astype(str))
            lengths.append(np.asarray(shard.n_response_tokens)[mask])
            feats.append(shard_features(shard, np.flatnonzero(mask), sel)[0])
    ids_arr = np.concatenate(ids)
    order = np.argsort(ids_arr, kind="stable")
    ids_arr, x, response_tokens = ids_arr[order], np.concatenate(feats)[order], np.concatenate(lengths)[order]
    quality = table.loc[ids_arr, "quality"].to_numpy(dtype=np.float64)
    write_pool(out_h5, ids_arr, quality, x, response_tokens, k, metric, cmp)


def near_in_order_row_by_row(x, eps, metric, block_values=None):
    """``semdedup``'s walk as it was before its blocks (the bench's baseline for
    :func:`selectflow.select.baselines._near_in_order`): one distance call for each row not yet near."""
    from selectflow.select import distance

    near = np.zeros(len(x), dtype=bool)
    for j in range(len(x)):
        if not near[j]:
            near[j + 1 :] |= distance.pairwise(x[j : j + 1], x[j + 1 :], metric)[0].cpu().numpy() <= eps
    return near


def score_first_walk_whole(feats, order, k, tau, metric, device="cpu", block=None):
    """``score_first``'s walk as it was before its blocks (the tests' and the bench's reference for
    :func:`selectflow.select.baselines.score_first_walk`): every row's features in memory, each kept row
    measured against every row."""
    from selectflow.select import distance
    from selectflow.select.baselines import _torch

    x = _torch(np.asarray(feats), device)
    min_dist = np.full(len(order), np.inf, dtype=np.float64)
    kept, pos = [], 0
    while len(kept) < k and pos < len(order):
        ahead = np.flatnonzero(min_dist[pos:] > tau)
        if not len(ahead):
            break
        pos += int(ahead[0])
        row = int(order[pos])
        kept.append(row)
        min_dist = np.minimum(min_dist, distance.pairwise(x[row : row + 1], x, metric)[0].cpu().numpy()[order])
        pos += 1
    return np.asarray(kept, dtype=np.int64)
