"""The real daemon logs JSON lines when asked, and says once that Kubernetes is unreachable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_daemon_logs_json_when_asked(tmp_path: Path) -> None:
    """The real daemon: every stderr line is a JSON object, including the Kubernetes notice
    (said once) and the BPF failure (no headers here on purpose)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--interval", "0.2", "--bpf-retry", "0.2",
         "--listen", "127.0.0.1:0", "--kernel-headers", str(tmp_path / "none"), "--log-format", "json"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "NODE_NAME": "", "KUBECONFIG": str(tmp_path / "no-kubeconfig")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        while len([x for x in lines if "BPF sampler unavailable" in x]) < 3:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
    finally:
        proc.terminate()
        try:
            rest = proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[1]
    lines += rest.splitlines(keepends=True)
    assert all(line.startswith("{") for line in lines), "".join(lines)
    recs = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in recs)
    kube = [r for r in recs if "Kubernetes API unavailable" in str(r["message"])]
    assert len(kube) == 1, recs
    assert "labelling containers by cgroup" in str(kube[0]["message"])
    # SIGTERM landed while the daemon was writing log lines five times a second: still a clean
    # exit (the handler used to log, and a re-entrant stderr write lost the shutdown).
    assert proc.returncode == 0
    assert any(r["message"] == "signal 15: shutting down" for r in recs)
