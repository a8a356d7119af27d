"""The daemon's HTTP endpoints: /metrics, /healthz, /readyz, /profiles.

Anything that can reach the port is untrusted, and the sampling loop must never share a fate with
it. So one event-loop thread owns every socket and only moves bytes; a small fixed pool of worker
threads answers complete requests. What one client can hold is bounded:

- connections: at most ``max_connections`` (also at most a quarter of the fd limit, so the sampler
  always has descriptors); a new connection closes the oldest one that is not being answered, so
  idle or half-sent connections cannot lock Prometheus out;
- time: a request head must arrive within ``header_timeout_s`` of its first byte (slowloris), an
  idle keep-alive connection lives ``idle_timeout_s``, a response must drain within
  ``write_timeout_s``;
- memory: a request head is at most ``max_header_bytes``, requests have no body, threads are the
  loop plus ``workers``; a rendered /metrics is shared by the scrapes of the same second;
- accept failures (EMFILE, ENOBUFS) pause accepting for a second (asyncio's own back-off), are
  counted, and never reach the sampling loop.

/metrics is rendered by prometheus_client's own encoders (``choose_encoder``): OpenMetrics when the
Accept header asks for it, gzip when Accept-Encoding allows it. /healthz and /readyz render what the
daemon's callbacks say (:data:`HealthProbe`, :data:`ReadyProbe`). /profiles (each container's pprof
profile: function names, source paths, exe path, build ID) is off unless enabled, and can require a
bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hmac
import json
import logging
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from agent.errors import NodeAgentError
from agent.export.safe import from_path_segment, path_segment, text

log = logging.getLogger("node_agent.http")

HealthProbe = Callable[[], tuple[bool, str]]
"""/healthz: (alive, one line saying why not, or what is fine). False -> 503, the kubelet restarts."""

ReadyProbe = Callable[[], tuple[bool, list[str]]]
"""/readyz: (ready, lines to show: the reasons when not ready, any status worth reading when ready)."""

ErrorSink = Callable[[str], None]
"""Counts one item error by kind (``node_agent_errors_total{kind=...}``)."""


def all_ready(*probes: ReadyProbe) -> ReadyProbe:
    """One /readyz from several components: ready when all are, every component's lines shown."""

    def probe() -> tuple[bool, list[str]]:
        ok, lines = True, []
        for p in probes:
            one_ok, one_lines = p()
            ok = ok and one_ok
            lines.extend(one_lines)
        return ok, lines

    return probe


@dataclass
class Health:
    """The sampling loop's own probes, written by the daemon loop."""

    ready_reason: str = "starting"  # "" when ready
    last_cycle: float = field(default_factory=time.monotonic)
    stall_after_s: float = 300.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_ready(self, reason: str = "") -> None:
        with self.lock:
            self.ready_reason = reason

    def beat(self) -> None:
        with self.lock:
            self.last_cycle = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        with self.lock:
            age = time.monotonic() - self.last_cycle
        if age > self.stall_after_s:
            return False, f"no cycle completed for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, list[str]]:
        with self.lock:
            reason = self.ready_reason
        return (False, [reason]) if reason else (True, ["BPF sampler running"])


ProfileKey = tuple[str, str, str]


def profile_path(key: ProfileKey) -> str:
    """The URL that serves ``key``: each segment made safe, so every listed path is fetchable."""
    return "/profiles/" + "/".join(path_segment(part) for part in key)


class ProfileStore:
    """Latest window's gzipped profiles by (namespace, pod, container)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._profiles: dict[ProfileKey, bytes] = {}

    def replace(self, profiles: dict[ProfileKey, bytes]) -> None:
        with self._lock:
            self._profiles = dict(profiles)

    def available(self) -> list[ProfileKey]:
        with self._lock:
            return sorted(self._profiles)

    def get(self, key: ProfileKey) -> bytes | None:
        with self._lock:
            return self._profiles.get(key)


@dataclass(frozen=True)
class ProfileAccess:
    """Who may read /profiles: nobody (the default), anyone who reaches the port, or bearer-token holders."""

    enabled: bool = False
    token: str = ""

    @classmethod
    def from_token_file(cls, path: str | os.PathLike[str]) -> ProfileAccess:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read(4096).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise NodeAgentError(f"cannot read the /profiles token file {path}: {exc}") from None
        if len(token) < 16:
            raise NodeAgentError(f"the /profiles token in {path} is shorter than 16 characters")
        return cls(enabled=True, token=token)


@dataclass(frozen=True)
class HTTPLimits:
    max_connections: int = 128
    workers: int = 4
    header_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0
    write_timeout_s: float = 10.0
    max_header_bytes: int = 8192
    max_headers: int = 64
    render_cache_s: float = 1.0  # scrapes within this share one rendering

    def connection_cap(self) -> int:
        """At most a quarter of the fd limit goes to clients (the backlog transiently adds as many)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(4, min(self.max_connections, soft // 4))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class BadRequest(Exception):
    pass


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def parse_head(head: bytes, max_headers: int) -> Request:
    """The request line and headers of one HTTP/1.x request (no body allowed)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable request") from None
    if _CONTROL.search(text.replace("\r\n", "")):
        raise BadRequest("control characters in the request head")  # a bare CR or LF could split a response
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header")
        if len(headers) >= max_headers:
            raise BadRequest("too many headers")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise BadRequest("request bodies are not accepted")
    if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers["connection"] = "close"
    return Request(method, target, headers)


class Routes:
    """What each path answers; runs on a worker thread, never on the event loop."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: HealthProbe,
        ready: ReadyProbe,
        profiles: ProfileStore,
        access: ProfileAccess,
        render_cache_s: float,
    ) -> None:
        self.registry = registry
        self.health = health
        self.ready = ready
        self.profiles = profiles
        self.access = access
        self.render_cache_s = render_cache_s
        self._cache_lock = threading.Lock()
        self._cache: dict[tuple[str, bool], tuple[float, bytes, str]] = {}

    def handle(self, req: Request) -> Response:
        path = urlsplit(req.path).path.rstrip("/") or "/"
        if path == "/metrics":
            return self.metrics(req)
        if path == "/healthz":
            ok, why = self.health()
            return Response(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, f"{why}\n".encode())
        if path == "/readyz":
            ok, lines = self.ready()
            body = "".join(f"{text(line, 1024)}\n" for line in ["ok" if ok else "not ready", *lines])
            return Response(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body.encode())
        if path == "/profiles" or path.startswith("/profiles/"):
            return self.profile(req, path)
        if path == "/":
            return Response(HTTPStatus.OK, b"node-agent: /metrics /healthz /readyz /profiles\n")
        return Response(HTTPStatus.NOT_FOUND, b"not found\n")

    def metrics(self, req: Request) -> Response:
        encoder, content_type = choose_encoder(req.headers.get("accept", ""))
        gz = gzip_accepted(req.headers.get("accept-encoding", ""))
        key = (content_type, gz)
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < self.render_cache_s:
                return self._metrics_response(hit[1], content_type, gz)
            body = encoder(self.registry)
            if gz:
                body = gzip.compress(body, compresslevel=6, mtime=0)
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] < self.render_cache_s}
            self._cache[key] = (now, body, content_type)
        return self._metrics_response(body, content_type, gz)

    @staticmethod
    def _metrics_response(body: bytes, content_type: str, gz: bool) -> Response:
        headers = (("Content-Encoding", "gzip"),) if gz else ()
        return Response(HTTPStatus.OK, body, content_type, (("Vary", "Accept, Accept-Encoding"), *headers))

    def profile(self, req: Request, path: str) -> Response:
        if not self.access.enabled:
            return Response(HTTPStatus.NOT_FOUND, b"/profiles is disabled; start the agent with --profiles\n")
        if self.access.token:
            given = req.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode("latin-1"), f"Bearer {self.access.token}".encode("latin-1")):
                challenge = (("WWW-Authenticate", "Bearer"),)
                return Response(HTTPStatus.UNAUTHORIZED, b"/profiles needs the bearer token\n", headers=challenge)
        nocache = (("Cache-Control", "no-store"),)
        if path == "/profiles":
            listing = [
                {
                    "namespace": ns,
                    "pod": pod,
                    "container": c,
                    "path": profile_path((ns, pod, c)),
                }
                for ns, pod, c in self.profiles.available()
            ]
            return Response(HTTPStatus.OK, json.dumps(listing, indent=1).encode(), "application/json", nocache)
        parts = [from_path_segment(p) for p in path.split("/")[2:]]
        if len(parts) != 3:
            return Response(HTTPStatus.NOT_FOUND, b"use /profiles/<namespace>/<pod>/<container>\n")
        ns, pod, c = parts
        body = self.profiles.get((ns, pod, c))  # an in-memory map: no path ever reaches the filesystem
        if body is None:
            return Response(HTTPStatus.NOT_FOUND, b"no profile for that container in the latest window\n")
        return Response(HTTPStatus.OK, body, "application/octet-stream", nocache)


class _Conn:
    __slots__ = ("opened", "serving", "task", "writer")

    def __init__(self, writer: asyncio.StreamWriter, task: asyncio.Task[Any] | None) -> None:
        self.writer = writer
        self.task = task
        self.serving = False
        self.opened = time.monotonic()


def _listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket; "" and "::" are dual-stack (IPv6 and IPv4) where the host has IPv6."""
    if host in ("", "::") and socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            if host == "::":
                raise
            host = "0.0.0.0"
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            return _bind(sock, ("::", port))
    infos = socket.getaddrinfo(host or "0.0.0.0", port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return _bind(sock, addr)


def _bind(sock: socket.socket, addr: Any) -> socket.socket:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class AgentHTTPServer:
    """The hardened server: bind in the constructor (errors surface at start-up), serve on a thread."""

    def __init__(
        self,
        addresses: Sequence[tuple[str, int]],
        registry: CollectorRegistry,
        *,
        health: HealthProbe,
        ready: ReadyProbe,
        profiles: ProfileStore,
        access: ProfileAccess = ProfileAccess(),
        limits: HTTPLimits = HTTPLimits(),
        on_error: ErrorSink | None = None,
    ) -> None:
        self.limits = limits
        self.cap = limits.connection_cap()
        self.routes = Routes(registry, health, ready, profiles, access, limits.render_cache_s)
        self._on_error = on_error or (lambda kind: None)
        self._socks: list[socket.socket] = []
        try:
            for host, port in addresses:
                try:
                    self._socks.append(_listen_socket(host, port))
                except OSError as exc:
                    where = format_address(host, port)
                    raise NodeAgentError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        except NodeAgentError:
            for s in self._socks:
                s.close()
            raise
        self._conns: dict[asyncio.StreamWriter, _Conn] = {}
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="http-worker")
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._socks[0].getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self._socks]

    def connections(self) -> int:
        return len(self._conns)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._shutdown()))
            self._thread.join(timeout=10)
        else:
            for s in self._socks:
                s.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- the event loop ---------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        for sock in self._socks:
            # backlog also bounds how many connections one wake-up accepts before the cap is applied
            backlog = max(4, self.cap // 4)
            server = self._loop.run_until_complete(
                asyncio.start_server(self._accepted, sock=sock, limit=self.limits.max_header_bytes, backlog=backlog)
            )
            self._servers.append(server)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        tasks = [c.task for c in self._conns.values() if c.task is not None]
        for conn in list(self._conns.values()):
            self._drop(conn)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._loop.stop()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """asyncio reports accept() failures here and retries a second later: count, log once a minute."""
        exc = context.get("exception")
        kind = "http_accept_failed" if "accept" in str(context.get("message", "")) else "http_internal"
        self._on_error(kind)
        now = time.monotonic()
        if now - getattr(self, "_last_loop_log", -1e9) > 60:
            self._last_loop_log = now
            log.warning("http: %s: %s (accepting pauses, then resumes)", context.get("message"), exc)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer, asyncio.current_task())
        if len(self._conns) >= self.cap:
            victims = sorted((c for c in self._conns.values() if not c.serving), key=lambda c: c.opened)
            if not victims:
                self._on_error("http_connection_refused")
                writer.transport.abort()
                return
            self._on_error("http_connection_evicted")
            self._drop(victims[0])
        self._conns[writer] = conn
        try:
            await self._serve(reader, conn)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except TimeoutError:
            self._on_error("http_timeout")
        except (asyncio.LimitOverrunError, ValueError):
            self._on_error("http_bad_request")
            too_large = Response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"request head too large\n")
            await self._reply_and_close(conn, too_large)
        except BadRequest as exc:
            self._on_error("http_bad_request")
            await self._reply_and_close(conn, Response(HTTPStatus.BAD_REQUEST, f"{exc}\n".encode()))
        finally:
            self._conns.pop(writer, None)
            writer.transport.abort()

    def _drop(self, conn: _Conn) -> None:
        self._conns.pop(conn.writer, None)
        conn.writer.transport.abort()
        if conn.task is not None:
            conn.task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, conn: _Conn) -> None:
        lim = self.limits
        kept_alive = False
        while True:
            # The first byte may take the keep-alive idle time; the rest of the head must follow quickly.
            try:
                first = await asyncio.wait_for(
                    reader.readexactly(1), lim.idle_timeout_s if kept_alive else lim.header_timeout_s
                )
            except TimeoutError:
                if kept_alive:
                    return  # an idle keep-alive connection expiring is normal, not an error
                raise
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), lim.header_timeout_s)
            req = parse_head(head, lim.max_headers)
            conn.serving = True
            if req.method not in ("GET", "HEAD"):
                resp = Response(HTTPStatus.METHOD_NOT_ALLOWED, b"GET or HEAD only\n", headers=(("Allow", "GET, HEAD"),))
            else:
                try:
                    resp = await self._loop.run_in_executor(self._pool, self.routes.handle, req)
                except Exception:  # a bug in one route answers 500, the server goes on
                    log.exception("http: %s %s failed", req.method, req.path[:200])
                    self._on_error("http_handler_failed")
                    resp = Response(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n")
            keep = req.headers.get("connection", "").lower() != "close"
            await self._write(conn, resp, keep, head_only=req.method == "HEAD")
            conn.serving = False
            if not keep:
                return
            conn.opened = time.monotonic()  # eviction order is by last activity
            kept_alive = True

    async def _write(self, conn: _Conn, resp: Response, keep: bool, head_only: bool = False) -> None:
        status = HTTPStatus(resp.status)
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Content-Type: {resp.content_type}",
            f"Content-Length: {len(resp.body)}",
            "X-Content-Type-Options: nosniff",
            f"Connection: {'keep-alive' if keep else 'close'}",
            *(f"{k}: {v}" for k, v in resp.headers),
        ]
        conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            conn.writer.write(resp.body)
        await asyncio.wait_for(conn.writer.drain(), self.limits.write_timeout_s)

    async def _reply_and_close(self, conn: _Conn, resp: Response) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._write(conn, resp, keep=False)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str) -> list[tuple[str, int]]:
    """``--listen``: comma-separated HOST:PORT. ":9464" and "[::]:9464" are every address, IPv6 and
    IPv4; "127.0.0.1:9464", "[::1]:9464", "$(POD_IP):9464" (a bare IPv6 pod IP works too) one."""
    out: list[tuple[str, int]] = []
    for item in (t.strip() for t in text.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"--listen wants HOST:PORT (IPv6 as [ADDR]:PORT), got {item!r}")
        if host.startswith("[") != host.endswith("]"):
            raise ValueError(f"--listen: unbalanced brackets in {item!r}")
        host = host.removeprefix("[").removesuffix("]")
        if host == "*":
            host = ""
        if ":" in host:
            try:
                socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
            except OSError:
                raise ValueError(f"--listen: {host!r} is not an IPv6 address") from None
        out.append((host, int(port)))
    return out
