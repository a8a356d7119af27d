"""The DaemonSet's capability set, tried for real (root, BPF): bcc loads and attaches a perf-event
program with exactly that set, reads another user's process, and fails without CAP_BPF,
CAP_PERFMON, CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH. The manifests themselves: tests/unit/test_deploy.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.host.privileges import unneeded
from tests.support.capabilities import need, need_root
from tests.support.containers import containerd
from tests.unit.test_deploy import CAPABILITIES, ROOT, agent_container

# ---- the capability set, for real ------------------------------------------------------------

# The capability numbers setpriv's names map to (linux/capability.h).
CAP_BITS = {
    "DAC_READ_SEARCH": 2,
    "SETGID": 6,
    "SETUID": 7,
    "SYS_PTRACE": 19,
    "SYS_RESOURCE": 24,
    "SYS_ADMIN": 21,
    "PERFMON": 38,
    "BPF": 39,
}

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
    everyone = [(k, v.value) for k, v in b["counts"].items()]
    mine = [(k, v) for k, v in everyone if k.tgid == os.getpid()]  # only without a PID namespace of its own
    print(json.dumps({"caps": caps, "samples": sum(v for _, v in mine),
                      "with_stack": sum(v for k, v in mine if k.user_stack >= 0),
                      "all_with_stack": sum(v for k, v in everyone if k.user_stack >= 0)}))
except Exception as exc:
    print(json.dumps({"caps": caps, "error": str(exc)}))
"""

# What both child programs below start with: their capabilities, `attempt` (an OSError is kept by
# name, e.g. "EACCES"), and reading 4 bytes of another process's memory at its first mapping.
CHILD_PRELUDE = r"""
import errno, json, os, sys
def effective_caps():
    return next(l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:"))
out = {}
def attempt(name, fn):
    try:
        out[name] = fn()
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
def read_mem(proc, pid):
    start = int(open(f"{proc}/{pid}/maps").readline().split("-")[0], 16)
    with open(f"{proc}/{pid}/mem", "rb") as f:
        f.seek(start)
        return f.read(4).hex()
"""

PROC_PROGRAM = (
    CHILD_PRELUDE
    + r"""
pid = sys.argv[1]
out["caps"] = effective_caps()
attempt("maps", lambda: "ok" if open(f"/proc/{pid}/maps").readline() else "empty")
attempt("mem", lambda: read_mem("/proc", pid))
attempt("environ", lambda: "ok" if open(f"/proc/{pid}/environ", "rb").read() is not None else "")
attempt("exe", lambda: open(f"/proc/{pid}/exe", "rb").read(4).hex())
print(json.dumps(out))
"""
)


def host_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapBnd in /proc/self/status")


def as_container(
    caps: frozenset[str], argv: list[str], env: dict[str, str] | None = None, *, drops: frozenset[str] = frozenset()
) -> dict[str, Any]:
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
    expected = sum(1 << CAP_BITS[c] for c in caps - drops) & host_caps()  # ``drops``: what it dropped itself
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


# ---- least privilege: no hostPID, a read-only host /proc, a uid that owns nothing -----------

AGENT_UID = 2_000_000_000  # deploy/daemonset.yaml's --user
# What the agent keeps after switching to that uid on this kernel (agent/host/privileges.py).
KEPT = frozenset(c for c in CAPABILITIES if not unneeded(os.uname().release) >> CAP_BITS[c] & 1)

ATTACK_PROGRAM = (
    CHILD_PRELUDE
    + r"""
proc, pid, secret, writable, drop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
if drop == "drop":
    from agent.host.privileges import drop_to
    drop_to(AGENT_UID, AGENT_UID)
out["caps"] = effective_caps()
def mem_write():
    os.close(os.open(f"{proc}/{pid}/mem", os.O_RDWR))
    return "opened"
def host_write():
    with open(f"{proc}/{pid}/root{writable}/planted", "w") as f:
        f.write("x")
    return "written"
attempt("mem_read", lambda: read_mem(proc, pid))
attempt("mem_write", mem_write)
attempt("exe", lambda: open(f"{proc}/{pid}/exe", "rb").read(4).hex())
attempt("read_0400_through_root", lambda: open(f"{proc}/{pid}/root{secret}").read().strip())
attempt("write_host_file_through_root", host_write)
print(json.dumps(out))
""".replace("AGENT_UID", str(AGENT_UID))
)


def in_pod_namespaces(hostdir: Path, argv: list[str], caps: frozenset[str]) -> list[str]:
    """``argv`` as the DaemonSet's container runs it, without hostPID: its own PID (and mount)
    namespace, the host's /proc, /sys, /lib/modules and /usr/src bound read-only under
    ``hostdir`` (the manifest's /host), exactly ``caps``, no_new_privs."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    need(unshare is not None and setpriv is not None, "unshare and setpriv (util-linux)")
    assert unshare is not None and setpriv is not None
    mounts = []
    for src in ("/proc", "/sys", "/lib/modules", "/usr/src"):
        dest = hostdir / src.lstrip("/")
        dest.mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount --rbind {src} {dest} && mount -o remount,bind,ro {dest}")
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(caps))])
    script = " && ".join([*mounts, "mount -t proc proc /proc", 'exec "$@"'])
    return [unshare, "--mount", "--pid", "--fork", "--kill-child=SIGTERM", "--propagation", "private",
            "sh", "-c", script, "sh", setpriv, "--bounding-set", bounding, "--inh-caps", "-all", "--no-new-privs",
            "--", *argv]  # fmt: skip


@pytest.fixture
def root_victim(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """A root process (full capabilities, the host's filesystem as its root), a 0400 file of another
    uid, and a root-owned directory (0755) that only uid 0 may write to."""
    need_root()
    secret = tmp_path / "secret"
    secret.write_text("tenant-secret\n")
    os.chown(secret, 65534, 65534)
    secret.chmod(0o400)
    writable = tmp_path / "root-only"
    writable.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc.pid, secret, writable
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        # What a compromised agent could do before: hostPID (/proc is the host's, writable), uid 0.
        (
            "hostPID-uid0",
            {"mem_read": "ok", "mem_write": "opened", "write_host_file_through_root": "written"},
        ),
        # No hostPID: the read-only /host/proc stops /proc/PID/mem writes, but the /proc/PID/root
        # magic link leaves the read-only mount, and uid 0 owns the host's files.
        (
            "no-hostPID-uid0",
            {"mem_read": "ok", "mem_write": "EROFS", "write_host_file_through_root": "written"},
        ),
        # The manifest now: no hostPID and, after start, a uid that owns nothing.
        (
            "no-hostPID-dropped",
            {"mem_read": "ok", "mem_write": "EACCES", "write_host_file_through_root": "EACCES"},
        ),
        # Even with hostPID, the dropped uid cannot open another process's memory for writing.
        (
            "hostPID-dropped",
            {"mem_read": "ok", "mem_write": "EACCES", "write_host_file_through_root": "EACCES"},
        ),
    ],
)
def test_compromised_agent_cannot_write_process_memory_or_host_files(
    root_victim: tuple[int, Path, Path], tmp_path: Path, deployment: str, expected: dict[str, str]
) -> None:
    pid, secret, writable = root_victim
    host_pid, dropped = deployment.startswith("hostPID"), deployment.endswith("dropped")
    caps = CAPABILITIES if dropped else CAPABILITIES - {"SETUID", "SETGID"}
    hostdir = tmp_path / "host"
    proc_root = "/proc" if host_pid else str(hostdir / "proc")
    argv = [sys.executable, "-c", ATTACK_PROGRAM, proc_root, str(pid), str(secret), str(writable)]
    argv.append("drop" if dropped else "stay")
    if host_pid:
        result = as_container(caps, argv, drops=CAPABILITIES - KEPT if dropped else frozenset())
    else:
        res = subprocess.run(
            in_pod_namespaces(hostdir, argv, caps), capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
        )
        assert res.returncode == 0, res.stderr
        result = json.loads(res.stdout.strip().splitlines()[-1])
    got = {k: ("ok" if k == "mem_read" and re.fullmatch(r"[0-9a-f]{8}", result[k]) else result[k]) for k in expected}
    assert got == expected, result
    assert result["exe"] == "7f454c46"  # what the agent needs still works
    # What stays possible (the README says so): reading any file, here another uid's 0400 secret.
    assert result["read_0400_through_root"] == "tenant-secret"
    assert (writable / "planted").exists() == (expected["write_host_file_through_root"] == "written")
    if dropped:
        assert int(result["caps"], 16) == sum(1 << CAP_BITS[c] for c in KEPT) & host_caps()


def test_switching_user_without_setuid_is_a_one_line_error() -> None:
    """SETUID and SETGID are kept for the switch only, and the switch needs them."""
    need_root()
    for removed in ({"SETUID"}, {"SETGID"}):
        argv = [sys.executable, "-m", "agent", "run", "--no-kubernetes", "--listen", "127.0.0.1:0",
                "--user", str(AGENT_UID)]  # fmt: skip
        setpriv = shutil.which("setpriv")
        need(setpriv is not None, "setpriv (util-linux)")
        assert setpriv is not None
        caps = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(CAPABILITIES - removed))])
        res = subprocess.run(
            [setpriv, "--bounding-set", caps, "--inh-caps", "-all", "--no-new-privs", "--", *argv],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and f"CAP_{next(iter(removed))} missing" in res.stderr, res.stderr


@pytest.mark.bpf
@pytest.mark.cgroup
@pytest.mark.slow
def test_agent_without_host_pid_reads_live_gomaxprocs_as_a_uid_that_owns_nothing(tmp_path: Path) -> None:
    """The manifest's setting end to end: its own PID namespace, the host's /proc read-only under
    /host, the DaemonSet's capabilities, --user: BPF loads, and a Go service's GOMAXPROCS is read
    live from its memory."""
    from tests.support.workloads import build_demo, load, service, v1_cgroup

    need_root()
    need(bcc_available(), "bcc (Debian python3-bpfcc) importable from this Python")
    demo = build_demo()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o1777)
    cache.chmod(0o1777)  # an emptyDir: writable by the uid the agent becomes
    hostdir = tmp_path / "host"
    argv = [sys.executable, "-m", "agent", "run", "--interval", "2", "--no-kubernetes", "--host-root", str(hostdir),
            "--listen", f"127.0.0.1:{port}", "--user", str(AGENT_UID),
            "--cache-dir", str(cache / "node-agent")]  # fmt: skip
    log = tmp_path / "agent.log"
    with (
        v1_cgroup("nohostpid", 1.0) as cg,
        service(demo, cg, {"GOMAXPROCS": "3"}) as svc,
        load(demo, svc.url, 90),
        open(log, "wb") as err,
    ):
        ns = subprocess.Popen(in_pod_namespaces(hostdir, argv, CAPABILITIES), cwd=ROOT, stdout=err, stderr=err)
        try:
            line = f'node_agent_go_info{{container="{cg.path.name}",go_version='

            def live() -> str | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        text = r.read().decode()
                except OSError:
                    return None
                return (
                    text if line in text and f'container="{cg.path.name}",namespace="",pod=""}} 3.0' in text else None
                )

            deadline = time.monotonic() + 120
            text = None
            while text is None and time.monotonic() < deadline and ns.poll() is None:
                text = live()
                time.sleep(1)
            children = subprocess.run(["pgrep", "-P", str(ns.pid)], capture_output=True, text=True, check=False)
            agent_pid = int(children.stdout.split()[0]) if children.stdout.split() else 0
            status = Path(f"/proc/{agent_pid}/status").read_text() if agent_pid else ""
        finally:
            # unshare ignores SIGTERM while it waits; the agent (its namespace's init) gets it directly.
            pgrep = subprocess.run(["pgrep", "-P", str(ns.pid)], capture_output=True, text=True, check=False)
            for child in pgrep.stdout.split():
                os.kill(int(child), signal.SIGTERM)
            try:
                ns.wait(30)
            except subprocess.TimeoutExpired:
                ns.kill()  # --kill-child takes the agent along
                ns.wait(10)
    assert text is not None, log.read_text()[-3000:]
    assert ns.returncode == 0, log.read_text()[-3000:]
    info = next(ln for ln in text.splitlines() if ln.startswith(line))
    assert 'gomaxprocs_source="live"' in info
    uids = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1:]
    assert uids == [str(AGENT_UID)] * 4
    cap_eff = int(next(ln for ln in status.splitlines() if ln.startswith("CapEff:")).split()[1], 16)
    assert cap_eff == sum(1 << CAP_BITS[c] for c in KEPT) & host_caps()
    assert "Traceback" not in log.read_text()


# ---- seccomp: RuntimeDefault, as containerd applies it ----------------------------------------

# ctr's default capabilities (the OCI defaults), dropped so that the container has exactly ours.
CTR_DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
                    "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP")  # fmt: skip


@contextlib.contextmanager
def usr_rootfs(workdir: Path) -> Iterator[Path]:
    """A root filesystem of this machine's /usr (read-only bind) and empty dirs: Debian's python3 and bcc."""
    rootfs = workdir / "rootfs"
    for d in ("usr", "etc", "proc", "sys", "dev", "tmp", "probe"):
        (rootfs / d).mkdir(parents=True)
    for link in ("lib", "lib64", "bin", "sbin"):
        (rootfs / link).symlink_to(f"usr/{link}")
    subprocess.run(["mount", "--bind", "/usr", str(rootfs / "usr")], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(rootfs / "usr")], check=True)
        yield rootfs
    finally:
        subprocess.run(["umount", "-l", str(rootfs / "usr")], check=False)


@pytest.mark.bpf
@pytest.mark.slow
@pytest.mark.parametrize(
    ("removed", "works"),
    [(frozenset(), True), (frozenset({"PERFMON"}), False)],
    ids=["documented-set", "without-PERFMON"],
)
def test_bcc_profiling_works_under_containerds_runtime_default_seccomp(
    tmp_path: Path, removed: frozenset[str], works: bool
) -> None:
    """``seccompProfile: RuntimeDefault`` on containerd is the profile ``ctr run --seccomp`` applies
    (containerd's generated default, which allows bpf() and perf_event_open() to containers with
    CAP_BPF/CAP_PERFMON): bcc loads, attaches and samples under it with exactly the DaemonSet's set."""
    need_root()
    need(
        subprocess.run(["/usr/bin/python3", "-c", "import bcc"], capture_output=True, check=False).returncode == 0,
        "bcc for /usr/bin/python3 (Debian python3-bpfcc)",
    )
    with containerd(tmp_path) as sock, usr_rootfs(tmp_path) as rootfs:
        env = kernel_headers(rootfs / "probe")
        need(env is not None, "kernel headers (/lib/modules/$(uname -r)/build or /usr/src/linux-headers-*)")
        assert env is not None
        env = {k: "/" + str(Path(v).relative_to(rootfs)) for k, v in env.items()}  # the path inside
        (rootfs / "probe" / "bcc_probe.py").write_text(BCC_PROGRAM)
        caps = [a for c in CTR_DEFAULT_CAPS if c not in CAPABILITIES for a in ("--cap-drop", f"CAP_{c}")]
        available = [c for c in sorted(CAPABILITIES - removed) if host_caps() >> CAP_BITS[c] & 1]  # runc adds no more
        caps += [a for c in available for a in ("--cap-add", f"CAP_{c}")]
        envs = [a for k, v in env.items() for a in ("--env", f"{k}={v}")]
        res = subprocess.run(
            ["ctr", "--address", sock, "run", "--rm", "--seccomp", *caps, *envs, "--rootfs", str(rootfs),
             f"node-agent-seccomp-{os.getpid()}", "/usr/bin/python3", "/probe/bcc_probe.py"],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert int(result["caps"], 16) == sum(1 << CAP_BITS[c] for c in CAPABILITIES - removed) & host_caps()
    if works:
        assert "error" not in result, result
        assert result["all_with_stack"] > 0  # its own pid is another inside the container
    else:
        assert "error" in result, result


def test_containers_common_default_seccomp_gates_bpf_on_sys_admin() -> None:
    """Why the manifest says what to do on CRI-O/podman: their default profile (containers-common's
    seccomp.json, as installed here) allows bpf() and perf_event_open() only with CAP_SYS_ADMIN."""
    profile = Path("/usr/share/containers/seccomp.json")
    need(profile.is_file(), "containers-common's seccomp.json (Debian package golang-github-containers-common)")
    rules = json.loads(profile.read_text())["syscalls"]
    for call in ("bpf", "perf_event_open"):
        allowing = [r for r in rules if call in r["names"] and r["action"] == "SCMP_ACT_ALLOW"]
        assert allowing, call
        assert all(r.get("includes", {}).get("caps") == ["CAP_SYS_ADMIN"] for r in allowing), (call, allowing)
