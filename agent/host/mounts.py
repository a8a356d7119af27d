"""Is the host mounted read-only? Checked once at start-up, reported loudly when not.

The DaemonSet mounts the host's /proc, /sys, /lib/modules and /usr/src under
``--host-root`` read-only. A read-only bind mount is not recursive: the mounts
below it (the cgroup controllers under /sys/fs/cgroup, securityfs, ...) stay
writable unless the runtime supports ``recursiveReadOnly`` (Kubernetes >= 1.30
with a CRI runtime that implements it). The agent only reads the host, so any
writable mount under the host root is a hole: a compromised agent could rewrite
another container's CPU quota. Reading our own mountinfo tells exactly which.

`parse_mountinfo` and `writable_under` are pure; `check_host_mounts` reads one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/PID/mountinfo, the fields this check needs."""

    point: PurePosixPath
    options: frozenset[str]  # per-mount options (field 6): ro/rw, nosuid, ...
    fstype: str
    source: str
    super_options: frozenset[str]  # the file system's options (after " - ")

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Every mount of a mountinfo text; malformed lines are skipped (the kernel writes none)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        out.append(
            MountEntry(
                point=PurePosixPath(_unescape(fields[4])),
                options=frozenset(fields[5].split(",")),
                fstype=tail[0],
                source=_unescape(tail[1]),
                super_options=frozenset(tail[2].split(",")),
            )
        )
    return out


def writable_under(entries: list[MountEntry], host_root: PurePosixPath) -> list[MountEntry]:
    """Writable mounts at or below ``host_root``; none when the host root is ``/`` (not in a container).

    Only the last mount on a mount point counts: a read-only bind stacked on a writable
    one hides it.
    """
    if host_root == PurePosixPath("/"):
        return []
    top: dict[PurePosixPath, MountEntry] = {}
    for e in entries:
        if e.point == host_root or host_root in e.point.parents:
            top[e.point] = e
    return [e for e in top.values() if not e.read_only]


@dataclass(frozen=True)
class MountCheck:
    writable: tuple[MountEntry, ...]
    error: str = ""  # mountinfo unreadable

    @property
    def reason(self) -> str:
        """One line for /readyz and the log; empty when the host is read-only."""
        if self.error:
            return f"cannot check that the host mounts are read-only: {self.error}"
        if not self.writable:
            return ""
        shown = ", ".join(f"{e.point} ({e.fstype})" for e in self.writable[:8])
        more = f" and {len(self.writable) - 8} more" if len(self.writable) > 8 else ""
        return (
            f"host mounts writable: {shown}{more}; the agent could change the host (e.g. a container's CPU quota). "
            "Mount them read-only: recursiveReadOnly on Kubernetes >= 1.30 with a runtime that supports it, "
            "or a readOnly mount for each sub-mount (deploy/daemonset.yaml)"
        )


def check_host_mounts(host_root: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> MountCheck:
    """The writable mounts under ``host_root`` as this process sees its own mount namespace."""
    try:
        text = mountinfo.read_text()
    except OSError as e:
        return MountCheck((), f"{mountinfo}: {e.strerror or e}")
    return MountCheck(tuple(writable_under(parse_mountinfo(text), PurePosixPath(host_root))))
