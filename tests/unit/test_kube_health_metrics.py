"""agent/export/kubemetrics.py: the watcher's health on a private registry, errors as increments."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from agent.export.kubemetrics import KubeErrorCounter, KubeWatchCollector
from agent.export.metrics import AgentMetrics
from agent.kube.watch import KubeStatus


def status(**kw: object) -> KubeStatus:
    base: dict[str, object] = {
        "state": "watching",
        "reason": "in-cluster",
        "synced": True,
        "last_error": None,
        "resource_version": "42",
        "pods": 7,
        "lists": 3,
        "relists": 2,
        "expired": 2,
        "watch_restarts": 5,
        "errors": 0,
        "events": {"ADDED": 7, "BOOKMARK": 3},
        "bad_objects": 0,
        "dropped_pods": 0,
    }
    return KubeStatus(**{**base, **kw})  # type: ignore[arg-type]


def test_collector_exports_the_snapshot() -> None:
    current = [status(last_error="HTTP 500", last_error_kind="api_error", last_error_age_s=10.0)]
    reg = CollectorRegistry()
    reg.register(KubeWatchCollector(lambda: current[0]))
    assert reg.get_sample_value("node_agent_kube_synced") == 1
    assert reg.get_sample_value("node_agent_kube_pods") == 7
    assert reg.get_sample_value("node_agent_kube_relists_total") == 2
    assert reg.get_sample_value("node_agent_kube_watch_events_total", {"type": "BOOKMARK"}) == 3
    at = reg.get_sample_value("node_agent_kube_last_error_timestamp_seconds", {"kind": "api_error"})
    assert at is not None and abs(at - (time.time() - 10.0)) < 5
    current[0] = status(synced=False, pods=0)
    assert reg.get_sample_value("node_agent_kube_synced") == 0


def test_error_counter_publishes_increments_once() -> None:
    m = AgentMetrics()
    reg = CollectorRegistry()
    reg.register(m)
    counter = KubeErrorCounter()
    counter.publish({"event_malformed": 2}, m.count_error)
    counter.publish({"event_malformed": 2, "watch_stalled": 1}, m.count_error)
    counter.publish({"event_malformed": 5, "watch_stalled": 1}, m.count_error)
    assert reg.get_sample_value("node_agent_errors_total", {"kind": "kube_event_malformed"}) == 5
    assert reg.get_sample_value("node_agent_errors_total", {"kind": "kube_watch_stalled"}) == 1
