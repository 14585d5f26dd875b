"""How much memory this machine has, for refusing work that cannot fit before allocating it.

Used by the runtime (a request whose KV cache cannot fit) and by the compiler (a model whose
weights cannot be built or trained here, see ``llmspec.estimates.memory``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from runtime.reading import UnreadableFile, read_text

MEMINFO = "/proc/meminfo"


@dataclass(frozen=True)
class MachineMemory:
    """Memory of a device, in bytes: what is available now, and the device's total."""

    available: int
    total: int
    device: str  # "this machine", "cuda:0", ...


def machine_memory() -> MachineMemory | None:
    """This machine's memory: MemAvailable and MemTotal from /proc/meminfo (Linux), else the
    free and total physical pages; None where neither is known."""
    try:
        fields = {}
        for line in read_text(MEMINFO, 1 << 16, "meminfo").splitlines():
            name, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                fields[name] = int(parts[0]) * 1024
        if "MemAvailable" in fields and "MemTotal" in fields:
            return MachineMemory(fields["MemAvailable"], fields["MemTotal"], "this machine")
    except UnreadableFile:
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        free, total = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX, or the names are unknown
        return None
    if page <= 0 or total <= 0:
        return None
    return MachineMemory(max(free, 0) * page, total * page, "this machine")
