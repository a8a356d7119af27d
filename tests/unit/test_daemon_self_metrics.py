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
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
        status = Path(f"/proc/{proc.pid}/status").read_text()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    by_name = {name: value for (name, _), value in samples.items()}
    vmrss = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:"))
    assert 0.5 * vmrss < by_name["process_resident_memory_bytes"] < 2 * vmrss
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
