"""The pipeline's view of cgroups on a live host (``CgroupSource``).

Reads, relative to a host root, the cgroup a process is in (``/proc/PID/cgroup``
text), its CPU limit (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``) at the leaf and minimised over its ancestors, and its
throttling counters. Identity (pod UID, container ID, QoS, readable name)
comes from :mod:`agent.cgroups` when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.errors import CgroupError
from agent.pipeline import CgroupFacts, Throttle


@dataclass(frozen=True)
class ProcCgroup:
    """Where a process sits: the v1 ``cpu`` controller path and/or the v2 path."""

    v1_cpu: str | None
    v2: str | None


def parse_proc_cgroup(text: str) -> ProcCgroup:
    v1 = v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    if v1 is None and v2 is None:
        raise CgroupError(f"no cgroup found in {text[:80]!r}")
    return ProcCgroup(v1, v2)


def limit_from_v1(quota: str, period: str) -> float | None:
    q, p = int(quota.strip()), int(period.strip())
    if q < 0 or p <= 0:
        return None
    return q / p


def limit_from_v2(cpu_max: str) -> float | None:
    fields = cpu_max.split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100_000
    if period <= 0:
        return None
    return int(fields[0]) / period


def parse_cpu_stat(text: str) -> Throttle:
    kv: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            kv[key] = int(value)
    # v2 counts microseconds, v1 nanoseconds
    seconds = kv["throttled_usec"] / 1e6 if "throttled_usec" in kv else kv.get("throttled_time", 0) / 1e9
    return Throttle(kv.get("nr_periods", 0), kv.get("nr_throttled", 0), seconds)


class HostCgroups:
    """CgroupSource over a host's /sys/fs/cgroup (v1, v2 or hybrid)."""

    def __init__(self, host_root: Path = Path("/")) -> None:
        self.root = host_root / "sys" / "fs" / "cgroup"
        v1 = self.root / "cpu"
        self.v1_cpu = v1 if (v1 / "cpu.cfs_quota_us").exists() else None
        unified = self.root / "unified"
        self.v2_root = unified if unified.is_dir() else self.root

    def _v1_dir(self, path: str) -> Path:
        assert self.v1_cpu is not None
        return self.v1_cpu / path.lstrip("/")

    def _limits(self, pc: ProcCgroup) -> tuple[float | None, float | None, str, Throttle | None]:
        """(leaf limit, effective limit, throttle key, throttle counters)."""
        if pc.v1_cpu is not None and self.v1_cpu is not None:
            leaf_dir = self._v1_dir(pc.v1_cpu)
            reader = self._v1_limit
            key = "v1:" + pc.v1_cpu
        elif pc.v2 is not None and (self.v2_root / pc.v2.lstrip("/") / "cpu.max").exists():
            leaf_dir = self.v2_root / pc.v2.lstrip("/")
            reader = self._v2_limit
            key = "v2:" + pc.v2
        else:
            return None, None, "", None
        if not leaf_dir.is_dir():
            raise CgroupError(f"cgroup {leaf_dir} vanished")
        leaf = reader(leaf_dir)
        effective = leaf
        d = leaf_dir.parent
        top = self.v1_cpu if key.startswith("v1:") else self.v2_root
        while top is not None and d != top.parent and top in (d, *d.parents):
            lim = reader(d)
            if lim is not None:
                effective = lim if effective is None else min(effective, lim)
            if d == top:
                break
            d = d.parent
        try:
            throttle = parse_cpu_stat((leaf_dir / "cpu.stat").read_text())
        except OSError:
            throttle = None
        return leaf, effective, key, throttle

    @staticmethod
    def _v1_limit(d: Path) -> float | None:
        try:
            return limit_from_v1((d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _v2_limit(d: Path) -> float | None:
        try:
            return limit_from_v2((d / "cpu.max").read_text())
        except (OSError, ValueError, IndexError):
            return None

    def facts(self, proc_cgroup_text: str) -> CgroupFacts:
        pc = parse_proc_cgroup(proc_cgroup_text)
        path = pc.v2 if pc.v2 not in (None, "/") else pc.v1_cpu or pc.v2 or "/"
        assert path is not None
        if pc.v1_cpu not in (None, "/"):
            path = pc.v1_cpu or path
        leaf, effective, key, throttle = self._limits(pc)
        name = path.rstrip("/").rsplit("/", 1)[-1] or "/"
        return CgroupFacts(
            path=path,
            name=name,
            effective_limit=effective,
            leaf_limit=leaf,
            throttle=throttle,
            throttle_key=key,
        )

    def throttle(self, key: str) -> Throttle | None:
        kind, _, path = key.partition(":")
        d = self._v1_dir(path) if kind == "v1" and self.v1_cpu else self.v2_root / path.lstrip("/")
        try:
            return parse_cpu_stat((d / "cpu.stat").read_text())
        except OSError:
            return None
