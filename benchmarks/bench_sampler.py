"""Sampler overhead benchmark: the real agent vs `perf record` (the anchor), in one run.

A CPU-bound Go workload (benchmarks/workload: 2 busy threads, GOMAXPROCS=2, so
both CPUs of the machine are busy) reports the work units it completed; its
throughput is measured in three configurations, interleaved round by round in
a rotating order (alone/agent/perf, agent/perf/alone, ...) so drift cancels:

- ``alone``: nothing else of ours runs;
- ``agent``: the full daemon, ``python -m agent run --interval 15 --no-kubernetes
  --listen 127.0.0.1:PORT --frequency 97``, started before the window and past
  its BPF compile (``/readyz`` 200) and, with ``--warmup-cycles 1``, past one
  drain/symbolize/attribute cycle that saw the workload's binary (a filler copy
  of the workload keeps the CPUs busy until the window); the window then opens
  half an interval after a cycle, so a window of k intervals holds exactly k
  cycles, the steady-state rate;
- ``perf``: ``perf record -F 97 -a -g -o FILE -- sleep N``, started 1 s before
  the window.

Reported: throughput slowdown of agent and perf vs alone (and the same per
workload CPU-second, which other processes on a shared machine disturb less),
the tool's own CPU (utime+stime of all its threads from /proc/PID/stat over
the window) as % of one core, its VmHWM/VmRSS at the end of the window, the
agent's samples/s and lost samples from its /metrics, how much CPU other
processes used during the windows (the noise), and the kernel's own account of
the agent's BPF program (run time per sample, with kernel.bpf_stats_enabled set
for the run): the program runs in the sampled task's interrupt, so only this
shows its cost. Agent process CPU + BPF CPU, as a share of the workload's CPUs,
is the cost model: the slowdown a CPU-bound workload can see, free of the
machine's noise (on a VM, steal time moves single windows by several percent). Targets: agent slowdown < 1%,
agent CPU < 1% of one core. Exit status 0 whatever the figures; 1 when
something failed to run (a window whose agent or perf died is run again,
--retries times, and the death is reported).

On a shared machine, ``--nice -20`` renices this process and its autogroup,
so the workload, agent and perf alike (all children, one session) get the
CPUs ahead of other sessions' processes; the "others" column shows what
still ran beside them.

    .venv/bin/python benchmarks/bench_sampler.py                      # 4 rounds x 30 s per configuration
    .venv/bin/python benchmarks/bench_sampler.py --seconds 15 --rounds 2 --json   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from agent.cachedir import cache_dir
from agent.errors import NodeAgentError
from agent.lab.gotoolchain import GoToolchain, build_program, find_toolchain, source_hash
from agent.shutdown import Terminated, raising_signals
from benchmarks.common import (
    REPO,
    AgentCounters,
    agent_argv,
    cpu_seconds,
    free_port,
    http_get,
    machine_ticks,
    memory_kib,
    parse_metrics,
    stop_group,
)

HERE = Path(__file__).resolve().parent
WORKLOAD_SRC = HERE / "workload"
CONFIGS = ("alone", "agent", "perf")
TARGET_SLOWDOWN_PCT = 1.0
TARGET_AGENT_CPU_PCT = 1.0
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """Something the benchmark needs did not run; exit status 1."""


class ToolExited(BenchError):
    """The agent or perf died during its window; the window can be run again (--retries)."""

    def __init__(self, message: str, last_line: str) -> None:
        super().__init__(message)
        self.last_line = last_line


# ---- building the workload --------------------------------------------------------------------


def build_workload(tc: GoToolchain) -> Path:
    """The workload binary for this source and toolchain, built once into the cache."""
    base = cache_dir() / "bench"
    out = base / f"workload-{source_hash(WORKLOAD_SRC)}-{tc.version_string}"
    try:
        build_program(tc, WORKLOAD_SRC, out, cache=base)
    except NodeAgentError as exc:
        raise BenchError(exc.describe()) from None
    return out


# ---- /proc readings ---------------------------------------------------------------------------


BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def bpf_prog_runtime(pid: int, proc: Path = Path("/proc")) -> tuple[float, int]:
    """(seconds, runs) of the BPF programs ``pid`` holds, from fdinfo; zeros unless bpf_stats_enabled.

    The kernel's own account of the sampler's in-kernel cost: the program runs in
    the sampled task's interrupt, so no /proc/PID/stat shows it.
    """
    ns = runs = 0
    for info in (proc / str(pid) / "fdinfo").iterdir():
        try:
            fields = dict(line.split(":", 1) for line in info.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if "prog_type" in fields and "run_time_ns" in fields:
            ns += int(fields["run_time_ns"])
            runs += int(fields.get("run_cnt", "0"))
    return ns / 1e9, runs


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[bool]:
    """kernel.bpf_stats_enabled=1 for the run, then as it was; False if it cannot be set."""
    try:
        old = BPF_STATS.read_text().strip()
        BPF_STATS.write_text("1")
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            BPF_STATS.write_text(old)


# ---- child processes --------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies, so nothing outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn(
    cmd: Sequence[str],
    *,
    stdout: IO[Any] | int,
    stderr: IO[Any] | int,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
        # Its own process group (so stop() can sweep it) but our session: a new session would be a new
        # autogroup, and with sched_autogroup_enabled every autogroup gets an equal CPU share, nice aside.
        process_group=0,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads in this process)
    )


# ---- the workload -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadResult:
    units: int
    seconds: float
    units_per_s: float
    cpu_seconds: float
    gomaxprocs: int


def run_workload(binary: Path, seconds: float, threads: int) -> WorkloadResult:
    env = dict(os.environ, GOMAXPROCS=str(threads))
    cmd = [str(binary), "-seconds", str(seconds), "-threads", str(threads)]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        stop_group(proc, signal.SIGKILL, 5)
    if proc.returncode != 0:
        raise BenchError(f"workload exited with {proc.returncode}: {err.decode(errors='replace')}")
    r = json.loads(out)
    if r["gomaxprocs"] != threads:
        raise BenchError(f"workload ran with GOMAXPROCS={r['gomaxprocs']}, wanted {threads}")
    return WorkloadResult(int(r["units"]), r["seconds"], r["units_per_s"], r["cpu_seconds"], r["gomaxprocs"])


# ---- the tools --------------------------------------------------------------------------------


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


@dataclass
class ToolStats:
    """One tool in one window."""

    pid: int
    wall_s: float
    cpu_s: float
    vm_hwm_kb: int
    vm_rss_kb: int
    samples: int | None = None  # agent: busy samples drained in the window's cycles
    sampled_s: float | None = None  # agent: the time those cycles' drains covered
    lost: dict[str, int] = field(default_factory=dict)
    cycles: int | None = None
    cycle_s: float | None = None  # agent: time its cycles spent in drain + symbolize + attribute
    errors: dict[str, int] = field(default_factory=dict)
    ready_s: float | None = None  # start to /readyz 200 (the BPF compile), outside the window

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s


class Tool:
    """A profiler that runs around one measurement window."""

    name = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def before_window(self) -> None:
        """Called right before the window opens."""

    def snapshot(self) -> Any:
        return None

    def finish(self, wall_s: float, cpu_s: float, before: Any, after: Any) -> ToolStats:
        assert self.proc is not None
        hwm, rss = memory_kib(self.proc.pid)
        return ToolStats(self.proc.pid, wall_s, cpu_s, hwm, rss)

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            tail = self.log_tail()
            last = tail.strip().splitlines()[-1] if tail.strip() else ""
            raise ToolExited(f"{self.name} exited early (status {code}):\n{tail}", last)

    def log_tail(self) -> str:
        return ""


class Agent(Tool):
    name = "agent"

    def __init__(
        self,
        workdir: Path,
        interval_s: float,
        frequency: int,
        warmup_cycles: int,
        phase_s: float,
        workload: Path,
        threads: int,
        ready_timeout_s: float,
    ) -> None:
        self.workdir = workdir
        self.interval_s = interval_s
        self.frequency = frequency
        self.warmup_cycles = warmup_cycles
        self.phase_s = phase_s
        self.workload = workload
        self.threads = threads
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self.log = workdir / "agent.log"
        self.ready_s: float | None = None

    def command(self, port: int | str) -> list[str]:
        return agent_argv(port, self.interval_s, self.frequency)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def scrape(self) -> AgentCounters:
        status, body = http_get(self.url("/metrics"))
        if status != 200:
            time.sleep(1)  # a dying agent drops the connection before it is reaped
            self.alive()
            raise BenchError(f"agent /metrics answered {status}: {body[:200]}")
        return parse_metrics(body)

    def start(self) -> None:
        self.port = free_port()
        with open(self.log, "wb") as log:
            self.proc = spawn(self.command(self.port), stdout=log, stderr=log, cwd=REPO)
        t0 = time.monotonic()
        body = ""
        while time.monotonic() - t0 < self.ready_timeout_s:
            self.alive()
            status, body = http_get(self.url("/readyz"), timeout=2)
            if status == 200:
                self.ready_s = time.monotonic() - t0
                return
            time.sleep(0.25)
        raise BenchError(f"agent not ready after {self.ready_timeout_s:.0f}s: {body.strip()}\n{self.log_tail()}")

    def before_window(self) -> None:
        """Warm up through whole cycles, then open the window half an interval after one.

        A filler copy of the workload keeps both CPUs busy from /readyz to the window, so
        the agent's first cycles see the workload's binary (a steady-state agent has it
        cached) and the first cycle inside the window drains a fully busy interval.
        """
        filler = spawn(
            [str(self.workload), "-seconds", "86400", "-threads", str(self.threads)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, GOMAXPROCS=str(self.threads)),
        )
        try:
            mark = time.monotonic()
            if self.warmup_cycles > 0:
                target = self.scrape().cycles + self.warmup_cycles
                limit = self.interval_s * (self.warmup_cycles + 2) + 60
                while self.scrape().cycles < target:
                    if time.monotonic() - mark > limit:
                        raise BenchError(f"agent finished {self.warmup_cycles} cycle(s) in {limit:.0f}s")
                    time.sleep(0.2)
                mark = time.monotonic()
            time.sleep(max(0.0, mark + self.phase_s - time.monotonic()))
        finally:
            stop_group(filler, signal.SIGKILL, 5)
        self.alive()

    def snapshot(self) -> AgentCounters:
        return self.scrape()

    def finish(self, wall_s: float, cpu_s: float, before: Any, after: Any) -> ToolStats:
        stats = super().finish(wall_s, cpu_s, before, after)
        assert isinstance(before, AgentCounters) and isinstance(after, AgentCounters)
        cycles = after.cycles - before.cycles
        cycle_s = after.cycle_seconds - before.cycle_seconds
        stats.samples = after.samples - before.samples
        # Each drain covers one interval of waiting plus the previous cycle's own work.
        stats.sampled_s = cycles * self.interval_s + cycle_s if cycles else None
        stats.lost = _delta(after.lost, before.lost)
        stats.errors = _delta(after.errors, before.errors)
        stats.cycles = cycles
        stats.cycle_s = cycle_s
        stats.ready_s = self.ready_s
        return stats

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGTERM, 60)

    def log_tail(self) -> str:
        try:
            return "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        except OSError:
            return ""


class Perf(Tool):
    name = "perf"

    def __init__(self, workdir: Path, frequency: int, seconds: float, settle_s: float = 1.0) -> None:
        self.workdir = workdir
        self.frequency = frequency
        self.seconds = seconds
        self.settle_s = settle_s
        self.data = workdir / "perf.data"
        self.log = workdir / "perf.log"
        self.started = 0.0
        self.samples: int | None = None
        self.ran_s = 0.0

    def command(self) -> list[str]:
        sleep_s = int(self.seconds + self.settle_s + 30)  # outlives the window; SIGINT ends it after
        return [
            "perf",
            "record",
            "-F",
            str(self.frequency),
            "-a",
            "-g",
            "-o",
            str(self.data),
            "--",
            "sleep",
            str(sleep_s),
        ]

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = spawn(self.command(), stdout=log, stderr=log)
        self.started = time.monotonic()
        time.sleep(self.settle_s)
        self.alive()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.ran_s = time.monotonic() - self.started
        stop_group(self.proc, signal.SIGINT, 120)
        m = re.search(r"\((\d+) samples\)", self.log_tail())
        self.samples = int(m.group(1)) if m else None
        self.data.unlink(missing_ok=True)
        self.data.with_name(self.data.name + ".old").unlink(missing_ok=True)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


# ---- one window -------------------------------------------------------------------------------


@dataclass
class Window:
    config: str
    round: int
    units: int
    seconds: float
    units_per_s: float
    workload_cpu_s: float
    units_per_cpu_s: float
    wall_s: float
    other_cpu_s: float  # CPU used on the machine by everything but the workload and the tool
    steal_s: float
    tool: ToolStats | None = None
    bpf_s: float = 0.0  # the agent's BPF program: run time and runs inside the window (kernel's bpf_stats)
    bpf_runs: int = 0
    perf_samples: int | None = None  # perf: samples it wrote over its whole run (incl. 1 s settle)
    perf_ran_s: float | None = None


def run_window(config: str, rnd: int, args: argparse.Namespace, workload: Path, workdir: Path) -> Window:
    tool: Tool | None = None
    if config == "agent":
        tool = Agent(
            workdir,
            args.interval,
            args.frequency,
            args.warmup_cycles,
            args.phase,
            workload,
            args.threads,
            args.ready_timeout,
        )
    elif config == "perf":
        tool = Perf(workdir, args.frequency, args.seconds)
    try:
        if tool is not None:
            tool.start()
            tool.before_window()
        snap0 = tool.snapshot() if tool else None
        tool_cpu0 = cpu_seconds(tool.proc.pid) if tool and tool.proc else 0.0
        bpf0 = bpf_prog_runtime(tool.proc.pid) if isinstance(tool, Agent) and tool.proc else (0.0, 0)
        m0, t0 = machine_ticks(), time.monotonic()
        wl = run_workload(workload, args.seconds, args.threads)
        m1, t1 = machine_ticks(), time.monotonic()
        tool_cpu1 = cpu_seconds(tool.proc.pid) if tool and tool.proc else 0.0
        bpf1 = bpf_prog_runtime(tool.proc.pid) if isinstance(tool, Agent) and tool.proc else (0.0, 0)
        stats = None
        if tool is not None:
            tool.alive()
            stats = tool.finish(t1 - t0, tool_cpu1 - tool_cpu0, snap0, tool.snapshot())
    finally:
        if tool is not None:
            tool.stop()
    tool_cpu = tool_cpu1 - tool_cpu0
    w = Window(
        config=config,
        round=rnd,
        units=wl.units,
        seconds=wl.seconds,
        units_per_s=wl.units_per_s,
        workload_cpu_s=wl.cpu_seconds,
        units_per_cpu_s=wl.units / wl.cpu_seconds if wl.cpu_seconds else 0.0,
        wall_s=t1 - t0,
        other_cpu_s=max(0.0, m1.busy_s - m0.busy_s - wl.cpu_seconds - tool_cpu),
        steal_s=m1.steal_s - m0.steal_s,
        tool=stats,
        bpf_s=bpf1[0] - bpf0[0],
        bpf_runs=bpf1[1] - bpf0[1],
    )
    if isinstance(tool, Perf):
        w.perf_samples, w.perf_ran_s = tool.samples, tool.ran_s
    return w


# ---- summary ----------------------------------------------------------------------------------


def _rel_stdev_pct(xs: list[float]) -> float | None:
    return 100.0 * statistics.stdev(xs) / statistics.fmean(xs) if len(xs) > 1 else None


def summarize(windows: list[Window], args: argparse.Namespace) -> dict[str, Any]:
    by = {c: [w for w in windows if w.config == c] for c in CONFIGS}
    base = statistics.fmean(w.units_per_s for w in by["alone"])
    base_cpu = statistics.fmean(w.units_per_cpu_s for w in by["alone"])
    alone_by_round = {w.round: w for w in by["alone"]}
    ncpu = os.cpu_count() or 1
    out: dict[str, Any] = {}
    for c in CONFIGS:
        ws = by[c]
        tput = [w.units_per_s for w in ws]
        wall = sum(w.wall_s for w in ws)
        entry: dict[str, Any] = {
            "windows": len(ws),
            "measured_s": round(sum(w.seconds for w in ws), 2),
            "units_per_s_mean": round(statistics.fmean(tput), 2),
            "units_per_s_by_round": [round(x, 2) for x in tput],
            "round_stdev_pct": _round(_rel_stdev_pct(tput), 3),
            "units_per_cpu_s_mean": round(statistics.fmean(w.units_per_cpu_s for w in ws), 2),
            "other_cpu_pct_of_machine": round(100.0 * sum(w.other_cpu_s for w in ws) / wall / ncpu, 2),
            "steal_pct_of_machine": round(100.0 * sum(w.steal_s for w in ws) / wall / ncpu, 2),
        }
        if c != "alone":
            paired = [100.0 * (1 - w.units_per_s / alone_by_round[w.round].units_per_s) for w in ws]
            entry["slowdown_pct"] = round(100.0 * (1 - statistics.fmean(tput) / base), 3)
            entry["slowdown_pct_by_round"] = [round(x, 3) for x in paired]
            entry["slowdown_pct_median"] = round(statistics.median(paired), 3)
            entry["slowdown_per_cpu_s_pct"] = round(
                100.0 * (1 - statistics.fmean(w.units_per_cpu_s for w in ws) / base_cpu), 3
            )
            tools = [w.tool for w in ws if w.tool is not None]
            tool_wall = sum(t.wall_s for t in tools)
            entry["cpu_pct_of_one_core"] = round(100.0 * sum(t.cpu_s for t in tools) / tool_wall, 3)
            # Noise-robust cross-check: what the tool costs the workload inside its own CPU time (the
            # sampling interrupts, the BPF program) times the CPU the tool's process takes from it.
            kept = (1 - entry["slowdown_per_cpu_s_pct"] / 100) * (1 - entry["cpu_pct_of_one_core"] / 100 / args.threads)
            entry["slowdown_model_pct"] = round(100.0 * (1 - kept), 3)
            entry["cpu_s"] = round(sum(t.cpu_s for t in tools), 2)
            entry["vm_hwm_kb_max"] = max(t.vm_hwm_kb for t in tools)
            entry["vm_rss_kb_max"] = max(t.vm_rss_kb for t in tools)
            entry["vm_rss_kb_by_round"] = [t.vm_rss_kb for t in tools]
        if c == "agent":
            tools = [w.tool for w in ws if w.tool is not None]
            sampled = sum(t.sampled_s or 0.0 for t in tools)
            cycles = sum(t.cycles or 0 for t in tools)
            lost: dict[str, int] = {}
            errors: dict[str, int] = {}
            for t in tools:
                for k, v in t.lost.items():
                    lost[k] = lost.get(k, 0) + v
                for k, v in t.errors.items():
                    errors[k] = errors.get(k, 0) + v
            entry["samples"] = sum(t.samples or 0 for t in tools)
            entry["samples_per_s"] = round(entry["samples"] / sampled, 1) if sampled else None
            entry["expected_samples_per_s"] = args.frequency * args.threads
            entry["lost"] = lost
            entry["lost_total"] = sum(lost.values())
            entry["errors"] = errors
            entry["cycles_in_windows"] = cycles
            entry["cycle_ms_mean"] = round(1000 * sum(t.cycle_s or 0.0 for t in tools) / cycles, 1) if cycles else None
            entry["ready_s"] = [round(t.ready_s, 1) for t in tools if t.ready_s is not None]
            bpf_s, bpf_runs = sum(w.bpf_s for w in ws), sum(w.bpf_runs for w in ws)
            wall = sum(w.wall_s for w in ws)
            entry["bpf_runs"] = bpf_runs
            entry["bpf_us_per_run"] = round(1e6 * bpf_s / bpf_runs, 2) if bpf_runs else None
            entry["bpf_cpu_pct_of_one_core"] = round(100.0 * bpf_s / wall, 3) if bpf_runs else None
            # Cost model, immune to the machine's noise: the CPU the agent's process and its BPF program
            # take, as a share of the workload's CPUs. This is the slowdown a CPU-bound workload can see.
            if bpf_runs:
                entry["slowdown_cost_pct"] = round(
                    (entry["cpu_pct_of_one_core"] + entry["bpf_cpu_pct_of_one_core"]) / args.threads, 3
                )
        if c == "perf":
            ran = sum(w.perf_ran_s or 0.0 for w in ws)
            n = [w.perf_samples for w in ws if w.perf_samples is not None]
            entry["samples"] = sum(n) if n else None
            entry["samples_per_s_whole_run"] = round(sum(n) / ran, 1) if n and ran else None
        out[c] = entry
    agent = out["agent"]
    out["targets"] = {
        "agent_slowdown_pct": {
            "target": f"< {TARGET_SLOWDOWN_PCT}",
            "value": agent["slowdown_pct"],
            "pass": agent["slowdown_pct"] < TARGET_SLOWDOWN_PCT,
        },
        "agent_cpu_pct_of_one_core": {
            "target": f"< {TARGET_AGENT_CPU_PCT}",
            "value": agent["cpu_pct_of_one_core"],
            "pass": agent["cpu_pct_of_one_core"] < TARGET_AGENT_CPU_PCT,
        },
    }
    if agent.get("slowdown_cost_pct") is not None:
        out["targets"]["agent_slowdown_cost_pct"] = {
            "target": f"< {TARGET_SLOWDOWN_PCT}",
            "value": agent["slowdown_cost_pct"],
            "pass": agent["slowdown_cost_pct"] < TARGET_SLOWDOWN_PCT,
        }
    return out


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def render(s: dict[str, Any], meta: dict[str, Any]) -> str:
    a, p, z = s["agent"], s["perf"], s["alone"]

    def cell(e: dict[str, Any], key: str, fmt: str) -> str:
        return "-" if e.get(key) is None else format(e[key], fmt)

    lines = [
        f"workload   {meta['threads']} threads, GOMAXPROCS={meta['threads']}, {meta['seconds']:g} s x "
        f"{meta['rounds']} rounds per configuration, interleaved ({meta['go']}); {meta['cpus']} CPUs, "
        f"nice {meta['nice']}",
        f"agent      {' '.join(meta['agent_command'])}",
        f"perf       {' '.join(meta['perf_command'])}",
        "",
        f"{'':<7}{'units/s':>10}{'slowdown':>10}{'median':>9}{'/CPU-s':>9}{'model':>8}{'tool CPU':>10}"
        f"{'VmHWM KiB':>11}{'VmRSS KiB':>11}{'others':>8}",
    ]
    for name, e in (("alone", z), ("agent", a), ("perf", p)):
        lines.append(
            f"{name:<7}{e['units_per_s_mean']:>10.1f}{cell(e, 'slowdown_pct', '+.2f'):>10}"
            f"{cell(e, 'slowdown_pct_median', '+.2f'):>9}{cell(e, 'slowdown_per_cpu_s_pct', '+.2f'):>9}"
            f"{cell(e, 'slowdown_model_pct', '+.2f'):>8}{cell(e, 'cpu_pct_of_one_core', '.2f'):>10}"
            f"{cell(e, 'vm_hwm_kb_max', 'd'):>11}{cell(e, 'vm_rss_kb_max', 'd'):>11}"
            f"{e['other_cpu_pct_of_machine']:>8.1f}"
        )
    lines += [
        "",
        "units/s: workload throughput, mean of the rounds. slowdown (%): vs alone, from the means; median: of the",
        "per-round pairs; /CPU-s: slowdown of units per workload CPU-second (the sampling interrupt and BPF program",
        "run in the workload's time); model: /CPU-s combined with the tool CPU taken from the workload's CPUs.",
        "tool CPU: utime+stime of all the tool's threads over the windows, % of one core. VmHWM/VmRSS: largest at",
        "the end of a window. others: CPU used by other processes during the windows, % of the machine.",
        "",
        f"alone round-to-round stdev {_fmt(z['round_stdev_pct'])}; per-round slowdowns: agent "
        f"{_list(a['slowdown_pct_by_round'])}, perf {_list(p['slowdown_pct_by_round'])}",
        f"agent: {a['samples']} samples in {a['cycles_in_windows']} cycles = {_fmt(a['samples_per_s'], '/s')} "
        f"(both CPUs busy at {meta['frequency']} Hz: {a['expected_samples_per_s']}/s); lost {a['lost_total']}"
        f"{' ' + str(a['lost']) if a['lost'] else ''}; mean cycle {_fmt(a['cycle_ms_mean'], ' ms')}; "
        f"/readyz after {a['ready_s']} s (outside the windows)" + (f"; errors {a['errors']}" if a["errors"] else ""),
        (
            f"agent BPF program (kernel bpf_stats): {a['bpf_runs']} runs, {_fmt(a['bpf_us_per_run'], ' us')} each = "
            f"{_fmt(a['bpf_cpu_pct_of_one_core'], '% of one core')}; agent process + BPF as a share of the "
            f"workload's {meta['threads']} CPUs: {_fmt(a.get('slowdown_cost_pct'), '%')} (the cost model)"
            if a.get("bpf_runs")
            else "agent BPF program: no run-time figures (kernel.bpf_stats_enabled could not be set)"
        ),
        f"perf: {p['samples']} samples, {_fmt(p['samples_per_s_whole_run'], '/s')} over its whole run",
        "",
    ]
    for crash in meta["tool_crashes"]:
        lines.append(f"CRASH {crash['config']} died in round {crash['round'] + 1} (window run again): {crash['error']}")
    for key, t in s["targets"].items():
        lines.append(f"{'PASS' if t['pass'] else 'FAIL'}  {key} = {t['value']:.3f} (target {t['target']})")
    noisy = max(e["other_cpu_pct_of_machine"] for e in (z, a, p))
    spread = z["round_stdev_pct"]
    if noisy > 2.0 or (spread or 0.0) > TARGET_SLOWDOWN_PCT / 2:
        lines.append(
            f"NOTE  other processes used up to {noisy:.1f}% of the machine"
            + (f" and alone varied {spread:.2f}% round to round" if spread is not None else "")
            + ": a slowdown of under 1% is within the noise; see /CPU-s and model"
        )
    return "\n".join(lines)


def _fmt(x: float | None, unit: str = "%") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}" if unit == "%" else f"{x:g}{unit}"


def _list(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:+.2f}%" for x in xs) + "]"


# ---- main -------------------------------------------------------------------------------------


def set_nice(nice: int, proc: Path = Path("/proc")) -> None:
    """Renice this process and its autogroup (children inherit both).

    With ``kernel.sched_autogroup_enabled`` the CPU is first shared between
    autogroups (sessions), so a process's own nice only ranks it inside its
    session: the autogroup's nice is what counts against other sessions.
    """
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    with contextlib.suppress(FileNotFoundError):
        (proc / "self" / "autogroup").write_text(f"{nice}\n")


def wait_quiet(max_wait_s: float, quiet_pct: float, sample_s: float = 2.0) -> float:
    """Wait until the machine is under ``quiet_pct`` busy over ``sample_s``; the last busy %."""
    ncpu = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait_s
    while True:
        m0 = machine_ticks()
        time.sleep(sample_s)
        busy = 100.0 * (machine_ticks().busy_s - m0.busy_s) / sample_s / ncpu
        if busy < quiet_pct or time.monotonic() >= deadline:
            return busy


def order(rnd: int) -> tuple[str, ...]:
    """Rotate the configurations each round: every one runs first, second and third equally often."""
    k = rnd % len(CONFIGS)
    return CONFIGS[k:] + CONFIGS[:k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per window (default 30)")
    ap.add_argument("--rounds", type=int, default=4, help="windows per configuration (default 4)")
    ap.add_argument("--threads", type=int, default=2, help="workload threads and GOMAXPROCS (default 2)")
    ap.add_argument("--frequency", type=int, default=97, help="sampling Hz for agent and perf (default 97)")
    ap.add_argument("--interval", type=float, default=15.0, help="agent --interval (default 15)")
    ap.add_argument("--warmup-cycles", type=int, default=1, help="agent cycles before a window (default 1)")
    ap.add_argument("--phase", type=float, help="seconds from an agent cycle to the window (default interval/2)")
    ap.add_argument("--settle", type=float, default=2.0, help="pause between windows (default 2 s)")
    ap.add_argument("--ready-timeout", type=float, default=300.0, help="max seconds to /readyz 200 (default 300)")
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for this process and so for the workload, agent and perf alike (default 0); a negative "
        "value pushes other processes of a shared machine aside without favouring any configuration",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each window, wait up to this long for the machine to be under --quiet-pct busy (default 0)",
    )
    ap.add_argument("--quiet-pct", type=float, default=10.0, help="what counts as quiet, %% of the machine (10)")
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="run a window again this many times when the agent or perf dies in it; reported (default 2)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    if args.phase is None:
        args.phase = args.interval / 2
    if args.seconds <= 0 or args.rounds < 1 or args.threads < 1:
        ap.error("--seconds must be > 0, --rounds and --threads >= 1")
    if shutil.which("perf") is None:
        print("bench_sampler: perf not found", file=sys.stderr)
        return 1
    tc = find_toolchain()
    if tc is None:
        print("bench_sampler: no Go toolchain found: run scripts/setup.sh", file=sys.stderr)
        return 1

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.nice:
        set_nice(args.nice)
    windows: list[Window] = []
    crashes: list[dict[str, Any]] = []
    try:
        with raising_signals(), bpf_stats_enabled(), tempfile.TemporaryDirectory(prefix="bench_sampler.") as tmp:
            workload = build_workload(tc)
            workdir = Path(tmp)
            for rnd in range(args.rounds):
                for config in order(rnd):
                    if args.wait_quiet > 0:
                        busy = wait_quiet(args.wait_quiet, args.quiet_pct)
                        if busy >= args.quiet_pct:
                            progress(f"  machine still {busy:.0f}% busy after {args.wait_quiet:g}s; measuring anyway")
                    progress(f"round {rnd + 1}/{args.rounds}: {config} ...")
                    for attempt in range(args.retries + 1):
                        try:
                            w = run_window(config, rnd, args, workload, workdir)
                            break
                        except ToolExited as exc:
                            crashes.append({"config": config, "round": rnd, "error": exc.last_line})
                            if attempt == args.retries:
                                raise
                            progress(f"  {config} died ({exc.last_line}); running the window again")
                            time.sleep(args.settle)
                    windows.append(w)
                    extra = f", tool CPU {w.tool.cpu_pct:.2f}% of a core" if w.tool else ""
                    progress(f"  {w.units_per_s:.1f} units/s, others {w.other_cpu_s:.2f} CPU-s{extra}")
                    time.sleep(args.settle)
            meta = {
                "seconds": args.seconds,
                "rounds": args.rounds,
                "threads": args.threads,
                "frequency": args.frequency,
                "interval": args.interval,
                "warmup_cycles": args.warmup_cycles,
                "phase": args.phase,
                "go": tc.version_string,
                "cpus": os.cpu_count(),
                "agent_command": Agent(workdir, args.interval, args.frequency, 0, 0, workload, 1, 0).command("PORT"),
                "perf_command": Perf(workdir, args.frequency, args.seconds).command(),
                "nice": args.nice,
                "tool_crashes": crashes,
                "argv": sys.argv,
            }
    except BenchError as exc:
        print(f"bench_sampler: {exc}", file=sys.stderr)
        return 1
    except Terminated as exc:
        print(f"bench_sampler: {exc}; its children were stopped", file=sys.stderr)
        return exc.exit_code
    summary = summarize(windows, args)
    if args.json:
        print(json.dumps({"meta": meta, "summary": summary, "windows": [asdict(w) for w in windows]}, indent=2))
    else:
        print(render(summary, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
