"""agent/kube/watch.py's pure parts: splitting a watch stream into bounded lines, one line -> event."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from agent.kube.watch import KubeStatus, LineSplitter, parse_event


def _feed_all(s: LineSplitter, pieces: list[bytes]) -> list[bytes]:
    return [line for p in pieces for line in s.feed(p)]


def test_lines_split_across_and_within_chunks() -> None:
    s = LineSplitter(100)
    assert _feed_all(s, [b'{"a":', b"1}\n{", b'"b":2}\n\n{"c":3}\n']) == [b'{"a":1}', b'{"b":2}', b"", b'{"c":3}']
    assert s.oversized == 0


def test_watch_line_without_newline_is_dropped_as_it_arrives() -> None:
    s = LineSplitter(1000)
    for _ in range(10_000):  # 10 MB of one line, never held
        assert s.feed(b"x" * 1000) == []
        assert len(s._buf) <= 1000
    assert s.oversized == 1
    # the newline ends the oversized line; the next one is whole again
    assert s.feed(b"tail\n" + b'{"ok":1}\n') == [b'{"ok":1}']
    assert s.oversized == 1


def test_oversized_line_within_one_chunk_is_counted_and_neighbours_kept() -> None:
    s = LineSplitter(10)
    assert s.feed(b"short\n" + b"y" * 50 + b"\nnext\n") == [b"short", b"next"]
    assert s.oversized == 1


def test_line_exactly_at_the_cap_is_kept() -> None:
    s = LineSplitter(4)
    assert _feed_all(s, [b"ab", b"cd", b"\n"]) == [b"abcd"]


EVENTS = [
    (b'{"type":"ADDED","object":{"metadata":{}}}', True),
    (b'{"type":"BOOKMARK","object":{}}', True),
    (b"not json", False),
    (b'{"type":"ADDED"}', False),  # no object
    (b'{"type":7,"object":{}}', False),
    (b'{"type":"ADDED","object":[]}', False),
    (b"[1,2,3]", False),
    (b"\xff\xfe", False),
    (b"[" * 100_000, False),  # nesting past Python's recursion limit
]


@pytest.mark.parametrize(("line", "ok"), EVENTS, ids=[repr(e[0][:20]) for e in EVENTS])
def test_parse_event(line: bytes, ok: bool) -> None:
    event = parse_event(line)
    assert (event is not None) == ok
    if ok:
        assert event == json.loads(line)


def test_status_summary_says_what_happens_without_the_api() -> None:
    base = KubeStatus(
        state="backoff",
        reason="kubeconfig x",
        synced=False,
        last_error="MaxRetryError: refused",
        resource_version=None,
        pods=0,
        lists=0,
        relists=0,
        expired=0,
        watch_restarts=0,
        errors=3,
        events={},
        bad_objects=0,
        dropped_pods=0,
        errors_by_kind={"api_unreachable": 3, "event_malformed": 2},
        last_error_kind="api_unreachable",
        last_error_age_s=4.2,
    )
    text = base.summary()
    assert "not synced: workloads are named by cgroup" in text and "2 events skipped" in text
    assert "last error 4s ago (api_unreachable): MaxRetryError: refused" in text
    off = replace(base, state="disabled", reason="NODE_NAME is not set")
    assert off.summary() == "kubernetes: off (NODE_NAME is not set); workloads are named by cgroup"
