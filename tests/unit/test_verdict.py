"""Verdicts and recommendations, and GOMAXPROCS inference rules (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.analysis.gomaxprocs import (
    Facts,
    Gomaxprocs,
    containermaxprocs_enabled,
    go125_default,
    infer,
    parse_env_gomaxprocs,
)
from agent.analysis.gomaxprocs import GomaxprocsSource as Src
from agent.analysis.goruntime import Category
from agent.analysis.verdict import Evidence, Verdict, judge, recommended_gomaxprocs
from agent.kube.spec import EnvSource, SourceKind

SH = {Category.SCHEDULER: 0.13, Category.GC: 0.16, Category.RUNTIME_OTHER: 0.1, Category.USER: 0.61}


@pytest.mark.parametrize(
    ("limit", "cpus", "expected"),
    [
        (None, 64, None),
        (1.0, 64, 2),
        (0.5, 64, 2),
        (1.5, 64, 2),
        (2.0, 64, 2),
        (2.1, 64, 3),
        (4.0, 64, 4),
        (4.0, 2, 2),
        (1.0, 1, 1),
        (16.0, 192, 16),
        (0.01, 8, 2),
    ],
)
def test_recommended(limit: float | None, cpus: int, expected: int | None) -> None:
    assert recommended_gomaxprocs(limit, cpus) == expected


def ev(g: int | None, limit: float | None, cpus: int = 64, **kw: Any) -> Evidence:
    return Evidence(
        gomaxprocs=g, gomaxprocs_source=Src.LIVE, limit_cores=limit, affinity_cpus=cpus, shares=SH, samples=1000, **kw
    )


@pytest.mark.parametrize(
    ("g", "limit", "cpus", "verdict"),
    [
        (64, 1.0, 64, Verdict.ABOVE),
        (1, 1.0, 64, Verdict.OK),
        (2, 1.0, 64, Verdict.OK),  # what Go 1.25 picks
        (3, 1.0, 64, Verdict.ABOVE),
        (1, 4.0, 64, Verdict.BELOW),
        (3, 4.0, 64, Verdict.BELOW),
        (4, 4.0, 64, Verdict.OK),
        (5, 4.0, 64, Verdict.ABOVE),
        (2, 2.5, 64, Verdict.OK),  # floor(2.5)=2 is not "below"
        (3, 2.5, 64, Verdict.OK),
        (2, 1.0, 2, Verdict.OK),
        (64, None, 64, Verdict.NO_LIMIT),
        (None, 1.0, 64, Verdict.UNKNOWN),
    ],
)
def test_verdicts(g: int | None, limit: float | None, cpus: int, verdict: Verdict) -> None:
    assert judge(ev(g, limit, cpus)).verdict == verdict


def test_above_explains_and_fixes() -> None:
    j = judge(ev(64, 1.0))
    assert j.recommended == 2
    assert "GOMAXPROCS=64" in j.explanation and "scheduler 13%" in j.explanation and "GC 16%" in j.explanation
    assert "resourceFieldRef" in j.fix and "automaxprocs" in j.fix and "1.25" in j.fix
    literal = judge(ev(64, 1.0, spec_gomaxprocs=EnvSource(SourceKind.LITERAL, value="64", resolved=64)))
    assert "pod spec sets GOMAXPROCS=64" in literal.fix
    off = judge(ev(64, 1.0, containermaxprocs_off=True))
    assert "containermaxprocs=0" in off.fix


def test_fix_names_the_spec_literal_only_when_the_spec_holds_one() -> None:
    unresolved = EnvSource(SourceKind.UNRESOLVED, ref="expands past 1024 characters")
    fix = judge(ev(64, 1.0, spec_gomaxprocs=unresolved)).fix
    assert "pod spec sets" not in fix and "GOMAXPROCS=2" in fix  # the spec sets it, somehow: say what to set
    downward = EnvSource(SourceKind.RESOURCE_FIELD_REF, resource="limits.cpu", divisor="1m", resolved=500)
    assert "pod spec sets" not in judge(ev(500, 1.0, spec_gomaxprocs=downward)).fix


def test_unknown_carries_reason() -> None:
    j = judge(ev(None, 1.0, unknown_reason="process memory unreadable: permission denied"))
    assert j.verdict == Verdict.UNKNOWN and "permission denied" in j.explanation


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "go_version": (1, 21, 0),
        "env_gomaxprocs": None,
        "env_godebug": None,
        "default_godebug": "",
        "automaxprocs": False,
        "affinity_cpus": 64,
        "leaf_limit": 1.0,
        "effective_limit": 1.0,
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, Gomaxprocs(64, Src.CPUS)),
        ({"env_gomaxprocs": "8"}, Gomaxprocs(8, Src.ENV)),
        ({"env_gomaxprocs": "0"}, Gomaxprocs(64, Src.CPUS)),  # ignored by Go
        ({"env_gomaxprocs": "x"}, Gomaxprocs(64, Src.CPUS)),
        ({"automaxprocs": True, "leaf_limit": 2.7}, Gomaxprocs(2, Src.AUTOMAXPROCS)),
        ({"automaxprocs": True, "leaf_limit": 0.5}, Gomaxprocs(1, Src.AUTOMAXPROCS)),
        ({"automaxprocs": True, "leaf_limit": None}, Gomaxprocs(64, Src.AUTOMAXPROCS)),
        ({"automaxprocs": True, "env_gomaxprocs": "3"}, Gomaxprocs(3, Src.ENV)),
        ({"go_version": (1, 25, 0)}, Gomaxprocs(2, Src.GO125_CGROUP)),
        ({"go_version": (1, 25, 0), "leaf_limit": 3.2}, Gomaxprocs(4, Src.GO125_CGROUP)),
        ({"go_version": (1, 25, 0), "leaf_limit": None}, Gomaxprocs(64, Src.GO125_CGROUP)),
        ({"go_version": (1, 25, 0), "default_godebug": "containermaxprocs=0,x=1"}, Gomaxprocs(64, Src.CPUS)),
        (
            {"go_version": (1, 25, 0), "default_godebug": "containermaxprocs=0", "env_godebug": "containermaxprocs=1"},
            Gomaxprocs(2, Src.GO125_CGROUP),
        ),
        ({"go_version": (1, 27, 3), "env_godebug": "containermaxprocs=0"}, Gomaxprocs(64, Src.CPUS)),
        ({"go_version": (1, 24, 9)}, Gomaxprocs(64, Src.CPUS)),
        ({"go_version": None}, Gomaxprocs(64, Src.CPUS)),
    ],
)
def test_inference(kw: dict[str, object], expected: Gomaxprocs) -> None:
    got = infer(facts(**kw))
    assert (got.value, got.source) == (expected.value, expected.source)


def test_helpers() -> None:
    assert parse_env_gomaxprocs("12", (1, 21, 0)) == 12
    assert parse_env_gomaxprocs(" 12\n", (1, 21, 0)) is None  # Go's atoi takes no spaces
    assert parse_env_gomaxprocs("-1", (1, 21, 0)) is None
    assert containermaxprocs_enabled("containermaxprocs=0", "containermaxprocs=1") is False  # $GODEBUG wins
    assert containermaxprocs_enabled(None, "containermaxprocs=0") is False
    assert containermaxprocs_enabled("containermaxprocs=0,containermaxprocs=1", "") is True  # last wins
    assert containermaxprocs_enabled("containermaxprocs=0,containermaxprocs=x", "") is False  # rejected: no change
    assert go125_default(8, 0.5) == 2
    assert go125_default(1, 0.5) == 1
