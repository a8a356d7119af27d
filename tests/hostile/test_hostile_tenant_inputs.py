"""Issue 12, tenant inputs: pod specs, the pod watch, and every string a tenant names.

Each test builds one attack for real (a pod object served by the project's fake API
server over its real list/watch protocol, a real process with a hostile name, a real Go
binary's function names) and asserts what the agent must do: stay up and bounded, keep
its watch live, count the hostile item, keep honest items right, and emit output that its
consumer (promtool, json, a terminal, a folded-stack reader) accepts as intended.
"""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from agent.kube.spec import SourceKind
from agent.kube.watch import KubeMetadata, WatchSettings
from tests.fakeapi import FakeKubeAPI, make_container, make_pod, uid_of

WAIT = 20.0
FAST = WatchSettings(
    watch_timeout_s=5,
    connect_timeout_s=1.0,
    list_timeout_s=2.0,
    bookmark_interval_s=6.0,
    backoff_initial_s=0.02,
    backoff_cap_s=0.2,
)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while (extra := [t for t in threading.enumerate() if t not in before]) and time.monotonic() < deadline:
        extra[0].join(0.05)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def watch(api: FakeKubeAPI) -> Iterator[Any]:
    made: list[KubeMetadata] = []

    def make(**settings: Any) -> KubeMetadata:
        kube = KubeMetadata("node-a", api.configuration(), settings=replace(FAST, **settings), rng=random.Random(3))
        made.append(kube)
        return kube.start()

    yield make
    for kube in made:
        assert kube.stop(), "the watch thread did not stop"


def _synced(api: FakeKubeAPI, kube: KubeMetadata) -> None:
    assert kube.wait_synced(WAIT)
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)


# =============================================================================================
# The pod watch
# =============================================================================================
def test_watch_accepted_but_never_answered_is_cut_and_resumed(api: FakeKubeAPI, watch: Any) -> None:
    # The attack: the apiserver (or a proxy) accepts the watch, sends 200 and then nothing.
    # Before: metadata stale for the whole watch (up to 10 min), no error counted.
    api.silence_next_watches(1)
    kube = watch(bookmark_interval_s=0.3)  # idle limit 0.6 s; the fake bookmarks every 0.2 s
    assert kube.wait_synced(WAIT)
    rv = api.create_pod(make_pod("late-0", n=5))
    t0 = time.monotonic()
    assert kube.wait_until(lambda: uid_of(5) in kube.snapshot(), WAIT)
    assert time.monotonic() - t0 < 5.0  # the silent watch was cut after ~0.6 s, not at timeoutSeconds
    st = kube.status()
    assert st.errors_by_kind.get("watch_stalled") == 1 and st.last_error_kind == "watch_stalled"
    assert st.lists == 1 and st.resource_version is not None and int(st.resource_version) >= int(rv)
    # honest watches with periodic bookmarks are never cut for silence
    time.sleep(1.5)
    assert kube.status().errors_by_kind.get("watch_stalled") == 1


def test_watch_malformed_events_are_skipped_and_later_events_kept(api: FakeKubeAPI, watch: Any) -> None:
    kube = watch()
    _synced(api, kube)
    garbage = [
        b"this is not json\n",
        b'{"type":"ADDED"}\n',  # no object
        b'{"type":"EXPLODE","object":{}}\n',
        b'{"type":"MODIFIED","object":"a string"}\n',
        b"[" * 50_000 + b"\n",  # nested past Python's recursion limit
        b"\xff\xfe\xfd\n",
    ]
    assert api.inject(b"".join(garbage)) == 1
    rv = api.create_pod(make_pod("after-0", n=6))
    assert kube.wait_until(lambda: uid_of(6) in kube.snapshot(), WAIT)
    st = kube.status()
    assert st.errors_by_kind.get("event_malformed") == len(garbage)
    assert st.events_skipped == len(garbage) and st.resource_version == rv
    assert st.watch_restarts == 0 and st.errors == 0  # the same stream went on


def test_watch_line_without_newline_does_not_grow_memory(api: FakeKubeAPI, watch: Any) -> None:
    api.bookmark_interval = None  # a bookmark's newline would end the line early
    kube = watch(max_event_bytes=256 * 1024, watch_timeout_s=120)  # one stream carries the whole line
    _synced(api, kube)
    chunk = b"x" * 2**20
    tracemalloc.start()
    try:
        for _ in range(48):  # 48 MiB of one line, written as fast as the agent reads it
            api.inject(chunk)
            assert api.wait_for(lambda: api.pending_raw() == 0, WAIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB while a 48 MiB line streamed"
    api.inject(b"\n")
    rv = api.create_pod(make_pod("after-1", n=7))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    st = kube.status()
    assert uid_of(7) in kube.snapshot() and st.errors_by_kind.get("event_too_large") == 1


def test_watch_event_over_the_size_cap_costs_that_event_only(api: FakeKubeAPI, watch: Any) -> None:
    kube = watch(max_event_bytes=64 * 1024)
    _synced(api, kube)
    fat = make_pod("fat-0", n=8)
    fat["metadata"]["annotations"] = {"blob": "y" * 200_000}
    api.create_pod(fat)
    rv = api.create_pod(make_pod("thin-0", n=9))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert uid_of(9) in kube.snapshot() and uid_of(8) not in kube.snapshot()
    assert kube.status().errors_by_kind.get("event_too_large") == 1


# =============================================================================================
# Pod specs
# =============================================================================================
def _bomb_env(n: int = 30) -> list[dict[str, str]]:
    env = [{"name": "V0", "value": "0123456789abcdef"}]
    env += [{"name": f"V{i}", "value": f"$(V{i - 1})$(V{i - 1})"} for i in range(1, n + 1)]
    return [*env, {"name": "GOMAXPROCS", "value": f"$(V{n})"}, {"name": "GODEBUG", "value": f"x=$(V{n})"}]


def bomb_pod(n: int, name: str = "bomb-0") -> dict[str, Any]:
    """The pod of the attack: 30 env vars each "$(PREV)$(PREV)" (3.7 kB of YAML, 16 GiB expanded)."""
    return make_pod(name, n=n, containers=[make_container("app", limits={"cpu": "1"}, env=_bomb_env())])


def test_pod_spec_env_doubling_bomb_through_the_watch_is_counted_not_expanded(api: FakeKubeAPI, watch: Any) -> None:
    honest = make_pod("honest-0", n=11, containers=[make_container("app", env=[{"name": "GOMAXPROCS", "value": "4"}])])
    api.create_pod(honest)
    kube = watch()
    _synced(api, kube)
    tracemalloc.start()
    try:
        rv = api.create_pod(bomb_pod(10))
        assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20
    bomb = kube.lookup(uid_of(10), f"{10 * 100:064x}")
    assert bomb is not None and bomb.spec_gomaxprocs is not None
    assert bomb.spec_gomaxprocs.kind is SourceKind.UNRESOLVED and bomb.godebug is None
    assert kube.status().errors_by_kind.get("pod_spec_over_budget") == 1
    ok = kube.lookup(uid_of(11), f"{11 * 100:064x}")
    assert ok is not None and ok.spec_gomaxprocs is not None and ok.spec_gomaxprocs.resolved == 4
