"""`node-agent run`: the DaemonSet loop.

Every interval: drain the sampler, join the window into per-process rows,
publish them to the collector and the profile store. The HTTP server runs
on its own thread and only reads what was last published.

Nothing a node throws at it ends the loop: a broken process, binary or
cgroup is counted and skipped inside the pipeline; a failing cycle is
counted and the next one runs; when BPF cannot load, the agent stays up,
says why on /metrics (node_agent_bpf_up 0) and /readyz (503 + reason), and
retries. New binaries are parsed on a thread of their own (each in its
sandbox), so a cycle never waits on one: their processes are judged the
cycle after. Each cycle's processing has a deadline of one interval: past it,
the rest of the window is skipped and counted (cycle_deadline), so the next
window is drained on time. /healthz fails when the loop stalls and when
cycles keep failing (:class:`CycleHealth`). SIGTERM/SIGINT interrupt a cycle
(the pipeline checks the stop between processes, a sandboxed parse is
killed) and end the daemon with status 0: the sampler is detached (its perf
events and BPF programs closed) before the process exits.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from agent.analysis.attribution import ProcessProfile
from agent.analysis.model import GoProcessReport, ScanResult
from agent.analysis.pipeline import Deadline
from agent.commands.wiring import build_pipeline
from agent.errors import BPFUnavailableError, NodeAgentError
from agent.export.http import (
    AgentHTTPServer,
    Health,
    ProfileAccess,
    ProfileKey,
    ProfileStore,
    ReadyProbe,
    all_ready,
    format_address,
)
from agent.export.kubemetrics import KubeErrorCounter, KubeWatchCollector
from agent.export.metrics import AgentMetrics, labels_of
from agent.export.pprof import ProfilePart, build_profile, gzipped
from agent.gobinary.symbolizer import BinaryCache
from agent.host.mounts import check_host_mounts
from agent.sampling.sampler import Sampler

if TYPE_CHECKING:
    from agent.kube.watch import KubeMetadata

log = logging.getLogger("node_agent")
BINARY_TABLE_BYTES = 64 << 20


FAILING_CYCLES = 3  # consecutive failed cycles before /healthz says so


@dataclass
class CycleHealth(Health):
    """Liveness as the loop sees it: stalled (no cycle ended for ``stall_after_s``) or
    failing (the last ``failing_after`` cycles all failed), with the reason.

    What the HTTP server reads is ``alive() -> (ok, reason)``, as for :class:`Health`.
    """

    failing_after: int = FAILING_CYCLES
    consecutive_failures: int = 0
    last_failure: str = ""

    def cycle_ok(self) -> None:
        with self.lock:
            self.consecutive_failures = 0
        self.beat()

    def cycle_failed(self, reason: str) -> None:
        with self.lock:
            self.consecutive_failures += 1
            self.last_failure = reason
        self.beat()  # the loop is alive; whether it is healthy is alive()'s question

    def alive(self) -> tuple[bool, str]:
        ok, reason = super().alive()
        if not ok:
            return ok, reason
        with self.lock:
            n, last = self.consecutive_failures, self.last_failure
        if n >= self.failing_after:
            return False, f"the last {n} cycles failed; last: {last}"
        return True, "ok"


@dataclass(frozen=True)
class DaemonConfig:
    interval_s: float = 15.0
    frequency_hz: int = 97
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 9464),)
    profiles: ProfileAccess = field(default_factory=ProfileAccess)
    host_root: Path = Path("/")
    kernel_headers: Path | None = None
    cache_dir: Path | None = None
    max_series: int = 5000
    bpf_retry_s: float = 60.0
    binary_cache: int = 64
    node_name: str = ""


class Daemon:
    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        kube: KubeMetadata | None = None,
        sampler_factory: Callable[[], Sampler] | None = None,
    ) -> None:
        self.cfg = cfg
        self.kube = kube
        self.registry = CollectorRegistry()
        self.metrics = AgentMetrics(max_series=cfg.max_series)
        self.registry.register(self.metrics)
        # The standard self-metrics every exporter has (process_cpu_seconds_total,
        # process_resident_memory_bytes, process_open_fds, ..., python_info), from the agent's own
        # /proc/self: with hostPID that is still this process.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.health = CycleHealth(stall_after_s=max(300.0, cfg.interval_s * 10))
        self._kube_errors = KubeErrorCounter()
        ready: ReadyProbe = self.health.ready
        if kube is not None:  # the watcher's health: metrics, and a line in /readyz (never a reason to be unready)
            self.registry.register(KubeWatchCollector(kube.status))
            notes = kube.readiness_notes
            ready = all_ready(self.health.ready, lambda: (True, notes()))
        self.profiles = LazyProfiles()
        # Held while the cycle or a profile request uses the parsed binaries (their caches are not thread-safe).
        self._symbols = threading.Lock()
        wiring = build_pipeline(
            cfg.frequency_hz,
            cfg.host_root,
            kernel_headers=cfg.kernel_headers,
            cache_dir=cfg.cache_dir,
            kube=kube,
            # 64 MiB of tables: with bcc's ~125 MiB that keeps the agent under 256 MiB on a big node.
            binaries=BinaryCache(capacity=cfg.binary_cache, max_bytes=BINARY_TABLE_BYTES),
            interval_s=cfg.interval_s,
            background_parses=True,
        )
        self.pipeline = wiring.pipeline
        self._sampler_factory = sampler_factory or (lambda: Sampler(wiring.sampler))
        self._stop = threading.Event()
        self._signal: int | None = None
        self._sampler: Sampler | None = None
        self._next_bpf_try = 0.0
        self.server = AgentHTTPServer(
            cfg.listen,
            self.registry,
            health=self.health.alive,
            ready=ready,
            profiles=self.profiles,
            access=cfg.profiles,
            on_error=self.metrics.count_error,
        )
        self.cycles = 0
        self._mount_reason = ""

    # ---- lifecycle ------------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            # Nothing that takes a lock the interrupted code may hold: no logging here (a signal
            # that lands inside a log write made stderr re-entrant and the shutdown was lost).
            self._signal = signum
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        self._check_host_mounts()
        self.server.start()
        log.info("serving /metrics on %s", ", ".join(format_address(h, p) for h, p in self.server.addresses))
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self._ensure_sampler()
                if self._sampler is not None:
                    if self._stop.wait(self.cfg.interval_s):
                        break
                    self._cycle(started)
                else:
                    self.health.beat()  # alive, just not ready
                    self._stop.wait(min(self.cfg.interval_s, self.cfg.bpf_retry_s))
        finally:
            if self._signal is not None:
                log.info("signal %d: shutting down", self._signal)
            self.pipeline.close()  # kills a parse in flight
            self._close_sampler()
            self.server.stop()
        return 0

    def _check_host_mounts(self) -> None:
        """A writable host mount is a hole, not an item error: said at start, kept in /readyz."""
        check = check_host_mounts(self.cfg.host_root)
        self._mount_reason = check.reason
        if check.reason:
            log.error("%s", check.reason)
            self.metrics.count_error("host_mount_writable", max(1, len(check.writable)))
            self.health.set_ready(check.reason)

    # ---- BPF ------------------------------------------------------------------------------------
    def _ensure_sampler(self) -> None:
        if self._sampler is not None or time.monotonic() < self._next_bpf_try:
            return
        try:
            self._sampler = self._sampler_factory()
            with self._symbols:
                deadline = Deadline(time.monotonic() + self.cfg.interval_s, self._stop)
                registered = self.pipeline.register_all(self._sampler, deadline=deadline)
            log.info("%d Go processes registered with the sampler", registered)
            self._sampler.drain()  # the first window starts now
            self.pipeline.begin_window()
            self.metrics.set_bpf(True)
            self.health.set_ready(self._mount_reason)
            log.info("BPF sampler attached at %d Hz", self.cfg.frequency_hz)
        except (NodeAgentError, OSError) as exc:  # a first drain that fails is the same: retry later
            self._close_sampler()
            reason = exc.describe() if isinstance(exc, NodeAgentError) else f"{type(exc).__name__}: {exc}"
            self.metrics.set_bpf(False, (str(exc).splitlines() or [""])[0][:200])
            self.health.set_ready("; ".join(filter(None, (f"BPF sampler unavailable: {reason}", self._mount_reason))))
            self.metrics.count_error("bpf_unavailable")
            log.error("BPF sampler unavailable (retrying in %.0fs): %s", self.cfg.bpf_retry_s, reason)
            self._next_bpf_try = time.monotonic() + self.cfg.bpf_retry_s

    def _close_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None

    # ---- one cycle ------------------------------------------------------------------------------
    def _cycle(self, started: float) -> None:
        assert self._sampler is not None
        try:
            drain = self._sampler.drain()
        except (BPFUnavailableError, OSError) as exc:
            log.error("drain failed, re-attaching: %s", exc)
            self.metrics.count_error("drain_failed")
            self.health.cycle_failed(f"drain failed: {exc}")
            self._close_sampler()
            return
        t0 = time.monotonic()
        deadline = Deadline(t0 + self.cfg.interval_s, self._stop)
        try:
            with self._symbols:
                result = self.pipeline.run(
                    drain,
                    frequency_hz=self.cfg.frequency_hz,
                    duration_s=drain.interval_seconds,
                    registrar=self._sampler,
                    deadline=deadline,
                )
            # Throttling baselines for the processes the next window can report (the registered Go
            # processes), not for every process on the node: a cgroup read per container, not per pid.
            self.pipeline.begin_window(list(self._sampler.registered))
            for kind, n in self.pipeline.stats.errors.items():
                self.metrics.count_error(kind, n)
            if self.kube is not None:
                self._kube_errors.publish(self.kube.status().errors_by_kind, self.metrics.count_error)
            self.pipeline.stats.errors.clear()
            self.metrics.update(result.go)
            self.metrics.record_cycle(time.monotonic() - t0, drain.busy_samples, drain.lost)
        except Exception as exc:  # a bug in one cycle must not end the daemon; it is logged and counted
            log.exception("cycle failed")
            self.metrics.count_error("cycle_failed")
            self.health.cycle_failed(f"{type(exc).__name__}: {exc}"[:200])
            return
        self._publish_profiles(result)
        skipped = self.pipeline.skipped_by_deadline
        if skipped and not self._stop.is_set():
            log.warning("cycle deadline (%.0fs) passed: %d processes skipped", self.cfg.interval_s, skipped)
            self.health.cycle_failed(f"deadline of {self.cfg.interval_s:g}s passed, {skipped} processes skipped")
        else:
            self.health.cycle_ok()
        self.cycles += 1
        cache = self.pipeline.binaries
        log.debug(
            "cycle %d: %d Go processes, %.3fs; drain %.3fs, work %.3fs; %d binaries (%.1f MiB of tables), "
            "%d cached PCs, %d Python blocks",
            self.cycles,
            len(result.go),
            time.monotonic() - started,
            drain.drain_seconds,
            time.monotonic() - t0 + drain.drain_seconds,
            len(cache),
            cache.weight / 2**20,
            len(cache.frames),
            sys.getallocatedblocks(),
        )

    def _publish_profiles(self, result: ScanResult) -> None:
        """The window's profile per container (its processes merged), for /profiles, built when asked for.

        Publishing only groups rows; symbolizing, encoding and gzipping a
        container's profile happens on its first request in this window (and
        that result is kept until the next window replaces it).
        """
        period = round(1e9 / result.frequency_hz)
        duration = round(result.duration_s * 1e9)
        groups: dict[ProfileKey, list[GoProcessReport]] = {}
        for row in result.go:
            if row.profile.samples:
                groups.setdefault(labels_of(row), []).append(row)
        builders: dict[ProfileKey, Callable[[], bytes | None]] = {}
        for key, rows in groups.items():
            builders[key] = functools.partial(self._build_profile, key, rows, period, duration)
        self.profiles.publish(builders)

    def _build_profile(self, key: ProfileKey, rows: list[GoProcessReport], period: int, duration: int) -> bytes | None:
        # Processes of one build share addresses and symbols: merged. Other builds get parts of their own.
        try:
            with self._symbols:
                by_build: dict[str, ProfilePart] = {}
                for row in rows:
                    build = row.build_id or row.exe
                    if build not in by_build:
                        by_build[build] = ProfilePart(ProcessProfile(), row.exe, row.build_id)
                    by_build[build].profile.add(row.profile)
                msg = build_profile(
                    sorted(by_build.values(), key=lambda part: -part.profile.samples),
                    period_ns=period,
                    duration_ns=duration,
                    labels={"namespace": key[0], "pod": key[1], "container": key[2], "node": self.cfg.node_name},
                )
            return gzipped(msg)
        except Exception:  # one container's profile, not the daemon: logged and counted
            log.exception("profile of %s/%s/%s failed", *key)
            self.metrics.count_error("profile_failed")
            return None


class LazyProfiles(ProfileStore):
    """A ProfileStore whose profiles are built on first request, once per window."""

    def __init__(self) -> None:
        super().__init__()
        self._lazy_lock = threading.Lock()
        self._builders: dict[ProfileKey, Callable[[], bytes | None]] = {}
        self._built: dict[ProfileKey, bytes | None] = {}

    def publish(self, builders: dict[ProfileKey, Callable[[], bytes | None]]) -> None:
        with self._lazy_lock:
            self._builders = dict(builders)
            self._built = {}

    def replace(self, profiles: dict[ProfileKey, bytes]) -> None:
        self.publish({k: functools.partial(lambda b: b, v) for k, v in profiles.items()})

    def available(self) -> list[ProfileKey]:
        with self._lazy_lock:
            return sorted(self._builders)

    def get(self, key: ProfileKey) -> bytes | None:
        with self._lazy_lock:  # one build per key per window, even under concurrent requests
            if key not in self._built:
                builder = self._builders.get(key)
                if builder is None:
                    return None
                self._built[key] = builder()
            return self._built[key]
