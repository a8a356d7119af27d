"""End to end: a real Prometheus scrapes `node-agent run`; the GOMAXPROCS alert fires for the
misconfigured service (GOMAXPROCS=64 in a 1-CPU cgroup, under load) and not for its twin.

The alert rules are the shipped deploy/rules file with only `for:` shortened.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.capabilities import need, need_root
from tests.workloads import build_demo, load, service, v1_cgroup

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "rules" / "node-agent-rules.yaml"
ALERT = "NodeAgentGoMaxProcsAboveRecommended"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def short_rules(tmp: Path) -> Path:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert"):
                rule["for"] = "6s"
    out = tmp / "rules.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_prometheus_fires_gomaxprocs_alert_for_the_misconfigured_twin(tmp_path: Path) -> None:
    need_root()
    prometheus = shutil.which("prometheus")
    need(prometheus is not None, "prometheus (Debian package prometheus)")
    assert prometheus is not None
    demo = build_demo()
    agent_port, prom_port = free_port(), free_port()
    rules = short_rules(tmp_path)
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {
                        "job_name": "node-agent",
                        "honor_labels": True,
                        "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}],
                    }
                ],
            }
        )
    )
    with (
        v1_cgroup("bad", 1.0) as bad_cg,
        v1_cgroup("good", 1.0) as good_cg,
        service(demo, bad_cg, {"GOMAXPROCS": "64"}) as bad,
        service(demo, good_cg, {"GOMAXPROCS": "2"}) as good,
        load(demo, bad.url, 120),
        load(demo, good.url, 120),
    ):
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--interval", "3", "--no-kubernetes",
             "--listen", f"127.0.0.1:{agent_port}"],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "agent.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        prom = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        try:
            wait_for(lambda: get(f"http://127.0.0.1:{agent_port}/readyz")[0] == 200, 90, "the agent's /readyz")

            def firing() -> list[dict[str, Any]]:
                status, body = get(f"http://127.0.0.1:{prom_port}/api/v1/alerts")
                if status != 200:
                    return []
                alerts = json.loads(body)["data"]["alerts"]
                return [a for a in alerts if a["labels"].get("alertname") == ALERT and a["state"] == "firing"]

            alerts = wait_for(firing, 120, f"{ALERT} to fire")
            time.sleep(6)  # the twin has had as long to (wrongly) fire
            alerts = firing()
        finally:
            prom.terminate()
            agent.terminate()
            prom.wait(30)
            agent.wait(30)
        bad_name, good_name = bad_cg.path.name, good_cg.path.name
    containers = {a["labels"]["container"] for a in alerts}
    assert bad_name in containers, (containers, (tmp_path / "agent.log").read_text()[-2000:])
    assert good_name not in containers
    mine = next(a for a in alerts if a["labels"]["container"] == bad_name)
    assert "GOMAXPROCS 64 above the recommended 2" in " ".join(mine["annotations"]["summary"].split())
    assert "resourceFieldRef" in mine["annotations"]["description"]
    assert agent.returncode == 0  # SIGTERM is a clean shutdown


def test_agent_without_bpf_stays_up_and_says_why(tmp_path: Path) -> None:
    """No kernel headers: the daemon serves bpf_up 0 and a 503 /readyz with the reason, and retries."""
    port = free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--interval", "1", "--bpf-retry", "1", "--no-kubernetes",
         "--listen", f"127.0.0.1:{port}", "--kernel-headers", str(tmp_path / "no-such-headers")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 30, "/healthz")
        _status, body = wait_for(
            lambda: (r := get(f"http://127.0.0.1:{port}/readyz"))[0] == 503 and b"starting" not in r[1] and r,
            30,
            "/readyz 503 with the reason",
        )
        assert b"BPF sampler unavailable" in body and b"no-such-headers" in body
        metrics = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        assert 'node_agent_bpf_up{reason="' in metrics and "} 0.0" in metrics.split("node_agent_bpf_up{")[1]
        time.sleep(2.5)  # it retried at least once and is still up
        assert agent.poll() is None
        errors = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        assert 'node_agent_errors_total{kind="bpf_unavailable"}' in errors
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0
    assert b"Traceback" not in err
