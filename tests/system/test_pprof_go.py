"""The two-binary profile as `go tool pprof` (the oracle, from a Go toolchain) reads it: exact totals."""

from __future__ import annotations

import re
from pathlib import Path

from agent.export.pprof import build_profile, write_profile
from agent.lab.gotoolchain import find_toolchain
from tests.support.capabilities import need
from tests.support.oracles import go_pprof_top
from tests.unit.test_pprof import PERIOD_NS, two_part_profile


def test_go_tool_pprof_reads_it_with_exact_totals(tmp_path: Path) -> None:
    tc = find_toolchain()
    need(tc is not None, "a Go toolchain (scripts/setup.sh)")
    assert tc is not None
    parts, flat = two_part_profile()
    path = tmp_path / "two.pb.gz"
    write_profile(str(path), build_profile(parts, period_ns=PERIOD_NS, duration_ns=10**9))
    out = go_pprof_top(tc, path, "-nodecount=50", "-sample_index=samples")
    assert re.search(r"Total samples = 42\b", out) or "of 42 total" in out, out
    for name, count in flat.items():
        row = re.search(rf"^\s*(\d+)\s+[\d.]+%.*\s{re.escape(name)}$", out, re.MULTILINE)
        assert row is not None and int(row[1]) == count, f"{name}: want flat {count}\n{out}"
    assert re.search(r"^\s*5\s+[\d.]+%.*\[unknown\]$", out, re.MULTILINE) is None  # the garbage frame is no leaf
