"""A CPU limit that cannot be read is `unknown` with the reason, never `no_limit`.

A garbage cpu.cfs_quota_us (the uber-go/automaxprocs edge fixture) used to drop the
read error and judge the process as having no limit at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.analysis.attribution import ProcessProfile
from agent.analysis.gomaxprocs import GomaxprocsSource
from agent.analysis.goruntime import Category
from agent.analysis.pipeline import Pipeline
from agent.analysis.verdict import Evidence, Verdict, judge
from agent.gobinary.symbolizer import GoBinary
from agent.host.cgroupfs import HostCgroups
from agent.host.procfs import GoEnv, ProcessInfo, ProcessKey, ProcFS
from tests.support.capabilities import need

EDGE = Path(__file__).parents[1] / "fixtures" / "cgroups" / "edge"
PROMETHEUS = Path("/usr/bin/prometheus")  # a real Go binary (Debian's prometheus package)


def host_with(tmp_path: Path, edge: str) -> Path:
    (tmp_path / "sys" / "fs").mkdir(parents=True)
    (tmp_path / "sys" / "fs" / "cgroup").symlink_to(EDGE / edge)
    return tmp_path


def test_garbage_quota_reaches_the_facts_as_a_reason(tmp_path: Path) -> None:
    facts = HostCgroups(host_with(tmp_path, "v1-garbage-quota")).facts("3:cpu:/leaf\n")
    assert facts.effective_limit is None and facts.leaf_limit is None
    assert "cfs_quota_us: not an integer: 'fifty'" in facts.limit_error


def test_unlimited_quota_has_no_reason(tmp_path: Path) -> None:
    facts = HostCgroups(host_with(tmp_path, "v1-unlimited")).facts("3:cpu:/leaf\n")
    assert facts.effective_limit is None and facts.limit_error == ""


def test_judge_with_an_unreadable_limit_is_unknown_not_no_limit() -> None:
    shares = {Category.USER: 1.0}
    e = Evidence(8, GomaxprocsSource.LIVE, None, 64, shares, 100, limit_error="cpu limit: cfs_quota_us: not an integer")
    j = judge(e)
    assert j.verdict is Verdict.UNKNOWN and j.recommended is None
    assert "cfs_quota_us: not an integer" in j.explanation
    assert judge(Evidence(8, GomaxprocsSource.LIVE, None, 64, shares, 100)).verdict is Verdict.NO_LIMIT


@pytest.mark.parametrize("edge", ["v1-garbage-quota", "v1-garbage-period", "v1-zero-quota", "v1-missing-period"])
def test_pipeline_row_for_a_process_in_an_unreadable_cgroup_is_unknown(tmp_path: Path, edge: str) -> None:
    need(PROMETHEUS.is_file(), "Debian's prometheus package (scripts/setup.sh)")
    pipeline = Pipeline(ProcFS(tmp_path / "proc"), HostCgroups(host_with(tmp_path, edge)), host_cpus=4)
    info = ProcessInfo(
        key=ProcessKey(4242, 1),
        comm="prometheus",
        name="prometheus",
        state="S",
        ppid=1,
        threads=4,
        cpu_seconds=1.0,
        cpus_allowed=frozenset(range(4)),
        exe=None,
        mappings=(),
        go_env=GoEnv(gomaxprocs="4"),
        cgroup="3:cpu:/leaf\n",
    )
    row = pipeline._report(info, GoBinary.open(PROMETHEUS), None, ProcessProfile(), 97)
    assert row.verdict is Verdict.UNKNOWN, row.explanation
    assert "CPU limit could not be read" in row.explanation
    assert row.cpu_limit_cores is None and row.recommended_gomaxprocs is None
    assert pipeline.stats.errors["cgroup_unreadable"] == 1
