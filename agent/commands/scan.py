"""`node-agent scan`: profile the whole machine for a while, judge every Go process.

Samples are drained every few seconds (so the maps never fill on a long
scan) and merged; the pipeline then runs once over the whole window.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from agent.analysis.model import ScanResult
from agent.analysis.pipeline import KubeSource, Pipeline
from agent.host.cgroupsource import HostCgroups
from agent.host.procfs import ProcFS
from agent.sampling.kheaders import HeaderSearch
from agent.sampling.sampler import DrainResult, Sampler, SamplerConfig, map_sizes

DRAIN_EVERY_S = 5.0


@dataclass(frozen=True)
class ScanConfig:
    duration_s: float = 10.0
    frequency_hz: int = 97
    host_root: Path = Path("/")
    kernel_headers: Path | None = None
    cache_dir: Path | None = None
    progress: bool = True


def merge(drains: list[DrainResult]) -> DrainResult:
    samples = [s for d in drains for s in d.samples]
    categories = [c for d in drains for c in d.categories]
    lost: dict[str, int] = {}
    for d in drains:
        for reason, n in d.lost.items():
            lost[reason] = lost.get(reason, 0) + n
    return DrainResult(
        samples=samples,
        lost=lost,
        idle_samples=sum(d.idle_samples for d in drains),
        interval_seconds=sum(d.interval_seconds for d in drains),
        drain_seconds=sum(d.drain_seconds for d in drains),
        distinct_stacks=sum(d.distinct_stacks for d in drains),
        categories=categories,
    )


def sampler_config(cfg: ScanConfig, interval_s: float = DRAIN_EVERY_S) -> SamplerConfig:
    """Map sizes follow the CPU count, the rate and the time between drains (sampler.map_sizes)."""
    root = cfg.host_root
    count_entries, stack_entries = map_sizes(os.cpu_count() or 1, cfg.frequency_hz, interval_s)
    return SamplerConfig(
        sample_freq=cfg.frequency_hz,
        count_entries=count_entries,
        stack_entries=stack_entries,
        headers=HeaderSearch(host_root=root, explicit=cfg.kernel_headers, sysfs=root / "sys", cache_dir=cfg.cache_dir),
        proc=root / "proc",
        sysfs=root / "sys",
    )


def collect(
    sampler: Sampler,
    duration_s: float,
    tick: Callable[[float], None],
    on_drain: Callable[[DrainResult], None] = lambda _d: None,
) -> DrainResult:
    """Drain every few seconds until ``duration_s`` has passed; ``tick`` reports progress.

    ``on_drain`` sees each intermediate drain (to register processes that started meanwhile).
    """
    drains = []
    start = time.monotonic()
    next_drain = start + DRAIN_EVERY_S
    while True:
        now = time.monotonic()
        elapsed = now - start
        tick(min(elapsed, duration_s))
        if elapsed >= duration_s:
            break
        if now >= next_drain:
            drains.append(sampler.drain())
            on_drain(drains[-1])
            next_drain = now + DRAIN_EVERY_S
        time.sleep(min(0.1, duration_s - elapsed))
    drains.append(sampler.drain())
    return merge(drains)


def run_scan(cfg: ScanConfig, *, kube: KubeSource | None = None) -> ScanResult:
    procfs = ProcFS(cfg.host_root / "proc")
    pipeline = Pipeline(procfs, HostCgroups(cfg.host_root), kube=kube)
    with Sampler(sampler_config(cfg)) as sampler:

        def register_new(d: DrainResult) -> None:
            """Go processes that started during the scan: classified from the next drain on."""
            pipeline.register_all(sampler, {c.tgid for c in d.categories if c.category == "unregistered"})

        pipeline.register_all(sampler)  # the kernel classifies every Go process from the first sample
        sampler.drain()  # start the window now, after attaching: nothing from the set-up
        start = time.monotonic()
        pipeline.begin_window()
        if cfg.progress and sys.stderr.isatty():
            with Progress(
                TextColumn("profiling every CPU at {task.fields[hz]} Hz"),
                BarColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            ) as progress:
                task = progress.add_task("scan", total=cfg.duration_s, hz=cfg.frequency_hz)
                drain = collect(sampler, cfg.duration_s, lambda t: progress.update(task, completed=t), register_new)
        else:
            drain = collect(sampler, cfg.duration_s, lambda _t: None, register_new)
        end = time.monotonic()
    result = pipeline.run(drain, frequency_hz=cfg.frequency_hz, duration_s=end - start)
    result.window = (start, end)
    return result
