"""The one place node-agent reads ELF files (through pyelftools).

pyelftools parses the headers; the bytes themselves are read from one buffer
(``bytes`` in tests, a :class:`FileView` of an open file otherwise) so large
sections such as a 50 MB binary's pclntab are sliced, not copied through
pyelftools' streams. Files are read with ``pread``, never memory-mapped: a
tenant can truncate its binary under us, which turns an access to a mapping
into SIGBUS (the whole daemon) but a read into a short read (this binary).
The header's section and segment counts are checked against the file and a
budget before pyelftools sees them (3 million section headers would cost a
minute of CPU and 600 MB). Every low-level failure becomes
:class:`CorruptBinaryError` or :class:`NotELFError` here, so callers see one
kind of error.
"""

from __future__ import annotations

import os
import struct
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from agent.errors import BinaryError, BudgetExceededError, CorruptBinaryError, NotELFError

SHT_NOBITS = 8
SHT_SYMTAB = 2
SHT_RELA = 4
PT_LOAD = 1
ET_DYN = 3

# R_*_RELATIVE relocation types by e_machine: applied when a pointer in a
# PIE's data reads as zero in the file (external linkers may leave it so).
_RELATIVE_RELOC = {"EM_X86_64": 8, "EM_AARCH64": 1027, "EM_PPC64": 22, "EM_S390": 12, "EM_RISCV": 3}

# Budgets checked before pyelftools parses a header table. Go's linker writes ~40
# sections and ~10 segments; C/C++ programs with -ffunction-sections may have
# thousands of sections, still far below this.
MAX_SECTIONS = 1 << 14
MAX_SEGMENTS = 1 << 10


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    flags: int

    @property
    def has_bits(self) -> bool:
        return self.type != SHT_NOBITS

    def contains_addr(self, addr: int) -> bool:
        return self.addr != 0 and self.addr <= addr < self.addr + self.size


@dataclass(frozen=True)
class Segment:
    type: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


class FileView:
    """Read-only, sliceable view of an open file through ``pread``: what ElfImage reads.

    Slicing past the end gives a short result, as with ``bytes``; a read that
    comes back shorter than the file's size promised (the file was truncated
    under us) is a :class:`CorruptBinaryError` for this binary only.
    """

    def __init__(self, fd: int, size: int, name: str) -> None:
        self._fd = fd
        self._size = size
        self._name = name

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: slice) -> bytes:
        start, stop, step = index.indices(self._size)
        if step != 1:
            raise ValueError("FileView slices are contiguous")
        want = max(0, stop - start)
        if want == 0:
            return b""
        try:
            got = os.pread(self._fd, want, start)
        except OSError as exc:
            raise CorruptBinaryError(f"{self._name}: cannot read: {exc.strerror or exc}") from None
        if len(got) != want:
            raise CorruptBinaryError(f"{self._name}: file changed while being read (truncated?)")
        return got


Buffer = bytes | FileView


_GO_SECTION_NAMES = (b"gopclntab\0", b".go.buildinfo\0", b".note.go.buildid\0")
_MAX_SHSTRTAB = 1 << 20


def has_go_sections(data: Buffer, name: str) -> bool:
    """Whether an ELF file names a Go section (pclntab, build info or build ID note), read with
    a few bounded reads and no parser: what decides if a file is worth a sandboxed parse.

    Every Go binary since 1.13 has ``.go.buildinfo``, stripped or not; without section
    headers at all the pclntab cannot be located anyway.
    """
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise NotELFError(f"{name}: not an ELF file")
    _check_header_budget(data, name)
    head = data[:64]
    order = "<" if head[5] == 1 else ">"
    wide = head[4] == 2
    shoff = struct.unpack_from(order + ("Q" if wide else "I"), head, 0x28 if wide else 0x20)[0]
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", head, 0x3A if wide else 0x2E)
    if not shoff or shentsize < (64 if wide else 40) or shstrndx >= max(shnum, 1) or shstrndx == 0:
        return False
    entry = data[shoff + shstrndx * shentsize : shoff + (shstrndx + 1) * shentsize]
    if wide:
        off, size = struct.unpack_from(order + "QQ", entry, 24)
    else:
        off, size = struct.unpack_from(order + "II", entry, 16)
    strings = data[off : off + min(size, _MAX_SHSTRTAB)]
    return any(n in strings for n in _GO_SECTION_NAMES)


def _check_header_budget(data: Buffer, name: str) -> None:
    """Section and segment header tables must fit the file and the budget, before parsing them."""
    head = data[:64]
    if len(head) < 52 or head[4] not in (1, 2) or head[5] not in (1, 2):
        raise CorruptBinaryError(f"{name}: truncated or unknown ELF header")
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:
        if len(head) < 64:
            raise CorruptBinaryError(f"{name}: truncated ELF header")
        phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
    else:
        phoff, shoff = struct.unpack_from(order + "II", head, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 42)
    size = len(data)
    if shoff and shnum == 0 and shentsize >= 40:  # more than 0xff00 sections: the count is in section 0
        first = data[shoff : shoff + shentsize]
        if len(first) < shentsize:
            raise CorruptBinaryError(f"{name}: section headers past the end of the file")
        shnum = struct.unpack_from(order + ("Q" if head[4] == 2 else "I"), first, 32 if head[4] == 2 else 20)[0]
    if shnum > MAX_SECTIONS or phnum > MAX_SEGMENTS:
        raise BudgetExceededError(
            f"{name}: {shnum} section / {phnum} program headers is over the budget ({MAX_SECTIONS}/{MAX_SEGMENTS})"
        )
    if shoff and shoff + shnum * shentsize > size:
        raise CorruptBinaryError(f"{name}: section headers past the end of the file")
    if phoff and phoff + phnum * phentsize > size:
        raise CorruptBinaryError(f"{name}: program headers past the end of the file")


def _parse_error(exc: BaseException) -> CorruptBinaryError:
    return CorruptBinaryError(f"malformed ELF headers: {exc.__class__.__name__}: {exc}")


class ElfImage:
    """An ELF file's headers plus random access to its bytes by vaddr."""

    def __init__(self, data: Buffer, *, name: str = "<bytes>") -> None:
        self.name = name
        self._data = data
        if len(data) < 16 or data[:4] != b"\x7fELF":
            raise NotELFError(f"{name}: not an ELF file")
        _check_header_budget(data, name)
        try:
            elf = ELFFile(cast(IO[bytes], _Stream(data)))
            self.elf_class: int = elf.elfclass
            self.little_endian: bool = elf.little_endian
            self.machine: str = str(elf["e_machine"])
            self.type: int = 3 if elf["e_type"] == "ET_DYN" else 2 if elf["e_type"] == "ET_EXEC" else 0
            self.sections: list[Section] = [
                Section(
                    s.name,
                    _sh_type(s["sh_type"]),
                    s["sh_addr"],
                    s["sh_offset"],
                    s["sh_size"],
                    s["sh_flags"],
                )
                for s in elf.iter_sections()
            ]
            self.segments: list[Segment] = [
                Segment(
                    1 if p["p_type"] == "PT_LOAD" else 0,
                    p["p_vaddr"],
                    p["p_offset"],
                    p["p_filesz"],
                    p["p_memsz"],
                    p["p_flags"],
                )
                for p in elf.iter_segments()
            ]
        except BinaryError:
            raise
        except (ELFError, struct.error, ValueError, KeyError, IndexError, OverflowError, AssertionError) as exc:
            raise _parse_error(exc) from None
        except Exception as exc:  # pyelftools raises construct's own errors too
            raise _parse_error(exc) from None
        self.ptrsize = 8 if self.elf_class == 64 else 4
        self.endian = "<" if self.little_endian else ">"
        self._by_name = {s.name: s for s in reversed(self.sections)}
        self._relocs: dict[int, int] | None = None

    @property
    def data(self) -> Buffer:
        return self._data

    @property
    def is_pie(self) -> bool:
        return self.type == ET_DYN

    @property
    def kept_bytes(self) -> int:
        return 0  # reads through the file

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def section_data(self, sec: Section) -> bytes:
        if not sec.has_bits:
            return b""
        end = sec.offset + sec.size
        if end > len(self._data):
            raise CorruptBinaryError(f"{self.name}: section {sec.name or '?'} extends past end of file")
        return bytes(self._data[sec.offset : end])

    def section_at(self, addr: int) -> Section | None:
        for sec in self.sections:
            if sec.has_bits and sec.contains_addr(addr):
                return sec
        return None

    def addr_to_offset(self, addr: int) -> int | None:
        """File offset holding the byte at ``addr`` (load segments first, then sections)."""
        for seg in self.segments:
            if seg.type == PT_LOAD and seg.vaddr <= addr < seg.vaddr + seg.filesz:
                return seg.offset + (addr - seg.vaddr)
        sec = self.section_at(addr)
        return None if sec is None else sec.offset + (addr - sec.addr)

    def offset_to_addr(self, offset: int) -> int | None:
        """Link-time address of a file offset (how PIE runtime PCs are mapped back)."""
        for seg in self.segments:
            if seg.type == PT_LOAD and seg.offset <= offset < seg.offset + seg.filesz:
                return seg.vaddr + (offset - seg.offset)
        return None

    def read(self, addr: int, size: int) -> bytes:
        off = self.addr_to_offset(addr)
        if off is None or size < 0 or off + size > len(self._data):
            raise CorruptBinaryError(f"{self.name}: address {addr:#x}+{size} is not in the file")
        return bytes(self._data[off : off + size])

    def read_pointer(self, addr: int) -> int:
        """A pointer-sized word at ``addr``, as the loader leaves it (before the load bias).

        In a PIE a word with an R_*_RELATIVE relocation is the relocation's addend,
        whatever the file holds there: RELA addends are not taken from the file,
        and GNU ld for arm64 leaves the Go linker's own value in some such words
        (seen in moduledata.gofunc of externally linked Go 1.27 PIEs).
        """
        if self.is_pie:
            reloc = self._relative_relocs().get(addr)
            if reloc is not None:
                return reloc
        fmt = self.endian + ("Q" if self.ptrsize == 8 else "I")
        (value,) = struct.unpack(fmt, self.read(addr, self.ptrsize))
        return int(value)

    def _relative_relocs(self) -> dict[int, int]:
        if self._relocs is None:
            self._relocs = {}
            rtype = _RELATIVE_RELOC.get(self.machine)
            if rtype is not None and self.elf_class == 64:
                for sec in self.sections:
                    if sec.type == SHT_RELA and sec.has_bits:
                        raw = self.section_data(sec)
                        whole = raw[: len(raw) // 24 * 24]
                        for r_off, r_info, r_add in struct.iter_unpack(self.endian + "QQq", whole):
                            if r_info & 0xFFFFFFFF == rtype:
                                self._relocs[r_off] = r_add
        return self._relocs

    def symbol(self, name: str) -> tuple[int, int] | None:
        """(value, size) of a static symbol, or None (stripped, or absent).

        Scans .symtab with struct rather than pyelftools: a large Go binary
        has ~100k symbols and we only ever want one or two of them.
        """
        symtab = self._by_name.get(".symtab")
        strtab = self._by_name.get(".strtab")
        if symtab is None or strtab is None or symtab.type != SHT_SYMTAB:
            return None
        strings = self.section_data(strtab)
        wanted = name.encode() + b"\0"
        targets: set[int] = set()
        start = 0
        while (i := strings.find(wanted, start)) >= 0:
            if i == 0 or strings[i - 1] == 0:
                targets.add(i)
            start = i + 1
        if not targets:
            return None
        raw = self.section_data(symtab)
        if self.elf_class == 64:
            fmt, entsize, vi, si = self.endian + "IBBHQQ", 24, 4, 5
        else:
            fmt, entsize, vi, si = self.endian + "IIIBBH", 16, 1, 2
        for entry in struct.iter_unpack(fmt, raw[: len(raw) // entsize * entsize]):
            if entry[0] in targets:
                return int(entry[vi]), int(entry[si])
        return None

    def notes(self) -> Iterator[tuple[str, int, bytes]]:
        """(owner, type, descriptor) of every note in SHT_NOTE sections."""
        for sec in self.sections:
            if sec.type != 7 or not sec.has_bits:  # SHT_NOTE
                continue
            raw = self.section_data(sec)
            pos = 0
            while pos + 12 <= len(raw):
                namesz, descsz, ntype = struct.unpack_from(self.endian + "III", raw, pos)
                pos += 12
                name_end = pos + namesz
                desc_start = pos + ((namesz + 3) & ~3)
                desc_end = desc_start + descsz
                if desc_end > len(raw):
                    break
                yield raw[pos:name_end].rstrip(b"\0").decode("latin-1"), ntype, raw[desc_start:desc_end]
                pos = desc_start + ((descsz + 3) & ~3)

    def gnu_build_id(self) -> str | None:
        for owner, ntype, desc in self.notes():
            if owner == "GNU" and ntype == 3:
                return desc.hex()
        return None

    def go_build_id(self) -> str | None:
        """Go's own build ID: the `Go` note, or the marker at the start of text."""
        for owner, ntype, desc in self.notes():
            if owner == "Go" and ntype == 4:
                return desc.decode("utf-8", "replace")
        text = self._by_name.get(".text")
        if text is not None and text.has_bits:
            head = bytes(self._data[text.offset : text.offset + 256])
            marker = b'\xff Go build ID: "'
            i = head.find(marker)
            if i >= 0:
                j = head.find(b'"', i + len(marker))
                if j > 0:
                    return head[i + len(marker) : j].decode("utf-8", "replace")
        return None


def _sh_type(value: Any) -> int:
    if isinstance(value, int):
        return value
    return {"SHT_NOBITS": SHT_NOBITS, "SHT_SYMTAB": SHT_SYMTAB, "SHT_RELA": SHT_RELA, "SHT_NOTE": 7}.get(str(value), 1)


class _Stream:
    """A minimal file-like view over bytes or mmap for pyelftools."""

    def __init__(self, data: Buffer) -> None:
        self._data = data
        self._pos = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence == 2:
            pos += len(self._data)
        self._pos = max(0, pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else self._pos + n
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk


def open_image(path: str | os.PathLike[str] | IO[bytes]) -> ElfImage:
    """Open a file and parse its headers; the only helper that opens paths.

    The image reads through the open file (see :class:`FileView`): it stays
    open as long as the image lives.
    """
    name = str(getattr(path, "name", path))
    try:
        if isinstance(path, (str, os.PathLike)):
            p = Path(path)
            if p.is_dir():
                raise NotELFError(f"{name}: is a directory")
            with open(p, "rb") as f:
                return _map(f, name)
        return _map(path, name)
    except BinaryError:
        raise
    except PermissionError:
        raise BinaryError(f"{name}: permission denied", help="run as root or fix the file's mode") from None
    except FileNotFoundError:
        raise BinaryError(f"{name}: no such file") from None
    except OSError as exc:
        raise BinaryError(f"{name}: cannot read: {exc.strerror or exc}") from None


def _map(f: IO[bytes], name: str) -> ElfImage:
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise NotELFError(f"{name}: empty file")
    fd = os.dup(f.fileno())
    image = ElfImage(FileView(fd, size, name), name=name)
    weakref.finalize(image, os.close, fd)
    return image


class RegionImage:
    """What a binary parsed elsewhere (the sandbox) keeps: its load segments and copies of
    the few regions symbolization reads (the inline trees' funcdata), with no file behind it.

    Answers the same questions as :class:`ElfImage` for everything after parsing, so a
    tenant changing or truncating its file later changes nothing here.
    """

    def __init__(
        self,
        name: str,
        *,
        machine: str,
        is_pie: bool,
        segments: list[Segment],
        regions: list[tuple[int, bytes]],
    ) -> None:
        self.name = name
        self.machine = machine
        self.segments = segments
        self.sections: list[Section] = []
        self._is_pie = is_pie
        self._regions = sorted(regions)

    @property
    def is_pie(self) -> bool:
        return self._is_pie

    @property
    def regions(self) -> list[tuple[int, bytes]]:
        return list(self._regions)

    @property
    def kept_bytes(self) -> int:
        return sum(len(data) for _, data in self._regions)

    def read(self, addr: int, size: int) -> bytes:
        for start, data in self._regions:
            if start <= addr and addr + size <= start + len(data) and size >= 0:
                return data[addr - start : addr - start + size]
        raise CorruptBinaryError(f"{self.name}: address {addr:#x}+{size} is not in the kept regions")

    def offset_to_addr(self, offset: int) -> int | None:
        for seg in self.segments:
            if seg.type == PT_LOAD and seg.offset <= offset < seg.offset + seg.filesz:
                return seg.vaddr + (offset - seg.offset)
        return None

    def symbol(self, name: str) -> tuple[int, int] | None:
        return None  # symbols were consulted where the file was parsed
