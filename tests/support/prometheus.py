"""A real Prometheus (Debian's) for system tests: the shipped rules with only `for:` shortened,
loopback targets scraped every 2 s, its firing alerts and PromQL results read back (queries
through promtool, which also parses them)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.capabilities import need
from tests.support.loopback import REPO, free_port, get, stop, wait_for

RULES = REPO / "deploy" / "rules" / "node-agent-rules.yaml"
GOMAXPROCS_ALERT = "NodeAgentGoMaxProcsAboveRecommended"


def promtool() -> str:
    path = shutil.which("promtool")
    need(path is not None, "promtool (Debian package prometheus)")
    assert path is not None
    return path


def short_rules(tmp: Path) -> Path:
    """deploy/rules with every alert's `for:` at 6 s, so a test sees it fire within a minute."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert"):
                rule["for"] = "6s"
    out = tmp / "rules.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


@contextlib.contextmanager
def prometheus(tmp: Path, targets: dict[str, int]) -> Iterator[int]:
    """Prometheus scraping each job's 127.0.0.1 port (labels kept: honor_labels), with the short
    rules; yields its own port once it is ready, stops it on leaving."""
    binary = shutil.which("prometheus")
    need(binary is not None, "prometheus (Debian package prometheus)")
    assert binary is not None
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
                "rule_files": [str(short_rules(tmp))],
                "scrape_configs": [
                    {"job_name": job, "honor_labels": True, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
                    for job, p in targets.items()
                ],
            }
        )
    )
    with open(tmp / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        wait_for(
            lambda: proc.poll() is not None or get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, 60, "Prometheus ready"
        )
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
        yield port
    finally:
        stop(proc)


def firing(port: int, alertname: str) -> list[dict[str, Any]]:
    """The alerts of that name Prometheus has firing now ([] while it is not answering)."""
    status, body = get(f"http://127.0.0.1:{port}/api/v1/alerts")
    if status != 200:
        return []
    alerts: list[dict[str, Any]] = json.loads(body)["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == alertname and a["state"] == "firing"]


def query(port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query through promtool: it parses the expression and prints the result as JSON."""
    res = subprocess.run(
        [promtool(), "query", "instant", "-o", "json", f"http://127.0.0.1:{port}", expr],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, (expr, res.stderr)
    result: list[dict[str, Any]] = json.loads(res.stdout)
    return result
