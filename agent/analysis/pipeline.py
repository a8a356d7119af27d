"""One window of samples -> one row per Go process: the join of every stage.

This is where I/O meets computation: it asks procfs who each sampled tgid is,
opens (once per build) its binary, reads its cgroup and its live GOMAXPROCS,
then hands plain data to the pure stages (attribution, inference, verdict).
Every per-process failure is caught here, counted by kind and reported with
the row or in the result's errors: one odd process costs that process.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.analysis.attribution import PackedStacks, ProcessProfile
from agent.analysis.gomaxprocs import Facts, Gomaxprocs, containermaxprocs_enabled, gomaxprocs_address, infer, read_live
from agent.analysis.goruntime import Category, CategoryRanges, category_ranges
from agent.analysis.model import GoProcessReport, OtherSummary, ScanResult
from agent.analysis.verdict import Evidence, judge
from agent.errors import BinaryError, NodeAgentError, NotGoError, ProcessGoneError
from agent.gobinary.elf import open_image
from agent.gobinary.symbolizer import BinaryCache, BoundedCache, GoBinary
from agent.host.procfs import ProcessInfo, ProcFS
from agent.sampling.sampler import DrainResult

log = logging.getLogger(__name__)

# Kernel category name -> the category a row reports it under ("unregistered": sampled
# before the agent told the kernel this process is Go, so its category is unknown).
_KERNEL_CATEGORY = {c.value: c for c in Category} | {"unregistered": Category.UNKNOWN}


@dataclass(frozen=True)
class Throttle:
    nr_periods: int
    nr_throttled: int
    throttled_seconds: float


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
    throttle: Throttle | None = None
    throttle_key: str = ""  # which cgroup the counters belong to


class CgroupSource(Protocol):
    def facts(self, proc_cgroup_text: str) -> CgroupFacts: ...

    def throttle(self, key: str) -> Throttle | None: ...


class WorkloadMeta(Protocol):
    """What the pod watch knows about a container (agent.kube.ContainerMeta provides it)."""

    @property
    def namespace(self) -> str: ...

    @property
    def pod(self) -> str: ...

    @property
    def container(self) -> str | None: ...

    @property
    def owner(self) -> str | None: ...  # "Deployment/web"

    @property
    def spec_gomaxprocs(self) -> str | None: ...  # how the spec sets GOMAXPROCS

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
    ) -> None:
        self.procfs = procfs
        self.cgroups = cgroups
        self.kube = kube
        self.binaries = binaries or BinaryCache()
        self.host_cpus = host_cpus or os.cpu_count() or 1
        self.stats = PipelineStats()
        self._addr_cache: BoundedCache[str, tuple[int, str] | None] = BoundedCache(256)
        self._ranges: BoundedCache[str, CategoryRanges | None] = BoundedCache(256)
        self._throttle_start: dict[str, Throttle] = {}
        self._facts_memo: dict[str, CgroupFacts] = {}

    # ---- window bookkeeping -------------------------------------------------------------------
    def begin_window(self, pids: Iterable[int] | None = None) -> None:
        """Remember every cgroup's throttling counters, to report the window's share."""
        start: dict[str, Throttle] = {}
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
        begin = self._throttle_start.get(facts.throttle_key, Throttle(0, 0, 0.0))
        periods = end.nr_periods - begin.nr_periods
        if periods <= 0:
            return 0.0 if facts.effective_limit is not None else None
        return max(0.0, min(1.0, (end.nr_throttled - begin.nr_throttled) / periods))

    # ---- the join -----------------------------------------------------------------------------
    def run(
        self,
        drain: DrainResult,
        *,
        frequency_hz: int,
        duration_s: float,
        registrar: Registrar | None = None,
    ) -> ScanResult:
        """Rows for the window; with ``registrar``, also keep the kernel's Go process ranges current."""
        self._facts_memo = {}
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
        for tgid, cats in sorted(counts.items()):
            count = sum(cats.values())
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
            binary = self._binary(info)
            if binary is None:
                other.processes += 1
                other.samples += count
                other_comms[info.comm] += count
                continue
            bias = binary.load_bias((m.start, m.offset) for m in info.exe_mappings())
            if registrar is not None:
                self._register(registrar, info, binary, bias)
            profile = ProcessProfile(samples=count, categories=cats)
            if stacks_of.get(tgid):
                profile.pending.append((binary, bias or 0, PackedStacks(stacks_of.pop(tgid))))
            try:
                go.append(self._report(info, binary, bias, profile, frequency_hz))
            except NodeAgentError as exc:
                self.stats.errors["report_failed"] += 1
                errors.append(f"pid {tgid} ({info.comm}): {exc.describe()}")
        if registrar is not None:
            self._prune(registrar, set(counts))
        other.top = other_comms.most_common(10)
        return ScanResult(
            duration_s=duration_s,
            frequency_hz=frequency_hz,
            total_samples=drain.busy_samples,
            go=go,
            other=other,
            lost=dict(drain.lost),
            exited_samples=exited,
            errors=errors,
        )

    # ---- the kernel's view of Go processes -------------------------------------------------------
    def register_all(self, registrar: Registrar, pids: Iterable[int] | None = None) -> int:
        """Register every Go process running now (or among ``pids``) not yet registered; returns how many are."""
        for pid in self.procfs.list_pids() if pids is None else pids:
            try:
                info = self.procfs.snapshot(pid)
            except (NodeAgentError, OSError):
                continue
            if info is None or pid in registrar.registered:
                continue
            binary = self._binary(info)
            if binary is not None:
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
                start_time = self.procfs.process_key(pid).start_time
            except (NodeAgentError, OSError):
                start_time = None
            if not (isinstance(token, tuple) and token and token[0] == start_time):
                registrar.unregister(pid)

    def _binary(self, info: ProcessInfo) -> GoBinary | None:
        exe = info.exe
        if exe is None:
            return None
        try:
            return self.binaries.get(exe.file_key, lambda: open_image(exe.open_path))
        except NotGoError:
            return None
        except BinaryError:
            self.stats.errors["binary_unreadable"] += 1
            return None

    def _gomaxprocs(self, info: ProcessInfo, binary: GoBinary, bias: int | None, facts: Facts) -> Gomaxprocs:
        ident = binary.identity
        if ident not in self._addr_cache:
            self._addr_cache.put(ident, gomaxprocs_address(binary))
        found = self._addr_cache.get(ident)
        why = "no address for runtime.gomaxprocs"
        if found is not None and bias is not None:
            try:
                value = read_live(self.procfs.memory_reader(info.key), found[0] + bias)
                return Gomaxprocs(value, "live", f"runtime.gomaxprocs via {found[1]}")
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
        cg: CgroupFacts
        try:
            cg = self._cgroup_facts(info.cgroup or "")
        except NodeAgentError as exc:
            self.stats.errors["cgroup_unreadable"] += 1
            problems.append(f"cgroup: {exc.describe()}")
            cg = CgroupFacts(path="?", name=info.comm)
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
