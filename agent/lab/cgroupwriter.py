"""Creating, limiting and removing cgroups: what the demo, the tests and the benchmarks do to a machine.

The agent itself only reads cgroups (``agent/host/cgroupfs.py``); this module writes them,
for the programs that run Go services under a real CPU quota. Removal is
"kill what is inside, children first, then rmdir, retrying while the kernel
lets go", so every exit path can leave the machine as it found it; trees
named ``<prefix><pid>`` whose pid is gone (a run that was SIGKILLed) are swept
by :func:`remove_stale`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import CgroupError

PERIOD_US = 100_000
HELP_CGROUP = (
    "a cgroup cpu controller is needed: cgroup v1 mounted at /sys/fs/cgroup/cpu, or cgroup v2 with "
    "`cpu` in cgroup.controllers (a container needs a writable /sys/fs/cgroup, e.g. --privileged)"
)


@dataclass(frozen=True)
class CpuHierarchy:
    version: int  # 1 or 2
    root: Path  # where the hierarchy with the cpu controller is mounted


def find_hierarchy(controller: str, v1_marker: str, cgroup_fs: Path = Path("/sys/fs/cgroup")) -> CpuHierarchy:
    """cgroup v1's ``controller`` if mounted (``v1_marker`` is one of its files), else a cgroup v2
    tree that offers it."""
    v1 = cgroup_fs / controller
    if (v1 / v1_marker).is_file():
        return CpuHierarchy(1, v1)
    for root in (cgroup_fs, cgroup_fs / "unified"):
        try:
            controllers = (root / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if controller in controllers:
            return CpuHierarchy(2, root)
    help_text = HELP_CGROUP.replace("cpu", controller)
    raise CgroupError(f"no cgroup {controller} controller under {cgroup_fs}", help=help_text)


def find_cpu_hierarchy(cgroup_fs: Path = Path("/sys/fs/cgroup")) -> CpuHierarchy:
    return find_hierarchy("cpu", "cpu.cfs_quota_us", cgroup_fs)


def v1_limit_files(cores: float | None, period_us: int = PERIOD_US) -> dict[str, str]:
    quota = -1 if cores is None else round(cores * period_us)
    return {"cpu.cfs_period_us": str(period_us), "cpu.cfs_quota_us": str(quota)}


def v2_limit_files(cores: float | None, period_us: int = PERIOD_US) -> dict[str, str]:
    quota = "max" if cores is None else str(round(cores * period_us))
    return {"cpu.max": f"{quota} {period_us}"}


def write_file(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise CgroupError(f"cannot write {text.strip()!r} to {path}: {exc.strerror or exc}", help=HELP_CGROUP) from None


def set_limit(path: Path, version: int, cores: float | None, period_us: int = PERIOD_US) -> None:
    """``cores`` CPUs of quota per period on the cgroup at ``path`` (None: unlimited)."""
    files = v1_limit_files(cores, period_us) if version == 1 else v2_limit_files(cores, period_us)
    for fname, text in files.items():
        write_file(path / fname, text)


def find_memory_hierarchy(cgroup_fs: Path = Path("/sys/fs/cgroup")) -> CpuHierarchy:
    return find_hierarchy("memory", "memory.limit_in_bytes", cgroup_fs)


def set_memory_limit(path: Path, version: int, limit_bytes: int) -> None:
    """A hard memory limit (what a Pod's resources.limits.memory sets), swap included where v1 allows."""
    if version == 2:
        write_file(path / "memory.max", str(limit_bytes))
        return
    write_file(path / "memory.limit_in_bytes", str(limit_bytes))
    if (path / "memory.memsw.limit_in_bytes").exists():
        write_file(path / "memory.memsw.limit_in_bytes", str(limit_bytes))


def make_cgroup(path: Path) -> Path:
    try:
        path.mkdir()
    except OSError as exc:
        raise CgroupError(f"cannot create cgroup {path}: {exc.strerror or exc}", help=HELP_CGROUP) from None
    return path


def add_process(cgroup: Path, pid: int) -> None:
    """Move ``pid`` (all its threads) into ``cgroup``."""
    write_file(cgroup / "cgroup.procs", str(pid))


# The child joins its cgroup itself, then execs: the program starts inside it (a Go runtime reads its
# quota at start), without a preexec_fn (unsafe in a process with threads) or a race with the parent.
_JOIN = 'echo $$ > "$1/cgroup.procs" || exit 125; shift; exec "$@"'
JOIN_FAILED = 125  # the exit status of a child that could not join its cgroup


def in_cgroup(argv: list[str], cgroup: Path | None) -> list[str]:
    """The command line that runs ``argv`` inside ``cgroup`` (unchanged for None): the one way the
    demo, the tests and the benchmarks start a process in a cgroup."""
    if cgroup is None:
        return list(argv)
    return ["/bin/sh", "-c", _JOIN, "sh", str(cgroup), *argv]


def cgroup_pids(cgroup: Path) -> list[int]:
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_cgroup(path: Path, timeout_s: float = 5.0) -> str | None:
    """Kill what is inside (children first), then rmdir, retrying while the kernel lets go.

    None when the directory is gone, else why it is still there.
    """
    with contextlib.suppress(OSError):
        for child in [p for p in path.iterdir() if p.is_dir()]:
            remove_cgroup(child, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        for pid in cgroup_pids(path):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                return f"could not remove cgroup {path}: {exc.strerror or exc}"
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(root: Path, prefix: str) -> list[str]:
    """Remove ``<prefix><pid>`` trees under ``root`` whose pid is gone; the problems, if any."""
    problems = []
    for d in root.glob(prefix + "*"):
        suffix = d.name.removeprefix(prefix)
        if d.is_dir() and suffix.isdigit() and not pid_alive(int(suffix)):
            problem = remove_cgroup(d)
            if problem:
                problems.append(problem)
    return problems


class CgroupTree:
    """``<prefix><pid>`` and one child per group of processes, each with its own CPU limit."""

    def __init__(self, hierarchy: CpuHierarchy, name: str) -> None:
        self.hierarchy = hierarchy
        self.path = hierarchy.root / name

    def create(self) -> None:
        """Make the tree's root (no limit of its own: each child has one)."""
        make_cgroup(self.path)
        if self.hierarchy.version == 2:
            # v2 hands the cpu controller down one level at a time; children of our tree need it here.
            for level in (self.hierarchy.root, self.path):
                control = level / "cgroup.subtree_control"
                try:
                    enabled = control.read_text().split()
                except OSError:
                    enabled = []
                if "cpu" not in enabled:
                    write_file(control, "+cpu")

    def child(self, name: str, cores: float | None) -> Path:
        path = make_cgroup(self.path / name)
        set_limit(path, self.hierarchy.version, cores)
        return path

    def rel(self, child: Path) -> str:
        """The path /proc/PID/cgroup shows for a process in ``child``."""
        return "/" + str(child.relative_to(self.hierarchy.root))

    def remove(self) -> str | None:
        return remove_cgroup(self.path)
