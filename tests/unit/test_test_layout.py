"""tests/unit stays runnable anywhere: no test there asks for root, BPF, a cgroup or a Go toolchain.

(tests/unit also passes as uid 65534; what needs the machine goes to tests/system.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT = Path(__file__).parent
SYSTEM = UNIT.parent / "system"
MACHINE = ("need_root", "mark.bpf", "mark.cgroup", "mark.gotoolchain", "find_toolchain", "gobuild", "workloads")


@pytest.mark.parametrize("path", sorted(UNIT.glob("test_*.py")), ids=lambda p: p.name)
def test_unit_tests_do_not_need_the_machine(path: Path) -> None:
    text = path.read_text()
    if path == Path(__file__):
        return
    assert [m for m in MACHINE if m in text] == []


def test_every_system_test_says_what_it_needs() -> None:
    quiet = [
        p.name for p in sorted(SYSTEM.glob("test_*.py")) if not any(m in p.read_text() for m in (*MACHINE, "need("))
    ]
    assert quiet == []
