"""Old pclntab formats on real binaries no installed toolchain can build.

esbuild's npm packages ship Go 1.14-1.18 binaries (Go 1.2, 1.16 and 1.18
table formats). The oracle is Go's own debug/gosym (benchmarks/gosym_ref,
built with the newest toolchain, which still reads every format).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cachedir import cache_dir
from agent.gobinary.pclntab import PclnVersion
from agent.gobinary.symbolizer import GoBinary
from agent.lab.gotoolchain import find_toolchain
from tests.support.capabilities import need
from tests.support.gobuild import go_env
from tests.support.oldgo import EXPECTED, missing_old_go_binaries, old_go_binaries, oldgo_dir

REF_SRC = Path(__file__).resolve().parents[2] / "benchmarks" / "gosym_ref"
FORMATS = {"go12": PclnVersion.GO12, "go116": PclnVersion.GO116, "go118": PclnVersion.GO118}


@pytest.fixture(scope="module")
def gosym_ref() -> Path:
    tc = find_toolchain()
    need(tc is not None, "a Go toolchain (run scripts/setup.sh)")
    assert tc is not None
    out = cache_dir() / "testbins" / f"gosym_ref-{tc.version_string}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(tc.go), "build", "-buildvcs=false", "-o", str(out), "."],
            cwd=REF_SRC,
            env=go_env(tc),
            check=True,
            capture_output=True,
        )
    return out


def binaries() -> list[tuple[str, Path]]:
    need(not missing_old_go_binaries(), f"old Go binaries in {oldgo_dir()} (run scripts/setup.sh)")
    return old_go_binaries()


@pytest.mark.parametrize("name", EXPECTED)
def test_old_formats_match_debug_gosym(name: str, gosym_ref: Path, tmp_path: Path) -> None:
    found = {p.name: (label, p) for label, p in binaries()}
    label, path = found[name]
    b = GoBinary.open(path)
    assert b.table.version == FORMATS[label]
    table = b.table
    rnd = random.Random(name)
    pcs = sorted(
        {table.entries[i] for i in rnd.sample(range(table.nfunc), 1500)}
        | {rnd.randrange(table.entries[i], table.entries[i + 1]) for i in rnd.sample(range(table.nfunc), 3000)}
        | {table.entries[0] - 1, table.entries[-1]}
    )
    pcfile = tmp_path / "pcs"
    pcfile.write_text("".join(f"{pc:#x}\n" for pc in pcs))
    ref = subprocess.run([str(gosym_ref), str(path), str(pcfile)], capture_output=True, text=True, check=True)
    expected = ref.stdout.splitlines()
    ours = subprocess.run(
        [sys.executable, "-m", "agent", "symbolize", str(path)],
        input=pcfile.read_text(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(expected) == len(pcs) and len(ours) == 2 * len(pcs)
    mismatches = []
    for i, pc in enumerate(pcs):
        fn, pos = ours[2 * i], ours[2 * i + 1]
        mine = "?:0 ?" if fn == "?" else f"{pos} {fn}"
        # debug/gosym leaves padding's file empty and line -1, as we do
        if mine != expected[i]:
            mismatches.append((hex(pc), expected[i], mine))
    assert not mismatches, f"{len(mismatches)}/{len(pcs)} differ: {mismatches[:5]}"
    sched = table.find_function("runtime.schedule")
    assert sched is not None and table.lookup(sched.entry).function == "runtime.schedule"  # type: ignore[union-attr]
    # Inline trees of every format decode: chains end in the physical function.
    chains = [b.frames(pc) for pc in pcs]
    assert all(c[-1].function == table.lookup(pc).function for pc, c in zip(pcs, chains, strict=True) if c)  # type: ignore[union-attr]
    assert sum(len(c) > 1 for c in chains) > 100
