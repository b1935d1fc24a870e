"""The comparison's measuring pieces (:mod:`selectflow.stages.compare` puts them together); no selection code
imports them (the label fields live here).

* :func:`_kept_ids`: the ``sample_id`` s a quality table marks ``kept``, sorted.
* :func:`_pool_records`: the normalised records (plus ``sample_id``) of wanted samples, one router shard at a time.
* :func:`read_pool`: ``pool.h5`` (``sample_id``, ``quality``, ``features``, ``cluster`` and its attributes) as a dict.
* :func:`_selection`: the records of a selection's JSONL; :func:`_text_key`: a record's normalised
  prompt + response, the key no test record may share with a pool, target or selected record.
* :func:`interval`: mean and 95 % interval over seeds; :data:`LABEL_FIELDS`: the demo's label fields.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np

from selectflow.data.records import iter_jsonl, record_prompt_response
from selectflow.router.routerfile import read_router_shard
from selectflow.runtime.fsutil import h5_rows
from selectflow.runtime.tables import read_tsv
from selectflow.select.dedup import normalised_text

LABEL_FIELDS = ("planted", "topic")  # the demo's label fields: they measure, never select


def _kept_ids(quality_tsv) -> list[str]:
    table = read_tsv(quality_tsv, "quality table", nan_columns=("quality",))
    return sorted(table.loc[table["kept"].astype(str).str.lower() == "true", "sample_id"].astype(str))


def _pool_records(router_paths: list, wanted: set[str]):
    """``(sample_id, normalised record + sample_id)`` of the ``wanted`` samples, one shard at a time."""
    for path in router_paths:
        shard = read_router_shard(path)
        for sid, text in zip(shard.sample_id, shard.record if shard.record is not None else []):
            if sid in wanted:
                yield sid, {**json.loads(text)["record"], "sample_id": sid}


def read_pool(pool_h5, features: bool = True) -> dict:
    """``pool.h5`` (rule ``compare_pool``) as a dict; ``features: False`` leaves the features [n, D] on disk
    (``None``): what the baselines that do not compare them, and :func:`read_pool_features`, need."""
    with h5py.File(pool_h5, "r") as f:
        out = {name: f[name][()] for name in ("quality", "cluster")}
        out["features"] = f["features"][()] if features else None
        if "response_tokens" in f:  # absent from a pool.h5 written before the longest baseline
            out["response_tokens"] = f["response_tokens"][()]
        out["sample_id"] = np.array(
            [v.decode() if isinstance(v, bytes) else v for v in f["sample_id"][()]], dtype=object
        )
        out.update({k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()})
    return out


def read_pool_features(pool_h5, rows) -> np.ndarray:
    """The features of ``pool.h5`` rows ``rows`` (in their order), read without the rest of the pool's."""
    with h5py.File(pool_h5, "r") as f:
        return h5_rows(f["features"], rows)


class PoolFeatures:
    """``pool.h5``'s features left on disk: ``[rows]`` reads those rows (:func:`read_pool_features`)."""

    def __init__(self, pool_h5):
        self.path = pool_h5

    def __getitem__(self, rows) -> np.ndarray:
        return read_pool_features(self.path, rows)


def _selection(path) -> list[dict]:
    return [rec for _, rec in iter_jsonl(path)]


def _text_key(record: dict) -> str:
    prompt, response = record_prompt_response(record)
    return normalised_text(json.dumps({"prompt": prompt, "response": response}), system_turns=False)


def interval(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student's t over the seeds)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return (float(values.mean()) if len(values) else math.nan), math.nan
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)
