"""A scrape of 5,000 series: bytes on the wire and the server's CPU, plain vs gzip, text vs OpenMetrics.

The anchor is prometheus_client's own server (``start_http_server``, the WSGI app most Python
exporters run) serving the same registry, in the same run. Each server runs in a child process
holding the agent's real collector (``AgentMetrics``) filled with ``--containers`` containers of
realistic Kubernetes labels (9 series each: 555 containers = 4,995 series, plus the agent's own
metrics), the render cache off so that every scrape renders. The parent scrapes each
(server, format) ``--scrapes`` times per round on a fresh connection, rounds in alternating order,
and reads the child's CPU (utime + stime from /proc/PID/stat) around each batch: CPU time, not wall
time. Reported per scrape: bytes, server CPU ms (median of rounds), and node-agent / anchor.

    .venv/bin/python benchmarks/bench_scrape.py               # 555 containers, 3 rounds x 40 scrapes
    .venv/bin/python benchmarks/bench_scrape.py --json
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMATS = {
    "text": {},
    "text+gzip": {"Accept-Encoding": "gzip"},
    "openmetrics": {"Accept": "application/openmetrics-text;version=1.0.0"},
    "openmetrics+gzip": {"Accept": "application/openmetrics-text;version=1.0.0", "Accept-Encoding": "gzip"},
}
SERVERS = ("node-agent", "prometheus_client")


def registry_with(containers: int) -> object:
    from prometheus_client import CollectorRegistry

    from agent.analysis.goruntime import Category
    from agent.analysis.model import GoProcessReport
    from agent.analysis.verdict import Verdict
    from agent.export.metrics import SERIES_PER_CONTAINER, AgentMetrics

    shares = {Category.SCHEDULER: 0.12, Category.GC: 0.21, Category.RUNTIME_OTHER: 0.04, Category.USER: 0.63}
    rows = []
    for i in range(containers):
        rows.append(
            GoProcessReport(
                pid=1000 + i,
                start_time=i,
                exe="/app/server",
                go_version="go1.23.4",
                cgroup=f"/kubepods/burstable/pod{i:08x}/{i:064x}",
                workload="",
                namespace=f"team-{i % 40:02d}",
                pod=f"svc-{i:04d}-5d8f7c9b6-x2kqz",
                container="app",
                owner=f"Deployment/svc-{i:04d}",
                cpu_limit_cores=1.0 + i % 4,
                affinity_cpus=64,
                gomaxprocs=64,
                gomaxprocs_source="live",
                samples=100 + i,
                cpu_seconds=1.5 + i / 1000,
                shares=shares,
                throttled_ratio=0.1,
                verdict=Verdict.ABOVE,
                recommended_gomaxprocs=2 + i % 4,
                explanation="",
                fix="",
            )
        )
    metrics = AgentMetrics(max_series=containers * SERIES_PER_CONTAINER)
    metrics.update(rows)
    metrics.record_cycle(0.05, 1000, {"user_stack_collision": 3})
    metrics.count_error("process_gone", 7)
    metrics.set_bpf(True)
    registry = CollectorRegistry()
    registry.register(metrics)
    return registry


def serve(server: str, containers: int) -> None:
    """Child: serve the registry, print the port, run until stdin closes."""
    from prometheus_client import CollectorRegistry

    registry = registry_with(containers)
    assert isinstance(registry, CollectorRegistry)
    if server == "node-agent":
        from agent.export.http import AgentHTTPServer, Health, HTTPLimits, ProfileStore

        health = Health()
        ours = AgentHTTPServer(
            [("127.0.0.1", 0)],
            registry,
            health=health.alive,
            ready=health.ready,
            profiles=ProfileStore(),
            limits=HTTPLimits(render_cache_s=0.0),
        )
        ours.start()
        port = ours.port
    else:
        from prometheus_client import start_http_server

        httpd, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        port = httpd.server_address[1]
    print(port, flush=True)
    sys.stdin.read()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port: int, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics", headers={"Connection": "close", **headers})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, resp.status
        return body, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def series_in(body: bytes, headers: dict[str, str]) -> int:
    text = (gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body).decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=555)
    parser.add_argument("--scrapes", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.containers)
        return 0

    children = {}
    try:
        for name in SERVERS:
            child = subprocess.Popen(
                [sys.executable, __file__, "--serve", name, "--containers", str(args.containers)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None
            children[name] = (child, int(child.stdout.readline()))
        cpu: dict[tuple[str, str], list[float]] = {}
        size: dict[tuple[str, str], int] = {}
        series: dict[tuple[str, str], int] = {}
        for rnd in range(args.rounds):
            order = SERVERS if rnd % 2 == 0 else tuple(reversed(SERVERS))
            for name in order:
                child, port = children[name]
                for fmt, headers in FORMATS.items():
                    scrape(port, headers)  # warm
                    before = cpu_seconds(child.pid)
                    for _ in range(args.scrapes):
                        body, got = scrape(port, headers)
                    used = cpu_seconds(child.pid) - before
                    cpu.setdefault((name, fmt), []).append(used / args.scrapes)
                    size[(name, fmt)] = len(body)
                    series[(name, fmt)] = series_in(body, got)
    finally:
        for child, _ in children.values():
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=30)

    rows = []
    for fmt in FORMATS:
        ours, anchor = (statistics.median(cpu[(s, fmt)]) for s in SERVERS)
        rows.append(
            {
                "format": fmt,
                "series": series[("node-agent", fmt)],
                "bytes": size[("node-agent", fmt)],
                "anchor_bytes": size[("prometheus_client", fmt)],
                "cpu_ms": round(ours * 1000, 2),
                "anchor_cpu_ms": round(anchor * 1000, 2),
                "cpu_ratio": round(ours / anchor, 2) if anchor else None,
            }
        )
    if args.json:
        print(json.dumps({"containers": args.containers, "scrapes": args.scrapes, "rounds": args.rounds, "rows": rows}))
        return 0
    print(f"{args.containers} containers, {args.rounds} rounds x {args.scrapes} scrapes; server CPU per scrape")
    print(f"{'format':<18}{'series':>8}{'bytes':>10}{'anchor bytes':>14}{'CPU ms':>9}{'anchor CPU ms':>15}{'ratio':>7}")
    for r in rows:
        print(
            f"{r['format']:<18}{r['series']:>8}{r['bytes']:>10}{r['anchor_bytes']:>14}"
            f"{r['cpu_ms']:>9}{r['anchor_cpu_ms']:>15}{r['cpu_ratio']!s:>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
