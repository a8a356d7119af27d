"""The image as users run it: built from the Dockerfile, run by podman + runc (and containerd + ctr)
with the flags deploy/daemonset.yaml gives the agent, judging Go services in other containers.

Two workload containers run the bundled Go service with ``--cpus=1`` and GOMAXPROCS=64, under load:
one plain (podman's cgroup), one under a kubelet-shaped parent ``kubepods/burstable/pod<uid>``
that the fake API server names shop/web-7d9f8b6c5-x2kqz/app. Oracles: the runtime's own view
(container ids, cgroup paths), the kernel (EROFS on a write), a real Prometheus (the alert), and
the manifest (every flag is derived from it by tests/containers.py).

Figures (build times, image size, start-to-ready, memory peak) are printed and written to
``$NODE_AGENT_E2E_FIGURES`` (if set) for the README.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.lab.gotoolchain import GoToolchain, build_env, find_toolchains
from tests.support.capabilities import need, need_root
from tests.support.containers import (
    Built,
    Container,
    DaemonSetAgent,
    MemoryPeak,
    container,
    containerd,
    ensure_image,
    image_size,
    load_daemonset,
    memory_cgroup,
    podman,
    podman_flags,
    podman_run,
    remove_cgroup_tree,
    run,
)
from tests.support.fakeapi import FakeKubeAPI, kubeconfig, make_container, make_pod, uid_of
from tests.support.loopback import free_port, get, scrape, wait_for
from tests.support.prometheus import GOMAXPROCS_ALERT as ALERT
from tests.support.prometheus import firing, prometheus
from tests.support.workloads import build_demo

pytestmark = [pytest.mark.slow, pytest.mark.bpf, pytest.mark.cgroup]

NODE = "node-a"
POD_N = 7310
POD = ("shop", "web-7d9f8b6c5-x2kqz", "app")
FIGURES: dict[str, Any] = {}


def record(name: str, value: Any) -> None:
    FIGURES[name] = value
    print(f"[container-e2e] {name} = {value}")
    out = os.environ.get("NODE_AGENT_E2E_FIGURES")
    if out:
        Path(out).write_text(json.dumps(FIGURES, indent=2) + "\n")


# ---- fixtures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    base: Built
    agent: Built


@pytest.fixture(scope="module")
def images() -> Images:
    need_root()
    for tool in ("podman", "runc", "mmdebstrap"):
        need(shutil.which(tool) is not None, f"{tool} (scripts/setup.sh installs it)")
    base, agent = ensure_image()
    record("base_image_build_s", None if base.seconds is None else round(base.seconds, 1))
    record("agent_image_build_s", None if agent.seconds is None else round(agent.seconds, 1))
    record("agent_image_size_mb", round(image_size(agent.name) / 1e6, 1))
    return Images(base, agent)


@pytest.fixture(scope="module")
def spec() -> DaemonSetAgent:
    return load_daemonset()


@dataclass
class Workload:
    container: Container
    url: str
    cgroup: str  # as /proc/PID/cgroup shows it (v1 cpu line)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _workload(base: str, demo: Path, cgroup_parent: str | None) -> Iterator[Workload]:
    port = free_port()
    flags = ["--pull=never", "--network=host", "--cpus=1", "-e", "GOMAXPROCS=64", "-v", f"{demo}:/demo:ro"]
    if cgroup_parent:
        flags.append(f"--cgroup-parent={cgroup_parent}")
    with container(base, flags, ["/demo", "serve", "-addr", f"127.0.0.1:{port}"], stop_timeout=2) as c:
        wait_for(lambda: _port_open(port), 30, f"the Go service in {c.name}")
        lines = Path(f"/proc/{c.pid()}/cgroup").read_text().splitlines()
        cpu = next(line.split(":", 2)[2] for line in lines if "cpu" in line.split(":")[1].split(","))
        yield Workload(c, f"http://127.0.0.1:{port}", cpu)


@dataclass(frozen=True)
class Workloads:
    plain: Workload
    kube: Workload
    pod_uid: str
    demo: Path


@pytest.fixture(scope="module")
def workloads(images: Images) -> Iterator[Workloads]:
    """Two GOMAXPROCS=64 services limited to 1 CPU, under load for the whole module."""
    demo = build_demo()
    root = f"/node-agent-test-e2e-{uuid.uuid4().hex[:8]}"
    pod_uid = uid_of(POD_N)
    loads: list[subprocess.Popen[bytes]] = []
    try:
        with (
            _workload(images.base.name, demo, None) as plain,
            _workload(images.base.name, demo, f"{root}/kubepods/burstable/pod{pod_uid}") as kube,
        ):
            for w in (plain, kube):
                loads.append(
                    subprocess.Popen(
                        [str(demo), "load", "-url", w.url, "-c", "4", "-d", "1800s"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            try:
                yield Workloads(plain, kube, pod_uid, demo)
            finally:
                for p in loads:
                    p.kill()
                    p.wait(10)
    finally:
        remove_cgroup_tree(root)


def agent_args(spec: DaemonSetAgent, command: str, *extra: str) -> list[str]:
    """The manifest's args, $(VAR) expanded as the kubelet does, with the subcommand swapped
    (scan has no --listen and no --user: those are the daemon's)."""
    values = {**spec.env, **FIELD_VALUES}
    args = [re.sub(r"\$\((\w+)\)", lambda m: values.get(m[1], m[0]), a) for a in spec.args]
    assert args[0] == "run", args
    args[0] = command
    for option in ("--listen", "--user") if command == "scan" else ():
        if option in args:
            i = args.index(option)
            del args[i : i + 2]
    return [*args, *extra]


# The Downward API values the kubelet would give: this node, and the pod IP (host network: loopback).
FIELD_VALUES = {"NODE_NAME": NODE, "POD_IP": "127.0.0.1"}


def flags(spec: DaemonSetAgent, **kw: Any) -> list[str]:
    return podman_flags(spec, field_values=FIELD_VALUES, **kw)


def scan_rows(images: Images, spec: DaemonSetAgent, **kw: Any) -> tuple[list[dict[str, Any]], str]:
    res = podman_run(
        *flags(spec, **kw), images.agent.name, *agent_args(spec, "scan", "--json", "--duration", "6"),
        timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout), res.stderr


def assert_flagged(rows: list[dict[str, Any]], w: Workload, stderr: str) -> None:
    cid = w.container.id
    mine = [r for r in rows if r["cgroup"] == w.cgroup]
    assert mine, ([r["cgroup"] for r in rows], stderr[-2000:])
    row = mine[0]
    assert cid in row["cgroup"] and len(cid) == 64
    assert row["gomaxprocs"] == 64 and row["gomaxprocs_source"] == "live"
    assert row["cpu_limit_cores"] == 1.0
    assert row["verdict"] == "gomaxprocs_above_limit"
    assert row["recommended_gomaxprocs"] == 2
    assert row["samples"] > 0


# ---- scan -------------------------------------------------------------------------------------


def test_scan_in_the_agent_container_flags_both_go_containers(
    images: Images, spec: DaemonSetAgent, workloads: Workloads
) -> None:
    rows, stderr = scan_rows(images, spec)
    assert_flagged(rows, workloads.plain, stderr)
    assert_flagged(rows, workloads.kube, stderr)
    assert f"/kubepods/burstable/pod{workloads.pod_uid}/libpod-{workloads.kube.container.id}" in workloads.kube.cgroup


def test_node_without_kernel_headers_samples_with_the_images_fallback(
    images: Images, spec: DaemonSetAgent, workloads: Workloads
) -> None:
    """No /lib/modules, no /usr/src mounted (and no kheaders on this kernel): the bundled tree is used."""
    header_mounts = [m.path for m in spec.mounts if m.host_path in {"/lib/modules", "/usr/src"}]
    assert len(header_mounts) == 2
    need(not Path("/sys/kernel/kheaders.tar.xz").exists(), "a kernel without the kheaders tarball loaded")
    rows, _ = scan_rows(images, spec, drop_mounts=header_mounts)
    assert_flagged(rows, workloads.kube, "")
    res = podman_run(
        *flags(spec, drop_mounts=header_mounts), "--entrypoint", "python3", images.agent.name, "-c",
        "from agent.sampling.kheaders import HeaderSearch; from pathlib import Path; "
        "print(HeaderSearch(host_root=Path('/host')).find().describe())",
    )  # fmt: skip
    assert "the agent's bundled headers (linux-headers-" in res.stdout, res.stdout


def test_runtime_default_seccomp_blocking_bpf_is_named_with_the_fix(images: Images, spec: DaemonSetAgent) -> None:
    """podman's default profile allows bpf() only with CAP_SYS_ADMIN: the error says seccomp, not headers."""
    res = podman_run(
        *flags(spec, seccomp="podman-default"), images.agent.name,
        *agent_args(spec, "scan", "--duration", "1"), timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert "bpf() is refused (EPERM) although the capabilities allow it" in res.stderr
    assert "seccomp filter" in res.stderr and "seccomp=unconfined" in res.stderr
    assert "Traceback" not in res.stderr and "kernel headers" not in res.stderr.split("(")[0]


def test_the_builds_pip_settings_and_ca_are_not_in_the_image(images: Images) -> None:
    """They reached pip as build secrets: mounted for one step, in no layer."""
    files = (
        "/run/secrets/pip.conf /run/secrets/pip-ca.crt /etc/pip.conf /etc/xdg/pip/pip.conf /root/.config/pip/pip.conf"
    )
    res = podman_run(
        "--pull=never", "--network=none", "--entrypoint", "sh", images.agent.name, "-c",
        f"for f in {files}; do test -e $f && echo PRESENT $f; done; ls -A /run/secrets; python3 -m pip config list;"
        " echo CHECKED",
    )  # fmt: skip
    # no file, no pip setting: nothing before the line that shows the script ran to its end
    assert "PRESENT" not in res.stdout and res.stdout == "CHECKED\n", res.stdout
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", images.agent.name).stdout
    assert "/run/secrets/pip.conf" in history  # the steps used them...
    assert "BEGIN CERTIFICATE" not in history  # ...by reference only


# ---- the agent must not be able to harm the host ----------------------------------------------


def sh_in_agent_container(
    images: Images, spec: DaemonSetAgent, script: str, rro: bool = True
) -> subprocess.CompletedProcess[str]:
    """`sh -c script` in the agent's container, as the manifest runs it (the scripts always print)."""
    return podman_run(*flags(spec, rro=rro), "--entrypoint", "sh", images.agent.name, "-c", script)


def test_agent_container_cannot_write_a_host_cgroup_file(
    images: Images, spec: DaemonSetAgent, workloads: Workloads
) -> None:
    """The workload's CPU quota, through /host/sys and through the host's pid 1: both refused.

    Without the read-only sub-mounts (a runtime without recursiveReadOnly) the same write goes
    through; it rewrites the value the file already holds, so the host is not changed.
    """
    quota = Path("/sys/fs/cgroup/cpu") / workloads.kube.cgroup.lstrip("/") / "cpu.cfs_quota_us"
    before = quota.read_text().strip()
    assert before == "100000"
    script = (
        f'echo {before} > /host{quota} && echo WROTE-HOST-SYS; '
        f'echo {before} > /host/proc/1/root{quota} && echo WROTE-HOST-PROC; '
        f'echo {before} > /proc/1/root{quota} && echo WROTE-PROC; true'
    )  # fmt: skip
    closed = sh_in_agent_container(images, spec, script)
    assert "WROTE" not in closed.stdout, closed.stdout
    assert f"cannot create /host{quota}: Read-only file system" in closed.stderr
    open_ = sh_in_agent_container(images, spec, script, rro=False)
    assert "WROTE-HOST-SYS" in open_.stdout  # the hole the start-up check reports (next test)
    assert "WROTE-HOST-PROC" not in open_.stdout and "WROTE-PROC" not in open_.stdout
    assert quota.read_text().strip() == before


def test_writable_host_mounts_are_reported_on_readyz_and_metrics(images: Images, spec: DaemonSetAgent) -> None:
    port = free_port()
    args = agent_args(spec, "run", "--listen", f"127.0.0.1:{port}", "--no-kubernetes", "--interval", "3")
    with container(images.agent.name, flags(spec, rro=False), args) as agent:
        _status, body = wait_for(
            lambda: (r := get(f"http://127.0.0.1:{port}/readyz"))[0] == 503 and b"host mounts writable" in r[1] and r,
            120,
            "/readyz naming the writable host mounts",
        )
        metrics = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        logs = agent.logs()
    assert b"/host/sys/fs/cgroup/cpu (cgroup)" in body, body
    assert 'node_agent_errors_total{kind="host_mount_writable"}' in metrics
    assert "host mounts writable" in logs


# ---- run: /metrics, profiles, Prometheus ------------------------------------------------------


def test_run_in_the_agent_container_serves_metrics_profiles_and_fires_the_alert(
    images: Images, spec: DaemonSetAgent, workloads: Workloads, tmp_path: Path
) -> None:
    port = free_port()
    pod = make_pod(
        POD[1], n=POD_N, node=NODE, namespace=POD[0], owner=("ReplicaSet", "web-7d9f8b6c5"),
        containers=[make_container(POD[2], limits={"cpu": "1"}, env=[{"name": "GOMAXPROCS", "value": "64"}])],
    )  # fmt: skip
    pod["status"]["containerStatuses"][0]["containerID"] = f"containerd://{workloads.kube.container.id}"
    with FakeKubeAPI() as api:
        api.create_pod(pod)
        cfg = kubeconfig(tmp_path / "kubeconfig", api.url)
        cfg.chmod(0o644)
        extra = ["-v", f"{cfg}:/etc/node-agent/kubeconfig:ro"]
        # /profiles is off in the manifest (it names every container's code): turned on as a user would.
        args = agent_args(spec, "run", "--listen", f"127.0.0.1:{port}", "--interval", "3", "--profiles")
        started = time.monotonic()
        with container(
            images.agent.name, [*flags(spec, extra_env={"KUBECONFIG": "/etc/node-agent/kubeconfig"}), *extra], args
        ) as agent:
            mem = MemoryPeak(agent.pid(), memory_cgroup(agent.pid()))
            wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 180, "the agent's /readyz")
            record("start_to_ready_s", round(time.monotonic() - started, 1))
            with prometheus(tmp_path, {"node-agent": port}) as prom_port:
                plain_name = f"podman:{workloads.plain.container.id[:12]}"  # outside Kubernetes: runtime + id
                want = {POD[2], plain_name}

                def flagged() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                    mem.poll()
                    m = scrape(port)
                    names = {lbl.get("container") for lbl, v in m.get("node_agent_go_misconfigured", []) if v == 1}
                    return m if want <= names else None

                metrics = wait_for(flagged, 120, "both containers flagged on /metrics")

                def both_firing() -> set[str]:
                    mem.poll()
                    names = {a["labels"].get("container", "") for a in firing(prom_port, ALERT)}
                    return names if want <= names else set()

                wait_for(both_firing, 120, f"{ALERT} firing for both containers")
                listing = get(f"http://127.0.0.1:{port}/profiles")
                profile = get(f"http://127.0.0.1:{port}/profiles/{'/'.join(POD)}")
                mem.poll()
            logs = agent.logs()
        record("agent_rss_peak_mib_run", round(mem.rss_peak / 2**20, 1))
    labels = {"namespace": POD[0], "pod": POD[1], "container": POD[2]}
    gomaxprocs = [v for lbl, v in metrics["node_agent_go_gomaxprocs"] if lbl.items() >= labels.items()]
    limit = [v for lbl, v in metrics["node_agent_container_cpu_limit_cores"] if lbl.items() >= labels.items()]
    assert gomaxprocs == [64.0] and limit == [1.0], logs[-2000:]
    assert listing[0] == 200 and POD[1].encode() in listing[1]
    assert profile[0] == 200 and gzip.decompress(profile[1])  # a gzipped profile.proto
    assert "Traceback" not in logs


# ---- memory under the manifest's limit -----------------------------------------------------------


def _go_binaries() -> list[list[str]]:
    """Long-running big Go daemons from Debian (each on loopback, state in a temp dir by the caller)."""
    cmds = []
    if shutil.which("etcd"):
        client, peer = "http://127.0.0.1:{p1}", "http://127.0.0.1:{p2}"
        cmds.append(["etcd", "--listen-client-urls", client, "--advertise-client-urls", client,
                     "--listen-peer-urls", peer, "--data-dir", "{tmp}/etcd"])  # fmt: skip
    if shutil.which("prometheus-node-exporter"):
        cmds.append(["prometheus-node-exporter", "--web.listen-address=127.0.0.1:{p1}"])
    if shutil.which("prometheus"):
        cmds.append(["prometheus", "--config.file=/dev/null", "--storage.tsdb.path={tmp}/prom",
                     "--web.listen-address=127.0.0.1:{p1}"])  # fmt: skip
    return cmds


def _rebuild_forever(toolchains: list[GoToolchain], tmp: Path, stop: threading.Event) -> None:
    """Every toolchain rebuilds the demo service from scratch (go, compile, asm, link: big Go
    binaries, a different build each), and runc runs, until ``stop``."""
    src = Path(__file__).resolve().parents[2] / "agent" / "commands" / "demo"
    while not stop.is_set():
        for i, tc in enumerate(toolchains):
            if stop.is_set():
                return
            cache = tmp / f"go-{i}"
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [str(tc.go), "build", "-a", "-o", str(tmp / f"demo-{i}"), "."],
                    cwd=src, env=build_env(tc, cache), capture_output=True, timeout=300, check=False,
                )  # fmt: skip
                subprocess.run(["runc", "list"], capture_output=True, timeout=30, check=False)
            shutil.rmtree(cache, ignore_errors=True)


def test_memory_soak_under_the_manifests_limit_with_many_big_go_binaries(
    images: Images, spec: DaemonSetAgent, workloads: Workloads, tmp_path: Path
) -> None:
    """The agent container, limited as the manifest limits it, while Debian's big Go daemons run and
    every installed Go toolchain (go, compile, link, asm: a different build each) and runc run in a loop."""
    assert spec.memory_limit
    minutes = float(os.environ.get("NODE_AGENT_E2E_SOAK_MINUTES", "2"))
    daemons = _go_binaries()
    need(len(daemons) == 3, "etcd-server, prometheus-node-exporter, prometheus (scripts/setup.sh)")
    toolchains = find_toolchains()
    need(len(toolchains) >= 3, "several Go toolchains (scripts/setup.sh)")
    procs: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    builder = threading.Thread(target=_rebuild_forever, args=(toolchains, tmp_path, stop), daemon=True)
    port = free_port()
    try:
        for cmd in daemons:
            p1, p2 = free_port(), free_port()
            argv = [a.format(p1=p1, p2=p2, tmp=tmp_path) for a in cmd]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path))
        builder.start()
        args = agent_args(spec, "run", "--listen", f"127.0.0.1:{port}", "--no-kubernetes", "--interval", "3")
        with container(images.agent.name, flags(spec), args) as agent:
            mem = MemoryPeak(agent.pid(), memory_cgroup(agent.pid()))
            wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 180, "the agent's /readyz")
            deadline = time.monotonic() + minutes * 60
            series: set[str] = set()
            while time.monotonic() < deadline:
                mem.poll()
                m = scrape(port)
                series |= {lbl.get("container", "") for lbl, _ in m.get("node_agent_go_info", [])}
                time.sleep(2)
            mem.poll()
            state = agent.state()
            logs = agent.logs()
    finally:
        stop.set()
        for p in procs:
            p.kill()
            p.wait(30)
        builder.join(120)
    limit = spec.memory_limit
    record("soak_minutes", minutes)
    record("soak_go_series_seen", len(series))
    record("agent_rss_peak_mib_soak", round(mem.rss_peak / 2**20, 1))
    record("agent_cgroup_usage_peak_mib_soak", round(mem.usage_peak / 2**20, 1))
    record("memory_limit_mib", limit / 2**20)
    assert state["Running"] and not state.get("OOMKilled"), state
    assert mem.rss_peak < 0.75 * limit, (mem.rss_peak, logs[-2000:])
    assert "Traceback" not in logs


# ---- containerd + ctr -------------------------------------------------------------------------


# linux/capability.h, 0..40.
LINUX_CAPS = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]


def ctr_flags(spec: DaemonSetAgent) -> list[str]:
    """The same manifest facts in ctr's terms (no rro there either: each sub-mount read-only)."""
    # runc resolves the path itself: /proc/self is runc, in the host pid namespace (/proc/1/... fails here)
    out = ["--net-host", "--with-ns", "pid:/proc/self/ns/pid"] if spec.host_pid else ["--net-host"]
    if spec.read_only_root:
        out.append("--read-only")
    # ctr takes no "ALL": every capability the kernel knows is dropped by name except the added ones.
    dropped = LINUX_CAPS if "ALL" in spec.cap_drop else spec.cap_drop
    out += [a for c in dropped if c not in spec.cap_add for a in ("--cap-drop", f"CAP_{c}")]
    # runc cannot grant what this process's bounding set lacks (here: SYS_RESOURCE); podman leaves
    # such capabilities out by itself, ctr fails, so they are left out here the same way.
    bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)", Path("/proc/self/status").read_text(), re.M)[1], 16)  # type: ignore[index]
    out += [a for c in spec.cap_add if bounding >> LINUX_CAPS.index(c) & 1 for a in ("--cap-add", f"CAP_{c}")]
    if spec.memory_limit:
        out += ["--memory-limit", str(spec.memory_limit)]
    if spec.seccomp != "Unconfined":
        out.append("--seccomp")
    pf = podman_flags(spec, field_values=FIELD_VALUES)
    for i, f in enumerate(pf):
        if f == "-v":
            src, dst, *ro = pf[i + 1].split(":")
            out += ["--mount", f"type=bind,src={src},dst={dst},options=rbind:{'ro' if ro else 'rw'}"]
        elif f == "--tmpfs":
            dst = pf[i + 1].split(":")[0]
            out += ["--mount", f"type=tmpfs,src=tmpfs,dst={dst},options=rw:nosuid:nodev:mode=0777"]
        elif f == "-e":
            out += ["--env", pf[i + 1]]
    return out


def test_the_same_image_under_containerd_and_ctr_passes_the_scan_check(
    images: Images, spec: DaemonSetAgent, workloads: Workloads
) -> None:
    for tool in ("containerd", "ctr"):
        need(shutil.which(tool) is not None, f"{tool} (Debian package containerd)")
    # Not under tmp_path: a unix socket path must fit 108 bytes.
    with tempfile.TemporaryDirectory(prefix="na-ctrd-", ignore_cleanup_errors=True) as tmpdir:
        tmp = Path(tmpdir)
        archive = tmp / "image.tar"
        started = time.monotonic()
        # Uncompressed layers: nothing to gzip here and gunzip again in containerd.
        podman("save", "--format", "oci-archive", "--uncompressed", "-o", str(archive), images.agent.name, timeout=600)
        with containerd(tmp) as sock:
            ctr = ["ctr", "--address", sock, "--namespace", "node-agent-test"]
            env = dict(os.environ)
            imported = run([*ctr, "images", "import", "--base-name", "localhost/node-agent-test", str(archive)],
                           timeout=600, env=env)  # fmt: skip
            archive.unlink()
            ref = next(
                line.split()[0]
                for line in run([*ctr, "images", "ls", "-q"], env=env).stdout.splitlines()
                if line.startswith("localhost/node-agent-test")
            )
            record("containerd_import_s", round(time.monotonic() - started, 1))
            name = f"node-agent-test-{uuid.uuid4().hex[:8]}"
            res = run(
                [*ctr, "run", "--rm", *ctr_flags(spec), ref, name, "node-agent",
                 *agent_args(spec, "scan", "--json", "--duration", "6")],
                timeout=300, check=False, env=env,
            )  # fmt: skip
            run([*ctr, "containers", "rm", name], check=False, env=env)
    assert res.returncode == 0, (imported.stdout, res.stderr[-3000:])
    rows = json.loads(res.stdout)
    assert_flagged(rows, workloads.plain, res.stderr)
    assert_flagged(rows, workloads.kube, res.stderr)
