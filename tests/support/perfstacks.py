"""perf(1) as an independent sampler: record stacks of some pids, judge them by the same rules.

perf symbolizes Go frames from the ELF symbol table (no pclntab, no inline
expansion); kernel frames are dropped so "leaf" means the innermost user
frame, as node-agent defines it.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

from agent.analysis.goruntime import CATEGORIES, Category, classify

_HEADER = re.compile(r"^\s*(\d+)\s+(\d+\.\d+):\s*$")


def record(
    pids: list[int], seconds: float, out: Path, frequency: int = 97, *, fixed_period: bool = False
) -> subprocess.Popen[bytes]:
    """Start `perf record -g` on ``pids``; wait() on the result when done.

    ``fixed_period`` samples every 1/frequency s of CPU time (-c) instead of letting
    the kernel adapt the period (-F), which under-samples short bursts of new threads.
    """
    rate = ["-c", str(round(1e9 / frequency))] if fixed_period else ["-F", str(frequency)]
    return subprocess.Popen(
        [
            "perf", "record", "-q", "-e", "cpu-clock", *rate, "-g", "-k", "CLOCK_MONOTONIC",
            "-p", ",".join(map(str, pids)), "-o", str(out), "--", "sleep", str(seconds),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def categories(data: Path, window: tuple[float, float] | None = None) -> dict[int, Counter[Category]]:
    """Per-pid category counts from a perf.data file, optionally only within a CLOCK_MONOTONIC window."""
    text = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,time,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return parse_script(text, window)


def parse_script(text: str, window: tuple[float, float] | None = None) -> dict[int, Counter[Category]]:
    """``perf script -F pid,time,ip,sym,dso`` output -> per-pid category counts."""
    out: dict[int, Counter[Category]] = defaultdict(Counter)
    pid: int | None = None
    when = 0.0
    frames: list[str] = []

    def flush() -> None:
        if pid is not None and (window is None or window[0] <= when <= window[1]):
            out[pid][classify(frames)] += 1

    for line in text.splitlines():
        if not line.strip():
            flush()
            pid, frames = None, []
            continue
        head = _HEADER.match(line)
        if head:  # perf right-aligns the pid: a header line can start with spaces, a frame line with a tab
            flush()
            pid, when, frames = int(head[1]), float(head[2]), []
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        sym, _, dso = rest.rpartition(" (")
        if "kernel.kallsyms" in dso or sym.startswith("[unknown]"):
            continue
        frames.append(sym.split("+0x")[0])
    flush()
    return dict(out)


def shares(counts: Counter[Category]) -> dict[Category, float]:
    total = sum(counts.values())
    return {c: counts[c] / total if total else 0.0 for c in CATEGORIES}
