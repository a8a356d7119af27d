"""`node-agent run`: the DaemonSet loop.

Every interval: drain the sampler, join the window into per-process rows,
publish them to the collector and the profile store. The HTTP server runs
on its own thread and only reads what was last published.

Nothing a node throws at it ends the loop: a broken process, binary or
cgroup is counted and skipped inside the pipeline; a failing cycle is
counted and the next one runs; when BPF cannot load, the agent stays up,
says why on /metrics (node_agent_bpf_up 0) and /readyz (503 + reason), and
retries. SIGTERM/SIGINT end it gracefully: the sampler is detached (its
perf events and BPF programs closed) before the process exits.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry

from agent.analysis.attribution import ProcessProfile
from agent.analysis.model import GoProcessReport, ScanResult
from agent.analysis.pipeline import KubeSource, Pipeline
from agent.commands.scan import ScanConfig, sampler_config
from agent.errors import BPFUnavailableError, NodeAgentError
from agent.export.http import AgentHTTPServer, Health, ProfileKey, ProfileStore
from agent.export.metrics import AgentMetrics, labels_of
from agent.export.pprof import ProfilePart, build_profile, gzipped
from agent.gobinary.symbolizer import BinaryCache
from agent.host.cgroupsource import HostCgroups
from agent.host.procfs import ProcFS
from agent.sampling.sampler import Sampler

log = logging.getLogger("node_agent")
BINARY_TABLE_BYTES = 64 << 20


@dataclass(frozen=True)
class DaemonConfig:
    interval_s: float = 15.0
    frequency_hz: int = 97
    listen: tuple[str, int] = ("0.0.0.0", 9464)
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
        kube: KubeSource | None = None,
        sampler_factory: Callable[[], Sampler] | None = None,
    ) -> None:
        self.cfg = cfg
        self.kube = kube
        self.registry = CollectorRegistry()
        self.metrics = AgentMetrics(max_series=cfg.max_series)
        self.registry.register(self.metrics)
        self.health = Health(stall_after_s=max(300.0, cfg.interval_s * 10))
        self.profiles = LazyProfiles()
        # Held while the cycle or a profile request uses the parsed binaries (their caches are not thread-safe).
        self._symbols = threading.Lock()
        self.pipeline = Pipeline(
            ProcFS(cfg.host_root / "proc"),
            HostCgroups(cfg.host_root),
            kube=kube,
            # 64 MiB of tables: with bcc's ~125 MiB that keeps the agent under 256 MiB on a big node.
            binaries=BinaryCache(capacity=cfg.binary_cache, max_bytes=BINARY_TABLE_BYTES),
        )
        scan_cfg = ScanConfig(
            frequency_hz=cfg.frequency_hz,
            host_root=cfg.host_root,
            kernel_headers=cfg.kernel_headers,
            cache_dir=cfg.cache_dir,
        )
        self._sampler_factory = sampler_factory or (lambda: Sampler(sampler_config(scan_cfg, cfg.interval_s)))
        self._stop = threading.Event()
        self._sampler: Sampler | None = None
        self._next_bpf_try = 0.0
        self.server = AgentHTTPServer(cfg.listen, self.registry, self.health, self.profiles)
        self.cycles = 0

    # ---- lifecycle ------------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: shutting down", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        self.server.start()
        log.info("serving /metrics on %s:%d", self.cfg.listen[0], self.server.port)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self._ensure_sampler()
                if self._sampler is not None:
                    self._stop.wait(self.cfg.interval_s)
                    self._cycle(started)
                else:
                    self.health.beat()  # alive, just not ready
                    self._stop.wait(min(self.cfg.interval_s, self.cfg.bpf_retry_s))
        finally:
            self._close_sampler()
            self.server.stop()
        return 0

    # ---- BPF ------------------------------------------------------------------------------------
    def _ensure_sampler(self) -> None:
        if self._sampler is not None or time.monotonic() < self._next_bpf_try:
            return
        try:
            self._sampler = self._sampler_factory()
            with self._symbols:
                registered = self.pipeline.register_all(self._sampler)
            log.info("%d Go processes registered with the sampler", registered)
            self._sampler.drain()  # the first window starts now
            self.pipeline.begin_window()
            self.metrics.set_bpf(True)
            self.health.set_ready("")
            log.info("BPF sampler attached at %d Hz", self.cfg.frequency_hz)
        except NodeAgentError as exc:
            reason = exc.describe()
            self.metrics.set_bpf(False, str(exc).splitlines()[0][:200])
            self.health.set_ready(f"BPF sampler unavailable: {reason}")
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
            self._close_sampler()
            return
        t0 = time.monotonic()
        try:
            with self._symbols:
                result = self.pipeline.run(
                    drain,
                    frequency_hz=self.cfg.frequency_hz,
                    duration_s=drain.interval_seconds,
                    registrar=self._sampler,
                )
            # Throttling baselines for the processes the next window can report (the registered Go
            # processes), not for every process on the node: a cgroup read per container, not per pid.
            self.pipeline.begin_window(list(self._sampler.registered))
            for kind, n in self.pipeline.stats.errors.items():
                self.metrics.count_error(kind, n)
            self.pipeline.stats.errors.clear()
            self.metrics.update(result.go)
            self.metrics.record_cycle(time.monotonic() - t0, drain.busy_samples, drain.lost)
        except Exception:  # a bug in one cycle must not end the daemon; it is logged and counted
            log.exception("cycle failed")
            self.metrics.count_error("cycle_failed")
            self.health.beat()
            return
        self._publish_profiles(result)
        self.health.beat()
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
