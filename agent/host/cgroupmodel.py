"""Pure cgroup parsing: text in, plain data out; no file is opened here.

:mod:`agent.host.cgroupfs` does the I/O and re-exports everything below. Parsers
raise :class:`~agent.errors.CgroupError` for content the kernel would never
write (garbage, a zero period) and return ``None`` where "no value" is a real
state of the kernel (``max`` quota, no bandwidth counters on this cgroup).

Naming follows what the kernel and the Kubernetes stack actually write:

* /proc/PID/cgroup lines ``N:cpu,cpuacct:/path`` (v1) and ``0::/path`` (v2);
* kubelet pod cgroups, systemd driver ``kubepods-burstable-pod<uid_with_underscores>.slice``,
  cgroupfs driver ``kubepods/burstable/pod<uid>``; guaranteed pods have no QoS level;
* container leaves ``cri-containerd-<id>.scope``, ``crio-<id>.scope`` (``crio-conmon-``
  is the monitor, not the container), ``docker-<id>.scope``, ``libpod-<id>.scope``,
  bare ``<id>`` under the cgroupfs driver.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import CgroupError

DEFAULT_PERIOD_US = 100_000  # what the kernel uses when cpu.max holds only a quota

# Controllers the kernel can bind to a v1 hierarchy (kernel/cgroup/cgroup.c, cgroup_subsys.h).
V1_CONTROLLERS = frozenset(
    {
        "cpuset", "cpu", "cpuacct", "io", "blkio", "memory", "devices", "freezer", "net_cls",
        "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc", "debug",
    }
)  # fmt: skip


# ---- hierarchy layout --------------------------------------------------------------------------


class Mode(enum.Enum):
    """How the host mounts cgroups."""

    V1 = "v1"  # legacy: one hierarchy per controller group, no unified hierarchy
    V2 = "v2"  # unified only, mounted at the cgroup root itself
    HYBRID = "hybrid"  # v1 controllers plus a unified hierarchy at <root>/unified


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: where its root cgroup is on this machine."""

    version: int  # 1 or 2
    mount: Path  # directory of the hierarchy's root cgroup (already under the host root)
    controllers: frozenset[str]  # v1: bound controllers (+ "name=systemd"); v2: cgroup.controllers


@dataclass(frozen=True)
class Layout:
    mode: Mode
    hierarchies: tuple[Hierarchy, ...]

    @property
    def unified(self) -> Hierarchy | None:
        """The v2 hierarchy, whose directory inodes are the ids BPF reports."""
        return next((h for h in self.hierarchies if h.version == 2), None)

    def for_controller(self, controller: str) -> Hierarchy | None:
        """The hierarchy that holds ``controller``'s files (a v1 binding wins, as in the kernel)."""
        for h in self.hierarchies:
            if h.version == 1 and controller in h.controllers:
                return h
        u = self.unified
        return u if u is not None and controller in u.controllers else None


def build_layout(hierarchies: Sequence[Hierarchy], *, root_is_unified: bool) -> Layout:
    has_v1 = any(h.version == 1 for h in hierarchies)
    has_v2 = any(h.version == 2 for h in hierarchies)
    if not has_v1 and not has_v2:
        raise CgroupError("no cgroup hierarchy is mounted", help="mount the host's /sys/fs/cgroup into the agent")
    mode = Mode.V2 if root_is_unified or not has_v1 else Mode.HYBRID if has_v2 else Mode.V1
    ordered = sorted(hierarchies, key=lambda h: (h.version, str(h.mount)))
    return Layout(mode, tuple(ordered))


# ---- /proc/PID/cgroup -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcCgroup:
    """One process's membership: the unified path and each v1 controller's path."""

    unified: str | None  # the "0::" line (v2 and hybrid); None on pure v1
    v1: tuple[tuple[str, str], ...] = ()  # (controller, path), "name=systemd" included

    def v1_path(self, controller: str) -> str | None:
        return next((p for c, p in self.v1 if c == controller), None)

    def path_in(self, hierarchy: Hierarchy) -> str | None:
        """The process's cgroup in ``hierarchy`` (None: the process is not listed there)."""
        if hierarchy.version == 2:
            return self.unified
        return next((p for c, p in self.v1 if c in hierarchy.controllers), None)

    def paths(self) -> list[str]:
        """Distinct paths, cpu's first, for identification."""
        order = [self.v1_path("cpu"), self.unified, self.v1_path("name=systemd"), *(p for _, p in self.v1)]
        return list(dict.fromkeys(p for p in order if p is not None))


def parse_proc_cgroup(text: str) -> ProcCgroup:
    """/proc/PID/cgroup text. Empty text (an exiting process) is an error, not "/"."""
    unified: str | None = None
    v1: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        hid, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep1 and sep2) or not hid.isdigit() or not path.startswith("/"):
            raise CgroupError(f"malformed /proc/PID/cgroup line {line[:120]!r}")
        if hid == "0" and not controllers:
            unified = path
        else:
            v1.extend((c, path) for c in controllers.split(",") if c)
    if unified is None and not v1:
        raise CgroupError("empty /proc/PID/cgroup (the process is exiting)")
    return ProcCgroup(unified, tuple(v1))


def normalize_path(path: str, ns_root: str = "/") -> str:
    """A host-absolute cgroup path.

    Inside a private cgroup namespace /proc/PID/cgroup shows paths relative to
    the reader's namespace root (``/../../kubepods.slice/...``); ``ns_root`` is
    where that root sits on the host. A path still escaping "/" is an error.
    """
    parts: list[str] = []
    for comp in f"{ns_root}/{path}".split("/"):
        if comp in {"", "."}:
            continue
        if comp == "..":
            if not parts:
                raise CgroupError(
                    f"cgroup path {path!r} is outside the agent's cgroup namespace",
                    help="run the agent in the host cgroup namespace or pass its namespace root",
                )
            parts.pop()
        else:
            parts.append(comp)
    return "/" + "/".join(parts)


# ---- who is this cgroup ------------------------------------------------------------------------

QOS_CLASSES = ("guaranteed", "burstable", "besteffort")
RUNTIME_CONTAINERD = "containerd"
RUNTIME_CRIO = "cri-o"
RUNTIME_DOCKER = "docker"
RUNTIME_PODMAN = "podman"

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"  # 32: static pods
_ID = r"[0-9a-f]{64}"
_POD_SYSTEMD = re.compile(rf"(?P<prefix>[a-z0-9_-]*?)-?pod(?P<uid>{_UID})\.slice")
_POD_CGROUPFS = re.compile(rf"pod(?P<uid>{_UID})")
_QOS_SYSTEMD = re.compile(r"(?:[a-z0-9_-]*-)?kubepods-(?P<qos>burstable|besteffort)\.slice")
_CONMON = re.compile(rf"(?:crio|libpod)-conmon-(?P<id>{_ID})(?:\.scope)?")
_CONTAINER = (
    (re.compile(rf"cri-containerd-(?P<id>{_ID})\.scope"), RUNTIME_CONTAINERD),
    (re.compile(rf"crio-(?P<id>{_ID})(?:\.scope)?"), RUNTIME_CRIO),
    (re.compile(rf"docker-(?P<id>{_ID})\.scope"), RUNTIME_DOCKER),
    (re.compile(rf"libpod-(?P<id>{_ID})(?:\.scope)?"), RUNTIME_PODMAN),
    (re.compile(rf"nerdctl-(?P<id>{_ID})\.scope"), RUNTIME_CONTAINERD),
)
_BARE_ID = re.compile(_ID)
_BARE_PARENT_RUNTIME = {"docker": RUNTIME_DOCKER, "libpod_parent": RUNTIME_PODMAN}
_UNIT = re.compile(r".+\.(?:service|scope|slice)")
_USER_MANAGER = re.compile(r"user@\d+\.service")


@dataclass(frozen=True)
class CgroupIdentity:
    """Which workload a cgroup path belongs to, read from the path alone.

    ``name`` is for people and metric labels when the Kubernetes API is not
    available: ``pod<uid>/<container id[:12]>``, ``docker:<id[:12]>``, the
    innermost systemd unit (``ssh.service``), or the path itself.
    """

    path: str
    pod_uid: str | None = None  # dashes, as the API server spells it (static pods: 32 hex)
    container_id: str | None = None  # 64 hex, no runtime prefix
    runtime: str | None = None  # "containerd", "cri-o", "docker", "podman"; None when the path does not say
    qos: str | None = None  # "guaranteed", "burstable", "besteffort"
    name: str = ""

    @property
    def kubernetes(self) -> bool:
        return self.pod_uid is not None


def _normalize_uid(uid: str) -> str:
    return uid.replace("_", "-")


def identify(path: str) -> CgroupIdentity:
    """Pod UID, container ID, runtime, QoS class and a readable name from a cgroup path."""
    comps = [c for c in path.split("/") if c]
    pod_uid: str | None = None
    qos: str | None = None
    pod_at = -1
    kubepods_seen = False
    for i, comp in enumerate(comps):
        if comp == "kubepods" or comp.endswith("kubepods.slice"):
            kubepods_seen = True
        m = _QOS_SYSTEMD.fullmatch(comp)
        if m:
            kubepods_seen, qos = True, m.group("qos")
            continue
        if kubepods_seen and comp in {"burstable", "besteffort"} and i > 0 and comps[i - 1] == "kubepods":
            qos = comp
            continue
        m = _POD_SYSTEMD.fullmatch(comp)
        if m and "kubepods" in m.group("prefix").split("-"):
            tokens = m.group("prefix").split("-")
            pod_uid = _normalize_uid(m.group("uid"))
            qos = next((q for q in ("burstable", "besteffort") if q in tokens), "guaranteed")
            pod_at = i
            break
        m = _POD_CGROUPFS.fullmatch(comp)
        if m and kubepods_seen:
            pod_uid = m.group("uid")
            qos = qos or "guaranteed"
            pod_at = i
            break

    container_id: str | None = None
    runtime: str | None = None
    conmon: str | None = None
    for i in range(pod_at + 1, len(comps)):
        comp = comps[i]
        m = _CONMON.fullmatch(comp)
        if m:
            conmon = m.group("id")
            break
        for rx, rt in _CONTAINER:
            m = rx.fullmatch(comp)
            if m:
                container_id, runtime = m.group("id"), rt
                break
        if container_id is None and _BARE_ID.fullmatch(comp):
            container_id = comp
            runtime = _BARE_PARENT_RUNTIME.get(comps[i - 1]) if i > 0 else None
        if container_id is not None:
            break

    return CgroupIdentity(
        path=path,
        pod_uid=pod_uid,
        container_id=container_id,
        runtime=runtime,
        qos=qos,
        name=_name(comps, pod_uid, container_id, runtime, conmon),
    )


def _name(comps: list[str], pod_uid: str | None, cid: str | None, runtime: str | None, conmon: str | None) -> str:
    if pod_uid is not None:
        base = f"pod{pod_uid}"
        if cid is not None:
            return f"{base}/{cid[:12]}"
        return f"{base}/conmon-{conmon[:12]}" if conmon is not None else base
    if cid is not None:
        return f"{runtime or 'container'}:{cid[:12]}"
    if conmon is not None:
        return f"conmon:{conmon[:12]}"
    if not comps:
        return "/"
    unit_at = max((i for i, c in enumerate(comps) if _UNIT.fullmatch(c)), default=-1)
    if unit_at < 0:
        return "/".join(comps)
    name = "/".join(comps[unit_at:])
    manager = next((c for c in comps[:unit_at] if _USER_MANAGER.fullmatch(c)), None)
    return f"{manager}/{name}" if manager is not None else name


# ---- CPU bandwidth ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Quota:
    """A CFS bandwidth limit: ``quota_us`` of CPU time every ``period_us``."""

    quota_us: int
    period_us: int

    @property
    def cores(self) -> float:
        return self.quota_us / self.period_us


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise CgroupError(f"{what}: not an integer: {text.strip()[:40]!r}") from None


def _quota(quota: int, period: int, what: str) -> Quota:
    if period <= 0:
        raise CgroupError(f"{what}: period {period} is not positive")
    if quota <= 0:
        raise CgroupError(f"{what}: quota {quota} is not positive")
    return Quota(quota, period)


def parse_cpu_max(text: str) -> Quota | None:
    """v2 cpu.max: ``"$MAX $PERIOD"``; ``max`` means no limit (None).

    A lone quota uses the default period, as automaxprocs and the kernel's
    parser do; an empty file, extra fields or a zero period are errors.
    """
    fields = text.split()
    if not fields or len(fields) > 2:
        raise CgroupError(f"cpu.max: expected 'QUOTA [PERIOD]', got {text.strip()[:40]!r}")
    period = _int(fields[1], "cpu.max period") if len(fields) == 2 else DEFAULT_PERIOD_US
    if fields[0] == "max":
        if period <= 0:
            raise CgroupError(f"cpu.max: period {period} is not positive")
        return None
    return _quota(_int(fields[0], "cpu.max quota"), period, "cpu.max")


def parse_cfs(quota_text: str, period_text: str | None) -> Quota | None:
    """v1 cpu.cfs_quota_us and cpu.cfs_period_us; a negative quota (-1) means no limit (None)."""
    quota = _int(quota_text, "cpu.cfs_quota_us")
    if quota < 0:
        return None
    if period_text is None:
        raise CgroupError("cpu.cfs_quota_us is set but cpu.cfs_period_us is missing")
    return _quota(quota, _int(period_text, "cpu.cfs_period_us"), "cpu.cfs_quota_us/cpu.cfs_period_us")


@dataclass(frozen=True)
class Throttling:
    """cpu.stat bandwidth counters (cumulative since the cgroup was created)."""

    nr_periods: int
    nr_throttled: int
    throttled_seconds: float


def parse_cpu_stat(text: str, version: int) -> Throttling | None:
    """cpu.stat; None when the cgroup has no bandwidth counters (v2 without the cpu controller).

    v2 reports ``throttled_usec``, v1 ``throttled_time`` in nanoseconds.
    """
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key:
            values[key] = _int(value, f"cpu.stat {key}")
    if "nr_periods" not in values:
        return None
    time_key, scale = ("throttled_usec", 1e-6) if version == 2 else ("throttled_time", 1e-9)
    try:
        return Throttling(values["nr_periods"], values["nr_throttled"], values[time_key] * scale)
    except KeyError as exc:
        raise CgroupError(f"cpu.stat: has nr_periods but no {exc.args[0]}") from None
