"""Real Go binaries built by Go releases older than any installed toolchain.

scripts/fetch_old_go_binaries.sh puts esbuild executables from the npm
registry into ``<cache>/oldgo/esbuild-<version>-go<goversion>``; they carry
pclntab formats (Go 1.2 layout of go1.14/1.15, the 1.16 layout of
go1.16/1.17, a real go1.18) that the toolchains under test never produce.
The format label is derived from the Go version in the file name, which the
script pins together with the binary's sha256.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.cachedir import cache_dir

# Every binary the fetch script installs (keep in sync with its ENTRIES).
EXPECTED: tuple[str, ...] = (
    "esbuild-0.5.26-go1.14.2",  # go12, keeps .symtab and zlib DWARF
    "esbuild-0.8.0-go1.15",  # go12, stripped
    "esbuild-0.8.57-go1.16",  # go116
    "esbuild-0.13.15-go1.17.2",  # go116, register ABI, -trimpath file names
    "esbuild-0.14.30-go1.18",  # go118
)

# pclntab header magic (little-endian uint32 at offset 0) per format label.
FORMAT_MAGIC: dict[str, int] = {"go12": 0xFFFFFFFB, "go116": 0xFFFFFFFA, "go118": 0xFFFFFFF0}

_NAME_RE = re.compile(r"^esbuild-\d+(?:\.\d+)*-go(?P<major>\d+)\.(?P<minor>\d+)(?:\.\d+)?$")


def oldgo_dir() -> Path:
    return cache_dir() / "oldgo"


def format_label(go_minor: tuple[int, int]) -> str | None:
    """pclntab format written by Go ``major.minor``; None for the newer ones."""
    if go_minor < (1, 2):
        return None
    if go_minor <= (1, 15):
        return "go12"
    if go_minor <= (1, 17):
        return "go116"
    if go_minor <= (1, 19):
        return "go118"
    return None


def old_go_binaries() -> list[tuple[str, Path]]:
    """(format label, path) of every fetched old-Go binary, oldest Go first."""
    found: list[tuple[tuple[int, int], str, Path]] = []
    root = oldgo_dir()
    if not root.is_dir():
        return []
    for path in root.iterdir():
        m = _NAME_RE.match(path.name)
        if m is None or not path.is_file():
            continue
        minor = (int(m.group("major")), int(m.group("minor")))
        label = format_label(minor)
        if label is not None:
            found.append((minor, label, path))
    found.sort(key=lambda item: (item[0], item[2].name))
    return [(label, path) for _, label, path in found]


def missing_old_go_binaries() -> list[str]:
    """Names from EXPECTED not in the cache (run scripts/fetch_old_go_binaries.sh)."""
    root = oldgo_dir()
    return [name for name in EXPECTED if not (root / name).is_file()]
