"""The real daemon joins a kubelet-shaped cgroup with the pod watch.

A Go service runs in a real v1 cpu cgroup laid out as kubelet's cgroupfs
driver does (.../kubepods/burstable/pod<uid>/<container id>) with a 1-CPU quota
on the pod; a fake API server (real list/watch protocol) serves that pod
with GOMAXPROCS=64 set literally in its spec. `node-agent run`, given a
kubeconfig for it, must export the workload's namespace/pod/container
labels and explain the misconfiguration by the spec.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.lab.cgroupwriter import remove_cgroup
from tests.support.capabilities import need_root
from tests.support.fakeapi import FakeKubeAPI, make_container, make_pod, uid_of
from tests.support.workloads import V1_CPU, Cgroup, build_demo, load, need_v1_cpu_cgroup, service
from tests.system.test_e2e_prometheus import free_port, get, wait_for


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "agent", "user": {"token": "test"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}],
                "current-context": "fake",
            }
        )
    )
    return path


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_daemon_labels_kubernetes_workloads_from_cgroup_and_pod_watch(tmp_path: Path) -> None:
    need_root()
    need_v1_cpu_cgroup()
    demo = build_demo()
    n = 4242
    pod_uid = uid_of(n)
    cid = f"{n * 100:064x}"  # make_pod gives container k the ID container_id(n * 100 + k)
    pod = make_pod(
        "web-7d9f8b6c5-x2kqz",
        n=n,
        node="node-a",
        namespace="shop",
        owner=("ReplicaSet", "web-7d9f8b6c5"),
        labels={"app": "web", "pod-template-hash": "7d9f8b6c5"},
        containers=[make_container("app", limits={"cpu": "1"}, env=[{"name": "GOMAXPROCS", "value": "64"}])],
    )
    # Nested under a parent of our own, as kind nests kubelet's tree under /docker/<id>/.
    root = V1_CPU / f"node-agent-test-{os.getpid()}"
    pod_dir = root / "kubepods" / "burstable" / f"pod{pod_uid}"
    ctr_dir = pod_dir / cid
    port = free_port()
    try:
        ctr_dir.mkdir(parents=True)
        Cgroup(pod_dir).set_limit(1.0)  # the pod-level limit is the effective one
        with (
            FakeKubeAPI() as api,
            service(demo, Cgroup(ctr_dir), {"GOMAXPROCS": "64"}) as svc,
            load(demo, svc.url, 60),
        ):
            api.create_pod(pod)
            cfg = kubeconfig(tmp_path / "kubeconfig", api.url)
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--interval", "3", "--listen", f"127.0.0.1:{port}",
                 "--node-name", "node-a", "--profiles"],
                env={**os.environ, "KUBECONFIG": str(cfg)},
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / "agent.log", "wb"),  # noqa: SIM115
            )  # fmt: skip
            try:
                labels = {"namespace": "shop", "pod": "web-7d9f8b6c5-x2kqz", "container": "app"}

                def flagged() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                    m = scrape(port)
                    hits = [v for lbl, v in m.get("node_agent_go_misconfigured", []) if lbl.items() >= labels.items()]
                    return m if hits else None

                metrics = wait_for(flagged, 120, "the pod's misconfigured series")
                profiles = get(f"http://127.0.0.1:{port}/profiles/shop/web-7d9f8b6c5-x2kqz/app")
            finally:
                agent.terminate()
                agent.wait(30)
            selectors = {r.query.get("fieldSelector") for r in api.requests if r.path == "/api/v1/pods"}
    finally:
        remove_cgroup(root)
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
