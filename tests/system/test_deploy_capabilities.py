"""The DaemonSet's capability set, tried for real (root, BPF): bcc loads and attaches a perf-event
program with exactly that set, reads another user's process, and fails without CAP_BPF,
CAP_PERFMON, CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH. The manifests themselves: tests/unit/test_deploy.py.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.capabilities import need, need_root
from tests.unit.test_deploy import CAPABILITIES, agent_container

# ---- the capability set, for real ------------------------------------------------------------

# The capability numbers setpriv's names map to (linux/capability.h).
CAP_BITS = {"DAC_READ_SEARCH": 2, "SYS_PTRACE": 19, "SYS_RESOURCE": 24, "SYS_ADMIN": 21, "PERFMON": 38, "BPF": 39}

BCC_PROGRAM = r"""
import ctypes, json, os, sys, time
from bcc import BPF, PerfType, PerfSWConfig

TEXT = '''
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
struct key_t { u32 tgid; int user_stack; u64 cgroup; };
BPF_HASH(counts, struct key_t, u64, 4096);
BPF_STACK_TRACE(stacks, 1024);
int on_sample(struct bpf_perf_event_data *ctx) {
    struct key_t key = {};
    key.tgid = bpf_get_current_pid_tgid() >> 32;
    key.user_stack = stacks.get_stackid(&ctx->regs, BPF_F_USER_STACK);
    key.cgroup = bpf_get_current_cgroup_id();
    counts.increment(key);
    return 0;
}
'''
caps = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:"))
try:
    b = BPF(text=TEXT)
    b.attach_perf_event(ev_type=PerfType.SOFTWARE, ev_config=PerfSWConfig.CPU_CLOCK,
                        fn_name="on_sample", sample_freq=199, cpu=-1)
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        pass
    mine = [(k, v.value) for k, v in b["counts"].items() if k.tgid == os.getpid()]
    print(json.dumps({"caps": caps, "samples": sum(v for _, v in mine),
                      "with_stack": sum(v for k, v in mine if k.user_stack >= 0)}))
except Exception as exc:
    print(json.dumps({"caps": caps, "error": str(exc)}))
"""

PROC_PROGRAM = r"""
import errno, json, sys
pid = sys.argv[1]
out = {"caps": next(l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:"))}
def attempt(name, fn):
    try:
        out[name] = fn()
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def mem():
    start = int(open(f"/proc/{pid}/maps").readline().split("-")[0], 16)
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(start)
        return f.read(4).hex()
attempt("maps", lambda: "ok" if open(f"/proc/{pid}/maps").readline() else "empty")
attempt("mem", mem)
attempt("environ", lambda: "ok" if open(f"/proc/{pid}/environ", "rb").read() is not None else "")
attempt("exe", lambda: open(f"/proc/{pid}/exe", "rb").read(4).hex())
print(json.dumps(out))
"""


def host_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapBnd in /proc/self/status")


def as_container(caps: frozenset[str], argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``argv`` as uid 0 with exactly ``caps`` (bounding = permitted = effective, nothing
    inheritable, no_new_privs): what the DaemonSet's securityContext gives the container."""
    setpriv = shutil.which("setpriv")
    need(setpriv is not None, "setpriv (util-linux)")
    assert setpriv is not None
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(caps))])
    res = subprocess.run(
        [setpriv, "--bounding-set", bounding, "--inh-caps", "-all", "--no-new-privs", "--", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    # The child really ran with the container's set (minus what this machine lacks itself).
    expected = sum(1 << CAP_BITS[c] for c in caps) & host_caps()
    assert int(result["caps"], 16) == expected, result
    return result


def kernel_headers(workdir: Path) -> dict[str, str] | None:
    """Environment for bcc to find headers: none needed if /lib/modules/<release>/build exists;
    else Debian's split linux-headers-<v>-{common,<arch>} merged into one symlink tree."""
    if (Path("/lib/modules") / os.uname().release / "build").is_dir():
        return {}
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    src = Path("/usr/src")
    for arch_dir in sorted(src.glob(f"linux-headers-*-{arch}"), reverse=True):
        common = src / (arch_dir.name.removesuffix(f"-{arch}") + "-common")
        if not common.is_dir():
            continue
        tree = workdir / "headers"
        merge_tree(tree, [common, arch_dir])
        return {"BCC_KERNEL_SOURCE": str(tree)}
    return None


def merge_tree(dest: Path, layers: list[Path]) -> None:
    """Symlink the union of ``layers`` into ``dest``, later layers winning; a directory only
    one layer has is linked whole, so only the few shared ones are walked."""
    dest.mkdir(parents=True)
    entries: dict[str, list[Path]] = {}
    for layer in layers:
        for entry in layer.iterdir():
            entries.setdefault(entry.name, []).append(entry)
    for name, paths in entries.items():
        dirs = [p for p in paths if p.is_dir()]
        if len(dirs) > 1:
            merge_tree(dest / name, dirs)
        else:
            (dest / name).symlink_to(paths[-1])


def bcc_available() -> bool:
    return subprocess.run([sys.executable, "-c", "import bcc"], capture_output=True, check=False).returncode == 0


@pytest.mark.bpf
@pytest.mark.slow
@pytest.mark.parametrize(
    ("removed", "works"),
    [(frozenset(), True), (frozenset({"PERFMON"}), False), (frozenset({"BPF"}), False)],
    ids=["documented-set", "without-PERFMON", "without-BPF"],
)
def test_capability_set_runs_bcc_perf_event_profiling(tmp_path: Path, removed: frozenset[str], works: bool) -> None:
    need_root()
    need(bcc_available(), "bcc (Debian python3-bpfcc) importable from this Python")
    env = kernel_headers(tmp_path)
    need(env is not None, "kernel headers (/lib/modules/$(uname -r)/build or /usr/src/linux-headers-*)")
    assert env is not None
    assert set(agent_container()["securityContext"]["capabilities"]["add"]) == CAPABILITIES
    result = as_container(CAPABILITIES - removed, [sys.executable, "-c", BCC_PROGRAM], env)
    if works:
        assert "error" not in result, result
        assert result["samples"] > 0
        assert result["with_stack"] > 0
    else:
        assert "error" in result, result


@pytest.fixture
def other_users_process() -> Iterator[int]:
    """A process of uid 65534 whose executable is not readable by others (mode 0711), like a
    workload in another container."""
    need_root()
    setpriv = shutil.which("setpriv")
    need(setpriv is not None, "setpriv (util-linux)")
    assert setpriv is not None
    sleep = shutil.which("sleep")
    assert sleep is not None
    workdir = Path(tempfile.mkdtemp(prefix="node-agent-caps-", dir="/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        workdir.chmod(0o711)
        exe = workdir / "workload"
        shutil.copy(sleep, exe)
        os.chown(exe, 65534, 65534)
        exe.chmod(0o711)
        proc = subprocess.Popen([setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", str(exe), "60"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{proc.pid}/exe") == str(exe):
                    break
            except OSError:
                pass
            time.sleep(0.01)
        else:
            raise AssertionError("the test workload did not start")
        yield proc.pid
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    ("removed", "expected"),
    [
        (frozenset(), {"maps": "ok", "mem": "ok", "environ": "ok", "exe": "ok"}),
        # mem and exe need the ptrace check passed by SYS_PTRACE (maps and environ need only a
        # ptrace-read, which CAP_PERFMON also passes on 6.x kernels, so they are not asserted)
        (frozenset({"SYS_PTRACE"}), {"mem": "denied", "exe": "denied"}),
        # mem (0600) and environ (0400) belong to the workload's uid, and so does its 0711 executable
        (frozenset({"DAC_READ_SEARCH"}), {"maps": "ok", "mem": "denied", "environ": "denied", "exe": "denied"}),
    ],
    ids=["documented-set", "without-SYS_PTRACE", "without-DAC_READ_SEARCH"],
)
def test_capability_set_reads_other_users_processes(
    other_users_process: int, removed: frozenset[str], expected: dict[str, str]
) -> None:
    result = as_container(CAPABILITIES - removed, [sys.executable, "-c", PROC_PROGRAM, str(other_users_process)])
    got = {k: ("denied" if result[k] in {"EACCES", "EPERM"} else "ok") for k in expected}
    assert got == expected, result
    if expected["exe"] == "ok":
        assert result["exe"] == "7f454c46"  # \x7fELF: the workload's executable itself
