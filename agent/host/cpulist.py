"""The kernel's CPU list syntax ("0-3,8,10-11"), shared by /proc, cgroups and sysfs readers."""

from __future__ import annotations

MAX_CPUS = 1 << 16  # refuse absurd lists rather than build huge sets


def parse_cpu_list(text: str) -> frozenset[int]:
    """ "0-3,8,10-11" -> {0, 1, 2, 3, 8, 10, 11}; "" -> empty. ValueError on anything else."""
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return frozenset()
    for part in text.split(","):
        lo_s, sep, hi_s = part.strip().partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"bad CPU list {text[:60]!r}") from None
        if lo < 0 or hi < lo or hi >= MAX_CPUS:
            raise ValueError(f"bad CPU range {part.strip()!r} in CPU list")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)
