"""The agent's own metrics: process_* and python_info on the daemon's registry, build_info with
the revision, and node_agent_series_dropped_total counting series rather than series x cycles."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import agent
from agent.analysis.verdict import Verdict
from agent.commands.daemon import Daemon, DaemonConfig
from agent.export.metrics import SERIES_PER_CONTAINER, AgentMetrics
from tests.unit.test_metrics import row

REPO = Path(__file__).resolve().parents[2]


def dropped(reg: CollectorRegistry) -> float | None:
    return reg.get_sample_value("node_agent_series_dropped_total")


def test_series_dropped_counts_series_not_series_times_cycles() -> None:
    m = AgentMetrics(max_series=2 * SERIES_PER_CONTAINER)  # room for two containers
    reg = CollectorRegistry()
    reg.register(m)
    rows = [row(f"p{i}", "c", 2, Verdict.OK, cpu=float(i)) for i in range(1, 5)]  # p1, p2 do not fit
    for t in range(10):  # ten cycles over the cap: the same two containers stay dropped
        m.update(rows, now=t)
    assert dropped(reg) == 2 * SERIES_PER_CONTAINER
    # A new busy container pushes p3 out as well: one more container's series.
    m.update([*rows, row("p9", "c", 2, Verdict.OK, cpu=9.0)], now=11)
    assert dropped(reg) == 3 * SERIES_PER_CONTAINER
    # p2 gets busy and comes back (p3 falls off again, already counted as dropped); no new drop
    # for p2, then p2 falls off once more: counted again, it went missing again.
    m.update([*rows[2:], row("p9", "c", 2, Verdict.OK, cpu=9.0), row("p2", "c", 2, Verdict.OK, cpu=5.0)], now=12)
    assert dropped(reg) == 4 * SERIES_PER_CONTAINER  # p4 fell off
    m.update([*rows, row("p9", "c", 2, Verdict.OK, cpu=9.0)], now=13)
    assert dropped(reg) == 5 * SERIES_PER_CONTAINER  # p2 off again
    kept = {s.labels["pod"] for f in reg.collect() for s in f.samples if s.name == "node_agent_go_gomaxprocs"}
    assert kept == {"p9", "p4"}


def test_no_drops_under_the_cap() -> None:
    m = AgentMetrics(max_series=100 * SERIES_PER_CONTAINER)
    reg = CollectorRegistry()
    reg.register(m)
    for t in range(5):
        m.update([row(f"p{i}", "c", 2, Verdict.OK) for i in range(50)], now=t)
    assert dropped(reg) == 0


def test_build_info_carries_version_and_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    agent.revision.cache_clear()
    try:
        monkeypatch.setenv("NODE_AGENT_REVISION", "0123456789ab")
        reg = CollectorRegistry()
        reg.register(AgentMetrics())
        assert reg.get_sample_value("node_agent_build_info", {"version": "0.1.0", "revision": "0123456789ab"}) == 1
    finally:
        agent.revision.cache_clear()


def test_revision_of_a_checkout_is_gits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NODE_AGENT_REVISION", raising=False)
    res = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    )
    agent.revision.cache_clear()
    try:
        assert agent.revision() == res.stdout.strip()
    finally:
        agent.revision.cache_clear()


def test_daemon_registry_has_process_and_python_self_metrics() -> None:
    daemon = Daemon(DaemonConfig(listen=(("127.0.0.1", 0),)))
    reg = daemon.registry
    rss = reg.get_sample_value("process_resident_memory_bytes")
    status = Path("/proc/self/status").read_text()
    vmrss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    assert rss is not None and 0.5 * vmrss < rss < 2 * vmrss
    fds = reg.get_sample_value("process_open_fds")
    assert fds is not None and abs(fds - len(os.listdir("/proc/self/fd"))) <= 2
    cpu = reg.get_sample_value("process_cpu_seconds_total")
    assert cpu is not None and 0 < cpu <= sum(os.times()[:2]) + 0.1
    impl = platform.python_implementation()
    major, minor, patch = platform.python_version_tuple()
    version = platform.python_version()
    labels = {"implementation": impl, "major": major, "minor": minor, "patchlevel": patch, "version": version}
    assert reg.get_sample_value("python_info", labels) == 1
    assert reg.get_sample_value("node_agent_build_info", {"version": "0.1.0", "revision": agent.revision()}) == 1
