"""The BPF CPU sampler: load bpf/profile.bpf.c through bcc, attach it, drain it.

The program runs on every online CPU from the software ``cpu-clock`` event
(an hrtimer: works in VMs without a PMU). It counts every sample EXACTLY under
(tgid, runtime category, cgroup id), deciding the category in the kernel from
the PC ranges the agent registered for that process (:meth:`Sampler.register`),
and, best effort for profiles, under (tgid, tid, cgroup id, user stack). A
drain flips the program to the other of two map sets, waits for programs still
writing the old set, then reads and empties it: the cost is one pass over the
distinct keys and stacks of the interval, and samples taken during the drain
land in the other set.

bcc is imported lazily so that the rest of the agent (and `diagnose`) works
where it is missing. Everything bcc-specific stays in this module; callers get
plain dataclasses.
"""

from __future__ import annotations

import array
import atexit
import ctypes as ct
import errno
import importlib
import logging
import math
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from agent.errors import BPFUnavailableError, NodeAgentError
from agent.host import cpulist
from agent.sampling import confinement
from agent.sampling.kheaders import HELP_NO_HEADERS, HeaderSearch, KernelHeaders, decide

log = logging.getLogger(__name__)

# Same order as `enum lost_reason` in bpf/profile.bpf.c. Only categories_full costs
# category counts; the others cost a sample's stack (profile detail) or say why a
# sample's category is `unknown`.
LOST_REASONS: tuple[str, ...] = (
    "user_stack_efault",
    "user_stack_empty",
    "stacks_full",
    "user_stack_other",
    "counts_full",
    "counts_other",
    "categories_full",
)
# Same order as `enum category` in bpf/profile.bpf.c.
KERNEL_CATEGORIES: tuple[str, ...] = ("scheduler", "gc", "runtime_other", "user", "unknown", "unregistered")
CAT_SCHEDULER, CAT_GC = 0, 1
# The map keys of bpf/profile.bpf.c (struct cat_key, struct sample_key), native order, no padding.
_CAT_KEY = struct.Struct("=IIQ")
_SAMPLE_KEY = struct.Struct("=IIQQiI")
RANGE_PAD = 1 << 62  # fills unused range slots; above every user address (bpf/profile.bpf.c)
PROGRAM = "on_cpu_sample"
Stack = tuple[int, ...]
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
MAX_STACK_DEPTH = 127  # kernel.perf_event_max_stack default; the kernel refuses deeper stack maps
ENOTSUPP = 524  # kernel-internal "operation not supported" some map ops return
HELP_BCC = "install bcc's Python bindings (Debian/Ubuntu: apt-get install python3-bpfcc) where the agent runs"
HELP_PRIVILEGES = "run the agent as root, or grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on kernels before 5.8)"


def default_source() -> Path:
    """bpf/profile.bpf.c in a checkout, else the copy packaged under agent/sampling/bpf/."""
    here = Path(__file__).resolve().parent
    checkout = here.parent.parent / "bpf" / "profile.bpf.c"
    for candidate in (checkout, here / "bpf" / "profile.bpf.c"):
        if candidate.is_file():
            return candidate
    return checkout


STACK_CHUNK = 2048  # stacks read per batch syscall: ~2 MiB of buffer at full depth
MAX_HOT = 8  # scheduler + GC function ranges per process (the rules name 7 functions)
MAX_RT = 64  # runtime-package ranges per process (a power of two: the BPF binary search needs it)
STACK_ENTRIES_CAP = 65536  # ~70 MiB of kernel memory per set at full depth, allocated only as used
COUNT_ENTRIES_CAP = 131072


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def map_sizes(cpus: int, sample_freq: int, interval_s: float) -> tuple[int, int]:
    """(count_entries, stack_entries) for one set holding one interval's samples.

    One interval produces cpus x freq x interval samples; there can be no more
    distinct stacks than that. Both maps get the next power of two above it
    (with 25% headroom, at least 4096), capped: the caps bound kernel memory on
    a big node, and past them a sample costs its profile stack, never its
    category count. The stack and count maps are not preallocated.
    """
    samples = cpus * sample_freq * max(interval_s, 1.0) * 1.25
    count = min(COUNT_ENTRIES_CAP, max(4096, _pow2_at_least(round(samples))))
    stack = min(STACK_ENTRIES_CAP, count)
    return count, stack


@dataclass(frozen=True)
class SamplerConfig:
    sample_freq: int = 97  # Hz per CPU; prime, so it does not beat with periodic work
    count_entries: int = 32768  # distinct (tgid, tid, cgroup, stack) profile keys per interval
    stack_entries: int = 16384  # distinct stacks per interval (each 8 x stack_depth bytes, allocated as seen)
    category_entries: int = 16384  # (tgid, cgroup, category) triples per interval: a few per process
    proc_entries: int = 8192  # registered Go processes
    stack_depth: int = MAX_STACK_DEPTH
    per_thread: bool = False
    settle_seconds: float = 0.005  # wait after a flip only if the synchronize_rcu barrier fails
    source: Path = field(default_factory=default_source)
    headers: HeaderSearch = field(default_factory=HeaderSearch)
    proc: Path = Path("/proc")
    sysfs: Path = Path("/sys")

    def __post_init__(self) -> None:
        problems = []
        if self.sample_freq < 1:
            problems.append(f"sample_freq must be >= 1 Hz (got {self.sample_freq})")
        if min(self.count_entries, self.stack_entries, self.category_entries, self.proc_entries) < 1:
            problems.append("count_entries, stack_entries, category_entries and proc_entries must be >= 1")
        if not 1 <= self.stack_depth <= MAX_STACK_DEPTH:
            problems.append(f"stack_depth must be 1..{MAX_STACK_DEPTH} (got {self.stack_depth})")
        if problems:
            raise NodeAgentError("invalid sampler settings: " + "; ".join(problems))

    @classmethod
    def for_host(
        cls,
        frequency_hz: int,
        host_root: Path = Path("/"),
        kernel_headers: Path | None = None,
        cache_dir: Path | None = None,
        interval_s: float = 1.0,
    ) -> SamplerConfig:
        """The settings every command uses: /proc, /sys and the kernel headers under ``host_root``
        (the node's root filesystem when the agent runs in a container), maps sized by
        :func:`map_sizes` for the CPUs, the rate and the time between drains."""
        count_entries, stack_entries = map_sizes(os.cpu_count() or 1, frequency_hz, interval_s)
        return cls(
            sample_freq=frequency_hz,
            count_entries=count_entries,
            stack_entries=stack_entries,
            headers=HeaderSearch(
                host_root=host_root, explicit=kernel_headers, sysfs=host_root / "sys", cache_dir=cache_dir
            ),
            proc=host_root / "proc",
            sysfs=host_root / "sys",
        )

    def cflags(self) -> list[str]:
        """The -D defines that size the maps in bpf/profile.bpf.c."""
        return [
            f"-DCOUNT_ENTRIES={self.count_entries}",
            f"-DSTACK_ENTRIES={self.stack_entries}",
            f"-DSTACK_DEPTH={self.stack_depth}",
            f"-DPER_THREAD={int(self.per_thread)}",
            f"-DCAT_ENTRIES={self.category_entries}",
            f"-DPROC_ENTRIES={self.proc_entries}",
            f"-DMAX_HOT={MAX_HOT}",
            f"-DMAX_RT={MAX_RT}",
        ]


@dataclass(slots=True)
class Sample:
    """``count`` samples of one registered thread group (or thread) on one user stack: profile data.

    Slotted, not frozen: a drain makes one per distinct stack, tens of thousands a cycle on a big
    node, and a frozen dataclass's __init__ costs several times more.
    """

    tgid: int
    tid: int  # 0 unless SamplerConfig.per_thread
    cgroup_id: int  # cgroup v2 id (inode number of the cgroup directory in the unified hierarchy)
    user_stack: tuple[int, ...]  # PCs, innermost first; () when missing
    count: int
    user_stack_error: int = 0  # errno when user_stack is (): EFAULT (unreadable), ENOMEM (stacks map full)


@dataclass(frozen=True, slots=True)
class CategoryCount:
    """Exact: ``count`` samples of ``tgid`` in ``cgroup_id`` fell in ``category`` (a KERNEL_CATEGORIES name)."""

    tgid: int
    cgroup_id: int
    category: str
    count: int


@dataclass
class DrainResult:
    samples: list[Sample]  # best effort (registered processes only): profiles
    lost: dict[str, int]  # every LOST_REASONS name, counted since the previous drain
    idle_samples: int  # samples of the idle task since the previous drain
    interval_seconds: float  # time the drained set was being written
    drain_seconds: float = 0.0  # what this drain cost
    distinct_stacks: int = 0
    categories: list[CategoryCount] = field(default_factory=list)  # exact: every busy sample once

    @property
    def busy_samples(self) -> int:
        return sum(c.count for c in self.categories)

    @property
    def total_samples(self) -> int:
        """Every sample the timers took, including idle ones and those lost to a full categories map."""
        return self.busy_samples + self.idle_samples + self.lost.get("categories_full", 0)


# --------------------------------------------------------------------------- pure helpers


def parse_cap_eff(status: str) -> int:
    """The effective capability mask from /proc/<pid>/status text (0 if absent)."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def can_bpf_and_perf(cap_eff: int) -> bool:
    def has(cap: int) -> bool:
        return bool(cap_eff & (1 << cap))

    return has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))


def parse_lockdown(text: str) -> str | None:
    """``none integrity [confidentiality]`` -> ``confidentiality``."""
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def stack_from_ips(ips: list[int]) -> Stack:
    """A stack-map value is 0-terminated when shorter than the depth."""
    try:
        return tuple(ips[: ips.index(0)])
    except ValueError:
        return tuple(ips)


# --------------------------------------------------------------------------- diagnosis


@dataclass(frozen=True)
class Finding:
    """One check of what the sampler needs; `fatal` ones stop it from running."""

    check: str
    ok: bool
    message: str
    help: str = ""
    fatal: bool = True

    @property
    def severity(self) -> str:
        return "ok" if self.ok else ("error" if self.fatal else "warning")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _check_bcc() -> Finding:
    try:
        _import_bcc()
    except BPFUnavailableError as e:
        return Finding("bcc", False, str(e), e.help)
    return Finding("bcc", True, "bcc Python bindings importable")


def _check_privileges(proc: Path) -> Finding:
    status = _read(proc / "self" / "status")
    if status is None:
        return Finding("privileges", False, f"cannot read {proc}/self/status", HELP_PRIVILEGES)
    cap_eff = parse_cap_eff(status)
    if can_bpf_and_perf(cap_eff):
        return Finding("privileges", True, f"capabilities allow BPF and perf events (CapEff {cap_eff:#x})")
    return Finding(
        "privileges",
        False,
        f"missing CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): effective capabilities are {cap_eff:#x}",
        HELP_PRIVILEGES,
    )


def _check_bpf_syscall(privileged: bool) -> Finding:
    """With the capabilities in place, bpf() itself must work: else seccomp or an LSM is in the way."""
    if not privileged:
        return Finding("bpf_syscall", True, "bpf() not probed (capabilities missing)", fatal=False)
    err = confinement.probe_bpf()
    if err is None:
        return Finding("bpf_syscall", True, "bpf() not probed on this architecture", fatal=False)
    if err == 0:
        return Finding("bpf_syscall", True, "bpf() allowed (created and closed a one-entry map)")
    described = confinement.describe_confinement(err, confinement.confinement())  # our own /proc, not the host's
    if described is None:
        return Finding("bpf_syscall", False, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}", "see dmesg")
    return Finding("bpf_syscall", False, *described)


def _check_perf_paranoid(proc: Path, privileged: bool) -> Finding:
    text = _read(proc / "sys" / "kernel" / "perf_event_paranoid")
    if text is None:
        return Finding("perf_event_paranoid", True, "perf_event_paranoid not readable; assuming default", fatal=False)
    level = int(text.strip() or 2)
    if privileged or level <= 0:
        return Finding("perf_event_paranoid", True, f"perf_event_paranoid={level} (no effect with CAP_PERFMON)")
    return Finding(
        "perf_event_paranoid",
        False,
        f"perf_event_paranoid={level} forbids CPU-wide perf events without CAP_PERFMON",
        "grant CAP_PERFMON, or (less safe) sysctl kernel.perf_event_paranoid=0",
    )


def _check_lockdown(sysfs: Path) -> Finding:
    text = _read(sysfs / "kernel" / "security" / "lockdown")
    mode = parse_lockdown(text) if text else None
    if mode in {None, "none"}:
        return Finding("lockdown", True, f"kernel lockdown: {mode or 'not enabled'}", fatal=False)
    if mode == "integrity":
        return Finding("lockdown", True, "kernel lockdown: integrity (does not restrict this sampler)", fatal=False)
    return Finding(
        "lockdown",
        False,
        f"kernel lockdown: {mode}; BPF reads of kernel memory are refused, "
        "the sampler may fail to load on kernels that also restrict stack walks",
        "boot with lockdown=integrity (or none) if loading fails",
        fatal=False,
    )


def _check_headers(search: HeaderSearch) -> Finding:
    try:
        plan = decide(search.listing())
    except BPFUnavailableError as e:
        return Finding("kernel_headers", False, str(e), e.help)
    where = plan.build if plan.source is None else f"{plan.build} + {plan.source}"
    text = f"kernel headers from {plan.origin}: {where or 'bcc extracts the kheaders tarball'}"
    if plan.notes:
        text += " (" + "; ".join(plan.notes) + ")"
    return Finding("kernel_headers", True, text)


def _check_cpus(sysfs: Path) -> Finding:
    text = _read(sysfs / "devices" / "system" / "cpu" / "online")
    cpus = cpulist.parse_cpu_list(text) if text else frozenset()
    if not cpus:
        return Finding("cpus", False, f"no online CPUs listed in {sysfs}/devices/system/cpu/online", "mount sysfs")
    return Finding("cpus", True, f"{len(cpus)} online CPUs")


def diagnose(config: SamplerConfig | None = None) -> list[Finding]:
    """Everything the sampler needs, checked without loading anything (for /readyz and a metric)."""
    config = config or SamplerConfig()
    privileges = _check_privileges(config.proc)
    return [
        _check_bcc(),
        privileges,
        _check_bpf_syscall(privileges.ok),
        _check_perf_paranoid(config.proc, privileges.ok),
        _check_lockdown(config.sysfs),
        _check_headers(config.headers),
        _check_cpus(config.sysfs),
        Finding(
            "bpf_source",
            config.source.is_file(),
            f"BPF program {config.source}" + ("" if config.source.is_file() else " is missing"),
            "reinstall node-agent (bpf/profile.bpf.c is part of it)",
        ),
    ]


def raise_for(findings: list[Finding]) -> None:
    """Raise BPFUnavailableError naming every fatal problem, if any."""
    bad = [f for f in findings if f.fatal and not f.ok]
    if bad:
        raise BPFUnavailableError(
            "BPF sampler unavailable: " + "; ".join(f.message for f in bad),
            help="; ".join(dict.fromkeys(f.help for f in bad if f.help)),
        )


# --------------------------------------------------------------------------- bcc plumbing


def _import_bcc() -> ModuleType:
    try:
        return importlib.import_module("bcc")
    except Exception as e:  # a broken install raises more than ImportError (OSError for libbcc.so)
        raise BPFUnavailableError(f"bcc is not importable: {e}", help=HELP_BCC) from e


@contextmanager
def _environ(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Set/unset variables for native code that calls getenv(), then restore them."""
    saved = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what native code (clang diagnostics, libbpf) writes to fd 2.

    The list is filled on exit. Other threads' stderr is captured too for that
    moment; compiling happens once, at start-up.
    """
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def _tail(text: str, lines: int = 12) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _attach_error(err: int, cpu: int, freq: int, proc: Path) -> BPFUnavailableError:
    what = f"perf_event_open(cpu-clock, cpu {cpu}, {freq} Hz) failed: {os.strerror(err)}"
    if err in {errno.EACCES, errno.EPERM}:
        paranoid = (_read(proc / "sys" / "kernel" / "perf_event_paranoid") or "?").strip()
        return BPFUnavailableError(f"{what} (perf_event_paranoid={paranoid})", help=HELP_PRIVILEGES)
    if err == errno.EINVAL:
        limit = (_read(proc / "sys" / "kernel" / "perf_event_max_sample_rate") or "?").strip()
        return BPFUnavailableError(
            f"{what}; kernel.perf_event_max_sample_rate is {limit}",
            help="lower --sample-freq below kernel.perf_event_max_sample_rate",
        )
    if err in {errno.ENOENT, errno.ENODEV, errno.EOPNOTSUPP}:
        return BPFUnavailableError(what, help="this kernel lacks software perf events (CONFIG_PERF_EVENTS)")
    if err in {errno.EMFILE, errno.ENFILE}:
        return BPFUnavailableError(what, help="raise the open-file limit (ulimit -n): one perf event per CPU")
    return BPFUnavailableError(what, help="see dmesg; " + HELP_PRIVILEGES)


COMPILER_LIBRARIES = ("libLLVM", "libclang", "libbcc")
MADV_DONTNEED = 4


def compiler_text_ranges(maps_text: str) -> list[tuple[int, int]]:
    """Address ranges of the compiler libraries' code (r-xp mappings) in /proc/self/maps text.

    Only code: it is never written, so dropping its pages loses nothing (they
    are read back from the page cache if a recompile runs it again). Read-only
    data mappings are left alone: after relocation they may be private copies.
    """
    out = []
    for line in maps_text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "r-xp" and Path(parts[5]).name.startswith(COMPILER_LIBRARIES):
            lo, _, hi = parts[0].partition("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def _return_freed_memory(proc: Path = Path("/proc")) -> None:
    """After compiling: give back clang/LLVM's heap (malloc_trim) and their code's resident pages.

    bcc links clang and LLVM into the process: compiling the program leaves ~50 MiB of freed heap
    and ~75 MiB of their code resident, needed only for a compile. Without this they are two thirds
    of the agent's RSS. Best effort: a no-op where glibc or /proc is missing.
    """
    try:
        libc = ct.CDLL("libc.so.6", use_errno=True)
        libc.malloc_trim(0)
        libc.madvise.argtypes = [ct.c_void_p, ct.c_size_t, ct.c_int]
        for lo, hi in compiler_text_ranges((proc / "self" / "maps").read_text()):
            libc.madvise(lo, hi - lo, MADV_DONTNEED)
    except (OSError, AttributeError):
        pass


class _BatchUnsupported(Exception):
    """BPF_MAP_LOOKUP_AND_DELETE_BATCH is missing (kernels before 5.6)."""


class Sampler:
    """A loaded, attached sampler. Use as a context manager, or call close().

    Not thread-safe: one owner drains it.
    """

    def __init__(self, config: SamplerConfig | None = None, headers: KernelHeaders | None = None) -> None:
        self.config = config = config or SamplerConfig()
        self._bpf: Any = None
        self._perf_fds: list[int] = []
        self.cpus: list[int] = []

        privileges = _check_privileges(config.proc)
        preflight = [_check_bcc(), privileges, _check_cpus(config.sysfs)]
        raise_for(preflight)
        raise_for([_check_bpf_syscall(privileges.ok)])  # before bcc blames the headers
        if not config.source.is_file():
            raise BPFUnavailableError(f"BPF program {config.source} is missing", help="reinstall node-agent")
        self.headers = headers or config.headers.find()
        bcc = _import_bcc()
        self._lib = importlib.import_module("bcc.libbcc").lib
        self._bpf = self._compile(bcc)
        try:
            prog_fd = self._load(bcc)
            self._bind_maps()
            self._attach(prog_fd)
        except BaseException:
            self.close()
            raise
        _return_freed_memory()
        self._last_flip = time.monotonic()
        self._lost_seen = [0] * (2 * len(LOST_REASONS))  # per set, as the program keeps them
        self._idle_seen = [0, 0]
        self.batch_supported = True  # cleared on the first drain if the kernel lacks batch ops
        self.barrier_supported = True

    # ----------------------------------------------------------------- set-up

    def _compile(self, bcc: ModuleType) -> Any:
        with _environ(self.headers.bcc_environ()), _captured_stderr() as err:
            try:
                bpf = bcc.BPF(src_file=str(self.config.source).encode(), cflags=self.config.cflags())
            except Exception as e:  # bcc raises bare Exception for every failure
                failure: Exception | None = e
            else:
                failure = None
        diagnostics = _tail(err[0] if err else "")
        if failure is not None:
            raise BPFUnavailableError(
                f"compiling {self.config.source.name} with {self.headers.describe()} failed: {failure}"
                + (f"\n{diagnostics}" if diagnostics else ""),
                help="check that the kernel headers belong to a kernel of this architecture; " + HELP_NO_HEADERS,
            ) from failure
        if diagnostics:
            log.debug("bcc compile output:\n%s", diagnostics)
        return bpf

    def _bind_maps(self) -> None:
        try:
            self._bind_maps_unchecked()
        except KeyError as e:  # bcc's way of saying "no such map"
            raise BPFUnavailableError(
                f"{self.config.source} does not define the maps the sampler drains",
                help="use the bpf/profile.bpf.c that came with this node-agent",
            ) from e

    def _bind_maps_unchecked(self) -> None:
        b = self._bpf
        self._active_set = b.get_table(b"active_set")
        self._procs = b.get_table(b"procs")
        self._cats = [b.get_table(b"cats_0"), b.get_table(b"cats_1")]
        self._counts = [b.get_table(b"counts_0"), b.get_table(b"counts_1")]
        self._stacks = [b.get_table(b"stacks_0"), b.get_table(b"stacks_1")]
        self._lost = b.get_table(b"lost")
        self._idle = b.get_table(b"idle")
        self._barrier = b.get_table(b"barrier")
        self._barrier_inner_fd = ct.c_int(b.get_table(b"barrier_inner").map_fd)
        self._active = 0
        self._write_active(0)
        # Allocated once: a drain must not allocate in proportion to the map sizes.
        # Counts and categories are small per entry (40 and 24 bytes): whole-map buffers;
        # stacks (8 x depth bytes each) are drained in chunks.
        self._buffers = {
            "cats": self._batch_buffers(self._cats[0], self._cats[0].max_entries),
            "counts": self._batch_buffers(self._counts[0], self._counts[0].max_entries),
            "stacks": self._batch_buffers(self._stacks[0], min(STACK_CHUNK, self._stacks[0].max_entries)),
        }
        self.registered: dict[int, object] = {}

    @staticmethod
    def _batch_buffers(table: Any, n: int) -> tuple[Any, Any]:
        return (table.Key * n)(), (table.Leaf * n)()

    def _load(self, bcc: ModuleType) -> int:
        """Load the program into the kernel (the verifier runs here); returns its fd."""
        with _captured_stderr() as err:
            try:
                fn = self._bpf.load_func(PROGRAM.encode(), bcc.BPF.PERF_EVENT)
            except Exception as e:  # bcc's bare Exception; the verifier log went to fd 2
                failure: Exception | None = e
            else:
                failure = None
        if failure is not None:
            log_tail = _tail(err[0] if err else "", 20)
            raise BPFUnavailableError(
                f"the kernel refused to load {PROGRAM}: {failure}" + (f"\n{log_tail}" if log_tail else ""),
                help="check kernel lockdown (/sys/kernel/security/lockdown) and dmesg; " + HELP_PRIVILEGES,
            ) from failure
        return int(fn.fd)

    def _attach(self, prog_fd: int) -> None:
        online = _read(self.config.sysfs / "devices" / "system" / "cpu" / "online") or ""
        for cpu in sorted(cpulist.parse_cpu_list(online)):
            fd = self._lib.bpf_attach_perf_event(
                ct.c_int(prog_fd),
                ct.c_uint32(PERF_TYPE_SOFTWARE),
                ct.c_uint32(PERF_COUNT_SW_CPU_CLOCK),
                ct.c_uint64(self.sample_period_ns),
                ct.c_uint64(0),  # no sample_freq: see sample_period_ns
                ct.c_int(-1),  # every process
                ct.c_int(cpu),
                ct.c_int(-1),  # no group
            )
            if fd < 0:
                raise _attach_error(ct.get_errno() or -fd, cpu, self.config.sample_freq, self.config.proc)
            self._perf_fds.append(fd)
            self.cpus.append(cpu)

    @property
    def sample_period_ns(self) -> int:
        """cpu-clock counts nanoseconds, so a fixed period is an exact frequency.

        In frequency mode the kernel re-estimates the period at each tick, and on a
        tickless idle CPU that goes wrong: measured on 6.18, -F 199 took about half
        the samples of idle CPUs (as `perf record -F` does), a fixed period all of them.
        """
        return max(10_000, round(1e9 / self.config.sample_freq))  # the kernel's floor is 10 µs

    # ----------------------------------------------------------------- life cycle

    def __enter__(self) -> Sampler:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._bpf is None

    def close(self) -> None:
        """Detach from every CPU and release the program and maps. Idempotent."""
        for fd in self._perf_fds:
            self._lib.bpf_close_perf_event_fd(ct.c_int(fd))
        self._perf_fds.clear()
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            # Table objects only borrow the module's map fds; drop them before it closes them.
            for name in ("_active_set", "_procs", "_cats", "_counts", "_stacks", "_lost", "_idle", "_barrier"):
                self.__dict__.pop(name, None)
            bpf.cleanup()
            atexit.unregister(bpf.cleanup)

    # ----------------------------------------------------------------- draining

    def _write_active(self, index: int) -> None:
        self._active_set[ct.c_int(0)] = ct.c_uint32(index)

    def _wait_for_writers(self) -> None:
        """Return once no program can still be writing the set we just switched away from.

        Updating an array-of-maps makes the kernel run synchronize_rcu() before the
        syscall returns, and perf-event BPF programs run inside RCU read-side sections.
        """
        if self.barrier_supported:
            res = self._lib.bpf_update_elem(
                self._barrier.map_fd, ct.byref(ct.c_int(0)), ct.byref(self._barrier_inner_fd), 0
            )
            if res == 0:
                return
            self.barrier_supported = False
            log.warning("map-in-map barrier failed (%s); sleeping after flips", os.strerror(ct.get_errno()))
        time.sleep(self.config.settle_seconds)

    def drain(self) -> DrainResult:
        """Everything counted since the previous drain (or since start)."""
        if self._bpf is None:
            raise BPFUnavailableError("the sampler is closed", help="create a new Sampler")
        started = time.monotonic()
        old = self._active
        self._active = 1 - old
        self._write_active(self._active)
        flipped = time.monotonic()
        self._wait_for_writers()
        interval, self._last_flip = flipped - self._last_flip, flipped

        categories = [
            CategoryCount(tgid, cgroup_id, KERNEL_CATEGORIES[cat], count)
            for (tgid, cat, cgroup_id), count in self._take(self._cats[old], "cats", _CAT_KEY)
            if cat < len(KERNEL_CATEGORIES)
        ]
        counts = self._take(self._counts[old], "counts", _SAMPLE_KEY)
        stacks = self._take_stacks(self._stacks[old])
        samples = []
        for (tgid, tid, cgroup_id, stack_hash, err, _pad), count in counts:
            frames = stacks.get(stack_hash) if stack_hash else None
            if frames is None:
                # No stack: the kernel's reason, or ENOENT when a stack the key names was not found.
                samples.append(Sample(tgid, tid, cgroup_id, (), count, -err if err else errno.ENOENT))
            else:
                samples.append(Sample(tgid, tid, cgroup_id, frames, count))
        lost, idle = self._read_counters(old)
        return DrainResult(
            samples=samples,
            lost=lost,
            idle_samples=idle,
            interval_seconds=interval,
            drain_seconds=time.monotonic() - started,
            distinct_stacks=len(stacks),
            categories=categories,
        )

    # ----------------------------------------------------------------- registration

    def register(
        self,
        tgid: int,
        *,
        text: tuple[int, int],
        hot: Sequence[tuple[int, int, bool]],
        runtime: Sequence[tuple[int, int]],
        token: object = None,
    ) -> None:
        """Let the program classify ``tgid``'s samples in the kernel from now on.

        Runtime addresses, half-open ranges: ``text`` is the Go text (a frame in it
        is a Go frame), ``hot`` the scheduler (is_gc False) and GC (is_gc True)
        functions, ``runtime`` the runtime package's code, sorted and disjoint.
        ``token`` is remembered in :attr:`registered` (e.g. the process identity).
        """
        if self._bpf is None:
            raise BPFUnavailableError("the sampler is closed", help="create a new Sampler")
        if len(hot) > MAX_HOT or len(runtime) > MAX_RT:
            raise NodeAgentError(
                f"pid {tgid}: {len(hot)} hot / {len(runtime)} runtime ranges exceed {MAX_HOT}/{MAX_RT}"
            )
        if any(hi > RANGE_PAD for _, hi in (text, *runtime, *((lo, hi) for lo, hi, _ in hot))):
            raise NodeAgentError(f"pid {tgid}: a range lies above user space")
        leaf = self._procs.Leaf()
        leaf.text_lo, leaf.text_hi = text
        for i in range(MAX_HOT):
            lo, hi, is_gc = hot[i] if i < len(hot) else (RANGE_PAD, RANGE_PAD, False)
            leaf.hot_lo[i], leaf.hot_hi[i], leaf.hot_cat[i] = lo, hi, CAT_GC if is_gc else CAT_SCHEDULER
        for i in range(MAX_RT):
            leaf.rt_lo[i], leaf.rt_hi[i] = runtime[i] if i < len(runtime) else (RANGE_PAD, RANGE_PAD)
        try:
            self._procs[self._procs.Key(tgid)] = leaf
        except Exception as exc:  # bcc raises bare Exception, e.g. when the map is full
            raise NodeAgentError(f"pid {tgid}: registering its ranges failed: {exc}") from None
        self.registered[tgid] = token

    def unregister(self, tgid: int) -> None:
        """Forget ``tgid`` (it exited, or exec'd another program). Idempotent."""
        self.registered.pop(tgid, None)
        if self._bpf is not None:
            self._lib.bpf_delete_elem(self._procs.map_fd, ct.byref(self._procs.Key(tgid)))

    # ----------------------------------------------------------------- map reading

    def _take(self, table: Any, buffers: str, key: struct.Struct) -> Iterable[tuple[tuple[int, ...], int]]:
        """Read and empty a small map: (key fields, u64 value) pairs, unpacked in C rather than per field.

        Lazily: the keys are unpacked one at a time as the caller consumes them (a list of
        100,000 unpacked keys would be tens of MiB); consume before the next drain.
        """
        keys, values = self._buffers[buffers]
        if self.batch_supported:
            try:
                n = self._take_batch(table, keys, values)
                raw_keys = memoryview(keys).cast("B")[: n * key.size]
                raw_values = memoryview(values).cast("B").cast("Q")[:n].tolist()
                return zip(key.iter_unpack(raw_keys), raw_values, strict=True)
            except _BatchUnsupported:
                self.batch_supported = False
                log.info("BPF batch map operations unsupported; draining key by key")
        return [(key.unpack(bytes(k)), int(v.value)) for k, v in self._take_iter(table)]

    def _take_batch(self, table: Any, keys: Any, values: Any, chunk: Any = None) -> int:
        """lookup_and_delete_batch until the map is empty or the buffers are full; returns entries read.

        With ``chunk`` (a callable taking the count), the buffers are handed over and
        refilled from the start each time instead, until the map is empty.
        """
        cap = len(keys)
        key_size, value_size = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
        token_in, token_out = ct.c_uint32(0), ct.c_uint32(0)
        total = 0
        first = True
        while total < cap:
            n = ct.c_uint32(cap - total)
            res = self._lib.bpf_lookup_and_delete_batch(
                table.map_fd,
                None if first else ct.byref(token_in),
                ct.byref(token_out),
                ct.byref(keys, key_size * total),
                ct.byref(values, value_size * total),
                ct.byref(n),
            )
            err = ct.get_errno()
            total += n.value
            if res != 0 and err != errno.ENOENT:
                if first and total == 0 and err in {errno.EINVAL, errno.EOPNOTSUPP, ENOTSUPP}:
                    raise _BatchUnsupported
                raise BPFUnavailableError(
                    f"draining a BPF map failed: {os.strerror(err)}",
                    help="this is a bug or a kernel limitation; please report it with the kernel version",
                )
            if chunk is not None and total:
                chunk(total)
                total = 0
            if res != 0:  # ENOENT: walked past the last bucket, done
                break
            token_in.value = token_out.value
            first = False
        return total

    def _take_iter(self, table: Any) -> list[tuple[Any, Any]]:
        """Key by key (kernels without batch operations): (key, value) ctypes objects."""
        out = []
        for k in list(table.keys()):
            value = table.Leaf()
            if self._lib.bpf_lookup_elem(table.map_fd, ct.byref(k), ct.byref(value)) == 0:
                self._lib.bpf_delete_elem(table.map_fd, ct.byref(k))
                out.append((k, value))
        return out

    def _take_stacks(self, table: Any) -> dict[int, Stack]:
        """Read and empty the stacks map: hash -> frames."""
        out: dict[int, Stack] = {}
        depth = self.config.stack_depth
        keys, values = self._buffers["stacks"]
        raw = memoryview(values).cast("B")  # every stack's frames, back to back
        row = depth * 8

        frames = array.array("Q")
        pcs: dict[int, int] = {}  # one int object per distinct PC: stacks share most of their frames
        intern = pcs.setdefault

        def chunk(n: int) -> None:
            frames.frombytes(raw[: n * row])  # one copy of the chunk; its zero-padded rows are searched in C
            ends = frames.index
            for i, h in enumerate(memoryview(keys).cast("B").cast("Q")[:n].tolist()):
                s = i * depth
                try:
                    e = ends(0, s, s + depth)
                except ValueError:
                    e = s + depth
                out[h] = tuple([intern(pc, pc) for pc in frames[s:e]])
            del frames[:]

        if self.batch_supported:
            try:
                self._take_batch(table, keys, values, chunk)
                return out
            except _BatchUnsupported:
                self.batch_supported = False
        for k, v in self._take_iter(table):
            out[int(k.value)] = stack_from_ips(list(v.ip))
        return out

    def _read_counters(self, old: int) -> tuple[dict[str, int], int]:
        """Differences of set ``old``'s cumulative per-CPU counters since that set was last drained."""
        lost: dict[str, int] = {}
        base = old * len(LOST_REASONS)
        for i, name in enumerate(LOST_REASONS):
            now = int(self._lost.sum(base + i).value)
            lost[name], self._lost_seen[base + i] = now - self._lost_seen[base + i], now
        idle_now = int(self._idle.sum(old).value)
        idle, self._idle_seen[old] = idle_now - self._idle_seen[old], idle_now
        return lost, idle
