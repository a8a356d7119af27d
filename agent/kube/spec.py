"""A pod object as the API serves it -> the facts node-agent uses (pure: no I/O).

Quantities, container IDs, owners, how a container's spec sets GOMAXPROCS and
GODEBUG, and one pod JSON -> :class:`PodMeta`. Everything here reads a pod a
tenant wrote, so it tolerates any shape: a bad field costs that field, an
object that is not a pod raises ValueError.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from enum import StrEnum
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
class SourceKind(StrEnum):
    """How a pod spec sets an environment variable."""

    LITERAL = "literal"
    RESOURCE_FIELD_REF = "resourceFieldRef"
    FIELD_REF = "fieldRef"
    CONFIG_MAP_KEY_REF = "configMapKeyRef"
    SECRET_KEY_REF = "secretKeyRef"
    ENV_FROM = "envFrom"  # not in env: it may come from an envFrom ConfigMap/Secret we do not read
    UNRESOLVED = "unresolved"  # over the expansion budget; ``ref`` says which limit


# What one pod may make us hold or compute per variable: Kubernetes itself expands $(VAR)
# without limits, so 30 entries of "$(PREV)$(PREV)" are 2**30 bytes. GOMAXPROCS is a
# number and GODEBUG a short list; anything longer is not worth a byte of the daemon's memory.
MAX_EXPANDED = 1024  # characters of one expanded value
MAX_DEPTH = 16  # $(A) -> $(B) -> ... references followed
MAX_NAME = 256  # names, keys, paths, IDs (the API's own limit is 253)
MAX_IMAGE = 512
MAX_CONTAINERS = 64  # per pod (init and app); beyond this a container is not described


def _cap(text: object, limit: int = MAX_NAME) -> str:
    """A tenant's string, at most ``limit`` characters (kept facts are bounded, not escaped)."""
    out = text if isinstance(text, str) else str(text)
    return out[:limit]


@dataclass(frozen=True)
class EnvSource:
    """Where one environment variable's value comes from, as written in the pod spec."""

    kind: SourceKind
    value: str | None = None  # literal text (expanded), at most MAX_EXPANDED characters
    resource: str | None = None  # resourceFieldRef: "limits.cpu", "requests.cpu", ...
    divisor: str | None = None  # resourceFieldRef divisor, None when 1 (the API shows "0" for unset)
    container: str | None = None  # resourceFieldRef.containerName, when it names another container
    ref: str | None = None  # "name/key" of a ConfigMap/Secret, fieldPath of a fieldRef, why UNRESOLVED
    resolved: int | None = None  # the integer the process will see, when the spec alone says

    def describe(self) -> str:
        """Short form for people: ``literal:64``, ``resourceFieldRef:limits.cpu``..."""
        if self.kind is SourceKind.LITERAL:
            return f"literal:{self.value}"
        if self.kind is SourceKind.RESOURCE_FIELD_REF:
            text = f"resourceFieldRef:{self.resource}"
            if self.divisor:
                text += f",divisor={self.divisor}"
            if self.container:
                text += f",container={self.container}"
            return text
        if self.kind in (SourceKind.FIELD_REF, SourceKind.UNRESOLVED):
            return f"{self.kind}:{self.ref}"
        return str(self.kind)


# Kubernetes' expansion syntax (third_party/forked/golang/expansion): "$$" is an escaped "$";
# "$(NAME)" is a reference, NAME being anything up to the first ")"; every other "$" is literal.
_VAR_REF = re.compile(r"\$\$|\$\(([^)]*)\)")


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
    except (ValueError, ZeroDivisionError, TypeError):
        return None


def _name_key(ref: Obj) -> str:
    return f"{_cap(ref.get('name', ''))}/{_cap(ref.get('key', ''))}"


def _source_of(entry: Obj, container: Obj, by_name: Mapping[str, Obj]) -> EnvSource:
    """One env entry's source before expansion (a literal keeps its raw text, capped by the caller)."""
    vf = _dict(entry.get("valueFrom"))
    if rf := _dict(vf.get("resourceFieldRef")):
        resource = _cap(rf.get("resource", ""))
        div = rf.get("divisor")
        divisor = None
        if div not in (None, "", "0", "1", 0, 1):
            divisor = _cap(div)
        other = _cap(rf.get("containerName") or "")
        target = by_name.get(other) if other else container
        return EnvSource(
            SourceKind.RESOURCE_FIELD_REF,
            resource=resource,
            divisor=divisor,
            container=other if other and other != container.get("name") else None,
            resolved=_downward_cpu(resource, divisor, target),
        )
    if ref := _dict(vf.get("configMapKeyRef")):
        return EnvSource(SourceKind.CONFIG_MAP_KEY_REF, ref=_name_key(ref))
    if ref := _dict(vf.get("secretKeyRef")):
        return EnvSource(SourceKind.SECRET_KEY_REF, ref=_name_key(ref))
    if ref := _dict(vf.get("fieldRef")):
        return EnvSource(SourceKind.FIELD_REF, ref=_cap(ref.get("fieldPath", "")))
    text = entry.get("value")
    return EnvSource(SourceKind.LITERAL, value="" if text is None else str(text))


def _unresolved(why: str) -> EnvSource:
    return EnvSource(SourceKind.UNRESOLVED, ref=why)


class _ContainerEnv:
    """A container's ``env`` list, expanded lazily: only the entries a wanted variable reaches.

    Kubernetes expands each entry in order against the entries before it, so a reference
    points strictly backwards (no cycles); memoized, each entry is expanded at most once and
    produces at most MAX_EXPANDED characters, and chains stop at MAX_DEPTH.
    """

    def __init__(self, container: Obj, by_name: Mapping[str, Obj]) -> None:
        self._container = container
        self._by_name = by_name
        self._entries: list[Obj] = []
        self._positions: dict[str, list[int]] = {}
        for entry in _list(container.get("env")):
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"]:
                self._positions.setdefault(entry["name"], []).append(len(self._entries))
                self._entries.append(entry)
        self._memo: dict[int, EnvSource] = {}

    def source(self, name: str) -> EnvSource | None:
        """How ``name`` is set: its last entry wins; None when the env list does not set it."""
        where = self._positions.get(name)
        return self._at(where[-1], 0) if where else None

    def _before(self, name: str, index: int) -> int | None:
        """The entry a reference to ``name`` from entry ``index`` sees: the last one before it."""
        where = self._positions.get(name, [])
        i = bisect.bisect_left(where, index)
        return where[i - 1] if i else None

    def _at(self, index: int, depth: int) -> EnvSource:
        if index not in self._memo:
            self._memo[index] = self._expand(index, depth)
        return self._memo[index]

    def _expand(self, index: int, depth: int) -> EnvSource:
        src = _source_of(self._entries[index], self._container, self._by_name)
        if src.kind is not SourceKind.LITERAL or src.value is None:
            return src
        text = src.value
        if len(text) > MAX_EXPANDED:
            return _unresolved(f"value longer than {MAX_EXPANDED} characters")
        if "$" not in text:
            return EnvSource(SourceKind.LITERAL, value=text, resolved=_literal_int(text))
        whole = _VAR_REF.fullmatch(text)
        if whole and whole[1] is not None and (j := self._before(whole[1], index)) is not None:
            if depth >= MAX_DEPTH:
                return _unresolved(f"references nested deeper than {MAX_DEPTH}")
            ref = self._at(j, depth + 1)
            if ref.kind is not SourceKind.LITERAL:
                return ref  # GOMAXPROCS=$(CPU): the process sees what CPU's source gives
        out: list[str] = []
        size = 0
        last = 0
        for m in _VAR_REF.finditer(text):
            piece = m[0]
            if m[0] == "$$":
                piece = "$"
            elif (j := self._before(m[1], index)) is not None:
                if depth >= MAX_DEPTH:
                    return _unresolved(f"references nested deeper than {MAX_DEPTH}")
                ref = self._at(j, depth + 1)
                if ref.kind is SourceKind.UNRESOLVED:
                    return ref
                if ref.kind is SourceKind.LITERAL and ref.value is not None:
                    piece = ref.value
                # A reference to a value the spec does not hold stays as written (unknown here).
            chunk = text[last : m.start()]
            size += len(chunk) + len(piece)
            if size > MAX_EXPANDED:
                return _unresolved(f"expands past {MAX_EXPANDED} characters")
            out += (chunk, piece)
            last = m.end()
        out.append(text[last:])
        value = "".join(out)
        if len(value) > MAX_EXPANDED:
            return _unresolved(f"expands past {MAX_EXPANDED} characters")
        return EnvSource(SourceKind.LITERAL, value=value, resolved=_literal_int(value))


def env_sources(
    container: Obj, names: tuple[str, ...], containers: Mapping[str, Obj] | None = None
) -> dict[str, EnvSource | None]:
    """How ``container``'s spec sets each of ``names`` (None: it does not); only those are expanded.

    Kubernetes semantics: the last entry of a name wins; ``$(VAR)`` in a value expands
    earlier entries (so ``GOMAXPROCS=$(CPU)`` takes CPU's source); an unset name may
    still come from ``envFrom`` (a ConfigMap/Secret we do not read).
    """
    env = _ContainerEnv(container, containers or {})
    env_from = bool(_list(container.get("envFrom")))
    out: dict[str, EnvSource | None] = {}
    for name in names:
        src = env.source(name)
        out[name] = src if src is not None else (EnvSource(SourceKind.ENV_FROM) if env_from else None)
    return out


def env_source(container: Obj, name: str, containers: Mapping[str, Obj] | None = None) -> EnvSource | None:
    """How ``container``'s spec sets env var ``name``; see :func:`env_sources`."""
    return env_sources(container, (name,), containers)[name]


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
        return self.godebug.value if self.godebug is not None and self.godebug.kind is SourceKind.LITERAL else None


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

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def over_budget(self) -> bool:
        """Some container's GOMAXPROCS or GODEBUG was left unresolved by the expansion caps."""
        return any(
            src is not None and src.kind is SourceKind.UNRESOLVED
            for c in self.containers
            for src in (c.gomaxprocs, c.godebug)
        )

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
    spec_gomaxprocs: EnvSource | None  # how the spec sets GOMAXPROCS; None when it does not
    limit_cores: float | None
    pod_uid: str
    node: str | None
    qos_class: str | None
    owner_kind: str
    owner_name: str
    container_id: str | None = None
    request_cores: float | None = None
    init: bool = False
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
            spec_gomaxprocs=c.gomaxprocs,
            limit_cores=c.limit_cores,
            container_id=c.container_id,
            request_cores=c.request_cores,
            init=c.init,
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
    if max(len(uid), len(name), len(ns)) > MAX_NAME:
        raise ValueError(f"metadata.uid/name/namespace longer than {MAX_NAME} characters")
    ids: dict[str, tuple[str | None, tuple[str, ...]]] = {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for st in _list(status.get(key)):
            if isinstance(st, Mapping) and st.get("name"):
                last = _dict(_dict(st.get("lastState")).get("terminated")).get("containerID")
                old = normalize_container_id(_cap(last) if isinstance(last, str) else None)
                now = st.get("containerID")
                ids[_cap(st["name"])] = (
                    normalize_container_id(_cap(now) if isinstance(now, str) else None),
                    (old,) if old else (),
                )
    init_specs = [c for c in _list(spec.get("initContainers")) if isinstance(c, Mapping) and c.get("name")]
    app_specs = [c for c in _list(spec.get("containers")) if isinstance(c, Mapping) and c.get("name")]
    by_name = {_cap(c["name"]): c for c in init_specs + app_specs}
    containers: list[ContainerSpec] = []
    for is_init, specs in ((True, init_specs), (False, app_specs)):
        for c in specs[: MAX_CONTAINERS - len(containers)]:
            res = _dict(c.get("resources"))
            cid, prev = ids.get(_cap(c["name"]), (None, ()))
            env = env_sources(c, ("GOMAXPROCS", "GODEBUG"), by_name)
            containers.append(
                ContainerSpec(
                    name=_cap(c["name"]),
                    container_id=cid,
                    init=is_init,
                    image=_cap(c.get("image", ""), MAX_IMAGE),
                    limit_cores=_quantity_or_none(_dict(res.get("limits")).get("cpu")),
                    request_cores=_quantity_or_none(_dict(res.get("requests")).get("cpu")),
                    gomaxprocs=env["GOMAXPROCS"],
                    godebug=env["GODEBUG"],
                    sidecar=is_init and c.get("restartPolicy") == "Always",
                    previous_ids=prev,
                )
            )
    qos = status.get("qosClass")
    node, phase, rv = spec.get("nodeName"), status.get("phase"), meta.get("resourceVersion")
    owner_kind, owner_name = workload_of(obj, replicaset_owner=replicaset_owner)
    return PodMeta(
        namespace=ns,
        name=name,
        uid=normalize_pod_uid(uid),
        node=_cap(node) if node else None,
        qos_class=_cap(qos) if qos else _qos_fallback(spec),
        owner_kind=_cap(owner_kind),
        owner_name=_cap(owner_name),
        containers=tuple(containers),
        phase=_cap(phase) if phase else None,
        resource_version=_cap(rv) if rv else None,
        overhead_cores=_quantity_or_none(_dict(spec.get("overhead")).get("cpu")),
    )
