"""Live GOMAXPROCS of arm64 Go binaries: the address of ``runtime.gomaxprocs`` in stripped builds.

Matrix: every supported toolchain (1.19 ... 1.27) x {exe, pie} x {full,
strip, -s -w} x {pure Go, cgo (external link with aarch64-linux-gnu-gcc)},
cross-compiled with GOARCH=arm64 (tests/gobuild.py).

Oracles, none sharing code with agent/gobinary:
- ``go tool nm`` on the unstripped twin: a ``strip``ped copy keeps every
  address, so the address found in its code must equal the twin's symbol;
- a ``-s -w`` build is another link, whose data may sit a few bytes off the
  twin's (build info records the flags): there the address must fall in the
  section of the same name at the same offset as the twin's symbol (pyelftools);
- and, for every build, the program itself: run under qemu-aarch64-static, the
  int32 read from the emulated process's memory at the recovered address must
  be what ``runtime.GOMAXPROCS(0)`` says, before and after the program changes it.
  qemu-user keeps guest memory at a fixed offset in its own address space and
  maps the guest's ELF file there, so the binary's lines in /proc/PID/maps give
  the bias exactly as they do for a native process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from agent.analysis.gomaxprocs import read_live
from agent.gobinary.globals import gomaxprocs_address
from agent.gobinary.symbolizer import GoBinary as ParsedBinary
from agent.host.procfs import ProcFS, parse_maps
from agent.lab.gotoolchain import GoToolchain, find_toolchains
from tests.support import gobuild
from tests.support.capabilities import need
from tests.support.maxprocs import MaxprocsClient, talking_to

MAXPROCS = Path(__file__).resolve().parents[1] / "goprogs" / "maxprocs"
EXPECTED_MINORS = [(1, 19), (1, 21), (1, 23), (1, 25), (1, 27)]
QEMU = "qemu-aarch64-static"
ARM64_SYSROOT = Path("/usr/aarch64-linux-gnu")  # libc6-arm64-cross: ld-linux-aarch64.so.1 for PIE and cgo builds
REPLY_TIMEOUT_S = 60.0  # emulated start-up on a busy 2-CPU machine

pytestmark = [pytest.mark.gotoolchain]


def _toolchain(minor: tuple[int, int]) -> GoToolchain:
    found = [t for t in find_toolchains() if t.minor == minor]
    need(bool(found), f"Go {minor[0]}.{minor[1]} toolchain (run scripts/setup.sh)")
    return found[-1]


def _build(minor: tuple[int, int], mode: str, variant: str, cgo: bool) -> gobuild.GoBinary:
    need(gobuild.find_strip("arm64") is not None, "aarch64-linux-gnu-strip or llvm-strip (scripts/setup.sh)")
    if cgo:
        need(shutil.which(gobuild.CC["arm64"]) is not None, "aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)")
    tc = _toolchain(minor)
    full = gobuild.build_one(tc, MAXPROCS, mode, "full", "arm64", cgo)
    path = gobuild.build_one(tc, MAXPROCS, mode, variant, "arm64", cgo)
    return gobuild.GoBinary(tc, mode, variant, path, full, "arm64", cgo)


def nm_symbol(tc: GoToolchain, binary: Path, name: str) -> int:
    """The symbol's address as ``go tool nm`` prints it."""
    out = subprocess.run(
        [str(tc.go), "tool", "nm", str(binary)],
        capture_output=True,
        text=True,
        env=gobuild.go_env(tc),
        timeout=120,
        check=True,
    ).stdout
    found = [int(f[0], 16) for line in out.splitlines() if len(f := line.split()) == 3 and f[2] == name]
    assert len(found) == 1, f"{binary}: {name} in go tool nm: {found}"
    return found[0]


def section_offset(binary: Path, addr: int) -> tuple[str, int]:
    """(name, offset) of the allocated section holding ``addr``, by pyelftools."""
    with open(binary, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            start, size = sec["sh_addr"], sec["sh_size"]
            if start and start <= addr < start + size:
                return sec.name, addr - start
    raise AssertionError(f"{binary}: no section holds {addr:#x}")


def symbol_names(binary: Path) -> set[str]:
    with open(binary, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        return {sym.name for sym in symtab.iter_symbols()}


def elf_symbol(binary: Path, name: str) -> int:
    with open(binary, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        [sym] = symtab.get_symbol_by_name(name) or []
        return int(sym["st_value"])


# ---- running an arm64 program here --------------------------------------------------------


@contextlib.contextmanager
def run_emulated(binary: Path, gomaxprocs: int) -> Iterator[MaxprocsClient]:
    """``binary`` under qemu-aarch64-static (directly, no binfmt_misc needed), killed on every exit path."""
    need(shutil.which(QEMU) is not None, f"{QEMU} (apt-get install qemu-user-static)")
    need((ARM64_SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists(), "arm64 loader (apt-get install libc6-arm64-cross)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GO", "QEMU_"))}
    env.update(GOMAXPROCS=str(gomaxprocs), QEMU_LD_PREFIX=str(ARM64_SYSROOT))
    proc = subprocess.Popen(
        [shutil.which(QEMU) or QEMU, str(binary)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with talking_to(proc, REPLY_TIMEOUT_S) as emu:
        yield emu


# ---- the matrix ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("cgo", [False, True], ids=["nocgo", "cgo"])
@pytest.mark.parametrize("variant", gobuild.VARIANTS)
@pytest.mark.parametrize("mode", gobuild.MODES)
@pytest.mark.parametrize("minor", EXPECTED_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_arm64_gomaxprocs_address(minor: tuple[int, int], mode: str, variant: str, cgo: bool) -> None:
    b = _build(minor, mode, variant, cgo)
    parsed = ParsedBinary.open(b.path)
    assert parsed.image.machine == "EM_AARCH64"
    assert parsed.image.is_pie == (mode == "pie")
    if cgo:
        # Really an external (cgo) link: glibc's start-up code calls into the program.
        assert any(n.startswith("__libc_start_main") for n in symbol_names(b.unstripped)), b.label
    found = gomaxprocs_address(parsed)
    assert found is not None, f"{b.label}: no address for runtime.gomaxprocs"
    address, how = found
    assert how == ("symbol" if variant == "full" else "code of runtime.GOMAXPROCS")
    twin_symbol = nm_symbol(b.toolchain, b.unstripped, "runtime.gomaxprocs")
    assert twin_symbol == elf_symbol(b.unstripped, "runtime.gomaxprocs")  # the two oracles agree
    if variant == "sw":
        assert section_offset(b.path, address) == section_offset(b.unstripped, twin_symbol), b.label
    else:
        assert address == twin_symbol, f"{b.label}: found {address:#x}, twin's symbol is {twin_symbol:#x}"

    # Live: the emulated program's own answer, read from its memory at that address.
    with run_emulated(b.path, gomaxprocs=3) as emu:
        assert emu.line() == "ready 3"
        maps = parse_maps(Path(f"/proc/{emu.proc.pid}/maps").read_text())
        own = [(m.start, m.offset) for m in maps if m.path == str(b.path)]
        assert own, f"{b.label}: the binary is not mapped by {QEMU}"
        bias = parsed.load_bias(own)
        assert bias is not None
        procfs = ProcFS()
        info = procfs.snapshot(emu.proc.pid)
        assert info is not None
        read = procfs.memory_reader(info.key)
        assert read_live(read, address + bias) == 3
        for n in (1, 7, 2):
            assert emu.ask(f"set {n}") == ("set", n)
            assert read_live(read, address + bias) == n == emu.ask("get")[1]


@pytest.mark.parametrize("cgo", [False, True], ids=["nocgo", "cgo"])
@pytest.mark.parametrize("minor", EXPECTED_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_arm64_builds_are_what_they_claim(minor: tuple[int, int], cgo: bool) -> None:
    """The cross builds are arm64 ELF files of the requested shape (pyelftools, not our ELF reader)."""
    for mode in gobuild.MODES:
        for variant in gobuild.VARIANTS:
            b = _build(minor, mode, variant, cgo)
            with open(b.path, "rb") as f:
                elf = ELFFile(f)
                assert elf["e_machine"] == "EM_AARCH64", b.label
                assert elf["e_type"] == ("ET_DYN" if mode == "pie" else "ET_EXEC"), b.label
                names = {s.name for s in elf.iter_sections()}
                assert (".symtab" in names) == (variant == "full"), b.label
                assert (".debug_info" in names) == (variant == "full"), b.label
                assert (".interp" in names) == (cgo or mode == "pie"), b.label  # PIE and cgo need ld-linux-aarch64
                pcln = elf.get_section_by_name(".gopclntab") or elf.get_section_by_name(".data.rel.ro.gopclntab")
                if pcln is not None:  # an external link may merge it into .data.rel.ro
                    header = pcln.data()[:8]
                    assert header[6] == 4, f"{b.label}: pclntab PC quantum {header[6]}"  # A64: 4-byte instructions
                    assert header[7] == 8, b.label  # pointer size
