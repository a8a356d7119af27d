"""The real daemon's /metrics carries the standard self-metrics (process_*, python_info) and
node_agent_build_info{version,revision}, next to its own; checked over HTTP, parsed with
prometheus-client's text parser, and against the kernel's and git's own account."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent import __version__

REPO = Path(__file__).resolve().parents[2]


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in KiB, from the kernel's own account."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def test_daemon_serves_process_python_and_build_info(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--no-kubernetes", "--listen", "127.0.0.1:0", "--interval", "1",
         "--kernel-headers", str(tmp_path / "none")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the daemon exited"
            if m := re.search(r"serving /metrics on [^ ]+:(\d+)", line):
                port = int(m.group(1))
        assert port is not None
        # The daemon may still be compiling its BPF program in-process (RSS climbing, then
        # freed), so the kernel's figure is read on both sides of the scrape as a bracket.
        before = _status_kib(proc.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
        after = _status_kib(proc.pid)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    by_name = {name: value for (name, _), value in samples.items()}
    low = min(before["VmRSS"], after["VmRSS"]) * 1024
    high = max(before["VmHWM"], after["VmHWM"]) * 1024
    assert 0.8 * low <= by_name["process_resident_memory_bytes"] <= 1.1 * high
    assert by_name["process_cpu_seconds_total"] > 0
    assert by_name["process_open_fds"] >= 3
    assert abs(by_name["process_start_time_seconds"] - time.time()) < 600
    python = next(dict(labels) for (name, labels), _ in samples.items() if name == "python_info")
    assert python["version"] == ".".join(map(str, sys.version_info[:3]))
    build = next(dict(labels) for (name, labels), _ in samples.items() if name == "node_agent_build_info")
    git = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert build == {"version": __version__, "revision": git}
    assert by_name["node_agent_series_dropped_total"] == 0
