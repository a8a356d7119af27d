"""Scrape cost at the series cap: bytes and CPU of one /metrics body of ~5,000 series.

The daemon's registry (AgentMetrics at --max-series 5000, full, plus process_* and
python_info) is rendered the way prometheus_client's exposition serves it: the encoder
`choose_encoder(Accept)` picks (Prometheus text 0.0.4, or OpenMetrics when asked), then
`gzip.compress` when the scraper sends `Accept-Encoding: gzip` (what Prometheus does).
The anchor is the plain text body: the other three are reported as ratios to it, measured
interleaved in one run (rotating order per round), as CPU time of this process
(time.process_time), not wall time. Label values have realistic lengths (namespace
`team-042`, pod `checkout-7d9f8b6c5-x2x9k`, container `app`), and every container is
flagged, so each has all of its 9 series (the cap's worst case).

    .venv/bin/python benchmarks/bench_scrape.py            # 7 rounds x 20 scrapes per format
    .venv/bin/python benchmarks/bench_scrape.py --json

Exit status 0 whatever the figures; 1 when a body does not round-trip (the gzip body must
decompress to the plain one, and the series count must be what the cap allows).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from agent.analysis.goruntime import CATEGORIES
from agent.analysis.model import GoProcessReport
from agent.analysis.verdict import Verdict
from agent.export.metrics import SERIES_PER_CONTAINER, AgentMetrics

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PROMETHEUS_ACCEPT = (  # what Prometheus 2.x/3.x sends
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def report(i: int, rng: random.Random) -> GoProcessReport:
    # Every container flagged: all 9 of its series present, so the cap's 5,000 are 5,000.
    verdict = Verdict.ABOVE
    gomaxprocs = 64
    suffix = "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    return GoProcessReport(
        pid=1000 + i,
        start_time=1,
        exe="/app",
        go_version="go1.23.9",
        cgroup=f"/kubepods/burstable/pod{i}",
        workload="",
        namespace=f"team-{i % 100:03d}",
        pod=f"checkout-7d9f8b6c5-{suffix}",
        container="app",
        owner=None,
        cpu_limit_cores=2.0,
        affinity_cpus=64,
        gomaxprocs=gomaxprocs,
        gomaxprocs_source="live",
        samples=100,
        cpu_seconds=0.5 + rng.random(),
        shares={c: 1.0 / len(CATEGORIES) for c in CATEGORIES},
        throttled_ratio=0.0,
        verdict=verdict,
        recommended_gomaxprocs=2,
        explanation="",
        fix="",
    )


def daemon_registry(max_series: int) -> CollectorRegistry:
    """What Daemon.__init__ registers, with the cap filled."""
    rng = random.Random(42)
    metrics = AgentMetrics(max_series=max_series)
    metrics.update([report(i, rng) for i in range(max_series // SERIES_PER_CONTAINER)], now=time.time())
    metrics.record_cycle(0.3, 970, {"user_stack_efault": 12})
    metrics.set_bpf(True)
    registry = CollectorRegistry()
    registry.register(metrics)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def scrape(registry: CollectorRegistry, accept: str, compress: bool) -> Callable[[], bytes]:
    def render() -> bytes:
        encoder, _content_type = choose_encoder(accept)
        body: bytes = encoder(registry)
        return gzip.compress(body) if compress else body

    return render


def stable(body: bytes) -> list[bytes]:
    """The body without process_* samples, which move between two renders (CPU time, RSS)."""
    return [line for line in body.splitlines() if not line.startswith(b"process_")]


def series_in(body: bytes) -> int:
    return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-series", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--scrapes", type=int, default=20, help="scrapes per format per round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    registry = daemon_registry(args.max_series)
    formats = {
        "text (anchor)": scrape(registry, "text/plain;version=0.0.4", False),
        "text + gzip": scrape(registry, "text/plain;version=0.0.4", True),
        "openmetrics": scrape(registry, OPENMETRICS, False),
        "openmetrics + gzip": scrape(registry, OPENMETRICS, True),
    }
    bodies = {name: fn() for name, fn in formats.items()}
    plain = bodies["text (anchor)"]
    series = series_in(plain)
    ok = stable(gzip.decompress(bodies["text + gzip"])) == stable(plain) and series >= args.max_series
    ok = ok and stable(gzip.decompress(bodies["openmetrics + gzip"])) == stable(bodies["openmetrics"])
    # What Prometheus's own Accept header gets: OpenMetrics.
    ok = ok and choose_encoder(PROMETHEUS_ACCEPT)[1].startswith("application/openmetrics-text")

    cpu: dict[str, list[float]] = {name: [] for name in formats}
    names = list(formats)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = formats[name]
            t0 = time.process_time()
            for _ in range(args.scrapes):
                fn()
            cpu[name].append((time.process_time() - t0) / args.scrapes)

    anchor = statistics.median(cpu["text (anchor)"])
    rows = [
        {
            "format": name,
            "bytes": len(bodies[name]),
            "bytes_ratio": len(bodies[name]) / len(plain),
            "cpu_ms": statistics.median(cpu[name]) * 1e3,
            "cpu_ratio": statistics.median(cpu[name]) / anchor,
        }
        for name in names
    ]
    if args.json:
        print(json.dumps({"series": series, "rounds": args.rounds, "scrapes": args.scrapes, "ok": ok, "rows": rows}))
    else:
        print(f"{series} series (--max-series {args.max_series}), median of {args.rounds} rounds x {args.scrapes}")
        print(f"{'format':<20} {'bytes':>10} {'x text':>7} {'CPU ms':>8} {'x text':>7}")
        for row in rows:
            print(
                f"{row['format']:<20} {row['bytes']:>10,} {row['bytes_ratio']:>7.2f} "
                f"{row['cpu_ms']:>8.1f} {row['cpu_ratio']:>7.2f}"
            )
        if not ok:
            print("ROUND-TRIP FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
