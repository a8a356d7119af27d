"""Symbolize Go PCs: one opened binary, and a bounded cache of them by build ID.

A node runs many processes of few binaries, so a parsed table is shared by
every process that maps the same build (key: Go build ID, else GNU build ID,
else a digest of the table). Each binary also keeps a bounded PC -> frames
cache: hot PCs repeat every sampling interval.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.errors import BinaryError, CorruptBinaryError, NotGoError
from agent.gobinary.buildinfo import BuildInfo, read_buildinfo
from agent.gobinary.elf import ElfImage, open_image
from agent.gobinary.locate import GoTables, locate
from agent.gobinary.pclntab import Frame, LineTable
from agent.lru import BoundedCache


@dataclass(frozen=True)
class BinaryInfo:
    path: str
    go_version: str | None
    go_build_id: str | None
    gnu_build_id: str | None
    pclntab_version: str
    pclntab_location: str
    functions: int
    is_pie: bool
    automaxprocs: bool
    main_module: str | None
    default_godebug: str


# What a parser slip on hostile bytes raises; the guards below turn it into a clean error.
_SLIPS = (struct.error, IndexError, ValueError, OverflowError, UnicodeError, RecursionError)


def _as_corrupt(name: str, exc: BaseException) -> BinaryError:
    if isinstance(exc, BinaryError):
        return exc
    return CorruptBinaryError(f"{name}: malformed Go tables ({exc.__class__.__name__}: {exc})")


@contextmanager
def _corrupt_guard(name: str) -> Iterator[None]:
    """Last line of defence: a parser slip on hostile bytes is still a clean error."""
    try:
        yield
    except _SLIPS as exc:
        raise _as_corrupt(name, exc) from None


class FrameCache(BoundedCache[tuple[int, int], tuple[Frame, ...]]):
    """PC -> inline-expanded frames, bounded, shared by every binary of a :class:`BinaryCache`.

    One budget for the node rather than one per binary: a cached PC costs about
    340 bytes, so 64 binaries with a private 65,536-entry cache each could grow
    to 1.4 GB, while a shared LRU keeps what is hot across all of them. Keys are
    (binary serial, PC); a serial is never reused, so a key cannot go stale.
    Like the pipeline that fills it, it is used from one thread.
    """

    def __init__(self, capacity: int = 65536) -> None:
        super().__init__(capacity)
        self._serials = itertools.count(1)

    def serial(self) -> int:
        return next(self._serials)


class GoBinary:
    """One parsed Go executable: build info, pclntab, identity."""

    def __init__(self, image: ElfImage, *, frames: FrameCache | None = None) -> None:
        with _corrupt_guard(image.name):
            self._init(image, frames if frames is not None else FrameCache())  # an empty cache is falsy

    def _init(self, image: ElfImage, frames: FrameCache) -> None:
        self.image = image
        try:
            self.buildinfo: BuildInfo | None = read_buildinfo(image)
        except BinaryError:
            self.buildinfo = None  # stripped of buildinfo or pre-1.13: symbolization still works
        version = self.buildinfo.version_tuple if self.buildinfo else None
        self.tables: GoTables = locate(image, version[:2] if version else None)
        self.table = LineTable(
            self.tables.pclntab,
            text_start=self.tables.text_start,
            gofunc=self.tables.gofunc,
            read=image.read,
            go_version=version[:2] if version else None,
        )
        self.go_build_id = image.go_build_id()
        self.gnu_build_id = image.gnu_build_id()
        self._frames = frames
        self._serial = frames.serial()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GoBinary:
        return cls(open_image(path))

    @property
    def identity(self) -> str:
        """A cache key that cannot go stale: same key, same bytes."""
        if self.go_build_id:
            return "go:" + self.go_build_id
        if self.gnu_build_id:
            return "gnu:" + self.gnu_build_id
        import hashlib  # noqa: PLC0415 - rare path; keeps `symbolize` start-up lean

        return "sha256:" + hashlib.sha256(self.tables.pclntab).hexdigest()[:32]

    def addr2line(self, pc: int) -> Frame | None:
        """What ``go tool addr2line`` answers for a link-time address."""
        try:  # the guard, inlined: a context manager per lookup costs a fifth of the lookup
            return self.table.lookup(pc)
        except _SLIPS as exc:
            raise _as_corrupt(self.image.name, exc) from None

    def frames(self, pc: int) -> tuple[Frame, ...]:
        """Inline-expanded frames at a link-time PC, innermost first (cached)."""
        key = (self._serial, pc)
        cached = self._frames.get(key)
        if cached is not None:
            return cached
        with _corrupt_guard(self.image.name):
            result = tuple(self.table.frames(pc))
        self._frames.put(key, result)
        return result

    def load_bias(self, exe_mappings: Iterable[tuple[int, int]]) -> int | None:
        """runtime address - link address, from (start, file offset) of the exe's mappings.

        0 for a non-PIE executable; None when no mapping lies in a load segment.
        """
        for start, offset in exe_mappings:
            link = self.image.offset_to_addr(offset)
            if link is not None:
                return start - link
        return None

    def link_address(self, file_offset: int) -> int | None:
        """Link-time address of a file offset (runtime PC -> mapping -> offset -> here)."""
        return self.image.offset_to_addr(file_offset)

    def info(self) -> BinaryInfo:
        bi = self.buildinfo
        return BinaryInfo(
            path=self.image.name,
            go_version=bi.go_version if bi else None,
            go_build_id=self.go_build_id,
            gnu_build_id=self.gnu_build_id,
            pclntab_version=self.tables.version.name,
            pclntab_location=self.tables.found_in,
            functions=self.table.nfunc,
            is_pie=self.image.is_pie,
            automaxprocs=bi.automaxprocs if bi else False,
            main_module=bi.path if bi else None,
            default_godebug=bi.default_godebug if bi else "",
        )


def _detached(exc: BinaryError) -> BinaryError:
    """A copy with no traceback and no context.

    A remembered exception keeps its traceback, whose frames keep their locals:
    one per broken binary would pin a whole cycle's samples and reports each.
    """
    return type(exc)(str(exc), help=exc.help)


def binary_weight(binary: GoBinary) -> int:
    """Bytes a parsed binary keeps on the heap: its pclntab copy plus the function index."""
    return len(binary.tables.pclntab) + 48 * binary.table.nfunc


class BinaryCache:
    """Parsed binaries by build identity, bounded; shared by every process.

    ``open`` takes a file identity (e.g. (dev, inode, mtime) of /proc/PID/exe)
    so the expensive parse happens once per build, and remembers failures so
    a broken binary costs one attempt, not one per sample.

    Bounded twice: at most ``capacity`` binaries and, least recently used first,
    at most ``max_bytes`` of their tables (a parsed binary holds its pclntab,
    13 MiB for Prometheus); the newest binary is always kept.
    """

    def __init__(
        self,
        capacity: int = 64,
        failure_capacity: int = 1024,
        pc_capacity: int = 65536,
        max_bytes: int = 128 << 20,
    ) -> None:
        self.frames = FrameCache(pc_capacity)
        self.max_bytes = max_bytes
        self.weight = 0
        self._by_build: BoundedCache[str, GoBinary] = BoundedCache(capacity)
        self._by_file: BoundedCache[tuple[object, ...], str] = BoundedCache(capacity * 16)
        self._failures: BoundedCache[tuple[object, ...], BinaryError] = BoundedCache(failure_capacity)
        self._lock = threading.Lock()

    def get(self, file_key: tuple[object, ...], opener: Callable[[], ElfImage]) -> GoBinary:
        """The parsed binary for ``file_key``; raises the (remembered) BinaryError."""
        with self._lock:
            failure = self._failures.get(file_key)
            if failure is not None:
                raise _detached(failure)
            build = self._by_file.get(file_key)
            if build is not None:
                binary = self._by_build.get(build)
                if binary is not None:
                    return binary
        try:
            binary = GoBinary(opener(), frames=self.frames)
        except BinaryError as exc:
            with self._lock:
                self._failures.put(file_key, _detached(exc))
            raise
        with self._lock:
            existing = self._by_build.get(binary.identity)
            if existing is not None:
                binary = existing
            else:
                self._by_build.put(binary.identity, binary)
                self._reweigh()
            self._by_file.put(file_key, binary.identity)
        return binary

    def _reweigh(self) -> None:
        """Evict least recently used binaries while over ``max_bytes`` (never the newest)."""
        self.weight = sum(binary_weight(b) for b in self._by_build.values())
        while self.weight > self.max_bytes and len(self._by_build) > 1:
            _, evicted = self._by_build.pop_oldest()
            self.weight -= binary_weight(evicted)

    def open_path(self, path: str | os.PathLike[str]) -> GoBinary:
        p = Path(path)
        try:
            st = p.stat()
        except OSError as exc:
            raise BinaryError(f"{p}: cannot stat: {exc.strerror or exc}") from None
        return self.get((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), lambda: open_image(p))

    def __len__(self) -> int:
        return len(self._by_build)


def is_go_binary(path: str | os.PathLike[str]) -> bool:
    try:
        GoBinary.open(path)
    except NotGoError:
        return False
    return True
