"""Category rules -> PC ranges (what the BPF program classifies with), against hand tables and `go tool nm`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.analysis.goruntime import Category, category_ranges, is_runtime_function
from agent.gobinary.symbolizer import GoBinary
from agent.lab.gotoolchain import find_toolchains
from tests.support.capabilities import need
from tests.support.gobuild import SYMTEST, build_one, go_env


def table(*funcs: tuple[str, int]) -> list[tuple[str, int, int]]:
    """(name, size) in address order from 0x1000 -> (name, entry, end)."""
    out, at = [], 0x1000
    for name, size in funcs:
        out.append((name, at, at + size))
        at += size
    return out


def test_adjacent_runtime_functions_merge_and_others_split_them() -> None:
    r = category_ranges(
        table(
            ("internal/abi.X", 0x10),
            ("runtime.a", 0x10),
            ("runtime.schedule", 0x20),
            ("runtime/internal/atomic.Load", 0x10),  # another package, between runtime functions
            ("runtime.gcBgMarkWorker", 0x30),
            ("runtime.b", 0x10),
            ("main.main", 0x40),
        )
    )
    assert r.text == (0x1000, 0x1000 + 0xD0)
    assert r.runtime == ((0x1010, 0x1040), (0x1050, 0x1090))
    assert r.hot == ((0x1020, 0x1040, Category.SCHEDULER), (0x1050, 0x1080, Category.GC))
    assert r.bridged == 0
    shifted = r.shifted(0x5000)
    assert shifted.runtime[0] == (0x6010, 0x6040) and shifted.hot[1][:2] == (0x6050, 0x6080)


def test_past_the_cap_the_smallest_gaps_are_bridged() -> None:
    funcs = []
    for gap in (0x40, 0x8, 0x20, 0x4):  # four runtime runs separated by non-runtime code of these sizes
        funcs += [("runtime.f", 0x10), ("main.g", gap)]
    funcs.append(("runtime.last", 0x10))
    r = category_ranges(table(*funcs), max_runtime=3)
    assert len(r.runtime) == 3 and r.bridged == 2
    # The 0x4 and 0x8 gaps are closed (the least non-runtime code counted as runtime), the 0x40 one is not.
    assert r.runtime[0] == (0x1000, 0x1010)
    assert sum(hi - lo for lo, hi in r.runtime) == 5 * 0x10 + 0x8 + 0x4 + 0x20 - 0x20
    assert all(a[1] < b[0] for a, b in zip(r.runtime, r.runtime[1:], strict=False))


def test_empty_table() -> None:
    assert category_ranges([]).runtime == ()


@pytest.mark.parametrize("mode", ["exe", "pie"])
def test_ranges_agree_with_go_tool_nm_on_every_text_symbol(mode: str) -> None:
    """Independent oracle: the toolchain's own symbol table, read by `go tool nm`."""
    toolchains = find_toolchains()
    need(bool(toolchains), "a Go toolchain (run scripts/setup.sh)")
    tc = toolchains[-1]
    binary = build_one(tc, SYMTEST, mode, "full")
    ranges = category_ranges(GoBinary.open(binary).table.functions())
    assert ranges.bridged == 0 and 1 <= len(ranges.runtime) <= 64
    argv = [str(tc.go), "tool", "nm", "-n", "-size", str(binary)]
    nm = subprocess.run(argv, capture_output=True, text=True, check=True, env=go_env(tc)).stdout
    checked = hot = 0
    for line in nm.splitlines():
        parts = line.split()  # address size type name
        if len(parts) < 4 or parts[2] not in ("T", "t") or parts[1] == "0":  # size 0: markers like runtime.text
            continue
        addr, name = int(parts[0], 16), parts[3]
        if not ranges.text[0] <= addr < ranges.text[1] or "." not in name:
            continue
        inside = any(lo <= addr < hi for lo, hi in ranges.runtime)
        assert inside == is_runtime_function(name), (hex(addr), name)
        in_hot = [c for lo, hi, c in ranges.hot if lo <= addr < hi]
        if name in ("runtime.schedule", "runtime.findRunnable", "runtime.findrunnable"):
            assert in_hot == [Category.SCHEDULER], name
            hot += 1
        elif name in ("runtime.gcBgMarkWorker", "runtime.gcAssistAlloc", "runtime.bgsweep", "runtime.bgscavenge"):
            assert in_hot == [Category.GC], name
            hot += 1
        else:
            assert in_hot == [], name
        checked += 1
    assert checked > 1000 and hot == 6


def test_real_binaries_need_few_runtime_ranges() -> None:
    """The cap (64) is far above what real programs need: Debian's biggest Go binaries."""
    found = [p for p in (Path("/usr/bin/prometheus"), Path("/usr/bin/etcd"), Path("/usr/sbin/runc")) if p.is_file()]
    need(bool(found), "Debian's prometheus/etcd/runc (scripts/setup.sh)")
    for path in found:
        r = category_ranges(GoBinary.open(path).table.functions())
        assert r.bridged == 0 and len(r.runtime) < 32, (path, len(r.runtime))
        assert {c for _, _, c in r.hot} == {Category.SCHEDULER, Category.GC}
