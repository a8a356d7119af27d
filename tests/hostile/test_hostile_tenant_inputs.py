"""Issue 12, tenant inputs: pod specs, the pod watch, and every string a tenant names.

Each test builds one attack for real (a pod object served by the project's fake API
server over its real list/watch protocol, a real process with a hostile name, a real Go
binary's function names) and asserts what the agent must do: stay up and bounded, keep
its watch live, count the hostile item, keep honest items right, and emit output that its
consumer (promtool, json, a terminal, a folded-stack reader) accepts as intended.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from agent.export import safe
from agent.kube.spec import SourceKind
from agent.kube.watch import KubeMetadata, WatchSettings
from tests.hostile.tenants import (
    HOSTILE_COMMS,
    MARKUP_COMM,
    forge_binary,
    hostile_names,
    manifest_memory_limit,
    memory_cgroup,
    memory_peak,
    mib,
    named_busy_process,
    oom_kills,
)
from tests.support.capabilities import need
from tests.support.fakeapi import (
    FakeKubeAPI,
    gomaxprocs_pod,
    kubeconfig,
    make_container,
    make_pod,
    no_leaked_threads,
    uid_of,
)
from tests.support.loopback import free_port, get, parse_samples, running_agent, wait_for
from tests.support.workloads import V1_CPU, Cgroup, build_demo, kubelet_pod_cgroup, load, need_v1_cpu_cgroup, service

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
    with no_leaked_threads():
        yield


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
    kube = watch(bookmark_interval_s=1.0)  # idle limit 2 s; the fake bookmarks every 0.2 s
    assert kube.wait_synced(WAIT)
    rv = api.create_pod(make_pod("late-0", n=5))
    t0 = time.monotonic()
    assert kube.wait_until(lambda: uid_of(5) in kube.snapshot(), WAIT)
    assert time.monotonic() - t0 < 8.0  # the silent watch was cut after ~2 s, not at timeoutSeconds (5-10 s)
    st = kube.status()
    assert st.errors_by_kind.get("watch_stalled") == 1 and st.last_error_kind == "watch_stalled"
    assert st.lists == 1 and st.resource_version is not None and int(st.resource_version) >= int(rv)
    # honest watches with periodic bookmarks are never cut for silence
    time.sleep(3.0)
    assert kube.status().errors_by_kind.get("watch_stalled") == 1


def test_watch_that_never_ends_is_cut_at_its_deadline(api: FakeKubeAPI, watch: Any) -> None:
    # A server (or proxy) that ignores timeoutSeconds and keeps the stream alive with bookmarks.
    api.overrun_watch_seconds = 60.0
    t0 = time.monotonic()
    kube = watch(watch_timeout_s=1, bookmark_interval_s=0.5)  # deadline: timeoutSeconds (1-2 s) + 1 s
    assert kube.wait_until(lambda: kube.status().errors_by_kind.get("watch_deadline", 0) >= 1, WAIT)
    assert time.monotonic() - t0 < 15.0  # vs the 60 s the server would have kept it open
    assert api.wait_for(lambda: len(api.watch_requests()) >= 2, WAIT)  # and a new watch resumed
    assert kube.status().lists == 1


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


# =============================================================================================
# The real daemon and a real scan, on a node of hostile tenants
# =============================================================================================
@dataclass
class Node:
    """What one run of the real daemon (and one `scan`) next to hostile tenants produced."""

    limit: int  # the manifest's memory limit, the daemon's cgroup limit
    peak: int  # the daemon cgroup's memory high-water mark
    oom_kills: int
    alive: bool
    exit_code: int | None
    metrics: bytes  # the last /metrics body
    readyz: tuple[int, bytes]
    profiles: list[tuple[dict[str, str], int, bytes]]  # listing entry, status, body
    log: str
    scan_code: int
    scan_table: str
    scan_stderr: str
    folded: str
    honest: dict[str, str]  # the honest pod's labels


def _value(body: bytes, name: str, **labels: str) -> float | None:
    got = [v for lbl, v in parse_samples(body).get(name, []) if lbl.items() >= labels.items()]
    return got[0] if got else None


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    need_v1_cpu_cgroup()
    limit = manifest_memory_limit()
    tmp = tmp_path_factory.mktemp("hostile")
    demo = build_demo()
    forged = forge_binary(demo, tmp / "forged-demo")
    names = tmp / "names"
    names.mkdir()
    links = hostile_names(forged, names)
    honest = gomaxprocs_pod("web-5f6d7c8b9-honest", n=4343)
    port = free_port()
    log_path = tmp / "agent.log"
    with contextlib.ExitStack() as stack:
        cg = stack.enter_context(
            kubelet_pod_cgroup(
                honest["metadata"]["uid"], honest["status"]["containerStatuses"][0]["containerID"], "hostile"
            )
        )
        api = stack.enter_context(FakeKubeAPI(bookmark_interval=5.0))
        api.create_pod(honest)
        api.create_pod(bomb_pod(90, "bomb-listed"))  # seen by the first list
        svc = stack.enter_context(service(demo, cg, {"GOMAXPROCS": "64"}))
        stack.enter_context(load(demo, svc.url, 900, concurrency=2))  # killed on exit
        for link in links:  # in the root cgroup: their label is their process name
            bad = stack.enter_context(service(link, Cgroup(V1_CPU), {"GOMAXPROCS": "3"}))
            stack.enter_context(load(demo, bad.url, 900, concurrency=2))
        mem = stack.enter_context(memory_cgroup(limit))
        cfg = kubeconfig(tmp / "kubeconfig", api.url)
        agent = stack.enter_context(
            running_agent(
                log_path, port, "--node-name", "node-a", "--profiles", env={"KUBECONFIG": str(cfg)}, cgroup=mem
            )
        )
        labels = {"namespace": "shop", "pod": "web-5f6d7c8b9-honest", "container": "app"}
        hostile_labels = {safe.label(os.fsdecode(name)[:15]) for name in HOSTILE_COMMS}

        def all_seen() -> bytes | None:
            status, body = get(f"http://127.0.0.1:{port}/metrics")
            if status != 200:
                return None
            seen = {lbl.get("container") for lbl, _ in parse_samples(body).get("node_agent_go_gomaxprocs", [])}
            flagged = _value(body, "node_agent_go_misconfigured", **labels)
            return body if flagged and hostile_labels <= seen else None

        wait_for(all_seen, 150, "the honest pod flagged and every hostile process exported")
        # now through the watch: another bomb, and lines that are not events
        api.create_pod(bomb_pod(91, "bomb-watched"))
        api.inject(b"not an event\n" + b'{"type":"ADDED","object":"x"}\n')

        def counted() -> bytes | None:
            _, body = get(f"http://127.0.0.1:{port}/metrics")
            over = _value(body, "node_agent_errors_total", kind="kube_pod_spec_over_budget") or 0
            skipped = _value(body, "node_agent_errors_total", kind="kube_event_malformed") or 0
            return body if over >= 2 and skipped >= 2 else None

        metrics = wait_for(counted, 60, "the watched bomb and the bad lines counted")
        with named_busy_process(MARKUP_COMM, 60):
            scan = subprocess.run(
                [sys.executable, "-m", "agent", "scan", "--duration", "4", "--folded", str(tmp / "folded.txt")],
                check=False, capture_output=True, timeout=240,
            )  # fmt: skip
        readyz = get(f"http://127.0.0.1:{port}/readyz")
        _, listing = get(f"http://127.0.0.1:{port}/profiles")
        profiles = []
        for entry in json.loads(listing):
            status, body = get(f"http://127.0.0.1:{port}{entry['path']}")
            profiles.append((entry, status, body))
        alive = agent.poll() is None
        peak, kills = memory_peak(mem), oom_kills(mem)
    yield Node(
        limit=limit,
        peak=peak,
        oom_kills=kills,
        alive=alive,
        exit_code=agent.returncode,
        metrics=metrics,
        readyz=readyz,
        profiles=profiles,
        log=log_path.read_text(errors="replace"),
        scan_code=scan.returncode,
        scan_table=scan.stdout.decode("utf-8"),
        scan_stderr=scan.stderr.decode("utf-8", "replace"),
        folded=(tmp / "folded.txt").read_text() if (tmp / "folded.txt").exists() else "",
        honest=labels,
    )


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_pod_spec_env_doubling_bomb_does_not_oom_the_daemon(node: Node) -> None:
    print(f"daemon memory peak {mib(node.peak)} of {mib(node.limit)} (cgroup memory.max_usage_in_bytes)")
    assert node.alive and node.exit_code == 0, node.log[-3000:]
    assert node.oom_kills == 0 and node.peak < node.limit, f"peak {mib(node.peak)} of {mib(node.limit)}"
    assert (_value(node.metrics, "node_agent_errors_total", kind="kube_pod_spec_over_budget") or 0) >= 2
    assert _value(node.metrics, "node_agent_kube_synced") == 1
    assert "Traceback" not in node.log, node.log[-3000:]


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_malformed_watch_events_are_counted_by_the_daemon_and_it_stays_ready(node: Node) -> None:
    assert (_value(node.metrics, "node_agent_errors_total", kind="kube_event_malformed") or 0) >= 2
    status, body = node.readyz
    assert status == 200 and b"kubernetes: watching, synced" in body, body


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_non_utf8_and_escape_comms_never_fail_a_scrape(node: Node) -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool (scripts/setup.sh installs prometheus)")
    assert promtool is not None
    check = subprocess.run([promtool, "check", "metrics"], check=False, input=node.metrics, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    containers = {lbl["container"] for lbl, _ in parse_samples(node.metrics)["node_agent_go_gomaxprocs"]}
    assert {"\\xff\\xfebad-utf8", "[red]mark", "\\x1b[2Jesc"} <= containers
    for name in ("\\xff\\xfebad-utf8", "[red]mark", "\\x1b[2Jesc"):  # judged like anyone else: GOMAXPROCS=3, no limit
        assert _value(node.metrics, "node_agent_go_gomaxprocs", container=name) == 3


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_honest_pod_next_to_hostile_tenants_is_still_judged_correctly(node: Node) -> None:
    assert _value(node.metrics, "node_agent_go_gomaxprocs", **node.honest) == 64
    assert _value(node.metrics, "node_agent_go_gomaxprocs_recommended", **node.honest) == 2
    assert _value(node.metrics, "node_agent_container_cpu_limit_cores", **node.honest) == 1.0
    reason = {"reason": "gomaxprocs_above_limit"}
    assert _value(node.metrics, "node_agent_go_misconfigured", **node.honest, **reason) == 1


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_every_listed_profile_path_is_fetchable_with_hostile_names(node: Node) -> None:
    assert len(node.profiles) >= 4
    for entry, status, body in node.profiles:
        assert status == 200 and body[:2] == b"\x1f\x8b", entry


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_rich_markup_and_escape_comms_do_not_crash_or_reach_the_scan_table(node: Node) -> None:
    assert node.scan_code == 0, node.scan_stderr[-3000:]
    for shown in ("[/x]", "[red]mark", "\\x1b[2Jesc", "\\xff\\xfebad-utf8"):  # as text, not markup or bytes
        assert shown in node.scan_table, (shown, node.scan_table)
    assert "\x1b" not in node.scan_table


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_function_name_with_newline_cannot_forge_folded_records(node: Node) -> None:
    lines = node.folded.splitlines()
    assert lines, node.scan_stderr[-2000:]
    workloads = {safe.folded_frame(safe.text(os.fsdecode(n)[:15])) for n in HOSTILE_COMMS}
    forged_frames = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        assert count.isdigit() and frames[1].startswith("pid "), line  # every record is a real one
        forged_frames += "x\\nforged\\x3by 999" in frames
        if frames[0] in workloads:
            assert "main.transform" not in frames, line  # the forged binary's own name table was used
    assert forged_frames > 0, "the forged function was never sampled"
