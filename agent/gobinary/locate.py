"""Find a Go binary's pclntab and moduledata in every layout the linker writes.

Where the table lives, most specific first:
  ``.gopclntab`` (exe, and PIE from Go 1.26), ``.data.rel.ro.gopclntab`` (PIE),
  the ``runtime.pclntab`` symbol, and — for stripped binaries that have none
  of those — a scan for the header magic inside read-only data, accepted only
  when a moduledata record points back at it.

moduledata (``.go.module`` from Go 1.26, else the ``runtime.firstmoduledata``
symbol, else a scan for a pointer to the table) gives the text start (Go
≥1.26 no longer stores it in the header) and ``gofunc``, the base of funcdata
offsets, which the inline tree needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agent.errors import BinaryError, BudgetExceededError, CorruptBinaryError, NotGoError, UnsupportedGoError
from agent.gobinary.elf import ElfImage, Section
from agent.gobinary.pclntab import MAGICS, PclnVersion, sniff_version

# moduledata words (pointer-sized) that do not move between Go versions.
_MD_PCHEADER = 0
_MD_FUNCNAMETAB = 1
_MD_PCLNTABLE = 13
_MD_FTAB = 16
_MD_MINPC = 20
_MD_TEXT = 22
_MD_ETEXT = 23
# Where `gofunc` may sit; see _gofunc_order. Validated by the word before it
# (`rodata`), which must lie in the .rodata section.
_GOFUNC_CANDIDATES = (40, 43, 38, 41, 42, 44, 39, 45, 46)
_SCAN_SECTIONS = (".noptrdata", ".go.module", ".data", ".data.rel.ro")
_MAX_CANDIDATES = 64  # header-magic look-alikes tried in a stripped binary
MAX_PCLNTAB_BYTES = 128 << 20  # the largest Go binaries' tables are ~40 MB
_TABLE_SCAN_SECTIONS = (".data.rel.ro", ".rodata", ".noptrdata", ".data.rel.ro.gopclntab", ".gopclntab")


@dataclass(frozen=True)
class GoTables:
    pclntab: bytes
    pclntab_addr: int
    found_in: str  # human-readable: which section/symbol/scan found it
    version: PclnVersion
    text_start: int | None  # from moduledata; None -> trust the header
    gofunc: int | None
    moduledata_addr: int | None


def locate(image: ElfImage, go_version: tuple[int, int] | None = None) -> GoTables:
    addr, found_in = _find_table(image)
    md = _find_moduledata(image, addr)
    data = _table_bytes(image, addr, md)
    version = sniff_version(data[:16])
    if version is None:
        if len(data) >= 8 and data[4:6] == b"\0\0" and data[6] in (1, 2, 4) and data[7] in (4, 8):
            (magic,) = struct.unpack_from(image.endian + "I", data, 0)
            raise UnsupportedGoError(f"{image.name}: pclntab has unknown magic {magic:#010x} ({found_in})")
        raise NotGoError(f"{image.name}: pclntab header at {addr:#x} is not valid")
    text_start = gofunc = None
    if md is not None:
        text_start = image.read_pointer(md + _MD_TEXT * image.ptrsize)
        gofunc = _gofunc(image, md, go_version) if version >= PclnVersion.GO118 else None
    if version >= PclnVersion.GO118 and gofunc is None:
        sym = image.symbol("go:func.*") or image.symbol("go.func.*")
        gofunc = sym[0] if sym else None
    if text_start is None and version >= PclnVersion.GO118:
        sym = image.symbol("runtime.text")
        if sym is not None:
            text_start = sym[0]
        elif _header_text_start(data, image) == 0:
            text = image.section(".text")
            text_start = text.addr if text is not None else None
    return GoTables(data, addr, found_in, version, text_start, gofunc, md)


def _header_text_start(data: bytes, image: ElfImage) -> int:
    fmt = image.endian + ("Q" if image.ptrsize == 8 else "I")
    return int(struct.unpack_from(fmt, data, 8 + 2 * image.ptrsize)[0]) if len(data) >= 8 + 3 * image.ptrsize else 0


def _find_table(image: ElfImage) -> tuple[int, str]:
    for name in (".gopclntab", ".data.rel.ro.gopclntab"):
        sec = image.section(name)
        if sec is not None and sec.has_bits and sec.size >= 16:
            return sec.addr, f"section {name}"
    sym = image.symbol("runtime.pclntab")
    if sym is not None and sym[0]:
        return sym[0], "symbol runtime.pclntab"
    for name in _TABLE_SCAN_SECTIONS:
        sec = image.section(name)
        if sec is None or not sec.has_bits:
            continue
        for addr in _magic_candidates(image, sec):
            if _find_moduledata(image, addr) is not None:
                return addr, f"scan of {name} (confirmed by moduledata)"
    raise NotGoError(f"{image.name}: no Go pclntab found")


def _magic_candidates(image: ElfImage, sec: Section) -> list[int]:
    raw = image.section_data(sec)
    found = []
    order = "<" if image.little_endian else ">"
    for magic in MAGICS:
        needle = struct.pack(order + "I", magic) + b"\0\0"
        start = 0
        while (i := raw.find(needle, start)) >= 0:
            start = i + 1
            if i % 4 == 0 and sniff_version(raw[i : i + 16]) is not None:
                found.append(sec.addr + i)
                if len(found) >= _MAX_CANDIDATES:  # each costs a scan for moduledata
                    return found
    return found


def _find_moduledata(image: ElfImage, table_addr: int) -> int | None:
    """Address of the moduledata whose pcHeader points at ``table_addr``."""
    for name in (".go.module",):
        sec = image.section(name)
        if sec is not None and sec.has_bits and _valid_moduledata(image, sec.addr, table_addr):
            return sec.addr
    sym = image.symbol("runtime.firstmoduledata")
    if sym is not None and _valid_moduledata(image, sym[0], table_addr):
        return sym[0]
    needle = struct.pack(image.endian + ("Q" if image.ptrsize == 8 else "I"), table_addr)
    for name in _SCAN_SECTIONS:
        sec = image.section(name)
        if sec is None or not sec.has_bits:
            continue
        raw = image.section_data(sec)
        start = 0
        while (i := raw.find(needle, start)) >= 0:
            start = i + 1
            if i % image.ptrsize == 0 and _valid_moduledata(image, sec.addr + i, table_addr):
                return sec.addr + i
    return None


def _valid_moduledata(image: ElfImage, md: int, table_addr: int) -> bool:
    """A moduledata candidate must point at the table and at its sub-tables."""
    ps = image.ptrsize
    try:
        if image.read_pointer(md + _MD_PCHEADER * ps) != table_addr:
            return False
        funcnametab = image.read_pointer(md + _MD_FUNCNAMETAB * ps)
        ftab = image.read_pointer(md + _MD_FTAB * ps)
        text = image.read_pointer(md + _MD_TEXT * ps)
        etext = image.read_pointer(md + _MD_ETEXT * ps)
        minpc = image.read_pointer(md + _MD_MINPC * ps)
    except BinaryError:
        return False
    return table_addr < funcnametab and table_addr < ftab and text <= minpc < etext


def _table_bytes(image: ElfImage, addr: int, md: int | None) -> bytes:
    """The table's bytes: its section, or up to the end of whatever holds it."""
    sec = image.section_at(addr)
    if sec is None:
        raise NotGoError(f"{image.name}: pclntab address {addr:#x} is not in the file")
    end = sec.addr + sec.size
    if md is not None and not sec.name.endswith("gopclntab"):
        # A table found by scan shares its section: moduledata's pclntable slice ends it.
        ps = image.ptrsize
        try:
            start = image.read_pointer(md + _MD_PCLNTABLE * ps)
            length = image.read_pointer(md + (_MD_PCLNTABLE + 1) * ps)
            if addr < start + length <= end:
                end = start + length
        except BinaryError:
            pass
    size = end - addr
    if size > MAX_PCLNTAB_BYTES:
        raise BudgetExceededError(f"{image.name}: a {size}-byte pclntab is over the budget of {MAX_PCLNTAB_BYTES}")
    if not sec.has_bits or sec.offset + sec.size > len(image.data):
        raise CorruptBinaryError(f"{image.name}: section {sec.name or '?'} extends past end of file")
    start = sec.offset + (addr - sec.addr)
    return bytes(image.data[start : start + size])  # one read of just the table


def _gofunc_order(go_version: tuple[int, int] | None) -> tuple[int, ...]:
    """Candidate moduledata indexes of `gofunc`, the known one for this Go first.

    1.18-1.19: 38; 1.20 added covctrs (40); 1.27 added typedesclen, itaboffset
    and itabsize (43). Unknown versions try all, validated by `rodata`.
    """
    known = None
    if go_version is not None:
        known = 38 if go_version < (1, 20) else 40 if go_version < (1, 27) else 43
    rest = tuple(i for i in _GOFUNC_CANDIDATES if i != known)
    return rest if known is None else (known, *rest)


def _gofunc(image: ElfImage, md: int, go_version: tuple[int, int] | None) -> int | None:
    rodata = image.section(".rodata")
    if rodata is None:
        return None
    ps = image.ptrsize
    for index in _gofunc_order(go_version):
        try:
            before = image.read_pointer(md + (index - 1) * ps)  # moduledata.rodata
            value = image.read_pointer(md + index * ps)
        except BinaryError:
            continue
        if rodata.contains_addr(before) and value > before and image.section_at(value) is not None:
            return value
    return None
