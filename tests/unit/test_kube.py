"""agent/kube.py: pure parsers on tables, and the real `kubernetes` client against tests/fakeapi.py."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kubernetes.utils.quantity import parse_quantity as k8s_parse_quantity

from agent.analysis.pipeline import KubeSource
from agent.kube import (
    Backoff,
    ContainerMeta,
    EnvSource,
    KubeMetadata,
    PodMeta,
    WatchSettings,
    connect,
    env_source,
    load_configuration,
    normalize_container_id,
    normalize_pod_uid,
    parse_cpu,
    parse_pod,
    parse_quantity,
    workload_of,
)
from tests.support.fakeapi import FakeKubeAPI, container_id, make_container, make_pod, uid_of

FAST = WatchSettings(
    watch_timeout_s=5,
    connect_timeout_s=1.0,
    list_timeout_s=2.0,
    idle_slack_s=1.0,
    backoff_initial_s=0.02,
    backoff_cap_s=0.2,
)
WAIT = 20.0  # generous: only a failing test waits this long, and CI machines get busy

Obj = dict[str, Any]


def cid(n: int) -> str:
    """The bare container ID of make_pod(n=..)'s container k: n * 100 + k."""
    return f"{n:064x}"


# =============================================================================================
# Quantities
# =============================================================================================
QUANTITIES = [
    ("500m", 0.5),
    ("1", 1.0),
    ("2.5", 2.5),
    ("1000000n", 0.001),
    ("250000u", 0.25),
    ("12345m", 12.345),
    ("0", 0.0),
    ("0.5", 0.5),
    (".5", 0.5),
    ("+1", 1.0),
    ("1k", 1000.0),
    ("1e3", 1000.0),
    ("1E-1", 0.1),
    ("2E", 2e18),
    ("1Ki", 1024.0),
    ("1.5Gi", 1.5 * 2**30),
    ("100M", 1e8),
]


@pytest.mark.parametrize(("text", "cores"), QUANTITIES)
def test_parse_quantity_table(text: str, cores: float) -> None:
    assert parse_cpu(text) == pytest.approx(cores, rel=1e-12)
    # The client library's own parser is the oracle for the exact value.
    assert parse_quantity(text) == Decimal(k8s_parse_quantity(text))  # type: ignore[no-untyped-call]


def test_parse_quantity_is_exact() -> None:
    assert parse_quantity("1000000n") == Decimal("0.001")
    assert parse_quantity("1m") * 1000 == 1


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "m", "1mm", "1 m", "1Kb", "--1", "1e", "0x10", "1,5"])
def test_parse_quantity_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(bad)


def test_parse_cpu_numbers_none_and_negative() -> None:
    assert parse_cpu(2) == 2.0
    assert parse_cpu(1.5) == 1.5
    assert parse_cpu(None) is None
    assert parse_cpu("") is None
    with pytest.raises(ValueError, match="negative"):
        parse_cpu("-1")
    with pytest.raises(ValueError):
        parse_quantity(True)


# =============================================================================================
# Identifiers
# =============================================================================================
HEX = "3f1d0b5e8c9a7f2e4d6b1a0c9e8f7d6c5b4a3928171605f4e3d2c1b0a9f8e7d6"


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (f"containerd://{HEX}", HEX),
        (f"cri-o://{HEX}", HEX),
        (f"docker://{HEX}", HEX),
        (HEX, HEX),
        (f"CONTAINERD://{HEX.upper()}", HEX),
        (f"cri-containerd-{HEX}.scope", HEX),
        (f"crio-{HEX}.scope", HEX),
        (f"docker-{HEX}.scope", HEX),
        ("", None),
        (None, None),
        ("containerd://", None),
    ],
)
def test_container_id_prefixes(raw: str | None, want: str | None) -> None:
    assert normalize_container_id(raw) == want


def test_pod_uid_from_systemd_cgroup_form() -> None:
    assert normalize_pod_uid("6b0c2a1e_5d4f_4a3b_9c8d_7e6f5a4b3c2d") == "6b0c2a1e-5d4f-4a3b-9c8d-7e6f5a4b3c2d"
    assert normalize_pod_uid("6B0C2A1E-5D4F-4A3B-9C8D-7E6F5A4B3C2D") == "6b0c2a1e-5d4f-4a3b-9c8d-7e6f5a4b3c2d"


# =============================================================================================
# Owners
# =============================================================================================
def _owned(name: str, owner: tuple[str, str] | None, labels: dict[str, str] | None = None) -> Obj:
    return make_pod(name, n=1, owner=owner, labels=labels)


OWNERS = [
    # Deployment: ReplicaSet name minus "-<pod-template-hash>"
    (
        _owned("web-7d4b9c8f6-x2xkq", ("ReplicaSet", "web-7d4b9c8f6"), {"pod-template-hash": "7d4b9c8f6"}),
        "Deployment/web",
    ),
    (
        _owned(
            "pay-api-v2-5f9c6d7b8-qq7wz", ("ReplicaSet", "pay-api-v2-5f9c6d7b8"), {"pod-template-hash": "5f9c6d7b8"}
        ),
        "Deployment/pay-api-v2",
    ),
    # no hash label, or a label that is not the suffix: the ReplicaSet is all we know
    (_owned("web-7d4b9c8f6-x2xkq", ("ReplicaSet", "web-7d4b9c8f6")), "ReplicaSet/web-7d4b9c8f6"),
    (_owned("web-1-abcde", ("ReplicaSet", "web-1"), {"pod-template-hash": "7d4b9c8f6"}), "ReplicaSet/web-1"),
    (_owned("x-abcde", ("ReplicaSet", "7d4b9c8f6"), {"pod-template-hash": "7d4b9c8f6"}), "ReplicaSet/7d4b9c8f6"),
    # an Argo Rollout's ReplicaSet carries rollouts-pod-template-hash, not pod-template-hash
    (
        _owned("checkout-6c8d9f-abcde", ("ReplicaSet", "checkout-6c8d9f"), {"rollouts-pod-template-hash": "6c8d9f"}),
        "ReplicaSet/checkout-6c8d9f",
    ),
    (_owned("db-0", ("StatefulSet", "db")), "StatefulSet/db"),
    (_owned("fluent-bit-8kq2m", ("DaemonSet", "fluent-bit")), "DaemonSet/fluent-bit"),
    (_owned("db-migrate-7xk2p", ("Job", "db-migrate")), "Job/db-migrate"),
    # CronJob: "<cronjob>-<minutes since epoch>" (28571040 min = 2024-04-28)
    (_owned("nightly-backup-28571040-9zq5c", ("Job", "nightly-backup-28571040")), "CronJob/nightly-backup"),
    # numbers that cannot be a schedule time: a date, or 1993
    (_owned("migrate-20240101-abcde", ("Job", "migrate-20240101")), "Job/migrate-20240101"),
    (_owned("report-12345678-abcde", ("Job", "report-12345678")), "Job/report-12345678"),
    (_owned("debug-shell", None), "Pod/debug-shell"),
    (_owned("kube-apiserver-node-a", ("Node", "node-a")), "Node/node-a"),
    (_owned("redis-0", ("RedisCluster", "cache")), "RedisCluster/cache"),
]


@pytest.mark.parametrize(("pod", "want"), OWNERS)
def test_owner_table(pod: Obj, want: str) -> None:
    kind, name = workload_of(pod)
    assert f"{kind}/{name}" == want


def test_owner_prefers_the_controller_reference() -> None:
    pod = _owned("web-7d4b9c8f6-x2xkq", ("ReplicaSet", "web-7d4b9c8f6"), {"pod-template-hash": "7d4b9c8f6"})
    refs = pod["metadata"]["ownerReferences"]
    refs[0]["controller"] = True
    refs.insert(0, {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": "u"})
    assert workload_of(pod) == ("Deployment", "web")


def test_owner_from_a_replicaset_lookup_wins() -> None:
    pod = _owned("checkout-6c8d9f-abcde", ("ReplicaSet", "checkout-6c8d9f"), {"pod-template-hash": "6c8d9f"})
    assert workload_of(pod, replicaset_owner=("Rollout", "checkout")) == ("Rollout", "checkout")


# =============================================================================================
# GOMAXPROCS / GODEBUG in the spec
# =============================================================================================
def _rf(resource: str, divisor: str | None = "0", container: str | None = None) -> Obj:
    ref: Obj = {"resource": resource}
    if divisor is not None:
        ref["divisor"] = divisor  # the API serves an unset divisor as "0"
    if container:
        ref["containerName"] = container
    return {"valueFrom": {"resourceFieldRef": ref}}


def _env(name: str, **how: Any) -> Obj:
    return {"name": name, **how}


GOMAXPROCS_SPECS: list[tuple[str, list[Obj], list[Obj] | None, dict[str, str] | None, str | None, int | None]] = [
    # (case, env, envFrom, limits, describe(), resolved)
    ("absent", [], None, {"cpu": "2"}, None, None),
    ("other vars only", [_env("GOGC", value="200")], None, {"cpu": "2"}, None, None),
    ("literal", [_env("GOMAXPROCS", value="4")], None, {"cpu": "2"}, "literal:4", 4),
    ("literal empty", [_env("GOMAXPROCS", value="")], None, None, "literal:", None),
    ("name only", [_env("GOMAXPROCS")], None, None, "literal:", None),
    ("literal not a number", [_env("GOMAXPROCS", value="auto")], None, None, "literal:auto", None),
    ("last entry wins", [_env("GOMAXPROCS", value="8"), _env("GOMAXPROCS", value="2")], None, None, "literal:2", 2),
    (
        "downward limits.cpu rounds up",
        [_env("GOMAXPROCS", **_rf("limits.cpu"))],
        None,
        {"cpu": "2500m"},
        "resourceFieldRef:limits.cpu",
        3,
    ),
    (
        "downward, no divisor field",
        [_env("GOMAXPROCS", **_rf("limits.cpu", divisor=None))],
        None,
        {"cpu": "1"},
        "resourceFieldRef:limits.cpu",
        1,
    ),
    (
        "downward in millicores (a classic mistake)",
        [_env("GOMAXPROCS", **_rf("limits.cpu", divisor="1m"))],
        None,
        {"cpu": "500m"},
        "resourceFieldRef:limits.cpu,divisor=1m",
        500,
    ),
    (
        "downward limits.cpu without a limit: node allocatable",
        [_env("GOMAXPROCS", **_rf("limits.cpu"))],
        None,
        None,
        "resourceFieldRef:limits.cpu",
        None,
    ),
    (
        "downward requests.cpu",
        [_env("GOMAXPROCS", **_rf("requests.cpu"))],
        None,
        {"cpu": "250m"},
        "resourceFieldRef:requests.cpu",
        1,
    ),
    (
        "configMapKeyRef",
        [_env("GOMAXPROCS", valueFrom={"configMapKeyRef": {"name": "go-tuning", "key": "gomaxprocs"}})],
        None,
        {"cpu": "2"},
        "configMapKeyRef",
        None,
    ),
    (
        "secretKeyRef",
        [_env("GOMAXPROCS", valueFrom={"secretKeyRef": {"name": "tuning", "key": "procs", "optional": True}})],
        None,
        None,
        "secretKeyRef",
        None,
    ),
    (
        "fieldRef",
        [_env("GOMAXPROCS", valueFrom={"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels['procs']"}})],
        None,
        None,
        "fieldRef:metadata.labels['procs']",
        None,
    ),
    (
        "$(VAR) takes VAR's source",
        [_env("CPU", **_rf("limits.cpu")), _env("GOMAXPROCS", value="$(CPU)")],
        None,
        {"cpu": "4"},
        "resourceFieldRef:limits.cpu",
        4,
    ),
    (
        "$(VAR) of a literal",
        [_env("N", value="6"), _env("GOMAXPROCS", value="$(N)")],
        None,
        None,
        "literal:6",
        6,
    ),
    ("$(VAR) undefined stays as written", [_env("GOMAXPROCS", value="$(NOPE)")], None, None, "literal:$(NOPE)", None),
    (
        "$(VAR) defined later does not expand",
        [_env("GOMAXPROCS", value="$(N)"), _env("N", value="6")],
        None,
        None,
        "literal:$(N)",
        None,
    ),
    ("$$ escapes", [_env("N", value="6"), _env("GOMAXPROCS", value="$$(N)")], None, None, "literal:$(N)", None),
    ("only envFrom: cannot tell", [], [{"configMapRef": {"name": "go-env"}}], None, "envFrom", None),
    (
        "env beats envFrom",
        [_env("GOMAXPROCS", value="3")],
        [{"secretRef": {"name": "go-env"}}],
        None,
        "literal:3",
        3,
    ),
]


@pytest.mark.parametrize(
    ("env", "env_from", "limits", "want", "resolved"),
    [case[1:] for case in GOMAXPROCS_SPECS],
    ids=[case[0] for case in GOMAXPROCS_SPECS],
)
def test_gomaxprocs_spec_table(
    env: list[Obj], env_from: list[Obj] | None, limits: dict[str, str] | None, want: str | None, resolved: int | None
) -> None:
    container = make_container("app", limits=limits, env=env, env_from=env_from)
    src = env_source(container, "GOMAXPROCS")
    assert (src.describe() if src else None) == want
    assert (src.resolved if src else None) == resolved
    # and the same through a whole pod
    pod = parse_pod(make_pod("api-0", n=3, containers=[container]))
    assert pod.containers[0].gomaxprocs == src


def test_gomaxprocs_downward_from_another_container() -> None:
    app = make_container("app", limits={"cpu": "1"}, env=[_env("GOMAXPROCS", **_rf("limits.cpu", container="worker"))])
    worker = make_container("worker", limits={"cpu": "3"})
    pod = parse_pod(make_pod("api-0", n=3, containers=[app, worker]))
    src = pod.containers[0].gomaxprocs
    assert src == EnvSource("resourceFieldRef", resource="limits.cpu", container="worker", resolved=3)
    assert src.describe() == "resourceFieldRef:limits.cpu,container=worker"


def test_configmap_reference_names_but_does_not_resolve() -> None:
    c = make_container("app", env=[_env("GOMAXPROCS", valueFrom={"configMapKeyRef": {"name": "t", "key": "k"}})])
    src = env_source(c, "GOMAXPROCS")
    assert src == EnvSource("configMapKeyRef", ref="t/k")


def test_godebug_literal_and_reference() -> None:
    lit = make_container("app", env=[_env("GODEBUG", value="containermaxprocs=0,madvdontneed=1")])
    ref = make_container("side", env=[_env("GODEBUG", valueFrom={"configMapKeyRef": {"name": "go", "key": "dbg"}})])
    pod = parse_pod(make_pod("api-0", n=3, containers=[lit, ref]))
    assert pod.containers[0].godebug_literal == "containermaxprocs=0,madvdontneed=1"
    assert pod.containers[1].godebug_literal is None
    assert pod.containers[1].godebug is not None and pod.containers[1].godebug.kind == "configMapKeyRef"
    assert pod.containers[0].gomaxprocs is None


# =============================================================================================
# Whole pods
# =============================================================================================
# A StatefulSet pod roughly as cri-o clusters serve it: a native sidecar (init container with
# restartPolicy Always), a finished init container, a restarted app container, Guaranteed QoS.
REAL_POD: Obj = {
    "metadata": {
        "name": "ledger-1",
        "generateName": "ledger-",
        "namespace": "payments",
        "uid": "9f0e7a52-3c1b-4d6e-8a2f-0b9c8d7e6f51",
        "resourceVersion": "48213377",
        "creationTimestamp": "2024-06-11T07:14:02Z",
        "labels": {
            "app.kubernetes.io/name": "ledger",
            "apps.kubernetes.io/pod-index": "1",
            "controller-revision-hash": "ledger-6d5f8b7c9d",
            "statefulset.kubernetes.io/pod-name": "ledger-1",
        },
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "name": "ledger",
                "uid": "0d3c2b1a-9f8e-4d7c-6b5a-493827161504",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    },
    "spec": {
        "initContainers": [
            {
                "name": "migrate",
                "image": "ghcr.io/acme/ledger-migrate:2.3.1",
                "resources": {"limits": {"cpu": "1", "memory": "256Mi"}, "requests": {"cpu": "1", "memory": "256Mi"}},
                "env": [{"name": "GOMAXPROCS", "value": "1"}],
            },
            {
                "name": "envoy",
                "image": "envoyproxy/envoy:v1.30.2",
                "restartPolicy": "Always",
                "resources": {
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                    "requests": {"cpu": "500m", "memory": "128Mi"},
                },
            },
        ],
        "containers": [
            {
                "name": "ledger",
                "image": "ghcr.io/acme/ledger:2.3.1",
                "ports": [{"name": "grpc", "containerPort": 9090, "protocol": "TCP"}],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                    {
                        "name": "GOMAXPROCS",
                        "valueFrom": {
                            "resourceFieldRef": {"containerName": "ledger", "resource": "limits.cpu", "divisor": "0"}
                        },
                    },
                    {"name": "GODEBUG", "value": "gctrace=0"},
                ],
                "resources": {"limits": {"cpu": "2", "memory": "2Gi"}, "requests": {"cpu": "2", "memory": "2Gi"}},
            }
        ],
        "nodeName": "ip-10-0-3-17.eu-west-1.compute.internal",
        "restartPolicy": "Always",
        "overhead": {"cpu": "250m"},
    },
    "status": {
        "phase": "Running",
        "qosClass": "Guaranteed",
        "initContainerStatuses": [
            {
                "name": "migrate",
                "containerID": f"cri-o://{'1' * 64}",
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "containerID": f"cri-o://{'1' * 64}"}},
                "ready": True,
                "restartCount": 0,
            },
            {
                "name": "envoy",
                "containerID": f"cri-o://{'2' * 64}",
                "state": {"running": {"startedAt": "2024-06-11T07:14:09Z"}},
                "ready": True,
                "restartCount": 0,
                "started": True,
            },
        ],
        "containerStatuses": [
            {
                "name": "ledger",
                "containerID": f"cri-o://{'4' * 64}",
                "lastState": {
                    "terminated": {"exitCode": 2, "reason": "Error", "containerID": f"cri-o://{'3' * 64}"},
                },
                "state": {"running": {"startedAt": "2024-06-11T09:01:44Z"}},
                "ready": True,
                "restartCount": 1,
                "started": True,
            }
        ],
    },
}


def test_parse_real_pod() -> None:
    pod = parse_pod(REAL_POD)
    assert (pod.namespace, pod.name, pod.uid, pod.qos_class, pod.owner) == (
        "payments",
        "ledger-1",
        "9f0e7a52-3c1b-4d6e-8a2f-0b9c8d7e6f51",
        "Guaranteed",
        "StatefulSet/ledger",
    )
    assert pod.node == "ip-10-0-3-17.eu-west-1.compute.internal"
    assert [(c.name, c.init, c.sidecar, c.limit_cores, c.request_cores) for c in pod.containers] == [
        ("migrate", True, False, 1.0, 1.0),
        ("envoy", True, True, 0.5, 0.5),
        ("ledger", False, False, 2.0, 2.0),
    ]
    migrate, envoy, ledger = pod.containers
    assert migrate.container_id == "1" * 64 and migrate.gomaxprocs == EnvSource("literal", value="1", resolved=1)
    assert envoy.container_id == "2" * 64 and envoy.gomaxprocs is None
    assert ledger.container_id == "4" * 64 and ledger.previous_ids == ("3" * 64,)
    assert ledger.gomaxprocs == EnvSource("resourceFieldRef", resource="limits.cpu", resolved=2)
    assert ledger.godebug_literal == "gctrace=0"
    # the restarted container's old process may still be sampled: it maps to the same container
    assert pod.container_by_id(f"cri-o://{'3' * 64}") is ledger
    assert pod.container_by_id("9" * 64) is None
    # pod cgroup: app 2 + native sidecar 0.5 (> init 1) + overhead 0.25
    assert pod.limit_cores() == pytest.approx(2.75)


def test_pod_limit_unknown_when_a_container_is_unlimited() -> None:
    pod = parse_pod(
        make_pod("x-0", n=2, containers=[make_container("a", limits={"cpu": "1"}), make_container("b")], qos=None)
    )
    assert pod.limit_cores() is None
    assert pod.qos_class == "Burstable"  # computed: status has no qosClass


@pytest.mark.parametrize(
    ("containers", "qos"),
    [
        ([make_container("a")], "BestEffort"),
        ([make_container("a", limits={"cpu": "1", "memory": "1Gi"})], "Guaranteed"),
        ([make_container("a", limits={"cpu": "1"})], "Burstable"),
        (
            [make_container("a", limits={"cpu": "1", "memory": "1Gi"}, requests={"cpu": "500m", "memory": "1Gi"})],
            "Burstable",
        ),
    ],
)
def test_qos_when_status_has_none(containers: list[Obj], qos: str) -> None:
    assert parse_pod(make_pod("x-0", n=2, containers=containers, qos=None)).qos_class == qos


def test_bad_quantity_costs_the_field_not_the_pod() -> None:
    pod = parse_pod(make_pod("x-0", n=2, containers=[make_container("a", limits={"cpu": "lots"})]))
    assert pod.containers[0].limit_cores is None


@pytest.mark.parametrize(
    "obj",
    [
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "7", "creationTimestamp": None},
            "spec": {"containers": None},
            "status": {},
        },  # a bookmark is not a pod
        {"metadata": {"name": "x", "uid": "u"}},
        {},
    ],
)
def test_not_a_pod(obj: Obj) -> None:
    with pytest.raises(ValueError, match="not a pod"):
        parse_pod(obj)


def test_container_meta_has_the_pipeline_fields() -> None:
    pod = parse_pod(REAL_POD)
    meta = ContainerMeta.of(pod, pod.containers[2])
    assert (meta.namespace, meta.pod, meta.container, meta.owner) == (
        "payments",
        "ledger-1",
        "ledger",
        "StatefulSet/ledger",
    )
    assert meta.spec_gomaxprocs == "resourceFieldRef:limits.cpu" and meta.limit_cores == 2.0
    assert meta.godebug == "gctrace=0" and meta.container_id == "4" * 64
    pod_level = ContainerMeta.of(pod, None)
    assert pod_level.container is None and pod_level.spec_gomaxprocs is None
    assert pod_level.limit_cores == pytest.approx(2.75)


# =============================================================================================
# Backoff
# =============================================================================================
def test_backoff_grows_to_the_cap_with_bounded_jitter() -> None:
    b = Backoff(initial=0.1, cap=1.0, factor=2.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next() for _ in range(10)]
    bases = [min(1.0, 0.1 * 2**i) for i in range(10)]
    for d, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= d <= base
    assert max(delays) <= 1.0
    assert len({round(d, 9) for d in delays[5:]}) > 1  # jittered, not lockstep
    b.reset()
    assert 0.05 <= b.next() <= 0.1


def test_backoff_many_attempts_do_not_overflow() -> None:
    b = Backoff(initial=1.0, cap=30.0, rng=random.Random(2))
    b.attempt = 5000
    assert 15.0 <= b.next() <= 30.0


# =============================================================================================
# Configuration
# =============================================================================================
def test_explicit_configuration_wins(tmp_path: Path) -> None:
    marker = object()
    cfg, how = load_configuration(marker, environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert cfg is marker and how == "explicit"


def test_in_cluster_configuration(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("eyJhbGciOiJSUzI1NiJ9.sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg, how = load_configuration(environ=env, service_account_dir=tmp_path)
    assert how == "in-cluster" and cfg is not None
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.api_key["BearerToken"] == "bearer eyJhbGciOiJSUzI1NiJ9.sa-token"
    assert cfg.ssl_ca_cert == str(tmp_path / "ca.crt")


def test_no_api_access_is_disabled_not_an_error(tmp_path: Path) -> None:
    env = {"NODE_NAME": "node-a", "HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    kube = connect(environ=env, service_account_dir=tmp_path / "nope")
    st = kube.status()
    assert not kube.enabled and st.state == "disabled" and not st.enabled
    assert "in-cluster" in st.reason and "kubeconfig" in st.reason
    assert kube.start() is kube and kube.lookup(uid_of(1), None) is None
    assert kube.snapshot() == {}
    assert kube.stop()
    assert kube.status().state == "disabled"


def test_no_node_name_is_disabled(api: FakeKubeAPI) -> None:
    kube = connect(configuration=api.configuration(), environ={})
    assert kube.status().state == "disabled" and "NODE_NAME" in kube.status().reason


def test_kubeconfig_end_to_end(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.create_pod(make_pod("web-0", n=1))
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {api.url}
users:
- name: agent
  user:
    token: abc
contexts:
- name: fake
  context: {{cluster: fake, user: agent}}
current-context: fake
"""
    )
    kube = connect(environ={"NODE_NAME": "node-a", "KUBECONFIG": str(kubeconfig)}, settings=FAST)
    assert kube.status().reason == f"kubeconfig {kubeconfig}"
    with kube:
        assert kube.wait_synced(WAIT)
        meta = kube.lookup(uid_of(1), container_id(100))
        assert meta is not None and meta.container == "app"


# =============================================================================================
# The watch, against the fake apiserver
# =============================================================================================
@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Every watch thread and every fake-server thread a test starts is gone when it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while (extra := [t for t in threading.enumerate() if t not in before]) and time.monotonic() < deadline:
        extra[0].join(0.05)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as server:
        yield server


Make = Callable[..., KubeMetadata]


@pytest.fixture
def watcher() -> Iterator[Make]:
    made: list[KubeMetadata] = []

    def make(api: FakeKubeAPI, node: str = "node-a", **settings: Any) -> KubeMetadata:
        kube = KubeMetadata(node, api.configuration(), settings=replace(FAST, **settings), rng=random.Random(7))
        made.append(kube)
        return kube.start()

    yield make
    for kube in made:
        assert kube.stop(), "the watch thread did not stop"


def _deployment_pod(name: str, n: int, node: str = "node-a") -> Obj:
    rs = name.rsplit("-", 1)[0]
    return make_pod(
        name, n=n, node=node, owner=("ReplicaSet", rs), labels={"app": "web", "pod-template-hash": rs.rsplit("-", 1)[1]}
    )


def _synced_watch(api: FakeKubeAPI, kube: KubeMetadata) -> None:
    assert kube.wait_synced(WAIT)
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)


def test_initial_sync_lists_and_watches_this_node_only(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(_deployment_pod("web-7d4b9c8f6-x2xkq", 1))
    api.create_pod(make_pod("db-0", n=2, owner=("StatefulSet", "db")))
    api.create_pod(make_pod("elsewhere-0", n=3, node="node-b"))
    kube = watcher(api)
    _synced_watch(api, kube)
    assert set(kube.snapshot()) == {uid_of(1), uid_of(2)}
    st = kube.status()
    assert st.synced and st.state == "watching" and st.lists == 1 and st.relists == 0
    assert st.resource_version == api.resource_version

    lists, watches = api.list_requests(), api.watch_requests()
    assert len(lists) == 1 and len(watches) == 1
    assert lists[0].path == "/api/v1/pods"
    assert lists[0].query == {"fieldSelector": "spec.nodeName=node-a", "resourceVersion": "0"}
    w = watches[0].query
    assert w["fieldSelector"] == "spec.nodeName=node-a"
    assert w["resourceVersion"] == st.resource_version
    assert w["allowWatchBookmarks"] == "true"
    assert 5 <= int(w["timeoutSeconds"]) <= 10
    assert {r.path for r in api.requests} == {"/api/v1/pods"}  # never the kubelet, never other resources

    meta = kube.lookup(uid_of(1), container_id(100))
    assert meta is not None
    assert (meta.namespace, meta.pod, meta.container, meta.owner) == (
        "shop",
        "web-7d4b9c8f6-x2xkq",
        "app",
        "Deployment/web",
    )
    assert meta.limit_cores == 2.0 and meta.qos_class == "Burstable" and meta.node == "node-a"


def test_lookup_semantics(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("db-0", n=2, owner=("StatefulSet", "db"), runtime="cri-o"))
    kube = watcher(api)
    _synced_watch(api, kube)
    by_id = kube.lookup(uid_of(2), cid(200))
    assert by_id is not None and by_id.container == "app" and by_id.container_id == cid(200)
    # cgroup forms: systemd underscores in the UID, scope names for the container
    same = kube.lookup(uid_of(2).replace("-", "_"), f"crio-{cid(200)}.scope")
    assert same == by_id
    pod_level = kube.lookup(uid_of(2), None)
    assert pod_level is not None and pod_level.container is None and pod_level.owner == "StatefulSet/db"
    unknown_container = kube.lookup(uid_of(2), cid(999))
    assert unknown_container is not None and unknown_container.container is None
    assert kube.lookup(uid_of(77), None) is None
    # a wrong pod UID with a known container ID still finds the container
    found = kube.lookup(uid_of(77), f"cri-o://{cid(200)}")
    assert found is not None and found.pod == "db-0"


def test_added_modified_deleted_are_applied(api: FakeKubeAPI, watcher: Make) -> None:
    kube = watcher(api)
    _synced_watch(api, kube)
    assert kube.snapshot() == {}

    rv = api.create_pod(_deployment_pod("web-7d4b9c8f6-x2xkq", 1))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert kube.lookup(uid_of(1), container_id(100)) is not None

    def restart(pod: Obj) -> None:  # the container restarted: new ID, old one in lastState
        st = pod["status"]["containerStatuses"][0]
        st["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "containerID": st["containerID"]}}
        st["containerID"] = container_id(199)
        st["restartCount"] = 1

    rv = api.update_pod(uid_of(1), restart)
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    new = kube.lookup(uid_of(1), container_id(199))
    old = kube.lookup(uid_of(1), container_id(100))
    assert new is not None and new.container == "app" and new.container_id == cid(199)
    assert old is not None and old.container == "app"

    rv = api.delete_pod(uid_of(1))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert kube.lookup(uid_of(1), None) is None and kube.snapshot() == {}
    assert kube.lookup("whatever", container_id(199)) is None  # the container index forgot it too
    st = kube.status()
    assert st.events == {"ADDED": 1, "MODIFIED": 1, "DELETED": 1}
    assert st.lists == 1 and st.errors == 0


def test_pod_bound_to_this_node_later_appears(api: FakeKubeAPI, watcher: Make) -> None:
    pending = make_pod("batch-x7k2p", n=5, node="", owner=("Job", "batch"), phase="Pending")
    del pending["spec"]["nodeName"]
    api.create_pod(pending)
    kube = watcher(api)
    _synced_watch(api, kube)
    assert kube.snapshot() == {}
    api.update_pod(uid_of(5), lambda p: p["spec"].update(nodeName="node-a"))
    assert kube.wait_until(lambda: uid_of(5) in kube.snapshot(), WAIT)
    assert kube.status().events == {"ADDED": 1}
    # rescheduled away (delete+recreate elsewhere is usual; a selector change still reads as DELETED)
    api.update_pod(uid_of(5), lambda p: p["spec"].update(nodeName="node-b"))
    assert kube.wait_until(lambda: uid_of(5) not in kube.snapshot(), WAIT)


def test_bookmarks_advance_the_resource_version(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("mine-0", n=1))
    kube = watcher(api)
    _synced_watch(api, kube)
    start_rv = kube.status().resource_version
    # Churn on other nodes moves the global RV; none of it reaches this watch.
    for i in range(5):
        api.create_pod(make_pod(f"other-{i}", n=10 + i, node="node-b"))
    assert kube.status().resource_version == start_rv
    api.send_bookmark()
    assert kube.wait_until(lambda: kube.status().resource_version == api.resource_version, WAIT)
    assert kube.status().events.get("BOOKMARK") == 1
    assert set(kube.snapshot()) == {uid_of(1)}  # a bookmark is not a pod

    # Why it matters: after compaction, a reconnect from the bookmark's RV is still valid.
    bookmark_rv = kube.status().resource_version
    api.compact()
    n = len(api.requests)
    api.drop_watches()
    again = api.wait_for_request(lambda r: r.is_watch, WAIT, after=n)
    assert again.query["resourceVersion"] == bookmark_rv
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)
    st = kube.status()
    assert st.lists == 1 and st.expired == 0


def test_expired_event_relists_and_converges(api: FakeKubeAPI, watcher: Make) -> None:
    for n in (1, 2, 3):
        api.create_pod(make_pod(f"svc-{n}", n=n))
    kube = watcher(api)
    _synced_watch(api, kube)
    stale_rv = kube.status().resource_version

    # An outage long enough for the apiserver to compact away our RV; things change meanwhile.
    api.stop()
    api.delete_pod(uid_of(1))
    api.update_pod(uid_of(2), lambda p: p["metadata"]["labels"].update(version="2"))
    api.create_pod(make_pod("svc-4", n=4))
    api.create_pod(make_pod("elsewhere", n=5, node="node-b"))
    api.compact()
    api.start()

    assert kube.wait_until(lambda: kube.status().lists == 2 and kube.status().state == "watching", WAIT)
    assert set(kube.snapshot()) == {uid_of(2), uid_of(3), uid_of(4)}
    st = kube.status()
    assert st.expired == 1 and st.relists == 1 and st.resource_version == api.resource_version
    assert "410" in (st.last_error or "") or "Expired" in (st.last_error or "")
    expired_watch = [r for r in api.watch_requests() if r.query["resourceVersion"] == stale_rv][-1]
    relist = api.list_requests()[-1]
    assert relist.at > expired_watch.at
    assert "resourceVersion" not in relist.query  # after a 410: the latest state, not the cache's "0"
    rewatch = api.wait_for_request(lambda r: r.is_watch and r.at > relist.at, WAIT)
    assert rewatch.query["resourceVersion"] == api.resource_version


def test_expired_as_http_410_relists(watcher: Make) -> None:
    with FakeKubeAPI(expired_as_http=True) as api:
        api.create_pod(make_pod("a-0", n=1))
        kube = watcher(api)
        _synced_watch(api, kube)
        api.stop()
        api.delete_pod(uid_of(1))
        api.create_pod(make_pod("b-0", n=2))
        api.compact()
        api.start()
        assert kube.wait_until(lambda: kube.status().lists == 2, WAIT)
        assert set(kube.snapshot()) == {uid_of(2)}
        assert kube.status().expired == 1
        kube.stop()


def test_repeated_410_backs_off_instead_of_spinning(api: FakeKubeAPI, watcher: Make) -> None:
    api.fail_next(1000, status=410, watch_only=True)  # an apiserver that expires every watch
    kube = watcher(api, backoff_initial_s=0.05, backoff_cap_s=0.2)
    assert kube.wait_until(lambda: kube.status().expired >= 3, WAIT)
    time.sleep(0.6)
    st = kube.status()
    # first 410: relist at once; then 0.025+, 0.05+, 0.1+ ... : a handful, not hundreds
    assert st.lists <= 3 + 0.6 / 0.1 + 2, st
    assert st.expired <= st.lists <= st.expired + 1
    assert st.synced and st.state in {"backoff", "listing", "watching"}


def test_watch_that_ends_at_once_is_not_a_busy_loop(watcher: Make) -> None:
    with FakeKubeAPI(max_watch_seconds=0) as api:
        kube = watcher(api, backoff_initial_s=0.05, backoff_cap_s=0.2)
        assert kube.wait_until(lambda: kube.status().errors >= 3, WAIT)
        time.sleep(0.6)
        st = kube.status()
        assert len(api.watch_requests()) <= 3 + 0.6 / 0.1 + 2
        assert st.lists == 1 and "no events" in (st.last_error or "")
        kube.stop()


def test_dropped_connection_resumes_from_last_rv_without_relist(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    kube = watcher(api)
    _synced_watch(api, kube)
    rv = api.create_pod(make_pod("b-0", n=2))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)

    n = len(api.requests)
    # cut mid-chunk, right after a change the client must not lose
    rv_c = api.create_pod(make_pod("c-0", n=3))
    assert api.drop_watches() == 1
    resumed = api.wait_for_request(lambda r: r.is_watch, WAIT, after=n)
    assert resumed.query["resourceVersion"] in {rv, rv_c}  # c may or may not have arrived before the cut
    assert kube.wait_until(lambda: uid_of(3) in kube.snapshot(), WAIT)
    rv_d = api.create_pod(make_pod("d-0", n=4))
    assert kube.wait_until(lambda: kube.status().resource_version == rv_d, WAIT)
    st = kube.status()
    assert st.lists == 1 and st.expired == 0 and st.errors >= 1
    assert "ProtocolError" in (st.last_error or "")
    assert set(kube.snapshot()) == {uid_of(1), uid_of(2), uid_of(3), uid_of(4)}


def test_watch_500_resumes_without_relist(api: FakeKubeAPI, watcher: Make) -> None:
    kube = watcher(api)
    _synced_watch(api, kube)
    rv = kube.status().resource_version
    api.fail_next(2, status=500, watch_only=True)
    n = len(api.requests)
    api.drop_watches()
    assert api.wait_for(lambda: len([r for r in api.requests[n:] if r.is_watch]) == 3, WAIT)
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)
    assert kube.wait_until(lambda: kube.status().state == "watching", WAIT)
    retried = [r for r in api.requests[n:] if r.is_watch]
    assert len(retried) == 3 and {r.query["resourceVersion"] for r in retried} == {rv}
    st = kube.status()
    assert st.lists == 1 and st.errors == 3 and st.state == "watching"
    gaps = [b.at - a.at for a, b in itertools.pairwise(retried)]
    assert all(g >= 0.01 for g in gaps)  # backed off between attempts (initial 0.02 s, half jittered)


def test_list_errors_back_off_then_sync(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    api.fail_next(2, status=503, list_only=True)
    kube = watcher(api)
    assert kube.wait_synced(WAIT)
    st = kube.status()
    assert st.errors == 2 and "503" in (st.last_error or "") and st.lists == 1
    assert len(api.list_requests()) == 3


def test_forbidden_says_what_to_grant(api: FakeKubeAPI, watcher: Make) -> None:
    api.fail_next(1, status=403, list_only=True)
    kube = watcher(api)
    assert kube.wait_synced(WAIT)
    st = kube.status()
    assert st.errors == 1 and "HTTP 403" in (st.last_error or "") and "ClusterRole" in (st.last_error or "")
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)


def test_stalled_list_times_out_and_retries(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    api.stall_next(1)
    kube = watcher(api, list_timeout_s=0.3)
    assert kube.wait_synced(WAIT)
    st = kube.status()
    assert st.errors == 1 and "ReadTimeoutError" in (st.last_error or "")


def test_silent_watch_times_out_and_resumes(api: FakeKubeAPI, watcher: Make) -> None:
    # A half-open connection (an apiserver that vanished without a FIN) must not hang us forever:
    # the read timeout is timeoutSeconds plus a slack.
    kube = watcher(api, watch_timeout_s=1, idle_slack_s=0.3)
    _synced_watch(api, kube)
    rv = kube.status().resource_version
    api.stall_next(1)
    n = len(api.requests)
    api.drop_watches()
    assert api.wait_for(lambda: len([r for r in api.requests[n:] if r.is_watch]) >= 2, WAIT)
    st = kube.status()
    assert "ReadTimeoutError" in (st.last_error or "") and st.lists == 1
    assert {r.query["resourceVersion"] for r in api.requests[n:] if r.is_watch} == {rv}


def test_outage_backs_off_then_recovers(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    kube = watcher(api, backoff_initial_s=0.02, backoff_cap_s=0.16)
    _synced_watch(api, kube)
    api.stop()
    t0 = time.monotonic()
    assert kube.wait_until(lambda: kube.status().errors >= 4, WAIT)
    early = time.monotonic() - t0
    time.sleep(0.8)
    errors = kube.status().errors
    # 0.02, 0.04, 0.08, 0.16, 0.16... (each at least half that): nowhere near a busy loop
    assert errors <= 4 + 0.8 / 0.08 + 2
    assert early >= 0.06  # three sleeps of at least 0.01, 0.02, 0.04
    st = kube.status()
    assert st.synced and st.pods == 1  # stale but kept
    assert "MaxRetryError" in (st.last_error or "") or "ProtocolError" in (st.last_error or "")

    api.create_pod(make_pod("b-0", n=2))  # a change during the outage, history kept
    api.start()
    assert kube.wait_until(lambda: uid_of(2) in kube.snapshot(), WAIT)
    assert kube.wait_until(lambda: kube.status().state == "watching", WAIT)
    assert kube.status().lists == 1  # resumed from its RV: nothing was compacted


def test_watch_is_renewed_on_timeout(api: FakeKubeAPI, watcher: Make) -> None:
    kube = watcher(api, watch_timeout_s=1)
    _synced_watch(api, kube)
    assert api.wait_for(lambda: len(api.watch_requests()) >= 2, WAIT)
    rv = api.create_pod(make_pod("late-0", n=9))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    st = kube.status()
    assert st.watch_restarts >= 1 and st.lists == 1 and st.errors == 0
    assert all(1 <= int(r.query["timeoutSeconds"]) <= 2 for r in api.watch_requests())


def test_stop_is_prompt_while_watching(api: FakeKubeAPI) -> None:
    kube = KubeMetadata("node-a", api.configuration(), settings=replace(FAST, watch_timeout_s=60)).start()
    _synced_watch(api, kube)
    t0 = time.monotonic()
    assert kube.stop()
    assert time.monotonic() - t0 < 2.0  # vs a 60 s watch and 30 s backoff
    assert kube.status().state == "stopped"
    assert api.wait_for(lambda: api.watchers() == 0, WAIT)


def test_stop_is_prompt_while_backing_off(api: FakeKubeAPI) -> None:
    api.fail_next(100, status=500, list_only=True)
    kube = KubeMetadata("node-a", api.configuration(), settings=replace(FAST, backoff_initial_s=30, backoff_cap_s=60))
    kube.start()
    assert kube.wait_until(lambda: kube.status().state == "backoff", WAIT)
    t0 = time.monotonic()
    assert kube.stop()
    assert time.monotonic() - t0 < 2.0  # vs a 60 s watch and 30 s backoff


def test_malformed_objects_are_counted_not_fatal(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod({"metadata": {"uid": "no-namespace", "name": "x"}, "spec": {"nodeName": "node-a"}})
    api.create_pod(make_pod("ok-0", n=1))
    kube = watcher(api)
    _synced_watch(api, kube)
    assert set(kube.snapshot()) == {uid_of(1)} and kube.status().bad_objects == 1
    rv = api.create_pod({"metadata": {"uid": "also-bad", "name": "y"}, "spec": {"nodeName": "node-a"}})
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert kube.status().bad_objects == 2 and kube.status().state == "watching"


def test_store_is_bounded(api: FakeKubeAPI, watcher: Make) -> None:
    for n in (1, 2, 3):
        api.create_pod(make_pod(f"p-{n}", n=n))
    kube = watcher(api, max_pods=2)
    _synced_watch(api, kube)
    assert len(kube.snapshot()) == 2 and kube.status().dropped_pods == 1
    rv = api.create_pod(make_pod("p-4", n=4))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert len(kube.snapshot()) == 2 and kube.status().dropped_pods == 2


def _replicaset(name: str, owner: tuple[str, str]) -> Obj:
    return {
        "kind": "ReplicaSet",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716",
            "ownerReferences": [
                {
                    "apiVersion": "argoproj.io/v1alpha1",
                    "kind": owner[0],
                    "name": owner[1],
                    "uid": "r",
                    "controller": True,
                }
            ],
        },
        "spec": {"replicas": 2},
    }


def test_replicaset_owner_via_api(api: FakeKubeAPI, watcher: Make) -> None:
    api.replicasets[("shop", "checkout-6c8d9f")] = _replicaset("checkout-6c8d9f", ("Rollout", "checkout"))
    pods = [
        make_pod(f"checkout-6c8d9f-{n}", n=n, owner=("ReplicaSet", "checkout-6c8d9f"), labels={"app": "checkout"})
        for n in (1, 2)
    ]
    pods[1]["metadata"]["ownerReferences"] = pods[0]["metadata"]["ownerReferences"]  # one ReplicaSet, two pods
    for pod in pods:
        api.create_pod(pod)
    kube = watcher(api, resolve_replicasets=True)
    _synced_watch(api, kube)
    assert {p.owner for p in kube.snapshot().values()} == {"Rollout/checkout"}
    gets = [r.path for r in api.requests if "/replicasets/" in r.path]
    assert gets == ["/apis/apps/v1/namespaces/shop/replicasets/checkout-6c8d9f"]  # cached by the RS's UID


def test_replicaset_get_forbidden_falls_back_to_the_hash(api: FakeKubeAPI, watcher: Make) -> None:
    api.fail_next(1, status=403, path_contains="/replicasets/")
    api.create_pod(_deployment_pod("web-7d4b9c8f6-x2xkq", 1))
    api.create_pod(_deployment_pod("api-5f9c6d7b8-qq7wz", 2))
    kube = watcher(api, resolve_replicasets=True)
    _synced_watch(api, kube)
    assert {p.owner for p in kube.snapshot().values()} == {"Deployment/web", "Deployment/api"}
    assert len([r for r in api.requests if "/replicasets/" in r.path]) == 1  # asked once, then stopped asking
    assert "replicasets get" in (kube.status().last_error or "")


def test_is_the_pipelines_kube_source(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    source: KubeSource = watcher(api)  # mypy checks the structural contract with agent.analysis.pipeline
    assert isinstance(source, KubeMetadata) and source.wait_synced(WAIT)
    meta = source.lookup(uid_of(1), cid(100))
    assert meta is not None and (meta.namespace, meta.pod, meta.container) == ("shop", "a-0", "app")


def test_snapshot_is_a_copy(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    kube = watcher(api)
    _synced_watch(api, kube)
    snap = kube.snapshot()
    snap.clear()
    assert len(kube.snapshot()) == 1
    assert all(isinstance(p, PodMeta) for p in kube.snapshot().values())
