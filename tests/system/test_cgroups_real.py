"""agent.host.cgroupfs on this machine's real hierarchies: real quotas, real throttling, real ids.

Each test makes its own cgroups (``node-agent-test-<pid>-<random>``) in the
hierarchy holding the controller it needs (v1 ``cpu`` here; the unified tree on
a v2 host), moves a real busy process in, reads /proc/PID/cgroup through
:class:`CgroupFS` and checks what it reports against what the kernel does.
Processes are killed and cgroups removed on every exit path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import CgroupError
from agent.host.cgroupfs import (
    CgroupFS,
    Hierarchy,
    Mode,
    detect_layout,
)
from agent.host.procfs import parse_stat
from agent.lab.cgroupwriter import add_process, cgroup_pids, set_limit
from tests.support.capabilities import missing, need, need_root

CGROUP_ROOT = Path("/sys/fs/cgroup")
BUSY = "import sys\nsys.stdout.write('ready\\n'); sys.stdout.flush()\nwhile True: pass\n"

pytestmark = [pytest.mark.cgroup]


# ---- helpers -----------------------------------------------------------------------------------


def host() -> CgroupFS:
    try:
        return CgroupFS(CGROUP_ROOT)
    except CgroupError as exc:
        missing(f"a mounted cgroup hierarchy at {CGROUP_ROOT} ({exc})")


def writable(controller: str) -> tuple[CgroupFS, Hierarchy]:
    """This host's hierarchy for ``controller``, if root can create cgroups in it."""
    need_root()
    fs = host()
    h = fs.layout.for_controller(controller)
    need(h is not None, f"a mounted cgroup hierarchy with the {controller} controller")
    assert h is not None
    need(os.access(h.mount, os.W_OK), f"a writable {controller} hierarchy at {h.mount}")
    return fs, h


class TempCgroups:
    """Cgroups made under one unique top directory of a hierarchy; removed by :meth:`close`."""

    def __init__(self, h: Hierarchy) -> None:
        self.h = h
        self.top = h.mount / f"node-agent-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.created: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def rel(self, d: Path) -> str:
        return "/" + str(d.relative_to(self.h.mount))

    def make(self, sub: str = "") -> Path:
        d = self.top / sub if sub else self.top
        for p in [*reversed(d.relative_to(self.h.mount).parents[:-1]), d.relative_to(self.h.mount)]:
            full = self.h.mount / p
            if not full.exists():
                try:
                    full.mkdir()
                except OSError as exc:
                    missing(f"cannot create a cgroup in {self.h.mount} ({exc})")
                self.created.append(full)
        return d

    def enable(self, d: Path, controller: str) -> None:
        """v2 only: let ``d``'s children have the controller's files."""
        if self.h.version == 2:
            try:
                (d / "cgroup.subtree_control").write_text(f"+{controller}")
            except OSError as exc:
                missing(f"cannot enable the {controller} controller below {d.parent} ({exc})")

    def set_cores(self, d: Path, cores: float | None, period_us: int = 100_000) -> None:
        set_limit(d, self.h.version, cores, period_us)

    def pod_at_half_a_core(self) -> tuple[Path, Path]:
        """pod/container under the test's top cgroup, cpu enabled down to the pod, the pod at 0.5 core."""
        top = self.make()
        self.enable(top, "cpu")
        pod = self.make("pod")
        self.enable(pod, "cpu")
        container = self.make("pod/container")
        self.set_cores(pod, 0.5)
        return pod, container

    def busy(self) -> subprocess.Popen[bytes]:
        """A CPU-bound python process, ready (it said so on stdout) before it is returned."""
        proc = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        return proc

    def move(self, pid: int, d: Path) -> str:
        """Move ``pid`` into ``d``; return its /proc/PID/cgroup text as read afterwards."""
        add_process(d, pid)
        return Path(f"/proc/{pid}/cgroup").read_text()

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        for d in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
            self._remove(d)

    def _remove(self, d: Path) -> None:
        for _ in range(100):
            try:
                pids = cgroup_pids(d)
            except OSError:
                pids = []
            for pid in pids:  # not ours to kill: move anything left back to the root
                with contextlib.suppress(OSError):
                    add_process(self.h.mount, pid)
            try:
                d.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"could not remove test cgroup {d}")


@contextlib.contextmanager
def temp_cgroups(h: Hierarchy) -> Iterator[TempCgroups]:
    t = TempCgroups(h)
    try:
        yield t
    finally:
        t.close()


def cpu_seconds(pid: int) -> float:
    stat = parse_stat(Path(f"/proc/{pid}/stat").read_text())
    return (stat.utime + stat.stime) / os.sysconf("SC_CLK_TCK")


# ---- layout and this process -------------------------------------------------------------------


def test_layout_from_tree_agrees_with_mountinfo() -> None:
    layout = detect_layout(CGROUP_ROOT) if CGROUP_ROOT.is_dir() else None
    need(layout is not None, f"cgroups mounted at {CGROUP_ROOT}")
    assert layout is not None
    # the oracle: the kernel's own list of cgroup mounts (proc(5) mountinfo: fields, " - ", fstype, source, options)
    mounts: dict[str, Path] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, options = right.split()[:3]
        if fstype == "cgroup":
            for controller in set(options.split(",")) & {"cpu", "cpuset", "memory"}:
                mounts[controller] = Path(left.split()[4])
        elif fstype == "cgroup2" and Path(left.split()[4]) == CGROUP_ROOT:
            mounts.setdefault("unified-root", CGROUP_ROOT)
    for controller in ("cpu", "cpuset", "memory"):
        a = layout.for_controller(controller)
        if controller in mounts:  # a v1 hierarchy
            assert a is not None and a.version == 1 and a.mount.resolve() == mounts[controller].resolve(), controller
        else:
            assert a is None or a.version == 2, controller
    assert (layout.mode is Mode.V2) == ("unified-root" in mounts)
    if layout.mode is Mode.HYBRID:
        cpu = layout.for_controller("cpu")
        assert cpu is not None
        assert cpu.version == 1
        assert layout.unified is not None


def test_own_process_snapshot() -> None:
    fs = host()
    text = Path("/proc/self/cgroup").read_text()
    snap = fs.snapshot(text)
    assert snap.errors == ()
    assert snap.limit is not None


# ---- CPU limits --------------------------------------------------------------------------------


def test_half_core_quota_is_read_from_the_process() -> None:
    fs, h = writable("cpu")
    with temp_cgroups(h) as t:
        top = t.make()
        t.enable(top, "cpu")
        leaf = t.make("app")
        t.set_cores(leaf, 0.5)
        proc = t.busy()
        snap = fs.snapshot(t.move(proc.pid, leaf))
        assert snap.errors == ()
        assert snap.limit is not None
        assert snap.limit.cores == 0.5
        assert snap.limit.leaf == 0.5
        assert snap.limit.source == t.rel(leaf)
        assert snap.identity.path == t.rel(leaf)
        assert snap.identity.name == t.rel(leaf).lstrip("/")
        assert snap.identity.pod_uid is None


@pytest.mark.parametrize(("child_cores", "expected", "from_child"), [(0.2, 0.2, True), (None, 0.5, False)])
def test_nested_quota_minimum_over_ancestors(child_cores: float | None, expected: float, from_child: bool) -> None:
    """A parent at 0.5 core and a child lower (0.2) or unlimited: the minimum wins.
    (v1 refuses a child quota above its parent's; unlimited is the v1 way to be "higher".)"""
    fs, h = writable("cpu")
    with temp_cgroups(h) as t:
        mid, child = t.pod_at_half_a_core()
        t.set_cores(child, child_cores)
        proc = t.busy()
        snap = fs.snapshot(t.move(proc.pid, child))
        assert snap.errors == ()
        assert snap.limit is not None
        assert snap.limit.cores == pytest.approx(expected)
        assert snap.limit.leaf == child_cores
        assert snap.limit.source == t.rel(child if from_child else mid)
        assert snap.throttling_path == snap.limit.source


def test_child_quota_above_parent() -> None:
    """v2 accepts a child quota above its parent's and the parent's wins; v1 refuses it (EINVAL),
    which is why the v1 fixtures never show a container limit above its pod's."""
    fs, h = writable("cpu")
    with temp_cgroups(h) as t:
        mid, child = t.pod_at_half_a_core()
        if h.version == 1:
            with pytest.raises(CgroupError, match=os.strerror(errno.EINVAL)):
                t.set_cores(child, 2.0)
            return
        t.set_cores(child, 2.0)
        proc = t.busy()
        snap = fs.snapshot(t.move(proc.pid, child))
        assert snap.limit is not None
        assert (snap.limit.cores, snap.limit.leaf, snap.limit.source) == (0.5, 2.0, t.rel(mid))


def test_throttling_counters_rise_under_a_small_quota() -> None:
    fs, h = writable("cpu")
    with temp_cgroups(h) as t:
        top = t.make()
        t.enable(top, "cpu")
        leaf = t.make("app")
        t.set_cores(leaf, 0.1, period_us=20_000)  # 2 ms every 20 ms: many periods in a short test
        proc = t.busy()
        text = t.move(proc.pid, leaf)
        before = fs.snapshot(text)
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(0.6)
        after = fs.snapshot(text)
        used, wall = cpu_seconds(proc.pid) - cpu0, time.monotonic() - wall0
        assert before.throttling is not None
        assert after.throttling is not None
        assert after.throttling_path == t.rel(leaf)
        assert after.limit is not None
        assert after.limit.cores == pytest.approx(0.1)
        periods = after.throttling.nr_periods - before.throttling.nr_periods
        throttled = after.throttling.nr_throttled - before.throttling.nr_throttled
        assert periods >= 10
        assert throttled >= periods // 2  # a busy loop hits the quota in most periods
        assert after.throttling.throttled_seconds > before.throttling.throttled_seconds
        # and the limit we read is the one the kernel enforces
        assert used <= 0.1 * wall * 2 + 0.02


def test_cgroup_that_vanished_costs_only_its_fields() -> None:
    fs, h = writable("cpu")
    with temp_cgroups(h) as t:
        top = t.make()
        t.set_cores(top, 0.5)
        proc = t.busy()
        text = t.move(proc.pid, top)
        proc.kill()
        proc.wait(timeout=10)
        t._remove(top)
        snap = fs.snapshot(text)
        assert snap.identity.path == t.rel(top)
        assert snap.limit is None
        assert snap.throttling is None
        assert any("cpu limit" in e for e in snap.errors)


def test_cleanup_leaves_nothing_behind() -> None:
    _, h = writable("cpu")
    with temp_cgroups(h) as t:
        top = t.make()
        t.make("a/b")
        proc = t.busy()
        t.move(proc.pid, top)
    assert not top.exists()
    assert proc.poll() == -signal.SIGKILL
