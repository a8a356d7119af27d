"""The test-binary build matrix and the symbolization oracles (tests/gobuild.py, tests/oracles.py).

The symbolizer tests trust these helpers, so they are checked here against
each other and against the ELF files: 5 toolchains x {exe, pie} x {full,
strip, sw}, Go's addr2line against llvm-symbolizer on thousands of PCs.
"""

from __future__ import annotations

import itertools
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from agent.lab.gotoolchain import GoToolchain, find_toolchain
from tests.support.capabilities import need
from tests.support.gobuild import MODES, SYMTEST, VARIANTS, GoBinary, build_matrix, build_one, source_hash
from tests.support.oracles import (
    addr2line_toolchain,
    elide_generic,
    go_addr2line,
    go_version,
    llvm_inlines,
    llvm_symbolizer,
    normalise_chain,
    normalise_file,
    normalise_function,
    parse_llvm_blocks,
    same_function,
    sample_pcs,
    text_layout,
)

GOSYM_REF = Path(__file__).resolve().parents[2] / "benchmarks" / "gosym_ref"
EXPECTED_MINORS = [(1, 19), (1, 21), (1, 23), (1, 25), (1, 27)]
CHECKSUM_RE = re.compile(r"^symtest checksum ([0-9a-f]{16})$")

pytestmark = [pytest.mark.gotoolchain]


def _toolchains() -> list[GoToolchain]:
    found = {m: find_toolchain(m) for m in EXPECTED_MINORS}
    absent = [f"go{a}.{b}" for (a, b), tc in found.items() if tc is None]
    need(not absent, f"Go toolchains {', '.join(absent)} (scripts/setup.sh installs them)")
    return [tc for tc in found.values() if tc is not None]


@pytest.fixture(scope="module")
def matrix() -> list[GoBinary]:
    toolchains = _toolchains()
    need(shutil.which("strip") is not None, "binutils strip (apt-get install binutils)")
    return build_matrix(SYMTEST, toolchains)


@pytest.fixture(scope="module")
def full_builds(matrix: list[GoBinary]) -> list[GoBinary]:
    return [b for b in matrix if b.variant == "full"]


@pytest.fixture(scope="module")
def llvm() -> str:
    exe = llvm_symbolizer()
    need(exe is not None, "llvm-symbolizer (apt-get install llvm)")
    assert exe is not None
    return exe


def _sections(path: Path) -> set[str]:
    with open(path, "rb") as f:
        return {s.name for s in ELFFile(f).iter_sections()}


def _pclntab_magic(path: Path) -> int:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        sec = elf.get_section_by_name(".gopclntab") or elf.get_section_by_name(".data.rel.ro.gopclntab")
        assert sec is not None, f"{path}: no pclntab section"
        magic: int = struct.unpack_from("<I", sec.data())[0]
        return magic


def _elf_type(path: Path) -> str:
    with open(path, "rb") as f:
        t: str = ELFFile(f)["e_type"]
        return t


# --------------------------------------------------------------------------- the matrix


@pytest.mark.slow
def test_matrix_has_every_toolchain_mode_and_variant(matrix: list[GoBinary]) -> None:
    assert len(matrix) == 30
    got = {(b.toolchain.minor, b.mode, b.variant) for b in matrix}
    assert got == set(itertools.product(EXPECTED_MINORS, MODES, VARIANTS))
    assert len({b.path for b in matrix}) == 30
    for b in matrix:
        assert b.path.is_file()
        full = next(x for x in matrix if (x.toolchain, x.mode, x.variant) == (b.toolchain, b.mode, "full"))
        assert b.unstripped == full.path
        assert (b.path == b.unstripped) == (b.variant == "full")


def test_elf_shape_of_every_build(matrix: list[GoBinary]) -> None:
    for b in matrix:
        sections = _sections(b.path)
        assert _elf_type(b.path) == ("ET_DYN" if b.mode == "pie" else "ET_EXEC"), b.label
        # Both strip and -s -w drop the symbol table and DWARF...
        assert (".symtab" in sections) == (b.variant == "full"), b.label
        assert (".debug_info" in sections) == (b.variant == "full"), b.label
        # ...and keep what a pclntab symbolizer needs.
        assert sections & {".gopclntab", ".data.rel.ro.gopclntab"}, b.label
        assert ".note.go.buildid" in sections, b.label
        # 1.19 writes the Go 1.18 pclntab layout; 1.20+ the 1.20 one.
        expected_magic = 0xFFFFFFF0 if b.toolchain.minor < (1, 20) else 0xFFFFFFF1
        assert _pclntab_magic(b.path) == expected_magic, b.label
        assert go_version(b.path) == b.toolchain.version, b.label


def test_every_build_runs_and_agrees_on_the_checksum(matrix: list[GoBinary]) -> None:
    sums = {}
    for b in matrix:
        proc = subprocess.run([str(b.path), "-n", "50"], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"{b.label}: {proc.stderr}"
        m = CHECKSUM_RE.match(proc.stdout.strip())
        assert m, f"{b.label}: {proc.stdout!r}"
        sums[b.label] = m.group(1)
    # The program is deterministic, so every toolchain and mode computes the same.
    assert len(set(sums.values())) == 1, sums


def test_spin_burns_cpu_for_the_requested_time(matrix: list[GoBinary]) -> None:
    b = matrix[-1]
    start = time.monotonic()
    proc = subprocess.run([str(b.path), "-spin", "0.4"], capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "spun 0.4s" in proc.stderr
    assert elapsed >= 0.4
    assert CHECKSUM_RE.match(proc.stdout.strip())


def test_builds_are_cached(matrix: list[GoBinary]) -> None:
    b = next(x for x in matrix if x.variant == "strip")
    mtime = b.path.stat().st_mtime_ns
    start = time.monotonic()
    again = build_one(b.toolchain, SYMTEST, b.mode, b.variant)
    assert again == b.path
    assert again.stat().st_mtime_ns == mtime
    assert time.monotonic() - start < 2.0
    # No temporary files left behind by the builds.
    assert not list(b.path.parent.glob(".*.tmp"))


def test_source_hash_follows_content_and_location(tmp_path: Path) -> None:
    a = tmp_path / "a" / "prog"
    shutil.copytree(SYMTEST, a)
    b = tmp_path / "b" / "prog"
    shutil.copytree(SYMTEST, b)
    h = source_hash(a)
    assert source_hash(a) == h
    assert source_hash(b) != h  # the path is compiled into the binary, so it is part of the key
    (a / "extra.go").write_text("package main\n")
    assert source_hash(a) != h


def test_unknown_mode_is_refused() -> None:
    tc = find_toolchain()
    need(tc is not None, "a Go toolchain")
    assert tc is not None
    with pytest.raises(ValueError):
        build_one(tc, SYMTEST, "c-shared", "full")


# --------------------------------------------------------------------------- oracles on real binaries


def _main_main(b: GoBinary) -> int:
    fn = next(f for f in text_layout(b.unstripped).funcs if f.name == "main.main")
    return fn.start


def test_oracles_on_main_main_entry(matrix: list[GoBinary], llvm: str) -> None:
    for b in matrix:
        pc = _main_main(b)
        [(name, fileline)] = go_addr2line(addr2line_toolchain(b.toolchain, b.mode), b.path, [pc])
        assert name == "main.main", b.label
        file, line = fileline.rsplit(":", 1)
        assert file.endswith("symtest/main.go"), b.label
        assert int(line) > 0
        [chain] = llvm_inlines(b.unstripped, [pc])
        assert chain == [("main.main", file, int(line))], b.label


def test_go119_addr2line_cannot_read_pie(matrix: list[GoBinary]) -> None:
    """Why addr2line_toolchain exists: Go 1.19's objfile only knows ".gopclntab"."""
    b = next(x for x in matrix if x.toolchain.minor == (1, 19) and x.mode == "pie" and x.variant == "full")
    pc = _main_main(b)
    assert go_addr2line(b.toolchain, b.path, [pc]) == [("?", "?:0")]
    newer = addr2line_toolchain(b.toolchain, b.mode)
    assert newer.minor >= (1, 20)
    assert go_addr2line(newer, b.path, [pc])[0][0] == "main.main"
    exe = next(x for x in matrix if x.toolchain.minor == (1, 19) and x.mode == "exe")
    assert addr2line_toolchain(exe.toolchain, "exe") == exe.toolchain


def test_stripped_builds_symbolize_like_full_ones(matrix: list[GoBinary]) -> None:
    """pclntab survives strip: addr2line gives the same answers on all three variants."""
    by_key = {(b.toolchain, b.mode, b.variant): b for b in matrix}
    for b in matrix:
        if b.variant != "full":
            continue
        pcs = sample_pcs(b.path, 300, seed=7)
        tool = addr2line_toolchain(b.toolchain, b.mode)
        want = go_addr2line(tool, b.path, pcs)
        for variant in ("strip", "sw"):
            # strip changes nothing loaded; -s -w is another link, but with
            # the same code layout: same addresses, same answers.
            other = by_key[(b.toolchain, b.mode, variant)]
            assert go_addr2line(tool, other.path, pcs) == want, other.label


def test_addr2line_and_llvm_symbolizer_agree(full_builds: list[GoBinary], llvm: str) -> None:
    """Two independent oracles, after normalisation, give the same physical function and innermost line."""
    for b in full_builds:
        layout = text_layout(b.path)
        pcs = sample_pcs(b.path, 3000, seed=11)
        a2l = go_addr2line(addr2line_toolchain(b.toolchain, b.mode), b.path, pcs)
        dwarf = llvm_inlines(b.path, pcs)
        compared = 0
        for pc, (fn, fileline), chain in zip(pcs, a2l, dwarf, strict=True):
            inside = layout.function_at(pc)
            if inside is None:
                # Outside every function: "?" before/after text, ":-1" in padding.
                assert fn == "?" or fileline == ":-1", (b.label, hex(pc), fn, fileline)
                assert chain == [], (b.label, hex(pc), chain)
                continue
            if not chain:
                continue  # DWARF has no line here (1.23+: entry of some <autogenerated> functions)
            compared += 1
            assert same_function(fn, chain[-1][0]), (b.label, hex(pc), fn, chain)
            inner_file, inner_line = chain[0][1], chain[0][2]
            assert fileline == f"{inner_file}:{inner_line}", (b.label, hex(pc), fileline, chain)
        inside_count = sum(layout.function_at(pc) is not None for pc in pcs)
        assert compared >= 0.85 * inside_count, (b.label, compared, inside_count)


def test_llvm_inlines_shows_deep_cross_package_inlining(full_builds: list[GoBinary], llvm: str) -> None:
    for b in full_builds:
        step = next(f for f in text_layout(b.path).funcs if f.name == "main.(*worker).step")
        chains = {tuple(fr[0] for fr in c) for c in llvm_inlines(b.path, list(range(step.start, step.end)))}
        assert (
            "nodeagent.test/symtest/mathx.Rotl",
            "nodeagent.test/symtest/mathx.Mix",
            "main.crossFileInline",
            "main.(*worker).step",
        ) in chains, b.label
        hot = next(f for f in text_layout(b.path).funcs if f.name == "main.hotLoop")
        chains = {tuple(fr[0] for fr in c) for c in llvm_inlines(b.path, list(range(hot.start, hot.end)))}
        assert ("main.leafInline", "main.midInline", "main.outerInline", "main.hotLoop") in chains, b.label


def test_sample_pcs(full_builds: list[GoBinary]) -> None:
    b = full_builds[-1]
    layout = text_layout(b.path)
    n = 2 * len(layout.funcs) + 200
    pcs = sample_pcs(b.path, n, seed=3)
    assert len(pcs) == n
    assert pcs == sorted(set(pcs))
    assert pcs == sample_pcs(b.path, n, seed=3)
    assert pcs != sample_pcs(b.path, n, seed=4)
    chosen = set(pcs)
    # Big enough a sample holds every entry and every last byte.
    assert all(f.start in chosen and f.end - 1 in chosen for f in layout.funcs)
    outside = [pc for pc in pcs if layout.function_at(pc) is None]
    assert len(outside) >= n // 50
    assert any(pc < layout.text_start for pc in outside)
    assert any(layout.text_start <= pc < layout.funcs[-1].end for pc in outside)  # padding
    small = sample_pcs(b.path, 100, seed=3)
    assert len(small) == 100


def test_gosym_ref_agrees_with_addr2line(full_builds: list[GoBinary], tmp_path: Path) -> None:
    """The benchmark's anchor answers like `go tool addr2line` on internally linked binaries."""
    newest = full_builds[-1].toolchain
    ref = build_one(newest, GOSYM_REF, "exe", "full")
    line_re = re.compile(r"^(.*:-?\d+) (.+)$")
    for b in full_builds:
        pcs = sample_pcs(b.path, 500, seed=5)
        pcfile = tmp_path / "pcs.txt"
        pcfile.write_text("".join(f"{pc:#x}\n" for pc in pcs))
        out = subprocess.run(
            [str(ref), str(b.path), str(pcfile)], capture_output=True, text=True, timeout=60, check=True
        ).stdout.splitlines()
        got = []
        for line in out:
            m = line_re.match(line)
            assert m, line
            got.append((m.group(2), m.group(1)))
        assert got == go_addr2line(addr2line_toolchain(b.toolchain, b.mode), b.path, pcs), b.label


# --------------------------------------------------------------------------- normalisation rules


@pytest.mark.parametrize(
    ("dwarf", "elide", "pclntab"),
    [
        ("main.main", False, "main.main"),
        ("runtime.morestack.abi0", False, "runtime.morestack"),
        ("runtime.abi0x", False, "runtime.abi0x"),
        ("main.Map[go.shape.int,go.shape.string]", False, "main.Map[go.shape.int,go.shape.string]"),
        ("main.Map[go.shape.int_0,go.shape.string_1]", True, "main.Map[...]"),
        ("main.(*Stack[go.shape.string_0]).Pop", True, "main.(*Stack[...]).Pop"),
        ("main.Stack[int].Len", True, "main.Stack[...].Len"),
        ("type..eq.[7]internal/cpu.option", True, "type..eq.[...]internal/cpu.option"),
        ("sync/atomic.Pointer[a.node[interface {},interface {}]]", True, "sync/atomic.Pointer[...]"),
        ("main.closureWork.func2.1.1", True, "main.closureWork.func2.1.1"),
    ],
)
def test_normalise_function(dwarf: str, elide: bool, pclntab: str) -> None:
    assert normalise_function(dwarf, elide) == pclntab


def test_elide_generic_matches_the_linker_on_odd_brackets() -> None:
    assert elide_generic("a]b[c") == "a]b[c"
    assert elide_generic("f[") == "f["


@pytest.mark.parametrize(
    ("dwarf", "pclntab"),
    [
        ("./<autogenerated>", "<autogenerated>"),
        ("././<autogenerated>", "<autogenerated>"),
        ("/work/x/main.go", "/work/x/main.go"),
        ("/work/<autogenerated>", "/work/<autogenerated>"),
    ],
)
def test_normalise_file(dwarf: str, pclntab: str) -> None:
    assert normalise_file(dwarf) == pclntab


LLVM_OUTPUT = """\
main.midInline
/src/inline.go:13:0
main.outerInline
/src/inline.go:17:0
main.hotLoop
/src/main.go:59:0

??
??:0:0

go:string.*
go.go:0:0

runtime.badmcall.abi0
././<autogenerated>:1:0

slices.pdqsortCmpFunc[go.shape.struct { a string; b []int }]
/go/src/slices/zsortanyfunc.go:108:0

"""


def test_parse_and_normalise_llvm_output() -> None:
    blocks = parse_llvm_blocks(LLVM_OUTPUT)
    assert len(blocks) == 5
    chains = [normalise_chain(b) for b in blocks]
    assert chains[0] == [
        ("main.midInline", "/src/inline.go", 13),
        ("main.outerInline", "/src/inline.go", 17),
        ("main.hotLoop", "/src/main.go", 59),
    ]
    assert chains[1] == []  # outside DWARF
    assert chains[2] == []  # .symtab fallback with line 0
    assert chains[3] == [("runtime.badmcall", "<autogenerated>", 1)]
    assert chains[4] == [
        ("slices.pdqsortCmpFunc[go.shape.struct { a string; b []int }]", "/go/src/slices/zsortanyfunc.go", 108)
    ]
    assert normalise_chain(blocks[4], elide_type_args=True)[0][0] == "slices.pdqsortCmpFunc[...]"


def test_same_function_ignores_middle_dot() -> None:
    assert same_function("type:.eq.runtime.untracedG·4", "type:.eq.runtime.untracedG.4")
    assert not same_function("main.f", "main.g")
