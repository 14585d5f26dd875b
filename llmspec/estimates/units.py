"""Numbers in human units for reports: counts, FLOPs, bytes and durations."""

from __future__ import annotations


def human_count(n: int) -> str:
    """A count with a decimal SI suffix: ``124.44 M``; below a thousand, the number itself."""
    for factor, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}"
    return str(n)


def human_flops(n: int) -> str:
    """FLOPs with a decimal SI prefix: ``248.88 MFLOP``, up to zetta (``7.41 EFLOP``)."""
    prefixes = ((10**21, "Z"), (10**18, "E"), (10**15, "P"), (10**12, "T"), (10**9, "G"))
    for factor, prefix in (*prefixes, (10**6, "M"), (10**3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}FLOP"
    return f"{n} FLOP"


def human_bytes(n: int) -> str:
    """Bytes in binary units with one decimal: ``474.7 MiB``; below 1 KiB, ``512 B``."""
    for factor, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {suffix}"
    return f"{n} B"


def human_duration(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable: ``31.2 minutes``, ``3.5 days``."""
    for factor, unit, limit in (
        (1, "seconds", 120),
        (60, "minutes", 120 * 60),
        (3600, "hours", 72 * 3600),
        (86400, "days", 730 * 86400),
    ):
        if seconds < limit:
            return f"{seconds / factor:.1f} {unit}"
    return f"{seconds / (365.25 * 86400):.1f} years"
