"""The metric contract, as a prometheus-client custom collector.

Labels ``namespace``, ``pod``, ``container`` are spelled as cAdvisor and
kube-state-metrics spell them, so PromQL can join on them. Processes outside
Kubernetes get ``namespace=""``, ``pod=""`` and their cgroup's readable name
as ``container``.

The daemon calls :meth:`AgentMetrics.update` once per cycle with that cycle's
rows; ``collect()`` only reads the last published state (under a lock), so a
scrape never waits for BPF or /proc. Per-container series are capped
(``max_series``): a scrape over Prometheus's ``sample_limit`` is rejected
whole, so we drop the least busy containers instead and count them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent import __version__, revision
from agent.analysis.goruntime import CATEGORIES, Category
from agent.analysis.model import GoProcessReport
from agent.analysis.verdict import MISCONFIGURED
from agent.export.safe import label

Labels = tuple[str, str, str]  # namespace, pod, container
SERIES_PER_CONTAINER = 10  # 4 categories + unknown, 3 gauges, info, misconfigured
EXPORTED_CATEGORIES = (*CATEGORIES, Category.UNKNOWN)
CYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

METRIC_NAMES = (
    "node_agent_go_cpu_seconds_total",
    "node_agent_go_gomaxprocs",
    "node_agent_go_gomaxprocs_recommended",
    "node_agent_container_cpu_limit_cores",
    "node_agent_go_misconfigured",
    "node_agent_go_info",
    "node_agent_samples_total",
    "node_agent_samples_lost_total",
    "node_agent_cycle_duration_seconds",
    "node_agent_bpf_up",
    "node_agent_build_info",
    "node_agent_series_dropped_total",
    "node_agent_errors_total",
)


def _label(text: str) -> str:
    """A label value the exposition can encode: process and cgroup names may hold undecodable bytes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def labels_of(r: GoProcessReport) -> Labels:
    """The row's series labels, made safe once here (a tenant names its pod, cgroup and process)."""
    if r.pod:
        return (label(r.namespace), label(r.pod), label(r.container))
    return ("", "", label(r.workload))


@dataclass
class _Container:
    cpu: dict[Category, float] = field(default_factory=lambda: dict.fromkeys(EXPORTED_CATEGORIES, 0.0))
    gomaxprocs: int | None = None
    recommended: int | None = None
    limit: float | None = None
    misconfigured: set[str] = field(default_factory=set)
    info: tuple[str, str] = ("", "")
    last_seen: float = 0.0
    busy: float = 0.0  # this window's CPU seconds, to rank for the series cap


class AgentMetrics(Collector):
    def __init__(self, *, max_series: int = 5000, stale_after_s: float = 600.0) -> None:
        self.max_series = max_series
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._containers: dict[Labels, _Container] = {}
        self.samples_total = 0
        self.lost_total: dict[str, int] = {}
        self.errors_total: dict[str, int] = {}
        self.series_dropped_total = 0
        self._dropped: set[Labels] = set()
        self.bpf_up = 0
        self.bpf_reason = ""
        self._cycle_buckets = [0] * (len(CYCLE_BUCKETS) + 1)
        self._cycle_sum = 0.0
        self._cycle_count = 0

    # ---- writers (daemon thread) ---------------------------------------------------------------
    def update(self, rows: Iterable[GoProcessReport], *, now: float | None = None) -> None:
        """Publish one cycle: counters accumulate, gauges are replaced."""
        now = time.time() if now is None else now
        grouped: dict[Labels, list[GoProcessReport]] = {}
        for r in rows:
            grouped.setdefault(labels_of(r), []).append(r)
        with self._lock:
            for key, group in grouped.items():
                c = self._containers.setdefault(key, _Container())
                busy = 0.0
                for r in group:
                    for cat, seconds in r.category_seconds().items():
                        c.cpu[cat] += seconds
                    busy += r.cpu_seconds
                worst = max(group, key=lambda r: r.gomaxprocs or 0)
                c.gomaxprocs = worst.gomaxprocs
                c.recommended = worst.recommended_gomaxprocs
                c.limit = worst.cpu_limit_cores
                c.misconfigured = {str(r.verdict) for r in group if r.verdict in MISCONFIGURED}
                c.info = (label(worst.go_version), label(worst.gomaxprocs_source))
                c.last_seen = now
                c.busy = busy
            for key in [k for k, c in self._containers.items() if now - c.last_seen > self.stale_after_s]:
                del self._containers[key]
            # Counted once per container when it falls off (again), not once per cycle it stays
            # off: the counter is how many series went missing, not series x cycles.
            kept = {key for key, _ in self._capped()}
            dropped = set(self._containers) - kept
            self.series_dropped_total += SERIES_PER_CONTAINER * len(dropped - self._dropped)
            self._dropped = dropped

    def record_cycle(self, duration_s: float, samples: int, lost: dict[str, int]) -> None:
        with self._lock:
            self.samples_total += samples
            for reason, n in lost.items():
                self.lost_total[reason] = self.lost_total.get(reason, 0) + n
            self._cycle_sum += duration_s
            self._cycle_count += 1
            for i, bound in enumerate(CYCLE_BUCKETS):
                if duration_s <= bound:
                    self._cycle_buckets[i] += 1
                    break
            else:
                self._cycle_buckets[-1] += 1

    def count_error(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.errors_total[kind] = self.errors_total.get(kind, 0) + n

    def set_bpf(self, up: bool, reason: str = "") -> None:
        with self._lock:
            self.bpf_up = 1 if up else 0
            self.bpf_reason = label(reason)

    # ---- reader (scrape thread) ----------------------------------------------------------------
    def _capped(self) -> list[tuple[Labels, _Container]]:
        """The busiest containers that fit under --max-series (about 9 series each)."""
        items = sorted(self._containers.items(), key=lambda kv: (-kv[1].busy, kv[0]))
        return items[: max(0, self.max_series // SERIES_PER_CONTAINER)]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            items = self._capped()
            lk = ["namespace", "pod", "container"]
            cpu = CounterMetricFamily(
                "node_agent_go_cpu_seconds_total",
                "CPU time of Go processes by runtime category (sampled); unknown: no readable stack",
                labels=[*lk, "category"],
            )
            gmp = GaugeMetricFamily("node_agent_go_gomaxprocs", "GOMAXPROCS the Go process runs with", labels=lk)
            rec = GaugeMetricFamily(
                "node_agent_go_gomaxprocs_recommended", "GOMAXPROCS Go 1.25 would choose for this limit", labels=lk
            )
            lim = GaugeMetricFamily(
                "node_agent_container_cpu_limit_cores", "Effective CPU limit of the container, in cores", labels=lk
            )
            mis = GaugeMetricFamily(
                "node_agent_go_misconfigured", "1 while GOMAXPROCS is flagged", labels=[*lk, "reason"]
            )
            info = InfoMetricFamily(
                "node_agent_go", "Go runtime facts of the container", labels=[*lk, "go_version", "gomaxprocs_source"]
            )
            for key, c in items:
                for cat in EXPORTED_CATEGORIES:
                    cpu.add_metric([*key, str(cat)], c.cpu[cat])
                if c.gomaxprocs is not None:
                    gmp.add_metric(list(key), c.gomaxprocs)
                if c.recommended is not None:
                    rec.add_metric(list(key), c.recommended)
                if c.limit is not None:
                    lim.add_metric(list(key), c.limit)
                for reason in sorted(c.misconfigured):
                    mis.add_metric([*key, reason], 1)
                info.add_metric([*key, *c.info], {})
            yield from (cpu, gmp, rec, lim, mis, info)

            yield CounterMetricFamily("node_agent_samples_total", "CPU samples taken", value=self.samples_total)
            lost = CounterMetricFamily("node_agent_samples_lost_total", "Samples lost, by reason", labels=["reason"])
            for reason, n in sorted(self.lost_total.items()):
                lost.add_metric([reason], n)
            yield lost
            errors = CounterMetricFamily(
                "node_agent_errors_total", "Items skipped (process, binary, cgroup, API) by kind", labels=["kind"]
            )
            for kind, n in sorted(self.errors_total.items()):
                errors.add_metric([kind], n)
            yield errors
            buckets = []
            acc = 0
            for bound, n in zip((*CYCLE_BUCKETS, float("inf")), self._cycle_buckets, strict=True):
                acc += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
            yield HistogramMetricFamily(
                "node_agent_cycle_duration_seconds",
                "Time to drain, symbolize and attribute one interval",
                buckets=buckets,
                sum_value=self._cycle_sum,
            )
            bpf = GaugeMetricFamily("node_agent_bpf_up", "1 when the BPF sampler is running", labels=["reason"])
            bpf.add_metric([self.bpf_reason], self.bpf_up)
            yield bpf
            yield InfoMetricFamily(
                "node_agent_build", "node-agent build", value={"version": __version__, "revision": revision()}
            )
            yield CounterMetricFamily(
                "node_agent_series_dropped_total",
                "Per-container series not exported because of --max-series",
                value=self.series_dropped_total,
            )
