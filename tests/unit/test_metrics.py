"""The metric contract, read back through a private registry."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest

from agent import revision
from agent.analysis.attribution import ProcessProfile
from agent.analysis.goruntime import Category
from agent.analysis.model import GoProcessReport
from agent.analysis.verdict import Verdict
from agent.export.metrics import METRIC_NAMES, AgentMetrics

SH = {Category.SCHEDULER: 0.25, Category.GC: 0.25, Category.RUNTIME_OTHER: 0.0, Category.USER: 0.5}


def row(pod: str | None, container: str, g: int, verdict: Verdict, cpu: float = 2.0) -> GoProcessReport:
    return GoProcessReport(
        pid=1,
        start_time=1,
        exe="/app",
        go_version="go1.21.13",
        cgroup="/x",
        workload=container,
        namespace="shop" if pod else None,
        pod=pod,
        container=container,
        owner=None,
        cpu_limit_cores=1.0,
        affinity_cpus=64,
        gomaxprocs=g,
        gomaxprocs_source="live",
        samples=100,
        cpu_seconds=cpu,
        shares=SH,
        throttled_ratio=0.1,
        verdict=verdict,
        recommended_gomaxprocs=2,
        explanation="",
        fix="",
    )


def test_counters_accumulate_and_gauges_replace() -> None:
    m = AgentMetrics()
    reg = CollectorRegistry()
    reg.register(m)
    m.update([row("web-1", "app", 64, Verdict.ABOVE)], now=100)
    m.update([row("web-1", "app", 64, Verdict.ABOVE)], now=115)
    lbl = {"namespace": "shop", "pod": "web-1", "container": "app"}
    assert reg.get_sample_value("node_agent_go_cpu_seconds_total", {**lbl, "category": "scheduler"}) == 1.0
    assert reg.get_sample_value("node_agent_go_cpu_seconds_total", {**lbl, "category": "user"}) == 2.0
    assert reg.get_sample_value("node_agent_go_gomaxprocs", lbl) == 64
    assert reg.get_sample_value("node_agent_go_gomaxprocs_recommended", lbl) == 2
    assert reg.get_sample_value("node_agent_container_cpu_limit_cores", lbl) == 1.0
    assert reg.get_sample_value("node_agent_go_misconfigured", {**lbl, "reason": "gomaxprocs_above_limit"}) == 1
    info = {**lbl, "go_version": "go1.21.13", "gomaxprocs_source": "live"}
    assert reg.get_sample_value("node_agent_go_info", info) == 1
    m.update([row("web-1", "app", 2, Verdict.OK)], now=130)  # fixed: the flag disappears
    assert reg.get_sample_value("node_agent_go_misconfigured", {**lbl, "reason": "gomaxprocs_above_limit"}) is None
    assert reg.get_sample_value("node_agent_go_gomaxprocs", lbl) == 2


def test_non_kubernetes_and_staleness() -> None:
    m = AgentMetrics(stale_after_s=60)
    reg = CollectorRegistry()
    reg.register(m)
    m.update([row(None, "ssh.service", 4, Verdict.NO_LIMIT)], now=0)
    lbl = {"namespace": "", "pod": "", "container": "ssh.service"}
    assert reg.get_sample_value("node_agent_go_gomaxprocs", lbl) == 4
    m.update([], now=61)
    assert reg.get_sample_value("node_agent_go_gomaxprocs", lbl) is None


def test_unknown_samples_are_exported_apart_and_left_out_of_shares() -> None:
    """A sample whose stack could not be read is never `user`: it has its own series."""
    r = row("web-1", "app", 64, Verdict.ABOVE, cpu=2.0)
    r.profile = ProcessProfile(
        samples=200, categories=Counter({Category.SCHEDULER: 50, Category.USER: 50, Category.UNKNOWN: 100})
    )
    assert r.profile.shares()[Category.SCHEDULER] == 0.5  # of the 100 known samples
    m = AgentMetrics()
    reg = CollectorRegistry()
    reg.register(m)
    m.update([r], now=0)
    lbl = {"namespace": "shop", "pod": "web-1", "container": "app"}
    got = {c: reg.get_sample_value("node_agent_go_cpu_seconds_total", {**lbl, "category": c}) for c in Category}
    assert got == {"scheduler": 0.5, "gc": 0.0, "runtime_other": 0.0, "user": 0.5, "unknown": 1.0}
    assert sum(v or 0.0 for v in got.values()) == r.cpu_seconds  # the categories add up to all the CPU sampled


def test_series_cap_keeps_busiest() -> None:
    m = AgentMetrics(max_series=20)  # room for two containers
    reg = CollectorRegistry()
    reg.register(m)
    m.update([row(f"p{i}", "c", 2, Verdict.OK, cpu=float(i)) for i in range(1, 5)], now=0)
    kept = {s.labels["pod"] for f in reg.collect() for s in f.samples if s.name == "node_agent_go_gomaxprocs"}
    assert kept == {"p4", "p3"}
    assert reg.get_sample_value("node_agent_series_dropped_total") == 20


def test_self_metrics_and_contract() -> None:
    m = AgentMetrics()
    reg = CollectorRegistry()
    reg.register(m)
    m.record_cycle(0.3, 970, {"stack_collision": 2, "map_full": 0})
    m.record_cycle(0.02, 30, {"stack_collision": 1})
    m.set_bpf(False, "kernel headers not found")
    m.count_error("binary_unreadable")
    assert reg.get_sample_value("node_agent_samples_total") == 1000
    assert reg.get_sample_value("node_agent_samples_lost_total", {"reason": "stack_collision"}) == 3
    assert reg.get_sample_value("node_agent_cycle_duration_seconds_count") == 2
    assert reg.get_sample_value("node_agent_cycle_duration_seconds_bucket", {"le": "0.05"}) == 1
    assert reg.get_sample_value("node_agent_bpf_up", {"reason": "kernel headers not found"}) == 0
    assert reg.get_sample_value("node_agent_errors_total", {"kind": "binary_unreadable"}) == 1
    assert reg.get_sample_value("node_agent_build_info", {"version": "0.1.0", "revision": revision()}) == 1
    m.update([row("web-1", "app", 64, Verdict.ABOVE)], now=0)
    text = generate_latest(reg).decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
