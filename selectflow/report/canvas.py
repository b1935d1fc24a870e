"""What every report figure shares: colours, resolution, the atomic PNG write, text-only panels.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas, no pyplot state).
"""

from __future__ import annotations

import logging
import os

from matplotlib.figure import Figure

from selectflow.runtime.fsutil import atomic_path

log = logging.getLogger(__name__)

DPI = 100
SELECTED = "#d62728"
POOL = "#9e9e9e"


def save_png(fig: Figure, out_png: str | os.PathLike) -> None:
    """Write ``fig`` to ``out_png`` atomically."""
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    log.info("wrote %s", out_png)


def message(ax, text: str) -> None:
    """Replace the panel ``ax`` by ``text``, centred."""
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11, transform=ax.transAxes)
    ax.set_axis_off()


def placeholder_figure(out_png: str | os.PathLike, title: str, text: str) -> None:
    """A figure holding only ``title`` and ``text`` (a stage that did not run)."""
    fig = Figure(figsize=(7, 2.2))
    ax = fig.subplots()
    ax.set_title(title)
    message(ax, text)
    save_png(fig, out_png)
