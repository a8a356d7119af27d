"""Which container a process is in, its effective CPU limit, throttling and cgroup id.

Every path is built from a cgroup root given by the caller (``/host/sys/fs/cgroup``
under ``--host-root /host``); parsing lives in :mod:`agent.host.cgroupparse`, whose
names are re-exported here so callers import one module.

Public API::

    CgroupFS(cgroup_root, *, layout=None, ns_root="/")    host-level facade
        .from_host_root(host_root)                         -> CgroupFS (host_root/sys/fs/cgroup)
        .layout                                            Layout (mode V1 / V2 / HYBRID)
        .snapshot(proc_cgroup_text) -> CgroupSnapshot      everything, per-field errors as values
        .parse(proc_cgroup_text) -> ProcCgroup             paths made host-absolute (cgroup namespaces)
        .identity(proc) / .cpu_limit(proc) / .cpuset_cpus(proc) / .throttling(proc) / .cgroup_id(proc)
        .cpu / .cpuset / .unified                          the Hierarchy holding each (or None)
    detect_layout(cgroup_root) -> Layout                   from the directory tree
    layout_from_mountinfo(text, *, host_root, cgroup_root) -> Layout
    read_cpu_limit(h, path) -> CpuLimit                    min over the cgroup and its ancestors
    read_cpuset_cpus(h, path) -> int                       effective cpuset size
    read_throttling(h, path) -> Throttling | None          cpu.stat counters, in seconds
    cgroup_id(unified, path) -> int                        inode = bpf_get_current_cgroup_id()
    CgroupIdResolver(unified).resolve(id) -> str | None    bounded lazy id -> path
    parse_proc_cgroup, identify, parse_cpu_max, parse_cfs, parse_cpu_stat, count_cpus  (pure)

Errors: a missing or unreadable cgroup *directory* (the process moved or its
container stopped) and garbled content raise :class:`CgroupError`. A missing
*file* in an existing directory is a kernel state and returns "no value":
no cpu.max / cfs_quota_us = no limit at that level; no cpu.stat bandwidth
counters = ``None``; no cpuset file = the parent's cpuset applies.
No hierarchy with the cpuset controller: ``cpuset_cpus`` is None (the host's
CPUs apply); no unified hierarchy (pure v1): ``cgroup_id`` is None.
:meth:`CgroupFS.snapshot` raises only for unusable /proc/PID/cgroup text; a
field it cannot read is None with its reason in ``errors``.
"""

from __future__ import annotations

import errno
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from agent.errors import CgroupError
from agent.host.cgroupparse import (
    QOS_CLASSES,
    V1_CONTROLLERS,
    CgroupIdentity,
    CgroupMount,
    Hierarchy,
    Layout,
    Mode,
    ProcCgroup,
    Quota,
    Throttling,
    at_or_below,
    build_layout,
    count_cpus,
    identify,
    layout_from_mounts,
    normalize_path,
    parse_cfs,
    parse_cpu_max,
    parse_cpu_stat,
    parse_mountinfo,
    parse_proc_cgroup,
)

__all__ = [
    "QOS_CLASSES",
    "CgroupFS",
    "CgroupIdResolver",
    "CgroupIdentity",
    "CgroupMount",
    "CgroupSnapshot",
    "CpuLimit",
    "Hierarchy",
    "Layout",
    "LevelQuota",
    "Mode",
    "ProcCgroup",
    "Quota",
    "Throttling",
    "cgroup_id",
    "count_cpus",
    "detect_layout",
    "identify",
    "layout_from_mountinfo",
    "normalize_path",
    "parse_cfs",
    "parse_cpu_max",
    "parse_cpu_stat",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "read_cpu_limit",
    "read_cpuset_cpus",
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


def layout_from_mountinfo(text: str, *, host_root: Path = Path("/"), cgroup_root: str = "/sys/fs/cgroup") -> Layout:
    """The layout a mountinfo text (as seen in the host's mount namespace) describes.

    Mount points are re-rooted under ``host_root``. v2 controllers are not in
    mountinfo, so the unified root's ``cgroup.controllers`` is read if present.
    """
    mounts = parse_mountinfo(text)
    controllers: frozenset[str] = frozenset()
    for m in mounts:
        mp = m.mount_point
        if m.version == 2 and at_or_below(mp, cgroup_root):
            try:
                controllers = frozenset((host_root / mp.lstrip("/") / "cgroup.controllers").read_text().split())
            except OSError:
                controllers = frozenset()
            break
    return layout_from_mounts(mounts, cgroup_root=cgroup_root, prefix=host_root, unified_controllers=controllers)


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


def read_cpuset_cpus(h: Hierarchy, path: str) -> int:
    """Number of CPUs the cgroup may run on (effective list; nearest ancestor that has one)."""
    names = ("cpuset.cpus.effective",) if h.version == 2 else ("cpuset.effective_cpus", "cpuset.cpus")
    _require_dir(_dir(h, path))
    for p in _ancestry(path):
        for name in names:
            text = _read(_dir(h, p) / name)
            if text is not None:
                return count_cpus(text)
    raise CgroupError(f"no {' or '.join(names)} in {_dir(h, path)} or its ancestors")


def read_throttling(h: Hierarchy, path: str) -> Throttling | None:
    """cpu.stat counters of one cgroup; None when it has none (no cpu controller / no cpu.stat)."""
    d = _dir(h, path)
    _require_dir(d)
    text = _read(d / "cpu.stat")
    return None if text is None else parse_cpu_stat(text, h.version)


# ---- cgroup ids --------------------------------------------------------------------------------


def cgroup_id(unified: Path, path: str) -> int:
    """The id BPF's ``bpf_get_current_cgroup_id()`` reports for ``path``: its directory's inode
    on the unified hierarchy (kernfs node id; equal to st_ino on 64-bit kernels)."""
    d = unified.joinpath(*[c for c in normalize_path(path).split("/") if c])
    try:
        st = os.stat(d)
    except OSError as exc:
        raise CgroupError(f"cgroup {d} vanished" if exc.errno == errno.ENOENT else f"cannot stat {d}: {exc}") from None
    return st.st_ino


class CgroupIdResolver:
    """Names the cgroup ids found in samples, walking the unified hierarchy only as far as needed.

    Known ids are kept in an LRU of ``max_entries``. A miss resumes one
    depth-first walk where the last miss left it (at most ``max_walk`` directories
    per call); once a walk finishes, a new one starts only after
    ``rewalk_interval_s`` so ids of cgroups that are gone cost nothing.
    Ids are never reused (64-bit kernfs ids), so a cached name cannot go stale.
    """

    def __init__(
        self,
        unified: Path,
        *,
        max_entries: int = 8192,
        max_walk: int = 50_000,
        rewalk_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unified = unified
        self.max_entries = max_entries
        self.max_walk = max_walk
        self.rewalk_interval_s = rewalk_interval_s
        self._clock = clock
        self._cache: OrderedDict[int, str] = OrderedDict()
        self._walk: Iterator[tuple[int, str]] | None = None
        self._walk_done_at: float | None = None
        self.walked = 0  # directories visited in total, for tests and metrics

    def __len__(self) -> int:
        return len(self._cache)

    def _put(self, cid: int, path: str) -> None:
        self._cache[cid] = path
        self._cache.move_to_end(cid)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    def remember(self, path: str) -> int:
        """Stat one known path (e.g. from /proc/PID/cgroup) and cache its id."""
        cid = cgroup_id(self.unified, path)
        self._put(cid, normalize_path(path))
        return cid

    def _iter_tree(self) -> Iterator[tuple[int, str]]:
        try:
            yield os.stat(self.unified).st_ino, "/"
        except OSError:
            return
        stack: list[tuple[Path, str]] = [(self.unified, "")]
        while stack:
            d, rel = stack.pop()
            try:
                with os.scandir(d) as it:
                    subdirs = [e for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:  # removed while we walked
                continue
            for e in subdirs:
                path = f"{rel}/{e.name}"
                yield e.inode(), path
                stack.append((Path(e.path), path))

    def resolve(self, cid: int) -> str | None:
        """The cgroup path of ``cid``, or None if it is not found within this call's budget."""
        hit = self._cache.get(cid)
        if hit is not None:
            self._cache.move_to_end(cid)
            return hit
        if self._walk is None:
            if self._walk_done_at is not None and self._clock() - self._walk_done_at < self.rewalk_interval_s:
                return None
            self._walk = self._iter_tree()
        for _ in range(self.max_walk):
            item = next(self._walk, None)
            if item is None:
                self._walk, self._walk_done_at = None, self._clock()
                return None
            self.walked += 1
            self._put(*item)
            if item[0] == cid:
                return item[1]
        return None


# ---- the host-level facade ---------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupSnapshot:
    """Everything about one process's cgroup; a field that could not be read is None
    and its reason is in ``errors`` (so one bad file never hides the others)."""

    identity: CgroupIdentity
    limit: CpuLimit | None  # None: unknown (see errors); limit.cores None: unlimited
    cpuset_cpus: int | None
    throttling: Throttling | None  # counters of ``throttling_path``
    throttling_path: str | None  # the level whose quota is effective, else the leaf
    cgroup_id: int | None  # None on pure v1 or when unknown
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
        self.cpuset = self.layout.for_controller("cpuset")
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

    def cpuset_cpus(self, proc: ProcCgroup) -> int | None:
        """None when no hierarchy has the cpuset controller (the host's CPUs apply)."""
        if self.cpuset is None:
            return None
        return read_cpuset_cpus(*self._path(proc, self.cpuset, "cpuset"))

    def throttling(self, proc: ProcCgroup, path: str | None = None) -> Throttling | None:
        h, own = self._path(proc, self.cpu, "cpu")
        return read_throttling(h, path or own)

    def cgroup_id(self, proc: ProcCgroup) -> int | None:
        """None on pure v1 hosts (BPF's ids then name no mounted directory)."""
        if self.unified is None or proc.unified is None:
            return None
        return cgroup_id(self.unified.mount, proc.unified)

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
            cpuset_cpus=attempt("cpuset", lambda: self.cpuset_cpus(proc)),
            throttling=throttling,
            throttling_path=key,
            cgroup_id=attempt("cgroup id", lambda: self.cgroup_id(proc)),
            errors=tuple(errors),
        )
