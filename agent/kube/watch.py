"""Node-scoped pod metadata: one list+watch of this node's pods, kept in a thread-safe store.

Why a watch and not the kubelet's ``/pods``: the kubelet endpoint needs node-level
credentials and is polled, while one field-selected watch (``spec.nodeName=$NODE_NAME``)
costs the apiserver almost nothing and tells us about a pod as soon as it is bound.
The loop is client-go's reflector in miniature: list (RV "0", served from the
apiserver's cache), then watch from the list's resourceVersion with bookmarks; a watch
that ends (timeoutSeconds) or breaks resumes from the last RV seen; only a 410 Gone
(as HTTP status or as an ERROR event) forces a relist; other failures back off
exponentially with jitter up to a cap.

Pod objects become facts in :mod:`agent.kube.spec`; this module is the I/O:
:func:`load_configuration`, :func:`connect` and :class:`KubeMetadata`. Without API
access the module says "disabled" and lookups return None; the caller falls back to
what the cgroup path tells it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import load_kube_config

from agent.kube.spec import (
    ContainerMeta,
    Obj,
    PodMeta,
    _dict,
    _list,
    controller_ref,
    normalize_container_id,
    normalize_pod_uid,
    parse_pod,
)
from agent.lru import BoundedCache

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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
    # kube-apiserver sends a watch bookmark about once a minute: a watch silent for two of them is dead
    # (accepted but never answered, or a half-open connection), whatever timeoutSeconds said.
    bookmark_interval_s: float = 60.0
    max_event_bytes: int = 4 * 2**20  # one watch line; etcd refuses objects over 1.5 MiB
    backoff_initial_s: float = 0.8
    backoff_cap_s: float = 30.0
    resolve_replicasets: bool = False  # GET each ReplicaSet for its owner (needs replicasets get)
    max_pods: int = 2048  # a node runs ~110-250 pods; beyond this something is wrong
    replicaset_cache: int = 512

    @property
    def idle_timeout_s(self) -> float:
        """A watch with no byte for this long is cut and resumed (the socket's read timeout)."""
        return 2.0 * self.bookmark_interval_s


# Kinds of node_agent_errors_total{kind="kube_<kind>"}: failures of the loop (each one backs off)
# and items skipped (the loop goes on).
LOOP_ERRORS = (
    "api_unreachable",  # refused, reset, DNS: the API cannot be reached
    "list_timeout",  # a list not answered within list_timeout_s
    "watch_stalled",  # an open watch silent for idle_timeout_s
    "watch_deadline",  # a watch still open well past its timeoutSeconds
    "watch_ended_early",  # the server ended a watch at once with nothing in it
    "watch_error_event",  # an ERROR event other than 410
    "api_forbidden",  # 401/403: RBAC
    "api_error",  # other HTTP errors
    "list_malformed",  # a list body that is not a PodList
    "unexpected",
)
ITEM_ERRORS = (
    "event_malformed",  # a watch line that is not a JSON watch event: skipped
    "event_too_large",  # a watch line over max_event_bytes: skipped without being held
    "pod_malformed",  # an object that is not a pod: skipped
    "pod_dropped",  # the store is full (max_pods)
    "pod_spec_over_budget",  # GOMAXPROCS/GODEBUG expansion over its caps: left unresolved
)


@dataclass(frozen=True)
class KubeStatus:
    """A consistent copy of the watcher's health: for /readyz's text, self-metrics and logs."""

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
    errors: int  # failures of the loop (each backed off)
    events: dict[str, int]
    bad_objects: int
    dropped_pods: int
    errors_by_kind: dict[str, int] = field(default_factory=dict)  # LOOP_ERRORS and ITEM_ERRORS
    last_error_kind: str | None = None
    last_error_age_s: float | None = None  # seconds since the last error, when there was one

    @property
    def enabled(self) -> bool:
        return self.state != "disabled"

    @property
    def events_skipped(self) -> int:
        return sum(self.errors_by_kind.get(k, 0) for k in ("event_malformed", "event_too_large"))

    def summary(self) -> str:
        """One line for /readyz and logs: never a reason to be unready (cgroup names still work)."""
        if not self.enabled:
            return f"kubernetes: off ({self.reason}); workloads are named by cgroup"
        text = f"kubernetes: {self.state}, " + (
            f"synced, {self.pods} pods" if self.synced else "not synced: workloads are named by cgroup"
        )
        text += f", {self.relists} relists, {self.events_skipped} events skipped"
        if self.last_error is not None and self.last_error_age_s is not None:
            text += f"; last error {self.last_error_age_s:.0f}s ago ({self.last_error_kind}): {self.last_error}"
        return text


_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
_READ_SIZE = 64 * 1024


class _Expired(Exception):
    """410 Gone: our resourceVersion is older than the apiserver's history."""


class _LoopError(Exception):
    """A failure of one list or watch, with its kind (one of LOOP_ERRORS)."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class LineSplitter:
    """Bytes of a watch stream in, complete lines out; memory bounded by ``max_line``.

    A line longer than ``max_line`` is dropped as its bytes arrive (never held) and counted in
    ``oversized``: a stream that never sends a newline cannot grow our memory.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.oversized = 0
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            piece = memoryview(data)[start:nl]
            if self._discarding:
                self._discarding = False
            elif len(self._buf) + len(piece) > self.max_line:
                self.oversized += 1
            else:
                self._buf += piece
                out.append(bytes(self._buf))
            self._buf.clear()
            start = nl + 1
        rest = len(data) - start
        if not self._discarding and rest:
            if len(self._buf) + rest > self.max_line:
                self.oversized += 1
                self._buf.clear()
                self._discarding = True
            else:
                self._buf += memoryview(data)[start:]
        return out


def parse_event(line: bytes) -> Mapping[str, Any] | None:
    """One watch line -> {"type": ..., "object": {...}}; None when it is not a watch event."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past Python's limit
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    if not isinstance(event.get("object"), dict):
        return None
    return event


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
        self._last_error_kind: str | None = None
        self._last_error_at: float | None = None
        self._rv: str | None = None
        self._lists = 0
        self._expired = 0
        self._watches = 0
        self._errors = 0
        self._by_kind: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._outage = False  # say so once per outage, then quietly retry

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
            at = self._last_error_at
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
                bad_objects=self._by_kind["pod_malformed"],
                dropped_pods=self._by_kind["pod_dropped"],
                errors_by_kind=dict(self._by_kind),
                last_error_kind=self._last_error_kind,
                last_error_age_s=None if at is None else max(0.0, time.monotonic() - at),
            )

    def readiness_notes(self) -> list[str]:
        """Lines for /readyz's text (informational: the agent is ready without the API)."""
        return [self.status().summary()]

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
        if self._configuration is None:
            log.warning("kube: off (%s); workloads are named by cgroup", self._reason)
            return self
        if self._thread is not None:
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
            phase = "list"
            try:
                if need_list:
                    self._set_state("listing")
                    self._list(initial=first_list)
                    need_list = first_list = False
                    self._backoff.reset()
                    self._recovered()
                self._set_state("watching")
                # Resume from the last RV any event or bookmark gave us, even if the stream broke.
                with self._cond:
                    rv = self._rv
                if rv is None:  # cannot happen after a list; relist rather than watch from "now"
                    need_list = True
                    continue
                phase = "watch"
                events, elapsed, asked = self._watch(rv)
                if self._stop.is_set():
                    break
                if events:
                    expired_streak = 0
                    self._backoff.reset()
                    self._recovered()
                elif elapsed < asked / 2:
                    # A stream the server ends early with nothing in it must not become a busy loop.
                    text = f"watch ended after {elapsed:.1f}s of {asked}s with no events"
                    raise _LoopError("watch_ended_early", text)
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
            except _LoopError as exc:
                self._fail(exc.kind, str(exc))
            except k8s.ApiException as exc:
                status = getattr(exc, "status", None)
                self._fail("api_forbidden" if status in {401, 403} else "api_error", _api_error_text(exc))
            except urllib3.exceptions.ReadTimeoutError as exc:
                kind = "watch_stalled" if phase == "watch" else "list_timeout"
                self._fail(kind, f"{type(exc).__name__}: {exc}")
            except urllib3.exceptions.HTTPError as exc:  # refused, reset, cut mid-stream
                self._fail("api_unreachable", f"{type(exc).__name__}: {exc}")
            except OSError as exc:  # socket errors
                self._fail("api_unreachable", f"{type(exc).__name__}: {exc}")
            except ValueError as exc:  # a list body that is not JSON
                self._fail("list_malformed", f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # the thread must not die: anything else is an error too
                log.exception("kube: unexpected error in the watch loop")
                self._fail("unexpected", f"unexpected {type(exc).__name__}: {exc}")
        with self._cond:
            self._state = "stopped"
            self._cond.notify_all()

    def _count(self, kind: str, n: int = 1) -> None:
        with self._cond:
            self._by_kind[kind] += n

    def _fail(self, kind: str, text: str) -> None:
        if self._stop.is_set():
            return  # stop() cut the stream: not an error
        with self._cond:
            self._errors += 1
            self._by_kind[kind] += 1
            self._last_error = text
            self._last_error_kind = kind
            self._last_error_at = time.monotonic()
            first = not self._outage
            self._outage = True
            synced = self._synced
        if not self._stop.is_set():
            if first:  # once per outage; the retries are counted, not logged
                then = "pods keep their last known metadata" if synced else "workloads are named by cgroup"
                log.warning("kube: %s; retrying with backoff, %s", text, then)
            else:
                log.debug("kube: %s", text)
            self._sleep(self._backoff)

    def _recovered(self) -> None:
        with self._cond:
            if not self._outage:
                return
            was, self._outage = self._outage, False
        if was:
            log.warning("kube: the API answers again")

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
        for item in _list(body.get("items")):
            meta = self._parse(item)
            if meta is None:
                continue
            if len(pods) >= s.max_pods:
                self._count("pod_dropped")
            else:
                pods[meta.uid] = meta
        with self._cond:
            self._pods = pods
            self._by_container = {cid: p.uid for p in pods.values() for cid in _ids(p)}
            self._rv = rv
            self._synced = True
            self._lists += 1
            self._cond.notify_all()
        log.info("kube: listed %d pods on %s at resourceVersion %s", len(pods), self.node_name, rv)

    def _watch(self, rv: str) -> tuple[int, float, int]:
        """One watch from ``rv`` until the server ends it. Returns (events, seconds, timeoutSeconds asked).

        Read here rather than through the client's ``Watch``: its line reader holds a line
        without a newline whatever its size, and one line that is not an event ends its stream.
        """
        s = self.settings
        asked = max(1, round(s.watch_timeout_s * (1.0 + self._rng.random())))
        with self._cond:
            self._watches += 1
        started = time.monotonic()
        deadline = started + asked + s.idle_timeout_s
        try:
            resp = self._core().list_pod_for_all_namespaces(
                watch=True,
                field_selector=f"spec.nodeName={self.node_name}",
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=asked,
                _preload_content=False,
                _request_timeout=(s.connect_timeout_s, s.idle_timeout_s),
            )
        except k8s.ApiException as exc:
            if exc.status == 410:
                raise _Expired(f"watch from resourceVersion {rv}: {exc.reason}") from exc
            raise
        with self._cond:
            self._resp = resp
            stopping = self._stop.is_set()
        if stopping:
            _shutdown(resp)
        events = 0
        lines = LineSplitter(s.max_event_bytes)
        try:
            while not self._stop.is_set():
                data = resp.read1(_READ_SIZE)
                if not data:
                    break  # the server ended the watch (timeoutSeconds)
                for line in lines.feed(data):
                    if line.strip():
                        events += self._event(line, rv)
                if lines.oversized:
                    self._count("event_too_large", lines.oversized)
                    log.warning("kube: skipped a watch event over %d bytes", s.max_event_bytes)
                    lines.oversized = 0
                if time.monotonic() > deadline:
                    text = f"watch still open {asked + s.idle_timeout_s:.0f}s after it began"
                    raise _LoopError("watch_deadline", text)
        finally:
            with self._cond:
                self._resp = None
            with contextlib.suppress(Exception):
                resp.close()  # a watch connection is never reused mid-stream
                resp.release_conn()
        return events, time.monotonic() - started, asked

    def _event(self, line: bytes, rv: str) -> int:
        """Apply one watch line; a line that is not an event is skipped and counted. Returns 1 if applied."""
        event = parse_event(line)
        if event is None or (event["type"] not in _EVENT_TYPES and event["type"] != "ERROR"):
            self._count("event_malformed")
            log.debug("kube: skipped a watch line that is not an event (%d bytes)", len(line))
            return 0
        if event["type"] == "ERROR":
            status = event["object"]
            if status.get("code") == 410:
                raise _Expired(f"watch from resourceVersion {rv}: {status.get('reason') or 'Expired'}")
            raise _LoopError("watch_error_event", f"watch ERROR event: {status.get('code')} {status.get('reason')}")
        self._recovered()  # an event (a bookmark too) proves the API answers
        self._apply(event)
        return 1

    def _apply(self, event: Mapping[str, Any]) -> None:
        """Apply one watch event to the store and advance the resourceVersion."""
        kind = str(event.get("type", ""))
        obj = _dict(event.get("object"))
        rv = _dict(obj.get("metadata")).get("resourceVersion")
        rv = rv if isinstance(rv, str) and rv else None
        with self._cond:
            self._events[kind if kind in _EVENT_TYPES else "other"] += 1
        if kind == "BOOKMARK":
            pass
        elif kind in {"ADDED", "MODIFIED"}:
            meta = self._parse(obj)
            if meta is not None:
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
                self._by_kind["pod_dropped"] += 1
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
        """A pod object -> PodMeta, or None (counted) when it is not one."""
        if not isinstance(obj, Mapping):
            self._count("pod_malformed")
            return None
        try:
            meta = parse_pod(obj, replicaset_owner=self._replicaset_owner(obj))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            self._count("pod_malformed")
            log.debug("kube: skipping a malformed pod: %s", exc)
            return None
        if meta.over_budget:
            self._count("pod_spec_over_budget")
            log.info("kube: pod %s/%s: GOMAXPROCS/GODEBUG expansion over budget, left unresolved", *meta.key)
        return meta

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
