"""What every report figure shares: colours, resolution, the atomic PNG write, text-only panels,
user text made safe to draw.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas, no pyplot state).
Every text of a figure is drawn as plain text (:func:`save_png` turns mathtext and TeX off):
records, sample ids and dataset names reach the figures, and a ``$`` in them must not be
read as mathtext.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata

from matplotlib.figure import Figure
from matplotlib.table import Table
from matplotlib.text import Text

from selectflow.runtime.fsutil import atomic_path

log = logging.getLogger(__name__)

DPI = 100
SELECTED = "#d62728"
POOL = "#9e9e9e"


def save_png(fig: Figure, out_png: str | os.PathLike) -> None:
    """Write ``fig`` to ``out_png`` atomically, every text of it drawn as plain text (no mathtext, no TeX)."""
    cells = (cell.get_text() for table in fig.findobj(Table) for cell in table.get_celld().values())
    for text in (*fig.findobj(Text), *cells):  # a table's cell texts are not among its children
        text.set_parse_math(False)
        text.set_usetex(False)
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


# joiners and modifiers that belong to the character before them: a cut must not separate them
_JOINED = re.compile("[\u200c\u200d\ufe00-\ufe0f\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f\U000e0100-\U000e01ef]")
_UNDRAWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _attached(ch: str) -> bool:
    return unicodedata.category(ch) in ("Mn", "Mc", "Me") or bool(_JOINED.fullmatch(ch))


def excerpt(text: object, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (``…`` marks a cut), safe to draw.

    Runs of white space become one space; control characters and lone surrogates become
    U+FFFD; a cut never separates a character from the combining marks, joiners, variation
    selectors or emoji modifiers that follow it (the whole sequence goes), nor splits a pair
    of regional indicators (a flag).
    """
    text = _UNDRAWABLE.sub("\ufffd", " ".join(str(text).split()))
    if len(text) <= limit:
        return text
    cut = max(0, limit - 1)
    while cut > 0 and (_attached(text[cut]) or text[cut - 1] == "\u200d"):
        cut -= 1
    flags = 0
    while flags < cut and 0x1F1E6 <= ord(text[cut - 1 - flags]) <= 0x1F1FF:
        flags += 1
    cut -= flags % 2  # an odd run of regional indicators before the cut: the last one's pair is cut off
    return text[:cut] + "…"
