"""Go's pclntab ("PC line table"), parsed from bytes.

Layouts follow Go's ``runtime/symtab.go`` and ``debug/gosym``: a header
(``pcHeader``), a sorted function table, per-function ``_func`` records, and
varint-encoded pc-value tables for file, line and inline-tree index. The
version is fixed once the header validates; unknown magics are refused rather
than guessed at. All reads are bounds-checked through :func:`_check` so a
corrupted table raises :class:`CorruptBinaryError`, never a wrong answer or an
``IndexError``.

Budgets come before work, because the bytes are a tenant's: the function
count must fit the table (each function needs a table slot and a ``_func``
record) and :data:`MAX_FUNCTIONS`; a pc-value walk refuses a zero pc step
(Go's linker never writes one; a table of them would walk to the end of the
data for every lookup) and at most :data:`MAX_PCVALUE_BYTES` of table; inline
chains are at most :data:`MAX_INLINE_DEPTH` deep and may not revisit an entry.

Nothing here does I/O: funcdata that lives outside the table (the inline
tree) is read through a ``read(addr, size)`` callable the caller supplies.
"""

from __future__ import annotations

import operator
import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from itertools import islice

from agent.errors import BudgetExceededError, CorruptBinaryError, NotGoError, UnsupportedGoError


class PclnVersion(IntEnum):
    GO12 = 12  # Go 1.2 - 1.15
    GO116 = 116  # Go 1.16 - 1.17
    GO118 = 118  # Go 1.18 - 1.19
    GO120 = 120  # Go 1.20 and later


MAGICS = {
    0xFFFFFFFB: PclnVersion.GO12,
    0xFFFFFFFA: PclnVersion.GO116,
    0xFFFFFFF0: PclnVersion.GO118,
    0xFFFFFFF1: PclnVersion.GO120,
}
MAGIC_BYTES_LE = tuple(struct.pack("<I", m) for m in MAGICS)

PCDATA_INL_TREE_INDEX = 2
FUNCDATA_INL_TREE = 3
_NO_FUNCDATA = 0xFFFFFFFF
MAX_INLINE_DEPTH = 32  # far deeper than Go's inliner goes
MAX_FUNCTIONS = 1 << 21  # Prometheus has 63k, the largest Go binaries a few 100k
MAX_PCVALUE_BYTES = 1 << 17  # one walk's table; Prometheus' longest is 33 kB


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    file: str
    line: int


@dataclass(frozen=True, slots=True)
class FuncRecord:
    """The fields of one ``_func`` that symbolization needs."""

    entry: int
    end: int
    name_off: int
    pcfile: int
    pcln: int
    cu_offset: int
    pcdata_off: int  # offset in the table of this func's pcdata[] array
    npcdata: int
    nfuncdata: int
    funcdata_off: int  # offset in the table of this func's funcdata[] array


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise CorruptBinaryError(f"pclntab: {what}")


def sniff_version(header: bytes) -> PclnVersion | None:
    """The version a header claims, if its fixed bytes look like a pcHeader."""
    if len(header) < 16 or header[4] != 0 or header[5] != 0:
        return None
    if header[6] not in (1, 2, 4) or header[7] not in (4, 8):
        return None
    (magic,) = struct.unpack_from("<I", header, 0)
    version = MAGICS.get(magic)
    if version is None:
        (magic,) = struct.unpack_from(">I", header, 0)
        version = MAGICS.get(magic)
    return version


def inline_tree_funcdata_index(version: PclnVersion, go_version: tuple[int, int] | None) -> int:
    """Which funcdata slot holds the inline tree.

    3 from Go 1.16; Go 1.12-1.15 had _FUNCDATA_RegPointerMaps before it (4);
    Go 1.9-1.11 had neither that nor StackObjects (2). A Go 1.2-format table
    without a known version is most likely 1.12-1.15, the last of that format.
    """
    if version != PclnVersion.GO12:
        return FUNCDATA_INL_TREE
    if go_version is not None and go_version < (1, 12):
        return 2
    return 4


class LineTable:
    """One binary's pclntab.

    ``text_start`` is where entry offsets count from (Go ≥1.18). Go ≥1.26
    writes 0 in the header, so callers pass moduledata's ``text``; when None
    the header's value is used. ``gofunc`` is moduledata's ``gofunc`` (base
    of Go ≥1.18 funcdata offsets) and ``read`` reads other parts of the
    binary by address; without them inline trees are not expanded.
    """

    def __init__(
        self,
        data: bytes,
        *,
        text_start: int | None = None,
        gofunc: int | None = None,
        read: Callable[[int, int], bytes] | None = None,
        go_version: tuple[int, int] | None = None,
    ) -> None:
        if len(data) < 16:
            raise NotGoError("pclntab: too short for a header")
        if data[4] != 0 or data[5] != 0 or data[6] not in (1, 2, 4) or data[7] not in (4, 8):
            raise NotGoError("pclntab: header does not look like Go's")
        (magic,) = struct.unpack_from("<I", data, 0)
        order = "<"
        if magic not in MAGICS:
            (magic,) = struct.unpack_from(">I", data, 0)
            order = ">"
        if magic not in MAGICS:
            (le,) = struct.unpack_from("<I", data, 0)
            raise UnsupportedGoError(f"pclntab: unknown magic {le:#010x}")
        self.data = data
        self.version = MAGICS[magic]
        self.order = order
        self.quantum = data[6]
        self.ptrsize = data[7]
        self._ptrfmt = order + ("Q" if self.ptrsize == 8 else "I")
        self._u32 = struct.Struct(order + "I")
        self._i32 = struct.Struct(order + "i")
        self.gofunc = gofunc
        self._read = read
        self._names: dict[int, str] = {}
        self._files: dict[int, str] = {}
        self._parse_header(text_start)
        self._index_functions()
        self.inl_tree_index = inline_tree_funcdata_index(self.version, go_version)
        # (nameoff, pcfile, pcln, cuOffset) of a _func, for lookup()'s fast path. Go 1.2
        # has no CU offset there (the 4th value is then unused padding).
        self._fields_at = 4 if self.version >= PclnVersion.GO118 else self.ptrsize
        self._fields = struct.Struct(order + "i12xII4xI")

    # ---- header -------------------------------------------------------------------------------
    def _word(self, index: int) -> int:
        off = 8 + index * self.ptrsize
        _check(off + self.ptrsize <= len(self.data), "header truncated")
        return int(struct.unpack_from(self._ptrfmt, self.data, off)[0])

    def _parse_header(self, text_start: int | None) -> None:
        n = len(self.data)
        v = self.version
        self.nfunc = self._word(0)
        if v == PclnVersion.GO12:
            self.nfiles = 0
            self.header_text_start = 0
            self.text_start = 0
            self.funcnametab = 0
            self.cutab = 0
            self.pctab = 0
            self.funcdata = 0
            self.functab = 8 + self.ptrsize
            self.field_size = self.ptrsize
            ftsize = (self.nfunc * 2 + 1) * self.field_size
            _check(self.functab + ftsize + 4 <= n, "function table truncated")
            self.filetab = self._u32.unpack_from(self.data, self.functab + ftsize)[0]
            _check(self.filetab + 4 <= n, "file table out of range")
            self.nfiles = self._u32.unpack_from(self.data, self.filetab)[0]
            _check(self.filetab + 4 * self.nfiles <= n, "file table truncated")
        else:
            self.nfiles = self._word(1)
            base = 2 if v == PclnVersion.GO116 else 3
            self.header_text_start = 0 if v == PclnVersion.GO116 else self._word(2)
            if v == PclnVersion.GO116:
                self.text_start = 0
            else:
                self.text_start = self.header_text_start if text_start is None else text_start
            self.funcnametab = self._word(base)
            self.cutab = self._word(base + 1)
            self.filetab = self._word(base + 2)
            self.pctab = self._word(base + 3)
            self.funcdata = self._word(base + 4)
            self.functab = self.funcdata
            self.field_size = self.ptrsize if v == PclnVersion.GO116 else 4
            for name in ("funcnametab", "cutab", "filetab", "pctab", "funcdata"):
                _check(0 < getattr(self, name) <= n, f"{name} offset out of range")
        _check(self.nfunc > 0, "no functions")
        if self.nfunc > MAX_FUNCTIONS:
            raise BudgetExceededError(f"pclntab: {self.nfunc} functions is over the budget of {MAX_FUNCTIONS}")
        # Each function needs its table slot and a _func record behind it: a count the
        # table cannot hold is refused before anything is allocated for it.
        record = 44 if v >= PclnVersion.GO118 else self.ptrsize + 32
        ftsize = (self.nfunc * 2 + 1) * self.field_size
        _check(self.functab + ftsize <= n, "function table truncated")
        _check(ftsize + self.nfunc * record <= n, f"{self.nfunc} functions do not fit a {n}-byte table")

    def _index_functions(self) -> None:
        """entries[i] = entry PC of function i (plus the end of text); sorted or refused.

        Built with array/map so a 60k-function table indexes in a few ms.
        """
        typecode = "I" if self.field_size == 4 else "Q"
        arr = array(typecode)
        if arr.itemsize != self.field_size:  # exotic platform: fall back to struct
            arr = array("q", struct.unpack_from(f"{self.order}{self.nfunc * 2 + 1}{typecode}", self.data, self.functab))
        else:
            arr.frombytes(self.data[self.functab : self.functab + (self.nfunc * 2 + 1) * self.field_size])
            if (self.order == "<") != (sys.byteorder == "little"):
                arr.byteswap()
        base = self.text_start if self.version >= PclnVersion.GO118 else 0
        offsets = arr[0::2]
        entries = list(map(base.__add__, offsets)) if base else offsets.tolist()
        if not all(map(operator.le, entries, islice(entries, 1, None))):
            raise CorruptBinaryError("pclntab: function table is not sorted")
        self.entries: list[int] = entries  # nfunc + 1 items: the last is the end of text
        self.func_offsets: array[int] = arr[1::2]

    # ---- primitives ---------------------------------------------------------------------------
    def _cstring(self, off: int) -> str:
        data = self.data
        _check(0 <= off < len(data), "string offset out of range")
        end = data.find(b"\0", off)
        _check(end >= 0, "unterminated string")
        return data[off:end].decode("utf-8", "replace")

    def funcname(self, name_off: int) -> str:
        s = self._names.get(name_off)
        if s is None:
            s = self._cstring(self.funcnametab + name_off)
            self._names[name_off] = s
        return s

    def filename(self, cu_offset: int, fileno: int) -> str:
        # No file (padding past a function's code): "" as debug/gosym says.
        if fileno < 0 or (fileno == 0 and self.version == PclnVersion.GO12):
            return ""
        if self.version == PclnVersion.GO12:
            key = fileno
            s = self._files.get(key)
            if s is None:
                _check(fileno < self.nfiles, "file index out of range")
                (off,) = self._u32.unpack_from(self.data, self.filetab + 4 * fileno)
                s = self._cstring(off)
                self._files[key] = s
            return s
        pos = self.cutab + 4 * (cu_offset + fileno)
        _check(pos + 4 <= len(self.data), "cu table index out of range")
        (off,) = self._u32.unpack_from(self.data, pos)
        if off == 0xFFFFFFFF:
            return "?"
        s = self._files.get(off)
        if s is None:
            s = self._cstring(self.filetab + off)
            self._files[off] = s
        return s

    def pcvalue(self, off: int, entry: int, target: int) -> int:
        """Value of the pc-value table at ``off`` for ``target`` (-1 if absent).

        Hand-inlined varint decoding: this loop is the symbolizer's hot path.
        Running off the end of the data is caught once, outside the loop. Every
        step must advance the pc (so a walk is bounded by the function's size)
        and a walk reads at most MAX_PCVALUE_BYTES.
        """
        if off == 0:
            return -1
        data = self.data
        pos = self.pctab + off
        limit = pos + MAX_PCVALUE_BYTES
        quantum = self.quantum
        val = -1
        pc = entry
        first = True
        try:
            while True:
                b = data[pos]
                pos += 1
                if b < 0x80:
                    uv = b
                else:
                    uv = b & 0x7F
                    shift = 7
                    while b & 0x80:
                        b = data[pos]
                        pos += 1
                        uv |= (b & 0x7F) << shift
                        shift += 7
                        if shift > 35:
                            raise CorruptBinaryError("pclntab: bad varint")
                if uv == 0 and not first:
                    return -1
                first = False
                val += -((uv >> 1) + 1) if uv & 1 else uv >> 1
                b = data[pos]
                pos += 1
                if b >= 0x80:
                    pd = b & 0x7F
                    shift = 7
                    while b & 0x80:
                        b = data[pos]
                        pos += 1
                        pd |= (b & 0x7F) << shift
                        shift += 7
                        if shift > 35:
                            raise CorruptBinaryError("pclntab: bad varint")
                    b = pd
                if b == 0:
                    raise CorruptBinaryError("pclntab: pc-value table does not advance")
                pc += b * quantum
                if target < pc:
                    return val
                if pos > limit:
                    raise BudgetExceededError("pclntab: pc-value walk is over the budget")
        except IndexError:
            raise CorruptBinaryError("pclntab: pc-value table runs past the end") from None

    # ---- functions ----------------------------------------------------------------------------
    def func_index(self, pc: int) -> int:
        """Index of the function containing ``pc``, or -1."""
        entries = self.entries
        if pc < entries[0] or pc >= entries[-1]:
            return -1
        return bisect_right(entries, pc) - 1

    def record(self, index: int) -> FuncRecord:
        data = self.data
        ps = self.ptrsize
        off = self.funcdata + self.func_offsets[index]
        u32 = self._u32
        v = self.version
        if v >= PclnVersion.GO118:
            _check(off + 44 <= len(data), "func record out of range")
            (entry_off,) = u32.unpack_from(data, off)
            entry = self.text_start + entry_off
            fields = off + 4
            if v == PclnVersion.GO120:
                nfuncdata = data[off + 43]
                hdr = 44
            else:
                nfuncdata = data[off + 39]
                hdr = 40
            cu_offset = u32.unpack_from(data, off + 32)[0]
        else:
            _check(off + ps + 36 <= len(data), "func record out of range")
            entry = int(struct.unpack_from(self._ptrfmt, data, off)[0])
            fields = off + ps
            if v == PclnVersion.GO116:
                nfuncdata = data[fields + 35]
                hdr = ps + 36
                cu_offset = u32.unpack_from(data, fields + 28)[0]
            else:  # Go 1.11-1.15 layout: ..., npcdata, funcID, _[2], nfuncdata
                nfuncdata = data[fields + 31]
                hdr = ps + 32
                cu_offset = 0
        name_off, _args, _defer, _pcsp, pcfile, pcln, npcdata = struct.unpack_from(self.order + "iiIIIII", data, fields)
        _check(npcdata < 1 << 10 and entry == self.entries[index], "func record does not match the table")
        pcdata_off = off + hdr
        funcdata_off = pcdata_off + 4 * npcdata
        if v < PclnVersion.GO118 and ps == 8 and funcdata_off & 4:
            funcdata_off += 4  # uintptr funcdata is pointer-aligned
        fd_size = 4 if v >= PclnVersion.GO118 else ps
        _check(funcdata_off + nfuncdata * fd_size <= len(data), "func record truncated")
        return FuncRecord(
            entry=entry,
            end=self.entries[index + 1],
            name_off=name_off,
            pcfile=pcfile,
            pcln=pcln,
            cu_offset=cu_offset,
            pcdata_off=pcdata_off,
            npcdata=npcdata,
            nfuncdata=nfuncdata,
            funcdata_off=funcdata_off,
        )

    def find(self, pc: int) -> FuncRecord | None:
        i = self.func_index(pc)
        return None if i < 0 else self.record(i)

    def find_function(self, name: str) -> FuncRecord | None:
        """The function named ``name`` (first match), without decoding every record."""
        needle = name.encode() + b"\0"
        data = self.data
        base = self.funcnametab
        wanted: set[int] = set()
        pos = base
        while (i := data.find(needle, pos)) >= 0:
            if i == base or data[i - 1] == 0:
                wanted.add(i - base)
            pos = i + 1
        if not wanted:
            return None
        name_at = 4 if self.version >= PclnVersion.GO118 else self.ptrsize
        i32 = self._i32
        for index, off in enumerate(self.func_offsets):
            pos = self.funcdata + off + name_at
            if pos + 4 <= len(data) and i32.unpack_from(data, pos)[0] in wanted:
                return self.record(index)
        return None

    def functions(self) -> Iterator[tuple[str, int, int]]:
        """(name, entry, end) of every function, in address order.

        Names are not kept in the lookup cache: a whole-table walk would pin every
        name of every binary (12 MiB for Prometheus) for the binary's lifetime.
        """
        for i in range(self.nfunc):
            rec = self.record(i)
            yield self._cstring(self.funcnametab + rec.name_off), rec.entry, rec.end

    def pcdata_table(self, rec: FuncRecord, index: int) -> int:
        if index >= rec.npcdata:
            return 0
        return int(self._u32.unpack_from(self.data, rec.pcdata_off + 4 * index)[0])

    def file_line(self, rec: FuncRecord, pc: int) -> tuple[str, int]:
        fileno = self.pcvalue(rec.pcfile, rec.entry, pc)
        line = self.pcvalue(rec.pcln, rec.entry, pc)
        return self.filename(rec.cu_offset, fileno), line

    # ---- answers ------------------------------------------------------------------------------
    def lookup(self, pc: int) -> Frame | None:
        """What ``go tool addr2line`` prints: the physical function, and the
        innermost file:line (inlined code keeps its own position).

        The hot path of symbolization: reads just the _func fields it needs
        with one precompiled struct instead of building a FuncRecord.
        """
        entries = self.entries
        if pc < entries[0] or pc >= entries[-1]:
            return None
        index = bisect_right(entries, pc) - 1
        off = self.funcdata + self.func_offsets[index] + self._fields_at
        if off + self._fields.size > len(self.data):
            raise CorruptBinaryError("pclntab: func record out of range")
        name_off, pcfile, pcln, cu = self._fields.unpack_from(self.data, off)
        entry = entries[index]
        fileno = self.pcvalue(pcfile, entry, pc)
        line = self.pcvalue(pcln, entry, pc)
        return Frame(self.funcname(name_off), self.filename(cu, fileno), line)

    def frames(self, pc: int) -> list[Frame]:
        """The inline chain at ``pc``, innermost first; the physical function last."""
        rec = self.find(pc)
        if rec is None:
            return []
        out: list[Frame] = []
        tree = self._inline_tree(rec)
        table = self.pcdata_table(rec, PCDATA_INL_TREE_INDEX) if tree is not None else 0
        at = pc
        if tree is not None and table:
            seen: set[int] = set()
            while True:
                ix = self.pcvalue(table, rec.entry, at)
                if ix < 0:
                    break
                if ix in seen:
                    raise CorruptBinaryError("pclntab: inline tree has a cycle")
                if len(seen) >= MAX_INLINE_DEPTH:
                    raise BudgetExceededError(f"pclntab: inline chain deeper than {MAX_INLINE_DEPTH}")
                seen.add(ix)
                name_off, parent_pc = tree(ix)
                file, line = self.file_line(rec, at)
                out.append(Frame(self.funcname(name_off), file, line))
                nxt = rec.entry + parent_pc
                if not rec.entry <= nxt < rec.end:
                    raise CorruptBinaryError("pclntab: inline parent outside its function")
                at = nxt
        file, line = self.file_line(rec, at)
        out.append(Frame(self.funcname(rec.name_off), file, line))
        return out

    def _inline_tree(self, rec: FuncRecord) -> Callable[[int], tuple[int, int]] | None:
        """Accessor for inlinedCall[ix] -> (name offset, parentPc), or None."""
        slot = self.inl_tree_index
        if self._read is None or rec.nfuncdata <= slot:
            return None
        if self.version >= PclnVersion.GO118:
            if self.gofunc is None:
                return None
            (rel,) = self._u32.unpack_from(self.data, rec.funcdata_off + 4 * slot)
            if rel == _NO_FUNCDATA:
                return None
            base = self.gofunc + rel
        else:
            base = int(struct.unpack_from(self._ptrfmt, self.data, rec.funcdata_off + self.ptrsize * slot)[0])
            if base == 0:
                return None
        read = self._read
        order = self.order
        if self.version == PclnVersion.GO120:
            size, fmt = 16, order + "4xii4x"  # funcID, _, nameOff, parentPc, startLine
        else:
            size, fmt = 20, order + "12xii"  # parent, funcID, _, file, line | func_, parentPc

        def entry(ix: int) -> tuple[int, int]:
            _check(0 <= ix < 1 << 20, "inline index out of range")
            name_off, parent_pc = struct.unpack(fmt, read(base + ix * size, size))
            return int(name_off), int(parent_pc)

        return entry
