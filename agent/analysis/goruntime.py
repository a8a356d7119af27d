"""Which part of the Go runtime a sampled stack is paying for.

Each sample of a Go process falls in exactly one category, checked in this
order over its symbolized, inline-expanded stack (any frame, leaf to root):

1. ``scheduler`` — a frame ``runtime.schedule`` or ``runtime.findRunnable``
   (``runtime.findrunnable`` before Go 1.21): a P looking for work, which is
   what spare Ps burn when GOMAXPROCS exceeds the CPU a container may use.
2. ``gc`` — a frame ``runtime.gcBgMarkWorker``, ``runtime.gcAssistAlloc``,
   ``runtime.bgsweep`` or ``runtime.bgscavenge``: the GC starts one mark
   worker per P, so its cost also scales with GOMAXPROCS.
3. ``runtime_other`` — the leaf frame is in package ``runtime``.
4. ``user`` — everything else.

The stack judged is the user-space (Go) part: a sample taken in the kernel
on behalf of a Go frame (a futex wake from the scheduler, a write from user
code) belongs to that frame's category, so "leaf" means the innermost Go
frame. Inclusive matching means everything the scheduler calls counts as
scheduler time, as a flame graph shows it.

5. ``unknown`` — the stack could not be judged (unreadable, no Go frame in it,
   or the process was not yet registered with the sampler). Counted and
   exported, but never part of the shares.

The running agent applies these rules in the kernel (bpf/profile.bpf.c) from
:func:`category_ranges`: the rules' functions as PC ranges. Only the outermost
function of a PC counts there, which is exact for the named functions: none of
them is inlined (schedule, findRunnable and gcAssistAlloc are far over the
inliner's budget; gcBgMarkWorker, bgsweep and bgscavenge are started with
``go``, and goroutine entry points are never inlined) — the big-node test
checks the kernel's counts against this module's inline-aware rules. For
``runtime_other`` a runtime helper inlined into user code counts as user, as
``perf`` (which reads ELF symbols, not inline trees) counts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    SCHEDULER = "scheduler"
    GC = "gc"
    RUNTIME_OTHER = "runtime_other"
    USER = "user"
    UNKNOWN = "unknown"


# The categories shares are made of; UNKNOWN is counted apart.
CATEGORIES: tuple[Category, ...] = (Category.SCHEDULER, Category.GC, Category.RUNTIME_OTHER, Category.USER)
RUNTIME_CATEGORIES = (Category.SCHEDULER, Category.GC, Category.RUNTIME_OTHER)

SCHEDULER_FUNCS = frozenset({"runtime.schedule", "runtime.findRunnable", "runtime.findrunnable"})
GC_FUNCS = frozenset({"runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.bgsweep", "runtime.bgscavenge"})


def package_of(function: str) -> str:
    """Go package path of a symbol name: "net/http.(*conn).serve" -> "net/http".

    The package ends at the first "." after the last "/"; generic type
    arguments in brackets may contain dots and slashes of their own.
    """
    bracket = function.find("[")
    head = function if bracket < 0 else function[:bracket]
    slash = head.rfind("/")
    dot = head.find(".", slash + 1)
    return head if dot < 0 else head[:dot]


def is_runtime_function(function: str) -> bool:
    return package_of(function) == "runtime"


def classify(functions: Sequence[str]) -> Category:
    """Category of one stack, given function names leaf first."""
    if not functions:
        return Category.USER
    names = set(functions)
    if names & SCHEDULER_FUNCS:
        return Category.SCHEDULER
    if names & GC_FUNCS:
        return Category.GC
    if is_runtime_function(functions[0]):
        return Category.RUNTIME_OTHER
    return Category.USER


def shares(counts: Iterable[tuple[Category, int]]) -> dict[Category, float]:
    """Per-category share of the total (0-1); all categories present."""
    totals = dict.fromkeys(CATEGORIES, 0)
    for cat, n in counts:
        totals[cat] += n
    total = sum(totals.values())
    return {cat: (n / total if total else 0.0) for cat, n in totals.items()}


def runtime_share(share: dict[Category, float]) -> float:
    return sum(share.get(c, 0.0) for c in RUNTIME_CATEGORIES)


MAX_HOT_RANGES = 8  # agent/sampling/sampler.py MAX_HOT: the rules name 7 functions, at most 6 exist at once
MAX_RUNTIME_RANGES = 64  # agent/sampling/sampler.py MAX_RT


@dataclass(frozen=True)
class CategoryRanges:
    """Where a binary's code decides a sample's category: half-open PC ranges.

    ``text`` spans every function (a frame inside it is a Go frame); ``hot``
    are the scheduler and GC functions; ``runtime`` the runtime package's code,
    sorted and merged. ``bridged`` counts gaps between runtime runs that were
    closed to stay within :data:`MAX_RUNTIME_RANGES` (0: exact; otherwise the
    smallest non-runtime gaps count as runtime: only ``runtime_other`` vs ``user``
    of a leaf in such a gap can be wrong, never scheduler or GC).
    """

    text: tuple[int, int]
    hot: tuple[tuple[int, int, Category], ...]
    runtime: tuple[tuple[int, int], ...]
    bridged: int = 0

    def shifted(self, bias: int) -> CategoryRanges:
        """The same ranges at runtime addresses (link address + load bias)."""
        return CategoryRanges(
            (self.text[0] + bias, self.text[1] + bias),
            tuple((lo + bias, hi + bias, c) for lo, hi, c in self.hot),
            tuple((lo + bias, hi + bias) for lo, hi in self.runtime),
            self.bridged,
        )


def category_ranges(
    functions: Iterable[tuple[str, int, int]], *, max_runtime: int = MAX_RUNTIME_RANGES
) -> CategoryRanges:
    """The ranges of one binary from its function table ((name, entry, end), in address order)."""
    hot: list[tuple[int, int, Category]] = []
    runs: list[list[int]] = []
    lo = hi = None
    for name, entry, end in functions:
        lo = entry if lo is None else min(lo, entry)
        hi = end if hi is None else max(hi, end)
        if name in SCHEDULER_FUNCS or name in GC_FUNCS:
            hot.append((entry, end, Category.SCHEDULER if name in SCHEDULER_FUNCS else Category.GC))
        if is_runtime_function(name):
            if runs and runs[-1][1] == entry:
                runs[-1][1] = end
            else:
                runs.append([entry, end])
    if lo is None or hi is None:
        return CategoryRanges((0, 0), (), ())
    bridged = 0
    if len(runs) > max_runtime:
        # Close the smallest gaps: fewest non-runtime bytes counted as runtime.
        gaps = sorted(range(1, len(runs)), key=lambda i: (runs[i][0] - runs[i - 1][1], i))
        closing = set(gaps[: len(runs) - max_runtime])
        merged: list[list[int]] = []
        for i, run in enumerate(runs):
            if i in closing:
                merged[-1][1] = run[1]
            else:
                merged.append(list(run))
        bridged = len(closing)
        runs = merged
    return CategoryRanges(
        (lo, hi),
        tuple(sorted(hot)[:MAX_HOT_RANGES]),
        tuple((a, b) for a, b in runs),
        bridged,
    )
