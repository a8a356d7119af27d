"""The HTTP server's pure parts: --listen, request heads, routes (the attacks run in tests/hostile/)."""

from __future__ import annotations

import gzip
import json

import pytest
from prometheus_client import CollectorRegistry, Counter

from agent.export.http import (
    BadRequest,
    Health,
    ProfileAccess,
    ProfileStore,
    Request,
    Routes,
    all_ready,
    parse_head,
    parse_listen,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":9464", [("", 9464)]),
        ("*:9464", [("", 9464)]),
        ("[::]:9464", [("::", 9464)]),
        ("127.0.0.1:0", [("127.0.0.1", 0)]),
        ("[::1]:9464", [("::1", 9464)]),
        ("fd00:10:244::5:9464", [("fd00:10:244::5", 9464)]),  # $(POD_IP):9464 with an IPv6 pod IP
        ("10.0.0.7:9464,127.0.0.1:9464", [("10.0.0.7", 9464), ("127.0.0.1", 9464)]),
    ],
)
def test_parse_listen(text: str, expected: list[tuple[str, int]]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", "host:", "host:http", ":70000", "[::1:9464", "zz::1:9464", ""])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)


def test_parse_head() -> None:
    req = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nAccept: a\r\naccept: b\r\nHost: h\r\n\r\n", 10)
    assert req == Request("GET", "/metrics?x=1", {"accept": "a, b", "host": "h"})
    assert parse_head(b"GET / HTTP/1.0\r\n\r\n", 10).headers["connection"] == "close"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /\r\n\r\n",
        b"GET / HTTP/2\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo-colon\r\n\r\n",
        b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nAccept: a\nX-Injected: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: \x00\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(11)) + b"\r\n",
    ],
)
def test_parse_head_refuses(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(head, 10)


def routes(access: ProfileAccess | None = None) -> Routes:
    registry = CollectorRegistry()
    Counter("probe", "a counter", registry=registry).inc(3)
    profiles = ProfileStore()
    profiles.replace({("shop", "web 1", "app/x"): b"\x1f\x8bprofile", ("", "", "unit.service"): b"p2"})
    health = Health()
    health.set_ready("")
    return Routes(registry, health.alive, health.ready, profiles, access or ProfileAccess(), render_cache_s=0.0)


def get(r: Routes, path: str, **headers: str) -> tuple[int, bytes, str, dict[str, str]]:
    resp = r.handle(Request("GET", path, {k.lower().replace("_", "-"): v for k, v in headers.items()}))
    return resp.status, resp.body, resp.content_type, dict(resp.headers)


def test_metrics_negotiates_format_and_encoding() -> None:
    r = routes()
    status, body, ctype, headers = get(r, "/metrics")
    assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert b"probe_total 3.0" in body and "Content-Encoding" not in headers
    _, body, ctype, headers = get(
        r, "/metrics", accept="application/openmetrics-text;version=1.0.0", accept_encoding="gzip"
    )
    assert ctype.startswith("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).endswith(b"# EOF\n")


def test_readyz_renders_every_component() -> None:
    probe = all_ready(lambda: (True, ["BPF sampler running"]), lambda: (False, ["kubernetes watch: not synced"]))
    r = Routes(CollectorRegistry(), lambda: (True, "ok"), probe, ProfileStore(), ProfileAccess(), 0.0)
    status, body, _, _ = get(r, "/readyz")
    assert status == 503
    assert body == b"not ready\nBPF sampler running\nkubernetes watch: not synced\n"


def test_profiles_listing_paths_are_fetchable() -> None:
    r = routes(ProfileAccess(enabled=True))
    listing = json.loads(get(r, "/profiles")[1])
    assert {e["path"] for e in listing} == {"/profiles/shop/web%201/app%2Fx", "/profiles/-/-/unit.service"}
    for entry in listing:
        status, body, _, _ = get(r, entry["path"])
        assert status == 200 and body


def test_profiles_token_is_compared_whole() -> None:
    r = routes(ProfileAccess(enabled=True, token="0123456789abcdef"))
    assert get(r, "/profiles")[0] == 401
    assert get(r, "/profiles", authorization="Bearer 0123456789abcde")[0] == 401
    assert get(r, "/profiles", authorization="Bearer 0123456789abcdef0")[0] == 401
    assert get(r, "/profiles", authorization="Bearer 0123456789abcdef")[0] == 200
