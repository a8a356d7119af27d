"""The kustomize install: base in deploy/, overlays in overlays/, rendered by the real
`kubectl kustomize` and checked with the real `kubernetes-validate --strict` at the minimum
Kubernetes version the README names (and shown to fail one version below, for its reason)."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.capabilities import need
from tests.unit.test_deploy import CRD_SHAPES, shape_errors

yaml: Any = importlib.import_module("yaml")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = REPO / "overlays"
README = (REPO / "README.md").read_text()
IMAGE = "ghcr.io/example/node-agent"
MIN_K8S = (1, 30)
# What Kubernetes 1.29 lacks that the DaemonSet uses (the README says why it needs them).
BELOW_MIN_REASON = "appArmorProfile"


def kubectl() -> str:
    path = shutil.which("kubectl")
    need(path is not None, "kubectl (scripts/setup.sh installs Debian's kubernetes-client when absent)")
    assert path is not None
    res = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, check=False)
    version = json.loads(res.stdout or "{}").get("kustomizeVersion", "none")
    found = re.match(r"v?(\d+)\.", version)
    need(found is not None and int(found.group(1)) >= 4, f"kubectl with kustomize >= v4 (this kubectl has {version})")
    return path


def render(path: Path) -> list[dict[str, Any]]:
    res = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def names(docs: list[dict[str, Any]]) -> set[str]:
    return {f"{d['kind']}/{d['metadata'].get('namespace', '')}/{d['metadata']['name']}" for d in docs}


def find(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def file_docs(*files: str) -> list[dict[str, Any]]:
    return [d for f in files for d in yaml.safe_load_all((DEPLOY / f).read_text()) if d]


def test_base_renders_the_manifests_and_the_dashboard() -> None:
    docs = render(DEPLOY)
    files = file_docs("daemonset.yaml", "networkpolicy.yaml", "podmonitor.yaml", "prometheusrule.yaml")
    assert names(docs) == names(files) | {"ConfigMap/node-agent/node-agent-dashboard"}
    # The files are taken as they are (only the image goes through `images:`).
    for doc in files:
        rendered = next(d for d in docs if (d["kind"], d["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"]))
        assert rendered == doc, doc["kind"]
    cm = find(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["node-agent.json"]) == json.loads(
        (DEPLOY / "dashboards" / "node-agent.json").read_text()
    )


def test_image_is_a_kustomize_images_entry(tmp_path: Path) -> None:
    """An overlay of one's own sets the image without touching any YAML of ours."""
    base = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert [i["name"] for i in base["images"]] == [IMAGE]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY, mine)],
                "images": [{"name": IMAGE, "newName": "registry.example.com/team/node-agent", "newTag": "1.2.3"}],
            }
        )
    )
    ds = find(render(mine), "DaemonSet")
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/team/node-agent:1.2.3"


def test_plain_overlay_has_no_operator_objects() -> None:
    docs = render(OVERLAYS / "plain")
    kinds = {d["kind"] for d in docs}
    assert kinds.isdisjoint({"PodMonitor", "PrometheusRule"})
    assert {"DaemonSet", "NetworkPolicy", "ConfigMap", "ClusterRole"} <= kinds


def test_kube_prometheus_stack_overlay_labels_what_its_selectors_need() -> None:
    docs = render(OVERLAYS / "kube-prometheus-stack")
    for kind in ("PodMonitor", "PrometheusRule"):
        assert find(docs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    cm = find(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"  # the sidecar's default: Grafana's own namespace
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    # Everything else is the base's.
    base = render(DEPLOY)
    assert names(docs) == (names(base) - {"ConfigMap/node-agent/node-agent-dashboard"}) | {
        "ConfigMap/monitoring/node-agent-dashboard"
    }


def test_network_policy_admits_only_the_monitoring_namespace_to_the_metrics_port() -> None:
    docs = render(DEPLOY)
    np = find(docs, "NetworkPolicy")["spec"]
    pod = find(docs, "DaemonSet")["spec"]["template"]
    assert np["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert np["policyTypes"] == ["Ingress"]
    (rule,) = np["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    (port,) = rule["ports"]
    container_ports = {p["name"]: p for p in pod["spec"]["containers"][0]["ports"]}
    assert port == {"port": "metrics", "protocol": "TCP"}
    assert container_ports[port["port"]]["containerPort"] == 9464


def validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    need(tool.exists(), "kubernetes-validate (pip, test extra)")
    return subprocess.run(
        [str(tool), "--strict", "--no-warn", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("target", ["deploy", "overlays/plain", "overlays/kube-prometheus-stack"])
def test_manifests_need_exactly_the_minimum_kubernetes_version(tmp_path: Path, target: str) -> None:
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(render(REPO / target)))
    major, minor = MIN_K8S
    ok = validate(out, f"{major}.{minor}.0")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    below = validate(out, f"{major}.{minor - 1}.0")
    assert below.returncode != 0
    assert f"'{BELOW_MIN_REASON}' was unexpected" in below.stdout + below.stderr


@pytest.mark.parametrize("target", ["deploy", "overlays/kube-prometheus-stack"])
def test_rendered_operator_objects_match_their_crds(target: str) -> None:
    """kubernetes-validate has no schema for the Prometheus Operator's kinds: test_deploy's CRD shapes."""
    docs = [d for d in render(REPO / target) if (d["apiVersion"], d["kind"]) in CRD_SHAPES]
    assert sorted(d["kind"] for d in docs) == ["PodMonitor", "PrometheusRule"]
    for doc in docs:
        assert shape_errors(doc, CRD_SHAPES[(doc["apiVersion"], doc["kind"])]) == [], doc["kind"]


def test_readme_states_the_minimum_version_and_its_reason() -> None:
    major, minor = MIN_K8S
    assert f"Kubernetes {major}.{minor}" in README
    install = README[README.index("### Install") :]
    assert BELOW_MIN_REASON in install[: install.index("\n## ")]
