"""The selection's write-out: the FPS curve, the selected records, the per-dataset summary, the final reasons.

* :func:`write_curve`: picks -> ``fps_curve.tsv`` (``step``, ``sample_id``, ``candidate_index``,
  ``min_distance``).
* :func:`selected_records`: the normalised records of the picked ``sample_id`` s, read from the router
  shards one at a time (only their rows).
* :func:`summary_table`: the quality table with a bool ``selected`` -> ``selection_summary.tsv``'s rows.
* :func:`final_reasons`: the quality table with each sample's ``reason`` after FPS (``quality.tsv``).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd

from selectflow.router.routerfile import read_records, shard_header
from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.tables import write_tsv

log = logging.getLogger(__name__)


def write_curve(cands, picks: np.ndarray, min_distance: np.ndarray, curve_tsv: str | os.PathLike) -> int:
    """Write the curve of ``picks`` (candidate indices of ``cands``) to ``curve_tsv``; return how many.

    Columns ``step``, ``sample_id``, ``candidate_index``, ``min_distance``; a warning if the
    max-min distance reached 0 (:func:`_warn_repeats`).
    """
    _warn_repeats(min_distance)
    curve = {
        "step": np.arange(len(picks)),
        "sample_id": cands.sample_id[picks],
        "candidate_index": picks,
        "min_distance": min_distance,
    }
    write_tsv(pd.DataFrame(curve), curve_tsv, na_rep="nan")
    return len(picks)


def _warn_repeats(min_distance: np.ndarray) -> None:
    zero = np.flatnonzero(np.asarray(min_distance) <= 0)
    if len(zero):
        log.warning(
            "FPS max-min distance reached 0 at pick %d of %d: the remaining candidates repeat picked ones "
            "(identical routing features); the selection holds repeats — lower selection_percentage, or check the "
            "pool for duplicates",
            int(zero[0]) + 1,
            len(min_distance),
        )


def selected_records(wanted: dict, router_paths: list, curve_tsv, quality, quality_tsv) -> dict[str, dict]:
    """The normalised records of the picks, one shard at a time, only their rows read; stale inputs are errors."""
    found: dict[str, dict] = {}
    for path in router_paths:
        _, ids = shard_header(path)
        rows = np.array([i for i, sid in enumerate(ids) if sid in wanted], dtype=np.int64)
        if len(rows):
            for sid, text in zip(ids[rows], read_records(path, rows)):
                found[sid] = json.loads(text)
    missing = [sid for sid in wanted if sid not in found]
    if missing:
        raise SelectFlowError(
            f"{len(missing)} selected samples (first {missing[0]!r}) are in {curve_tsv} but in none of the router "
            "shards; the curve is stale: delete it and rerun snakemake"
        )
    unknown = [sid for sid in wanted if sid not in quality.index]
    if unknown:
        raise SelectFlowError(
            f"selected sample {unknown[0]!r} is not in {quality_tsv}; it is stale: delete it and rerun snakemake"
        )
    return found


# drop reasons (by prefix) that selection_summary.tsv counts, each in the column of that name
REASON_PREFIXES = {"duplicates": "duplicate_of:", "shared_answers": "same_answer_as:"}


def count_reason(reason: pd.Series, prefix: str) -> int:
    """How many values of the ``reason`` column start with ``prefix`` (one of :data:`REASON_PREFIXES`)."""
    return int(reason.astype(str).str.startswith(prefix).sum())


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """``selection_summary.tsv``'s rows: per ``dataset`` of ``table`` (the quality table plus a bool
    ``selected``) the ``pool``, ``kept``, ``candidates``, ``selected``, ``duplicates`` (of which
    ``near_duplicates``) and ``shared_answers`` (``same_answer_as``, not among the duplicates) counts and the
    selected samples' ``quality_min`` and ``quality_max``.
    """
    sel = table[table["selected"]]
    return (
        table.groupby("dataset")
        .agg(
            pool=("sample_id", "size"),
            kept=("kept", "sum"),
            candidates=("candidate", "sum"),
            selected=("selected", "sum"),
            duplicates=("reason", lambda r: count_reason(r, REASON_PREFIXES["duplicates"])),
            near_duplicates=("similarity", lambda v: int((v < 1).sum())),
            shared_answers=("reason", lambda r: count_reason(r, REASON_PREFIXES["shared_answers"])),
        )
        .join(sel.groupby("dataset")["quality"].agg(quality_min="min", quality_max="max"))
        .reset_index()
    )


def final_reasons(table: pd.DataFrame) -> pd.DataFrame:
    """The quality table after FPS: ``reason`` ``selected`` for the picks, ``not_picked`` for the other candidates.

    ``table`` has :func:`selectflow.stages.select.build_candidates`'s columns plus a bool ``selected``; the drop
    reasons of the samples that never became candidates stay as they are.
    """
    reason = table["reason"].astype(object).copy()
    reason[table["reason"].astype(str) == "candidate"] = "not_picked"
    reason[table["selected"].astype(bool)] = "selected"
    return table.assign(reason=reason)
