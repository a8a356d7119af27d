"""Who is pid N: identity, executable, mappings, affinity and two Go variables.

Everything is read under a /proc root given to :class:`ProcFS` (the host's
/proc mounted into the agent's container, e.g. ``/host/proc``), so the agent
sees every process on the node. A process is keyed by :class:`ProcessKey`
(pid, start time in clock ticks): pids are reused, start times are not.

One snapshot reads the files of one process through a descriptor of its
/proc/PID directory, which the kernel ties to that very process: if it exits
and the pid is reused, reads through the old descriptor fail instead of
returning the new process's data. The start time is compared before and after
as a second guard (and for fake trees in tests).

The environment may hold secrets: only ``GOMAXPROCS`` and ``GODEBUG`` are ever
kept; everything else is dropped while parsing and never logged.

Parsers are pure functions over text/bytes; :class:`ProcFS` does the I/O and
turns ``OSError`` into per-process errors: :class:`ProcessGoneError` (exited,
zombie, pid reused), :class:`ProcessAccessError` (permission), and
:class:`ProcfsError` (unexpected content).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from agent.errors import NodeAgentError, ProcessGoneError
from agent.host import cpulist

PF_KTHREAD = 0x00200000  # task->flags bit of kernel threads (include/linux/sched.h)
DELETED_SUFFIX = " (deleted)"
MAX_MEMORY_READ = 1 << 20
GO_ENV_KEYS = ("GOMAXPROCS", "GODEBUG")

_T = TypeVar("_T")


# ---- errors ----------------------------------------------------------------------------------


class ProcfsError(NodeAgentError):
    """A /proc file of one process could not be read or had unexpected content."""


class ProcessAccessError(ProcfsError):
    """Permission denied on one /proc file of one process."""

    help = "run node-agent as root with CAP_SYS_PTRACE in the host PID namespace (hostPID: true)"


class MemoryReadError(ProcfsError):
    """Reading a live process's memory failed."""

    help = "the address is not mapped in that process, or ptrace access to it is denied"


class ProcessReusedError(ProcessGoneError):
    """The pid names a different process than expected (its start time changed)."""


# ---- plain data ------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class ProcessKey:
    """A process that cannot be confused with a later one that gets the same pid."""

    pid: int
    start_time: int  # clock ticks after boot, field 22 of /proc/PID/stat


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat that node-agent uses (times in clock ticks)."""

    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    utime: int
    stime: int
    num_threads: int
    start_time: int

    @property
    def kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def dead(self) -> bool:
        """Zombie or dead: nothing left to read, the process is gone for us."""
        return self.state in {"Z", "X", "x"}


@dataclass(frozen=True)
class Status:
    """The fields of /proc/PID/status that node-agent uses."""

    name: str
    tgid: int
    threads: int
    cpus_allowed: frozenset[int]


@dataclass(frozen=True)
class GoEnv:
    """The only two environment variables node-agent keeps (None: not set)."""

    gomaxprocs: str | None = None
    godebug: str | None = None


@dataclass(frozen=True, slots=True)
class MappedRegion:
    """One line of /proc/PID/maps. ``path`` has any " (deleted)" suffix removed."""

    start: int
    end: int
    perms: str
    offset: int
    dev_major: int
    dev_minor: int
    inode: int
    path: str
    deleted: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[:1] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1:2] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2:3] == "x"

    @property
    def device(self) -> int:
        """The device as ``st_dev`` encodes it, to compare with ``os.stat``."""
        return os.makedev(self.dev_major, self.dev_minor)

    @property
    def is_file(self) -> bool:
        return self.inode != 0

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end


@dataclass(frozen=True)
class Executable:
    """Identity of a process's executable; open ``open_path`` to read its bytes.

    ``dev``/``inode`` come from ``stat`` through the /proc/PID/exe magic link,
    so they name the file inside the process's own mount namespace (its
    container image), as does ``open_path``. ``path`` is only for people and
    for matching maps lines: it is relative to the process's root.
    """

    path: str
    deleted: bool
    dev: int
    inode: int
    size: int
    mtime_ns: int
    open_path: Path

    @property
    def file_key(self) -> tuple[int, int, int, int]:
        """(dev, inode, mtime_ns, size): the key ``BinaryCache`` uses for one file."""
        return (self.dev, self.inode, self.mtime_ns, self.size)


@dataclass(frozen=True)
class ProcessInfo:
    """One process at one moment. Optional fields are None when access was denied
    (the reason is in ``errors``)."""

    key: ProcessKey
    comm: str
    name: str
    state: str
    ppid: int
    threads: int
    cpu_seconds: float  # utime + stime of all threads
    cpus_allowed: frozenset[int]
    exe: Executable | None
    mappings: tuple[MappedRegion, ...] | None = field(repr=False)
    go_env: GoEnv | None
    cgroup: str | None = field(repr=False)
    errors: tuple[str, ...] = ()

    @property
    def pid(self) -> int:
        return self.key.pid

    @property
    def start_time(self) -> int:
        return self.key.start_time

    @property
    def affinity_cpus(self) -> int:
        return len(self.cpus_allowed)

    @property
    def gomaxprocs_env(self) -> str | None:
        return self.go_env.gomaxprocs if self.go_env else None

    @property
    def godebug_env(self) -> str | None:
        return self.go_env.godebug if self.go_env else None

    def exe_mappings(self, *, executable_only: bool = True) -> list[MappedRegion]:
        if self.exe is None or self.mappings is None:
            return []
        return exe_mappings(self.mappings, self.exe, executable_only=executable_only)


# ---- pure parsers ----------------------------------------------------------------------------


def parse_stat(text: str) -> Stat:
    """/proc/PID/stat. comm may hold spaces and parentheses: it ends at the LAST ')'."""
    open_ = text.find("(")
    close = text.rfind(")")
    if open_ < 0 or close < open_:
        raise ProcfsError("stat: no '(comm)' field")
    try:
        pid = int(text[:open_])
        rest = text[close + 1 :].split()  # rest[0] is field 3 (state)
        return Stat(
            pid=pid,
            comm=text[open_ + 1 : close],
            state=rest[0],
            ppid=int(rest[1]),
            flags=int(rest[6]),
            utime=int(rest[11]),
            stime=int(rest[12]),
            num_threads=int(rest[17]),
            start_time=int(rest[19]),
        )
    except (ValueError, IndexError):
        raise ProcfsError("stat: malformed fields after '(comm)'") from None


def _cpus_allowed(text: str) -> frozenset[int]:
    try:
        return cpulist.parse_cpu_list(text)
    except ValueError as exc:
        raise ProcfsError(f"status: Cpus_allowed_list: {exc}") from None


def parse_status(text: str) -> Status:
    """/proc/PID/status: Name, Tgid, Threads and Cpus_allowed_list."""
    fields: dict[str, str] = {}
    for line in text.split("\n"):
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    try:
        return Status(
            name=fields["Name"],
            tgid=int(fields["Tgid"]),
            threads=int(fields["Threads"]),
            cpus_allowed=_cpus_allowed(fields["Cpus_allowed_list"]),
        )
    except KeyError as exc:
        raise ProcfsError(f"status: no {exc.args[0]} line") from None
    except ValueError:
        raise ProcfsError("status: malformed Tgid or Threads") from None


def parse_go_env(data: bytes) -> GoEnv:
    """GOMAXPROCS and GODEBUG from NUL-separated /proc/PID/environ bytes; nothing else
    is decoded or kept. The first occurrence wins, as in Go's runtime.gogetenv."""
    found: dict[str, str] = {}
    prefixes = [(key, key.encode() + b"=") for key in GO_ENV_KEYS]
    for entry in data.split(b"\0"):
        for key, prefix in prefixes:
            if key not in found and entry.startswith(prefix):
                found[key] = entry[len(prefix) :].decode("utf-8", "replace")
    return GoEnv(gomaxprocs=found.get("GOMAXPROCS"), godebug=found.get("GODEBUG"))


_MAPS_LINE = re.compile(
    r"([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) ([0-9]+)(?: +(.*))?",
)


def split_deleted(path: str) -> tuple[str, bool]:
    """Remove the kernel's " (deleted)" marker of an unlinked file: -> (path, deleted)."""
    if path.endswith(DELETED_SUFFIX):
        return path[: -len(DELETED_SUFFIX)], True
    return path, False


def parse_maps(text: str) -> list[MappedRegion]:
    """/proc/PID/maps -> mappings sorted by start. Paths may contain spaces (the
    kernel escapes only newlines), so the path is everything after the inode."""
    out: list[MappedRegion] = []
    for line in text.split("\n"):  # not splitlines(): a path may hold \r or \x1c
        if not line:
            continue
        m = _MAPS_LINE.fullmatch(line)
        if m is None:
            raise ProcfsError(f"maps: malformed line {line[:80]!r}")
        path, deleted = split_deleted(m.group(8) or "")
        out.append(
            MappedRegion(
                start=int(m.group(1), 16),
                end=int(m.group(2), 16),
                perms=m.group(3),
                offset=int(m.group(4), 16),
                dev_major=int(m.group(5), 16),
                dev_minor=int(m.group(6), 16),
                inode=int(m.group(7)),
                path=path,
                deleted=deleted,
            )
        )
    out.sort(key=lambda mp: mp.start)
    return out


def file_offset(mapping: MappedRegion, addr: int) -> int:
    """Offset in the mapped file of runtime address ``addr``. The symbolizer turns
    it into a link-time address with the ELF program headers (PIE or not)."""
    if not mapping.contains(addr):
        raise ValueError(f"{addr:#x} is outside mapping {mapping.start:#x}-{mapping.end:#x}")
    return addr - mapping.start + mapping.offset


def exe_mappings(
    mappings: Iterable[MappedRegion], exe: Executable, *, executable_only: bool = True
) -> list[MappedRegion]:
    """The mappings of the main executable (by default only the executable ones).

    Matched by (device, inode) first. Some filesystems (overlayfs on some
    kernels, btrfs subvolumes) report a different device or inode in maps than
    ``stat`` does, so a match on the path is the fallback.
    """
    files = [m for m in mappings if m.is_file and (m.executable or not executable_only)]
    exact = [m for m in files if m.inode == exe.inode and m.device == exe.dev]
    if exact:
        return exact
    return [m for m in files if m.path == exe.path]


# ---- I/O -------------------------------------------------------------------------------------


def _translate(exc: OSError, pid: int, what: str) -> NodeAgentError:
    if exc.errno in {errno.ENOENT, errno.ESRCH}:
        return ProcessGoneError(f"pid {pid}: exited while reading {what}")
    if exc.errno in {errno.EACCES, errno.EPERM}:
        return ProcessAccessError(f"pid {pid}: permission denied reading {what}")
    return ProcfsError(f"pid {pid}: cannot read {what}: {exc.strerror or exc}")


def _parsed(pid: int, parse: Callable[[str], _T], text: str) -> _T:
    try:
        return parse(text)
    except ProcfsError as exc:
        raise ProcfsError(f"pid {pid}: {exc}") from None


class _PidDir:
    """An open /proc/PID directory; files are opened relative to it (see module doc)."""

    def __init__(self, root: Path, pid: int) -> None:
        self.pid = pid
        self.path = root / str(pid)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _translate(exc, pid, str(self.path)) from None

    def __enter__(self) -> _PidDir:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        os.close(self.fd)

    def read_bytes(self, name: str) -> bytes:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                chunks: list[bytes] = []
                while chunk := os.read(fd, 1 << 16):
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _translate(exc, self.pid, name) from None

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8", "surrogateescape")

    def stat(self) -> Stat:
        return _parsed(self.pid, parse_stat, self.read_text("stat"))

    def executable(self) -> Executable:
        try:
            link = os.readlink("exe", dir_fd=self.fd)
            st = os.stat("exe", dir_fd=self.fd)  # follows the magic link into the process's mount ns
        except OSError as exc:
            raise _translate(exc, self.pid, "exe") from None
        path, deleted = split_deleted(link)
        return Executable(
            path=path,
            deleted=deleted,
            dev=st.st_dev,
            inode=st.st_ino,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            open_path=self.path / "exe",
        )


def _optional(errors: list[str], read: Callable[[], _T]) -> _T | None:
    try:
        return read()
    except ProcessAccessError as exc:
        errors.append(str(exc))
        return None


class ProcFS:
    """Reads processes under ``proc_root`` (``/proc``, or ``<host-root>/proc`` in a container)."""

    def __init__(self, proc_root: Path | str = Path("/proc"), *, clock_ticks: int | None = None) -> None:
        self.root = Path(proc_root)
        self.clock_ticks = clock_ticks or os.sysconf("SC_CLK_TCK")

    def pid_path(self, pid: int) -> Path:
        return self.root / str(pid)

    def list_pids(self) -> list[int]:
        """Process ids (thread-group leaders) present now, ascending."""
        try:
            with os.scandir(self.root) as it:
                return sorted(int(e.name) for e in it if e.name.isdigit())
        except OSError as exc:
            raise ProcfsError(
                f"cannot list {self.root}: {exc.strerror or exc}",
                help="mount the host's /proc and pass its parent with --host-root",
            ) from None

    # -- one file at a time (each may raise ProcessGoneError / ProcessAccessError) --

    def read_stat(self, pid: int) -> Stat:
        with _PidDir(self.root, pid) as d:
            return d.stat()

    def read_cgroup(self, pid: int) -> str:
        """/proc/PID/cgroup as text; agent.host.cgroupfs parses it."""
        with _PidDir(self.root, pid) as d:
            return d.read_text("cgroup")

    def read_memory(self, pid: int, addr: int, size: int, *, start_time: int | None = None) -> bytes:
        """``size`` bytes at ``addr`` of a live process (/proc/PID/mem, needs ptrace access)."""
        if not 0 < size <= MAX_MEMORY_READ or addr < 0:
            raise MemoryReadError(f"pid {pid}: refusing to read {size} bytes at {addr:#x}")
        path = self.pid_path(pid) / "mem"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            err = _translate(exc, pid, "mem")
            if isinstance(err, ProcessAccessError):
                raise MemoryReadError(f"pid {pid}: permission denied opening {path}") from None
            raise err from None
        try:
            # The open fd pins that process's memory; a matching start time now
            # proves it was the expected process when opened.
            self._verify(pid, start_time)
            try:
                data = os.pread(fd, size, addr)
            except (OSError, OverflowError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                raise MemoryReadError(f"pid {pid}: cannot read {size} bytes at {addr:#x}: {reason}") from None
        finally:
            os.close(fd)
        if len(data) != size:
            raise MemoryReadError(f"pid {pid}: short read at {addr:#x}: {len(data)} of {size} bytes")
        return data

    def memory_reader(self, key: ProcessKey) -> Callable[[int, int], bytes]:
        """``read(addr, size)`` bound to one process, as agent.analysis.gomaxprocs.read_live wants."""

        def read(addr: int, size: int) -> bytes:
            return self.read_memory(key.pid, addr, size, start_time=key.start_time)

        return read

    def _verify(self, pid: int, start_time: int | None) -> None:
        if start_time is None:
            return
        now = self.read_stat(pid).start_time
        if now != start_time:
            raise ProcessReusedError(f"pid {pid}: reused (start time {start_time} -> {now})")

    # -- one process, consistently --

    def snapshot(self, pid: int) -> ProcessInfo | None:
        """Everything about one process, or None for a kernel thread.

        Raises ProcessGoneError (exited, zombie, or pid reused during the read),
        ProcessAccessError if stat/status are unreadable, ProcfsError on bad
        content. A denied exe/maps/environ/cgroup leaves that field None and
        a line in ``errors``.
        """
        with _PidDir(self.root, pid) as d:
            first = d.stat()
            if first.kernel_thread:
                return None
            if first.dead:
                raise ProcessGoneError(f"pid {pid}: exited (state {first.state})")
            status = _parsed(pid, parse_status, d.read_text("status"))
            if status.tgid != pid:
                raise ProcfsError(f"pid {pid} is a thread of process {status.tgid}, not a process")
            errors: list[str] = []
            exe = _optional(errors, d.executable)
            maps = _optional(errors, lambda: tuple(_parsed(pid, parse_maps, d.read_text("maps"))))
            go_env = _optional(errors, lambda: parse_go_env(d.read_bytes("environ")))
            cgroup = _optional(errors, lambda: d.read_text("cgroup"))
            last = d.stat()
        if last.start_time != first.start_time:
            raise ProcessReusedError(
                f"pid {pid}: reused during the read (start time {first.start_time} -> {last.start_time})"
            )
        if last.dead:
            raise ProcessGoneError(f"pid {pid}: exited during the read (state {last.state})")
        return ProcessInfo(
            key=ProcessKey(pid, first.start_time),
            comm=first.comm,
            name=status.name,
            state=last.state,
            ppid=first.ppid,
            threads=status.threads,
            cpu_seconds=(last.utime + last.stime) / self.clock_ticks,
            cpus_allowed=status.cpus_allowed,
            exe=exe,
            mappings=maps,
            go_env=go_env,
            cgroup=cgroup,
            errors=tuple(errors),
        )
