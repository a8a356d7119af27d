"""`node-agent scan`: profile the whole machine for a while, judge every Go process.

Samples are drained every few seconds (so the maps never fill on a long
scan) and merged; the pipeline then runs once over the whole window.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from agent.analysis.model import ScanResult
from agent.analysis.pipeline import KubeSource
from agent.commands.wiring import build_pipeline
from agent.sampling.sampler import DrainResult, Sampler

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


def collect_shown(
    sampler: Sampler,
    duration_s: float,
    frequency_hz: int,
    *,
    progress: bool,
    tick: Callable[[float], None] = lambda _t: None,
    on_drain: Callable[[DrainResult], None] = lambda _d: None,
) -> DrainResult:
    """:func:`collect` with a progress bar when stderr is a terminal (scan and demo); ``tick`` runs either way."""
    if not (progress and sys.stderr.isatty()):
        return collect(sampler, duration_s, tick, on_drain)
    with Progress(
        TextColumn("profiling every CPU at {task.fields[hz]} Hz"),
        BarColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("profile", total=duration_s, hz=frequency_hz)

        def show(t: float) -> None:
            tick(t)
            bar.update(task, completed=t)

        return collect(sampler, duration_s, show, on_drain)


def run_scan(cfg: ScanConfig, *, kube: KubeSource | None = None) -> ScanResult:
    wiring = build_pipeline(
        cfg.frequency_hz,
        cfg.host_root,
        kernel_headers=cfg.kernel_headers,
        cache_dir=cfg.cache_dir,
        kube=kube,
        interval_s=DRAIN_EVERY_S,
    )
    pipeline = wiring.pipeline
    with Sampler(wiring.sampler) as sampler:

        def register_new(d: DrainResult) -> None:
            """Go processes that started during the scan: classified from the next drain on."""
            pipeline.register_all(sampler, {c.tgid for c in d.categories if c.category == "unregistered"})

        pipeline.register_all(sampler)  # the kernel classifies every Go process from the first sample
        sampler.drain()  # start the window now, after attaching: nothing from the set-up
        start = time.monotonic()
        pipeline.begin_window()
        drain = collect_shown(sampler, cfg.duration_s, cfg.frequency_hz, progress=cfg.progress, on_drain=register_new)
        end = time.monotonic()
    result = pipeline.run(drain, frequency_hz=cfg.frequency_hz, duration_s=end - start)
    result.window = (start, end)
    return result
