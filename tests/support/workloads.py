"""Real Go workloads in real v1 cpu cgroups, for scan/daemon/demo tests.

A service signals readiness through a pipe (it writes its bound address),
not a sleep; every cgroup and process is removed on every exit path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.commands import demo
from agent.commands.demo import Service
from agent.lab.cgroupwriter import add_process, in_cgroup, remove_cgroup, set_limit
from agent.lab.gotoolchain import GoToolchain, find_toolchains
from tests.support.capabilities import missing, need, need_root

V1_CPU = Path("/sys/fs/cgroup/cpu")


def build_demo(toolchain: GoToolchain | None = None) -> Path:
    """The bundled demo service, built as `node-agent demo` builds it (cached per toolchain and source)."""
    if toolchain is None:
        older = [t for t in find_toolchains() if t.minor < (1, 25)]
        need(bool(older), "a Go toolchain older than 1.25 (run scripts/setup.sh)")
        toolchain = older[-1]
    return demo.build_demo(toolchain)[0]


def need_v1_cpu_cgroup() -> None:
    need_root()
    need((V1_CPU / "cpu.cfs_quota_us").exists(), f"a writable cgroup v1 cpu controller at {V1_CPU}")


@dataclass
class Cgroup:
    path: Path

    @property
    def rel(self) -> str:
        return "/" + str(self.path.relative_to(V1_CPU))

    def set_limit(self, cores: float | None, period_us: int = 100_000) -> None:
        set_limit(self.path, 1, cores, period_us)

    def add(self, pid: int) -> None:
        add_process(self.path, pid)


@contextlib.contextmanager
def v1_cgroup(name: str, cores: float | None) -> Iterator[Cgroup]:
    need_v1_cpu_cgroup()
    path = V1_CPU / f"node-agent-test-{name}-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        missing(f"cannot create a v1 cpu cgroup ({exc})")
    cg = Cgroup(path)
    try:
        cg.set_limit(cores)
        yield cg
    finally:
        remove_cgroup(path)


@contextlib.contextmanager
def kubelet_pod_cgroup(pod_uid: str, container_id: str, tag: str, cores: float = 1.0) -> Iterator[Cgroup]:
    """A container's cgroup laid out as kubelet's cgroupfs driver does
    (.../kubepods/burstable/pod<uid>/<container id>), nested under a parent of our own as kind nests
    kubelet's tree under /docker/<id>/; the CPU limit on the pod, the level that is effective."""
    need_v1_cpu_cgroup()
    root = V1_CPU / f"node-agent-test-{os.getpid()}-{tag}"
    pod_dir = root / "kubepods" / "burstable" / f"pod{pod_uid}"
    ctr_dir = pod_dir / container_id.split("://", 1)[-1]
    try:
        ctr_dir.mkdir(parents=True)
        Cgroup(pod_dir).set_limit(cores)
        yield Cgroup(ctr_dir)
    finally:
        remove_cgroup(root)


@contextlib.contextmanager
def service(binary: Path, cg: Cgroup | None, env: dict[str, str]) -> Iterator[Service]:
    """Start `demo serve` inside ``cg``; ready once it wrote its address to the pipe."""
    r, w = os.pipe()
    full_env = {k: v for k, v in os.environ.items() if k not in ("GOMAXPROCS", "GODEBUG")}
    full_env.update(env)
    proc = subprocess.Popen(
        in_cgroup([str(binary), "serve", "-addr", "127.0.0.1:0", "-ready-fd", str(w)], cg.path if cg else None),
        pass_fds=(w,),
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as ready:
            line = ready.readline().decode().strip()
        if not line:
            raise RuntimeError(f"demo service exited early with {proc.wait(5)}")
        gomaxprocs = int(env.get("GOMAXPROCS", "0") or 0)
        yield Service("test", gomaxprocs, cg.path if cg else Path("/"), proc, line)
    finally:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def load(binary: Path, url: str, seconds: float, concurrency: int = 8) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(binary), "load", "-url", url, "-c", str(concurrency), "-d", f"{seconds}s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def perf_available() -> bool:
    return shutil.which("perf") is not None
