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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum


class Category(StrEnum):
    SCHEDULER = "scheduler"
    GC = "gc"
    RUNTIME_OTHER = "runtime_other"
    USER = "user"


CATEGORIES: tuple[Category, ...] = tuple(Category)
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
