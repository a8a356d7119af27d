"""`node-agent symbolize` against Go's own tools on real binaries.

Every installed toolchain (1.19 ... 1.27) x {exe, pie} x {full, strip, -s -w}:
thousands of PCs per binary must match `go tool addr2line` (run on the
unstripped twin) exactly, and `--inlines` must match llvm-symbolizer's DWARF
inline chains wherever DWARF has a line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.gobinary.elf import open_image
from agent.gobinary.symbolizer import GoBinary as ParsedBinary
from agent.lab.gotoolchain import GoToolchain, find_toolchains
from tests import gobuild, oracles
from tests.capabilities import need

EXPECTED_MINORS = [(1, 19), (1, 21), (1, 23), (1, 25), (1, 27)]
PCS_PER_BINARY = 12000  # ~4 per function: entry, last byte, and interior bytes


def _toolchain(minor: tuple[int, int]) -> GoToolchain:
    found = [t for t in find_toolchains() if t.minor == minor]
    need(bool(found), f"Go {minor[0]}.{minor[1]} toolchain (run scripts/setup.sh)")
    return found[-1]


def _binary(minor: tuple[int, int], mode: str, variant: str) -> gobuild.GoBinary:
    tc = _toolchain(minor)
    full = gobuild.build_one(tc, gobuild.SYMTEST, mode, "full")
    path = full if variant == "full" else gobuild.build_one(tc, gobuild.SYMTEST, mode, variant)
    return gobuild.GoBinary(tc, mode, variant, path, full)


def _text_bytes(path: Path) -> tuple[int, bytes]:
    img = open_image(path)
    sec = img.section(".text")
    assert sec is not None
    return sec.addr, img.section_data(sec)


def run_symbolize(binary: Path, pcs: list[int], *flags: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "symbolize", *flags, str(binary)],
        input="".join(f"{pc:x}\n" if i % 2 else f"0x{pc:x}\n" for i, pc in enumerate(pcs)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


@pytest.mark.gotoolchain
@pytest.mark.parametrize("variant", ["full", "strip", "sw"])
@pytest.mark.parametrize("mode", ["exe", "pie"])
@pytest.mark.parametrize("minor", EXPECTED_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_matches_go_addr2line(minor: tuple[int, int], mode: str, variant: str) -> None:
    b = _binary(minor, mode, variant)
    if variant == "strip":
        # `strip` keeps the code where it was, so the unstripped twin answers for it.
        assert _text_bytes(b.path) == _text_bytes(b.unstripped), "stripped copy's text differs from its twin"
        oracle_binary = b.unstripped
    else:
        # -s -w is a separate link: ask Go's addr2line (which reads pclntab, as we do) about that very binary.
        oracle_binary = b.path
    pcs = oracles.sample_pcs(b.unstripped, PCS_PER_BINARY, seed=minor[1] * 10 + len(mode))
    expected = oracles.go_addr2line(oracles.addr2line_toolchain(b.toolchain, mode), oracle_binary, pcs)
    lines = run_symbolize(b.path, pcs).splitlines()
    assert len(lines) == 2 * len(pcs)
    got = [(lines[2 * i], lines[2 * i + 1]) for i in range(len(pcs))]
    mismatches = [(hex(pc), e, g) for pc, e, g in zip(pcs, expected, got, strict=True) if e != g]
    assert not mismatches, f"{len(mismatches)}/{len(pcs)} differ, first: {mismatches[:5]}"
    # The sample must exercise real code, not only edge cases.
    assert sum(1 for f, _ in got if f.startswith("main.")) > 20
    assert sum(1 for f, _ in got if f == "?") >= 1


def _parse_inline_blocks(text: str) -> list[list[tuple[str, str, int]]]:
    blocks: list[list[tuple[str, str, int]]] = []
    cur: list[tuple[str, str, int]] = []
    for line in text.split("\n")[:-1]:
        if line == "":
            blocks.append(cur)
            cur = []
            continue
        fn, loc = line.split("\t")
        file, _, ln = loc.rpartition(":")
        cur.append((fn, file, int(ln)))
    return blocks


@pytest.mark.gotoolchain
@pytest.mark.parametrize("mode", ["exe", "pie"])
@pytest.mark.parametrize("minor", EXPECTED_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_inlines_match_dwarf(minor: tuple[int, int], mode: str) -> None:
    need(oracles.llvm_symbolizer() is not None, "llvm-symbolizer (Debian package llvm)")
    b = _binary(minor, mode, "strip")  # symbolize the stripped copy, compare with the twin's DWARF
    pcs = oracles.sample_pcs(b.unstripped, PCS_PER_BINARY, seed=7)
    expected = oracles.llvm_inlines(b.unstripped, pcs)
    got = _parse_inline_blocks(run_symbolize(b.path, pcs, "--inlines"))
    assert len(got) == len(pcs)
    checked = inlined = 0
    mismatches = []
    for pc, e, raw in zip(pcs, expected, got, strict=True):
        if not e:
            continue  # DWARF has no line here
        checked += 1
        inlined += len(e) > 1
        g = [(fn.replace("·", "."), file, line) for fn, file, line in raw]  # DWARF spells "·" as "."
        if e != g:
            mismatches.append((pc, e, g))
    assert checked > PCS_PER_BINARY // 2
    assert inlined > 500, "the sample should hit many inlined PCs"
    # Where DWARF and pclntab disagree, Go's own pclntab reader decides; each
    # tolerated divergence must be of a named kind, and rare.
    a2l = oracles.go_addr2line(
        oracles.addr2line_toolchain(b.toolchain, mode), b.unstripped, [pc for pc, _, _ in mismatches]
    )
    unexplained = [
        (hex(pc), e, g) for (pc, e, g), (fn, fl) in zip(mismatches, a2l, strict=True) if not _dwarf_quirk(e, g, fn, fl)
    ]
    assert not unexplained, f"{len(unexplained)}/{checked} differ, first: {unexplained[:3]}"
    assert len(mismatches) <= max(10, checked // 1000)


def _dwarf_quirk(
    dwarf: list[tuple[str, str, int]], ours: list[tuple[str, str, int]], a2l_func: str, a2l_pos: str
) -> bool:
    """Known ways the Go linker's DWARF differs from its pclntab (which the runtime itself uses)."""
    innermost_agrees = f"{ours[0][1]}:{ours[0][2]}" == a2l_pos and ours[-1][0] == a2l_func
    if not innermost_agrees:
        return False
    # 1. Line tables differ at some PCs (Go <= 1.19): same chain of functions, other line.
    if [f for f, _, _ in dwarf] == [f for f, _, _ in ours]:
        return all(d[1:] == o[1:] or o[1] == "<autogenerated>" for d, o in zip(dwarf[1:], ours[1:], strict=True)) or (
            len(ours) == 1
        )
    # 2. Inlining into compiler-generated wrappers has no DWARF inline entry (Go <= 1.19).
    return ours[-1][1] == "<autogenerated>" and dwarf[-1][0] == ours[-1][0] and len(dwarf) < len(ours)


@pytest.mark.gotoolchain
@pytest.mark.parametrize("minor", EXPECTED_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_info_and_identity(minor: tuple[int, int]) -> None:
    full = _binary(minor, "pie", "full")
    sw = _binary(minor, "pie", "sw")
    a, b = ParsedBinary.open(full.path), ParsedBinary.open(sw.path)
    info = a.info()
    assert info.go_version == full.toolchain.version_string
    assert info.is_pie and not info.automaxprocs
    assert info.functions > 1000
    assert a.go_build_id and a.identity.startswith("sha256:")  # content, never the declared build ID
    assert b.identity != a.identity
    assert b.go_build_id != a.go_build_id  # different links, different IDs
    out = subprocess.run(
        [sys.executable, "-m", "agent", "symbolize", "--info", str(sw.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"go version      {full.toolchain.version_string}" in out
    assert "automaxprocs    no" in out


def _build_cgo_pie(tc: GoToolchain) -> tuple[Path, Path]:
    """symtest as an externally linked (gcc) PIE, and its `strip`ped copy.

    The host linker's script merges `.data.rel.ro.gopclntab` into `.data.rel.ro`
    (Go <= 1.26), so a stripped copy has no section or symbol naming the table:
    only the header scan confirmed by moduledata finds it.
    """
    out = gobuild.testbins_dir() / f"symtest-cgo-{gobuild.source_hash(gobuild.SYMTEST)}" / tc.version_string
    full, stripped = out / "pie-ext", out / "pie-ext-strip"
    if not stripped.exists():
        out.mkdir(parents=True, exist_ok=True)
        env = {**gobuild.go_env(tc), "CGO_ENABLED": "1"}
        cmd = [str(tc.go), "build", "-buildmode=pie", "-buildvcs=false", "-ldflags=-linkmode=external", "-o", str(full)]
        proc = subprocess.run([*cmd, "."], cwd=gobuild.SYMTEST, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        subprocess.run(["strip", "-o", str(stripped), str(full)], check=True)
    return full, stripped


@pytest.mark.gotoolchain
@pytest.mark.parametrize("minor", [(1, 21), (1, 25), (1, 27)], ids=lambda m: f"go1.{m[1]}")
def test_externally_linked_stripped_pie(minor: tuple[int, int]) -> None:
    need(shutil.which("gcc") is not None, "gcc (cgo external linking)")
    need(oracles.llvm_symbolizer() is not None, "llvm-symbolizer (Debian package llvm)")
    tc = _toolchain(minor)
    full, stripped = _build_cgo_pie(tc)
    info = ParsedBinary.open(stripped).info()
    if minor < (1, 27):
        assert info.pclntab_location.startswith("scan of .data.rel.ro"), info.pclntab_location
    layout = oracles.text_layout(full)
    pcs = [
        pc
        for pc in oracles.sample_pcs(full, 6000, seed=3)
        if (fn := layout.function_at(pc)) is not None and "." in fn.name and "cgo" not in fn.name
    ]
    # Go's own tools read neither a merged table nor an external link's text start, so DWARF is the oracle.
    expected = oracles.llvm_inlines(full, pcs)
    got = _parse_inline_blocks(run_symbolize(stripped, pcs, "--inlines"))
    checked = differ = 0
    for e, raw in zip(expected, got, strict=True):
        if not e:
            continue
        checked += 1
        g = [(fn.replace("·", "."), file, line) for fn, file, line in raw]
        if g != e:
            differ += 1
            assert g and g[0][0] == e[0][0], (e, g)  # where the CPU was: always the same function
    assert checked > 3000
    assert differ <= max(10, checked // 500), f"{differ}/{checked} differ from DWARF"
