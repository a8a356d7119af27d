"""Which container a process is in, its effective CPU limit and its throttling, read from the host's cgroup fs.

Every path is built from a cgroup root given by the caller (``/host/sys/fs/cgroup``
under ``--host-root /host``); parsing lives in :mod:`agent.host.cgroupmodel`, whose
names are re-exported here so callers import one module.

Public API::

    CgroupFS(cgroup_root, *, layout=None, ns_root="/")    host-level facade
        .from_host_root(host_root)                         -> CgroupFS (host_root/sys/fs/cgroup)
        .layout                                            Layout (mode V1 / V2 / HYBRID)
        .snapshot(proc_cgroup_text) -> CgroupSnapshot      everything, per-field errors as values
        .parse(proc_cgroup_text) -> ProcCgroup             paths made host-absolute (cgroup namespaces)
        .identity(proc) / .cpu_limit(proc) / .throttling(proc)
        .cpu / .unified                                    the Hierarchy holding each (or None)
    detect_layout(cgroup_root) -> Layout                   from the directory tree
    read_cpu_limit(h, path) -> CpuLimit                    min over the cgroup and its ancestors
    read_throttling(h, path) -> Throttling | None          cpu.stat counters, in seconds
    parse_proc_cgroup, identify, parse_cpu_max, parse_cfs, parse_cpu_stat  (pure)
    HostCgroups(host_root).facts(proc_cgroup_text) -> CgroupFacts   the pipeline's view (a CgroupSource)

Errors: a missing or unreadable cgroup *directory* (the process moved or its
container stopped) and garbled content raise :class:`CgroupError`. A missing
*file* in an existing directory is a kernel state and returns "no value":
no cpu.max / cfs_quota_us = no limit at that level; no cpu.stat bandwidth
counters = ``None``. :meth:`CgroupFS.snapshot` raises only for unusable
/proc/PID/cgroup text; a field it cannot read is None with its reason in ``errors``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from agent.errors import CgroupError
from agent.host.cgroupmodel import (
    QOS_CLASSES,
    V1_CONTROLLERS,
    CgroupIdentity,
    Hierarchy,
    Layout,
    Mode,
    ProcCgroup,
    Quota,
    Throttling,
    build_layout,
    identify,
    normalize_path,
    parse_cfs,
    parse_cpu_max,
    parse_cpu_stat,
    parse_proc_cgroup,
)

__all__ = [
    "QOS_CLASSES",
    "CgroupFS",
    "CgroupIdentity",
    "CgroupSnapshot",
    "CpuLimit",
    "Hierarchy",
    "Layout",
    "LevelQuota",
    "Mode",
    "ProcCgroup",
    "Quota",
    "Throttling",
    "detect_layout",
    "identify",
    "normalize_path",
    "parse_cfs",
    "parse_cpu_max",
    "parse_cpu_stat",
    "parse_proc_cgroup",
    "read_cpu_limit",
    "read_throttling",
]

_T = TypeVar("_T")
MAX_FILE = 64 * 1024  # cgroup control files are tiny; never read more


# ---- low-level reads ---------------------------------------------------------------------------


def _dir(h: Hierarchy, path: str) -> Path:
    return h.mount.joinpath(*[c for c in normalize_path(path).split("/") if c])


def _read(file: Path) -> str | None:
    """A control file's text; None when the file does not exist in an existing directory."""
    try:
        with open(file, "rb") as f:
            return f.read(MAX_FILE).decode("utf-8", "replace")
    except FileNotFoundError:
        if not file.parent.is_dir():
            raise CgroupError(f"cgroup {file.parent} vanished") from None
        return None
    except OSError as exc:
        raise CgroupError(f"cannot read {file}: {exc.strerror or exc}") from None


def _require_dir(d: Path) -> None:
    if not d.is_dir():
        raise CgroupError(f"cgroup {d} does not exist (the process moved or its container stopped)")


def _ancestry(path: str) -> list[str]:
    """Leaf first: "/a/b/c" -> ["/a/b/c", "/a/b", "/a", "/"]."""
    comps = [c for c in normalize_path(path).split("/") if c]
    return ["/" + "/".join(comps[:n]) for n in range(len(comps), -1, -1)]


# ---- layout ------------------------------------------------------------------------------------


def detect_layout(cgroup_root: Path) -> Layout:
    """v1 / v2 / hybrid from the directory tree under ``cgroup_root`` (no mountinfo needed).

    A v2 hierarchy root has ``cgroup.controllers``; a v1 one has ``cgroup.procs``
    and is named after its controllers (``cpu,cpuacct``; symlinks such as
    ``cpu -> cpu,cpuacct`` are folded into their target); ``systemd`` is ``name=systemd``.
    """
    if (cgroup_root / "cgroup.controllers").is_file():
        return build_layout([_unified(cgroup_root)], root_is_unified=True)
    try:
        entries = sorted(os.scandir(cgroup_root), key=lambda e: e.name)
    except OSError as exc:
        raise CgroupError(
            f"cannot list {cgroup_root}: {exc.strerror or exc}", help="mount the host's /sys/fs/cgroup"
        ) from None
    hierarchies: list[Hierarchy] = []
    for e in entries:
        if e.is_symlink() or not e.is_dir():
            continue
        d = Path(e.path)
        if (d / "cgroup.controllers").is_file():
            hierarchies.append(_unified(d))
        elif (d / "cgroup.procs").is_file():
            names = e.name.split(",")
            controllers = frozenset(n if n in V1_CONTROLLERS else f"name={n}" for n in names)
            hierarchies.append(Hierarchy(1, d, controllers))
    return build_layout(hierarchies, root_is_unified=False)


def _unified(d: Path) -> Hierarchy:
    text = _read(d / "cgroup.controllers") or ""
    return Hierarchy(2, d, frozenset(text.split()))


# ---- CPU limit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelQuota:
    path: str
    quota: Quota | None  # None: no limit at this level


@dataclass(frozen=True)
class CpuLimit:
    """The effective CFS limit of a cgroup: the smallest over it and its ancestors."""

    cores: float | None  # None: unlimited at every level
    source: str | None  # the cgroup path whose quota is the effective one (deepest on a tie)
    leaf: float | None  # the cgroup's own limit alone
    levels: tuple[LevelQuota, ...]  # leaf first, up to the hierarchy root


def _level_quota(h: Hierarchy, path: str) -> Quota | None:
    d = _dir(h, path)
    _require_dir(d)
    if h.version == 2:
        text = _read(d / "cpu.max")
        return None if text is None else parse_cpu_max(text)
    quota = _read(d / "cpu.cfs_quota_us")
    if quota is None:  # kernel without CONFIG_CFS_BANDWIDTH
        return None
    return parse_cfs(quota, _read(d / "cpu.cfs_period_us"))


def read_cpu_limit(h: Hierarchy, path: str) -> CpuLimit:
    """Walk from ``path`` to the root of ``h`` (the hierarchy holding the cpu controller).

    A pod-level quota lower than the container's is the effective one; raises
    CgroupError for a vanished cgroup or garbage at any level (the limit is then unknown).
    """
    levels = tuple(LevelQuota(p, _level_quota(h, p)) for p in _ancestry(path))
    best: LevelQuota | None = None
    for lv in levels:
        if lv.quota is not None and (best is None or best.quota is None or lv.quota.cores < best.quota.cores):
            best = lv
    leaf = levels[0].quota
    return CpuLimit(
        cores=best.quota.cores if best and best.quota else None,
        source=best.path if best else None,
        leaf=leaf.cores if leaf else None,
        levels=levels,
    )


def read_throttling(h: Hierarchy, path: str) -> Throttling | None:
    """cpu.stat counters of one cgroup; None when it has none (no cpu controller / no cpu.stat)."""
    d = _dir(h, path)
    _require_dir(d)
    text = _read(d / "cpu.stat")
    return None if text is None else parse_cpu_stat(text, h.version)


# ---- the host-level facade ---------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupSnapshot:
    """Everything about one process's cgroup; a field that could not be read is None
    and its reason is in ``errors`` (so one bad file never hides the others)."""

    identity: CgroupIdentity
    limit: CpuLimit | None  # None: unknown (see errors); limit.cores None: unlimited
    throttling: Throttling | None  # counters of ``throttling_path``
    throttling_path: str | None  # the level whose quota is effective, else the leaf
    errors: tuple[str, ...] = ()


class CgroupFS:
    """One host's cgroup hierarchies, mounted at ``cgroup_root``.

    ``ns_root`` is where the agent's cgroup namespace root sits on the host,
    for /proc/PID/cgroup paths shown relative to it ("/" = host namespace).
    """

    def __init__(
        self, cgroup_root: Path = Path("/sys/fs/cgroup"), *, layout: Layout | None = None, ns_root: str = "/"
    ) -> None:
        self.root = cgroup_root
        self.layout = layout if layout is not None else detect_layout(cgroup_root)
        self.ns_root = ns_root
        self.cpu = self.layout.for_controller("cpu")
        self.unified = self.layout.unified

    @classmethod
    def from_host_root(cls, host_root: Path, *, ns_root: str = "/") -> CgroupFS:
        return cls(host_root / "sys" / "fs" / "cgroup", ns_root=ns_root)

    def parse(self, proc_cgroup_text: str) -> ProcCgroup:
        """/proc/PID/cgroup text with every path made host-absolute."""
        proc = parse_proc_cgroup(proc_cgroup_text)
        unified = normalize_path(proc.unified, self.ns_root) if proc.unified is not None else None
        return ProcCgroup(unified, tuple((c, normalize_path(p, self.ns_root)) for c, p in proc.v1))

    def _path(self, proc: ProcCgroup, h: Hierarchy | None, what: str) -> tuple[Hierarchy, str]:
        if h is None:
            raise CgroupError(f"no mounted hierarchy has the {what} controller")
        path = proc.path_in(h)
        if path is None:
            raise CgroupError(f"the process is not listed in the {what} hierarchy {h.mount}")
        return h, path

    def identity(self, proc: ProcCgroup) -> CgroupIdentity:
        """The most informative path's identity: the cpu path first, another hierarchy's
        path if it names a container (cgroupfs-driver runtimes on hybrid hosts)."""
        if self.cpu is not None:
            first = proc.path_in(self.cpu)
            paths = ([first] if first else []) + proc.paths()
        else:
            paths = proc.paths()
        ids = [identify(p) for p in dict.fromkeys(paths)]
        return next((i for i in ids if i.container_id), None) or next((i for i in ids if i.pod_uid), ids[0])

    def cpu_limit(self, proc: ProcCgroup) -> CpuLimit:
        return read_cpu_limit(*self._path(proc, self.cpu, "cpu"))

    def throttling(self, proc: ProcCgroup, path: str | None = None) -> Throttling | None:
        h, own = self._path(proc, self.cpu, "cpu")
        return read_throttling(h, path or own)

    def snapshot(self, proc_cgroup_text: str) -> CgroupSnapshot:
        """Raises CgroupError only when the text itself is unusable."""
        proc = self.parse(proc_cgroup_text)
        ident = self.identity(proc)
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], _T]) -> _T | None:
            try:
                return fn()
            except CgroupError as exc:
                errors.append(f"{what}: {exc}")
                return None

        limit = attempt("cpu limit", lambda: self.cpu_limit(proc))
        key: str | None = None
        if self.cpu is not None:
            key = (limit.source if limit and limit.source else None) or proc.path_in(self.cpu)
        throttling = attempt("throttling", lambda: self.throttling(proc, key)) if key else None
        return CgroupSnapshot(
            identity=ident,
            limit=limit,
            throttling=throttling,
            throttling_path=key,
            errors=tuple(errors),
        )


# ---- the pipeline's view -----------------------------------------------------------------------
# Identity (pod UID, container ID, QoS, readable name) comes from the cgroup path; the effective
# CPU limit is the minimum over the cgroup and its ancestors, the leaf limit the process's own
# cgroup's (what Go 1.25 reads); throttling counters are those of the level whose quota is effective.


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
