"""Build the Go test programs with every installed toolchain, cached.

The matrix is toolchain x build mode x variant:

- mode ``exe``: ``-buildmode=exe`` (ET_EXEC, text at 0x401000);
  mode ``pie``: ``-buildmode=pie`` (ET_DYN). With ``CGO_ENABLED=0`` every
  toolchain from 1.19 to 1.27 links PIE on linux/amd64 with its internal
  linker, no flags needed (internal PIE linking exists since Go 1.15). Note
  the internal linker gives a PIE the same link-time layout as an exe (first
  PT_LOAD at vaddr 0x400000, .text at 0x401000), so a PIE's load bias is
  ``mapping start - 0x400000``, not the mapping start.
  Where pclntab lives: ``.gopclntab`` in an exe; ``.data.rel.ro.gopclntab``
  in a PIE up to Go 1.25, but ``.gopclntab`` (read-only, no ``.gosymtab``)
  in a Go 1.27 PIE. The pclntab header's runtime.text field is 0x401000 in
  the file up to Go 1.25 (exe and PIE) but 0 in Go 1.27 builds (exe and PIE,
  no relocation targets it): take the text start from .text there.
  Go 1.25+ also emit ``.note.gnu.build-id`` next to ``.note.go.buildid``
  (section headers listed after the DWARF ones in a 1.25 PIE, before
  ``.text`` in 1.27). DWARF is SHF_COMPRESSED (zlib) in every version,
  version 4 up to 1.23 and version 5 from 1.25.
- variant ``full``: as built (``.symtab`` and DWARF present);
  ``strip``: the full binary after binutils ``strip`` (no ``.symtab``, no
  DWARF; pclntab and the Go build ID note survive);
  ``sw``: ``-ldflags=-s -w`` (Go's linker omits ``.symtab`` and DWARF).

Target ``arch`` ``amd64`` (this machine) or ``arm64`` (cross-compiled with
``GOARCH=arm64``; stripped with binutils' ``aarch64-linux-gnu-strip``, or
``llvm-strip``). On arm64 the internal linker puts the first PT_LOAD at
0x10000 and .text at 0x11000, exe and PIE alike (64 KiB segment alignment),
and pclntab's quantum is 4. ``cgo=True``
links externally (``CGO_ENABLED=1``, ``-ldflags=-linkmode=external``, so
runtime/cgo and the C start-up code are in), with gcc for amd64 and
Debian's ``aarch64-linux-gnu-gcc`` for arm64.

Builds are keyed by (source tree hash + absolute source path, toolchain
version, arch, cgo, mode, variant): the path is part of the key because it is embedded
in the binary (no ``-trimpath``: tests compare real file paths). Each build
goes to a temporary name in the final directory and is renamed into place,
so concurrent test runs never see a half-written binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.cachedir import cache_dir
from agent.lab.gotoolchain import GoToolchain, build_env, find_toolchains

MODES = ("exe", "pie")
VARIANTS = ("full", "strip", "sw")
ARCHES = ("amd64", "arm64")
# Per GOARCH: the strip that understands its ELF files (llvm-strip reads any), and the cgo C compiler.
STRIP = {"amd64": ("strip", "llvm-strip"), "arm64": ("aarch64-linux-gnu-strip", "llvm-strip")}
CC = {"amd64": "gcc", "arm64": "aarch64-linux-gnu-gcc"}
SYMTEST = Path(__file__).resolve().parents[1] / "goprogs" / "symtest"
BUILD_TIMEOUT_S = 600


class GoBuildError(RuntimeError):
    """A test program failed to build; carries the toolchain's output."""


@dataclass(frozen=True)
class GoBinary:
    toolchain: GoToolchain
    mode: str  # "exe" | "pie"
    variant: str  # "full" | "strip" | "sw"
    path: Path
    unstripped: Path  # the "full" build of the same toolchain, arch and mode (== path when variant is "full")
    arch: str = "amd64"
    cgo: bool = False

    @property
    def label(self) -> str:
        """Readable id for pytest parametrization, e.g. ``go1.21.13-pie-strip``, ``go1.27.3-arm64-cgo-exe-sw``."""
        target = "" if self.arch == "amd64" else f"{self.arch}-"
        return f"{self.toolchain.version_string}-{target}{'cgo-' if self.cgo else ''}{self.mode}-{self.variant}"


def testbins_dir() -> Path:
    return cache_dir() / "testbins"


def source_hash(source_dir: Path) -> str:
    """Hash of every regular file under ``source_dir`` (names and bytes) plus its absolute path."""
    root = source_dir.resolve()
    h = hashlib.sha256(str(root).encode())
    for p in sorted(root.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            h.update(b"\0" + str(p.relative_to(root)).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def go_env(toolchain: GoToolchain, arch: str = "amd64", cgo: bool = False) -> dict[str, str]:
    """A hermetic environment: this toolchain only, no network, caches under our cache dir."""
    env = build_env(toolchain, testbins_dir())
    env["GOARCH"] = arch
    if cgo:
        env.update(CGO_ENABLED="1", CC=CC[arch])
    return env


def find_strip(arch: str) -> str | None:
    """A strip that can rewrite ``arch`` ELF files."""
    return next((found for name in STRIP[arch] if (found := shutil.which(name))), None)


def _output_path(toolchain: GoToolchain, source_dir: Path, mode: str, variant: str, arch: str, cgo: bool) -> Path:
    root = source_dir.resolve()
    key = f"{root.name}-{source_hash(root)}"
    target = ("" if arch == "amd64" else f"{arch}-") + ("cgo-" if cgo else "")  # amd64 keeps its old paths
    return testbins_dir() / key / toolchain.version_string / f"{target}{mode}-{variant}" / root.name


def _publish(tmp: Path, final: Path) -> None:
    tmp.chmod(0o755)
    os.replace(tmp, final)


def _tmp_name(final: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(name)


def build_one(
    toolchain: GoToolchain, source_dir: Path, mode: str, variant: str, arch: str = "amd64", cgo: bool = False
) -> Path:
    """Path of the cached binary, building it (and, for "strip", its full build) if missing."""
    if mode not in MODES or variant not in VARIANTS or arch not in ARCHES:
        raise ValueError(f"unknown mode/variant/arch {mode!r}/{variant!r}/{arch!r}")
    final = _output_path(toolchain, source_dir, mode, variant, arch, cgo)
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        if variant == "strip":
            full = build_one(toolchain, source_dir, mode, "full", arch, cgo)
            strip = find_strip(arch)
            if strip is None:
                raise GoBuildError(f"no strip for {arch} ({' or '.join(STRIP[arch])})")
            _run([strip, "-o", str(tmp), str(full)], cwd=source_dir, env=dict(os.environ))
        else:
            cmd = [str(toolchain.go), "build", f"-buildmode={mode}", "-buildvcs=false", "-o", str(tmp)]
            ldflags = (["-linkmode=external"] if cgo else []) + (["-s", "-w"] if variant == "sw" else [])
            if ldflags:
                cmd.append(f"-ldflags={' '.join(ldflags)}")
            cmd.append(".")
            _run(cmd, cwd=source_dir, env=go_env(toolchain, arch, cgo))
        _publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise GoBuildError(f"{' '.join(cmd)} (in {cwd}) failed with {proc.returncode}:\n{proc.stderr}{proc.stdout}")


def build_matrix(
    source_dir: Path = SYMTEST,
    toolchains: list[GoToolchain] | None = None,
    modes: tuple[str, ...] = MODES,
    variants: tuple[str, ...] = VARIANTS,
    arch: str = "amd64",
    cgo: bool = False,
) -> list[GoBinary]:
    """Every (toolchain, mode, variant) build of ``source_dir`` for ``arch``, oldest toolchain first."""
    out: list[GoBinary] = []
    for tc in find_toolchains() if toolchains is None else toolchains:
        for mode in modes:
            full = build_one(tc, source_dir, mode, "full", arch, cgo)
            for variant in variants:
                path = full if variant == "full" else build_one(tc, source_dir, mode, variant, arch, cgo)
                out.append(GoBinary(tc, mode, variant, path, full, arch, cgo))
    return out
