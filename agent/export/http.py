"""The daemon's HTTP endpoints: /metrics, /healthz, /readyz, /profiles.

A small threaded stdlib server: scrapes read the collector's last published
state, so they never wait for a sampling cycle. ``/readyz`` is 503 with the
reason while BPF is not running; ``/healthz`` is 200 while the loop is alive
(it stalls only if the cycle thread has not finished a cycle for a while).

``/profiles`` lists the latest window's pprof profiles, one per container;
``/profiles/<namespace>/<pod>/<container>`` (or ``/profiles/-/-/<name>``
outside Kubernetes) returns one, gzipped protobuf for ``go tool pprof``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent.export.safe import from_path_segment, path_segment, text


@dataclass
class Health:
    """What the probes report; written by the daemon loop."""

    ready_reason: str = "starting"  # "" when ready
    notes: Callable[[], list[str]] | None = None  # lines /readyz adds either way (the pod watch's health)
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


def _handler(registry: CollectorRegistry, health: Health, profiles: ProfileStore) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "node-agent"

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every 15 s would flood the log

        def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            if path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok, why = health.alive()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, (why + "\n").encode())
            elif path == "/readyz":
                reason = health.ready_reason
                notes = "".join(text(n, 1024) + "\n" for n in (health.notes() if health.notes else []))
                if reason:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}\n{notes}".encode())
                else:
                    self._send(HTTPStatus.OK, f"ok\n{notes}".encode())
            elif path == "/profiles":
                listing = [
                    {"namespace": ns, "pod": pod, "container": c, "path": profile_path((ns, pod, c))}
                    for ns, pod, c in profiles.available()
                ]
                self._send(HTTPStatus.OK, json.dumps(listing, indent=1).encode(), "application/json")
            elif path.startswith("/profiles/"):
                parts = [from_path_segment(p) for p in path.split("/")[2:]]
                if len(parts) != 3:
                    self._send(HTTPStatus.NOT_FOUND, b"use /profiles/<namespace>/<pod>/<container>\n")
                    return
                ns, pod, c = parts
                body = profiles.get((ns, pod, c))
                if body is None:
                    self._send(HTTPStatus.NOT_FOUND, b"no profile for that container in the latest window\n")
                else:
                    self._send(HTTPStatus.OK, body, "application/octet-stream")
            elif path == "/":
                self._send(HTTPStatus.OK, b"node-agent: /metrics /healthz /readyz /profiles\n")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n")

    return Handler


class AgentHTTPServer:
    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, health: Health, profiles: ProfileStore
    ) -> None:
        self._server = ThreadingHTTPServer(address, _handler(registry, health, profiles))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def parse_listen(text: str) -> tuple[str, int]:
    """ ":9464" -> ("0.0.0.0", 9464); "127.0.0.1:0" -> ("127.0.0.1", 0). IPv4 only."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {text!r}")
    host = host or "0.0.0.0"
    return host, int(port)
