"""The pipeline's view of cgroups on a live host: agent.host.cgroups mapped onto CgroupFacts (defined here, below
the analysis that reads them).

Identity (pod UID, container ID, QoS, readable name) comes from the cgroup
path; the effective CPU limit is the minimum over the cgroup and its
ancestors, the leaf limit is the process's own cgroup's (what Go 1.25
reads); throttling counters are those of the level whose quota is effective.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.host.cgroups import CgroupFS, Throttling


@dataclass(frozen=True)
class CgroupFacts:
    """What the pipeline needs to know about one process's cgroup."""

    path: str
    name: str  # readable: "namespace/pod/container"-free name from the path
    pod_uid: str | None = None
    container_id: str | None = None
    qos: str | None = None
    effective_limit: float | None = None  # cores, min over the cgroup and its ancestors
    leaf_limit: float | None = None  # cores, the process's own cgroup (what Go 1.25 reads)
    throttle: Throttling | None = None
    throttle_key: str = ""  # which cgroup the counters belong to
    limit_error: str = ""  # why the CPU limit could not be read (the limits are then None: unknown, not unlimited)


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
            throttle=snap.throttling,
            throttle_key=snap.throttling_path or "",
            limit_error="" if limit is not None else next((e for e in snap.errors if e.startswith("cpu limit")), ""),
        )
