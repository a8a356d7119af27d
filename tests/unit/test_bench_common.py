"""benchmarks/common.py: what both benchmarks read, checked against the agent's own exposition and fake trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.export.metrics import AgentMetrics
from benchmarks.common import CLK_TCK, cpu_seconds, cpu_ticks, memory_kib, parse_machine_ticks, parse_metrics
from tests.unit.test_metrics import row

FAKE_PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def test_parse_metrics_reads_the_agents_own_exposition() -> None:
    from agent.analysis.verdict import Verdict

    m = AgentMetrics()
    reg = CollectorRegistry()
    reg.register(m)
    m.record_cycle(1.5, 970, {"stack_map_full": 3})
    m.record_cycle(0.5, 30, {})
    m.count_error("binary", 2)
    m.set_bpf(True)
    m.update([row("web-1", "app", 64, Verdict.ABOVE)], now=100)
    c = parse_metrics(generate_latest(reg).decode())
    assert c.samples == 1000 and c.cycles == 2 and c.cycle_seconds == 2.0
    assert c.lost == {"stack_map_full": 3} and c.errors.get("binary") == 2 and c.bpf_up == 1
    assert c.containers == {"shop/web-1/app"} and c.go_versions == {"go1.21.13"}


def test_cpu_of_a_fixture_process() -> None:
    # tests/fixtures/proc/4242: utime 1234, stime 266 ticks (as test_procfs reads them)
    assert cpu_ticks(4242, FAKE_PROC) == 1500
    assert cpu_seconds(4242, FAKE_PROC) == 1500 / CLK_TCK


def test_memory_from_status(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "status").write_text("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n")
    assert memory_kib(7, tmp_path) == (2048, 1024)
    (tmp_path / "7" / "status").write_text("Name:\tkthreadd\n")
    with pytest.raises(ValueError, match="VmHWM"):
        memory_kib(7, tmp_path)


def test_machine_ticks_exclude_idle_iowait_and_steal_from_busy() -> None:
    m = parse_machine_ticks("cpu  10 2 3 100 7 1 1 5 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
    assert (m.busy, m.steal, m.total) == (17, 5, 129)
