"""agent/kube/spec.py's bounded $(VAR) expansion and size caps, on hand-built pod objects.

The expectations follow Kubernetes' own expansion rules (third_party/forked/golang/expansion
and the kubelet's makeEnvironmentVariables): "$$" escapes, "$(NAME)" reads up to the first
")", undefined or later references stay as written, the last entry of a name wins.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest

from agent.kube.spec import (
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_EXPANDED,
    MAX_IMAGE,
    MAX_NAME,
    EnvSource,
    SourceKind,
    env_source,
    env_sources,
    parse_pod,
)
from tests.support.fakeapi import make_container, make_pod

Obj = dict[str, Any]


def _e(name: str, value: str) -> Obj:
    return {"name": name, "value": value}


def _gomaxprocs(env: list[Obj]) -> EnvSource | None:
    return env_source(make_container("app", env=env), "GOMAXPROCS")


EXPANSION = [
    # (case, env before GOMAXPROCS, GOMAXPROCS's raw value, expanded value)
    ("plain", [], "4", "4"),
    ("reference", [_e("N", "6")], "$(N)", "6"),
    ("reference inside text", [_e("N", "6")], "x$(N)y", "x6y"),
    ("escaped dollar", [_e("N", "6")], "$$(N)", "$(N)"),
    ("escaped then reference", [_e("N", "6")], "$$$(N)", "$6"),
    ("lone dollar", [], "$", "$"),
    ("dollar then letter", [], "$x", "$x"),
    ("unclosed reference", [_e("N", "6")], "$(N", "$(N"),
    ("empty name", [], "$()", "$()"),
    ("undefined stays", [], "$(NOPE)", "$(NOPE)"),
    ("name up to the first paren", [_e("A B", "7")], "$(A B)", "7"),
    ("earlier entry of the same name", [_e("N", "1"), _e("N", "2")], "$(N)$(N)", "22"),
    ("chain", [_e("A", "3"), _e("B", "$(A)"), _e("C", "$(B)")], "$(C)", "3"),
]


@pytest.mark.parametrize(("env", "raw", "want"), [c[1:] for c in EXPANSION], ids=[c[0] for c in EXPANSION])
def test_expansion_follows_kubernetes_rules(env: list[Obj], raw: str, want: str) -> None:
    src = _gomaxprocs([*env, _e("GOMAXPROCS", raw)])
    assert src is not None and src.kind is SourceKind.LITERAL and src.value == want


def test_reference_to_a_later_entry_stays_as_written() -> None:
    src = _gomaxprocs([_e("GOMAXPROCS", "$(N)"), _e("N", "6")])
    assert src == EnvSource(SourceKind.LITERAL, value="$(N)")


def _doubling_bomb(n: int) -> list[Obj]:
    env = [_e("V0", "xxxxxxxxxxxxxxxx")]
    env += [_e(f"V{i}", f"$(V{i - 1})$(V{i - 1})") for i in range(1, n + 1)]
    return env


def test_pod_spec_env_doubling_bomb_does_not_oom() -> None:
    # 30 entries of "$(PREV)$(PREV)" would be 16 GiB expanded eagerly; the daemon was OOM-killed.
    env = [*_doubling_bomb(30), _e("GOMAXPROCS", "$(V30)"), _e("GODEBUG", "a=$(V30)")]
    pod = make_pod("bomb-0", n=1, containers=[make_container("app", env=env)])
    tracemalloc.start()
    try:
        t0 = time.process_time()
        meta = parse_pod(pod)
        cpu = time.process_time() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    c = meta.containers[0]
    assert c.gomaxprocs is not None and c.gomaxprocs.kind is SourceKind.UNRESOLVED and c.gomaxprocs.resolved is None
    assert c.godebug is not None and c.godebug.kind is SourceKind.UNRESOLVED and c.godebug_literal is None
    shallow = _gomaxprocs([*_doubling_bomb(10), _e("GOMAXPROCS", "$(V10)")])  # 16 KiB, within the depth cap
    assert shallow is not None and shallow.kind is SourceKind.UNRESOLVED and "expands past" in (shallow.ref or "")
    assert peak < 2 * 2**20, peak
    assert cpu < 1.0, cpu


def test_pod_spec_bomb_in_variables_nobody_reads_costs_nothing() -> None:
    # Only GOMAXPROCS and GODEBUG are expanded: a bomb elsewhere is never evaluated.
    env = [*_doubling_bomb(60), _e("GOMAXPROCS", "8")]
    t0 = time.process_time()
    src = _gomaxprocs(env)
    assert src == EnvSource(SourceKind.LITERAL, value="8", resolved=8)
    assert time.process_time() - t0 < 0.5


def test_pod_spec_reference_chain_deeper_than_the_cap_is_unresolved_not_a_recursion_error() -> None:
    env = [_e("V0", "2")] + [_e(f"V{i}", f"$(V{i - 1})") for i in range(1, 5000)]
    src = _gomaxprocs([*env, _e("GOMAXPROCS", "$(V4999)")])
    assert src is not None and src.kind is SourceKind.UNRESOLVED and "deeper" in (src.ref or "")
    shallow = [_e("V0", "2")] + [_e(f"V{i}", f"$(V{i - 1})") for i in range(1, MAX_DEPTH)]
    ok = _gomaxprocs([*shallow, _e("GOMAXPROCS", f"$(V{MAX_DEPTH - 1})")])
    assert ok == EnvSource(SourceKind.LITERAL, value="2", resolved=2)


def test_pod_spec_long_literal_is_not_kept() -> None:
    src = _gomaxprocs([_e("GOMAXPROCS", "9" * (MAX_EXPANDED + 1))])
    assert src is not None and src.kind is SourceKind.UNRESOLVED and src.value is None
    at_cap = _gomaxprocs([_e("X", "1" * (MAX_EXPANDED // 2)), _e("GOMAXPROCS", "$(X)$(X)")])
    assert at_cap is not None and at_cap.kind is SourceKind.LITERAL and len(at_cap.value or "") == MAX_EXPANDED


def test_reference_to_a_resource_field_takes_its_source_and_an_embedded_one_stays() -> None:
    cpu = {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "0"}}}
    c = make_container("app", limits={"cpu": "3"}, env=[cpu, _e("GOMAXPROCS", "$(CPU)"), _e("GODEBUG", "p=$(CPU)")])
    got = env_sources(c, ("GOMAXPROCS", "GODEBUG"))
    assert got["GOMAXPROCS"] == EnvSource(SourceKind.RESOURCE_FIELD_REF, resource="limits.cpu", resolved=3)
    assert got["GODEBUG"] == EnvSource(SourceKind.LITERAL, value="p=$(CPU)")


def test_pod_meta_keeps_bounded_strings_and_containers() -> None:
    many = [make_container(f"c{i}", image="i" * 100_000) for i in range(MAX_CONTAINERS + 50)]
    pod = make_pod("wide-0", n=2, containers=many)
    pod["metadata"]["ownerReferences"] = [{"kind": "K" * 10_000, "name": "n" * 10_000, "controller": True}]
    pod["status"]["phase"] = "P" * 10_000
    meta = parse_pod(pod)
    assert len(meta.containers) == MAX_CONTAINERS
    assert all(len(c.image) == MAX_IMAGE for c in meta.containers)
    assert len(meta.owner_kind) == len(meta.owner_name) == len(meta.phase or "") == MAX_NAME


def test_pod_with_oversized_identity_is_not_a_pod() -> None:
    pod = make_pod("x" * (MAX_NAME + 1), n=3)
    with pytest.raises(ValueError, match="longer than"):
        parse_pod(pod)
