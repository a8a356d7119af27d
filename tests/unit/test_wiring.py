"""One build_pipeline for scan, run and demo: the host root reaches every reader, and nothing else wires one."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from agent.commands.wiring import build_pipeline
from agent.gobinary.symbolizer import BinaryCache
from agent.host.cgroupfs import HostCgroups
from agent.sampling.sampler import SamplerConfig

AGENT = Path(__file__).parents[2] / "agent"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "cgroups"


def test_host_root_reaches_procfs_cgroups_and_sampler(tmp_path: Path) -> None:
    (tmp_path / "sys" / "fs").mkdir(parents=True)
    shutil.copytree(FIXTURES / "v2-systemd-containerd", tmp_path / "sys" / "fs" / "cgroup")
    binaries = BinaryCache(capacity=3)
    w = build_pipeline(41, tmp_path, kernel_headers=tmp_path / "h", cache_dir=tmp_path / "c", binaries=binaries)
    assert w.pipeline.procfs.root == tmp_path / "proc"
    assert w.pipeline.binaries is binaries
    assert isinstance(w.pipeline.cgroups, HostCgroups)
    assert w.pipeline.cgroups.fs.root == tmp_path / "sys" / "fs" / "cgroup"
    assert w.sampler == SamplerConfig.for_host(41, tmp_path, tmp_path / "h", tmp_path / "c")
    assert (w.sampler.sample_freq, w.sampler.proc, w.sampler.sysfs) == (41, tmp_path / "proc", tmp_path / "sys")
    assert w.sampler.headers.host_root == tmp_path and w.sampler.headers.explicit == tmp_path / "h"


def constructs(path: Path, names: set[str]) -> set[str]:
    return {
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id in names)
            or (isinstance(node.func, ast.Attribute) and node.func.attr in names)
        )
    }


def test_only_the_wiring_module_builds_a_pipeline_or_sampler_settings() -> None:
    wired = {"Pipeline", "HostCgroups", "for_host", "SamplerConfig"}
    where = {str(p.relative_to(AGENT)): sorted(found) for p in AGENT.rglob("*.py") if (found := constructs(p, wired))}
    # demo.py calls SamplerConfig.for_host for its preflight check (no pipeline there); the sampler
    # itself falls back to the defaults when given no settings
    assert where == {
        "commands/wiring.py": ["HostCgroups", "Pipeline", "for_host"],
        "commands/demo.py": ["for_host"],
        "sampling/sampler.py": ["SamplerConfig"],
    }
    for command in ("scan.py", "daemon.py", "demo.py"):
        assert "build_pipeline" in (AGENT / "commands" / command).read_text(), command
