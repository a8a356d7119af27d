"""What the benchmarks share: the agent's command line, /proc readings and its /metrics, parsed once.

bench_sampler.py and bench_soak.py both run ``python -m agent run`` on loopback, read
its CPU and memory from /proc and scrape its counters; they differ in what they do
around it (a measured window against perf, a soak under churn), not in these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.host.procfs import parse_stat

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


# ---- the agent ---------------------------------------------------------------------------------


def agent_argv(port: int | str, interval_s: float, frequency_hz: int, *extra: str) -> list[str]:
    """``python -m agent run`` without Kubernetes, listening on loopback ``port``."""
    return [
        sys.executable, "-m", "agent", "run",
        "--interval", f"{interval_s:g}",
        "--frequency", str(frequency_hz),
        "--no-kubernetes",
        "--listen", f"127.0.0.1:{port}",
        *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body); status 0 with the reason as body when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def stop_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 60.0) -> int | None:
    """Signal the process, wait up to ``grace_s``, then SIGKILL its process group; its exit status
    (None if it had to be killed)."""
    code: int | None = None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        code = proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    return code


# ---- /proc -------------------------------------------------------------------------------------


def cpu_ticks(pid: int, proc: Path = PROC) -> int:
    """utime + stime of every thread of ``pid``, in clock ticks (agent.host.procfs parses the line)."""
    stat = parse_stat((proc / str(pid) / "stat").read_text())
    return stat.utime + stat.stime


def cpu_seconds(pid: int, proc: Path = PROC) -> float:
    return cpu_ticks(pid, proc) / CLK_TCK


def status_kib(status_text: str, name: str) -> int:
    """A ``VmRSS:``-style line of /proc/PID/status, in KiB."""
    for line in status_text.splitlines():
        key, _, rest = line.partition(":")
        if key == name:
            return int(rest.split()[0])
    raise ValueError(f"no {name} line (a kernel thread or a zombie?)")


def memory_kib(pid: int, proc: Path = PROC) -> tuple[int, int]:
    """(VmHWM, VmRSS) in KiB."""
    text = (proc / str(pid) / "status").read_text()
    return status_kib(text, "VmHWM"), status_kib(text, "VmRSS")


@dataclass(frozen=True)
class MachineTicks:
    """The first line of /proc/stat: all CPUs, in clock ticks."""

    busy: int  # user+nice+system+irq+softirq (guest time is inside user)
    steal: int
    total: int  # the first eight fields

    @property
    def busy_s(self) -> float:
        return self.busy / CLK_TCK

    @property
    def steal_s(self) -> float:
        return self.steal / CLK_TCK


def parse_machine_ticks(proc_stat_text: str) -> MachineTicks:
    for line in proc_stat_text.splitlines():
        if line.startswith("cpu "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in line.split()[1:9])
            busy = user + nice + system + irq + softirq
            return MachineTicks(busy, steal, sum(int(x) for x in line.split()[1:9]))
    raise ValueError("no cpu line in /proc/stat")


def machine_ticks(proc: Path = PROC) -> MachineTicks:
    return parse_machine_ticks((proc / "stat").read_text())


# ---- /metrics ----------------------------------------------------------------------------------


@dataclass
class AgentCounters:
    """The agent's self-metrics the benchmarks read from one scrape."""

    samples: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    cycles: int = 0
    cycle_seconds: float = 0.0
    bpf_up: float | None = None
    containers: set[str] = field(default_factory=set)
    go_versions: set[str] = field(default_factory=set)


def parse_metrics(text: str) -> AgentCounters:
    c = AgentCounters()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "node_agent_samples_total":
                c.samples = int(s.value)
            elif s.name == "node_agent_samples_lost_total":
                c.lost[s.labels.get("reason", "")] = int(s.value)
            elif s.name == "node_agent_errors_total":
                c.errors[s.labels.get("kind", "")] = int(s.value)
            elif s.name == "node_agent_cycle_duration_seconds_count":
                c.cycles = int(s.value)
            elif s.name == "node_agent_cycle_duration_seconds_sum":
                c.cycle_seconds = float(s.value)
            elif s.name == "node_agent_bpf_up":
                c.bpf_up = s.value
            elif s.name == "node_agent_go_info":
                c.containers.add("/".join(s.labels.get(k, "") for k in ("namespace", "pod", "container")))
                c.go_versions.add(s.labels.get("go_version", ""))
    return c
