"""A pod object as the API serves it -> the facts node-agent uses (pure: no I/O).

Quantities, container IDs, owners, how a container's spec sets GOMAXPROCS and
GODEBUG, and one pod JSON -> :class:`PodMeta`. Everything here reads a pod a
tenant wrote, so it tolerates any shape: a bad field costs that field, an
object that is not a pod raises ValueError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

Obj = Mapping[str, Any]

# ---------------------------------------------------------------------------------------------
# Quantities
# ---------------------------------------------------------------------------------------------
_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<bin>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<dec>[numkMGTPE])|[eE](?P<exp>[+-]?\d+))?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes resource.Quantity ("500m", "2.5", "1e3", "1Ki") as an exact Decimal."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"not a quantity: {value!r}")
    try:
        num = Decimal(m["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"not a quantity: {value!r}") from exc
    if m["bin"]:
        return num * _BINARY[m["bin"]]
    if m["dec"]:
        return num.scaleb(_DECIMAL[m["dec"]])
    if m["exp"]:
        return num.scaleb(int(m["exp"]))
    return num


def parse_cpu(value: str | int | float | None) -> float | None:
    """CPU quantity -> cores; None when absent. Negative CPU is invalid in a pod spec."""
    if value is None or value == "":
        return None
    q = parse_quantity(value)
    if q < 0:
        raise ValueError(f"negative CPU quantity: {value!r}")
    return float(q)


def _millis(q: Decimal) -> int:
    # resource.Quantity.MilliValue() rounds up.
    return int((q * 1000).to_integral_value(rounding=ROUND_CEILING))


# ---------------------------------------------------------------------------------------------
# Identifiers
# ---------------------------------------------------------------------------------------------
_RUNTIME_PREFIX = re.compile(r"^[a-z][a-z0-9+.-]*://")
_SCOPE_FORM = re.compile(r"^(?:cri-containerd|crio|docker|containerd|libpod)-([0-9a-f]{12,})(?:\.scope)?$")


def normalize_container_id(raw: str | None) -> str | None:
    """``containerd://<id>``, ``cri-o://<id>``, ``docker://<id>``, ``crio-<id>.scope`` -> ``<id>``."""
    if not raw:
        return None
    text = raw.strip().lower()
    text = _RUNTIME_PREFIX.sub("", text, count=1)
    if m := _SCOPE_FORM.match(text):
        text = m[1]
    return text or None


def normalize_pod_uid(raw: str) -> str:
    """Pod UIDs in systemd cgroup names use underscores (``pod1a2b_3c4d...``); the API uses dashes."""
    return raw.strip().lower().replace("_", "-")


# ---------------------------------------------------------------------------------------------
# Owners
# ---------------------------------------------------------------------------------------------
# The CronJob controller names Jobs "<cronjob>-<scheduled time in minutes since the epoch>".
# Only numbers that are plausible as such (2015..2100) count, so "migrate-20240101" stays a Job.
_CRONJOB_JOB = re.compile(r"^(?P<cron>.+)-(?P<minutes>\d{8,10})$")
_CRON_MINUTES = (23_667_840, 68_374_080)


def controller_ref(pod: Obj) -> Obj | None:
    refs = [r for r in _list(_dict(pod.get("metadata")).get("ownerReferences")) if isinstance(r, Mapping)]
    for ref in refs:
        if ref.get("controller"):
            return ref
    return refs[0] if refs else None


def workload_of(pod: Obj, *, replicaset_owner: tuple[str, str] | None = None) -> tuple[str, str]:
    """The workload that owns a pod as (kind, name): Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod.

    A ReplicaSet is named "<deployment>-<pod-template-hash>", and the hash is on the pod as a
    label, so stripping it names the Deployment without a GET on the ReplicaSet (which would
    need ``replicasets get``). ``replicaset_owner``, when the caller did GET it, wins.
    """
    meta = _dict(pod.get("metadata"))
    ref = controller_ref(pod)
    if ref is None:
        return "Pod", str(meta.get("name", ""))
    kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
    if kind == "ReplicaSet":
        if replicaset_owner is not None:
            return replicaset_owner
        pth = str(_dict(meta.get("labels")).get("pod-template-hash", ""))
        if pth and name.endswith("-" + pth) and len(name) > len(pth) + 1:
            return "Deployment", name[: -len(pth) - 1]
        return kind, name
    m = _CRONJOB_JOB.match(name) if kind == "Job" else None
    if m is not None and _CRON_MINUTES[0] <= int(m["minutes"]) <= _CRON_MINUTES[1]:
        return "CronJob", m["cron"]
    return kind, name


# ---------------------------------------------------------------------------------------------
# How the spec sets GOMAXPROCS / GODEBUG
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvSource:
    """Where one environment variable's value comes from, as written in the pod spec."""

    kind: str  # literal | resourceFieldRef | fieldRef | configMapKeyRef | secretKeyRef | envFrom
    value: str | None = None  # literal text
    resource: str | None = None  # resourceFieldRef: "limits.cpu", "requests.cpu", ...
    divisor: str | None = None  # resourceFieldRef divisor, None when 1 (the API shows "0" for unset)
    container: str | None = None  # resourceFieldRef.containerName, when it names another container
    ref: str | None = None  # "name/key" of a ConfigMap/Secret, fieldPath of a fieldRef
    resolved: int | None = None  # the integer the process will see, when the spec alone says

    def describe(self) -> str:
        """Short form for reports and the verdict: ``literal:64``, ``resourceFieldRef:limits.cpu``..."""
        if self.kind == "literal":
            return f"literal:{self.value}"
        if self.kind == "resourceFieldRef":
            text = f"resourceFieldRef:{self.resource}"
            if self.divisor:
                text += f",divisor={self.divisor}"
            if self.container:
                text += f",container={self.container}"
            return text
        if self.kind == "fieldRef":
            return f"fieldRef:{self.ref}"
        return self.kind


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _literal_int(text: str) -> int | None:
    try:
        n = int(text.strip())
    except ValueError:
        return None
    return n if n > 0 else None


def _downward_cpu(resource: str, divisor: str | None, target: Obj | None) -> int | None:
    """What the kubelet injects for a cpu resourceFieldRef: ceil(millis / divisor millis)."""
    if target is None or resource not in {"limits.cpu", "requests.cpu"}:
        return None
    kind, _, _ = resource.partition(".")
    raw = _dict(_dict(target.get("resources")).get(kind)).get("cpu")
    if raw in (None, ""):
        # limits.cpu unset: the kubelet substitutes node allocatable (unknown here).
        # requests.cpu unset: the zero quantity.
        return None if kind == "limits" else 0
    try:
        div = _millis(parse_quantity(divisor)) if divisor else 1000
        return math.ceil(_millis(parse_quantity(raw)) / div)
    except (ValueError, ZeroDivisionError):
        return None


def _source_of(entry: Obj, container: Obj, by_name: Mapping[str, Obj]) -> EnvSource:
    vf = _dict(entry.get("valueFrom"))
    if rf := _dict(vf.get("resourceFieldRef")):
        resource = str(rf.get("resource", ""))
        div = rf.get("divisor")
        divisor = None
        if div not in (None, "", "0", "1", 0, 1):
            divisor = str(div)
        other = str(rf.get("containerName") or "")
        target = by_name.get(other) if other else container
        return EnvSource(
            "resourceFieldRef",
            resource=resource,
            divisor=divisor,
            container=other if other and other != container.get("name") else None,
            resolved=_downward_cpu(resource, divisor, target),
        )
    if ref := _dict(vf.get("configMapKeyRef")):
        return EnvSource("configMapKeyRef", ref=f"{ref.get('name', '')}/{ref.get('key', '')}")
    if ref := _dict(vf.get("secretKeyRef")):
        return EnvSource("secretKeyRef", ref=f"{ref.get('name', '')}/{ref.get('key', '')}")
    if ref := _dict(vf.get("fieldRef")):
        return EnvSource("fieldRef", ref=str(ref.get("fieldPath", "")))
    text = entry.get("value")
    text = "" if text is None else str(text)
    return EnvSource("literal", value=text, resolved=_literal_int(text))


def env_source(container: Obj, name: str, containers: Mapping[str, Obj] | None = None) -> EnvSource | None:
    """How ``container``'s spec sets env var ``name``; None when it does not.

    Kubernetes semantics: the last entry of a name wins; ``$(VAR)`` in a value expands
    earlier entries (so ``GOMAXPROCS=$(CPU)`` takes CPU's source); an unset name may
    still come from ``envFrom`` (a ConfigMap/Secret we do not read).
    """
    by_name = containers or {}
    seen: dict[str, EnvSource] = {}
    for entry in _list(container.get("env")):
        if not isinstance(entry, Mapping) or not entry.get("name"):
            continue
        src = _source_of(entry, container, by_name)
        if src.kind == "literal" and src.value and "$(" in src.value:
            src = _expand(src.value, seen)
        seen[str(entry["name"])] = src
    if name in seen:
        return seen[name]
    if _list(container.get("envFrom")):
        return EnvSource("envFrom")
    return None


def _expand(text: str, seen: Mapping[str, EnvSource]) -> EnvSource:
    whole = _VAR_REF.fullmatch(text)
    if whole and whole[1] and whole[1] in seen:
        return seen[whole[1]]

    def sub(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        src = seen.get(m[1])
        if src is not None and src.kind == "literal" and src.value is not None:
            return src.value
        return m[0]  # unknown or not literal: Kubernetes leaves it as written

    out = _VAR_REF.sub(sub, text)
    return EnvSource("literal", value=out, resolved=_literal_int(out))


# ---------------------------------------------------------------------------------------------
# Pods
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerSpec:
    name: str
    container_id: str | None  # runtime prefix stripped
    init: bool
    image: str
    limit_cores: float | None
    request_cores: float | None
    gomaxprocs: EnvSource | None  # None: the spec does not set it
    godebug: EnvSource | None
    sidecar: bool = False  # an init container with restartPolicy: Always (runs for the pod's life)
    previous_ids: tuple[str, ...] = ()  # lastState.terminated IDs: the old process may still be seen

    @property
    def godebug_literal(self) -> str | None:
        return self.godebug.value if self.godebug is not None and self.godebug.kind == "literal" else None


@dataclass(frozen=True)
class PodMeta:
    namespace: str
    name: str
    uid: str
    node: str | None
    qos_class: str | None
    owner_kind: str
    owner_name: str
    containers: tuple[ContainerSpec, ...]
    phase: str | None = None
    resource_version: str | None = None
    overhead_cores: float | None = None

    @property
    def owner(self) -> str:
        return f"{self.owner_kind}/{self.owner_name}"

    def container_by_id(self, container_id: str | None) -> ContainerSpec | None:
        cid = normalize_container_id(container_id)
        if cid is None:
            return None
        for c in self.containers:
            if c.container_id == cid:
                return c
        for c in self.containers:
            if cid in c.previous_ids:
                return c
        return None

    def limit_cores(self) -> float | None:
        """The pod cgroup's limit: max(sum of app+sidecar limits, any init limit) + overhead."""
        running = [c for c in self.containers if not c.init or c.sidecar]
        if not running or any(c.limit_cores is None for c in running):
            return None
        total = sum(c.limit_cores or 0.0 for c in running)
        inits = [c.limit_cores for c in self.containers if c.init and not c.sidecar]
        if any(x is None for x in inits):
            return None
        total = max([total, *(x or 0.0 for x in inits)])
        return total + (self.overhead_cores or 0.0)


@dataclass(frozen=True)
class ContainerMeta:
    """One lookup's answer. The first six fields are what the pipeline's join reads."""

    namespace: str
    pod: str
    container: str | None  # None: the pod is known but not this container
    owner: str  # "Deployment/web"
    spec_gomaxprocs: str | None  # EnvSource.describe(), None when the spec does not set it
    limit_cores: float | None
    pod_uid: str
    node: str | None
    qos_class: str | None
    owner_kind: str
    owner_name: str
    container_id: str | None = None
    request_cores: float | None = None
    init: bool = False
    gomaxprocs: EnvSource | None = None
    godebug: str | None = None  # literal GODEBUG from the spec
    godebug_source: EnvSource | None = None

    @classmethod
    def of(cls, pod: PodMeta, c: ContainerSpec | None) -> ContainerMeta:
        common: dict[str, Any] = {
            "namespace": pod.namespace,
            "pod": pod.name,
            "owner": pod.owner,
            "pod_uid": pod.uid,
            "node": pod.node,
            "qos_class": pod.qos_class,
            "owner_kind": pod.owner_kind,
            "owner_name": pod.owner_name,
        }
        if c is None:
            return cls(container=None, spec_gomaxprocs=None, limit_cores=pod.limit_cores(), **common)
        return cls(
            container=c.name,
            spec_gomaxprocs=c.gomaxprocs.describe() if c.gomaxprocs else None,
            limit_cores=c.limit_cores,
            container_id=c.container_id,
            request_cores=c.request_cores,
            init=c.init,
            gomaxprocs=c.gomaxprocs,
            godebug=c.godebug_literal,
            godebug_source=c.godebug,
            **common,
        )


def _dict(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _quantity_or_none(raw: Any) -> float | None:
    try:
        return parse_cpu(raw)
    except (ValueError, TypeError):
        return None  # one bad quantity costs that field, not the pod


def _qos_fallback(spec: Obj) -> str:
    """kubelet's GetPodQOS, for objects whose status has no qosClass yet."""
    every = [c for key in ("containers", "initContainers") for c in _list(spec.get(key)) if isinstance(c, Mapping)]
    any_set = False
    guaranteed = bool(every)
    for c in every:
        res = _dict(c.get("resources"))
        lim, req = _dict(res.get("limits")), _dict(res.get("requests"))
        for r in ("cpu", "memory"):
            if lim.get(r) or req.get(r):
                any_set = True
            if not lim.get(r) or (req.get(r) and _quantity_or_none(req.get(r)) != _quantity_or_none(lim.get(r))):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def parse_pod(obj: Obj, *, replicaset_owner: tuple[str, str] | None = None) -> PodMeta:
    """One pod object (JSON as the API serves it) -> PodMeta. Raises ValueError if it is not a pod."""
    meta, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
    uid, name, ns = meta.get("uid"), meta.get("name"), meta.get("namespace")
    if not (isinstance(uid, str) and uid and isinstance(name, str) and name and isinstance(ns, str) and ns):
        raise ValueError("object without metadata.uid/name/namespace is not a pod")
    ids: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for st in _list(status.get(key)):
            if isinstance(st, Mapping) and st.get("name"):
                last = _dict(_dict(st.get("lastState")).get("terminated")).get("containerID")
                old = normalize_container_id(last if isinstance(last, str) else None)
                now = st.get("containerID")
                ids[str(st["name"])] = (
                    normalize_container_id(now if isinstance(now, str) else None),
                    (old,) if old else (),
                )
    init_specs = [c for c in _list(spec.get("initContainers")) if isinstance(c, Mapping) and c.get("name")]
    app_specs = [c for c in _list(spec.get("containers")) if isinstance(c, Mapping) and c.get("name")]
    by_name = {str(c["name"]): c for c in init_specs + app_specs}
    containers: list[ContainerSpec] = []
    for is_init, specs in ((True, init_specs), (False, app_specs)):
        for c in specs:
            res = _dict(c.get("resources"))
            cid, prev = ids.get(str(c["name"]), (None, ()))
            containers.append(
                ContainerSpec(
                    name=str(c["name"]),
                    container_id=cid,
                    init=is_init,
                    image=str(c.get("image", "")),
                    limit_cores=_quantity_or_none(_dict(res.get("limits")).get("cpu")),
                    request_cores=_quantity_or_none(_dict(res.get("requests")).get("cpu")),
                    gomaxprocs=env_source(c, "GOMAXPROCS", by_name),
                    godebug=env_source(c, "GODEBUG", by_name),
                    sidecar=is_init and c.get("restartPolicy") == "Always",
                    previous_ids=prev,
                )
            )
    qos = status.get("qosClass")
    return PodMeta(
        namespace=ns,
        name=name,
        uid=normalize_pod_uid(uid),
        node=spec.get("nodeName") or None,
        qos_class=str(qos) if qos else _qos_fallback(spec),
        owner_kind=(owner := workload_of(obj, replicaset_owner=replicaset_owner))[0],
        owner_name=owner[1],
        containers=tuple(containers),
        phase=status.get("phase"),
        resource_version=meta.get("resourceVersion"),
        overhead_cores=_quantity_or_none(_dict(spec.get("overhead")).get("cpu")),
    )
