"""Numbers in human units (llmspec.estimates.units)."""

from __future__ import annotations

import pytest

from llmspec.estimates.units import human_bytes, human_count, human_duration, human_flops


@pytest.mark.parametrize(
    ("n", "shown"), [(999, "999"), (1536, "1.54 K"), (124_439_808, "124.44 M"), (1.1e9, "1.10 B")]
)
def test_human_count_uses_decimal_suffixes(n: int, shown: str) -> None:
    assert human_count(int(n)) == shown


@pytest.mark.parametrize(
    ("n", "shown"), [(512, "512 B"), (73_728, "72.0 KiB"), (497_759_232, "474.7 MiB")]
)
def test_human_bytes_uses_binary_units(n: int, shown: str) -> None:
    assert human_bytes(n) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(59, "59.0 seconds"), (3600, "60.0 minutes"), (86400, "24.0 hours"), (1e8, "3.2 years")],
)
def test_human_duration(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_human_flops_reaches_exa() -> None:
    assert human_flops(741_192_192 * 10**9) == "741.19 PFLOP"
    assert human_flops(1_840_000_000_000_000_000) == "1.84 EFLOP"
    assert human_flops(248_880_000) == "248.88 MFLOP"
