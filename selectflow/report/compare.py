"""The comparison figure: downstream eval loss per method (mean ± std over seeds) and intrinsic metrics."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from selectflow.report.canvas import POOL, SELECTED, save_png
from selectflow.runtime.fsutil import atomic_open
from selectflow.runtime.tables import read_tsv

INTRINSIC_PANELS = (("mean_quality", "mean quality"), ("near_duplicate_pairs", "near-duplicate pairs"),
                    ("clusters_touched", "share of clusters touched"), ("cluster_entropy", "cluster entropy (nats)"))


def caption(down: pd.DataFrame) -> str:
    """Which method won on downstream loss, by how much, and where the main method (fps) stands."""
    down = down.sort_values(["mean_eval_loss", "method"]).reset_index(drop=True)
    best, runner = down.iloc[0], down.iloc[1] if len(down) > 1 else None
    text = (f"Lowest mean eval loss: {best['method']} ({best['mean_eval_loss']:.4f} ± "
            f"{best['std_eval_loss']:.4f} over {int(best['n_seeds'])} seeds)")
    if runner is not None:
        gap = runner["mean_eval_loss"] - best["mean_eval_loss"]
        spread = np.nanmax([best["std_eval_loss"], runner["std_eval_loss"]])
        verdict = "within the seed spread" if gap <= spread else "beyond the seed spread"
        text += f", {gap:.4f} below {runner['method']} ({verdict})"
    fps = down[down["method"] == "fps"]
    if len(fps) and best["method"] != "fps" and (runner is None or runner["method"] != "fps"):
        rank = int(fps.index[0]) + 1
        text += (f"; fps ranks {rank} of {len(down)}, {fps['mean_eval_loss'].iloc[0] - best['mean_eval_loss']:.4f} "
                 "above the best")
    return text + "."


def compare_figure(downstream_tsv: str | os.PathLike, intrinsic_tsv: str | os.PathLike,
                   out_png: str | os.PathLike, out_caption: str | os.PathLike) -> str:
    """Draw the figure and write its caption (also the figure's title); return the caption."""
    down = read_tsv(downstream_tsv, "downstream table", nan_columns=("std_eval_loss",))
    intr = read_tsv(intrinsic_tsv, "intrinsic table").set_index("method").loc[down["method"]]
    text = caption(down)
    fig = Figure(figsize=(4 * (1 + len(INTRINSIC_PANELS)), 4))
    axes = fig.subplots(1, 1 + len(INTRINSIC_PANELS))
    methods = list(down["method"])
    colours = [SELECTED if m == "fps" else POOL for m in methods]
    x = np.arange(len(methods))
    axes[0].bar(x, down["mean_eval_loss"], yerr=down["std_eval_loss"].fillna(0), color=colours, capsize=4)
    low, high = (down["mean_eval_loss"] - down["std_eval_loss"].fillna(0)).min(), \
        (down["mean_eval_loss"] + down["std_eval_loss"].fillna(0)).max()
    pad = max(1e-3, 0.2 * (high - low))
    axes[0].set_ylim(low - pad, high + pad)
    axes[0].set_title("eval loss (mean ± std over seeds)")
    for ax, (column, title) in zip(axes[1:], INTRINSIC_PANELS):
        ax.bar(x, intr[column], color=colours)
        ax.set_title(title)
    for ax in axes:
        ax.set_xticks(x, methods, rotation=45, ha="right")
    fig.suptitle(text, fontsize=9, wrap=True)
    save_png(fig, out_png)
    with atomic_open(out_caption, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return text
