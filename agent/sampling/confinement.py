"""Is bpf() refused by seccomp or AppArmor rather than by missing capabilities?

In a container, the runtime's default seccomp profile (older moby/containerd/podman
ones allow ``bpf`` and ``perf_event_open`` only with CAP_SYS_ADMIN) and its default
AppArmor profile answer ``bpf()`` with EPERM even when CAP_BPF and CAP_PERFMON are
granted; bcc then reports a failed compile or map creation, which reads like a
kernel-header problem. One real ``bpf(BPF_MAP_CREATE)`` of a one-entry array, made
before bcc runs, tells the two apart; /proc/self/status and the AppArmor label
name the confinement and the fix.

`describe_confinement` is pure; `probe_bpf` and `confinement` do the I/O.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

# __NR_bpf per architecture (arch/*/entry/syscalls, include/uapi/asm-generic/unistd.h).
SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2

HELP_SECCOMP = (
    "this runtime's default seccomp profile admits bpf() only with CAP_SYS_ADMIN (CRI-O, podman with "
    "containers-common <= 0.50; containerd >= 1.6's admits it with CAP_BPF, as deploy/daemonset.yaml expects): "
    "set seccompProfile type Unconfined or a Localhost profile that allows bpf and perf_event_open, never "
    "SYS_ADMIN; docker/podman: --security-opt seccomp=unconfined"
)
HELP_APPARMOR = (
    "run the agent unconfined by AppArmor: appArmorProfile type Unconfined (as deploy/daemonset.yaml does; "
    "before Kubernetes 1.30 the container.apparmor.security.beta.kubernetes.io annotation), "
    "docker/podman: --security-opt apparmor=unconfined"
)


@dataclass(frozen=True)
class Confinement:
    seccomp_mode: int  # 0 off, 1 strict, 2 filter (/proc/self/status "Seccomp:")
    seccomp_filters: int
    apparmor: str  # the AppArmor label, "" when AppArmor is not active

    @property
    def apparmor_confined(self) -> bool:
        return bool(self.apparmor) and not self.apparmor.startswith("unconfined")


def parse_status(status: str) -> tuple[int, int]:
    """(Seccomp mode, number of filters) from /proc/PID/status; (0, 0) where the kernel omits them."""
    mode = re.search(r"^Seccomp:\s*(\d+)", status, re.MULTILINE)
    filters = re.search(r"^Seccomp_filters:\s*(\d+)", status, re.MULTILINE)
    return (int(mode[1]) if mode else 0, int(filters[1]) if filters else 0)


def describe_confinement(err: int, conf: Confinement) -> tuple[str, str] | None:
    """Message and help for a bpf() refused with ``err`` although the capabilities allow it."""
    if err not in {errno.EPERM, errno.EACCES, errno.ENOSYS}:
        return None
    what = f"bpf() is refused ({errno.errorcode.get(err, err)}) although the capabilities allow it"
    if conf.seccomp_mode == 2:
        return (
            f"{what}: this process runs under a seccomp filter ({conf.seccomp_filters} filter(s)), "
            "e.g. a container runtime's default profile that allows bpf() only with CAP_SYS_ADMIN",
            HELP_SECCOMP,
        )
    if conf.apparmor_confined:
        return f"{what}: this process is confined by the AppArmor profile {conf.apparmor!r}", HELP_APPARMOR
    return (
        f"{what}: a Linux security module (SELinux, AppArmor, Landlock) or kernel.unprivileged_bpf_disabled refuses it",
        "check the node's security policy for bpf() (audit log, dmesg); " + HELP_SECCOMP,
    )


def confinement(proc: Path = Path("/proc")) -> Confinement:
    try:
        mode, filters = parse_status((proc / "self" / "status").read_text())
    except OSError:
        mode, filters = 0, 0
    label = ""
    for attr in ("attr/apparmor/current", "attr/current"):
        try:
            label = (proc / "self" / attr).read_text().strip().rstrip("\0")
            break
        except OSError:
            continue
    return Confinement(mode, filters, label)


class _MapCreateAttr(ctypes.Structure):
    # The leading fields of union bpf_attr for BPF_MAP_CREATE; the rest stays zero.
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("pad", ctypes.c_uint8 * 112),
    ]


def probe_bpf() -> int | None:
    """0 if bpf() can create a map, else its errno; None where the syscall number is unknown."""
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _MapCreateAttr(BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(BPF_MAP_CREATE), ctypes.byref(attr), ctypes.sizeof(attr))
    if fd >= 0:
        os.close(fd)
        return 0
    return ctypes.get_errno()
