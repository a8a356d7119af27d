"""One window of samples -> one row per Go process: the join of every stage.

This is where I/O meets computation: it asks procfs who each sampled tgid is,
opens (once per build) its binary, reads its cgroup and its live GOMAXPROCS,
then hands plain data to the pure stages (attribution, inference, verdict).
Every per-process failure is caught here, counted by kind and reported with
the row or in the result's errors: one odd process costs that process.
Binaries are parsed in a sandboxed child (agent.gobinary.sandbox), in the
daemon on a thread of their own (:class:`ParseQueue`), and a run may carry a
:class:`Deadline`: when it passes (or the daemon is stopping) the rest of the
window is skipped and counted, so no input can stall a cycle.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.analysis.attribution import PackedStacks, ProcessProfile
from agent.analysis.gomaxprocs import Facts, Gomaxprocs, GomaxprocsSource, containermaxprocs_enabled, infer, read_live
from agent.analysis.goruntime import Category, CategoryRanges, category_ranges
from agent.analysis.model import GoProcessReport, OtherSummary, ScanResult
from agent.analysis.verdict import Evidence, judge
from agent.errors import (
    BinaryError,
    BudgetExceededError,
    DeadlineExceededError,
    NodeAgentError,
    NotGoError,
    ProcessGoneError,
)
from agent.gobinary import sandbox
from agent.gobinary.symbolizer import BinaryCache, GoBinary
from agent.host.cgroupfs import CgroupFacts
from agent.host.cgroupmodel import Throttling
from agent.host.procfs import ProcessInfo, ProcFS
from agent.kube.spec import EnvSource
from agent.lru import BoundedCache
from agent.sampling.sampler import DrainResult

log = logging.getLogger(__name__)

# Kernel category name -> the category a row reports it under ("unregistered": sampled
# before the agent told the kernel this process is Go, so its category is unknown).
_KERNEL_CATEGORY = {c.value: c for c in Category} | {"unregistered": Category.UNKNOWN}


class CgroupSource(Protocol):
    def facts(self, proc_cgroup_text: str) -> CgroupFacts: ...


class WorkloadMeta(Protocol):
    """What the pod watch knows about a container (agent.kube.spec.ContainerMeta provides it)."""

    @property
    def namespace(self) -> str: ...

    @property
    def pod(self) -> str: ...

    @property
    def container(self) -> str | None: ...

    @property
    def owner(self) -> str | None: ...  # "Deployment/web"

    @property
    def spec_gomaxprocs(self) -> EnvSource | None: ...  # how the spec sets GOMAXPROCS

    @property
    def limit_cores(self) -> float | None: ...


class KubeSource(Protocol):
    def lookup(self, pod_uid: str, container_id: str | None) -> WorkloadMeta | None: ...


class Registrar(Protocol):
    """Where a Go process's category ranges go: agent.sampling.sampler.Sampler."""

    registered: dict[int, object]

    def register(
        self,
        tgid: int,
        *,
        text: tuple[int, int],
        hot: Sequence[tuple[int, int, bool]],
        runtime: Sequence[tuple[int, int]],
        token: object = None,
    ) -> None: ...

    def unregister(self, tgid: int) -> None: ...


@dataclass(frozen=True)
class Deadline:
    """When a run must end (monotonic seconds), or sooner if ``stop`` is set (SIGTERM)."""

    at: float
    stop: threading.Event | None = None

    def expired(self) -> bool:
        return time.monotonic() >= self.at or self.stopping()

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()


def _binary_error_kind(exc: BinaryError, *, symbolizing: bool = False) -> str:
    if isinstance(exc, BudgetExceededError):
        return "binary_over_budget"
    return "binary_symbols_failed" if symbolizing else "binary_unreadable"


class _Pending:
    """A process whose binary is being parsed in the background: it is judged next cycle."""


PENDING = _Pending()


class ParseQueue:
    """New binaries parsed one at a time on a thread of their own, so a cycle never waits on
    a parse (each runs to its own sandbox budget): the cycle skips those processes once and
    judges them when their binary is in the cache. Bounded: at most ``capacity`` waiting."""

    def __init__(self, binaries: BinaryCache, budget: sandbox.Budget, capacity: int = 256) -> None:
        self._binaries = binaries
        self._budget = budget
        self._queue: queue.Queue[tuple[tuple[object, ...], Path] | None] = queue.Queue(capacity)
        self._pending: set[tuple[object, ...]] = set()
        self._new_failures: set[tuple[object, ...]] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name="parse", daemon=True)
        self._thread.start()

    def submit(self, file_key: tuple[object, ...], path: Path) -> None:
        with self._lock:
            if file_key in self._pending:
                return
            self._pending.add(file_key)
        try:
            self._queue.put_nowait((file_key, path))
        except queue.Full:  # tried again when the process is sampled again
            with self._lock:
                self._pending.discard(file_key)

    def take_new_failure(self, file_key: tuple[object, ...]) -> bool:
        """True once for a file whose background parse failed (so it is reported once)."""
        with self._lock:
            if file_key in self._new_failures:
                self._new_failures.discard(file_key)
                return True
            return False

    def _work(self) -> None:
        while not self._closing.is_set():
            item = self._queue.get()
            if item is None:
                return
            file_key, path = item
            try:
                self._binaries.get(
                    file_key, functools.partial(sandbox.parse_file, path, self._budget, expired=self._closing.is_set)
                )
            except DeadlineExceededError:
                pass  # closing
            except BinaryError:
                with self._lock:
                    self._new_failures.add(file_key)
            except Exception:  # a bug must not end parsing for the node; the file is tried again
                log.exception("parsing %s failed", path)
            finally:
                with self._lock:
                    self._pending.discard(file_key)

    def close(self) -> None:
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(5)


@dataclass
class PipelineStats:
    """Per-kind counts of skipped items, for node_agent_errors_total."""

    errors: Counter[str] = field(default_factory=Counter)


class Pipeline:
    def __init__(
        self,
        procfs: ProcFS,
        cgroups: CgroupSource,
        *,
        kube: KubeSource | None = None,
        binaries: BinaryCache | None = None,
        host_cpus: int | None = None,
        parse_budget: sandbox.Budget | None = None,
        background_parses: bool = False,
    ) -> None:
        self.procfs = procfs
        self.cgroups = cgroups
        self.kube = kube
        self.binaries = binaries if binaries is not None else BinaryCache()  # an empty cache is falsy
        self.host_cpus = host_cpus or os.cpu_count() or 1
        self.stats = PipelineStats()
        self.parse_budget = parse_budget or sandbox.Budget()
        self.skipped_by_deadline = 0  # processes the last run left out
        self._skipped: set[int] = set()  # their tgids: first in line next run, so a backlog drains
        self.pending_parses = 0  # processes the last run left out because their binary was being parsed
        self._parses: ParseQueue | None = ParseQueue(self.binaries, self.parse_budget) if background_parses else None
        self._deadline: Deadline | None = None
        self._ranges: BoundedCache[str, CategoryRanges | None] = BoundedCache(256)
        self._throttle_start: dict[str, Throttling] = {}
        self._facts_memo: dict[str, CgroupFacts] = {}
        self._failures_counted: BoundedCache[str, bool] = BoundedCache(1024)  # binaries whose symbols failed

    # ---- window bookkeeping -------------------------------------------------------------------
    def begin_window(self, pids: Iterable[int] | None = None) -> None:
        """Remember every cgroup's throttling counters, to report the window's share."""
        start: dict[str, Throttling] = {}
        seen: set[str] = set()
        for pid in self.procfs.list_pids() if pids is None else pids:
            try:
                text = self.procfs.read_cgroup(pid)
                if text in seen:
                    continue  # a cgroup's facts once per window, not once per process in it
                seen.add(text)
                facts = self.cgroups.facts(text)
            except (NodeAgentError, OSError):
                continue
            if facts.throttle is not None and facts.throttle_key not in start:
                start[facts.throttle_key] = facts.throttle
        self._throttle_start = start

    def _cgroup_facts(self, text: str) -> CgroupFacts:
        """One read of a cgroup's facts per window (run() clears the memo), however many processes share it."""
        facts = self._facts_memo.get(text)
        if facts is None:
            facts = self._facts_memo[text] = self.cgroups.facts(text)
        return facts

    def _throttled_ratio(self, facts: CgroupFacts) -> float | None:
        end = facts.throttle
        if end is None:
            return None
        begin = self._throttle_start.get(facts.throttle_key, Throttling(0, 0, 0.0))
        periods = end.nr_periods - begin.nr_periods
        if periods <= 0:
            return 0.0 if facts.effective_limit is not None else None
        return max(0.0, min(1.0, (end.nr_throttled - begin.nr_throttled) / periods))

    # ---- the join -----------------------------------------------------------------------------
    def _expired(self) -> bool:
        return self._deadline is not None and self._deadline.expired()

    def _stopping(self) -> bool:
        return self._deadline is not None and self._deadline.stopping()

    def run(
        self,
        drain: DrainResult,
        *,
        frequency_hz: int,
        duration_s: float,
        registrar: Registrar | None = None,
        deadline: Deadline | None = None,
    ) -> ScanResult:
        """Rows for the window; with ``registrar``, also keep the kernel's Go process ranges current."""
        self._deadline = deadline
        self.skipped_by_deadline = 0
        self._facts_memo = {}
        self.pending_parses = 0
        try:
            return self._run(drain, frequency_hz, duration_s, registrar)
        finally:
            self._deadline = None

    def _run(self, drain: DrainResult, frequency_hz: int, duration_s: float, registrar: Registrar | None) -> ScanResult:
        counts: dict[int, Counter[Category]] = defaultdict(Counter)
        for c in drain.categories:
            counts[c.tgid][_KERNEL_CATEGORY.get(c.category, Category.UNKNOWN)] += c.count
        stacks_of: dict[int, list[tuple[tuple[int, ...], int]]] = defaultdict(list)
        for s in drain.samples:
            stacks_of[s.tgid].append((s.user_stack, s.count))
        go: list[GoProcessReport] = []
        other = OtherSummary()
        other_comms: Counter[str] = Counter()
        exited = 0
        errors: list[str] = []
        skipped_before, self._skipped = self._skipped, set()
        for tgid, cats in sorted(counts.items(), key=lambda kv: (kv[0] not in skipped_before, kv[0])):
            count = sum(cats.values())
            if self._expired():
                self.skipped_by_deadline += 1
                self._skipped.add(tgid)
                continue
            try:
                info = self.procfs.snapshot(tgid)
            except ProcessGoneError:
                exited += count
                self.stats.errors["process_gone"] += 1
                continue
            except NodeAgentError as exc:
                self.stats.errors["process_unreadable"] += 1
                errors.append(f"pid {tgid}: {exc.describe()}")
                continue
            if info is None:  # kernel thread
                other.samples += count
                other_comms[f"[{tgid}]"] += count
                continue
            try:
                binary = self._binary(info)
            except DeadlineExceededError:
                self.skipped_by_deadline += 1
                self._skipped.add(tgid)
                continue
            if isinstance(binary, _Pending):
                self.pending_parses += 1
                continue
            if binary is None:
                other.processes += 1
                other.samples += count
                other_comms[info.comm] += count
                continue
            try:
                bias = binary.load_bias((m.start, m.offset) for m in info.exe_mappings())
                if registrar is not None:
                    self._register(registrar, info, binary, bias)
                profile = ProcessProfile(samples=count, categories=cats)
                if stacks_of.get(tgid):
                    profile.pending.append((binary, bias or 0, PackedStacks(stacks_of.pop(tgid))))
                go.append(self._report(info, binary, bias, profile, frequency_hz))
            except DeadlineExceededError:
                self.skipped_by_deadline += 1
                self._skipped.add(tgid)
            except NodeAgentError as exc:
                self.stats.errors["report_failed"] += 1
                errors.append(f"pid {tgid} ({info.comm}): {exc.describe()}")
        if registrar is not None:
            self._prune(registrar, set(counts))
        other.top = other_comms.most_common(10)
        if self.skipped_by_deadline:
            self.stats.errors["cycle_deadline"] += 1
            errors.append(f"cycle deadline passed: {self.skipped_by_deadline} processes skipped")
        return ScanResult(
            duration_s=duration_s,
            frequency_hz=frequency_hz,
            busy_samples=drain.busy_samples,
            go=go,
            other=other,
            lost=dict(drain.lost),
            exited_samples=exited,
            errors=errors,
        )

    def close(self) -> None:
        """Stop background parsing (killing a parse in flight)."""
        if self._parses is not None:
            self._parses.close()

    # ---- the kernel's view of Go processes -------------------------------------------------------
    def register_all(
        self, registrar: Registrar, pids: Iterable[int] | None = None, deadline: Deadline | None = None
    ) -> int:
        """Register every Go process running now (or among ``pids``) not yet registered, until
        ``deadline``; returns how many are. Those left over count as "unregistered" until a cycle sees them."""
        self._deadline = deadline
        try:
            return self._register_all(registrar, pids)
        finally:
            self._deadline = None

    def _register_all(self, registrar: Registrar, pids: Iterable[int] | None) -> int:
        for pid in self.procfs.list_pids() if pids is None else pids:
            if self._expired():
                break
            try:
                info = self.procfs.snapshot(pid)
            except (NodeAgentError, OSError):
                continue
            if info is None or pid in registrar.registered:
                continue
            try:
                binary = self._binary(info)
            except DeadlineExceededError:
                break
            if isinstance(binary, GoBinary):  # not yet parsed (PENDING): registered by a later cycle
                bias = binary.load_bias((m.start, m.offset) for m in info.exe_mappings())
                self._register(registrar, info, binary, bias)
        return len(registrar.registered)

    def _register(self, registrar: Registrar, info: ProcessInfo, binary: GoBinary, bias: int | None) -> None:
        """Hand the kernel this process's ranges, unless it has them for this very program already."""
        token = (info.start_time, info.exe.file_key if info.exe else None, bias)
        if registrar.registered.get(info.pid) == token:
            return
        ident = binary.identity
        if ident not in self._ranges:
            try:
                self._ranges.put(ident, category_ranges(binary.table.functions()))
            except BinaryError:
                self.stats.errors["binary_unreadable"] += 1
                self._ranges.put(ident, None)
        ranges = self._ranges.get(ident)
        if ranges is None or bias is None:
            return  # its samples stay "unknown": counted, never guessed
        if ranges.bridged:
            self.stats.errors["runtime_ranges_bridged"] += 1
        r = ranges.shifted(bias)
        try:
            registrar.register(
                info.pid,
                text=r.text,
                hot=[(lo, hi, c == Category.GC) for lo, hi, c in r.hot],
                runtime=r.runtime,
                token=token,
            )
        except (NodeAgentError, OSError) as exc:
            self.stats.errors["register_failed"] += 1
            registrar.registered.pop(info.pid, None)
            log.warning("pid %d: could not register its ranges: %s", info.pid, exc)

    def _prune(self, registrar: Registrar, seen: set[int]) -> None:
        """Forget processes that exited (their pid may come back as another program)."""
        for pid, token in list(registrar.registered.items()):
            if pid in seen:
                continue  # _register just checked it
            try:
                start_time = self.procfs.read_stat(pid).start_time
            except (NodeAgentError, OSError):
                start_time = None
            if not (isinstance(token, tuple) and token and token[0] == start_time):
                registrar.unregister(pid)

    def _binary(self, info: ProcessInfo) -> GoBinary | _Pending | None:
        """The process's parsed binary (sandboxed, once per file), None, or PENDING while a
        background parse runs; DeadlineExceededError passes.

        A parse runs to its own budget (``parse_budget``), not the cycle's deadline:
        interrupted, it would start over every cycle and never finish. Only a stop
        (SIGTERM) interrupts it. In the daemon parses run on their own thread
        (``background_parses``); ``scan`` parses in line.
        """
        exe = info.exe
        if exe is None:
            return None
        path = exe.open_path
        known = self.binaries.has_failed(exe.file_key)
        if self._parses is not None:
            if not self.binaries.known(exe.file_key):
                self._parses.submit(exe.file_key, path)
                return PENDING
            known = known and not self._parses.take_new_failure(exe.file_key)
        try:
            return self.binaries.get(
                exe.file_key, lambda: sandbox.parse_file(path, self.parse_budget, expired=self._stopping)
            )
        except NotGoError:
            return None
        except BinaryError as exc:
            self.stats.errors[_binary_error_kind(exc)] += 1
            if not known:  # one line per file, not one per cycle
                log.warning("pid %d: binary skipped: %s", info.pid, exc.describe())
            return None

    def _gomaxprocs(self, info: ProcessInfo, binary: GoBinary, bias: int | None, facts: Facts) -> Gomaxprocs:
        found = binary.gomaxprocs_at  # derived in the sandbox from this very file's content
        why = "no address for runtime.gomaxprocs"
        if found is not None and bias is not None:
            try:
                value = read_live(self.procfs.memory_reader(info.key), found[0] + bias)
                return Gomaxprocs(value, GomaxprocsSource.LIVE, f"runtime.gomaxprocs via {found[1]}")
            except (NodeAgentError, OSError) as exc:
                why = f"memory unreadable: {exc}"
                self.stats.errors["gomaxprocs_unreadable"] += 1
        guess = infer(facts)
        return Gomaxprocs(guess.value, guess.source, f"{guess.detail} ({why})")

    def _report(
        self,
        info: ProcessInfo,
        binary: GoBinary,
        bias: int | None,
        profile: ProcessProfile,
        frequency_hz: int,
    ) -> GoProcessReport:
        problems = list(info.errors)
        if binary.failed is not None:
            # Symbols are read when a profile is asked for (another thread, between cycles): the
            # failure is counted here, once per binary however many processes run it.
            if binary.identity not in self._failures_counted:
                self._failures_counted.put(binary.identity, True)
                self.stats.errors[_binary_error_kind(binary.failed, symbolizing=True)] += 1
                log.warning("pid %d: symbols no longer read: %s", info.pid, binary.failed.describe())
            problems.append(f"symbols: {binary.failed.describe()}")
        cg: CgroupFacts
        try:
            cg = self._cgroup_facts(info.cgroup or "")
        except NodeAgentError as exc:
            self.stats.errors["cgroup_unreadable"] += 1
            problems.append(f"cgroup: {exc.describe()}")
            cg = CgroupFacts(path="?", name=info.comm, limit_error=f"cgroup: {exc}")
        else:
            if cg.limit_error:
                self.stats.errors["cgroup_unreadable"] += 1
                problems.append(cg.limit_error)
        meta = None
        if self.kube is not None and cg.pod_uid:
            meta = self.kube.lookup(cg.pod_uid, cg.container_id)
        bi = binary.buildinfo
        version = bi.version_tuple if bi else None
        affinity = info.affinity_cpus or self.host_cpus
        facts = Facts(
            go_version=version,
            env_gomaxprocs=info.gomaxprocs_env,
            env_godebug=info.godebug_env,
            default_godebug=bi.default_godebug if bi else "",
            automaxprocs=bi.automaxprocs if bi else False,
            affinity_cpus=affinity,
            leaf_limit=cg.leaf_limit,
            effective_limit=cg.effective_limit,
        )
        gmp = self._gomaxprocs(info, binary, bias, facts)
        off = version is not None and not containermaxprocs_enabled(info.godebug_env, bi.default_godebug if bi else "")
        judgement = judge(
            Evidence(
                gomaxprocs=gmp.value,
                gomaxprocs_source=gmp.source,
                limit_cores=cg.effective_limit,
                affinity_cpus=affinity,
                shares=profile.shares(),
                samples=profile.known_samples,
                go_version=version,
                spec_gomaxprocs=meta.spec_gomaxprocs if meta else None,
                containermaxprocs_off=off and version is not None and version >= (1, 25, 0),
                unknown_reason=gmp.detail,
                limit_error=cg.limit_error,
            )
        )
        if meta is not None:
            workload = f"{meta.namespace}/{meta.pod}" + (f"/{meta.container}" if meta.container else "")
        elif cg.name in ("", "/"):
            workload = info.comm  # the root cgroup names nothing: the program does (as ps would)
        else:
            workload = cg.name
        return GoProcessReport(
            pid=info.pid,
            start_time=info.start_time,
            exe=info.exe.path if info.exe else "?",
            go_version=bi.go_version if bi else None,
            cgroup=cg.path,
            workload=workload,
            namespace=meta.namespace if meta else None,
            pod=meta.pod if meta else None,
            container=meta.container if meta else None,
            owner=meta.owner if meta else None,
            cpu_limit_cores=cg.effective_limit,
            affinity_cpus=affinity,
            gomaxprocs=gmp.value,
            gomaxprocs_source=gmp.source,
            samples=profile.samples,
            cpu_seconds=profile.samples / frequency_hz,
            shares=profile.shares(),
            throttled_ratio=self._throttled_ratio(cg),
            verdict=judgement.verdict,
            recommended_gomaxprocs=judgement.recommended,
            explanation=judgement.explanation,
            fix=judgement.fix,
            profile=profile,
            automaxprocs=bi.automaxprocs if bi else False,
            build_id=binary.go_build_id or binary.gnu_build_id or "",
            errors=problems,
        )
