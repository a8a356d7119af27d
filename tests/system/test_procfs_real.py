"""agent.host.procfs on this machine: real processes, permissions, a compiled PIE (pure parsers: tests/unit)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.analysis.gomaxprocs import read_live
from agent.errors import ProcessGoneError
from agent.host import procfs
from agent.host.procfs import (
    PF_KTHREAD,
    GoEnv,
    MemoryReadError,
    ProcessKey,
    ProcessReusedError,
    ProcFS,
    file_offset,
    parse_maps,
)
from tests.support.capabilities import need, need_root


def mapping_at(mappings: tuple[procfs.MappedRegion, ...], addr: int) -> procfs.MappedRegion | None:
    return next((m for m in mappings if m.contains(addr)), None)


# ---- real processes --------------------------------------------------------------------------


@contextmanager
def _ready_child(argv: list[str], env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], bytes]]:
    """A child that prints one line when ready and exits when its stdin closes; yields it and that line."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout.readline()  # readiness through the pipe, not a sleep
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


@contextmanager
def _child(argv: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with _ready_child(argv, env) as (proc, _):
        yield proc


PY_WAIT = "import sys; print('ready', flush=True); sys.stdin.read()"


def test_real_self() -> None:
    pfs = ProcFS()
    assert os.getpid() in pfs.list_pids()
    info = pfs.snapshot(os.getpid())
    assert info is not None
    assert info.ppid == os.getppid()
    assert info.cpus_allowed == frozenset(os.sched_getaffinity(0))
    assert info.cpu_seconds > 0
    assert info.exe is not None and Path(info.exe.path) == Path(os.path.realpath(sys.executable))
    assert info.exe.inode == os.stat(sys.executable).st_ino
    assert info.mappings is not None and info.exe_mappings()
    assert ProcessKey(os.getpid(), pfs.read_stat(os.getpid()).start_time) == info.key


def test_real_child_env_and_affinity() -> None:
    cpu = max(os.sched_getaffinity(0))
    env = {"GOMAXPROCS": "7", "GODEBUG": "x=1", "SECRET": "hunter2", "PATH": os.environ.get("PATH", "/usr/bin")}
    with _child([sys.executable, "-c", PY_WAIT], env) as proc:
        os.sched_setaffinity(proc.pid, {cpu})
        info = ProcFS().snapshot(proc.pid)
        assert info is not None
        assert info.go_env == GoEnv("7", "x=1")
        assert info.cpus_allowed == frozenset({cpu}) and info.affinity_cpus == 1
        assert info.ppid == os.getpid()
        assert info.threads == 1
        assert info.name.startswith("python")
        assert info.cgroup is not None and info.cgroup == Path(f"/proc/{proc.pid}/cgroup").read_text()
        assert info.key.start_time == int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        assert b"SECRET=hunter2" in Path(f"/proc/{proc.pid}/environ").read_bytes()  # it is there to leak
        assert "hunter2" not in repr(info) and "hunter2" not in str(dataclasses.asdict(info))
        assert b"hunter2" not in pickle.dumps(info)


def test_real_taskset_affinity() -> None:
    taskset = shutil.which("taskset")
    need(taskset is not None, "taskset (util-linux)")
    assert taskset is not None
    cpu = min(os.sched_getaffinity(0))
    with _child([taskset, "-c", str(cpu), sys.executable, "-c", PY_WAIT]) as proc:
        info = ProcFS().snapshot(proc.pid)
        assert info is not None and info.cpus_allowed == frozenset({cpu})


def test_real_exited_process_is_gone() -> None:
    with _child([sys.executable, "-c", PY_WAIT]) as proc:
        pfs = ProcFS()
        key = ProcessKey(proc.pid, pfs.read_stat(proc.pid).start_time)
        proc.kill()
        proc.wait(timeout=10)
        with pytest.raises(ProcessGoneError):
            pfs.snapshot(proc.pid)
        with pytest.raises(ProcessGoneError):
            pfs.read_memory(key.pid, 0x1000, 4, start_time=key.start_time)


def test_real_zombie_is_gone() -> None:
    with _child([sys.executable, "-c", PY_WAIT]) as proc:
        os.kill(proc.pid, signal.SIGKILL)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert ProcFS().read_stat(proc.pid).state == "Z"
        with pytest.raises(ProcessGoneError):
            ProcFS().snapshot(proc.pid)


def test_real_process_exits_mid_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    with _child([sys.executable, "-c", PY_WAIT]) as proc:
        original = procfs.parse_status

        def kill_then_parse(text: str) -> procfs.Status:
            proc.kill()
            proc.wait(timeout=10)
            return original(text)

        monkeypatch.setattr(procfs, "parse_status", kill_then_parse)
        with pytest.raises(ProcessGoneError):
            ProcFS().snapshot(proc.pid)
        assert proc.returncode == -signal.SIGKILL


def test_real_kernel_thread_skipped() -> None:
    pfs = ProcFS()
    kthreads = []
    for pid in pfs.list_pids()[:200]:
        try:
            if pfs.read_stat(pid).flags & PF_KTHREAD:
                kthreads.append(pid)
        except ProcessGoneError:
            continue
    need(bool(kthreads), "kernel threads visible in /proc (host PID namespace)")
    assert pfs.snapshot(kthreads[0]) is None
    assert all(pfs.snapshot(pid) is None for pid in kthreads[:5])


def test_real_permission_denied_is_per_field() -> None:
    need_root()
    script = textwrap.dedent(
        """
        import os, sys
        from agent.host.procfs import ProcFS
        os.setgid(65534); os.setuid(65534)
        info = ProcFS().snapshot(int(sys.argv[1]))
        print(info.exe is None, info.mappings is None, info.go_env is None, info.cgroup is not None, len(info.errors))
        print(info.errors)
        """
    )
    with _child([sys.executable, "-c", PY_WAIT], {"SECRET": "hunter2"}) as proc:
        out = subprocess.run(
            [sys.executable, "-c", script, str(proc.pid)],
            cwd=Path(__file__).parents[2],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    first, errors = out.stdout.splitlines()
    assert first == "True True True True 3"
    assert "permission denied reading exe" in errors and "hunter2" not in out.stdout + out.stderr


# ---- a compiled PIE: mappings, file offsets, memory ----------------------------------------

PROBE_C = r"""
#include <stdio.h>
#include <unistd.h>
volatile unsigned int procfs_magic = 0x5eedf00dU;
volatile int procfs_fake_gomaxprocs = 3;
__attribute__((noinline)) int procfs_probe(int x) { return x * 3 + (int)procfs_magic; }
int main(void) {
    printf("%lx %lx %lx\n", (unsigned long)&procfs_probe, (unsigned long)&procfs_magic,
           (unsigned long)&procfs_fake_gomaxprocs);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return procfs_probe(0) == 0;
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    need(gcc is not None and shutil.which("readelf") is not None and shutil.which("nm") is not None, "gcc, readelf, nm")
    assert gcc is not None
    d = tmp_path_factory.mktemp("pie")
    (d / "probe.c").write_text(PROBE_C)
    subprocess.run([gcc, "-O1", "-fPIE", "-pie", "-o", str(d / "probe"), str(d / "probe.c")], check=True, timeout=120)
    return d / "probe"


@contextmanager
def _probe_child(path: Path) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """The probe, and the addresses it printed when ready (hex, space-separated)."""
    with _ready_child([str(path)]) as (proc, line):
        yield proc, [int(x, 16) for x in line.split()]


def _load_segments(path: Path) -> list[tuple[int, int, int]]:
    """(p_offset, p_vaddr, p_filesz) of PT_LOAD, from readelf -lW (an oracle independent of pyelftools)."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    assert "DYN" in out  # a PIE
    rows = re.findall(r"^\s*LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)", out, re.M)
    return [(int(o, 16), int(v, 16), int(s, 16)) for o, v, s in rows]


def _symbol(path: Path, name: str) -> int:
    out = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{name} not in nm output")


def _link_address(segments: list[tuple[int, int, int]], offset: int) -> int:
    for p_offset, p_vaddr, p_filesz in segments:
        if p_offset <= offset < p_offset + p_filesz:
            return offset - p_offset + p_vaddr
    raise AssertionError(f"offset {offset:#x} in no PT_LOAD")


def test_pie_runtime_pc_to_link_address(probe: Path) -> None:
    segments = _load_segments(probe)
    with _probe_child(probe) as (proc, (func, magic, _)):
        info = ProcFS().snapshot(proc.pid)
        assert info is not None and info.exe is not None and info.mappings is not None
        assert info.exe.path == str(probe) and info.exe.inode == probe.stat().st_ino
        code = info.exe_mappings()
        assert code and all(m.executable and m.path == str(probe) for m in code)
        m = mapping_at(info.mappings, func)
        assert m is not None and m in code
        link = _link_address(segments, file_offset(m, func))
        assert link == _symbol(probe, "procfs_probe")
        assert func - link > 0 and (func - link) % 4096 == 0  # the PIE load bias
        # data lives in a writable mapping of the exe whose offset != vaddr in the file
        d = mapping_at(info.mappings, magic)
        assert d is not None and d in info.exe_mappings(executable_only=False) and not d.executable
        assert _link_address(segments, file_offset(d, magic)) == _symbol(probe, "procfs_magic")
        assert magic - _symbol(probe, "procfs_magic") == func - link


def test_pie_read_memory(probe: Path) -> None:
    with _probe_child(probe) as (proc, (_, magic, fake_gomaxprocs)):
        pfs = ProcFS()
        key = ProcessKey(proc.pid, pfs.read_stat(proc.pid).start_time)
        assert pfs.read_memory(proc.pid, magic, 4) == (0x5EEDF00D).to_bytes(4, "little")
        assert pfs.read_memory(proc.pid, magic, 4, start_time=key.start_time) == (0x5EEDF00D).to_bytes(4, "little")
        assert read_live(pfs.memory_reader(key), fake_gomaxprocs) == 3
        with pytest.raises(MemoryReadError, match="cannot read"):
            pfs.read_memory(proc.pid, 0x1000, 4)  # unmapped
        maps = parse_maps(Path(f"/proc/{proc.pid}/maps").read_text())
        starts = {m.start for m in maps}
        edge = next(m for m in maps if m.readable and m.is_file and m.end not in starts)
        assert len(pfs.read_memory(proc.pid, edge.end - 2, 2)) == 2
        with pytest.raises(MemoryReadError, match="short read"):
            pfs.read_memory(proc.pid, edge.end - 2, 4)  # runs off the end of a mapping
        with pytest.raises(MemoryReadError):
            pfs.read_memory(proc.pid, magic, 0)
        with pytest.raises(MemoryReadError):
            pfs.read_memory(proc.pid, 1 << 64, 4)
        with pytest.raises(ProcessReusedError):
            pfs.read_memory(proc.pid, magic, 4, start_time=key.start_time + 1)


def test_pie_open_exe_and_deleted_exe(probe: Path, tmp_path: Path) -> None:
    copy = tmp_path / "probe copy"  # a space in the path, too
    shutil.copy2(probe, copy)
    original = copy.read_bytes()
    with _probe_child(copy) as (proc, (func, _, _)):
        copy.unlink()
        pfs = ProcFS()
        info = pfs.snapshot(proc.pid)
        assert info is not None and info.exe is not None and info.mappings is not None
        assert info.exe.deleted and info.exe.path == str(copy)
        code = info.exe_mappings()
        assert code and all(m.deleted for m in code)
        m = mapping_at(info.mappings, func)
        assert m in code
        assert info.exe.open_path.read_bytes() == original
