"""The plain data that leaves the pipeline: one row per Go process.

`scan --json`, the table, the metrics collector and the pprof writer all read
these rows; nothing downstream goes back to /proc or BPF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.analysis.attribution import ProcessProfile
from agent.analysis.goruntime import CATEGORIES, Category, runtime_share
from agent.analysis.verdict import Verdict


@dataclass
class GoProcessReport:
    pid: int
    start_time: int
    exe: str
    go_version: str | None
    cgroup: str
    workload: str  # readable name: namespace/pod/container, or the cgroup's
    namespace: str | None
    pod: str | None
    container: str | None
    owner: str | None  # e.g. "Deployment/web"
    cpu_limit_cores: float | None
    affinity_cpus: int
    gomaxprocs: int | None
    gomaxprocs_source: str
    samples: int
    cpu_seconds: float
    shares: dict[Category, float]
    throttled_ratio: float | None
    verdict: Verdict
    recommended_gomaxprocs: int | None
    explanation: str
    fix: str
    profile: ProcessProfile = field(default_factory=ProcessProfile, repr=False)
    automaxprocs: bool = False
    build_id: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def runtime_share(self) -> float:
        return runtime_share(self.shares)

    @property
    def unknown_samples(self) -> int:
        """Samples whose category could not be decided: counted in cpu_seconds, left out of shares."""
        return self.profile.categories[Category.UNKNOWN]

    def category_seconds(self) -> dict[Category, float]:
        """CPU seconds per category, ``unknown`` included: they add up to cpu_seconds."""
        prof = self.profile
        if prof.samples:
            per_sample = self.cpu_seconds / prof.samples
            return {c: prof.categories[c] * per_sample for c in (*CATEGORIES, Category.UNKNOWN)}
        return {c: self.cpu_seconds * self.shares.get(c, 0.0) for c in CATEGORIES} | {Category.UNKNOWN: 0.0}

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "exe": self.exe,
            "go_version": self.go_version,
            "cgroup": self.cgroup,
            "workload": self.workload,
            "namespace": self.namespace,
            "pod": self.pod,
            "container": self.container,
            "owner": self.owner,
            "cpu_limit_cores": self.cpu_limit_cores,
            "affinity_cpus": self.affinity_cpus,
            "gomaxprocs": self.gomaxprocs,
            "gomaxprocs_source": self.gomaxprocs_source,
            "automaxprocs": self.automaxprocs,
            "samples": self.samples,
            "cpu_seconds": round(self.cpu_seconds, 4),
            "categories": {str(c): round(self.shares.get(c, 0.0), 4) for c in CATEGORIES},
            "unknown_samples": self.unknown_samples,
            "runtime_share": round(self.runtime_share, 4),
            "throttled_ratio": None if self.throttled_ratio is None else round(self.throttled_ratio, 4),
            "verdict": str(self.verdict),
            "recommended_gomaxprocs": self.recommended_gomaxprocs,
            "explanation": self.explanation,
            "fix": self.fix,
            "errors": self.errors,
        }


@dataclass
class OtherSummary:
    """Non-Go CPU, summarised rather than listed."""

    processes: int = 0
    samples: int = 0
    top: list[tuple[str, int]] = field(default_factory=list)  # (comm, samples), busiest first


@dataclass
class ScanResult:
    duration_s: float
    frequency_hz: int
    busy_samples: int  # samples of Go and other processes, idle and lost ones not counted
    go: list[GoProcessReport]
    other: OtherSummary
    lost: dict[str, int]
    exited_samples: int = 0
    errors: list[str] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)  # CLOCK_MONOTONIC start and end of sampling
