"""Write small synthetic pclntabs in every supported format, for parser tests.

The layouts mirror Go's linker (cmd/link/internal/ld/pcln.go) closely enough
for the reader: header, name/CU/file/pc tables, function table, _func records,
pcdata and funcdata, and an inline tree stored outside the table (as the
linker puts it in go:func.*). Real binaries cover Go 1.19+; this covers the
formats no installed toolchain writes (Go 1.2 and 1.16) and lets tests hit
exact edge cases.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from agent.errors import CorruptBinaryError
from agent.gobinary.pclntab import PclnVersion

MAGIC = {
    PclnVersion.GO12: 0xFFFFFFFB,
    PclnVersion.GO116: 0xFFFFFFFA,
    PclnVersion.GO118: 0xFFFFFFF0,
    PclnVersion.GO120: 0xFFFFFFF1,
}


@dataclass
class Row:
    """Code up to ``end`` (offset from entry) has this position and inline index."""

    end: int
    file: str
    line: int
    inl: int = -1


@dataclass
class Inline:
    name: str
    parent_pc: int  # offset from entry of an instruction at the call site
    file: str = ""  # call site (pre-1.20 layout only; not read by the parser)
    line: int = 0


@dataclass
class Func:
    name: str
    size: int
    rows: list[Row]
    inlines: list[Inline] = field(default_factory=list)


@dataclass
class Built:
    table: bytes
    text_start: int
    gofunc: int
    memory: dict[int, bytes]  # address -> bytes of data stored outside the table

    def read(self, addr: int, size: int) -> bytes:
        for base, blob in self.memory.items():
            if base <= addr and addr + size <= base + len(blob):
                return blob[addr - base : addr - base + size]
        raise CorruptBinaryError(f"unmapped {addr:#x}")


def _uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_pcvalue(values: list[tuple[int, int]], quantum: int = 1) -> bytes:
    """(end offset, value) runs -> Go's varint delta encoding (runs merged)."""
    merged: list[tuple[int, int]] = []
    for end, val in values:
        if merged and merged[-1][1] == val:
            merged[-1] = (end, val)
        else:
            merged.append((end, val))
    out = bytearray()
    prev, pc = -1, 0
    for end, val in merged:
        delta = val - prev
        out += _uvarint((-delta << 1) - 1 if delta < 0 else delta << 1)
        out += _uvarint((end - pc) // quantum)
        prev, pc = val, end
    out.append(0)
    return bytes(out)


def build(
    funcs: list[Func],
    version: PclnVersion,
    *,
    text_start: int = 0x401000,
    ptrsize: int = 8,
    header_text_start: int | None = None,
    gofunc: int = 0x700000,
) -> Built:
    le = "<"
    word = "Q" if ptrsize == 8 else "I"
    files: list[str] = []
    for f in funcs:
        for r in f.rows:
            if r.file not in files:
                files.append(r.file)

    names = bytearray()
    name_off: dict[str, int] = {}

    def name(s: str) -> int:
        if s not in name_off:
            name_off[s] = len(names)
            names.extend(s.encode() + b"\0")
        return name_off[s]

    for f in funcs:
        name(f.name)
        for inl in f.inlines:
            name(inl.name)

    filetab = bytearray()
    file_off = []
    for fname in files:
        file_off.append(len(filetab))
        filetab.extend(fname.encode() + b"\0")
    cutab = b"".join(struct.pack(le + "I", o) for o in file_off)

    pctab = bytearray(b"\0")
    entries = []
    pc = text_start
    for f in funcs:
        entries.append(pc)
        pc += f.size
    end_pc = pc

    per_func = []
    for f in funcs:
        fileno = [(r.end, files.index(r.file) + (1 if version == PclnVersion.GO12 else 0)) for r in f.rows]
        lines = [(r.end, r.line) for r in f.rows]
        inl_index = [(r.end, r.inl) for r in f.rows]
        offs = []
        for vals in (fileno, lines, inl_index):
            offs.append(len(pctab))
            pctab += encode_pcvalue(vals)
        per_func.append(offs)

    # Inline trees live outside the table, at gofunc (+ offset) or absolute.
    gofunc_blob = bytearray()
    tree_addr: list[int | None] = []
    for f in funcs:
        if not f.inlines:
            tree_addr.append(None)
            continue
        while len(gofunc_blob) % 8:
            gofunc_blob.append(0)
        tree_addr.append(len(gofunc_blob))
        for inl in f.inlines:
            if version == PclnVersion.GO120:
                gofunc_blob += struct.pack(le + "B3xiii", 0, name_off[inl.name], inl.parent_pc, 0)
            else:
                gofunc_blob += struct.pack(le + "hBxiiii", -1, 0, 0, inl.line, name_off[inl.name], inl.parent_pc)

    if version == PclnVersion.GO12:
        return _build_go12(funcs, per_func, tree_addr, names, files, entries, end_pc, ptrsize, gofunc, gofunc_blob)

    nfuncdata = 4
    recs = bytearray()
    rec_off = []
    fsz = ptrsize if version == PclnVersion.GO116 else 4
    functab_size = (len(funcs) * 2 + 1) * fsz
    for i, f in enumerate(funcs):
        while (functab_size + len(recs)) % ptrsize:
            recs.append(0)
        rec_off.append(functab_size + len(recs))
        pcfile, pcln, pcinl = per_func[i]
        if version == PclnVersion.GO116:
            rec = struct.pack(le + word, entries[i])
            rec += struct.pack(le + "iiIIIIII", name_off[f.name], 0, 0, 0, pcfile, pcln, 3, 0)
            rec += struct.pack(le + "B2xB", 0, nfuncdata)
        else:
            rec = struct.pack(le + "IiiIIIIII", entries[i] - text_start, name_off[f.name], 0, 0, 0, pcfile, pcln, 3, 0)
            if version == PclnVersion.GO120:
                rec += struct.pack(le + "i", 1)
            rec += struct.pack(le + "BBxB", 0, 0, nfuncdata)
        rec += struct.pack(le + "III", 0, 0, pcinl)
        ta = tree_addr[i]
        if version == PclnVersion.GO116:
            if len(rec) % ptrsize:
                rec += b"\0" * (ptrsize - len(rec) % ptrsize)
            fd = [0, 0, 0, 0 if ta is None else gofunc + ta]
            rec += b"".join(struct.pack(le + word, x) for x in fd)
        else:
            fd = [0xFFFFFFFF] * 3 + [0xFFFFFFFF if ta is None else ta]
            rec += b"".join(struct.pack(le + "I", x) for x in fd)
        recs += rec

    functab = bytearray()
    for i in range(len(funcs)):
        e = entries[i] if version == PclnVersion.GO116 else entries[i] - text_start
        functab += struct.pack(le + (word if fsz == 8 else "I") * 2, e, rec_off[i])
    last = end_pc if version == PclnVersion.GO116 else end_pc - text_start
    functab += struct.pack(le + (word if fsz == 8 else "I"), last)
    pcln_blob = bytes(functab) + bytes(recs)

    nwords = 7 if version == PclnVersion.GO116 else 8
    hdr_size = 8 + nwords * ptrsize
    offsets = []
    body = bytearray()
    parts: list[bytes] = [bytes(names), cutab, bytes(filetab), bytes(pctab), pcln_blob]
    for part in parts:
        while (hdr_size + len(body)) % 8:
            body.append(0)
        offsets.append(hdr_size + len(body))
        body += part
    words = [len(funcs), len(files)]
    if version != PclnVersion.GO116:
        words.append(text_start if header_text_start is None else header_text_start)
    words += offsets
    header = struct.pack(le + "IBBBB", MAGIC[version], 0, 0, 1, ptrsize)
    header += b"".join(struct.pack(le + word, w) for w in words)
    return Built(header + bytes(body), text_start, gofunc, {gofunc: bytes(gofunc_blob)})


def _build_go12(
    funcs: list[Func],
    per_func: list[list[int]],
    tree_addr: list[int | None],
    names: bytearray,
    files: list[str],
    entries: list[int],
    end_pc: int,
    ptrsize: int,
    gofunc: int,
    gofunc_blob: bytearray,
) -> Built:
    """Go 1.2-1.15: one blob; every offset is from the table start."""
    le = "<"
    word = "Q" if ptrsize == 8 else "I"
    n = len(funcs)
    functab_off = 8 + ptrsize
    functab_size = (2 * n + 1) * ptrsize
    after = functab_off + functab_size + 4
    # Layout after the function table: names, pc tables, file table, records.
    blob = bytearray()
    names_off = after
    blob += names
    # Same pc tables as build() encoded, in the same order, so the offsets it
    # computed only need the table-relative base added.
    pctab_base = after + len(blob)
    shifted = [[pctab_base + o for o in offs] for offs in per_func]
    pctab = bytearray(b"\0")
    for f in funcs:
        for vals in (
            [(r.end, files.index(r.file) + 1) for r in f.rows],
            [(r.end, r.line) for r in f.rows],
            [(r.end, r.inl) for r in f.rows],
        ):
            pctab += encode_pcvalue(vals)
    blob += pctab
    # the inline trees name functions by table-relative offsets
    fixed_tree = bytearray(gofunc_blob)
    for f, ta in zip(funcs, tree_addr, strict=True):
        if ta is None:
            continue
        for k, _ in enumerate(f.inlines):
            pos = ta + k * 20 + 12
            (rel,) = struct.unpack_from(le + "i", fixed_tree, pos)
            struct.pack_into(le + "i", fixed_tree, pos, rel + names_off)
    filetab_off = after + len(blob)
    str_base = filetab_off + 4 * (len(files) + 1)
    filestrings = bytearray()
    file_entries = [len(files) + 1]
    for fname in files:
        file_entries.append(str_base + len(filestrings))
        filestrings += fname.encode() + b"\0"
    blob += b"".join(struct.pack(le + "I", x) for x in file_entries) + filestrings
    recs_offsets = []
    for i, f in enumerate(funcs):
        while (after + len(blob)) % ptrsize:
            blob.append(0)
        recs_offsets.append(after + len(blob))
        pcfile, pcln, pcinl = shifted[i]
        rec = struct.pack(le + word, entries[i])
        nameoff = names_off + _name_off(names, f.name)
        rec += struct.pack(le + "iiIIIIIB2xB", nameoff, 0, 0, 0, pcfile, pcln, 3, 0, 5)
        rec += struct.pack(le + "III", 0, 0, pcinl)
        if len(rec) % ptrsize:
            rec += b"\0" * (ptrsize - len(rec) % ptrsize)
        ta = tree_addr[i]
        # Go 1.12-1.15: the inline tree is funcdata slot 4 (after RegPointerMaps and StackObjects)
        rec += b"".join(struct.pack(le + word, x) for x in (0, 0, 0, 0, 0 if ta is None else gofunc + ta))
        blob += rec
    functab = bytearray()
    for i in range(n):
        functab += struct.pack(le + word * 2, entries[i], recs_offsets[i])
    functab += struct.pack(le + word, end_pc)
    header = struct.pack(le + "IBBBB", MAGIC[PclnVersion.GO12], 0, 0, 1, ptrsize) + struct.pack(le + word, n)
    table = header + bytes(functab) + struct.pack(le + "I", filetab_off) + bytes(blob)
    return Built(table, 0, gofunc, {gofunc: bytes(fixed_tree)})


def _name_off(names: bytearray, name: str) -> int:
    needle = name.encode() + b"\0"
    pos = 0
    while True:
        i = names.find(needle, pos)
        if i < 0:
            raise KeyError(name)
        if i == 0 or names[i - 1] == 0:
            return i
        pos = i + 1
