"""Go build information (``.go.buildinfo``), as ``go version -m`` shows it.

Like Go's ``debug/buildinfo``: find the blob (its section, else the magic in
the first writable segment, 16-byte aligned), validate the header, decode
the version and module strings (inline since Go 1.18, pointers before), and
fail with a named error. The module text is then split into main module,
dependencies and build settings — DefaultGODEBUG among them, which decides
a binary's GOMAXPROCS default from Go 1.25.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from agent.errors import BinaryError, CorruptBinaryError, NotGoError
from agent.gobinary.elf import ElfImage

MAGIC = b"\xff Go buildinf:"
HEADER_SIZE = 32
_MAX_STRING = 1 << 20
AUTOMAXPROCS = "go.uber.org/automaxprocs"


@dataclass(frozen=True)
class Module:
    path: str
    version: str
    sum: str = ""
    replaced_by: Module | None = None


@dataclass(frozen=True)
class BuildInfo:
    go_version: str  # e.g. "go1.21.13"
    path: str = ""
    main: Module | None = None
    deps: tuple[Module, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def version_tuple(self) -> tuple[int, int, int] | None:
        return parse_go_version(self.go_version)

    @property
    def default_godebug(self) -> str:
        return self.settings.get("DefaultGODEBUG", "")

    def has_module(self, path: str) -> bool:
        return any(m.path == path or m.path.startswith(path + "/") for m in self.deps)

    @property
    def automaxprocs(self) -> bool:
        return self.has_module(AUTOMAXPROCS)


_GO_VERSION_RE = re.compile(r"go(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def parse_go_version(text: str) -> tuple[int, int, int] | None:
    """(1, 21, 13) from "go1.21.13"; release candidates count as their release."""
    m = _GO_VERSION_RE.match(text.strip())
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptBinaryError("buildinfo: bad varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def decode_inline(blob: bytes) -> tuple[str, str]:
    """(version, modinfo) from a Go ≥1.18 blob: header, then two varint-prefixed strings."""
    pos = HEADER_SIZE
    out = []
    for _ in range(2):
        n, pos = _uvarint(blob, pos)
        if n > _MAX_STRING or pos + n > len(blob):
            raise CorruptBinaryError("buildinfo: string runs past the blob")
        out.append(blob[pos : pos + n].decode("utf-8", "replace"))
        pos += n
    return out[0], out[1]


def parse_modinfo(version: str, text: str) -> BuildInfo:
    """Split the module text (``path``, ``mod``, ``dep``, ``=>``, ``build`` lines)."""
    # The text is wrapped in 16-byte sentinels, the last preceded by a newline.
    if len(text) >= 33 and text[-17] == "\n":
        text = text[16:-16]
    path = ""
    main: Module | None = None
    deps: list[Module] = []
    settings: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        kind = parts[0]
        if kind == "path" and len(parts) >= 2:
            path = parts[1]
        elif kind in ("mod", "dep") and len(parts) >= 3:
            mod = Module(parts[1], parts[2], parts[3] if len(parts) > 3 else "")
            if kind == "mod":
                main = mod
            else:
                deps.append(mod)
        elif kind == "=>" and len(parts) >= 3 and deps:
            last = deps.pop()
            repl = Module(parts[1], parts[2], parts[3] if len(parts) > 3 else "")
            deps.append(Module(last.path, last.version, last.sum, repl))
        elif kind == "build" and len(parts) >= 2:
            key, _, value = parts[1].partition("=")
            if value.startswith('"'):
                value = value.strip('"')
            settings[key] = value
    return BuildInfo(version, path, main, tuple(deps), settings)


def _find_blob(image: ElfImage) -> int:
    sec = image.section(".go.buildinfo")
    if sec is not None and sec.has_bits:
        return sec.addr
    # Without section headers' help: the linker puts it at the start of the
    # first writable load segment, 16-byte aligned.
    for seg in image.segments:
        if seg.type == 1 and seg.flags & 2 and seg.filesz:
            size = min(seg.filesz, 64 << 20)
            raw = bytes(image.data[seg.offset : seg.offset + size])
            pos = 0
            while (i := raw.find(MAGIC, pos)) >= 0:
                if i % 16 == 0:
                    return seg.vaddr + i
                pos = i + 1
    raise NotGoError(f"{image.name}: no Go build info (.go.buildinfo)")


def read_buildinfo(image: ElfImage) -> BuildInfo:
    return parse_modinfo(*read_buildinfo_raw(image))


def read_buildinfo_raw(image: ElfImage) -> tuple[str, str]:
    """(Go version, module text) as stored: what a sandboxed parse hands back as plain data."""
    addr = _find_blob(image)
    header = image.read(addr, HEADER_SIZE)
    if not header.startswith(MAGIC):
        raise NotGoError(f"{image.name}: .go.buildinfo has no Go magic")
    ptrsize, flags = header[14], header[15]
    if flags & 2:
        sec = image.section_at(addr)
        end = sec.addr + sec.size if sec is not None else addr + 4096
        blob = image.read(addr, min(end - addr, _MAX_STRING * 2 + HEADER_SIZE))
        version, modinfo = decode_inline(blob)
    else:
        if ptrsize not in (4, 8):
            raise CorruptBinaryError(f"{image.name}: buildinfo pointer size {ptrsize}")
        order = ">" if flags & 1 else "<"
        fmt = order + ("Q" if ptrsize == 8 else "I")
        vers_ptr, mod_ptr = struct.unpack_from(order + ("QQ" if ptrsize == 8 else "II"), header, 16)
        version = _read_go_string(image, vers_ptr, fmt, ptrsize)
        modinfo = _read_go_string(image, mod_ptr, fmt, ptrsize)
    if not version.startswith("go") and not version.startswith("devel"):
        raise CorruptBinaryError(f"{image.name}: implausible Go version {version[:40]!r}")
    return version, modinfo


def _read_go_string(image: ElfImage, ptr: int, fmt: str, ptrsize: int) -> str:
    raw = image.read(ptr, 2 * ptrsize)
    data, length = struct.unpack(fmt[0] + fmt[1] * 2, raw)
    if length > _MAX_STRING:
        raise CorruptBinaryError(f"{image.name}: buildinfo string too long")
    try:
        return image.read(int(data), int(length)).decode("utf-8", "replace")
    except BinaryError:
        raise CorruptBinaryError(f"{image.name}: buildinfo string points outside the file") from None
