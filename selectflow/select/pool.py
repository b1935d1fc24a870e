"""The pool the selection works on: per-sample arrays of every sample of the router shards.

:func:`scan_pool` reads the shards one at a time (:func:`selectflow.router.routerfile.scan_shards`)
and keeps of each only what quality, dedup and the candidates need later (:class:`Pool`, ``n``
samples): the small arrays of the dump, what the quality methods read from the records
(:func:`selectflow.select.quality.record_facts`), each record's dataset and the duplicate keys
(:mod:`selectflow.select.dedup`). The records, ``moe_probs`` and ``hidden`` go with their shard;
the rows the selection needs of them later (the candidates' features, the records of the
near-duplicate pairs) are read back from the shards, one shard at a time (:class:`ShardRows`).
Memory: one shard plus a few hundred bytes a sample (with near-duplicate keys, 137 bytes more
until :func:`selectflow.select.dedup.drop_duplicates` has used them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np

from selectflow.router.routerfile import (
    RouterShard,
    check_unique_ids,
    read_hidden,
    read_moe_probs,
    read_records,
    scan_shards,
)
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.oom import release_heap
from selectflow.select.dedup import answer_keys, near_keys, routing_keys, text_keys
from selectflow.select.quality import gate_good, record_facts


@dataclass(frozen=True)
class ShardRows:
    """Where the pool's rows live: row ``row_of[i]`` of shard ``paths[shard_of[i]]``."""

    paths: list  # [S] Path of each shard (None for a shard given in memory: nothing is read back from it)
    shard_of: np.ndarray  # [n] int64
    row_of: np.ndarray  # [n] int64

    def records(self, rows: np.ndarray) -> np.ndarray:
        """The ``record`` strings [len(rows)] of pool rows ``rows``, in that order; only those rows are read."""
        return self._take(rows, read_records)

    def vectors(self, rows: np.ndarray, hidden: bool, convert: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``convert`` of the ``moe_probs`` [r, L, E] (``hidden``: the ``hidden`` states [r, H]) of pool rows
        ``rows``, applied a shard at a time, stacked in the order of ``rows``; a shard dumped without
        ``hidden`` raises the SelectFlowError that names it and the key to set."""
        read = read_hidden if hidden else read_moe_probs
        return self._take(rows, lambda path, at: convert(read(path, at)))

    def record_batches(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(positions in rows, their record strings)`` a shard at a time, for the pool rows ``rows``: one
        shard's records in memory at a time (:func:`~selectflow.select.quality.prompt_coverage`)."""
        return self._by_shard(rows, read_records)

    def _take(self, rows: np.ndarray, read) -> np.ndarray:
        """``read(path, shard rows)`` for the pool rows ``rows`` of each shard holding some, into one array
        [len(rows), ...] in the order of ``rows``; shards holding none of them are not opened."""
        out = None
        for at, values in self._by_shard(rows, read):
            if out is None:
                out = np.empty((len(rows), *values.shape[1:]), dtype=values.dtype)
            out[at] = values
        return out

    def _by_shard(self, rows: np.ndarray, read) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(positions in rows, read(path, their shard rows))`` for each shard holding some of the pool rows
        ``rows``, in shard order; shards holding none of them are not opened."""
        rows = np.asarray(rows, dtype=np.int64)
        for k in np.unique(self.shard_of[rows]):
            at = np.flatnonzero(self.shard_of[rows] == k)
            yield at, read(self.paths[k], self.row_of[rows[at]])


@dataclass(frozen=True, eq=False)
class Pool:
    """Every sample of the router shards, as the selection needs it; rows in shard order.

    The arrays a dump may lack (no quality gates, ``router_dump.ifd`` off, no ``nll_eos``) are
    None when one shard lacks them; so are the record facts and ``text_key`` when a shard has no
    records (``dataset`` is then ``""``).
    """

    sample_id: np.ndarray  # [n] object (str)
    dataset: np.ndarray  # [n] object (str): the record's "dataset"
    nll_response: np.ndarray  # [n] float32
    n_response_tokens: np.ndarray  # [n] int32
    routing_key: np.ndarray  # [n] S16: dedup.routing_keys of the moe_probs
    rows: ShardRows  # where each row lives, to read back features and records
    gate_good: np.ndarray | None = None  # [n] float64: quality.gate_good of the shards' quality_logits
    nll_response_alone: np.ndarray | None = None  # [n] float32
    nll_eos: np.ndarray | None = None  # [n] float32
    empty_response: np.ndarray | None = None  # [n] bool (quality.record_facts)
    distinct_3grams: np.ndarray | None = None  # [n] float64 (quality.record_facts)
    field_value: np.ndarray | None = None  # [n] object: the record's value of the quality field, when one was asked
    text_key: np.ndarray | None = None  # [n] S16: dedup.text_keys
    answer_key: np.ndarray | None = None  # [n] S16: dedup.answer_keys, when selection.shared_answer_min_words is set
    # dedup.near_keys (near_band, near_sig, near_numbers, near_ok), when a near-duplicate threshold was
    # given; dedup.drop_duplicates empties it once they are used
    near: dict[str, np.ndarray] = dc_field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_id)


_STACKED = ("sample_id", "nll_response", "n_response_tokens", "nll_response_alone", "nll_eos")


def shard_facts(
    shard: RouterShard,
    *,
    field: str | None = None,
    near_threshold: float | None = None,
    system_turns: bool,
    answer_min_words: int | None = None,
) -> dict[str, np.ndarray]:
    """What the selection needs later of one shard's records and routing: its routing keys and, with
    records, their facts (:func:`~selectflow.select.quality.record_facts`; ``field_value`` with
    ``field``), text keys, ``dataset``, with ``near_threshold`` the near-duplicate keys and with
    ``answer_min_words`` the answer keys (:func:`~selectflow.select.dedup.answer_keys`)."""
    out = {"routing_key": routing_keys(shard.moe_probs)}
    if shard.record is not None:
        parsed = [json.loads(r) for r in shard.record]  # once, for all of them
        names: dict[str, str] = {}  # one string object per dataset name, not one a sample
        if near_threshold is not None:
            out.update(near_keys(parsed, near_threshold, system_turns))
        if answer_min_words is not None:
            out["answer_key"] = answer_keys(parsed, answer_min_words)
        out.update(
            record_facts(parsed, field),
            text_key=text_keys(parsed, system_turns),
            dataset=np.array(
                [names.setdefault(n, n) for n in (rec.get("dataset", "") for rec in parsed)], dtype=object
            ),
        )
    return out


def pool_of(
    shards: Iterable[tuple[Path | None, RouterShard]],
    *,
    field: str | None = None,
    near_threshold: float | None = None,
    system_turns: bool,
    answer_min_words: int | None = None,
) -> Pool:
    """The :class:`Pool` of ``(path, shard)`` pairs, taken one at a time: of each shard its small arrays
    and :func:`shard_facts` are kept, the rest is left to go. Sample ids must be unique."""
    parts: dict[str, list] = {name: [] for name in (*_STACKED, "gate_good")}
    facts: dict[str, list] = {}
    paths, sizes = [], []
    for path, shard in shards:
        for name in _STACKED:
            parts[name].append(getattr(shard, name))
        # the gates' logits [n, L, 2] as their one score a sample (the only thing the selection reads of them)
        parts["gate_good"].append(None if shard.quality_logits is None else gate_good(shard.quality_logits))
        for name, values in shard_facts(
            shard,
            field=field,
            near_threshold=near_threshold,
            system_turns=system_turns,
            answer_min_words=answer_min_words,
        ).items():
            facts.setdefault(name, []).append(values)
        paths.append(path)
        sizes.append(len(shard))
        del shard
        release_heap()  # the shard's parsed records leave holes between the values kept
    if not paths:
        raise SelectFlowError("no router-data shards given; run the router_dump rule first")
    shard_of = np.repeat(np.arange(len(paths)), sizes)
    arrays = {
        name: None if any(v is None for v in values) else np.concatenate(values) for name, values in parts.items()
    }
    check_unique_ids(arrays["sample_id"], shard_of, paths)
    # a value some shards cannot give (no records there) is given for none
    kept = {name: np.concatenate(values) for name, values in facts.items() if len(values) == len(paths)}
    near = {name: kept.pop(name) for name in list(kept) if name.startswith("near_")}
    dataset = kept.pop("dataset", np.full(len(shard_of), "", dtype=object))
    return Pool(
        **arrays,
        dataset=dataset,
        **kept,
        near=near,
        rows=ShardRows(paths, shard_of, np.concatenate([np.arange(n) for n in sizes])),
    )


def scan_pool(paths: list[str | os.PathLike], sel) -> Pool:
    """The :class:`Pool` of router shards ``paths``, read one at a time; ``sel`` (a
    :class:`selectflow.config.SelectionConfig`) says which record field the quality method reads
    and how duplicates are keyed."""
    return pool_of(
        scan_shards(list(paths)),
        field=sel.quality_field if sel.quality_method == "field" else None,
        near_threshold=sel.near_duplicate_threshold,
        system_turns=sel.dedup_system_turns,
        answer_min_words=sel.shared_answer_min_words,
    )
