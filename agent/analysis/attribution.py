"""Turn one Go process's raw stacks into categorized, symbolized counts.

Pure computation: raw user-stack PCs (runtime addresses, leaf first) plus the
process's parsed binary and load bias in; per-category counts and
inline-expanded stacks out. The leaf PC is where the CPU was; every other PC
is a return address, so it is looked up at ``pc - 1`` to land on the call
instruction's line (as pprof and perf do).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.analysis.goruntime import CATEGORIES, Category, classify
from agent.errors import BinaryError
from agent.gobinary.pclntab import Frame
from agent.gobinary.symbolizer import GoBinary

UNKNOWN_FRAME = Frame("[unknown]", "", 0)
_ADDRESS_MASK = (1 << 64) - 1


@dataclass
class ProcessProfile:
    """Counts of one process (or a merge of several) over one window.

    ``stacks`` are keyed by link-time lookup PCs (leaf first; callers already
    at ``pc - 1``), and ``locations`` maps each PC to its inline-expanded
    frames, innermost first — the shape pprof's Location/Line wants.
    """

    samples: int = 0
    categories: Counter[Category] = field(default_factory=Counter)
    stacks: Counter[tuple[int, ...]] = field(default_factory=Counter)
    locations: dict[int, tuple[Frame, ...]] = field(default_factory=dict)
    unsymbolized: int = 0  # PCs outside the Go binary's text (cgo, vdso), weighted by samples

    def add(self, other: ProcessProfile) -> None:
        self.samples += other.samples
        self.categories.update(other.categories)
        self.stacks.update(other.stacks)
        self.locations.update(other.locations)
        self.unsymbolized += other.unsymbolized

    def shares(self) -> dict[Category, float]:
        total = sum(self.categories.values())
        return {c: (self.categories[c] / total if total else 0.0) for c in CATEGORIES}

    def frames_of(self, stack: tuple[int, ...]) -> list[Frame]:
        out: list[Frame] = []
        for pc in stack:
            out.extend(self.locations.get(pc) or (UNKNOWN_FRAME,))
        return out

    def folded(self) -> Counter[str]:
        """Brendan Gregg's folded format: root;...;leaf -> count."""
        out: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            out[";".join(f.function for f in reversed(self.frames_of(stack)))] += n
        return out


def attribute(binary: GoBinary, bias: int, stacks: Iterable[tuple[tuple[int, ...], int]]) -> ProcessProfile:
    """Aggregate (user stack of runtime PCs, count) pairs of one process."""
    prof = ProcessProfile()
    locations = prof.locations
    for pcs, count in stacks:
        # Frame-pointer walks through code without frame pointers yield any value at all; kept
        # modulo 2**64 so every key is a valid address (pprof's are uint64) and simply unsymbolized.
        key = tuple((pc - bias - (1 if depth else 0)) & _ADDRESS_MASK for depth, pc in enumerate(pcs))
        names: list[str] = []
        missing = 0
        for link in key:
            frames = locations.get(link)
            if frames is None:
                try:
                    frames = binary.frames(link)
                except BinaryError:
                    frames = ()
                locations[link] = frames
            if frames:
                names.extend(f.function for f in frames)
            else:
                missing += 1
        prof.samples += count
        prof.categories[classify(names)] += count
        prof.stacks[key] += count
        prof.unsymbolized += missing * count
    return prof
