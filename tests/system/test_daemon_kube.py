"""The real daemon joins a kubelet-shaped cgroup with the pod watch.

A Go service runs in a real v1 cpu cgroup laid out as kubelet's cgroupfs
driver does (.../kubepods/burstable/pod<uid>/<container id>) with a 1-CPU quota
on the pod; a fake API server (real list/watch protocol) serves that pod
with GOMAXPROCS=64 set literally in its spec. `node-agent run`, given a
kubeconfig for it, must export the workload's namespace/pod/container
labels and explain the misconfiguration by the spec.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.capabilities import need_root
from tests.support.fakeapi import FakeKubeAPI, gomaxprocs_pod, kubeconfig
from tests.support.loopback import free_port, get, running_agent, scrape, wait_for
from tests.support.workloads import build_demo, kubelet_pod_cgroup, load, service


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_daemon_labels_kubernetes_workloads_from_cgroup_and_pod_watch(tmp_path: Path) -> None:
    need_root()
    demo = build_demo()
    pod = gomaxprocs_pod("web-7d9f8b6c5-x2kqz", n=4242)
    labels = {"namespace": "shop", "pod": "web-7d9f8b6c5-x2kqz", "container": "app"}
    port = free_port()
    with (
        kubelet_pod_cgroup(pod["metadata"]["uid"], pod["status"]["containerStatuses"][0]["containerID"], "kube") as cg,
        FakeKubeAPI() as api,
        service(demo, cg, {"GOMAXPROCS": "64"}) as svc,
        load(demo, svc.url, 60),
    ):
        api.create_pod(pod)
        cfg = kubeconfig(tmp_path / "kubeconfig", api.url)
        with running_agent(
            tmp_path / "agent.log", port, "--node-name", "node-a", "--profiles", env={"KUBECONFIG": str(cfg)}
        ) as agent:

            def flagged() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                m = scrape(port)
                hits = [v for lbl, v in m.get("node_agent_go_misconfigured", []) if lbl.items() >= labels.items()]
                return m if hits else None

            metrics = wait_for(flagged, 120, "the pod's misconfigured series")
            profiles = get(f"http://127.0.0.1:{port}/profiles/shop/web-7d9f8b6c5-x2kqz/app")
        selectors = {r.query.get("fieldSelector") for r in api.requests if r.path == "/api/v1/pods"}
    log = (tmp_path / "agent.log").read_text()

    def value(name: str) -> float:
        got = [v for lbl, v in metrics.get(name, []) if lbl.items() >= labels.items()]
        assert got, (name, log[-2000:])
        return float(got[0])

    assert value("node_agent_go_gomaxprocs") == 64
    assert value("node_agent_go_gomaxprocs_recommended") == 2
    assert value("node_agent_container_cpu_limit_cores") == 1.0
    cpu = {lbl["category"]: v for lbl, v in metrics["node_agent_go_cpu_seconds_total"] if lbl.items() >= labels.items()}
    assert set(cpu) == {"scheduler", "gc", "runtime_other", "user", "unknown"} and sum(cpu.values()) > 0
    assert profiles[0] == 200 and profiles[1][:2] == b"\x1f\x8b"
    assert agent.returncode == 0
    assert selectors == {"spec.nodeName=node-a"}, selectors  # only this node's pods, never cluster-wide
