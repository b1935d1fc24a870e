"""The report's table of example records: some selected, some dropped, each with its reason.

Reads ``quality.tsv`` (its ``reason`` column when the selection wrote one; otherwise the
reason is derived from the ``kept`` / ``candidate`` flags), ``fps_curve.tsv`` (the picks,
in order) and the records stored in the router-data shards; draws them as a table
figure for ``snakemake --report``.
"""

from __future__ import annotations

import json
import logging
import os

import pandas as pd

from selectflow.runtime.tables import read_tsv

log = logging.getLogger(__name__)


def _flag(column: pd.Series) -> pd.Series:
    return column.astype(str).str.lower().eq("true")


def drop_reasons(quality: pd.DataFrame, picked: set[str]) -> pd.Series:
    """Per row of ``quality``: ``selected``, or why the sample was not (the ``reason`` column when present)."""
    if "reason" in quality:
        reason = quality["reason"].astype(str).replace({"": "not selected", "nan": "not selected"})
    else:
        kept = _flag(quality["kept"]) if "kept" in quality else pd.Series(True, index=quality.index)
        cand = _flag(quality["candidate"]) if "candidate" in quality else kept
        reason = pd.Series("not_picked", index=quality.index)
        reason[kept & ~cand] = "below_importance_cut"
        reason[~kept] = "dropped by the quality method"
    return reason.where(~quality["sample_id"].isin(picked), "selected")


def _records(router_paths, wanted: set[str]) -> dict[str, dict]:
    """sample_id -> original record, for ``wanted`` ids, reading only ids and records of each shard."""
    import h5py

    found: dict[str, dict] = {}
    for path in router_paths:
        if len(found) == len(wanted):
            break
        with h5py.File(path, "r") as f:
            if "record" not in f:
                continue
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["sample_id"][()]]
            rows = [i for i, sid in enumerate(ids) if sid in wanted]
            for i in rows:
                raw = f["record"][i]
                found[ids[i]] = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    return found


def example_rows(quality_tsv, curve_tsv, router_paths, *, per_group: int = 5, max_chars: int = 160) -> pd.DataFrame:
    """The table: the first ``per_group`` picks, then ``per_group`` samples of each kind of drop reason.

    Rows keep the order of ``quality_tsv`` (best quality first); a kind is the reason up to
    its first ``:``, so all ``duplicate_of:<id>`` rows form one group.
    """
    from selectflow.data.records import record_prompt_response
    from selectflow.report.canvas import excerpt

    quality = read_tsv(quality_tsv, "quality table", dtype={"reason": str})
    curve = read_tsv(curve_tsv, "FPS curve")
    rank = {sid: i for i, sid in enumerate(curve["sample_id"])}
    quality = quality.assign(reason=drop_reasons(quality, set(rank)))
    chosen = [
        quality[quality["reason"] == "selected"]
        .assign(rank=lambda t: t["sample_id"].map(rank))
        .sort_values("rank")
        .head(per_group)
    ]
    dropped = quality[quality["reason"] != "selected"]
    # one group per kind of reason: "duplicate_of:<id>" names a different id on every row
    for _, part in dropped.groupby(dropped["reason"].str.partition(":")[0], sort=True):
        chosen.append(part.head(per_group).assign(rank=None))
    table = pd.concat(chosen, ignore_index=True)
    records = _records(list(router_paths), set(table["sample_id"]))
    prompts, responses = [], []
    for sid in table["sample_id"]:
        rec = records.get(sid)
        try:
            prompt, response = record_prompt_response(rec) if rec is not None else ("(record not stored)", "")
        except ValueError:
            prompt, response = json.dumps(rec, ensure_ascii=False), ""
        prompts.append(excerpt(prompt.replace("### User:", "").replace("### Assistant:", ""), max_chars))
        responses.append(excerpt(response, max_chars))
    cols = ["reason", "rank", "sample_id", "dataset", "quality"]
    out = table[[c for c in cols if c in table]].copy()
    out["prompt"], out["response"] = prompts, responses
    return out


def examples_figure(
    quality_tsv, curve_tsv, router_paths, out_png: str | os.PathLike, *, per_group: int = 5, max_chars: int = 60
) -> pd.DataFrame:
    """Draw :func:`example_rows` as a table figure (PNG, like the report's other entries); return the table."""
    from matplotlib.figure import Figure

    from selectflow.report.canvas import SELECTED, excerpt, save_png

    table = example_rows(quality_tsv, curve_tsv, router_paths, per_group=per_group, max_chars=max_chars)
    cells = []
    for row in table.itertuples(index=False):
        values = dict(zip(table.columns, row))
        rank = values.get("rank")
        q = str(values.get("quality", ""))
        cells.append(
            [
                excerpt(values["reason"], 40) + ("" if rank is None or pd.isna(rank) else f" #{int(rank) + 1}"),
                excerpt(values["sample_id"], 40),
                excerpt(values.get("dataset", ""), 24),
                f"{float(q):.4g}" if q not in ("", "nan", "None") else "n/a",
                values["prompt"],
                values["response"],
            ]
        )
    fig = Figure(figsize=(16, 0.6 + 0.24 * (1 + max(1, len(cells)))))
    ax = fig.subplots()
    ax.set_axis_off()
    n_sel = int((table["reason"] == "selected").sum())
    ax.set_title(
        f"Example records: {n_sel} selected (pick order #), then up to {per_group} per reason for not being selected",
        fontsize=10,
        loc="left",
    )
    if cells:
        shown = ax.table(
            cellText=cells,
            colLabels=["why", "sample_id", "dataset", "quality", "prompt", "response"],
            bbox=[0, 0, 1, 1],
            cellLoc="left",
            colLoc="left",
            colWidths=[0.14, 0.09, 0.06, 0.05, 0.35, 0.31],
        )
        shown.auto_set_font_size(False)
        shown.set_fontsize(7.5)
        for (r, _), cell in shown.get_celld().items():
            if r > 0 and cells[r - 1][0].startswith("selected"):
                cell.get_text().set_color(SELECTED)
    else:
        ax.text(0.5, 0.5, "no scored samples", ha="center", va="center", transform=ax.transAxes)
    save_png(fig, out_png)
    return table
