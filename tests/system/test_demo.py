"""`node-agent demo`: its pure parts on fixtures, then the whole demo for real.

The real runs need root, BPF, a Go toolchain and a cgroup cpu controller; they
check what the demo claims (both copies read live, the verdicts, the 1-CPU
limit, pprof files `go tool pprof` can read) and that nothing is left behind:
no ``node-agent-demo-*`` cgroup, no demo process, also after SIGINT/SIGTERM.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.analysis.attribution import ProcessProfile
from agent.analysis.goruntime import Category
from agent.analysis.model import GoProcessReport
from agent.analysis.verdict import Verdict
from agent.commands import demo
from agent.errors import CgroupError, NodeAgentError
from agent.lab import cgroupwriter, gotoolchain
from agent.lab.gotoolchain import GoToolchain, find_toolchain, find_toolchains
from tests.support.capabilities import missing, need, need_root
from tests.support.oracles import go_pprof_top

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "agent", "demo"]
DEMO_SECONDS = 10
DEMO_WARMUP_S = demo.DemoConfig().warmup_s


# --------------------------------------------------------------------------- pure parts


def tc(version: tuple[int, int, int]) -> GoToolchain:
    return GoToolchain(version, Path(f"/go{version[0]}.{version[1]}/bin/go"))


@pytest.mark.parametrize(
    ("versions", "chosen"),
    [
        ([], None),
        ([(1, 19, 8)], (1, 19, 8)),
        ([(1, 19, 8), (1, 21, 13), (1, 23, 9), (1, 25, 5), (1, 27, 3)], (1, 23, 9)),
        ([(1, 25, 5), (1, 27, 3)], (1, 27, 3)),  # nothing older than 1.25: the newest
        ([(1, 24, 0), (1, 25, 0)], (1, 24, 0)),
    ],
)
def test_choose_toolchain_prefers_newest_before_1_25(
    versions: list[tuple[int, int, int]], chosen: tuple[int, int, int] | None
) -> None:
    got = demo.choose_toolchain([tc(v) for v in versions])
    assert (got.version if got else None) == chosen


def test_source_hash_follows_the_go_sources(tmp_path: Path) -> None:
    (tmp_path / "main.go").write_text("package main\n")
    (tmp_path / "go.mod").write_text("module x\n\ngo 1.19\n")
    first = gotoolchain.source_hash(tmp_path)
    (tmp_path / "README").write_text("not a source")
    assert gotoolchain.source_hash(tmp_path) == first
    (tmp_path / "main.go").write_text("package main\n// changed\n")
    assert gotoolchain.source_hash(tmp_path) != first
    assert len(first) == 16
    assert gotoolchain.source_hash(demo.DEMO_SRC) == gotoolchain.source_hash(demo.DEMO_SRC)


def test_find_cpu_hierarchy_v1_then_v2_then_error(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "unified").mkdir()
    (v1 / "unified" / "cgroup.controllers").write_text("cpu memory\n")
    assert cgroupwriter.find_cpu_hierarchy(v1) == cgroupwriter.CpuHierarchy(1, v1 / "cpu")

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert cgroupwriter.find_cpu_hierarchy(v2) == cgroupwriter.CpuHierarchy(2, v2)

    hybrid = tmp_path / "hybrid"
    (hybrid / "unified").mkdir(parents=True)
    (hybrid / "unified" / "cgroup.controllers").write_text("cpu\n")
    assert cgroupwriter.find_cpu_hierarchy(hybrid) == cgroupwriter.CpuHierarchy(2, hybrid / "unified")

    none = tmp_path / "none"
    (none / "unified").mkdir(parents=True)
    (none / "unified" / "cgroup.controllers").write_text("memory pids\n")  # like this machine's v2 side
    with pytest.raises(CgroupError) as e:
        cgroupwriter.find_cpu_hierarchy(none)
    assert "no cgroup cpu controller" in str(e.value)
    assert "cpu.cfs_quota_us" not in e.value.help and "cgroup v2" in e.value.help
    assert e.value.exit_code != 0


def test_limit_files() -> None:
    assert cgroupwriter.v1_limit_files(1.0) == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "100000"}
    assert cgroupwriter.v1_limit_files(None)["cpu.cfs_quota_us"] == "-1"
    assert cgroupwriter.v1_limit_files(0.5, 200_000) == {"cpu.cfs_period_us": "200000", "cpu.cfs_quota_us": "100000"}
    assert cgroupwriter.v2_limit_files(1.0) == {"cpu.max": "100000 100000"}
    assert cgroupwriter.v2_limit_files(None) == {"cpu.max": "max 100000"}


def test_cgroup_tree_v2_enables_cpu_and_writes_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    (tmp_path / "cgroup.subtree_control").write_text("memory\n")
    tree = cgroupwriter.CgroupTree(cgroupwriter.CpuHierarchy(2, tmp_path), "node-agent-demo-1")
    tree.create()
    child = tree.child("fixed", 1.0)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"  # a real cgroupfs merges it
    assert (tree.path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (child / "cpu.max").read_text() == "100000 100000"
    assert tree.rel(child) == "/node-agent-demo-1/fixed"


def test_parse_load() -> None:
    line = '{"requests": 5000, "errors": 2, "seconds": 10.004, "rps": 499.8}\n'
    assert demo.parse_load("noise\n" + line) == demo.LoadStats(5000, 2, 10.004, 499.8)
    assert demo.parse_load("") is None
    assert demo.parse_load('{"requests": 1}') is None


def test_without_root_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(demo.DemoError) as e:
        demo.run_demo(demo.DemoConfig())
    assert "needs root" in str(e.value) and "sudo" in e.value.help
    assert e.value.exit_code != 0


def test_without_cgroup_controller_it_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(CgroupError) as e:
        demo.run_demo(demo.DemoConfig(cgroup_fs=tmp_path))
    assert "cpu controller" in e.value.describe()


def test_without_go_it_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(demo.DemoError) as e:
        demo.need_toolchain([])
    assert "no Go toolchain" in str(e.value) and "golang-go" in e.value.help
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(demo, "find_toolchains", list)
    with pytest.raises(demo.DemoError, match="no Go toolchain"):
        demo.run_demo(demo.DemoConfig(cgroup_fs=tmp_path))


def test_big_gomaxprocs_must_be_above_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(demo, "find_toolchains", lambda: [tc((1, 23, 9))])
    with pytest.raises(demo.DemoError, match="not above the recommended"):
        demo.run_demo(demo.DemoConfig(cgroup_fs=tmp_path, big_gomaxprocs=demo.fixed_gomaxprocs()))


def test_parser_defaults() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["demo"])
    assert (args.duration, args.big_gomaxprocs, args.out, args.json) == (
        30.0,
        64,
        Path("node-agent-demo-profiles"),
        False,
    )
    assert args.func is cli.cmd_demo
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--duration", "0"])


def report(pid: int, gomaxprocs: int, verdict: Verdict, shares: dict[Category, float]) -> GoProcessReport:
    return GoProcessReport(
        pid=pid,
        start_time=1,
        exe="/cache/demo",
        go_version="go1.23.9",
        cgroup="/node-agent-demo-1/x",
        workload="x",
        namespace=None,
        pod=None,
        container=None,
        owner=None,
        cpu_limit_cores=1.0,
        affinity_cpus=2,
        gomaxprocs=gomaxprocs,
        gomaxprocs_source="live",
        samples=970,
        cpu_seconds=9.7,
        shares=shares,
        throttled_ratio=0.1,
        verdict=verdict,
        recommended_gomaxprocs=2,
        explanation=f"GOMAXPROCS={gomaxprocs} (live) explained",
        fix="set GOMAXPROCS=2" if verdict == Verdict.ABOVE else "",
        profile=ProcessProfile(),
    )


def test_render_side_by_side_with_gain() -> None:
    bad = demo.CopyResult(
        "misconfigured",
        64,
        11,
        "/node-agent-demo-1/misconfigured",
        demo.LoadStats(5000, 0, 10.0, 500.0),
        report(11, 64, Verdict.ABOVE, {Category.SCHEDULER: 0.05, Category.GC: 0.25, Category.USER: 0.7}),
        10.0,
    )
    good = demo.CopyResult(
        "fixed",
        2,
        12,
        "/node-agent-demo-1/fixed",
        demo.LoadStats(7000, 0, 10.0, 700.0),
        report(12, 2, Verdict.OK, {Category.GC: 0.08, Category.USER: 0.92}),
        10.0,
    )
    result = demo.DemoResult(bad, good, 10.0, 97, 8, "go1.23.9", Path("/cache/demo"), 1)
    assert result.throughput_gain == pytest.approx(0.4)
    assert bad.cpu_ms_per_request == pytest.approx(1000 * 0.97 / 500)
    out = io.StringIO()
    demo.render(result, out, width=140)
    text = out.getvalue()
    assert "Throughput gained by the fix: +40% (500 -> 700 requests/s" in text
    assert "1.94 ms" in text and "1.39 ms" in text
    for needle in ("gomaxprocs_above_limit", "misconfigured (pid 11)", "fixed (pid 12)", "25%", "set GOMAXPROCS=2"):
        assert needle in text
    data = result.to_json()
    assert data["throughput_gain"] == pytest.approx(0.4)
    assert [c["report"]["gomaxprocs"] for c in data["copies"]] == [64, 2]


# --------------------------------------------------------------------------- the real demo


def demo_ready() -> cgroupwriter.CpuHierarchy:
    need_root()
    try:
        hierarchy = cgroupwriter.find_cpu_hierarchy()
    except CgroupError as exc:
        missing(exc.describe())
    need(demo.choose_toolchain(find_toolchains()) is not None, "a Go toolchain (run scripts/setup.sh)")
    from agent.sampling.sampler import diagnose

    problems = [f.message for f in diagnose() if f.fatal and not f.ok]
    need(not problems, "; ".join(problems))
    return hierarchy


# Every process a demo under test starts inherits this mark (the demo passes its environment on):
# another demo running on a shared machine uses the same cached binary and cgroup prefix, and is not ours.
RUN_MARK = "NODE_AGENT_TEST_DEMO_RUN"


@pytest.fixture(autouse=True)
def run_mark(monkeypatch: pytest.MonkeyPatch) -> str:
    mark = uuid.uuid4().hex
    monkeypatch.setenv(RUN_MARK, mark)
    return mark


def leftover_cgroups(hierarchy: cgroupwriter.CpuHierarchy) -> list[str]:
    """Demo trees left behind: this process's, or one whose demo has exited (a running demo elsewhere is not)."""
    left = []
    for p in hierarchy.root.glob(demo.CGROUP_PREFIX + "*"):
        owner = p.name.removeprefix(demo.CGROUP_PREFIX)
        if owner.isdigit() and int(owner) != os.getpid() and cgroupwriter.pid_alive(int(owner)):
            continue
        left.append(p.name)
    return sorted(left)


def processes_running(exe: Path) -> list[int]:
    """Processes of ``exe`` that this test's demo started (they carry its mark)."""
    mark = f"{RUN_MARK}={os.environ[RUN_MARK]}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "exe") == str(exe) and mark in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def check_result(data: dict[str, Any], out: Path, hierarchy: cgroupwriter.CpuHierarchy) -> None:
    bad, good = data["copies"]
    fixed = demo.fixed_gomaxprocs()
    print(
        f"demo: rps {bad['rps']} vs {good['rps']} (gain {data['throughput_gain']}), "
        f"categories {bad['report']['categories']} vs {good['report']['categories']}"
    )
    assert (bad["name"], good["name"]) == ("misconfigured", "fixed")
    assert (bad["report"]["gomaxprocs"], good["report"]["gomaxprocs"]) == (64, fixed)
    assert (bad["gomaxprocs_set"], good["gomaxprocs_set"]) == (64, fixed)
    assert bad["report"]["verdict"] == "gomaxprocs_above_limit"
    assert good["report"]["verdict"] == "ok"
    assert bad["report"]["recommended_gomaxprocs"] == fixed
    assert data["duration_s"] == pytest.approx(DEMO_SECONDS, abs=1.5), data["duration_s"]
    for c in (bad, good):
        r = c["report"]
        assert r["gomaxprocs_source"] == "live"
        assert r["cpu_limit_cores"] == pytest.approx(1.0)
        assert r["cgroup"] == c["cgroup"] and c["cgroup"].startswith("/" + demo.CGROUP_PREFIX)
        assert r["samples"] > 100, r
        assert c["rps"] > 0 and c["load"]["requests"] > 0
        assert 0 < c["cpu_cores"] <= 1.2  # the limit holds (sampling noise aside)
        assert c["cpu_ms_per_request"] == pytest.approx(1000 * c["cpu_cores"] / c["rps"], rel=1e-3)
    assert data["throughput_gain"] == pytest.approx(good["rps"] / bad["rps"] - 1, abs=1e-3)

    go = find_toolchain()
    assert go is not None
    for c in (bad, good):
        path = Path(c["pprof"])
        assert path.parent == out and path.is_file()
        top = go_pprof_top(go, path)
        assert "main.handle" in top, top[:2000]
        assert "Total samples" in top, top[:2000]

    assert leftover_cgroups(hierarchy) == []
    assert processes_running(Path(data["binary"])) == []


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_demo_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hierarchy = demo_ready()
    parser = cli.build_parser()
    out = tmp_path / "profiles"
    args = parser.parse_args(["demo", "--duration", str(DEMO_SECONDS), "--json", "--out", str(out)])
    try:
        assert args.func(args) == 0
    except NodeAgentError as exc:
        pytest.fail(exc.describe())
    data = json.loads(capsys.readouterr().out)
    check_result(data, out, hierarchy)


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_demo_cli(tmp_path: Path) -> None:
    hierarchy = demo_ready()
    out = tmp_path / "profiles"
    run = subprocess.run(
        [*CLI, "--duration", str(DEMO_SECONDS), "--json", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DEMO_SECONDS + 600,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    check_result(json.loads(run.stdout), out, hierarchy)
    assert "go tool pprof -http=127.0.0.1:8080" in run.stderr


def _wait_for_load(proc: subprocess.Popen[str], tree: Path, timeout_s: float) -> list[int]:
    """The pids in the demo's cgroups once both services and both load generators run."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the demo exited early with {proc.returncode}: {proc.communicate()[1]}")
        pids = [int(p) for child in ("misconfigured", "fixed", "load") for p in cgroupwriter.cgroup_pids(tree / child)]
        if len(cgroupwriter.cgroup_pids(tree / "load")) == 2 and len(pids) == 4:
            return pids
        time.sleep(0.1)
    pytest.fail("the demo did not start its load in time")


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_cleans_up(tmp_path: Path, sig: signal.Signals, status: int) -> None:
    hierarchy = demo_ready()
    proc = subprocess.Popen(
        [*CLI, "--duration", "120", "--out", str(tmp_path / "profiles")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    tree = hierarchy.root / f"{demo.CGROUP_PREFIX}{proc.pid}"
    try:
        pids = _wait_for_load(proc, tree, 600)
        exes = {Path(os.readlink(f"/proc/{pid}/exe")) for pid in pids}
        assert set(pids) <= set(processes_running(next(iter(exes))))  # the mark reaches the demo's children
        time.sleep(DEMO_WARMUP_S + 2)  # inside the profile window: sampler attached, load flowing
        sent = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
        left_behind = tree.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        cgroupwriter.remove_cgroup(tree)  # only does something if the demo failed to (asserted below)
    assert proc.returncode == status, err
    assert took < 10, f"took {took:.1f}s to stop"
    assert not left_behind
    assert leftover_cgroups(hierarchy) == []
    assert len(exes) == 1
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert processes_running(exes.pop()) == []
    assert not (tmp_path / "profiles").exists()  # interrupted: no profiles written
