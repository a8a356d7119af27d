"""Drop from uid 0 to a uid that owns nothing, keeping only the capabilities the agent uses.

Why: as uid 0 the agent owns every root-owned file and process on the node, so with CAP_SYS_PTRACE
it can follow ``/host/proc/PID/root`` into any root process's filesystem and write there (a
read-only mount of /proc does not stop it: the magic link leaves the mount), and open a root
process's ``/proc/PID/mem`` for writing when /proc is writable. Everything the agent does is
granted by capabilities, not by owning files: BPF + PERFMON (load, attach), SYS_PTRACE (the ptrace
access check of /proc/PID/{mem,exe,root}), DAC_READ_SEARCH (open other owners' files for reading).
As a uid that owns nothing, with no CAP_DAC_OVERRIDE or CAP_FOWNER, it can still read all it
needs and can no longer write anything it does not own.

Kubernetes cannot start a non-root container with effective capabilities (no ambient
capabilities, and ``allowPrivilegeEscalation: false`` blocks file capabilities), so the container
starts as uid 0 with CAP_SETUID + CAP_SETGID added and the agent switches itself, first thing,
before any thread exists (capabilities are per thread): keep-caps, setresgid/setresuid, then
capset with SETUID/SETGID removed from the permitted set, so they cannot come back.

SYS_RESOURCE goes the same way on kernels from 5.11: they charge BPF maps and programs to the
memory cgroup instead of RLIMIT_MEMLOCK, and raising that limit (bcc does it only after an EPERM)
is all the agent needs SYS_RESOURCE for. The manifest keeps it for 5.8-5.10 nodes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import threading

from agent.errors import NodeAgentError

CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_RESOURCE = 24
PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(NodeAgentError):
    help = "the container needs CAP_SETUID and CAP_SETGID to switch users (see deploy/daemonset.yaml), or drop --user"


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def capabilities() -> tuple[int, int]:
    """(effective, permitted) of the calling thread, as 64-bit masks."""
    header, data = _Header(_LINUX_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    if _libc().capget(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capget failed: {os.strerror(ctypes.get_errno())}")
    return (data[0].effective | data[1].effective << 32, data[0].permitted | data[1].permitted << 32)


def _capset(mask: int) -> None:
    header, data = _Header(_LINUX_CAPABILITY_VERSION_3, 0), (_Data * 2)()
    for i in (0, 1):
        part = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = part
        data[i].inheritable = 0
    if _libc().capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset failed: {os.strerror(ctypes.get_errno())}")


def parse_user(text: str) -> tuple[int, int]:
    """``UID`` or ``UID:GID`` (numeric: the image has no user database to look names up in)."""
    uid_text, _, gid_text = text.partition(":")
    try:
        uid, gid = int(uid_text), int(gid_text or uid_text)
    except ValueError:
        raise ValueError(f"--user wants UID[:GID] as numbers, got {text!r}") from None
    if not (0 < uid < 2**32 - 1 and 0 <= gid < 2**32 - 1):
        raise ValueError(f"--user: {text!r} is out of range (uid 0 is what it drops)")
    return uid, gid


def bpf_memory_in_memcg(kernel_release: str) -> bool:
    """Whether this kernel charges BPF memory to the memory cgroup (5.11 and later), so that
    RLIMIT_MEMLOCK, and the SYS_RESOURCE to raise it, play no part; an unreadable release: no."""
    m = re.match(r"(\d+)\.(\d+)", kernel_release)
    return m is not None and (int(m[1]), int(m[2])) >= (5, 11)


def unneeded(kernel_release: str) -> int:
    """The capabilities dropped after the switch: SETUID/SETGID always, SYS_RESOURCE where unused."""
    mask = 1 << CAP_SETUID | 1 << CAP_SETGID
    if bpf_memory_in_memcg(kernel_release):
        mask |= 1 << CAP_SYS_RESOURCE
    return mask


def drop_to(uid: int, gid: int) -> int:
    """Become ``uid``:``gid`` with today's capabilities minus the ``unneeded`` ones; returns the kept mask."""
    if threading.active_count() != 1:
        raise PrivilegeError("switching users must happen before any thread starts (capabilities are per thread)")
    _, permitted = capabilities()
    missing = [
        name for bit, name in ((CAP_SETUID, "CAP_SETUID"), (CAP_SETGID, "CAP_SETGID")) if not permitted >> bit & 1
    ]
    if missing and os.geteuid() != uid:
        raise PrivilegeError(f"cannot switch to uid {uid}: {' and '.join(missing)} missing")
    keep = permitted & ~unneeded(os.uname().release)
    libc = _libc()
    if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(PR_SET_KEEPCAPS) failed: {os.strerror(ctypes.get_errno())}")
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to {uid}:{gid}: {exc.strerror}") from None
    _capset(keep)
    libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    effective, permitted = capabilities()
    if effective != keep or permitted != keep or os.getresuid() != (uid, uid, uid):
        raise PrivilegeError(f"switching to uid {uid} left capabilities {effective:#x}, expected {keep:#x}")
    return keep
