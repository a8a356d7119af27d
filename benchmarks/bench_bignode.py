"""Big-node benchmark: the daemon at a 192-CPU node's sample rate, side by side with 97 Hz.

192 CPUs x 97 Hz = 18,624 samples/s; this machine makes the same stream with
2 CPUs x 9,312 Hz. The node it watches (all real Go processes, ``--procs`` of
them, from more than 30 real binaries):

- the seed's reproduction: the demo service twice, each in a 1-CPU v1 cgroup,
  GOMAXPROCS 64 and 1, each under load from the demo's own load generator;
- tests/goprogs/pathgen walking ``--paths`` distinct call paths (20k, 50k);
- every Go toolchain's gofmt, test2json, addr2line and fix, and Debian's
  promtool, blocked reading stdin (idle, as most sidecars are); Debian's
  prometheus and prometheus-node-exporter serving on loopback;
- the symtest build matrix (every toolchain x exe/pie x full/strip/sw)
  spinning under one parent cgroup capped at 0.2 cores.

For every (paths, rate) the daemon (`python -m agent run`, ``--interval`` 5 s)
runs ``--cycles`` measured cycles after two warm-up ones, with `perf record -a
-g` (fixed period, 1,999 Hz) over the same window as the oracle for shares.
Reported: agent CPU as % of one core (utime+stime, not wall), cycle work time
p50/p99 (the logged drain + pipeline time, from the maps' flip), peak RSS (VmHWM),
samples lost by reason, the BPF program's own ns per sample (bpf_stats), and
the scheduler/GC shares of the GOMAXPROCS=64 server and of pathgen against
perf's. ``--baseline DIR`` runs another checkout (e.g. /work/main) the same
way, for before/after.

    .venv/bin/python benchmarks/bench_bignode.py                       # ~6 minutes
    .venv/bin/python benchmarks/bench_bignode.py --baseline /work/main --json out.json

Needs root, BPF, perf and a writable v1 cpu cgroup; removes every process and
cgroup it made on every exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from agent.analysis.goruntime import Category
from agent.lab import cgroupwriter
from agent.lab.gotoolchain import find_toolchains
from agent.shutdown import raising_signals
from benchmarks.bench_sampler import bpf_prog_runtime, bpf_stats_enabled
from benchmarks.bench_soak import Agent, percentile
from benchmarks.common import memory_kib
from tests.support import perfstacks
from tests.support.gobuild import build_matrix, build_one
from tests.support.workloads import build_demo

REPO = Path(__file__).resolve().parent.parent
V1_CPU = Path("/sys/fs/cgroup/cpu")
PREFIX = "node-agent-bignode-"
MAX_RATE = Path("/proc/sys/kernel/perf_event_max_sample_rate")
PATHGEN_SRC = REPO / "tests" / "goprogs" / "pathgen"
PERF_HZ = 1999
IDLE_TOOLS = (
    "bin/gofmt",
    "pkg/tool/linux_amd64/test2json",
    "pkg/tool/linux_amd64/addr2line",
    "pkg/tool/linux_amd64/fix",
)


class BenchError(RuntimeError):
    pass


def _progress(msg: str) -> None:
    print(f"[bignode {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the node ---------------------------------------------------------------------------------


class Node:
    """Every workload process and cgroup; stop() removes them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cgroups: list[Path] = []
        self.binaries: set[str] = set()
        self.env = {k: v for k, v in os.environ.items() if k not in ("GOMAXPROCS", "GODEBUG", "GOGC")}

    def cgroup(self, name: str, cores: float | None) -> Path:
        path = cgroupwriter.make_cgroup(V1_CPU / f"{PREFIX}{name}-{os.getpid()}")
        cgroupwriter.set_limit(path, 1, cores)
        self.cgroups.append(path)
        return path

    def start(
        self, argv: list[str], cgroup: Path | None = None, env: dict[str, str] | None = None, stdin_pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        def enter() -> None:
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**self.env, **(env or {})},
            cwd=self.workdir,
            preexec_fn=enter,  # noqa: PLW1509 - joins the cgroup before the Go runtime starts
            process_group=0,
        )
        self.procs.append(proc)
        self.binaries.add(os.path.realpath(argv[0]))
        return proc

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, 9)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            if p.stdin:
                p.stdin.close()
        self.procs.clear()
        for cg in reversed(self.cgroups):
            problem = cgroupwriter.remove_cgroup(cg)
            if problem:
                print(f"bench_bignode: {problem}", file=sys.stderr)
        self.cgroups.clear()


def _ready_addr(node: Node, argv: list[str], cgroup: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*argv, "-ready-fd", str(w)],
        pass_fds=(w,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**node.env, **env},
        preexec_fn=lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid())),  # noqa: PLW1509
        process_group=0,
    )
    os.close(w)
    node.procs.append(proc)
    node.binaries.add(os.path.realpath(argv[0]))
    with os.fdopen(r, "rb") as ready:
        line = ready.readline().decode().strip()
    if not line:
        raise BenchError(f"{argv[0]} did not get ready")
    return proc, line


@dataclass
class Workloads:
    demo64: int = 0
    demo1: int = 0
    pathgen: int = 0
    cg64: str = ""
    cg1: str = ""
    cggen: str = ""


def populate(node: Node, target: int) -> Workloads:
    """The fixed part of the node: servers under load, idle tools, spinners, up to ``target`` processes."""
    demo = build_demo()
    w = Workloads()
    cg64, cg1 = node.cgroup("g64", 1.0), node.cgroup("g1", 1.0)
    s64, addr64 = _ready_addr(node, [str(demo), "serve", "-addr", "127.0.0.1:0"], cg64, {"GOMAXPROCS": "64"})
    s1, addr1 = _ready_addr(node, [str(demo), "serve", "-addr", "127.0.0.1:0"], cg1, {"GOMAXPROCS": "1"})
    w.demo64, w.demo1, w.cg64, w.cg1 = s64.pid, s1.pid, cg64.name, cg1.name
    for addr in (addr64, addr1):
        node.start([str(demo), "load", "-url", f"http://{addr}/work", "-c", "4", "-d", "3600s"])
    # Servers of Debian's packages on loopback.
    prom_dir = node.workdir / "prometheus"
    prom_dir.mkdir(exist_ok=True)
    (prom_dir / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    if Path("/usr/bin/prometheus").is_file():
        node.start([
            "/usr/bin/prometheus", f"--config.file={prom_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom_dir / 'data'}", "--web.listen-address=127.0.0.1:0",
        ])  # fmt: skip
    if Path("/usr/bin/prometheus-node-exporter").is_file():
        node.start(["/usr/bin/prometheus-node-exporter", "--web.listen-address=127.0.0.1:0"])
    # Idle tools of every toolchain, and spinners of the symtest matrix.
    idle = [str(tc.goroot / t) for tc in find_toolchains() for t in IDLE_TOOLS if (tc.goroot / t).is_file()]
    if Path("/usr/bin/promtool").is_file():
        idle.append("/usr/bin/promtool")
    spinners = [str(b.path) for b in build_matrix(toolchains=find_toolchains())]
    spin_cg = node.cgroup("spin", 0.2)
    i = 0
    while len(node.procs) < target - 1:  # one slot is pathgen's
        if i % 3 == 2 and spinners:
            node.start([spinners[(i // 3) % len(spinners)], "-spin", "3600"], spin_cg)
        else:
            tool = idle[i % len(idle)]
            argv = [tool, "check", "metrics"] if tool.endswith("promtool") else [tool]
            if tool.endswith("addr2line"):
                argv.append(tool)
            node.start(argv, stdin_pipe=True)
        i += 1
    return w


@contextlib.contextmanager
def pathgen(node: Node, binary: Path, paths: int, w: Workloads) -> Iterator[int]:
    cg = node.cgroup(f"gen{paths}", None)
    proc, _ = _ready_addr(node, [str(binary), "-paths", str(paths), "-workers", "2"], cg, {"GOMAXPROCS": "2"})
    w.pathgen, w.cggen = proc.pid, cg.name
    try:
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(10)
        node.procs.remove(proc)
        node.cgroups.remove(cg)
        cgroupwriter.remove_cgroup(cg)


# ---- one measured run -------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    paths: int
    rate: int
    cycles: int = 0
    agent_cpu_pct: float = 0.0
    cycle_p50_s: float | None = None
    cycle_p99_s: float | None = None
    cycle_max_s: float | None = None
    cycle_cpu_p50_s: float | None = None  # the agent's CPU time per cycle (one interval's work)
    cycle_cpu_p99_s: float | None = None
    peak_rss_mib: float = 0.0
    samples: float = 0.0
    lost: dict[str, float] = field(default_factory=dict)
    bpf_ns_per_sample: float | None = None
    shares: dict[str, dict[str, float]] = field(default_factory=dict)  # workload -> {agent_sched, perf_sched, ...}
    go_processes: int = 0


def scrape(agent: Agent) -> dict[str, Any]:
    status, text = agent.get("/metrics", timeout=30)
    if status != 200:
        raise BenchError(f"/metrics on port {agent.port} answered {status}: {text[:200]}\n{agent.log_tail()}")
    out: dict[str, Any] = {"cpu": Counter(), "lost": {}, "samples": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "node_agent_go_cpu_seconds_total":
                out["cpu"][(s.labels["container"], s.labels["category"])] += s.value
            elif s.name == "node_agent_samples_lost_total":
                out["lost"][s.labels["reason"]] = s.value
            elif s.name == "node_agent_samples_total":
                out["samples"] = s.value
    return out


def agent_shares(before: dict[str, Any], after: dict[str, Any], cgroup_name: str) -> dict[Category, float]:
    got: Counter[str] = Counter()
    for (container, cat), v in after["cpu"].items():
        if container.endswith(cgroup_name):
            got[cat] += v - before["cpu"].get((container, cat), 0.0)
    known = sum(got[c] for c in ("scheduler", "gc", "runtime_other", "user"))
    return {Category(c): (got[c] / known if known else 0.0) for c in ("scheduler", "gc", "runtime_other", "user")}


def wait_cycles(agent: Agent, count: int, deadline: float) -> None:
    """Until the agent has logged `count` cycles; it dying or stalling past `deadline` ends the bench."""
    while len(agent.cycles) < count:
        agent.check_alive()
        agent.read_log()
        if time.monotonic() > deadline:
            raise BenchError(f"the agent stopped cycling ({len(agent.cycles)} of {count}):\n{agent.log_tail()}")
        time.sleep(0.1)


def measure(label: str, source: Path, paths: int, rate: int, args: argparse.Namespace, w: Workloads) -> Run:
    run = Run(label, paths, rate)
    logdir = Path(tempfile.mkdtemp(prefix="bignode-"))
    agent = Agent(logdir / "agent.log", args.interval, rate, source=source)
    agent.start()
    perf: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 600
        wait_cycles(agent, 2, deadline)  # warm-up: start-up registration and the first binaries' parsing
        # perf starts before the flip that opens the measured window (the next cycle's), so both
        # cover the same samples: the window runs from that flip to the last measured cycle's.
        perf_data = logdir / "perf.data"
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-a", "-g", "-e", "cpu-clock", "-c", str(round(1e9 / PERF_HZ)),
             "-k", "CLOCK_MONOTONIC", "-o", str(perf_data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        wait_cycles(agent, len(agent.cycles) + 1, deadline)
        first = agent.cycles[-1]
        before, bpf_before = scrape(agent), bpf_prog_runtime(agent.pid)
        start_cycle = len(agent.cycles)
        wait_cycles(agent, start_cycle + args.cycles, deadline)
        last = agent.cycles[-1]
        after, bpf_after = scrape(agent), bpf_prog_runtime(agent.pid)
        perf.send_signal(2)
        perf.wait(60)
        hwm_kib, _ = memory_kib(agent.pid)
        measured = agent.cycles[start_cycle:]
        work = [c.work_s for c in measured]
        wall = last.at - first.at
        run.cycles = len(measured)
        run.agent_cpu_pct = 100.0 * (last.cpu_ticks - first.cpu_ticks) / os.sysconf("SC_CLK_TCK") / wall
        run.cycle_p50_s, run.cycle_p99_s = percentile(work, 50), percentile(work, 99)
        run.cycle_max_s = max(work)
        ticks = [first.cpu_ticks] + [c.cpu_ticks for c in measured]
        cpu = [(b - a) / os.sysconf("SC_CLK_TCK") for a, b in itertools.pairwise(ticks)]
        run.cycle_cpu_p50_s, run.cycle_cpu_p99_s = percentile(cpu, 50), percentile(cpu, 99)
        run.peak_rss_mib = hwm_kib / 1024
        run.go_processes = max(c.go_processes for c in measured)
        run.samples = after["samples"] - before["samples"]
        run.lost = {
            k: v - before["lost"].get(k, 0.0) for k, v in after["lost"].items() if v - before["lost"].get(k, 0.0)
        }
        runs = bpf_after[1] - bpf_before[1]
        run.bpf_ns_per_sample = (bpf_after[0] - bpf_before[0]) * 1e9 / runs if runs else None
        # The drained window runs from the first measured cycle's flip to the last's.
        theirs = perfstacks.categories(perf_data, (first.at - first.work_s, last.at - last.work_s))
        for name, pid, cg in (
            ("gomaxprocs64", w.demo64, w.cg64),
            ("gomaxprocs1", w.demo1, w.cg1),
            ("pathgen", w.pathgen, w.cggen),
        ):
            ours = agent_shares(before, after, cg)
            perf_share = perfstacks.shares(theirs.get(pid, Counter()))
            run.shares[name] = {
                "agent_scheduler": round(ours[Category.SCHEDULER], 4),
                "perf_scheduler": round(perf_share[Category.SCHEDULER], 4),
                "agent_gc": round(ours[Category.GC], 4),
                "perf_gc": round(perf_share[Category.GC], 4),
                "perf_samples": sum(theirs.get(pid, Counter()).values()),
            }
    finally:
        if perf is not None and perf.poll() is None:
            perf.kill()
            perf.wait(10)
        agent.stop()
    return run


# ---- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def sample_rate_allowed(rate: int) -> Iterator[None]:
    before = MAX_RATE.read_text().strip()
    try:
        yield
    finally:
        MAX_RATE.write_text(before)


def keep_rate(rate: int) -> None:
    """The kernel lowers the limit by itself when sampling runs long: put it back before each run."""
    if int(MAX_RATE.read_text()) < rate:
        MAX_RATE.write_text(str(rate))


def render(runs: list[Run]) -> str:
    head = (
        "| run | paths | Hz | agent CPU % of a core | cycle CPU p50 / p99 s | cycle wall p50 / p99 / max s "
        "| peak RSS MiB | BPF ns/sample "
        "| lost (reason: samples) | sched / GC agent vs perf: G64 | G1 | pathgen |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in runs:

        def sg(name: str, r: Run = r) -> str:
            s = r.shares.get(name, {})
            if not s:
                return "-"
            return (
                f"{100 * s['agent_scheduler']:.1f}/{100 * s['agent_gc']:.1f} vs "
                f"{100 * s['perf_scheduler']:.1f}/{100 * s['perf_gc']:.1f}"
            )

        lost = ", ".join(f"{k}: {int(v)}" for k, v in sorted(r.lost.items())) or "none"
        ns = f"{r.bpf_ns_per_sample:.0f}" if r.bpf_ns_per_sample is not None else "-"
        lines.append(
            f"| {r.label} | {r.paths} | {r.rate} | {r.agent_cpu_pct:.2f} "
            f"| {r.cycle_cpu_p50_s:.2f} / {r.cycle_cpu_p99_s:.2f} "
            f"| {r.cycle_p50_s:.3f} / {r.cycle_p99_s:.3f} / "
            f"{r.cycle_max_s:.3f} | {r.peak_rss_mib:.0f} | {ns} | {lost} | {sg('gomaxprocs64')} | {sg('gomaxprocs1')} "
            f"| {sg('pathgen')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paths", default="20000,50000", help="distinct call paths of pathgen, comma-separated")
    p.add_argument("--rates", default="97,9312", help="sample rates per CPU, comma-separated")
    p.add_argument("--cycles", type=int, default=4, help="measured cycles per run (after 2 warm-up cycles)")
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--procs", type=int, default=200, help="Go processes on the node")
    p.add_argument("--baseline", type=Path, help="another checkout to run the same way (before/after)")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench_bignode: needs root (BPF, perf, cgroups)")
    # SIGTERM/SIGINT unwind through the finally blocks below, so every process and cgroup is removed.
    with raising_signals():
        return _main(args, argv)


def _main(args: argparse.Namespace, argv: list[str] | None) -> int:
    for stale in cgroupwriter.remove_stale(V1_CPU, PREFIX):
        _progress(f"removed stale {stale}")
    paths_list = [int(x) for x in args.paths.split(",")]
    rates = [int(x) for x in args.rates.split(",")]
    tcs = find_toolchains()
    if not tcs:
        raise SystemExit("bench_bignode: no Go toolchain (run scripts/setup.sh)")
    gen = build_one(tcs[-1], PATHGEN_SRC, "pie", "full")
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="bignode-node-") as tmp,
        sample_rate_allowed(max(rates)),
        bpf_stats_enabled(),
    ):
        node = Node(Path(tmp))
        try:
            _progress(f"starting {args.procs} Go processes")
            w = populate(node, args.procs)
            for paths in paths_list:
                with pathgen(node, gen, paths, w):
                    time.sleep(2)
                    _progress(f"{node.alive()} processes alive, {len(node.binaries)} distinct binaries; paths {paths}")
                    sources = [("after", REPO)]
                    if args.baseline and paths == paths_list[0]:
                        sources.append(("before", args.baseline))
                    for label, source in sources:
                        for rate in rates:
                            keep_rate(rate)
                            _progress(f"{label} at {rate} Hz")
                            run = measure(label, source, paths, rate, args, w)
                            runs.append(run)
                            _progress(json.dumps(asdict(run)))
        finally:
            node.stop()
    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "cpus": os.cpu_count(),
        "procs": args.procs,
        "interval_s": args.interval,
    }
    print(render(runs))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
