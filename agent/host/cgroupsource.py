"""The pipeline's view of cgroups on a live host: agent.host.cgroups mapped onto CgroupFacts.

Identity (pod UID, container ID, QoS, readable name) comes from the cgroup
path; the effective CPU limit is the minimum over the cgroup and its
ancestors, the leaf limit is the process's own cgroup's (what Go 1.25
reads); throttling counters are those of the level whose quota is effective.
"""

from __future__ import annotations

from pathlib import Path

from agent.analysis.pipeline import CgroupFacts, Throttle
from agent.host.cgroups import CgroupFS, Throttling, read_throttling


def _throttle(t: Throttling | None) -> Throttle | None:
    if t is None:
        return None
    return Throttle(t.nr_periods, t.nr_throttled, t.throttled_seconds)


class HostCgroups:
    """CgroupSource over a host's /sys/fs/cgroup (v1, v2 or hybrid)."""

    def __init__(self, host_root: Path = Path("/"), *, ns_root: str = "/") -> None:
        self.fs = CgroupFS.from_host_root(host_root, ns_root=ns_root)

    def facts(self, proc_cgroup_text: str) -> CgroupFacts:
        snap = self.fs.snapshot(proc_cgroup_text)
        ident = snap.identity
        limit = snap.limit
        return CgroupFacts(
            path=ident.path,
            name=ident.name or ident.path,
            pod_uid=ident.pod_uid,
            container_id=ident.container_id,
            qos=ident.qos,
            effective_limit=limit.cores if limit is not None else None,
            leaf_limit=limit.leaf if limit is not None else None,
            throttle=_throttle(snap.throttling),
            throttle_key=snap.throttling_path or "",
            limit_error="" if limit is not None else next((e for e in snap.errors if e.startswith("cpu limit")), ""),
        )

    def throttle(self, key: str) -> Throttle | None:
        if self.fs.cpu is None or not key:
            return None
        return _throttle(read_throttling(self.fs.cpu, key))
