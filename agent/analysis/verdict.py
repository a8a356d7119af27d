"""Limit x GOMAXPROCS x measured runtime share -> verdict, recommendation, fix.

``recommended`` is what Go 1.25 would choose for the container:
max(2, ceil(limit)), capped at the CPUs the process may run on.

  gomaxprocs_above_limit  GOMAXPROCS > recommended: spare Ps spin in the
                          scheduler and the GC runs a mark worker per P;
  gomaxprocs_below_limit  GOMAXPROCS < floor(limit): it cannot use the CPU it pays for;
  no_limit                the container has no CPU limit;
  ok                      otherwise;
  unknown                 GOMAXPROCS or the limit could not be read (reason given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from agent.analysis.gomaxprocs import GomaxprocsSource
from agent.analysis.goruntime import Category
from agent.kube.spec import EnvSource, SourceKind


class Verdict(StrEnum):
    ABOVE = "gomaxprocs_above_limit"
    BELOW = "gomaxprocs_below_limit"
    NO_LIMIT = "no_limit"
    OK = "ok"
    UNKNOWN = "unknown"


MISCONFIGURED = (Verdict.ABOVE, Verdict.BELOW)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    recommended: int | None
    explanation: str
    fix: str


@dataclass(frozen=True)
class Evidence:
    gomaxprocs: int | None
    gomaxprocs_source: GomaxprocsSource
    limit_cores: float | None
    affinity_cpus: int
    shares: dict[Category, float]
    samples: int
    go_version: tuple[int, int, int] | None = None
    spec_gomaxprocs: EnvSource | None = None  # how the pod spec sets it, None when it does not
    containermaxprocs_off: bool = False
    unknown_reason: str = ""
    limit_error: str = ""  # the CPU limit could not be read: unknown, never "no limit"


def recommended_gomaxprocs(limit_cores: float | None, affinity_cpus: int) -> int | None:
    if limit_cores is None:
        return None
    return max(1, min(max(2, math.ceil(limit_cores - 1e-9)), affinity_cpus))


def _share_text(e: Evidence) -> str:
    if not e.samples:
        return "no CPU samples yet"
    sched = e.shares.get(Category.SCHEDULER, 0.0)
    gc = e.shares.get(Category.GC, 0.0)
    return f"scheduler {sched:.0%} and GC {gc:.0%} of its CPU over {e.samples} samples"


def _fix(e: Evidence, recommended: int) -> str:
    spec = e.spec_gomaxprocs
    if spec is not None and spec.kind is SourceKind.LITERAL:
        return (
            f"the pod spec sets GOMAXPROCS={spec.value}: set it to {recommended}, "
            "or derive it with valueFrom.resourceFieldRef {resource: limits.cpu}"
        )
    if e.containermaxprocs_off:
        return (
            f"set GOMAXPROCS={recommended} (env from resourceFieldRef limits.cpu), or drop containermaxprocs=0 "
            "(GODEBUG, or a go.mod go directive <= 1.24) so Go's container-aware default applies"
        )
    source = e.gomaxprocs_source
    if source is GomaxprocsSource.ENV or (source is GomaxprocsSource.LIVE and spec is not None):
        return f"set GOMAXPROCS={recommended}, e.g. env valueFrom.resourceFieldRef {{resource: limits.cpu}}"
    return (
        f"set env GOMAXPROCS from the Downward API (resourceFieldRef: limits.cpu) = {recommended}, "
        "link go.uber.org/automaxprocs, or rebuild with Go >= 1.25"
    )


def judge(e: Evidence) -> Judgement:
    if e.gomaxprocs is None:
        reason = e.unknown_reason or "GOMAXPROCS could not be determined"
        return Judgement(Verdict.UNKNOWN, recommended_gomaxprocs(e.limit_cores, e.affinity_cpus), reason, "")
    if e.limit_error:
        return Judgement(
            Verdict.UNKNOWN,
            None,
            f"GOMAXPROCS={e.gomaxprocs} ({e.gomaxprocs_source}) but the CPU limit could not be read: {e.limit_error}",
            "",
        )
    if e.limit_cores is None:
        return Judgement(
            Verdict.NO_LIMIT,
            None,
            f"no CPU limit; GOMAXPROCS={e.gomaxprocs} ({e.gomaxprocs_source}); {_share_text(e)}",
            "",
        )
    rec = recommended_gomaxprocs(e.limit_cores, e.affinity_cpus)
    assert rec is not None
    g = e.gomaxprocs
    if g > rec:
        return Judgement(
            Verdict.ABOVE,
            rec,
            f"GOMAXPROCS={g} ({e.gomaxprocs_source}) but the CPU limit is {e.limit_cores:g} cores: "
            f"idle Ps spin and the GC runs per-P workers; {_share_text(e)}",
            _fix(e, rec),
        )
    if g < math.floor(e.limit_cores + 1e-9):
        return Judgement(
            Verdict.BELOW,
            rec,
            f"GOMAXPROCS={g} ({e.gomaxprocs_source}) cannot use the {e.limit_cores:g} cores it is allowed; "
            f"{_share_text(e)}",
            _fix(e, rec),
        )
    return Judgement(
        Verdict.OK,
        rec,
        f"GOMAXPROCS={g} ({e.gomaxprocs_source}) fits the {e.limit_cores:g}-core limit; {_share_text(e)}",
        "",
    )
