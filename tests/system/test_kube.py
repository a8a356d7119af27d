"""agent/kube/watch.py against tests/fakeapi.py: configuration, the real `kubernetes` client, list+watch."""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.analysis.pipeline import KubeSource
from agent.kube.spec import PodMeta
from agent.kube.watch import KubeMetadata, WatchSettings, connect, load_configuration
from tests.support.fakeapi import FakeKubeAPI, container_id, make_pod, no_leaked_threads, uid_of

FAST = WatchSettings(
    watch_timeout_s=5,
    connect_timeout_s=1.0,
    list_timeout_s=2.0,
    bookmark_interval_s=6.0,  # read timeout 12 s: above the longest watch asked (10 s)
    backoff_initial_s=0.02,
    backoff_cap_s=0.2,
)
WAIT = 20.0  # generous: only a failing test waits this long, and CI machines get busy

Obj = dict[str, Any]


def cid(n: int) -> str:
    """The bare container ID of make_pod(n=..)'s container k: n * 100 + k."""
    return f"{n:064x}"


# =============================================================================================
# Configuration
# =============================================================================================
def test_explicit_configuration_wins(tmp_path: Path) -> None:
    marker = object()
    cfg, how = load_configuration(marker, environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert cfg is marker and how == "explicit"


def test_in_cluster_configuration(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("eyJhbGciOiJSUzI1NiJ9.sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg, how = load_configuration(environ=env, service_account_dir=tmp_path)
    assert how == "in-cluster" and cfg is not None
    assert cfg.host == "https://10.96.0.1:443"
    assert cfg.api_key["BearerToken"] == "bearer eyJhbGciOiJSUzI1NiJ9.sa-token"
    assert cfg.ssl_ca_cert == str(tmp_path / "ca.crt")


def test_no_api_access_is_disabled_not_an_error(tmp_path: Path) -> None:
    env = {"NODE_NAME": "node-a", "HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    kube = connect(environ=env, service_account_dir=tmp_path / "nope")
    st = kube.status()
    assert not kube.enabled and st.state == "disabled" and not st.enabled
    assert "in-cluster" in st.reason and "kubeconfig" in st.reason
    assert kube.start() is kube and kube.lookup(uid_of(1), None) is None
    assert kube.snapshot() == {}
    assert kube.stop()
    assert kube.status().state == "disabled"


def test_no_node_name_is_disabled(api: FakeKubeAPI) -> None:
    kube = connect(configuration=api.configuration(), environ={})
    assert kube.status().state == "disabled" and "NODE_NAME" in kube.status().reason


def test_kubeconfig_end_to_end(api: FakeKubeAPI, tmp_path: Path) -> None:
    api.create_pod(make_pod("web-0", n=1))
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {api.url}
users:
- name: agent
  user:
    token: abc
contexts:
- name: fake
  context: {{cluster: fake, user: agent}}
current-context: fake
"""
    )
    kube = connect(environ={"NODE_NAME": "node-a", "KUBECONFIG": str(kubeconfig)}, settings=FAST)
    assert kube.status().reason == f"kubeconfig {kubeconfig}"
    with kube:
        assert kube.wait_synced(WAIT)
        meta = kube.lookup(uid_of(1), container_id(100))
        assert meta is not None and meta.container == "app"


# =============================================================================================
# The watch, against the fake apiserver
# =============================================================================================
@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    with no_leaked_threads():
        yield


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as server:
        yield server


Make = Callable[..., KubeMetadata]


@pytest.fixture
def watcher() -> Iterator[Make]:
    made: list[KubeMetadata] = []

    def make(api: FakeKubeAPI, node: str = "node-a", **settings: Any) -> KubeMetadata:
        kube = KubeMetadata(node, api.configuration(), settings=replace(FAST, **settings), rng=random.Random(7))
        made.append(kube)
        return kube.start()

    yield make
    for kube in made:
        assert kube.stop(), "the watch thread did not stop"


def _deployment_pod(name: str, n: int, node: str = "node-a") -> Obj:
    rs = name.rsplit("-", 1)[0]
    return make_pod(
        name, n=n, node=node, owner=("ReplicaSet", rs), labels={"app": "web", "pod-template-hash": rs.rsplit("-", 1)[1]}
    )


def _synced_watch(api: FakeKubeAPI, kube: KubeMetadata) -> None:
    assert kube.wait_synced(WAIT)
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)


def test_initial_sync_lists_and_watches_this_node_only(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(_deployment_pod("web-7d4b9c8f6-x2xkq", 1))
    api.create_pod(make_pod("db-0", n=2, owner=("StatefulSet", "db")))
    api.create_pod(make_pod("elsewhere-0", n=3, node="node-b"))
    kube = watcher(api)
    _synced_watch(api, kube)
    assert set(kube.snapshot()) == {uid_of(1), uid_of(2)}
    st = kube.status()
    assert st.synced and st.state == "watching" and st.lists == 1 and st.relists == 0
    assert st.resource_version == api.resource_version

    lists, watches = api.list_requests(), api.watch_requests()
    assert len(lists) == 1 and len(watches) == 1
    assert lists[0].path == "/api/v1/pods"
    assert lists[0].query == {"fieldSelector": "spec.nodeName=node-a", "resourceVersion": "0"}
    w = watches[0].query
    assert w["fieldSelector"] == "spec.nodeName=node-a"
    assert w["resourceVersion"] == st.resource_version
    assert w["allowWatchBookmarks"] == "true"
    assert 5 <= int(w["timeoutSeconds"]) <= 10
    assert {r.path for r in api.requests} == {"/api/v1/pods"}  # never the kubelet, never other resources

    meta = kube.lookup(uid_of(1), container_id(100))
    assert meta is not None
    assert (meta.namespace, meta.pod, meta.container, meta.owner) == (
        "shop",
        "web-7d4b9c8f6-x2xkq",
        "app",
        "Deployment/web",
    )
    assert meta.limit_cores == 2.0 and meta.qos_class == "Burstable" and meta.node == "node-a"


def test_lookup_semantics(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("db-0", n=2, owner=("StatefulSet", "db"), runtime="cri-o"))
    kube = watcher(api)
    _synced_watch(api, kube)
    by_id = kube.lookup(uid_of(2), cid(200))
    assert by_id is not None and by_id.container == "app" and by_id.container_id == cid(200)
    # cgroup forms: systemd underscores in the UID, scope names for the container
    same = kube.lookup(uid_of(2).replace("-", "_"), f"crio-{cid(200)}.scope")
    assert same == by_id
    pod_level = kube.lookup(uid_of(2), None)
    assert pod_level is not None and pod_level.container is None and pod_level.owner == "StatefulSet/db"
    unknown_container = kube.lookup(uid_of(2), cid(999))
    assert unknown_container is not None and unknown_container.container is None
    assert kube.lookup(uid_of(77), None) is None
    # a wrong pod UID with a known container ID still finds the container
    found = kube.lookup(uid_of(77), f"cri-o://{cid(200)}")
    assert found is not None and found.pod == "db-0"


def test_added_modified_deleted_are_applied(api: FakeKubeAPI, watcher: Make) -> None:
    kube = watcher(api)
    _synced_watch(api, kube)
    assert kube.snapshot() == {}

    rv = api.create_pod(_deployment_pod("web-7d4b9c8f6-x2xkq", 1))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert kube.lookup(uid_of(1), container_id(100)) is not None

    def restart(pod: Obj) -> None:  # the container restarted: new ID, old one in lastState
        st = pod["status"]["containerStatuses"][0]
        st["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "containerID": st["containerID"]}}
        st["containerID"] = container_id(199)
        st["restartCount"] = 1

    rv = api.update_pod(uid_of(1), restart)
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    new = kube.lookup(uid_of(1), container_id(199))
    old = kube.lookup(uid_of(1), container_id(100))
    assert new is not None and new.container == "app" and new.container_id == cid(199)
    assert old is not None and old.container == "app"

    rv = api.delete_pod(uid_of(1))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert kube.lookup(uid_of(1), None) is None and kube.snapshot() == {}
    assert kube.lookup("whatever", container_id(199)) is None  # the container index forgot it too
    st = kube.status()
    assert st.events == {"ADDED": 1, "MODIFIED": 1, "DELETED": 1}
    assert st.lists == 1 and st.errors == 0


def test_pod_bound_to_this_node_later_appears(api: FakeKubeAPI, watcher: Make) -> None:
    pending = make_pod("batch-x7k2p", n=5, node="", owner=("Job", "batch"), phase="Pending")
    del pending["spec"]["nodeName"]
    api.create_pod(pending)
    kube = watcher(api)
    _synced_watch(api, kube)
    assert kube.snapshot() == {}
    api.update_pod(uid_of(5), lambda p: p["spec"].update(nodeName="node-a"))
    assert kube.wait_until(lambda: uid_of(5) in kube.snapshot(), WAIT)
    assert kube.status().events == {"ADDED": 1}
    # rescheduled away (delete+recreate elsewhere is usual; a selector change still reads as DELETED)
    api.update_pod(uid_of(5), lambda p: p["spec"].update(nodeName="node-b"))
    assert kube.wait_until(lambda: uid_of(5) not in kube.snapshot(), WAIT)


def test_bookmarks_advance_the_resource_version(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("mine-0", n=1))
    kube = watcher(api)
    _synced_watch(api, kube)
    start_rv = kube.status().resource_version
    # Churn on other nodes moves the global RV; none of it reaches this watch.
    for i in range(5):
        api.create_pod(make_pod(f"other-{i}", n=10 + i, node="node-b"))
    assert kube.status().resource_version == start_rv
    api.send_bookmark()
    assert kube.wait_until(lambda: kube.status().resource_version == api.resource_version, WAIT)
    assert kube.status().events.get("BOOKMARK") == 1
    assert set(kube.snapshot()) == {uid_of(1)}  # a bookmark is not a pod

    # Why it matters: after compaction, a reconnect from the bookmark's RV is still valid.
    bookmark_rv = kube.status().resource_version
    api.compact()
    n = len(api.requests)
    api.drop_watches()
    again = api.wait_for_request(lambda r: r.is_watch, WAIT, after=n)
    assert again.query["resourceVersion"] == bookmark_rv
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)
    st = kube.status()
    assert st.lists == 1 and st.expired == 0


def test_expired_event_relists_and_converges(api: FakeKubeAPI, watcher: Make) -> None:
    for n in (1, 2, 3):
        api.create_pod(make_pod(f"svc-{n}", n=n))
    kube = watcher(api)
    _synced_watch(api, kube)
    stale_rv = kube.status().resource_version

    # An outage long enough for the apiserver to compact away our RV; things change meanwhile.
    api.stop()
    api.delete_pod(uid_of(1))
    api.update_pod(uid_of(2), lambda p: p["metadata"]["labels"].update(version="2"))
    api.create_pod(make_pod("svc-4", n=4))
    api.create_pod(make_pod("elsewhere", n=5, node="node-b"))
    api.compact()
    api.start()

    assert kube.wait_until(lambda: kube.status().lists == 2 and kube.status().state == "watching", WAIT)
    assert set(kube.snapshot()) == {uid_of(2), uid_of(3), uid_of(4)}
    st = kube.status()
    assert st.expired == 1 and st.relists == 1 and st.resource_version == api.resource_version
    assert "410" in (st.last_error or "") or "Expired" in (st.last_error or "")
    expired_watch = [r for r in api.watch_requests() if r.query["resourceVersion"] == stale_rv][-1]
    relist = api.list_requests()[-1]
    assert relist.at > expired_watch.at
    assert "resourceVersion" not in relist.query  # after a 410: the latest state, not the cache's "0"
    rewatch = api.wait_for_request(lambda r: r.is_watch and r.at > relist.at, WAIT)
    assert rewatch.query["resourceVersion"] == api.resource_version


def test_expired_as_http_410_relists(watcher: Make) -> None:
    with FakeKubeAPI(expired_as_http=True) as api:
        api.create_pod(make_pod("a-0", n=1))
        kube = watcher(api)
        _synced_watch(api, kube)
        api.stop()
        api.delete_pod(uid_of(1))
        api.create_pod(make_pod("b-0", n=2))
        api.compact()
        api.start()
        assert kube.wait_until(lambda: kube.status().lists == 2, WAIT)
        assert set(kube.snapshot()) == {uid_of(2)}
        assert kube.status().expired == 1
        kube.stop()


def test_repeated_410_backs_off_instead_of_spinning(api: FakeKubeAPI, watcher: Make) -> None:
    api.fail_next(1000, status=410, watch_only=True)  # an apiserver that expires every watch
    kube = watcher(api, backoff_initial_s=0.05, backoff_cap_s=0.2)
    assert kube.wait_until(lambda: kube.status().expired >= 3, WAIT)
    time.sleep(0.6)
    st = kube.status()
    # first 410: relist at once; then 0.025+, 0.05+, 0.1+ ... : a handful, not hundreds
    assert st.lists <= 3 + 0.6 / 0.1 + 2, st
    assert st.expired <= st.lists <= st.expired + 1
    assert st.synced and st.state in {"backoff", "listing", "watching"}


def test_watch_that_ends_at_once_is_not_a_busy_loop(watcher: Make) -> None:
    with FakeKubeAPI(max_watch_seconds=0) as api:
        kube = watcher(api, backoff_initial_s=0.05, backoff_cap_s=0.2)
        assert kube.wait_until(lambda: kube.status().errors >= 3, WAIT)
        time.sleep(0.6)
        st = kube.status()
        assert len(api.watch_requests()) <= 3 + 0.6 / 0.1 + 2
        assert st.lists == 1 and "no events" in (st.last_error or "")
        kube.stop()


def test_dropped_connection_resumes_from_last_rv_without_relist(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    kube = watcher(api)
    _synced_watch(api, kube)
    rv = api.create_pod(make_pod("b-0", n=2))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)

    n = len(api.requests)
    # cut mid-chunk, right after a change the client must not lose
    rv_c = api.create_pod(make_pod("c-0", n=3))
    assert api.drop_watches() == 1
    resumed = api.wait_for_request(lambda r: r.is_watch, WAIT, after=n)
    assert resumed.query["resourceVersion"] in {rv, rv_c}  # c may or may not have arrived before the cut
    assert kube.wait_until(lambda: uid_of(3) in kube.snapshot(), WAIT)
    rv_d = api.create_pod(make_pod("d-0", n=4))
    assert kube.wait_until(lambda: kube.status().resource_version == rv_d, WAIT)
    st = kube.status()
    assert st.lists == 1 and st.expired == 0 and st.errors >= 1
    assert "ProtocolError" in (st.last_error or "")
    assert set(kube.snapshot()) == {uid_of(1), uid_of(2), uid_of(3), uid_of(4)}


def test_watch_500_resumes_without_relist(api: FakeKubeAPI, watcher: Make) -> None:
    kube = watcher(api)
    _synced_watch(api, kube)
    rv = kube.status().resource_version
    api.fail_next(2, status=500, watch_only=True)
    n = len(api.requests)
    api.drop_watches()
    assert api.wait_for(lambda: len([r for r in api.requests[n:] if r.is_watch]) == 3, WAIT)
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)
    assert kube.wait_until(lambda: kube.status().state == "watching", WAIT)
    retried = [r for r in api.requests[n:] if r.is_watch]
    assert len(retried) == 3 and {r.query["resourceVersion"] for r in retried} == {rv}
    st = kube.status()
    assert st.lists == 1 and st.errors == 3 and st.state == "watching"
    gaps = [b.at - a.at for a, b in itertools.pairwise(retried)]
    assert all(g >= 0.01 for g in gaps)  # backed off between attempts (initial 0.02 s, half jittered)


def test_list_errors_back_off_then_sync(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    api.fail_next(2, status=503, list_only=True)
    kube = watcher(api)
    assert kube.wait_synced(WAIT)
    st = kube.status()
    assert st.errors == 2 and "503" in (st.last_error or "") and st.lists == 1
    assert len(api.list_requests()) == 3


def test_forbidden_says_what_to_grant(api: FakeKubeAPI, watcher: Make) -> None:
    api.fail_next(1, status=403, list_only=True)
    kube = watcher(api)
    assert kube.wait_synced(WAIT)
    st = kube.status()
    assert st.errors == 1 and "HTTP 403" in (st.last_error or "") and "ClusterRole" in (st.last_error or "")
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)


def test_stalled_list_times_out_and_retries(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    api.stall_next(1)
    kube = watcher(api, list_timeout_s=0.3)
    assert kube.wait_synced(WAIT)
    st = kube.status()
    assert st.errors == 1 and "ReadTimeoutError" in (st.last_error or "")


def test_silent_watch_times_out_and_resumes(api: FakeKubeAPI, watcher: Make) -> None:
    # A half-open connection (an apiserver that vanished without a FIN) must not hang us forever:
    # the read timeout is twice the bookmark interval.
    kube = watcher(api, watch_timeout_s=1, bookmark_interval_s=0.5)
    _synced_watch(api, kube)
    rv = kube.status().resource_version
    api.stall_next(1)
    n = len(api.requests)
    api.drop_watches()
    assert api.wait_for(lambda: len([r for r in api.requests[n:] if r.is_watch]) >= 2, WAIT)
    st = kube.status()
    assert "ReadTimeoutError" in (st.last_error or "") and st.lists == 1
    assert {r.query["resourceVersion"] for r in api.requests[n:] if r.is_watch} == {rv}


def test_outage_backs_off_then_recovers(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    kube = watcher(api, backoff_initial_s=0.02, backoff_cap_s=0.16)
    _synced_watch(api, kube)
    api.stop()
    t0 = time.monotonic()
    assert kube.wait_until(lambda: kube.status().errors >= 4, WAIT)
    early = time.monotonic() - t0
    time.sleep(0.8)
    errors = kube.status().errors
    # 0.02, 0.04, 0.08, 0.16, 0.16... (each at least half that): nowhere near a busy loop
    assert errors <= 4 + 0.8 / 0.08 + 2
    assert early >= 0.06  # three sleeps of at least 0.01, 0.02, 0.04
    st = kube.status()
    assert st.synced and st.pods == 1  # stale but kept
    assert "MaxRetryError" in (st.last_error or "") or "ProtocolError" in (st.last_error or "")

    api.create_pod(make_pod("b-0", n=2))  # a change during the outage, history kept
    api.start()
    assert kube.wait_until(lambda: uid_of(2) in kube.snapshot(), WAIT)
    assert kube.wait_until(lambda: kube.status().state == "watching", WAIT)
    assert kube.status().lists == 1  # resumed from its RV: nothing was compacted


def test_outage_is_said_once_then_recovery(api: FakeKubeAPI, watcher: Make, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.kube.watch")
    kube = watcher(api, backoff_initial_s=0.02, backoff_cap_s=0.05)
    _synced_watch(api, kube)
    api.stop()
    assert kube.wait_until(lambda: kube.status().errors >= 5, WAIT)
    api.start()
    assert api.wait_for(lambda: api.watchers() == 1, WAIT)
    api.create_pod(make_pod("after-0", n=4))
    assert kube.wait_until(lambda: uid_of(4) in kube.snapshot(), WAIT)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "retrying with backoff" in w]) == 1, warnings
    assert "pods keep their last known metadata" in warnings[0]
    assert len([w for w in warnings if "answers again" in w]) == 1, warnings
    st = kube.status()
    assert st.errors_by_kind.get("api_unreachable", 0) >= 5 and st.last_error_kind == "api_unreachable"


def test_no_api_access_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.kube.watch")
    kube = KubeMetadata.disabled("NODE_NAME is not set").start()
    assert [r.getMessage() for r in caplog.records] == [
        "kube: off (NODE_NAME is not set); workloads are named by cgroup"
    ]
    assert kube.status().summary() == "kubernetes: off (NODE_NAME is not set); workloads are named by cgroup"


def test_watch_is_renewed_on_timeout(api: FakeKubeAPI, watcher: Make) -> None:
    kube = watcher(api, watch_timeout_s=1)
    _synced_watch(api, kube)
    assert api.wait_for(lambda: len(api.watch_requests()) >= 2, WAIT)
    rv = api.create_pod(make_pod("late-0", n=9))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    st = kube.status()
    assert st.watch_restarts >= 1 and st.lists == 1 and st.errors == 0
    assert all(1 <= int(r.query["timeoutSeconds"]) <= 2 for r in api.watch_requests())


def test_stop_is_prompt_while_watching(api: FakeKubeAPI) -> None:
    kube = KubeMetadata("node-a", api.configuration(), settings=replace(FAST, watch_timeout_s=60)).start()
    _synced_watch(api, kube)
    t0 = time.monotonic()
    assert kube.stop()
    assert time.monotonic() - t0 < 2.0  # vs a 60 s watch and 30 s backoff
    assert kube.status().state == "stopped"
    assert api.wait_for(lambda: api.watchers() == 0, WAIT)


def test_stop_is_prompt_while_backing_off(api: FakeKubeAPI) -> None:
    api.fail_next(100, status=500, list_only=True)
    kube = KubeMetadata("node-a", api.configuration(), settings=replace(FAST, backoff_initial_s=30, backoff_cap_s=60))
    kube.start()
    assert kube.wait_until(lambda: kube.status().state == "backoff", WAIT)
    t0 = time.monotonic()
    assert kube.stop()
    assert time.monotonic() - t0 < 2.0  # vs a 60 s watch and 30 s backoff


def test_malformed_objects_are_counted_not_fatal(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod({"metadata": {"uid": "no-namespace", "name": "x"}, "spec": {"nodeName": "node-a"}})
    api.create_pod(make_pod("ok-0", n=1))
    kube = watcher(api)
    _synced_watch(api, kube)
    assert set(kube.snapshot()) == {uid_of(1)} and kube.status().bad_objects == 1
    rv = api.create_pod({"metadata": {"uid": "also-bad", "name": "y"}, "spec": {"nodeName": "node-a"}})
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert kube.status().bad_objects == 2 and kube.status().state == "watching"


def test_store_is_bounded(api: FakeKubeAPI, watcher: Make) -> None:
    for n in (1, 2, 3):
        api.create_pod(make_pod(f"p-{n}", n=n))
    kube = watcher(api, max_pods=2)
    _synced_watch(api, kube)
    assert len(kube.snapshot()) == 2 and kube.status().dropped_pods == 1
    rv = api.create_pod(make_pod("p-4", n=4))
    assert kube.wait_until(lambda: kube.status().resource_version == rv, WAIT)
    assert len(kube.snapshot()) == 2 and kube.status().dropped_pods == 2


def _replicaset(name: str, owner: tuple[str, str]) -> Obj:
    return {
        "kind": "ReplicaSet",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": "5e4d3c2b-1a09-4f8e-9d7c-6b5a49382716",
            "ownerReferences": [
                {
                    "apiVersion": "argoproj.io/v1alpha1",
                    "kind": owner[0],
                    "name": owner[1],
                    "uid": "r",
                    "controller": True,
                }
            ],
        },
        "spec": {"replicas": 2},
    }


def test_replicaset_owner_via_api(api: FakeKubeAPI, watcher: Make) -> None:
    api.replicasets[("shop", "checkout-6c8d9f")] = _replicaset("checkout-6c8d9f", ("Rollout", "checkout"))
    pods = [
        make_pod(f"checkout-6c8d9f-{n}", n=n, owner=("ReplicaSet", "checkout-6c8d9f"), labels={"app": "checkout"})
        for n in (1, 2)
    ]
    pods[1]["metadata"]["ownerReferences"] = pods[0]["metadata"]["ownerReferences"]  # one ReplicaSet, two pods
    for pod in pods:
        api.create_pod(pod)
    kube = watcher(api, resolve_replicasets=True)
    _synced_watch(api, kube)
    assert {p.owner for p in kube.snapshot().values()} == {"Rollout/checkout"}
    gets = [r.path for r in api.requests if "/replicasets/" in r.path]
    assert gets == ["/apis/apps/v1/namespaces/shop/replicasets/checkout-6c8d9f"]  # cached by the RS's UID


def test_replicaset_get_forbidden_falls_back_to_the_hash(api: FakeKubeAPI, watcher: Make) -> None:
    api.fail_next(1, status=403, path_contains="/replicasets/")
    api.create_pod(_deployment_pod("web-7d4b9c8f6-x2xkq", 1))
    api.create_pod(_deployment_pod("api-5f9c6d7b8-qq7wz", 2))
    kube = watcher(api, resolve_replicasets=True)
    _synced_watch(api, kube)
    assert {p.owner for p in kube.snapshot().values()} == {"Deployment/web", "Deployment/api"}
    assert len([r for r in api.requests if "/replicasets/" in r.path]) == 1  # asked once, then stopped asking
    assert "replicasets get" in (kube.status().last_error or "")


def test_is_the_pipelines_kube_source(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    source: KubeSource = watcher(api)  # mypy checks the structural contract with agent.analysis.pipeline
    assert isinstance(source, KubeMetadata) and source.wait_synced(WAIT)
    meta = source.lookup(uid_of(1), cid(100))
    assert meta is not None and (meta.namespace, meta.pod, meta.container) == ("shop", "a-0", "app")


def test_snapshot_is_a_copy(api: FakeKubeAPI, watcher: Make) -> None:
    api.create_pod(make_pod("a-0", n=1))
    kube = watcher(api)
    _synced_watch(api, kube)
    snap = kube.snapshot()
    snap.clear()
    assert len(kube.snapshot()) == 1
    assert all(isinstance(p, PodMeta) for p in kube.snapshot().values())
