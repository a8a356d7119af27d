"""Node-scoped pod metadata: one list+watch of this node's pods, kept in a thread-safe store.

Why a watch and not the kubelet's ``/pods``: the kubelet endpoint needs node-level
credentials and is polled, while one field-selected watch (``spec.nodeName=$NODE_NAME``)
costs the apiserver almost nothing and tells us about a pod as soon as it is bound.
The loop is client-go's reflector in miniature: list (RV "0", served from the
apiserver's cache), then watch from the list's resourceVersion with bookmarks; a watch
that ends (timeoutSeconds) or breaks resumes from the last RV seen; only a 410 Gone
(as HTTP status or as an ERROR event) forces a relist; other failures back off
exponentially with jitter up to a cap.

The first half of the module is pure: quantities, container IDs, owners, how the spec
sets GOMAXPROCS, one pod JSON -> :class:`PodMeta`. The second half is the I/O:
:func:`load_configuration`, :func:`connect` and :class:`KubeMetadata`. Without API
access the module says "disabled" and lookups return None; the caller falls back to
what the cgroup path tells it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import load_kube_config

from agent.lru import BoundedCache

log = logging.getLogger(__name__)

Obj = Mapping[str, Any]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

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


# ---------------------------------------------------------------------------------------------
# Backoff
# ---------------------------------------------------------------------------------------------
@dataclass
class Backoff:
    """Exponential backoff with "equal jitter": half the delay fixed, half random, under a cap.

    The fixed half keeps a fleet of agents from hammering a recovering apiserver; the random
    half keeps them from doing it in lockstep.
    """

    initial: float = 0.8
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return base * (1.0 - self.jitter) + base * self.jitter * self.rng.random()

    def reset(self) -> None:
        self.attempt = 0


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
def load_configuration(
    configuration: Any | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    kubeconfig: str | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> tuple[Any | None, str]:
    """(kubernetes Configuration or None, how it was found or why not).

    Order: an explicit Configuration; in-cluster (service account) when
    KUBERNETES_SERVICE_HOST is set; a kubeconfig ($KUBECONFIG or ~/.kube/config).
    The global default Configuration is never touched.
    """
    env = os.environ if environ is None else environ
    if configuration is not None:
        return configuration, "explicit"
    why: list[str] = []
    if env.get("KUBERNETES_SERVICE_HOST"):
        cfg = k8s.Configuration()
        try:
            loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=str(service_account_dir / "token"),
                cert_filename=str(service_account_dir / "ca.crt"),
                environ=env,
            )
            loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
        except (ConfigException, OSError) as exc:
            why.append(f"in-cluster: {exc}")
        else:
            return cfg, "in-cluster"
    path = kubeconfig or env.get("KUBECONFIG") or str(Path(env.get("HOME", "~")).expanduser() / ".kube" / "config")
    cfg = k8s.Configuration()
    try:
        load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)  # type: ignore[no-untyped-call]
    except Exception as exc:  # a kubeconfig can fail in many ways (YAML, exec plugins, files)
        why.append(f"kubeconfig {path}: {exc}")
        return None, "; ".join(why)
    return cfg, f"kubeconfig {path}"


# ---------------------------------------------------------------------------------------------
# The watcher
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WatchSettings:
    watch_timeout_s: int = 300  # each watch asks timeoutSeconds in [T, 2T) so a fleet spreads out
    connect_timeout_s: float = 10.0
    list_timeout_s: float = 60.0
    idle_slack_s: float = 30.0  # a watch's read timeout is its timeoutSeconds plus this
    backoff_initial_s: float = 0.8
    backoff_cap_s: float = 30.0
    resolve_replicasets: bool = False  # GET each ReplicaSet for its owner (needs replicasets get)
    max_pods: int = 2048  # a node runs ~110-250 pods; beyond this something is wrong
    replicaset_cache: int = 512


@dataclass(frozen=True)
class KubeStatus:
    """A consistent copy of the watcher's health, for logs and self-metrics."""

    state: str  # disabled | starting | listing | watching | backoff | stopped
    reason: str  # why disabled, or how configured
    synced: bool  # the store reflects a completed list (it may be stale during an outage)
    last_error: str | None
    resource_version: str | None
    pods: int
    lists: int  # successful lists, the first included
    relists: int  # lists after the first (each follows a 410)
    expired: int  # 410 Gone seen
    watch_restarts: int  # watches opened after the first
    errors: int
    events: dict[str, int]
    bad_objects: int
    dropped_pods: int

    @property
    def enabled(self) -> bool:
        return self.state != "disabled"


_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})


class _Expired(Exception):
    """410 Gone: our resourceVersion is older than the apiserver's history."""


class _RawWatch(k8s_watch.Watch):
    """Watch whose events keep the object as a dict.

    We parse pods ourselves (one parser for list and watch, tolerant of odd objects, and
    no model deserialization per event). ``deserialize=False`` would be the obvious way,
    but it breaks the client's own ERROR-event handling (it reads ``raw_object``).
    """

    def get_return_type(self, func: Any) -> None:
        return None


class KubeMetadata:
    """This node's pods, kept current by a background list+watch; see the module docstring.

    ``lookup``/``snapshot``/``status`` may be called from any thread.
    """

    def __init__(
        self,
        node_name: str,
        configuration: Any | None,
        *,
        settings: WatchSettings | None = None,
        reason: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.node_name = node_name
        self.settings = settings or WatchSettings()
        self._configuration = configuration
        self._reason = reason
        self._rng = rng or random.Random()
        self._backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_cap_s, rng=self._rng)
        self._relist_backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_cap_s, rng=self._rng)
        self._cond = threading.Condition()
        self._pods: dict[str, PodMeta] = {}
        self._by_container: dict[str, str] = {}  # container ID (current and previous) -> pod UID
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None  # the open watch response, so stop() can cut it
        self._api: Any = None
        self._rs_owner: BoundedCache[str, tuple[str, str]] = BoundedCache(self.settings.replicaset_cache)
        self._rs_forbidden = False
        # status
        self._state = "disabled" if configuration is None else "starting"
        self._synced = False
        self._last_error: str | None = None
        self._rv: str | None = None
        self._lists = 0
        self._expired = 0
        self._watches = 0
        self._errors = 0
        self._events: Counter[str] = Counter()
        self._bad = 0
        self._dropped = 0

    @classmethod
    def disabled(cls, reason: str) -> KubeMetadata:
        return cls("", None, reason=reason)

    # ---- reading (any thread) ---------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self._configuration is not None

    @property
    def synced(self) -> bool:
        with self._cond:
            return self._synced

    @property
    def last_error(self) -> str | None:
        with self._cond:
            return self._last_error

    def lookup(self, pod_uid: str, container_id: str | None = None) -> ContainerMeta | None:
        """The pod by UID and its container by runtime ID; pod-level facts if the ID is unknown."""
        uid = normalize_pod_uid(pod_uid)
        cid = normalize_container_id(container_id)
        with self._cond:
            pod = self._pods.get(uid)
            if pod is None and cid is not None and (owner := self._by_container.get(cid)):
                pod = self._pods.get(owner)
        if pod is None:
            return None
        return ContainerMeta.of(pod, pod.container_by_id(cid))

    def snapshot(self) -> dict[str, PodMeta]:
        with self._cond:
            return dict(self._pods)

    def status(self) -> KubeStatus:
        with self._cond:
            return KubeStatus(
                state=self._state,
                reason=self._reason,
                synced=self._synced,
                last_error=self._last_error,
                resource_version=self._rv,
                pods=len(self._pods),
                lists=self._lists,
                relists=max(0, self._lists - 1),
                expired=self._expired,
                watch_restarts=max(0, self._watches - 1),
                errors=self._errors,
                events=dict(self._events),
                bad_objects=self._bad,
                dropped_pods=self._dropped,
            )

    def wait_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Block until ``pred()`` holds (re-checked on every store or status change)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def wait_synced(self, timeout: float) -> bool:
        return self.wait_until(lambda: self._synced, timeout)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> KubeMetadata:
        if self._configuration is None or self._thread is not None:
            return self
        self._api = k8s.ApiClient(self._configuration)
        self._thread = threading.Thread(target=self._run, name=f"kube-watch-{self.node_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """End the watch promptly: wake any backoff sleep and cut the open stream. True if joined."""
        self._stop.set()
        with self._cond:
            resp = self._resp
            self._cond.notify_all()
        _shutdown(resp)
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        done = thread is None or not thread.is_alive()
        if done and self._api is not None:
            self._api.close()
            self._api = None
        with self._cond:
            if self._state != "disabled":
                self._state = "stopped"
            self._cond.notify_all()
        return done

    def __enter__(self) -> KubeMetadata:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        need_list = True
        first_list = True
        expired_streak = 0
        while not self._stop.is_set():
            try:
                if need_list:
                    self._set_state("listing")
                    self._list(initial=first_list)
                    need_list = first_list = False
                    self._backoff.reset()
                self._set_state("watching")
                # Resume from the last RV any event or bookmark gave us, even if the stream broke.
                with self._cond:
                    rv = self._rv
                if rv is None:  # cannot happen after a list; relist rather than watch from "now"
                    need_list = True
                    continue
                events, elapsed, asked = self._watch(rv)
                if self._stop.is_set():
                    break
                if events:
                    expired_streak = 0
                    self._backoff.reset()
                elif elapsed < asked / 2:
                    # A stream the server ends early with nothing in it must not become a busy loop.
                    self._fail(f"watch ended after {elapsed:.1f}s of {asked}s with no events")
            except _Expired as exc:
                need_list = True
                expired_streak += 1
                with self._cond:
                    self._expired += 1
                    self._last_error = str(exc)
                log.info("kube: %s; relisting", exc)
                if expired_streak > 1:
                    # 410 right after a relist, again: the server is unwell; do not spin on it.
                    self._sleep(self._relist_backoff)
                else:
                    self._relist_backoff.reset()
            except k8s.ApiException as exc:
                self._fail(_api_error_text(exc))
            except urllib3.exceptions.HTTPError as exc:  # refused, reset, cut mid-stream, timed out
                self._fail(f"{type(exc).__name__}: {exc}")
            except (OSError, ValueError) as exc:  # socket errors; a body that is not JSON
                self._fail(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # the thread must not die: anything else is an error too
                log.exception("kube: unexpected error in the watch loop")
                self._fail(f"unexpected {type(exc).__name__}: {exc}")
        with self._cond:
            self._state = "stopped"
            self._cond.notify_all()

    def _fail(self, text: str) -> None:
        with self._cond:
            self._errors += 1
            self._last_error = text
        if not self._stop.is_set():
            log.warning("kube: %s", text)
            self._sleep(self._backoff)

    def _sleep(self, backoff: Backoff) -> None:
        self._set_state("backoff")
        self._stop.wait(backoff.next())

    def _set_state(self, state: str) -> None:
        with self._cond:
            self._state = state
            self._cond.notify_all()

    def _core(self) -> Any:
        return k8s.CoreV1Api(self._api)

    def _list(self, *, initial: bool) -> None:
        """List this node's pods, replace the store and the resourceVersion.

        The first list asks RV "0" (the apiserver's watch cache, no etcd quorum read: what
        a DaemonSet on every node should do); a relist after 410 asks for the latest.
        """
        s = self.settings
        kwargs: dict[str, Any] = {"resource_version": "0"} if initial else {}
        try:
            resp = self._core().list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.node_name}",
                _preload_content=False,
                _request_timeout=(s.connect_timeout_s, s.list_timeout_s),
                **kwargs,
            )
        except k8s.ApiException as exc:
            if exc.status == 410:
                raise _Expired(f"list: {exc.reason}") from exc
            raise
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        rv = _dict(_dict(body).get("metadata")).get("resourceVersion")
        if not isinstance(rv, str) or not rv:
            raise ValueError("pod list without metadata.resourceVersion")
        pods: dict[str, PodMeta] = {}
        bad = dropped = 0
        for item in _list(body.get("items")):
            meta = self._parse(item)
            if meta is None:
                bad += 1
            elif len(pods) >= s.max_pods:
                dropped += 1
            else:
                pods[meta.uid] = meta
        with self._cond:
            self._pods = pods
            self._by_container = {cid: p.uid for p in pods.values() for cid in _ids(p)}
            self._rv = rv
            self._synced = True
            self._lists += 1
            self._bad += bad
            self._dropped += dropped
            self._cond.notify_all()
        log.info("kube: listed %d pods on %s at resourceVersion %s", len(pods), self.node_name, rv)

    def _watch(self, rv: str) -> tuple[int, float, int]:
        """One watch from ``rv`` until the server ends it. Returns (events, seconds, timeoutSeconds asked)."""
        s = self.settings
        asked = max(1, round(s.watch_timeout_s * (1.0 + self._rng.random())))
        core = self._core()

        def call(**kwargs: Any) -> Any:
            resp = core.list_pod_for_all_namespaces(**kwargs)
            with self._cond:
                self._resp = resp
                stopping = self._stop.is_set()
            if stopping:
                _shutdown(resp)
            return resp

        with self._cond:
            self._watches += 1
        events = 0
        started = time.monotonic()
        w = _RawWatch()  # type: ignore[no-untyped-call]
        # timeout_seconds also turns off the client's silent retry after a 410, so we see it.
        stream: Generator[dict[str, Any], None, None] = w.stream(  # type: ignore[no-untyped-call]
            call,
            field_selector=f"spec.nodeName={self.node_name}",
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=asked,
            _request_timeout=(s.connect_timeout_s, asked + s.idle_slack_s),
        )
        try:
            for event in stream:
                if self._stop.is_set():
                    break
                events += 1
                self._apply(event)
        except k8s.ApiException as exc:
            if exc.status == 410:
                raise _Expired(f"watch from resourceVersion {rv}: {exc.reason}") from exc
            raise
        finally:
            with self._cond:
                self._resp = None
            with contextlib.suppress(Exception):
                stream.close()  # runs the client's finally: closes the response
        return events, time.monotonic() - started, asked

    def _apply(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event to the store and advance the resourceVersion."""
        kind = str(event.get("type", ""))
        obj = _dict(event.get("raw_object", event.get("object")))
        rv = _dict(obj.get("metadata")).get("resourceVersion")
        rv = rv if isinstance(rv, str) and rv else None
        with self._cond:
            self._events[kind if kind in _EVENT_TYPES else "other"] += 1
        if kind == "BOOKMARK":
            pass
        elif kind in {"ADDED", "MODIFIED"}:
            meta = self._parse(obj)
            if meta is None:
                with self._cond:
                    self._bad += 1
            else:
                self._put(meta)
        elif kind == "DELETED":
            uid = _dict(obj.get("metadata")).get("uid")
            if isinstance(uid, str):
                self._delete(normalize_pod_uid(uid))
        with self._cond:
            if rv is not None:
                self._rv = rv
            self._cond.notify_all()

    def _put(self, meta: PodMeta) -> None:
        with self._cond:
            old = self._pods.get(meta.uid)
            if old is None and len(self._pods) >= self.settings.max_pods:
                self._dropped += 1
                return
            if old is not None:
                for cid in _ids(old):
                    self._by_container.pop(cid, None)
            self._pods[meta.uid] = meta
            for cid in _ids(meta):
                self._by_container[cid] = meta.uid

    def _delete(self, uid: str) -> None:
        with self._cond:
            old = self._pods.pop(uid, None)
            if old is not None:
                for cid in _ids(old):
                    if self._by_container.get(cid) == uid:
                        del self._by_container[cid]

    def _parse(self, obj: Any) -> PodMeta | None:
        if not isinstance(obj, Mapping):
            return None
        try:
            return parse_pod(obj, replicaset_owner=self._replicaset_owner(obj))
        except (ValueError, TypeError, KeyError) as exc:
            log.debug("kube: skipping a malformed pod: %s", exc)
            return None

    def _replicaset_owner(self, pod: Obj) -> tuple[str, str] | None:
        """The ReplicaSet's own controller, by GET (cached by RS UID), when enabled and allowed."""
        ref = controller_ref(pod)
        if not self.settings.resolve_replicasets or self._rs_forbidden:
            return None
        if ref is None or ref.get("kind") != "ReplicaSet":
            return None
        key = str(ref.get("uid") or ref.get("name"))
        known = self._rs_owner.get(key)
        if known is not None:
            return known
        ns = str(_dict(pod.get("metadata")).get("namespace", ""))
        s = self.settings
        try:
            resp: Any = k8s.AppsV1Api(self._api).read_namespaced_replica_set(
                str(ref.get("name", "")),
                ns,
                _preload_content=False,
                _request_timeout=(s.connect_timeout_s, s.list_timeout_s),
            )
            try:
                rs = json.loads(resp.data)
            finally:
                resp.release_conn()
        except k8s.ApiException as exc:
            if exc.status in {401, 403}:
                self._rs_forbidden = True
                with self._cond:
                    self._last_error = f"replicasets get: {_api_error_text(exc)}; using pod-template-hash names"
            return None  # 404 (gone) and the rest: fall back to the name, do not cache
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return None
        owner_ref = controller_ref(rs) if isinstance(rs, Mapping) else None
        found = (str(owner_ref.get("kind", "")), str(owner_ref.get("name", ""))) if owner_ref else None
        owner = found if found else ("ReplicaSet", str(ref.get("name", "")))
        self._rs_owner.put(key, owner)
        return owner


def _ids(pod: PodMeta) -> Iterator[str]:
    for c in pod.containers:
        if c.container_id:
            yield c.container_id
        yield from c.previous_ids


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading ``resp`` by shutting its socket (close() alone would not)."""
    if resp is None:
        return
    sock = getattr(getattr(resp, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _api_error_text(exc: Any) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", "")
    text = f"HTTP {status} {reason}".strip()
    if status in {401, 403}:
        text += " (node-agent needs get/list/watch on pods; check its ClusterRole and ServiceAccount)"
    return text


def connect(
    node_name: str | None = None,
    *,
    configuration: Any | None = None,
    environ: Mapping[str, str] | None = None,
    kubeconfig: str | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    settings: WatchSettings | None = None,
) -> KubeMetadata:
    """A KubeMetadata for this node (not started), or a disabled one that says why.

    The node name comes from the argument or $NODE_NAME (the Downward API's spec.nodeName).
    Without it we refuse to watch: a cluster-wide pod watch from every node is what this
    design exists to avoid.
    """
    env = os.environ if environ is None else environ
    node = node_name or env.get("NODE_NAME", "")
    if not node:
        return KubeMetadata.disabled("NODE_NAME is not set (env valueFrom fieldRef spec.nodeName)")
    cfg, how = load_configuration(
        configuration, environ=env, kubeconfig=kubeconfig, service_account_dir=service_account_dir
    )
    if cfg is None:
        return KubeMetadata.disabled(f"no Kubernetes API access: {how}")
    return KubeMetadata(node, cfg, settings=settings, reason=how)
