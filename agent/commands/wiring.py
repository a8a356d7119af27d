"""The one place scan, run and demo wire a sampler, /proc, the cgroup reader and the pipeline together.

Each command differs in how long it samples and where the rows go, not in what
reads the host: building that here keeps the three from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.analysis.pipeline import KubeSource, Pipeline
from agent.gobinary.symbolizer import BinaryCache
from agent.host.cgroupfs import HostCgroups
from agent.host.procfs import ProcFS
from agent.sampling.sampler import SamplerConfig


@dataclass(frozen=True)
class Wiring:
    pipeline: Pipeline
    sampler: SamplerConfig


def build_pipeline(
    frequency_hz: int,
    host_root: Path = Path("/"),
    *,
    kernel_headers: Path | None = None,
    cache_dir: Path | None = None,
    kube: KubeSource | None = None,
    binaries: BinaryCache | None = None,
    interval_s: float = 1.0,
    background_parses: bool = False,
) -> Wiring:
    """The pipeline over the host under ``host_root`` and the sampler settings that feed it
    (maps sized for ``interval_s`` between drains)."""
    pipeline = Pipeline(
        ProcFS(host_root / "proc"),
        HostCgroups(host_root),
        kube=kube,
        binaries=binaries,
        background_parses=background_parses,  # the daemon: a cycle never waits on a new binary's parse
    )
    return Wiring(pipeline, SamplerConfig.for_host(frequency_hz, host_root, kernel_headers, cache_dir, interval_s))
