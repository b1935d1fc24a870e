"""Byte counts: the one formatter and parser of selectflow.runtime.units."""

import pytest

from selectflow.runtime.errors import SelectFlowError
from selectflow.runtime.units import GIB, KIB, MIB, format_bytes, parse_bytes


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (MIB - 1, "1024.0 KiB"),
        (5 * MIB, "5.0 MiB"),
        (3 * GIB, "3.0 GiB"),
        (2048 * GIB, "2.0 TiB"),
        (5000 * 2**40, "5000.0 TiB"),
    ],
)
def test_format_bytes_picks_the_largest_unit_under_1024(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    "spec, expected",
    [
        (4096, 4096),
        ("12GB", 12 * 10**9),
        ("12GiB", 12 * GIB),
        ("800 MB", 800 * 10**6),
        ("1.5kib", 1536),
        (" 7 ", 7),
        ("2KB", 2000),
        (KIB, 1024),
    ],
)
def test_parse_bytes_reads_decimal_and_binary_units(spec, expected):
    assert parse_bytes(spec) == expected


def test_parse_bytes_names_the_key_on_nonsense():
    with pytest.raises(SelectFlowError, match="index.budget: cannot read '12 parsecs'"):
        parse_bytes("12 parsecs", "index.budget")
