"""A fake Kubernetes API server that speaks the real list and watch protocol for pods.

Enough of the apiserver to test a list+watch client honestly: every write bumps a
global resourceVersion and lands in an event history; ``GET /api/v1/pods`` returns a
PodList stamped with the current RV; ``watch=true`` answers with a chunked stream of
newline-delimited watch events replayed from the requested RV, then live. Field
selectors on ``spec.nodeName`` turn a pod starting/stopping to match into
ADDED/DELETED, as the apiserver's cacher does. History older than the compaction
point is gone: a watch from there gets the apiserver's ERROR event (a ``Status`` with
code 410, reason ``Expired``) or, if asked, an HTTP 410. Bookmarks look like the real
ones (an empty Pod carrying only ``metadata.resourceVersion``).

Faults on demand: 5xx answers, stalled answers, watches accepted and then silent, raw
bytes written into open watch streams (malformed events, lines without a newline),
watch streams cut mid-chunk, and a full outage (``stop()`` / ``start()`` on the same
port, state kept like etcd would). ``bookmark_interval`` sends periodic bookmarks as
kube-apiserver does (about once a minute).
Every request is recorded (method, path, query) so tests can assert what a client asked.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

Obj = dict[str, Any]

_POD_LIST = re.compile(r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/pods/?$")
_RS_GET = re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/replicasets/(?P<name>[^/]+)$")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    at: float

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in {"true", "1"}


@dataclass
class _Change:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED (unfiltered)
    old: Obj | None
    new: Obj


@dataclass
class _Fault:
    status: int
    reason: str
    watch_only: bool
    list_only: bool
    path_contains: str


@dataclass
class _Watcher:
    bookmarks: bool
    bookmark_wanted: bool = False
    cursor: int = 0
    drop: bool = False
    raw: list[bytes] = field(default_factory=list)  # bytes to write as they are
    next_bookmark: float = float("inf")  # when the next periodic bookmark is due


def status_object(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Server(ThreadingHTTPServer):
    # Handler threads are joined on close (tests must not leak threads) and the port can be
    # bound again right after an outage.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    api: FakeKubeAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up (reset, broken pipe) is part of the tests, not news


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.api._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.api._track(self.connection, add=False)

    def do_GET(self) -> None:
        self.server.api._serve(self)

    # ---- writing ----------------------------------------------------------------------------
    def send_json(self, code: int, obj: Obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def client_gone(self) -> bool:
        """Has the client hung up? (The apiserver notices a closed watch without writing to it.)"""
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def cut(self, partial: bytes) -> None:
        """Die mid-chunk: announce a chunk, send half of it, drop the TCP connection."""
        with contextlib.suppress(OSError):
            self.wfile.write(f"{len(partial) * 2:x}\r\n".encode() + partial)
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class FakeKubeAPI:
    """The apiserver's pod list/watch semantics in one process; see the module docstring."""

    def __init__(
        self,
        *,
        default_watch_timeout: float = 30.0,
        expired_as_http: bool = False,
        max_watch_seconds: float | None = None,
        bookmark_interval: float | None = None,
        overrun_watch_seconds: float = 0.0,
    ) -> None:
        self.default_watch_timeout = default_watch_timeout
        self.bookmark_interval = bookmark_interval
        self.overrun_watch_seconds = overrun_watch_seconds  # keep watches open this long past timeoutSeconds
        self.max_watch_seconds = max_watch_seconds  # end every watch this early (a misbehaving proxy)
        self.expired_as_http = expired_as_http
        self.requests: list[Request] = []
        self.replicasets: dict[tuple[str, str], Obj] = {}
        self._cond = threading.Condition()
        self._pods: dict[str, Obj] = {}  # uid -> pod
        self._rv = 1000
        self._history: list[_Change] = []
        self._compacted = 0  # changes with rv <= this are gone
        self._faults: list[_Fault] = []
        self._stalls = 0
        self._silent_watches = 0
        self._watchers: list[_Watcher] = []
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.port = 0

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> FakeKubeAPI:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.api = self
        self.port = server.server_address[1]
        self._stopping = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """An outage: close the listener, cut every open connection, join every handler."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            conns = list(self._conns)
        server.shutdown()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()  # joins handler threads
        thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def configuration(self) -> Any:
        from kubernetes.client import Configuration

        cfg = Configuration(host=self.url)
        cfg.retries = 0  # the client under test owns retrying
        return cfg

    # ---- state (what etcd holds) ------------------------------------------------------------
    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._rv)

    def _write(self, kind: str, old: Obj | None, new: Obj) -> str:
        self._rv += 1
        new = copy.deepcopy(new)
        new["metadata"]["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            self._pods.pop(new["metadata"]["uid"], None)
        else:
            self._pods[new["metadata"]["uid"]] = new
        self._history.append(_Change(self._rv, kind, old, new))
        self._cond.notify_all()
        return str(self._rv)

    def create_pod(self, pod: Obj) -> str:
        with self._cond:
            uid = pod["metadata"]["uid"]
            if uid in self._pods:
                raise ValueError(f"pod {uid} exists")
            return self._write("ADDED", None, pod)

    def update_pod(self, uid: str, mutate: Callable[[Obj], None]) -> str:
        with self._cond:
            old = self._pods[uid]
            new = copy.deepcopy(old)
            mutate(new)
            return self._write("MODIFIED", old, new)

    def delete_pod(self, uid: str) -> str:
        with self._cond:
            old = self._pods[uid]
            gone = copy.deepcopy(old)
            gone["metadata"].setdefault("deletionTimestamp", "2024-05-01T10:00:00Z")
            gone["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._write("DELETED", old, gone)

    def pods(self) -> dict[str, Obj]:
        with self._cond:
            return copy.deepcopy(self._pods)

    def compact(self) -> str:
        """Forget history up to now, as etcd compaction does: new watches from older RVs get 410.

        Open watches keep streaming (they hold their place), so history they still need stays.
        """
        with self._cond:
            self._compacted = self._rv
            keep = min([w.cursor for w in self._watchers] + [self._rv])
            self._history = [ch for ch in self._history if ch.rv > keep]
            return str(self._rv)

    # ---- faults -----------------------------------------------------------------------------
    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        watch_only: bool = False,
        list_only: bool = False,
        path_contains: str = "",
    ) -> None:
        """Answer the next n matching requests with ``status`` and a Status body."""
        reason = {
            403: "Forbidden",
            410: "Expired",
            429: "TooManyRequests",
            500: "InternalError",
            503: "ServiceUnavailable",
        }
        with self._cond:
            for _ in range(n):
                fault = _Fault(status, reason.get(status, "InternalError"), watch_only, list_only, path_contains)
                self._faults.append(fault)

    def stall_next(self, n: int = 1) -> None:
        """Accept the next n requests and never answer them (until stop())."""
        with self._cond:
            self._stalls += n

    def silence_next_watches(self, n: int = 1) -> None:
        """Accept the next n watches (200, chunked) and then never write to them (until stop())."""
        with self._cond:
            self._silent_watches += n

    def inject(self, data: bytes) -> int:
        """Write ``data`` as it is into every open watch stream; returns how many streams."""
        with self._cond:
            for w in self._watchers:
                w.raw.append(data)
            self._cond.notify_all()
            return len(self._watchers)

    def pending_raw(self) -> int:
        """Bytes given to inject() not yet written to their streams."""
        with self._cond:
            return sum(len(d) for w in self._watchers for d in w.raw)

    def send_bookmark(self) -> None:
        with self._cond:
            for w in self._watchers:
                w.bookmark_wanted = w.bookmarks
            self._cond.notify_all()

    def drop_watches(self) -> int:
        """Cut every open watch stream in the middle of a chunk; returns how many."""
        with self._cond:
            for w in self._watchers:
                w.drop = True
            self._cond.notify_all()
            return len(self._watchers)

    def watchers(self) -> int:
        with self._cond:
            return len(self._watchers)

    # ---- waiting (tests signal on state, not on sleeps) -------------------------------------
    def wait_for(self, pred: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def wait_for_request(self, pred: Callable[[Request], bool], timeout: float = 5.0, *, after: int = 0) -> Request:
        found: list[Request] = []

        def seen() -> bool:
            found[:] = [r for r in self.requests[after:] if pred(r)]
            return bool(found)

        if not self.wait_for(seen, timeout):
            raise AssertionError(f"no matching request within {timeout}s; saw {self.requests[after:]}")
        return found[0]

    def watch_requests(self) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.is_watch]

    def list_requests(self) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if not r.is_watch and _POD_LIST.match(r.path)]

    # ---- serving ----------------------------------------------------------------------------
    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._cond:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _serve(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        req = Request("GET", split.path, query, time.monotonic())
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
            stalled = self._stalls > 0
            if stalled:
                self._stalls -= 1
            fault = next((f for f in self._faults if self._fault_applies(f, req)), None)
            if fault is not None:
                self._faults.remove(fault)
        if stalled:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping)
            h.close_connection = True
            return
        if fault is not None:
            h.send_json(fault.status, status_object(fault.status, fault.reason, f"injected {fault.status}"))
            return
        if m := _RS_GET.match(split.path):
            rs = self.replicasets.get((m["ns"], m["name"]))
            if rs is None:
                msg = f'replicasets.apps "{m["name"]}" not found'
                h.send_json(404, status_object(404, "NotFound", msg))
            else:
                h.send_json(200, rs)
            return
        m = _POD_LIST.match(split.path)
        if m is None:
            h.send_json(404, status_object(404, "NotFound", "the server could not find the requested resource"))
            return
        try:
            match = _selector(query.get("fieldSelector", ""), m["ns"])
        except ValueError as exc:
            h.send_json(400, status_object(400, "BadRequest", str(exc)))
            return
        if req.is_watch:
            self._watch(h, query, match)
        else:
            self._list(h, match)

    @staticmethod
    def _fault_applies(f: _Fault, req: Request) -> bool:
        if f.path_contains not in req.path:
            return False
        if f.watch_only:
            return req.is_watch
        if f.list_only:
            return not req.is_watch and _POD_LIST.match(req.path) is not None
        return True

    def _list(self, h: _Handler, match: Callable[[Obj | None], bool]) -> None:
        with self._cond:
            items = [copy.deepcopy(p) for p in self._pods.values() if match(p)]
            rv = self._rv
        h.send_json(
            200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}, "items": items}
        )

    def _watch(self, h: _Handler, query: dict[str, str], match: Callable[[Obj | None], bool]) -> None:
        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout)
        if self.max_watch_seconds is not None:
            timeout = min(timeout, self.max_watch_seconds)
        timeout += self.overrun_watch_seconds
        deadline = time.monotonic() + timeout
        bookmarks = query.get("allowWatchBookmarks") in {"true", "1"}
        raw_rv = query.get("resourceVersion", "")
        with self._cond:
            if raw_rv not in {"", "0"} and int(raw_rv) < self._compacted:
                expired = f"too old resource version: {raw_rv} ({self._compacted + 1})"
            else:
                expired = ""
        if expired and self.expired_as_http:
            h.send_json(410, status_object(410, "Expired", expired))
            return
        h.start_stream()
        with self._cond:
            silent = self._silent_watches > 0
            if silent:
                self._silent_watches -= 1
        if silent:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping)
            h.close_connection = True
            return
        if expired:
            # What the apiserver really does: HTTP 200, then one ERROR event, then the end.
            h.chunk(_line({"type": "ERROR", "object": status_object(410, "Expired", expired)}))
            h.end_stream()
            return
        me = _Watcher(bookmarks=bookmarks)
        me.next_bookmark = time.monotonic() + (self.bookmark_interval or float("inf"))
        pending: list[bytes] = []
        with self._cond:
            if raw_rv in {"", "0"}:
                # RV unset or "0": synthetic ADDED for the current state, then live.
                pending = [_line({"type": "ADDED", "object": p}) for p in self._pods.values() if match(p)]
                me.cursor = self._rv
            else:
                me.cursor = int(raw_rv)
            self._watchers.append(me)
        try:
            for data in pending:
                h.chunk(data)
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: (
                            self._stopping
                            or me.drop
                            or me.bookmark_wanted
                            or bool(me.raw)
                            or self._rv > me.cursor
                            or time.monotonic() >= min(deadline, me.next_bookmark)
                        ),
                        timeout=max(0.0, min(deadline - time.monotonic(), 0.25)),
                    )
                    if bookmarks and time.monotonic() >= me.next_bookmark:
                        me.bookmark_wanted = True
                        me.next_bookmark = time.monotonic() + (self.bookmark_interval or float("inf"))
                    if self._stopping:
                        return
                    if h.client_gone():
                        h.close_connection = True
                        return
                    out = list(me.raw)
                    me.raw.clear()
                    for ch in self._history:
                        if ch.rv > me.cursor and (ev := _filtered(ch, match)) is not None:
                            out.append(_line(ev))
                    me.cursor = max(me.cursor, self._rv)
                    if me.bookmark_wanted:
                        me.bookmark_wanted = False
                        out.append(_line({"type": "BOOKMARK", "object": _bookmark(self._rv)}))
                    drop = me.drop
                for data in out:
                    h.chunk(data)
                if drop:
                    h.cut(out[-1][: len(out[-1]) // 2] if out else b'{"type":"MODIFIED","object":{"kind":"Po')
                    return
                if time.monotonic() >= deadline:
                    h.end_stream()  # timeoutSeconds: a clean end of the stream
                    return
        except OSError:
            h.close_connection = True  # the client went away
        finally:
            with self._cond:
                self._watchers.remove(me)
                self._cond.notify_all()


def _line(event: Obj) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _bookmark(rv: int) -> Obj:
    # Byte for byte what kube-apiserver sends for a pod watch bookmark: an empty Pod.
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": str(rv), "creationTimestamp": None},
        "spec": {"containers": None},
        "status": {},
    }


def _selector(text: str, namespace: str | None) -> Callable[[Obj | None], bool]:
    """The field selectors the apiserver supports on pods that we need: spec.nodeName=X."""
    want: dict[str, str] = {}
    for term in filter(None, text.split(",")):
        m = re.fullmatch(r"([A-Za-z.]+)(==|=)(.*)", term)
        if m is None or m[1] not in {"spec.nodeName", "metadata.namespace", "metadata.name"}:
            raise ValueError(f'"{term}" is not a known field selector: only "spec.nodeName", "metadata.name"')
        want[m[1]] = m[3]

    def field_of(pod: Obj, path: str) -> str:
        top, key = path.split(".")
        return str(pod.get(top, {}).get(key) or "")

    def match(pod: Obj | None) -> bool:
        if pod is None:
            return False
        if namespace is not None and pod["metadata"]["namespace"] != namespace:
            return False
        return all(field_of(pod, k) == v for k, v in want.items())

    return match


def _filtered(ch: _Change, match: Callable[[Obj | None], bool]) -> Obj | None:
    """The event a filtered watcher sees: entering the selection is ADDED, leaving it DELETED."""
    was, now = match(ch.old), match(ch.new)
    if ch.type == "DELETED":
        return {"type": "DELETED", "object": ch.new} if was else None
    if now and not was:
        return {"type": "ADDED", "object": ch.new}
    if was and not now:
        return {"type": "DELETED", "object": ch.new}
    if now:
        return {"type": "MODIFIED", "object": ch.new}
    return None


@contextlib.contextmanager
def no_leaked_threads(grace_s: float = 2.0) -> Iterator[None]:
    """Every thread started inside (watch threads, the fake server's) is gone `grace_s` after it ends."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + grace_s
    while (extra := [t for t in threading.enumerate() if t not in before]) and time.monotonic() < deadline:
        extra[0].join(0.05)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


# ---- realistic pod JSON ---------------------------------------------------------------------
def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig that points the agent at `server` (the fake API), written to `path`."""
    path.write_text(
        json.dumps(
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


def gomaxprocs_pod(name: str, *, n: int) -> Obj:
    """The case node-agent exists for: a Deployment's pod `name` (`<deployment>-<hash>-<suffix>`)
    in namespace shop on node-a, one container `app` limited to 1 CPU with GOMAXPROCS=64 in its spec."""
    deployment, template_hash, _ = name.rsplit("-", 2)
    return make_pod(
        name,
        n=n,
        node="node-a",
        namespace="shop",
        owner=("ReplicaSet", f"{deployment}-{template_hash}"),
        labels={"app": deployment, "pod-template-hash": template_hash},
        containers=[make_container("app", limits={"cpu": "1"}, env=[{"name": "GOMAXPROCS", "value": "64"}])],
    )


def container_id(n: int, runtime: str = "containerd") -> str:
    return f"{runtime}://{n:064x}"


def uid_of(n: int) -> str:
    """The pod UID make_pod(n=n) gets."""
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def make_container(
    name: str,
    *,
    image: str = "registry.example.com/shop/api:v1.42.0",
    limits: dict[str, str] | None = None,
    requests: dict[str, str] | None = None,
    env: list[Obj] | None = None,
    env_from: list[Obj] | None = None,
    ports: list[int] | None = None,
    restart_policy: str | None = None,
) -> Obj:
    c: Obj = {
        "name": name,
        "image": image,
        "resources": {},
        "volumeMounts": [
            {
                "name": "kube-api-access-x7k2q",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    if limits:
        c["resources"]["limits"] = limits
    if requests or limits:
        # API defaulting: requests default to limits when only limits are given.
        c["resources"]["requests"] = requests or dict(limits or {})
    if env:
        c["env"] = env
    if env_from:
        c["envFrom"] = env_from
    if ports:
        c["ports"] = [{"name": f"p{p}", "containerPort": p, "protocol": "TCP"} for p in ports]
    if restart_policy:
        c["restartPolicy"] = restart_policy
    return c


def make_pod(
    name: str,
    *,
    n: int,
    node: str = "node-a",
    namespace: str = "shop",
    owner: tuple[str, str] | None = None,
    containers: list[Obj] | None = None,
    init_containers: list[Obj] | None = None,
    labels: dict[str, str] | None = None,
    qos: str | None = "Burstable",
    phase: str = "Running",
    runtime: str = "containerd",
) -> Obj:
    """A pod as `kubectl get pod -o json` shows it, with statuses and container IDs.

    ``n`` seeds the UID and container IDs (container k gets container_id(n * 100 + k)).
    """
    containers = containers or [make_container("app", limits={"cpu": "2", "memory": "1Gi"})]
    init_containers = init_containers or []
    meta: Obj = {
        "name": name,
        "namespace": namespace,
        "uid": uid_of(n),
        "resourceVersion": "0",
        "creationTimestamp": "2024-05-01T09:00:00Z",
        "labels": dict(labels or {"app.kubernetes.io/name": name.split("-", maxsplit=1)[0]}),
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-04-30T12:00:00Z"},
    }
    if owner is not None:
        kind, oname = owner
        api = {"ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "Job": "batch/v1"}
        meta["generateName"] = name.rsplit("-", 1)[0] + "-"
        meta["ownerReferences"] = [
            {
                "apiVersion": api.get(kind, "v1"),
                "kind": kind,
                "name": oname,
                "uid": uid_of(n + 10_000_000),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    statuses = []
    for k, c in enumerate(containers):
        statuses.append(
            {
                "name": c["name"],
                "state": {"running": {"startedAt": "2024-05-01T09:00:05Z"}},
                "lastState": {},
                "ready": True,
                "restartCount": 0,
                "image": c["image"],
                "imageID": "registry.example.com/shop/api@sha256:" + "ab" * 32,
                "containerID": container_id(n * 100 + k, runtime),
                "started": True,
            }
        )
    init_statuses = []
    for k, c in enumerate(init_containers, start=50):
        init_statuses.append(
            {
                "name": c["name"],
                "state": {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": "2024-05-01T09:00:01Z",
                        "finishedAt": "2024-05-01T09:00:03Z",
                        "containerID": container_id(n * 100 + k, runtime),
                    }
                },
                "lastState": {},
                "ready": True,
                "restartCount": 0,
                "image": c["image"],
                "imageID": "registry.example.com/shop/init@sha256:" + "cd" * 32,
                "containerID": container_id(n * 100 + k, runtime),
                "started": False,
            }
        )
    spec: Obj = {
        "volumes": [
            {
                "name": "kube-api-access-x7k2q",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    ],
                    "defaultMode": 420,
                },
            }
        ],
        "containers": containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "nodeName": node,
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if init_containers:
        spec["initContainers"] = init_containers
    status: Obj = {
        "phase": phase,
        "conditions": [
            {
                "type": "Initialized",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": "2024-05-01T09:00:04Z",
            },
            {"type": "Ready", "status": "True", "lastProbeTime": None, "lastTransitionTime": "2024-05-01T09:00:06Z"},
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": "2024-05-01T09:00:00Z",
            },
        ],
        "hostIP": "10.0.3.17",
        "podIP": f"10.244.3.{n % 250 + 2}",
        "podIPs": [{"ip": f"10.244.3.{n % 250 + 2}"}],
        "startTime": "2024-05-01T09:00:00Z",
        "containerStatuses": statuses,
    }
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    if qos is not None:
        status["qosClass"] = qos
    return {"metadata": meta, "spec": spec, "status": status}
