"""pprof profiles from real binaries (`go tool pprof` reading them: tests/system/test_pprof_go.py).

A profile may hold several binaries (a container running two programs): their
link-time addresses overlap, so each must keep its own Mapping and Locations.
Garbage return addresses from frame-pointer walks through C code (any 64-bit
value, below the load bias too) must become unsymbolized frames, never an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.analysis.attribution import attribute
from agent.export.pprof import ProfilePart, build_profile, parse_profile
from agent.gobinary.symbolizer import GoBinary
from tests.support.capabilities import need

PROMETHEUS, PROMTOOL = Path("/usr/bin/prometheus"), Path("/usr/bin/promtool")
PERIOD_NS = 10_309_278  # 97 Hz


def entry_of(binary: GoBinary, name: str) -> int:
    for fname, entry, _end in binary.table.functions():
        if fname == name:
            return entry
    raise AssertionError(f"{name} not in {binary.image.name}")


def two_part_profile() -> tuple[list[ProfilePart], dict[str, int]]:
    need(PROMETHEUS.is_file() and PROMTOOL.is_file(), "Debian's prometheus package (scripts/setup.sh)")
    prom, tool = GoBinary.open(PROMETHEUS), GoBinary.open(PROMTOOL)
    # Return addresses are looked up at pc - 1, so callers are given as entry + 1.
    a = entry_of(prom, "main.main")
    b = entry_of(prom, "runtime.findRunnable")
    c = entry_of(tool, "main.main")
    garbage = 0x17  # below any load bias: what a walk through code without frame pointers yields
    bias = 0x1000
    p1 = attribute(prom, bias, [((b + 8 + bias, a + 1 + bias), 30), ((a + 4 + bias, garbage), 5)])
    p2 = attribute(tool, 0, [((c + 4,), 7)])
    parts = [ProfilePart(p1, str(PROMETHEUS), prom.go_build_id or ""), ProfilePart(p2, str(PROMTOOL), "")]
    return parts, {"runtime.findRunnable": 30, "main.main": 5 + 7}


def test_garbage_addresses_are_unsymbolized_not_fatal() -> None:
    parts, _ = two_part_profile()
    prof = parts[0].profile
    assert all(0 <= pc < 1 << 64 for stack in prof.stacks for pc in stack)
    assert prof.unsymbolized == 5
    msg = parse_profile(build_profile(parts, period_ns=PERIOD_NS, duration_ns=10**9).SerializeToString())
    assert all(0 <= loc.address < 1 << 64 for loc in msg.location)


def test_each_binary_keeps_its_own_mapping_and_locations() -> None:
    parts, _ = two_part_profile()
    msg = build_profile(parts, period_ns=PERIOD_NS, duration_ns=10**9, labels={"container": "app"})
    assert [m.id for m in msg.mapping] == [1, 2]
    strings = list(msg.string_table)
    assert [strings[m.filename] for m in msg.mapping] == [str(PROMETHEUS), str(PROMTOOL)]
    names = {f.id: strings[f.name] for f in msg.function}
    by_mapping: dict[int, set[str]] = {}
    for loc in msg.location:
        by_mapping.setdefault(loc.mapping_id, set()).update(names[ln.function_id] for ln in loc.line)
    assert "runtime.findRunnable" in by_mapping[1] and "main.main" in by_mapping[2]
    assert sum(s.value[0] for s in msg.sample) == 42
    assert all(strings[s.label[0].key] == "container" for s in msg.sample)


@pytest.mark.parametrize("size", [0, 1])
def test_empty_parts(size: int) -> None:
    parts, _ = two_part_profile()
    msg = build_profile(parts[:size], period_ns=PERIOD_NS, duration_ns=1)
    assert len(msg.sample) == (2 if size else 0)
