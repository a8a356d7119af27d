"""Independent answers to "what is at PC x" for the symbolizer tests.

Two oracles that share no code with agent/gobinary:

- ``go_addr2line``: Go's own ``go tool addr2line`` (debug/gosym over
  pclntab). One frame per PC: the *physical* function's name with the
  *innermost* inlined frame's file:line (that is how gosym's PCToLine works).
- ``llvm_inlines``: ``llvm-symbolizer --inlining`` over the DWARF the Go
  linker writes, normalised to what a pclntab-based symbolizer prints: the
  whole inline chain, innermost first.

and ``sample_pcs`` to choose the PCs to ask about; ``go_pprof_top`` reads
profiles back the way a Go engineer would.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from agent.lab.gotoolchain import GoToolchain, find_toolchains
from tests.support.gobuild import go_env

TIMEOUT_S = 300


def _pc_lines(pcs: list[int]) -> str:
    # Always 0x-prefixed: llvm-symbolizer reads a bare "529bc0" as a symbol
    # name, not an address, and echoes it back; Go's addr2line accepts both.
    return "".join(f"{pc:#x}\n" for pc in pcs)


# --------------------------------------------------------------------------- go tool addr2line


def addr2line_toolchain(built_by: GoToolchain, mode: str) -> GoToolchain:
    """The toolchain whose ``go tool addr2line`` can read a binary built by ``built_by`` in ``mode``.

    The same toolchain, except Go 1.19 PIE: 1.19's cmd/internal/objfile only
    looks for a ``.gopclntab`` section, and a PIE keeps it in
    ``.data.rel.ro.gopclntab``, so 1.19's addr2line prints "?" for every PC.
    From Go 1.20 objfile also tries ``.data.rel.ro.gopclntab``, and every
    newer debug/gosym reads the Go 1.18 pclntab format 1.19 writes; use the
    oldest such toolchain.
    """
    if mode != "pie" or built_by.minor >= (1, 20):
        return built_by
    for tc in find_toolchains():
        if tc.minor >= (1, 20):
            return tc
    return built_by


def go_addr2line(go_tool: GoToolchain, binary: Path, pcs: list[int]) -> list[tuple[str, str]]:
    """``(function, "file:line")`` for each PC, in order, exactly as ``go tool addr2line`` prints them.

    Addresses are link-time addresses (ELF virtual addresses), for PIE too: the
    tool never relocates. What it prints:

    - a PC in a function: ``(name, "/abs/file.go:N")`` with the physical
      function's name and the innermost inlined frame's file and line;
    - a PC in the padding after a function's last instruction (before the
      next one's entry): ``(name, ":-1")``: gosym attributes padding to the
      preceding function but its pc-line table has no entry there;
    - a PC outside the text pclntab covers: ``("?", "?:0")``.

    It takes the text start from the ``.text`` section, not from pclntab's
    runtime.text: right for every internally linked test binary, shifted for
    an externally linked (cgo) one whose .text begins with C start-up code
    (Debian's /usr/bin/prometheus: .text 0x402340, runtime.text 0x402440;
    addr2line's answers there are off by 0x100). Don't use it as the oracle
    for such binaries.

    Go 1.25+ ship no prebuilt addr2line: ``go tool`` builds it on first use
    (into GOCACHE, offline), so the first call takes a few seconds.
    """
    if not pcs:
        return []
    proc = subprocess.run(
        [str(go_tool.go), "tool", "addr2line", str(binary)],
        input=_pc_lines(pcs),
        capture_output=True,
        text=True,
        env=go_env(go_tool),
        timeout=TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"go tool addr2line {binary} failed ({proc.returncode}): {proc.stderr.strip()}")
    lines = proc.stdout.splitlines()
    if len(lines) != 2 * len(pcs):
        raise RuntimeError(f"go tool addr2line printed {len(lines)} lines for {len(pcs)} PCs")
    # One PC in, exactly two lines out, in input order (a sequential scanner loop).
    return [(lines[2 * i], lines[2 * i + 1]) for i in range(len(pcs))]


# --------------------------------------------------------------------------- llvm-symbolizer


_BUILDINFO_MAGIC = b"\xff Go buildinf:"


def go_version(binary: Path) -> tuple[int, int, int]:
    """The Go version that built ``binary``, from .go.buildinfo (Go 1.18+ inline-string layout).

    Deliberately not agent/gobinary/buildinfo.py: the oracle shares no code
    with what it checks.
    """
    with open(binary, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".go.buildinfo")
        if sec is None:
            raise RuntimeError(f"{binary}: no .go.buildinfo section")
        data = sec.data()
    if not data.startswith(_BUILDINFO_MAGIC) or not data[15] & 2:
        raise RuntimeError(f"{binary}: not a Go 1.18+ build info blob")
    n, pos, shift = 0, 32, 0
    while True:  # uvarint length of the version string
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    m = re.match(r"go(\d+)\.(\d+)(?:\.(\d+))?", data[pos : pos + n].decode())
    if m is None:
        raise RuntimeError(f"{binary}: unparsable Go version {data[pos : pos + n]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def llvm_symbolizer() -> str | None:
    return shutil.which("llvm-symbolizer")


def llvm_inlines(binary: Path, pcs: list[int]) -> list[list[tuple[str, str, int]]]:
    """Inline chains from DWARF, innermost first, as ``(function, file, line)``.

    ``[]`` for a PC where DWARF has no line (outside every compile unit, in
    padding, or a row with line 0): such PCs can't be checked against this
    oracle. ``binary`` must carry DWARF (a "full" build).
    """
    if not pcs:
        return []
    exe = llvm_symbolizer()
    if exe is None:
        raise RuntimeError("llvm-symbolizer not found")
    proc = subprocess.run(
        [
            exe,
            "--inlining",
            "--output-style=LLVM",
            "--no-demangle",
            "--functions=linkage",
            f"--obj={binary}",
        ],
        input=_pc_lines(pcs),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"llvm-symbolizer {binary} failed ({proc.returncode}): {proc.stderr.strip()}")
    blocks = parse_llvm_blocks(proc.stdout)
    if len(blocks) != len(pcs):
        raise RuntimeError(f"llvm-symbolizer printed {len(blocks)} blocks for {len(pcs)} PCs")
    elide = go_version(binary)[:2] < (1, 21)
    return [normalise_chain(b, elide) for b in blocks]


def parse_llvm_blocks(text: str) -> list[list[tuple[str, str, int]]]:
    """Split LLVM-style output into per-PC blocks of raw ``(function, file, line)``.

    Each PC's block is pairs of lines (function, ``file:line:column``),
    innermost first, ended by one empty line.
    """
    blocks: list[list[tuple[str, str, int]]] = []
    cur: list[str] = []
    for line in text.split("\n"):
        if line == "":
            if cur:
                blocks.append(_frames(cur))
                cur = []
            continue
        cur.append(line)
    if cur:
        blocks.append(_frames(cur))
    return blocks


def _frames(lines: list[str]) -> list[tuple[str, str, int]]:
    if len(lines) % 2:
        raise RuntimeError(f"odd llvm-symbolizer block: {lines!r}")
    out = []
    for fn, loc in zip(lines[::2], lines[1::2], strict=True):
        # file:line:column; the file itself never contains ':' here (absolute
        # Linux paths or "??"), so split from the right.
        file, line, _col = loc.rsplit(":", 2)
        out.append((fn, file, int(line)))
    return out


def normalise_chain(frames: list[tuple[str, str, int]], elide_type_args: bool = False) -> list[tuple[str, str, int]]:
    """DWARF's view of one PC turned into pclntab's view: every rule is in the helpers below."""
    if not frames or any(line == 0 or file == "??" for _, file, line in frames):
        # No line: "??:0" outside every CU (ELF headers, data), or a name from
        # .symtab with line 0 (llvm-symbolizer falls back to the ELF symbol
        # table for padding and data: "go:string.* go.go:0"), or a row with
        # line 0 (1.23+ emit line-0 rows at the entry of some
        # <autogenerated> functions, where pclntab says <autogenerated>:1).
        # Nothing to compare: the caller skips these PCs.
        return []
    return [(normalise_function(fn, elide_type_args), normalise_file(file), line) for fn, file, line in frames]


_ABI0 = ".abi0"


def normalise_function(name: str, elide_type_args: bool = False) -> str:
    """A DWARF subprogram name as pclntab spells it."""
    # Assembly functions (and their ABI wrappers) are named "pkg.f.abi0" in
    # DWARF and .symtab, the linker's ABI-qualified symbol name; pclntab's
    # funcnametab stores the plain Go name "pkg.f".
    if name.endswith(_ABI0):
        name = name[: -len(_ABI0)]
    # Go 1.18-1.20 linkers write generic names to funcnametab with everything
    # from the first '[' to the last ']' replaced by "[...]" (ld/pcln.go
    # nameParts), while DWARF keeps the full instantiation
    # ("main.Map[go.shape.int_0,go.shape.string_1]" -> "main.Map[...]";
    # "type..eq.[7]internal/cpu.option" -> "type..eq.[...]internal/cpu.option").
    # From Go 1.21 funcnametab holds full names and only the runtime's
    # traceback printer elides them. (Go 1.20 itself is not in the matrix.)
    if elide_type_args:
        name = elide_generic(name)
    return name


def elide_generic(name: str) -> str:
    """Go 1.18-1.20's funcnametab spelling of ``name`` (same algorithm as the linker)."""
    i = name.find("[")
    j = name.rfind("]")
    if i < 0 or j <= i:
        return name
    return name[:i] + "[...]" + name[j + 1 :]


_AUTOGEN = "<autogenerated>"


def normalise_file(file: str) -> str:
    """A DWARF file name as pclntab spells it."""
    # Compiler-generated code (wrappers, type..eq functions, -fm method
    # values, ABI wrappers) has file "<autogenerated>" line 1 in pclntab. The
    # DWARF line table joins it with the CU's comp_dir "." and llvm-symbolizer
    # prints "./<autogenerated>" (Go 1.19-1.23) or "././<autogenerated>"
    # (Go 1.25+, DWARF 5: the file's directory entry is "." and the comp_dir
    # is "." too).
    if file.endswith("/" + _AUTOGEN) and set(file[: -len(_AUTOGEN)]) <= {".", "/"}:
        return _AUTOGEN
    return file


def same_function(ours: str, oracle: str) -> bool:
    """Compare a pclntab name with an oracle's name, up to the one spelling no rule can undo.

    Types declared inside a function get a "·N" suffix in pclntab
    ("type:.eq.runtime.untracedG·4"); DWARF spells it with a plain dot
    ("type:.eq.runtime.untracedG.4"), which is indistinguishable from a
    closure suffix ("main.f.func1.4"), so the oracle can't restore it.
    """
    return ours.replace("·", ".") == oracle.replace("·", ".")


# --------------------------------------------------------------------------- PCs to ask about


@dataclass(frozen=True)
class TextFunc:
    start: int
    size: int
    name: str  # the .symtab name: ".abi0" suffixes and full generic names, as DWARF

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class TextLayout:
    text_start: int
    text_end: int
    first_load: int  # lowest PT_LOAD vaddr: [first_load, text_start) is ELF headers, never code
    funcs: list[TextFunc]  # sorted by start, non-empty functions inside .text

    def function_at(self, pc: int) -> TextFunc | None:
        """The function whose [start, start+size) holds pc (None in padding and outside text)."""
        i = bisect.bisect_right(self._starts, pc) - 1
        if i >= 0 and pc < self.funcs[i].end:
            return self.funcs[i]
        return None

    @cached_property
    def _starts(self) -> list[int]:
        return [f.start for f in self.funcs]


def text_layout(binary_unstripped: Path) -> TextLayout:
    """Function ranges from the ELF symbol table (STT_FUNC with a size, in .text)."""
    with open(binary_unstripped, "rb") as f:
        elf = ELFFile(f)
        text_index = next((i for i, s in enumerate(elf.iter_sections()) if s.name == ".text"), None)
        symtab = elf.get_section_by_name(".symtab")
        if text_index is None or not isinstance(symtab, SymbolTableSection):
            raise RuntimeError(f"{binary_unstripped}: needs .text and .symtab (use an unstripped build)")
        text = elf.get_section(text_index)
        first_load = min(seg["p_vaddr"] for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD")
        by_start: dict[int, TextFunc] = {}
        for sym in symtab.iter_symbols():
            if (
                sym["st_info"]["type"] == "STT_FUNC"
                and sym["st_shndx"] == text_index
                and sym["st_size"] > 0
                and sym["st_value"] not in by_start
            ):
                by_start[sym["st_value"]] = TextFunc(sym["st_value"], sym["st_size"], sym.name)
        return TextLayout(
            text_start=text["sh_addr"],
            text_end=text["sh_addr"] + text["sh_size"],
            first_load=first_load,
            funcs=sorted(by_start.values(), key=lambda t: t.start),
        )


def sample_pcs(binary_unstripped: Path, count: int, seed: int) -> list[int]:
    """``count`` distinct link-time PCs, sorted, the same for the same (binary, seed).

    About 2% lie outside every function: in the ELF headers before .text,
    in the inter-function padding (Go aligns entries to 32 bytes and fills
    with int3), and past the last function. The rest cover functions evenly
    (round-robin over a seeded shuffle, so every function is hit once
    before any is hit twice): each function's entry and last byte first,
    then random bytes inside. Use ``text_layout(...).function_at(pc)`` to
    tell which is which.
    """
    layout = text_layout(binary_unstripped)
    rnd = random.Random(seed)
    chosen: set[int] = set()

    gaps = [(a.end, b.start) for a, b in itertools.pairwise(layout.funcs) if b.start > a.end]
    outside_ranges = [(layout.first_load, layout.text_start), *gaps]
    last_end = layout.funcs[-1].end
    outside_ranges.append((last_end, last_end + 64))
    n_outside = min(max(count // 50, 3), count)
    # Always the extremes (first header byte, last byte before .text), then random gaps.
    for pc in (layout.first_load, layout.text_start - 1, last_end):
        if len(chosen) < n_outside:
            chosen.add(pc)
    while len(chosen) < n_outside:
        lo, hi = rnd.choice(outside_ranges)
        chosen.add(rnd.randrange(lo, hi))

    funcs = list(layout.funcs)
    rnd.shuffle(funcs)
    # Pass 0: entries; pass 1: last bytes; later passes: random interior bytes.
    # A function with fewer distinct bytes than passes is simply skipped there.
    passes = 0
    while len(chosen) < count:
        before = len(chosen)
        for fn in funcs:
            if len(chosen) >= count:
                break
            if passes == 0:
                pc = fn.start
            elif passes == 1:
                pc = fn.end - 1
            else:
                pc = fn.start + rnd.randrange(fn.size)
            chosen.add(pc)
        passes += 1
        if len(chosen) == before and passes > 64:
            break  # every byte of every function is already chosen
    return sorted(chosen)


def go_pprof_top(go_tool: GoToolchain, profile: Path, *args: str) -> str:
    """``go tool pprof -top`` of a profile file (its stdout); fails the test on a non-zero exit."""
    top = subprocess.run(
        [str(go_tool.go), "tool", "pprof", "-top", *args, str(profile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "GOTOOLCHAIN": "local", "PPROF_TMPDIR": str(profile.parent)},
    )
    assert top.returncode == 0, top.stderr
    return top.stdout
