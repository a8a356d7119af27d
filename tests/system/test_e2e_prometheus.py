"""End to end: a real Prometheus scrapes `node-agent run`; the GOMAXPROCS alert fires for the
misconfigured service (GOMAXPROCS=64 in a 1-CPU cgroup, under load) and not for its twin.

The alert rules are the shipped deploy/rules file with only `for:` shortened.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.capabilities import need_root
from tests.support.loopback import free_port, running_agent, wait_for
from tests.support.prometheus import GOMAXPROCS_ALERT, firing, prometheus
from tests.support.workloads import build_demo, load, service, v1_cgroup


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_prometheus_fires_gomaxprocs_alert_for_the_misconfigured_twin(tmp_path: Path) -> None:
    need_root()
    demo = build_demo()
    agent_port = free_port()
    with (
        v1_cgroup("bad", 1.0) as bad_cg,
        v1_cgroup("good", 1.0) as good_cg,
        service(demo, bad_cg, {"GOMAXPROCS": "64"}) as bad,
        service(demo, good_cg, {"GOMAXPROCS": "2"}) as good,
        load(demo, bad.url, 120),
        load(demo, good.url, 120),
        running_agent(tmp_path / "agent.log", agent_port, "--no-kubernetes") as agent,
        prometheus(tmp_path, {"node-agent": agent_port}) as prom_port,
    ):
        wait_for(lambda: firing(prom_port, GOMAXPROCS_ALERT), 120, f"{GOMAXPROCS_ALERT} to fire")
        time.sleep(6)  # the twin has had as long to (wrongly) fire
        alerts = firing(prom_port, GOMAXPROCS_ALERT)
        bad_name, good_name = bad_cg.path.name, good_cg.path.name
    containers = {a["labels"]["container"] for a in alerts}
    assert bad_name in containers, (containers, (tmp_path / "agent.log").read_text()[-2000:])
    assert good_name not in containers
    mine = next(a for a in alerts if a["labels"]["container"] == bad_name)
    assert "GOMAXPROCS 64 above the recommended 2" in " ".join(mine["annotations"]["summary"].split())
    assert "resourceFieldRef" in mine["annotations"]["description"]
    assert agent.returncode == 0  # SIGTERM is a clean shutdown
