"""agent.lab.cgroupwriter.in_cgroup: the child joins its cgroup before exec, or exits JOIN_FAILED (no root needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.lab.cgroupwriter import JOIN_FAILED, in_cgroup


def test_no_cgroup_leaves_the_command_alone() -> None:
    assert in_cgroup(["/bin/echo", "a b"], None) == ["/bin/echo", "a b"]


def test_the_child_writes_its_own_pid_then_execs(tmp_path: Path) -> None:
    # a plain directory stands in for the cgroup: the pid the child wrote is the pid that ran the program
    res = subprocess.run(in_cgroup(["/bin/sh", "-c", "echo $$"], tmp_path), capture_output=True, text=True, check=True)
    assert (tmp_path / "cgroup.procs").read_text().strip() == res.stdout.strip()


def test_a_cgroup_it_cannot_join_is_exit_125_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    res = subprocess.run(
        in_cgroup(["/usr/bin/touch", str(marker)], tmp_path / "gone"), capture_output=True, check=False
    )
    assert res.returncode == JOIN_FAILED and not marker.exists()
