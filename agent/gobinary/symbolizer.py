"""Symbolize Go PCs: one opened binary, and a bounded cache of them by content.

A node runs many processes of few binaries, so a parsed table is shared by
every process whose file has the same verified content. The key is a digest
of what the parse produced (tables, kept regions, derived addresses), never a
build ID the binary declares: a tenant could declare another tenant's ID.
The daemon parses in a sandboxed child (agent.gobinary.sandbox) and gets
the result back as :class:`PlainBinary`; :meth:`GoBinary.from_plain` builds
the in-memory binary from it, with no file behind it. Each binary also keeps
a bounded PC -> frames cache: hot PCs repeat every sampling interval.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import BinaryError, BudgetExceededError, CorruptBinaryError, NotGoError
from agent.gobinary.buildinfo import BuildInfo, parse_modinfo, read_buildinfo_raw
from agent.gobinary.elf import ElfImage, RegionImage, Segment, open_image
from agent.gobinary.locate import GoTables, locate
from agent.gobinary.pclntab import Frame, LineTable, PclnVersion
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


@dataclass(frozen=True)
class PlainBinary:
    """A parsed binary as plain data: JSON-able facts plus byte blobs (pclntab first, then
    the kept regions). What a sandboxed parse sends back; bounded by its budget."""

    meta: dict[str, Any]
    blobs: list[bytes]

    def digest(self) -> str:
        h = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        for blob in self.blobs:
            h.update(len(blob).to_bytes(8, "little"))
            h.update(blob)
        return "sha256:" + h.hexdigest()[:32]


MAX_ID_CHARS = 256  # build IDs are ~80 characters; anything longer is cut
MAX_KEPT_REGION = 64 << 20  # funcdata copied out of a binary (Prometheus: 4.5 MB)
SLOW_LOOKUP_S = 0.25  # CPU for one PC's frames; real lookups take microseconds
SLOW_BINARY_S = 1.0  # CPU a binary's lookups may spend in total at over SLOW_MISS_S each on average
SLOW_MISS_S = 0.005
GomaxprocsAddress = tuple[int, str]


class GoBinary:
    """One parsed Go executable: build info, pclntab, identity.

    Built either over an :class:`ElfImage` (the CLI, tests) or, in the daemon,
    from a sandbox's :class:`PlainBinary` (:meth:`from_plain`). A binary whose
    tables turn out corrupt or too costly while symbolizing is marked
    ``failed`` and answers no further lookups: it costs one failure, not one
    per PC per cycle.
    """

    def __init__(self, image: ElfImage, *, frames: FrameCache | None = None) -> None:
        with _corrupt_guard(image.name):
            self._init(image, frames if frames is not None else FrameCache())  # an empty cache is falsy

    def _init(self, image: ElfImage, frames: FrameCache) -> None:
        try:
            raw: tuple[str, str] | None = read_buildinfo_raw(image)
        except BinaryError:
            raw = None  # stripped of buildinfo or pre-1.13: symbolization still works
        buildinfo = parse_modinfo(*raw) if raw else None
        version = buildinfo.version_tuple if buildinfo else None
        tables = locate(image, version[:2] if version else None)
        self._setup(image, raw, tables, image.go_build_id(), image.gnu_build_id(), frames)

    def _setup(
        self,
        image: ElfImage | RegionImage,
        buildinfo_raw: tuple[str, str] | None,
        tables: GoTables,
        go_build_id: str | None,
        gnu_build_id: str | None,
        frames: FrameCache,
    ) -> None:
        self.image = image
        self._buildinfo_raw = buildinfo_raw
        self.buildinfo: BuildInfo | None = parse_modinfo(*buildinfo_raw) if buildinfo_raw else None
        version = self.buildinfo.version_tuple if self.buildinfo else None
        self.tables: GoTables = tables
        self.table = LineTable(
            tables.pclntab,
            text_start=tables.text_start,
            gofunc=tables.gofunc,
            read=image.read,
            go_version=version[:2] if version else None,
        )
        self.go_build_id = go_build_id[:MAX_ID_CHARS] if go_build_id else None
        self.gnu_build_id = gnu_build_id[:MAX_ID_CHARS] if gnu_build_id else None
        self._frames = frames
        self._serial = frames.serial()
        self._identity: str | None = None
        self.gomaxprocs_at: GomaxprocsAddress | None = None  # derived from this file (see derive)
        self.failed: BinaryError | None = None
        self._miss_cpu = 0.0
        self._misses = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GoBinary:
        return cls(open_image(path))

    @property
    def identity(self) -> str:
        """A cache key that cannot go stale or be forged: a digest of the verified content."""
        if self._identity is None:
            self._identity = self.to_plain().digest()
        return self._identity

    # ---- plain data (the sandbox boundary) ------------------------------------------------------
    def to_plain(self, derive: Callable[[GoBinary], GomaxprocsAddress | None] | None = None) -> PlainBinary:
        """Everything :meth:`from_plain` needs; ``derive`` finds runtime.gomaxprocs in this file."""
        gomaxprocs = derive(self) if derive is not None else self.gomaxprocs_at
        regions = self._kept_regions()
        t = self.tables
        version = self.buildinfo.version_tuple if self.buildinfo else None
        meta = {
            "name": self.image.name,
            "machine": self.image.machine,
            "is_pie": self.image.is_pie,
            "segments": [[s.type, s.vaddr, s.offset, s.filesz, s.memsz, s.flags] for s in self.image.segments],
            "buildinfo": list(self._buildinfo_raw) if self._buildinfo_raw else None,
            "go_build_id": self.go_build_id,
            "gnu_build_id": self.gnu_build_id,
            "tables": [t.pclntab_addr, t.found_in, int(t.version), t.text_start, t.gofunc, t.moduledata_addr],
            "go_version": list(version[:2]) if version else None,
            "regions": [addr for addr, _ in regions],
            "gomaxprocs": list(gomaxprocs) if gomaxprocs else None,
        }
        return PlainBinary(meta, [t.pclntab, *(data for _, data in regions)])

    def _kept_regions(self) -> list[tuple[int, bytes]]:
        """The funcdata that inline trees live in: from gofunc to the end of its section
        (Go >= 1.18), else the whole .rodata."""
        image = self.image
        if isinstance(image, RegionImage):
            return list(image.regions)
        t = self.tables
        sec = None
        start = 0
        if t.version >= PclnVersion.GO118 and t.gofunc is not None:
            sec = image.section_at(t.gofunc)
            start = t.gofunc
        elif t.version < PclnVersion.GO118:
            sec = image.section(".rodata")
            start = sec.addr if sec is not None else 0
        if sec is None or not sec.has_bits:
            return []
        size = sec.addr + sec.size - start
        if size > MAX_KEPT_REGION:
            raise BudgetExceededError(f"{image.name}: {size} bytes of funcdata is over the budget")
        return [(start, image.read(start, size))]

    @classmethod
    def from_plain(
        cls, plain: PlainBinary, *, frames: FrameCache | None = None, identity: str | None = None
    ) -> GoBinary:
        """Rebuild a binary from plain data, checking every field's type (it crossed a process boundary)."""
        m = plain.meta
        name = _field(m, "name", str)[:4096]
        try:
            (addr, found_in, version, text_start, gofunc, md) = _field(m, "tables", list)
            regions_at = [_int(a) for a in _field(m, "regions", list)]
            if len(plain.blobs) != 1 + len(regions_at):
                raise ValueError("blob count")
            segments = [Segment(*(_int(v) for v in seg)) for seg in _field(m, "segments", list)]
            raw = m.get("buildinfo")
            buildinfo_raw = (str(raw[0]), str(raw[1])) if isinstance(raw, list) and len(raw) == 2 else None
            tables = GoTables(
                plain.blobs[0],
                _int(addr),
                str(found_in)[:200],
                PclnVersion(version),
                _opt_int(text_start),
                _opt_int(gofunc),
                _opt_int(md),
            )
            gmp = m.get("gomaxprocs")
            gomaxprocs = (_int(gmp[0]), str(gmp[1])[:200]) if isinstance(gmp, list) and len(gmp) == 2 else None
            image = RegionImage(
                name,
                machine=str(_field(m, "machine", str)),
                is_pie=bool(m.get("is_pie")),
                segments=segments,
                regions=list(zip(regions_at, plain.blobs[1:], strict=True)),
            )
            go_id, gnu_id = m.get("go_build_id"), m.get("gnu_build_id")
        except (TypeError, ValueError, KeyError) as exc:
            raise CorruptBinaryError(f"{name}: malformed parse result ({exc})") from None
        binary = cls.__new__(cls)
        with _corrupt_guard(name):
            binary._setup(
                image,
                buildinfo_raw,
                tables,
                go_id if isinstance(go_id, str) else None,
                gnu_id if isinstance(gnu_id, str) else None,
                frames if frames is not None else FrameCache(),
            )
        binary.gomaxprocs_at = gomaxprocs
        binary._identity = identity or plain.digest()
        return binary

    def addr2line(self, pc: int) -> Frame | None:
        """What ``go tool addr2line`` answers for a link-time address."""
        try:  # the guard, inlined: a context manager per lookup costs a fifth of the lookup
            return self.table.lookup(pc)
        except _SLIPS as exc:
            raise _as_corrupt(self.image.name, exc) from None

    def frames(self, pc: int) -> tuple[Frame, ...]:
        """Inline-expanded frames at a link-time PC, innermost first (cached).

        The first corrupt table, over-budget walk or lookup slower than
        SLOW_LOOKUP_S of CPU, or lookups costing over SLOW_MISS_S each once they
        add up to SLOW_BINARY_S, mark the binary failed: later calls raise at
        once, so no binary can take a cycle's time from the others.
        """
        key = (self._serial, pc)
        cached = self._frames.get(key)
        if cached is not None:
            return cached
        if self.failed is not None:
            raise _detached(self.failed)
        started = time.thread_time()
        try:
            with _corrupt_guard(self.image.name):
                result = tuple(self.table.frames(pc))
        except BinaryError as exc:
            self.failed = _detached(exc)
            raise
        spent = time.thread_time() - started
        self._miss_cpu += spent
        self._misses += 1
        if spent > SLOW_LOOKUP_S:
            self.failed = BudgetExceededError(f"{self.image.name}: symbolizing one PC took over {SLOW_LOOKUP_S}s")
        elif self._miss_cpu > SLOW_BINARY_S and self._miss_cpu / self._misses > SLOW_MISS_S:
            self.failed = BudgetExceededError(
                f"{self.image.name}: symbolizing costs {1000 * self._miss_cpu / self._misses:.0f} ms per PC"
            )
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
    """Bytes a parsed binary keeps on the heap: its pclntab copy, the function index, kept regions."""
    return len(binary.tables.pclntab) + 48 * binary.table.nfunc + binary.image.kept_bytes


def _field(meta: dict[str, Any], key: str, kind: type) -> Any:
    value = meta[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} is not a {kind.__name__}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise TypeError("not an address")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)


class BinaryCache:
    """Parsed binaries by content identity, bounded; shared by every process.

    ``get`` takes a file identity (e.g. (dev, inode, mtime, size) of
    /proc/PID/exe) and a parse returning :class:`PlainBinary` (the daemon's
    runs in a sandbox), so the expensive parse happens once per file; files
    with the same verified content share one parsed binary. Failures are
    remembered so a broken binary costs one attempt, not one per sample.

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
        self._by_build: BoundedCache[str, GoBinary] = BoundedCache(capacity)  # by content digest
        self._by_file: BoundedCache[tuple[object, ...], str] = BoundedCache(capacity * 16)
        self._failures: BoundedCache[tuple[object, ...], BinaryError] = BoundedCache(failure_capacity)
        self._lock = threading.Lock()

    def get(self, file_key: tuple[object, ...], parse: Callable[[], PlainBinary]) -> GoBinary:
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
            plain = parse()
            identity = plain.digest()
            with self._lock:
                existing = self._by_build.get(identity)
            binary = existing or GoBinary.from_plain(plain, frames=self.frames, identity=identity)
        except BinaryError as exc:
            with self._lock:
                self._failures.put(file_key, _detached(exc))
            raise
        with self._lock:
            if existing is None:
                self._by_build.put(identity, binary)
                self._reweigh()
            self._by_file.put(file_key, identity)
        return binary

    def known(self, file_key: tuple[object, ...]) -> bool:
        """Whether ``get`` answers ``file_key`` without parsing (cached or remembered failed)."""
        with self._lock:
            if file_key in self._failures:
                return True
            build = self._by_file._items.get(file_key)
            return build is not None and build in self._by_build

    def has_failed(self, file_key: tuple[object, ...]) -> bool:
        """Whether ``file_key`` is remembered as failed (so a caller reports a failure once)."""
        with self._lock:
            return file_key in self._failures

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
        return self.get((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), lambda: GoBinary.open(p).to_plain())

    def __len__(self) -> int:
        return len(self._by_build)


def is_go_binary(path: str | os.PathLike[str]) -> bool:
    try:
        GoBinary.open(path)
    except NotGoError:
        return False
    return True
