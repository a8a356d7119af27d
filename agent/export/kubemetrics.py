"""The pod watcher's health as metrics: a collector over :meth:`KubeMetadata.status` snapshots.

Errors go where every other error goes, ``node_agent_errors_total{kind="kube_<kind>"}``
(:class:`KubeErrorCounter` turns the watcher's cumulative counts into increments, once per
cycle); this collector adds what only the watcher knows: whether the store is synced, how
many pods it holds, relists, events by type, and when the last error happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from agent.kube.watch import KubeStatus

KUBE_METRIC_NAMES = (
    "node_agent_kube_synced",
    "node_agent_kube_pods",
    "node_agent_kube_relists_total",
    "node_agent_kube_watch_events_total",
    "node_agent_kube_last_error_timestamp_seconds",
)


class KubeWatchCollector(Collector):
    """Reads one status snapshot per scrape (a lock and a copy: never waits for the API)."""

    def __init__(self, status: Callable[[], KubeStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        yield GaugeMetricFamily(
            "node_agent_kube_synced",
            "1 while the pod store reflects a completed list of this node's pods (0: named by cgroup)",
            value=1 if st.synced else 0,
        )
        yield GaugeMetricFamily("node_agent_kube_pods", "Pods of this node in the store", value=st.pods)
        yield CounterMetricFamily(
            "node_agent_kube_relists_total", "Lists after the first (each follows a 410 Gone)", value=st.relists
        )
        events = CounterMetricFamily(
            "node_agent_kube_watch_events_total", "Watch events applied, by type", labels=["type"]
        )
        for kind, n in sorted(st.events.items()):
            events.add_metric([kind], n)
        yield events
        last = GaugeMetricFamily(
            "node_agent_kube_last_error_timestamp_seconds",
            "When the watcher last failed, by the kind of that failure",
            labels=["kind"],
        )
        if st.last_error_age_s is not None and st.last_error_kind:
            last.add_metric([st.last_error_kind], time.time() - st.last_error_age_s)
        yield last


class KubeErrorCounter:
    """Cumulative per-kind counts -> increments for ``count(kind, n)`` (node_agent_errors_total)."""

    def __init__(self, prefix: str = "kube_") -> None:
        self.prefix = prefix
        self._seen: dict[str, int] = {}

    def publish(self, totals: Mapping[str, int], count: Callable[[str, int], None]) -> None:
        for kind, total in totals.items():
            delta = total - self._seen.get(kind, 0)
            if delta > 0:
                count(self.prefix + kind, delta)
            self._seen[kind] = total
