"""Turn one Go process's raw stacks into categorized, symbolized counts.

Pure computation: raw user-stack PCs (runtime addresses, leaf first) plus the
process's parsed binary and load bias in; per-category counts and
inline-expanded stacks out. The leaf PC is where the CPU was; every other PC
is a return address, so it is looked up at ``pc - 1`` to land on the call
instruction's line (as pprof and perf do).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from agent.analysis.goruntime import CATEGORIES, Category, classify
from agent.errors import BinaryError
from agent.gobinary.pclntab import Frame
from agent.gobinary.symbolizer import GoBinary

UNKNOWN_FRAME = Frame("[unknown]", "", 0)
_ADDRESS_MASK = (1 << 64) - 1


class PackedStacks:
    """(user stack of runtime PCs, count) pairs in flat arrays: 8 bytes a frame instead of ~40.

    A window's stacks wait here, unsymbolized, until someone asks for a profile;
    on a big node that is tens of thousands of stacks per window.
    """

    __slots__ = ("counts", "frames", "lengths")

    def __init__(self, stacks: Iterable[tuple[tuple[int, ...], int]] = ()) -> None:
        self.frames = array("Q")
        self.lengths = array("H")
        self.counts = array("Q")
        frames, lengths, counts = self.frames, self.lengths, self.counts
        for pcs, count in stacks:
            before = len(frames)
            try:
                frames.extend(pcs)  # in C: the kernel's PCs are u64 already
            except OverflowError:  # a PC outside u64 (hand-made stacks): wrapped as the kernel would
                del frames[before:]  # extend appends item by item: drop what it took before failing
                frames.extend(pc & _ADDRESS_MASK for pc in pcs)
            lengths.append(len(pcs))
            counts.append(count)

    def __len__(self) -> int:
        return len(self.counts)

    def __iter__(self) -> Iterator[tuple[tuple[int, ...], int]]:
        at = 0
        frames = self.frames
        for n, count in zip(self.lengths, self.counts, strict=True):
            yield tuple(frames[at : at + n]), count
            at += n


RawStacks = PackedStacks | list[tuple[tuple[int, ...], int]]


@dataclass
class ProcessProfile:
    """Counts of one process (or a merge of several) over one window.

    ``categories`` are exact when they come from the kernel (the pipeline) and
    include ``unknown``; ``shares()`` leave it out. ``stacks`` are keyed by
    link-time lookup PCs (leaf first; callers already at ``pc - 1``), and
    ``locations`` maps each PC to its inline-expanded frames, innermost first —
    the shape pprof's Location/Line wants. Stacks are symbolized only when
    someone reads them (``resolve()``): a window's profiles cost nothing until
    asked for. ``pending`` holds the raw stacks until then.
    """

    samples: int = 0
    categories: Counter[Category] = field(default_factory=Counter)
    stacks: Counter[tuple[int, ...]] = field(default_factory=Counter)
    locations: dict[int, tuple[Frame, ...]] = field(default_factory=dict)
    unsymbolized: int = 0  # PCs outside the Go binary's text (cgo, vdso), weighted by samples
    pending: list[tuple[GoBinary, int, RawStacks]] = field(default_factory=list)

    def add(self, other: ProcessProfile) -> None:
        self.samples += other.samples
        self.categories.update(other.categories)
        self.stacks.update(other.stacks)
        self.locations.update(other.locations)
        self.unsymbolized += other.unsymbolized
        self.pending.extend(other.pending)

    @property
    def known_samples(self) -> int:
        return sum(self.categories[c] for c in CATEGORIES)

    def shares(self) -> dict[Category, float]:
        total = self.known_samples
        return {c: (self.categories[c] / total if total else 0.0) for c in CATEGORIES}

    def resolve(self) -> ProcessProfile:
        """Symbolize the pending raw stacks into ``stacks`` and ``locations``; returns self."""
        pending, self.pending = self.pending, []
        for binary, bias, raw in pending:
            _symbolize(self, binary, bias, raw)
        return self

    def frames_of(self, stack: tuple[int, ...]) -> list[Frame]:
        out: list[Frame] = []
        for pc in stack:
            out.extend(self.locations.get(pc) or (UNKNOWN_FRAME,))
        return out

    def folded(self) -> Counter[str]:
        """Brendan Gregg's folded format: root;...;leaf -> count."""
        self.resolve()
        out: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            out[";".join(f.function for f in reversed(self.frames_of(stack)))] += n
        return out


def _symbolize(prof: ProcessProfile, binary: GoBinary, bias: int, stacks: RawStacks) -> None:
    for _ in _walk(prof, binary, bias, stacks):
        pass


def _walk(
    prof: ProcessProfile, binary: GoBinary, bias: int, stacks: Iterable[tuple[tuple[int, ...], int]]
) -> Iterator[tuple[list[str], tuple[int, ...], int]]:
    """Add each stack to prof.stacks/locations; yield its function names (leaf first) too."""
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
        prof.stacks[key] += count
        prof.unsymbolized += missing * count
        yield names, key, count


def attribute(binary: GoBinary, bias: int, stacks: Iterable[tuple[tuple[int, ...], int]]) -> ProcessProfile:
    """Aggregate (user stack of runtime PCs, count) pairs of one process, classifying in Python.

    The daemon and `scan` take categories from the kernel instead; this is the
    reference the in-kernel rules are tested against, and what tools use on
    stacks from elsewhere.
    """
    prof = ProcessProfile()
    for names, _key, count in _walk(prof, binary, bias, stacks):
        prof.samples += count
        prof.categories[classify(names)] += count
    return prof
