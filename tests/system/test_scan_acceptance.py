"""Issue acceptance: one `scan` over two copies of a Go service, each limited to 1 CPU.

One runs with GOMAXPROCS=64 (what a 64-core host gives it), the other with
GOMAXPROCS=1; both are under load from loopback. The scan must read both
values live, see the 1.0-core limit, flag the first and pass the second, and
its scheduler and GC shares must agree with perf's within 5 points.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.analysis.goruntime import Category
from agent.lab.gotoolchain import find_toolchain
from tests.support import perfstacks
from tests.support.capabilities import need, need_root
from tests.support.oracles import go_pprof_top
from tests.support.workloads import (
    V1_CPU,
    Cgroup,
    build_demo,
    load,
    need_v1_cpu_cgroup,
    perf_available,
    service,
    v1_cgroup,
)

SCAN = [sys.executable, "-m", "agent", "scan"]
SCAN_SECONDS = 12
TOLERANCE = 0.05


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_scan_flags_gomaxprocs_64_in_a_1_cpu_cgroup(tmp_path: Path) -> None:
    need_root()
    need(perf_available(), "perf (Debian package linux-perf)")
    demo = build_demo()
    with (
        v1_cgroup("g64", 1.0) as cg64,
        v1_cgroup("g1", 1.0) as cg1,
        service(demo, cg64, {"GOMAXPROCS": "64"}) as s64,
        service(demo, cg1, {"GOMAXPROCS": "1"}) as s1,
        load(demo, s64.url, SCAN_SECONDS + 8) as l64,
        load(demo, s1.url, SCAN_SECONDS + 8) as l1,
    ):
        # perf covers the scan's whole run; its samples are cut to the scan's own window below.
        outputs = ["--pprof", str(tmp_path / "pprof"), "--folded", str(tmp_path / "folded.txt")]
        perf = perfstacks.record([s64.pid, s1.pid], SCAN_SECONDS + 5, tmp_path / "perf.data")
        scan = subprocess.run(
            [*SCAN, "--duration", str(SCAN_SECONDS), "--json", *outputs],
            capture_output=True,
            text=True,
            timeout=SCAN_SECONDS + 120,
            check=False,
        )
        perf_err = perf.communicate(timeout=SCAN_SECONDS + 60)[1]
        rps = [json.loads(p.communicate(timeout=60)[0] or "{}").get("rps") for p in (l64, l1)]
    assert scan.returncode == 0, scan.stderr
    assert perf.returncode == 0, perf_err
    rows = {r["pid"]: r for r in json.loads(scan.stdout)}
    assert s64.pid in rows and s1.pid in rows, f"scan missed the services: {sorted(rows)}"
    r64, r1 = rows[s64.pid], rows[s1.pid]

    for r in (r64, r1):
        assert r["cpu_limit_cores"] == pytest.approx(1.0)
        assert r["gomaxprocs_source"] == "live"
        assert r["go_version"].startswith("go1.")
        assert r["cgroup"].startswith("/node-agent-test-")
        assert r["samples"] > 200
        assert sum(r["categories"].values()) == pytest.approx(1.0, abs=1e-3)
    assert (r64["gomaxprocs"], r1["gomaxprocs"]) == (64, 1)
    assert r64["verdict"] == "gomaxprocs_above_limit"
    assert r64["recommended_gomaxprocs"] == 2
    assert "GOMAXPROCS=64" in r64["explanation"] and "resourceFieldRef" in r64["fix"]
    assert r1["verdict"] == "ok"

    window = (r64["window"]["start_monotonic"], r64["window"]["end_monotonic"])
    assert window[1] - window[0] == pytest.approx(SCAN_SECONDS, abs=1.0)
    perf_counts = perfstacks.categories(tmp_path / "perf.data", window)
    for r, pid in ((r64, s64.pid), (r1, s1.pid)):
        theirs = perfstacks.shares(perf_counts[pid])
        assert sum(perf_counts[pid].values()) > 200
        print(f"pid {pid} GOMAXPROCS={r['gomaxprocs']}: node-agent {r['categories']} perf {theirs} rps {rps}")
        for cat in (Category.SCHEDULER, Category.GC):
            ours = r["categories"][str(cat)]
            assert abs(ours - theirs[cat]) <= TOLERANCE, (
                f"pid {pid} {cat}: node-agent {ours:.3f} vs perf {theirs[cat]:.3f} (rps {rps})"
            )

    # The same scan's profiles, as `go tool pprof` reads them: one per process, totals = samples.
    go = find_toolchain()
    assert go is not None
    for r in (r64, r1):
        (path,) = (tmp_path / "pprof").glob(f"*-{r['pid']}.pb.gz")
        top = go_pprof_top(go, path, "-sample_index=samples")
        total = re.search(r"of (\d+) total", top)
        assert total is not None and int(total[1]) == r["samples"], top[:2000]
        assert "main.handle" in top, top[:2000]
    folded = (tmp_path / "folded.txt").read_text().splitlines()
    assert any("main.handle" in line for line in folded)
    assert all(line.rsplit(" ", 1)[1].isdigit() for line in folded)


@pytest.mark.bpf
@pytest.mark.slow
def test_scan_names_a_root_cgroup_process_by_its_program() -> None:
    """Outside containers the cgroup names nothing ("/"): the program's name must stand in."""
    need_v1_cpu_cgroup()
    demo = build_demo()
    root = Cgroup(V1_CPU)  # the service joins the root cpu cgroup, wherever this test runs
    # the load outlasts the scan (it is stopped with the block): compiling BPF may take long on a busy machine
    with service(demo, root, {"GOMAXPROCS": "3"}) as svc, load(demo, svc.url, 300):
        scan = subprocess.run(
            [*SCAN, "--duration", "3", "--json"], capture_output=True, text=True, timeout=120, check=False
        )
    assert scan.returncode == 0, scan.stderr
    rows = {r["pid"]: r for r in json.loads(scan.stdout)}
    assert svc.pid in rows, f"scan missed the service: {sorted(rows)}"
    row = rows[svc.pid]
    assert row["cgroup"] == "/"
    assert row["workload"] == Path(demo).name[:15], row  # comm: the kernel keeps 15 characters
    assert row["gomaxprocs"] == 3
