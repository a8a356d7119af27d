"""Soak benchmark: the real daemon for minutes under process and binary churn.

The node it watches: ``--procs`` (20) Go processes alive at any time, each
living a random 5-40 s and then replaced by a different binary from the
build matrix (every toolchain x exe/pie x full/strip/sw build of
tests/goprogs/symtest, plus the bundled demo service as a serve+load pair),
some in their own v1 cpu cgroup with a quota, some with GOMAXPROCS set. So the
agent keeps meeting new PIDs, new cgroups and binaries it must parse, and
forgetting old ones: what a leak or an unbounded cache would show up under.

Every workload runs below one parent cgroup capped at ``--workload-cores``
(1.0 of this 2-CPU machine): the processes are CPU-bound, and without the cap
20 of them would starve the agent, which would then measure the machine's
saturation rather than its own cost.

Measured: the agent's RSS after its first 2 cycles, every ``--sample-every``
seconds and at the end (start/end/max and a least-squares slope in MiB/hour);
cycle durations from its debug log; its CPU (utime+stime) per cycle and as a
share of one core; samples, lost samples and item errors from /metrics.

    .venv/bin/python benchmarks/bench_soak.py --quick          # ~2 minutes
    .venv/bin/python benchmarks/bench_soak.py --minutes 10 --json

Needs root, BPF and a writable v1 cpu cgroup. Every process and cgroup it
creates is removed on every exit path (SIGINT/SIGTERM included); cgroups left
by a harness that was SIGKILLed are swept at the next start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.errors import NodeAgentError
from agent.host.cgroupmodel import parse_cpu_stat
from agent.lab import cgroupwriter
from agent.shutdown import Terminated, raising_signals
from benchmarks.common import (
    CLK_TCK,
    REPO,
    agent_argv,
    cpu_ticks,
    free_port,
    http_get,
    machine_ticks,
    parse_metrics,
    status_kib,
)

V1_CPU = Path("/sys/fs/cgroup/cpu")
CGROUP_PREFIX = "node-agent-soak-"
CYCLE_RE = re.compile(r"cycle (\d+): (\d+) Go processes, ([0-9.]+)s; drain [0-9.]+s, work ([0-9.]+)s")
LOG_PROBLEM_RE = re.compile(r"\b(ERROR|WARNING|CRITICAL)\b|^Traceback")
MIB = 1024 * 1024


class SoakError(RuntimeError):
    """The soak could not run (setup) or its subject failed (agent died, never ready)."""


# ---- pure computation --------------------------------------------------------------------------


def parse_cycle(line: str) -> tuple[int, int, float, float] | None:
    """(cycle number, Go processes, seconds, work seconds) from the daemon's per-cycle debug line.

    The work (drain + pipeline) starts with the maps' flip, so the line's time minus the work
    is where the drained window ended.
    """
    m = CYCLE_RE.search(line)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), float(m.group(3)), float(m.group(4))


def schedstat_wait_ns(schedstat_text: str) -> int:
    """Time spent runnable but waiting for a CPU, from /proc/PID/task/TID/schedstat (its second field)."""
    return int(schedstat_text.split()[1])


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value units per hour."""
    if len(points) < 2:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 3600.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: an observed value, so p99 of few cycles is honestly their max."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100)
    return ordered[min(len(ordered), int(rank)) - 1]


# ---- the result --------------------------------------------------------------------------------


@dataclass
class Stats:
    p50: float | None
    p99: float | None
    max: float | None
    mean: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        return cls(
            r(percentile(values, 50)),
            r(percentile(values, 99)),
            r(max(values) if values else None),
            r(sum(values) / len(values) if values else None),
            len(values),
        )


@dataclass
class RSSReport:
    start_mib: float
    end_mib: float
    max_mib: float
    hwm_mib: float  # VmHWM at the end: the peak the kernel saw, between our samples too
    slope_mib_per_hour: float | None
    slope_second_half_mib_per_hour: float | None
    samples: list[tuple[float, float]]  # (seconds since start, MiB)


@dataclass
class CycleReport:
    count: int  # cycles 2..N (to the end of the window); p99 of few cycles is their max
    first_cycle_logged_s: float | None  # cycle 1 includes compiling and attaching BPF
    logged_s: Stats  # the debug line's figure: the interval's wait + drain + pipeline
    work_s: Stats  # logged minus --interval: what the agent spends per cycle
    histogram_mean_s: float | None  # node_agent_cycle_duration_seconds sum/count (pipeline only)
    go_processes: Stats  # Go processes per cycle, from the debug line


@dataclass
class CPUReport:
    seconds: float
    percent_of_one_core: float
    per_cycle_s: Stats
    runqueue_wait_s: float  # the agent runnable but not running: wall-clock cycle times include this
    machine_busy_percent: float  # all CPUs, everything: context for the figures above
    loadavg_1m: tuple[float, float]  # at the start and the end of the window: other load on the machine
    harness_cpu_s: float


@dataclass
class WorkloadReport:
    processes_started: int
    distinct_pids: int
    distinct_binaries: int
    binaries_available: int
    runs_per_binary: dict[str, int]
    own_cgroup: int
    gomaxprocs_env: int
    cgroups_created: int
    throttled_periods: int  # of the parent cgroup: the cap was binding
    spawn_max_s: float
    overruns: int  # still running a minute past their lifetime (starved), killed; not failures
    failures: list[str]


@dataclass
class AgentReport:
    ready_after_s: float
    exit_code: int | None
    shutdown_s: float | None
    log_problems: int
    log_problem_samples: list[str]
    scrape_s: Stats
    harness_stall_max_s: float  # longest gap between two harness polls: how late samples could be
    container_series_seen: int
    go_versions_seen: list[str]


@dataclass
class SoakResult:
    command: str
    agent_command: str
    agent_source: str
    minutes: float
    measured_s: float
    interval_s: float
    frequency_hz: int
    target_processes: int
    workload_cores: float
    seed: int
    rss: RSSReport
    cycles: CycleReport
    cpu: CPUReport
    samples_total: float
    samples_lost: dict[str, int]
    samples_lost_total: float
    lost_fraction: float | None
    errors: dict[str, int]
    workloads: WorkloadReport
    agent: AgentReport


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def render(r: SoakResult) -> str:
    c, rss, cpu, w, a = r.cycles, r.rss, r.cpu, r.workloads, r.agent
    lost = ", ".join(f"{k}={v:g}" for k, v in sorted(r.samples_lost.items())) or "none"
    errors = ", ".join(f"{k}={v:g}" for k, v in sorted(r.errors.items())) or "none"
    lines = [
        f"node-agent soak: {r.measured_s / 60:.1f} min measured, interval {r.interval_s:g}s at {r.frequency_hz} Hz, "
        f"{r.target_processes} Go processes alive (workloads capped at {r.workload_cores:g} cores), seed {r.seed}",
        f"  command: {r.command}",
        f"  agent:   {r.agent_command} (in {r.agent_source})",
        "",
        "agent RSS (VmRSS)",
        f"  start {rss.start_mib:.1f} MiB   end {rss.end_mib:.1f} MiB   max {rss.max_mib:.1f} MiB   "
        f"VmHWM {rss.hwm_mib:.1f} MiB",
        f"  slope {_f(rss.slope_mib_per_hour, '{:+.2f}')} MiB/h over {len(rss.samples)} samples "
        f"(second half: {_f(rss.slope_second_half_mib_per_hour, '{:+.2f}')} MiB/h)",
        "cycle duration",
        f"  {c.count} cycles (2..N); first cycle (BPF load + interval) {_f(c.first_cycle_logged_s)} s",
        f"  logged (incl. {r.interval_s:g}s wait): p50 {_f(c.logged_s.p50)}  p99 {_f(c.logged_s.p99)}  "
        f"max {_f(c.logged_s.max)} s",
        f"  work (logged - interval):   p50 {_f(c.work_s.p50)}  p99 {_f(c.work_s.p99)}  max {_f(c.work_s.max)} s"
        f"   histogram mean {_f(c.histogram_mean_s)} s",
        f"  Go processes per cycle: p50 {_f(c.go_processes.p50, '{:.0f}')}  max {_f(c.go_processes.max, '{:.0f}')}",
        "agent CPU (utime+stime)",
        f"  {cpu.seconds:.1f} s = {cpu.percent_of_one_core:.1f}% of one core; per cycle p50 "
        f"{_f(cpu.per_cycle_s.p50)}  max {_f(cpu.per_cycle_s.max)}  mean {_f(cpu.per_cycle_s.mean)} s",
        f"  waited {cpu.runqueue_wait_s:.1f} s for a CPU (runqueue, all threads) while runnable",
        f"  (machine busy {cpu.machine_busy_percent:.0f}% of all CPUs, load average {cpu.loadavg_1m[0]:.1f} -> "
        f"{cpu.loadavg_1m[1]:.1f}; harness itself {cpu.harness_cpu_s:.1f} s)",
        "samples",
        f"  total {r.samples_total:g}; lost {r.samples_lost_total:g} "
        f"({_f(None if r.lost_fraction is None else r.lost_fraction * 100, '{:.3f}')}%): {lost}",
        f"errors_total by kind: {errors}",
        "workloads",
        f"  {w.processes_started} processes started ({w.distinct_pids} distinct PIDs), "
        f"{w.distinct_binaries}/{w.binaries_available} distinct binaries",
        f"  {w.own_cgroup} in their own quota cgroup ({w.cgroups_created} cgroups created), "
        f"{w.gomaxprocs_env} with GOMAXPROCS set; parent cap throttled {w.throttled_periods} periods; "
        f"slowest spawn {w.spawn_max_s * 1000:.0f} ms",
        f"  agent saw {a.container_series_seen} container series, Go versions {', '.join(a.go_versions_seen) or '-'}",
        f"  workload failures: {len(w.failures)}, overruns killed: {w.overruns}"
        + (f" (first: {w.failures[0]})" if w.failures else ""),
        "agent process",
        f"  ready after {a.ready_after_s:.1f} s; exit code on SIGTERM {a.exit_code} "
        f"after {_f(a.shutdown_s, '{:.1f}')} s; {a.log_problems} warning/error log lines",
        f"  /metrics scrape latency ({a.scrape_s.n} scrapes): p50 {_f(a.scrape_s.p50)}  "
        f"max {_f(a.scrape_s.max)} s; longest harness poll gap {a.harness_stall_max_s:.2f} s",
    ]
    lines += [f"    {s}" for s in a.log_problem_samples]
    return "\n".join(lines)


# ---- the binaries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binary:
    label: str
    path: Path
    demo: bool = False  # the demo service runs as `serve` + `load`, two processes


def build_binaries() -> list[Binary]:
    from agent.lab.gotoolchain import find_toolchains
    from tests.support.gobuild import build_matrix
    from tests.support.workloads import build_demo

    toolchains = find_toolchains()
    if not toolchains:
        raise SoakError("no Go toolchain found: run scripts/setup.sh")
    out = [Binary(f"symtest-{b.label}", b.path) for b in build_matrix(toolchains=toolchains)]
    older = [t for t in toolchains if t.minor < (1, 25)] or toolchains
    out.append(Binary(f"demo-{older[-1].version_string}", build_demo(older[-1]), demo=True))
    return out


# ---- cgroups -----------------------------------------------------------------------------------


def remove_cgroup(path: Path) -> None:
    problem = cgroupwriter.remove_cgroup(path)
    if problem:
        print(f"bench_soak: {problem}", file=sys.stderr)


def sweep_stale_cgroups(root: Path = V1_CPU) -> list[str]:
    """Remove soak cgroups whose harness is gone (a SIGKILLed earlier run); the problems, if any."""
    return cgroupwriter.remove_stale(root, CGROUP_PREFIX)


class SoakCgroups:
    """node-agent-soak-<pid>/ capped at the workload budget; shared/ and one wN/ per quota'd workload."""

    def __init__(self, cores: float, root: Path = V1_CPU, period_us: int = 100_000) -> None:
        self.root = root / f"{CGROUP_PREFIX}{os.getpid()}"
        self.shared = self.root / "shared"
        self.period_us = period_us
        self.cores = cores
        self.created = 0

    def create(self) -> None:
        try:
            self.root.mkdir()
            self._limit(self.root, self.cores)
            self.shared.mkdir()
        except OSError as exc:
            remove_cgroup(self.root)
            raise SoakError(f"cannot create a v1 cpu cgroup under {self.root.parent} ({exc}); run as root") from exc

    def _limit(self, path: Path, cores: float | None) -> None:
        cgroupwriter.set_limit(path, 1, cores, self.period_us)

    def child(self, name: str, cores: float) -> Path:
        path = self.root / name
        path.mkdir()
        self._limit(path, cores)
        self.created += 1
        return path

    def throttled_periods(self) -> int:
        try:
            stat = parse_cpu_stat((self.root / "cpu.stat").read_text(), 1)
        except (OSError, NodeAgentError):
            return 0
        return stat.nr_throttled if stat is not None else 0

    def remove(self) -> None:
        remove_cgroup(self.root)


# ---- the workload fleet ------------------------------------------------------------------------


def try_rmdir(path: Path) -> bool:
    """One non-blocking attempt; a cgroup whose last task is still exiting is retried next tick."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


@dataclass
class Workload:
    seq: int
    binary: Binary
    cgroup: Path
    own_cgroup: bool
    gomaxprocs: int | None
    lifetime_s: float
    started: float
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ready_fd: int | None = None  # demo: the serve side has not written its address yet
    overran: bool = False

    @property
    def deadline(self) -> float:
        # Overrunning is the machine's doing (a 0.2-core quota on a loaded node), not a failure: counted, killed.
        return self.started + self.lifetime_s + 60.0


def _kill(w: Workload) -> None:
    """Close its ready pipe and SIGKILL its process groups; the reaping is left to the caller."""
    if w.ready_fd is not None:
        os.close(w.ready_fd)
        w.ready_fd = None
    for p in w.procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)


class Fleet:
    """Keeps ``target`` Go processes alive, each a random lifetime, each replaced by a different binary.

    Nothing here blocks on a workload: starting one, judging its exit and tearing it down (kill,
    reap, rmdir its cgroup) all happen across ticks, so the harness samples the agent on time.
    """

    def __init__(
        self,
        binaries: list[Binary],
        cgroups: SoakCgroups,
        rng: random.Random,
        target: int,
        lifetime_s: tuple[float, float] = (5.0, 40.0),
        own_cgroup_p: float = 0.4,
        gomaxprocs_p: float = 0.3,
    ) -> None:
        self.binaries = binaries
        self.cgroups = cgroups
        self.rng = rng
        self.target = target
        self.lifetime_s = lifetime_s
        self.own_cgroup_p = own_cgroup_p
        self.gomaxprocs_p = gomaxprocs_p
        self.live: list[Workload] = []
        self.dying: list[Workload] = []  # killed or exited, not yet reaped / cgroup not yet removed
        self.seq = 0
        self.pids: set[int] = set()
        self.runs: dict[str, int] = {}
        self.own_cgroup = 0
        self.gomaxprocs_env = 0
        self.failures: list[str] = []
        self.overruns = 0
        self.spawn_s: list[float] = []  # harness time per Popen (should stay milliseconds)
        self._base_env = {k: v for k, v in os.environ.items() if k not in ("GOMAXPROCS", "GODEBUG", "GOGC")}

    def alive(self) -> int:
        return sum(1 for w in self.live for p in w.procs if p.poll() is None) + sum(
            1 for w in self.live if w.ready_fd is not None
        )

    def tick(self) -> None:
        if len(self.failures) > 50:
            raise SoakError("more than 50 workload failures:\n" + "\n".join(self.failures[:10]))
        now = time.monotonic()
        for w in list(self.live):
            if self._done(w, now):
                self.live.remove(w)
                self._finish(w)
                self._start(exclude=w.binary)
        while self._slots() > 0:
            self._start(exclude=None)
        self._reap()

    def _slots(self) -> int:
        return self.target - sum(2 if w.binary.demo else 1 for w in self.live)

    def _spawn(self, w: Workload, argv: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        env = dict(self._base_env)
        if w.gomaxprocs is not None:
            env["GOMAXPROCS"] = str(w.gomaxprocs)
        t = time.monotonic()
        # Joins its cgroup before exec (the Go runtime starts inside it, its GOMAXPROCS default may read
        # the quota); the harness never waits on a child that runs throttled. Exit 125: could not join.
        proc = subprocess.Popen(
            cgroupwriter.in_cgroup(argv, w.cgroup),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
            pass_fds=pass_fds,
        )
        w.procs.append(proc)
        self.pids.add(proc.pid)
        self.spawn_s.append(time.monotonic() - t)

    def _start(self, exclude: Binary | None) -> None:
        slots = self._slots()
        choices = [b for b in self.binaries if b != exclude and (slots >= 2 or not b.demo)]
        binary = self.rng.choice(choices)
        self.seq += 1
        own = self.rng.random() < self.own_cgroup_p
        gomaxprocs = self.rng.choice((1, 2, 4)) if self.rng.random() < self.gomaxprocs_p else None
        w = Workload(
            seq=self.seq,
            binary=binary,
            cgroup=self.cgroups.shared,
            own_cgroup=False,
            gomaxprocs=gomaxprocs,
            lifetime_s=self.rng.uniform(*self.lifetime_s),
            started=time.monotonic(),
        )
        self.live.append(w)
        self.runs[binary.label] = self.runs.get(binary.label, 0) + 1
        self.gomaxprocs_env += gomaxprocs is not None
        try:
            if own:
                w.cgroup = self.cgroups.child(f"w{self.seq}", self.rng.choice((0.2, 0.3, 0.5, 0.75)))
                w.own_cgroup = True
                self.own_cgroup += 1
            if binary.demo:
                r, wfd = os.pipe()
                w.ready_fd = r
                try:
                    self._spawn(w, [str(binary.path), "serve", "-addr", "127.0.0.1:0", "-ready-fd", str(wfd)], (wfd,))
                finally:
                    os.close(wfd)
            else:
                self._spawn(w, [str(binary.path), "-spin", f"{w.lifetime_s:.1f}"])
        except OSError as exc:
            self.failures.append(f"{binary.label}: cannot start: {exc}")

    def _demo_ready(self, w: Workload) -> None:
        """Start the load once the server wrote its address (polled: the loop keeps ticking)."""
        assert w.ready_fd is not None
        if not select.select([w.ready_fd], [], [], 0)[0]:
            return
        data = os.read(w.ready_fd, 256).decode().strip()
        os.close(w.ready_fd)
        w.ready_fd = None
        if not data:
            return  # serve exited; _done sees it
        remaining = max(1.0, w.started + w.lifetime_s - time.monotonic())
        try:
            self._spawn(
                w, [str(w.binary.path), "load", "-url", f"http://{data}/work", "-c", "2", "-d", f"{remaining:.1f}s"]
            )
        except OSError as exc:
            self.failures.append(f"{w.binary.label}: cannot start load: {exc}")

    def _done(self, w: Workload, now: float) -> bool:
        if w.ready_fd is not None:
            self._demo_ready(w)
        if now > w.deadline:
            self.overruns += 1
            w.overran = True
            return True
        if not w.procs:
            return True  # failed to start
        if w.binary.demo:
            serve_done = w.procs[0].poll() is not None
            load_done = len(w.procs) > 1 and w.procs[1].poll() is not None
            return serve_done or load_done
        return w.procs[0].poll() is not None

    def _failure(self, w: Workload) -> str | None:
        """Why this exit was not the planned one; None when it was (or when it overran: the machine's doing)."""
        if w.overran:
            return None
        if not w.binary.demo:
            rc = w.procs[0].returncode if w.procs else None
            return None if rc in (None, 0) else f"exited with {rc}"
        serve = w.procs[0] if w.procs else None
        load = w.procs[1] if len(w.procs) > 1 else None
        if serve is not None and serve.poll() is not None:
            return f"serve exited on its own with {serve.returncode}"
        if load is not None and load.returncode not in (None, 0):
            return f"load exited with {load.returncode}"
        return None

    def _finish(self, w: Workload) -> None:
        """Judge the exit, signal what is left, and leave the reaping to later ticks."""
        why = self._failure(w)
        if why is not None:
            self.failures.append(f"{w.binary.label}: {why}")
        _kill(w)
        self.dying.append(w)

    def _reap(self) -> None:
        for w in list(self.dying):
            if all(p.poll() is not None for p in w.procs) and (not w.own_cgroup or try_rmdir(w.cgroup)):
                self.dying.remove(w)

    def stop(self) -> None:
        """Every workload, live or dying: SIGKILL its process group, reap it, remove its cgroup."""
        everyone = self.live + self.dying
        for w in everyone:
            _kill(w)
        for w in everyone:
            for p in w.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            if w.own_cgroup:
                remove_cgroup(w.cgroup)
        self.live.clear()
        self.dying.clear()


# ---- the agent ---------------------------------------------------------------------------------


@dataclass
class CycleObs:
    cycle: int
    go_processes: int
    logged_s: float
    work_s: float  # drain + pipeline, from the maps' flip to the line
    at: float  # monotonic time we read the line
    cpu_ticks: int  # agent utime+stime then


class Agent:
    """`python -m agent run` in its own session, its log followed incrementally."""

    def __init__(self, log_path: Path, interval_s: float, frequency_hz: int, source: Path = REPO) -> None:
        self.port = free_port()
        self.source = source
        self.argv = agent_argv(self.port, interval_s, frequency_hz, "--log-level", "debug")
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._partial = b""
        self.cycles: list[CycleObs] = []
        self.problems: list[str] = []
        self.problem_count = 0
        self.exit_code: int | None = None
        self.shutdown_s: float | None = None
        self.scrape_s: list[float] = []  # /metrics latencies: the HTTP thread shares the GIL with the cycle

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_AGENT_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.source, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise SoakError(f"the agent exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def read_log(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError:
            return
        self._log_offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            parsed = parse_cycle(line)
            if parsed is not None:
                self.cycles.append(CycleObs(*parsed, at=time.monotonic(), cpu_ticks=self.cpu_ticks()))
            elif LOG_PROBLEM_RE.search(line):
                self.problem_count += 1
                if len(self.problems) < 5:
                    self.problems.append(line[:300])

    def runqueue_wait_s(self) -> float:
        """Summed over the agent's threads: how long it was starved of a CPU by everything else on the machine."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += schedstat_wait_ns((task / "schedstat").read_text())
        return total / 1e9

    def cpu_ticks(self) -> int:
        try:
            return cpu_ticks(self.pid)
        except (OSError, NodeAgentError):
            return self.cycles[-1].cpu_ticks if self.cycles else 0

    def rss_kib(self, field_name: str = "VmRSS") -> int:
        return status_kib(Path(f"/proc/{self.pid}/status").read_text(), field_name)

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{self.port}{path}", timeout)

    def stop(self) -> None:
        """SIGTERM (the daemon detaches BPF and exits), then SIGKILL the whole session if it lingers."""
        if self.proc is None:
            return
        t = time.monotonic()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(30)
            self.shutdown_s = time.monotonic() - t
        except subprocess.TimeoutExpired:
            self.exit_code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class BackgroundScrape:
    """One /metrics scrape on a daemon thread: a starved agent answers slowly, and the fleet must keep churning."""

    def __init__(self, agent: Agent, timeout_s: float = 30.0) -> None:
        self.started = time.monotonic()
        self.result: tuple[int, str, float] | None = None  # status, body, latency
        self._agent = agent
        self._timeout_s = timeout_s
        threading.Thread(target=self._run, name="scrape", daemon=True).start()

    def _run(self) -> None:
        status, text = self._agent.get("/metrics", self._timeout_s)
        self.result = (status, text, time.monotonic() - self.started)


# ---- the soak ----------------------------------------------------------------------------------


@dataclass
class Options:
    minutes: float
    interval_s: float
    frequency_hz: int
    procs: int
    workload_cores: float
    sample_every_s: float
    ready_timeout_s: float
    seed: int
    keep_log: Path | None
    agent_source: Path = REPO


def _progress(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _proc_stat() -> tuple[int, int]:
    m = machine_ticks()
    return m.busy, m.total


def _wait(what: str, done: Callable[[], bool], timeout_s: float, agent: Agent, fleet: Fleet) -> None:
    """Poll until ``done``, keeping the fleet churning and the log followed."""
    end = time.monotonic() + timeout_s
    while not done():
        agent.check_alive()
        fleet.tick()
        agent.read_log()
        if time.monotonic() > end:
            raise SoakError(f"timed out after {timeout_s:.0f}s waiting for {what}:\n{agent.log_tail()}")
        time.sleep(0.2)


def run_soak(opts: Options, command: str) -> SoakResult:
    for problem in sweep_stale_cgroups():
        _progress(f"a stale cgroup from an earlier run is still there: {problem}")
    if os.geteuid() != 0 or not (V1_CPU / "cpu.cfs_quota_us").exists():
        raise SoakError(f"needs root and a writable cgroup v1 cpu controller at {V1_CPU}")
    _progress("building the binary matrix (cached after the first run)")
    binaries = build_binaries()
    _progress(f"{len(binaries)} binaries")
    rng = random.Random(opts.seed)
    cgroups = SoakCgroups(opts.workload_cores)
    workdir = Path(tempfile.mkdtemp(prefix="node-agent-soak-"))
    agent = Agent(workdir / "agent.log", opts.interval_s, opts.frequency_hz, opts.agent_source)
    fleet = Fleet(binaries, cgroups, rng, opts.procs)
    harness_cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        cgroups.create()
        fleet.tick()
        _progress(f"{fleet.alive()} workloads started; starting the agent: {' '.join(agent.argv)}")
        t_launch = time.monotonic()
        agent.start()
        _wait("/readyz 200", lambda: agent.get("/readyz", 1)[0] == 200, opts.ready_timeout_s, agent, fleet)
        ready_after = time.monotonic() - t_launch
        _progress(f"agent ready after {ready_after:.1f}s; waiting for its first 2 cycles")
        _wait("2 cycles", lambda: len(agent.cycles) >= 2, opts.interval_s * 4 + 120, agent, fleet)

        t0 = time.monotonic()
        start_cycles = len(agent.cycles)
        cpu0 = agent.cpu_ticks()
        wait0 = agent.runqueue_wait_s()
        busy0 = _proc_stat()
        load0 = os.getloadavg()[0]
        rss_points: list[tuple[float, float]] = [(0.0, agent.rss_kib() / 1024)]
        containers: set[str] = set()
        go_versions: set[str] = set()
        next_sample = t0 + opts.sample_every_s
        t_end = t0 + opts.minutes * 60
        _progress(f"measuring for {opts.minutes:g} min; RSS at start {rss_points[0][1]:.1f} MiB")
        stall_max = 0.0
        last = t0
        scrape: BackgroundScrape | None = None
        while True:
            now = time.monotonic()
            stall_max = max(stall_max, now - last)
            last = now
            if now >= t_end:
                break
            agent.check_alive()
            fleet.tick()
            agent.read_log()
            if scrape is not None and scrape.result is not None:
                status, text, latency = scrape.result
                scrape = None
                agent.scrape_s.append(latency)
                if status == 200:
                    snap = parse_metrics(text)
                    containers |= snap.containers
                    go_versions |= snap.go_versions
            if now >= next_sample:
                next_sample += opts.sample_every_s
                rss_points.append((now - t0, agent.rss_kib() / 1024))
                if scrape is None:
                    scrape = BackgroundScrape(agent)
                _progress(
                    f"t={now - t0:5.0f}s rss={rss_points[-1][1]:.1f} MiB cycles={len(agent.cycles)} "
                    f"alive={fleet.alive()} started={len(fleet.pids)} failures={len(fleet.failures)}"
                )
            time.sleep(min(0.2, max(0.0, t_end - now)))

        agent.read_log()
        t1 = time.monotonic()
        cpu1 = agent.cpu_ticks()
        wait1 = agent.runqueue_wait_s()
        busy1 = _proc_stat()
        load1 = os.getloadavg()[0]
        rss_points.append((t1 - t0, agent.rss_kib() / 1024))
        hwm = agent.rss_kib("VmHWM") / 1024
        t_scrape = time.monotonic()
        status, text = agent.get("/metrics", 30)
        agent.scrape_s.append(time.monotonic() - t_scrape)
        if status != 200:
            raise SoakError(f"final /metrics scrape failed ({status}):\n{agent.log_tail()}")
        final = parse_metrics(text)
        containers |= final.containers
        go_versions |= final.go_versions
        throttled = cgroups.throttled_periods()
    finally:
        fleet.stop()
        agent.stop()
        cgroups.remove()
        agent.read_log()
        if opts.keep_log is not None:
            with contextlib.suppress(OSError):
                opts.keep_log.write_bytes(agent.log_path.read_bytes())
        with contextlib.suppress(OSError):
            agent.log_path.unlink()
            workdir.rmdir()
    harness_cpu1 = resource.getrusage(resource.RUSAGE_SELF)

    measured = t1 - t0
    window = [c for c in agent.cycles[start_cycles:] if c.at <= t1]
    steady = [c for c in agent.cycles if c.cycle >= 2 and c.at <= t1]  # cycle 1 also compiled BPF
    per_cycle_cpu = [
        (b.cpu_ticks - a.cpu_ticks) / CLK_TCK / max(1, b.cycle - a.cycle)
        for a, b in zip(agent.cycles[start_cycles - 1 :], window, strict=False)
    ]
    cpu_s = (cpu1 - cpu0) / CLK_TCK
    lost_total = sum(final.lost.values())
    half = measured / 2
    second_half = [p for p in rss_points if p[0] >= half]
    first = next((c.logged_s for c in agent.cycles if c.cycle == 1), None)
    logged = [c.logged_s for c in steady]
    return SoakResult(
        command=command,
        agent_command=" ".join(agent.argv),
        agent_source=str(opts.agent_source),
        minutes=opts.minutes,
        measured_s=measured,
        interval_s=opts.interval_s,
        frequency_hz=opts.frequency_hz,
        target_processes=opts.procs,
        workload_cores=opts.workload_cores,
        seed=opts.seed,
        rss=RSSReport(
            start_mib=rss_points[0][1],
            end_mib=rss_points[-1][1],
            max_mib=max(v for _, v in rss_points),
            hwm_mib=hwm,
            slope_mib_per_hour=slope_per_hour(rss_points),
            slope_second_half_mib_per_hour=slope_per_hour(second_half) if len(second_half) >= 3 else None,
            samples=[(round(t, 1), round(v, 2)) for t, v in rss_points],
        ),
        cycles=CycleReport(
            count=len(steady),
            first_cycle_logged_s=first,
            logged_s=Stats.of(logged),
            work_s=Stats.of([max(0.0, v - opts.interval_s) for v in logged]),
            histogram_mean_s=final.cycle_seconds / final.cycles if final.cycles else None,
            go_processes=Stats.of([float(c.go_processes) for c in steady]),
        ),
        cpu=CPUReport(
            seconds=cpu_s,
            percent_of_one_core=cpu_s / measured * 100 if measured > 0 else 0.0,
            runqueue_wait_s=wait1 - wait0,
            per_cycle_s=Stats.of(per_cycle_cpu),
            machine_busy_percent=(busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 100,
            loadavg_1m=(load0, load1),
            harness_cpu_s=(harness_cpu1.ru_utime + harness_cpu1.ru_stime)
            - (harness_cpu0.ru_utime + harness_cpu0.ru_stime),
        ),
        samples_total=final.samples,
        samples_lost=final.lost,
        samples_lost_total=lost_total,
        lost_fraction=lost_total / (final.samples + lost_total) if final.samples + lost_total else None,
        errors=final.errors,
        workloads=WorkloadReport(
            processes_started=len(fleet.pids),
            distinct_pids=len(fleet.pids),
            distinct_binaries=len(fleet.runs),
            binaries_available=len(binaries),
            runs_per_binary=dict(sorted(fleet.runs.items())),
            own_cgroup=fleet.own_cgroup,
            gomaxprocs_env=fleet.gomaxprocs_env,
            cgroups_created=cgroups.created,
            throttled_periods=throttled,
            spawn_max_s=max(fleet.spawn_s, default=0.0),
            overruns=fleet.overruns,
            failures=fleet.failures,
        ),
        agent=AgentReport(
            ready_after_s=ready_after,
            exit_code=agent.exit_code,
            shutdown_s=agent.shutdown_s,
            log_problems=agent.problem_count,
            log_problem_samples=agent.problems,
            scrape_s=Stats.of(agent.scrape_s),
            harness_stall_max_s=stall_max,
            container_series_seen=len(containers),
            go_versions_seen=sorted(go_versions),
        ),
    )


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=_positive, default=10.0, help="measured soak length (default 10)")
    p.add_argument("--quick", action="store_true", help="a 2-minute soak (overrides --minutes)")
    p.add_argument("--interval", type=_positive, default=5.0, help="the agent's --interval in seconds (default 5)")
    p.add_argument("--frequency", type=int, default=97, help="the agent's sampling Hz per CPU (default 97)")
    p.add_argument("--procs", type=int, default=20, help="Go processes alive at any time (default 20)")
    p.add_argument(
        "--workload-cores", type=_positive, default=1.0, help="CPU cap on all workloads together (default 1.0)"
    )
    p.add_argument("--sample-every", type=_positive, default=30.0, help="seconds between RSS samples (default 30)")
    p.add_argument("--ready-timeout", type=_positive, default=180.0, help="seconds to wait for /readyz (default 180)")
    p.add_argument("--seed", type=int, default=1, help="workload schedule seed (default 1)")
    p.add_argument(
        "--agent-source",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="run `python -m agent` from this source tree (default: this repository), e.g. to compare versions",
    )
    p.add_argument("--keep-log", type=Path, metavar="FILE", help="copy the agent's debug log here")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    p.add_argument("--json-out", type=Path, metavar="FILE", help="also write the JSON result to FILE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.procs < 2:
        print("bench_soak: --procs must be at least 2", file=sys.stderr)
        return 2
    opts = Options(
        minutes=2.0 if args.quick else args.minutes,
        interval_s=args.interval,
        frequency_hz=args.frequency,
        procs=args.procs,
        workload_cores=args.workload_cores,
        sample_every_s=args.sample_every,
        ready_timeout_s=args.ready_timeout,
        seed=args.seed,
        keep_log=args.keep_log,
        agent_source=args.agent_source.resolve(),
    )
    command = " ".join([".venv/bin/python", "benchmarks/bench_soak.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        with raising_signals():
            result = run_soak(opts, command)
    except SoakError as exc:
        print(f"bench_soak: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        print("bench_soak: interrupted; everything it started was removed", file=sys.stderr)
        return exc.exit_code if isinstance(exc, Terminated) else 130
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(asdict(result), indent=2) + "\n")
    if args.json:
        json.dump(asdict(result), sys.stdout, indent=2)
        print()
    else:
        print(render(result))
    failed = result.workloads.failures or result.agent.exit_code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
