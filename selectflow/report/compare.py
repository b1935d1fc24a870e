"""The comparison figure: macro accuracy and macro loss per method (mean and 95 % interval over seeds) and
the selectors' intrinsic metrics; its caption says who won and whether beyond the interval."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from selectflow.report.canvas import POOL, SELECTED, save_png
from selectflow.runtime.fsutil import atomic_open
from selectflow.runtime.tables import read_tsv

INTRINSIC_PANELS = (
    ("mean_quality", "mean quality"),
    ("near_duplicate_pairs", "near-duplicate pairs"),
    ("clusters_touched", "share of clusters touched"),
    ("cluster_entropy", "cluster entropy (nats)"),
)


MEASURES = (("accuracy", "macro accuracy", False), ("loss", "macro loss", True))  # (column, title, lower is better)


def per_seed(row, measure: str) -> np.ndarray:
    """The per-seed values of ``measure`` in a row of ``downstream.tsv`` (column ``<measure>_per_seed``)."""
    return np.array([float(v) for v in str(row[f"{measure}_per_seed"]).split(",")], dtype=np.float64)


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a`` minus mean of ``b`` and the half-width of its 95 % interval (Welch)."""
    from scipy import stats

    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else 1.0
    return float(a.mean() - b.mean()), float(stats.t.ppf(0.975, dof) * np.sqrt(va + vb))


def caption(down: pd.DataFrame, main: str = "fps", reference: str = "random") -> str:
    """Who won each measure, whether the main method beats the reference beyond the 95 % interval, and
    whether the main method's interval holds the chance of its selection (one selection per seed) or not."""
    down = down.set_index("method")
    parts = []
    for measure, title, lower in MEASURES:
        values = down[f"macro_{measure}"]
        if values.isna().all():
            continue
        best = values.idxmin() if lower else values.idxmax()
        text = f"best {title}: {best} ({values[best]:.4f} ± {down.at[best, f'macro_{measure}_ci95']:.4f})"
        if main in down.index and reference in down.index and main != reference:
            diff, half = difference(per_seed(down.loc[main], measure), per_seed(down.loc[reference], measure))
            better = diff < 0 if lower else diff > 0
            verdict = "beyond" if abs(diff) > half else "within"
            text += (
                f"; {main} {'better' if better else 'worse'} than {reference} by {abs(diff):.4f} "
                f"({verdict} the 95 % interval ± {half:.4f})"
            )
        parts.append(text)
    if parts and main in down.index and main != reference and "n_selections" in down:
        n, seeds = int(down.at[main, "n_selections"]), int(down.at[main, "n_seeds"])
        parts.append(
            f"{main} drawn anew for each of its {seeds} fine-tunes (compare.fps_draws)"
            if n > 1
            else f"one {main} selection for its {seeds} fine-tunes: its interval leaves out the selection's "
            "own chance (compare.fps_draws holds it)"
        )
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "." if parts else "No downstream measure."


def compare_figure(
    downstream_tsv: str | os.PathLike,
    intrinsic_tsv: str | os.PathLike,
    out_png: str | os.PathLike,
    out_caption: str | os.PathLike,
) -> str:
    """Draw the figure and write its caption (also the figure's title); return the caption."""
    down = read_tsv(
        downstream_tsv,
        "downstream table",
        nan_columns=tuple(f"macro_{m}{tail}" for m, _, _ in MEASURES for tail in ("", "_ci95")),
    )
    intr = read_tsv(intrinsic_tsv, "intrinsic table").set_index("method")
    text = caption(down)
    measures = [m for m in MEASURES if down[f"macro_{m[0]}"].notna().any()]
    fig = Figure(figsize=(4 * (len(measures) + len(INTRINSIC_PANELS)), 4.5))
    axes = fig.subplots(1, len(measures) + len(INTRINSIC_PANELS))
    methods = list(down["method"])
    colours = [SELECTED if m == "fps" else POOL for m in methods]
    x = np.arange(len(methods))
    for ax, (measure, title, _) in zip(axes, measures):
        mean, half = down[f"macro_{measure}"], down[f"macro_{measure}_ci95"].fillna(0)
        ax.bar(x, mean, yerr=half, color=colours, capsize=4)
        low, high = (mean - half).min(), (mean + half).max()
        pad = max(1e-3, 0.2 * (high - low))
        ax.set_ylim(max(0.0, low - pad) if measure == "accuracy" else low - pad, high + pad)
        ax.set_title(f"{title} (mean, 95 % interval)")
        ax.set_xticks(x, methods, rotation=45, ha="right")
    selectors = [m for m in methods if m in intr.index]
    for ax, (column, title) in zip(axes[len(measures) :], INTRINSIC_PANELS):
        ax.bar(
            np.arange(len(selectors)),
            intr.loc[selectors, column],
            color=[SELECTED if m == "fps" else POOL for m in selectors],
        )
        ax.set_title(title)
        ax.set_xticks(np.arange(len(selectors)), selectors, rotation=45, ha="right")
    fig.suptitle(text, fontsize=9, wrap=True)
    save_png(fig, out_png)
    with atomic_open(out_caption, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return text
