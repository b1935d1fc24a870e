"""Byte counts as people write them: ``format_bytes(1536) == "1.5 KiB"``, ``parse_bytes("12GiB")``.

Binary units (KiB = 2^10 B ... TiB = 2^40 B) for what the workflow reports; the parser also
reads decimal ones (KB = 10^3 B ... TB = 10^12 B), as a user may write either in the config.
"""

from __future__ import annotations

import re

from selectflow.runtime.errors import SelectFlowError

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": KIB,
    "mib": MIB,
    "gib": GIB,
    "tib": TIB,
}


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit under 1024 of it, one decimal: ``512 B``, ``1.5 KiB``, ``3.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def parse_bytes(value, key: str = "value") -> int:
    """``12884901888``, ``"12GB"`` (10^9), ``"12GiB"`` (2^30), ``"800 MB"`` → bytes; ``key`` names it in the error."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise SelectFlowError(f"{key}: cannot read {value!r} as a size; write e.g. 12GB, 800MiB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
