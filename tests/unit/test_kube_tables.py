"""agent/kube/ pure parts as tables: quantities, container IDs, owners, how a spec sets
GOMAXPROCS/GODEBUG, whole pods (against kubectl-shaped objects), backoff.

Quantities are checked against the kubernetes client's own parser.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
from kubernetes.utils.quantity import parse_quantity as k8s_parse_quantity

from agent.kube.spec import (
    ContainerMeta,
    EnvSource,
    SourceKind,
    env_source,
    normalize_container_id,
    normalize_pod_uid,
    parse_cpu,
    parse_pod,
    parse_quantity,
    workload_of,
)
from agent.kube.watch import Backoff
from tests.support.fakeapi import make_container, make_pod

Obj = dict[str, Any]

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
    assert src == EnvSource(SourceKind.RESOURCE_FIELD_REF, resource="limits.cpu", container="worker", resolved=3)
    assert src.describe() == "resourceFieldRef:limits.cpu,container=worker"


def test_configmap_reference_names_but_does_not_resolve() -> None:
    c = make_container("app", env=[_env("GOMAXPROCS", valueFrom={"configMapKeyRef": {"name": "t", "key": "k"}})])
    src = env_source(c, "GOMAXPROCS")
    assert src == EnvSource(SourceKind.CONFIG_MAP_KEY_REF, ref="t/k")


def test_godebug_literal_and_reference() -> None:
    lit = make_container("app", env=[_env("GODEBUG", value="containermaxprocs=0,madvdontneed=1")])
    ref = make_container("side", env=[_env("GODEBUG", valueFrom={"configMapKeyRef": {"name": "go", "key": "dbg"}})])
    pod = parse_pod(make_pod("api-0", n=3, containers=[lit, ref]))
    assert pod.containers[0].godebug_literal == "containermaxprocs=0,madvdontneed=1"
    assert pod.containers[1].godebug_literal is None
    assert pod.containers[1].godebug is not None and pod.containers[1].godebug.kind is SourceKind.CONFIG_MAP_KEY_REF
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
    assert migrate.container_id == "1" * 64
    assert migrate.gomaxprocs == EnvSource(SourceKind.LITERAL, value="1", resolved=1)
    assert envoy.container_id == "2" * 64 and envoy.gomaxprocs is None
    assert ledger.container_id == "4" * 64 and ledger.previous_ids == ("3" * 64,)
    assert ledger.gomaxprocs == EnvSource(SourceKind.RESOURCE_FIELD_REF, resource="limits.cpu", resolved=2)
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
    assert meta.spec_gomaxprocs is not None and meta.spec_gomaxprocs.describe() == "resourceFieldRef:limits.cpu"
    assert meta.limit_cores == 2.0
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
