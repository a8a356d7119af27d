"""agent.host.cgroupfs / agent.host.cgroupmodel: parsers on text, committed fixture trees, a fake clock.

The fixture trees under tests/fixtures/cgroups copy real hosts file for file
(names as kubelet, systemd, containerd, CRI-O and Docker create them); the
``edge`` trees hold one quota edge case each, after uber-go/automaxprocs.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import CgroupError, NodeAgentError
from agent.host.cgroupfs import (
    CgroupFS,
    CgroupIdentity,
    Hierarchy,
    Mode,
    ProcCgroup,
    Quota,
    Throttling,
    detect_layout,
    identify,
    normalize_path,
    parse_cfs,
    parse_cpu_max,
    parse_cpu_stat,
    parse_proc_cgroup,
    read_cpu_limit,
    read_throttling,
)
from agent.host.cgroupmodel import V1_CONTROLLERS
from agent.host.cpulist import parse_cpu_list

FIXTURES = Path(__file__).parents[1] / "fixtures" / "cgroups"
EDGE = FIXTURES / "edge"

# The ids in the fixture trees.
UID_BURST = "404f7c4b-b02a-4467-a1b2-4795bf4b843c"
UID_NESTED = "233562de-1a02-48b1-b9c4-fa40b7d189f8"
UID_GUAR = "99401a29-4931-4b4f-b58b-c21f4079b18b"
UID_BEST = "fbd537f8-0973-44d3-a694-22424b9a0122"
UID_CGFS_BURST = "d648d308-09d5-4711-a336-c0774b8ecef6"
UID_CGFS_GUAR = "b31a8330-d5ea-4dcc-8ab3-9b3082c18606"
UID_CGFS_BEST = "bb2b4407-94a3-4444-a58f-a6eecd95c043"
UID_CRIO = "27e2d8f6-78e4-4ed0-8c1a-9dd2585335b6"
UID_CRIO_NESTED = "0b21f04f-e570-4636-b19b-0d4f541ec84f"
UID_DK_BEST = "076394e1-aa1a-4cff-98f1-a698ee7f7cf3"
UID_DK_BURST = "e0535a8f-be1d-4a75-a204-eff4e6f12b9e"
UID_HYBRID = "d296a5eb-11ba-4905-9fa0-7aca7c66f700"
UID_STATIC = "6d61fe6aa1fb019df82898d5144703c6"  # static pods: the config hash, no dashes

CID_BURST_A1 = "8039d98107f78c97e58ce8ac1dfcbbc82390810cef6e5b1abb03a483d57046a6"
CID_BURST_A2 = "707b27ac21d3f94248f0056b9e275d84fd0c3d289e2de7695c518db53f24179a"
CID_NESTED = "4f39eac5a6edc354ec22ac9f2efced9546b193643cd6f48bf8ea49ba2b8506cf"
CID_GUAR = "997444e5dd678f4bb61b818d4e3c731e6028295fe6bb776d183150548a23d74a"
CID_BEST = "479103ba8c13399de6f9a54953ee48ae35efdbf99427896068895a9065825853"
CID_CGFS_BURST = "e240ec62f81ad9bd5cc155837a2f328c6e14a64c1f826d710c9010f7b8514db1"
CID_CGFS_GUAR = "38f04c800807444b0fe4dddc013a54a053ff61c43a5880bc7953e4ecc2cd6f4c"
CID_CGFS_BEST = "a79e9b0aa5b94abd037442a71abec9c9952c69a08b1e94fa9d07c1019b42a9b0"
CID_CRIO = "93b6df6d053f25fcbb78efcc8aa666c902d8a29e5889065a16d7c6b8b7cc45a9"
CID_CRIO_CONMON = "dd1af9315a48f788b3947f4dcc9d895f23f7e77fb7e4dedc9af6b9692b5a0985"
CID_CRIO_NESTED = "1cff7e426e0822dda229a7be8965c3267de253f28eee2c6d82b9503100cbe87c"
CID_DK_BEST = "5466c95af8a18b9fca760968580606786c824a60176f1ed0d1e82832b7c6161d"
CID_DK_BURST = "bc3e8b76f699916a5ed273dfa45471821cafc1060a45579d09e879ea909a9aec"
CID_DK_PLAIN = "cd2c818abf07b56af392f81a2da2da4b68fb01fe3af3f07edeb6f3b231375eb0"
CID_HYBRID = "a5ce3165f965962e2b885122d56f4d34070c52c633e367c6edbe4923ddbdc44a"
CID_PODMAN = "30adc6604e319d5336297c86bdaeb95ed38ef446d0ec13f7bde6213cc5039f66"
CID_NERDCTL = "4eaabf7d2718b4f3f997b795efbe76b1530548e8ad0cd96981d5349e5a72ee20"


def thr(periods: int, throttled: int, seconds: float) -> Throttling:
    """Expected counters; the seconds compare approximately (they are scaled from us / ns)."""
    return Throttling(periods, throttled, cast(float, pytest.approx(seconds)))


def us(uid: str) -> str:
    """systemd escapes '-' in unit names: kubelet writes pod UIDs with underscores."""
    return uid.replace("-", "_")


# Paths in the fixture trees.
SD_BURST_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us(UID_BURST)}.slice"
SD_BURST_A1 = f"{SD_BURST_POD}/cri-containerd-{CID_BURST_A1}.scope"
SD_BURST_A2 = f"{SD_BURST_POD}/cri-containerd-{CID_BURST_A2}.scope"
SD_NESTED_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us(UID_NESTED)}.slice"
SD_NESTED = f"{SD_NESTED_POD}/cri-containerd-{CID_NESTED}.scope"
SD_GUAR = f"/kubepods.slice/kubepods-pod{us(UID_GUAR)}.slice/cri-containerd-{CID_GUAR}.scope"
SD_BEST = (
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{us(UID_BEST)}.slice"
    f"/cri-containerd-{CID_BEST}.scope"
)
FS_BURST = f"/kubepods/burstable/pod{UID_CGFS_BURST}/{CID_CGFS_BURST}"
FS_GUAR = f"/kubepods/pod{UID_CGFS_GUAR}/{CID_CGFS_GUAR}"
FS_BEST = f"/kubepods/besteffort/pod{UID_CGFS_BEST}/{CID_CGFS_BEST}"
CRIO_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us(UID_CRIO)}.slice"
CRIO = f"{CRIO_POD}/crio-{CID_CRIO}.scope"
CRIO_CONMON = f"{CRIO_POD}/crio-conmon-{CID_CRIO_CONMON}.scope"
CRIO_NESTED_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us(UID_CRIO_NESTED)}.slice"
CRIO_NESTED = f"{CRIO_NESTED_POD}/crio-{CID_CRIO_NESTED}.scope"
DK_BEST = f"/kubepods/besteffort/pod{UID_DK_BEST}/{CID_DK_BEST}"
DK_BURST = f"/kubepods/burstable/pod{UID_DK_BURST}/{CID_DK_BURST}"
DK_PLAIN = f"/docker/{CID_DK_PLAIN}"
HY_POD = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{us(UID_HYBRID)}.slice"
HY = f"{HY_POD}/cri-containerd-{CID_HYBRID}.scope"


def v2_text(path: str) -> str:
    return f"0::{path}\n"


def v1_text(path: str, *, cpuset: str | None = None, unified: str | None = None, systemd: str | None = None) -> str:
    """A 12-hierarchy v1 /proc/PID/cgroup as a systemd host writes it (hybrid when ``unified``)."""
    lines = [
        f"12:hugetlb:{path}",
        f"11:memory:{path}",
        f"10:cpu,cpuacct:{path}",
        f"9:cpuset:{cpuset if cpuset is not None else path}",
        f"8:pids:{path}",
        f"7:blkio:{path}",
        f"6:freezer:{path}",
        f"5:devices:{path}",
        f"4:net_cls,net_prio:{path}",
        f"3:perf_event:{path}",
        "2:rdma:/",
        f"1:name=systemd:{systemd if systemd is not None else path}",
    ]
    if unified is not None:
        lines.append(f"0::{unified}")
    return "\n".join(lines) + "\n"


# ---- /proc/PID/cgroup --------------------------------------------------------------------------


def test_parse_proc_cgroup_v2() -> None:
    proc = parse_proc_cgroup(v2_text(SD_BURST_A1))
    assert proc == ProcCgroup(SD_BURST_A1, ())
    assert proc.paths() == [SD_BURST_A1]


def test_parse_proc_cgroup_v1_splits_comma_controllers() -> None:
    proc = parse_proc_cgroup(v1_text(CRIO, cpuset="/"))
    assert proc.unified is None
    assert proc.v1_path("cpu") == CRIO
    assert proc.v1_path("cpuacct") == CRIO
    assert proc.v1_path("net_prio") == CRIO
    assert proc.v1_path("cpuset") == "/"
    assert proc.v1_path("name=systemd") == CRIO
    assert proc.v1_path("rdma") == "/"
    assert proc.v1_path("io") is None
    assert proc.paths() == [CRIO, "/"]


def test_parse_proc_cgroup_hybrid_as_on_this_kind_of_machine() -> None:
    text = (
        "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n"
        "4:memory:/process_api/bce7efae55a7902e53f6981a5e4f90cd\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n"
    )
    proc = parse_proc_cgroup(text)
    assert proc.unified == "/"
    assert proc.v1_path("cpu") == "/"
    assert proc.v1_path("memory") == "/process_api/bce7efae55a7902e53f6981a5e4f90cd"
    assert proc.path_in(Hierarchy(1, Path("/x"), frozenset({"cpu"}))) == "/"
    assert proc.path_in(Hierarchy(2, Path("/x"), frozenset())) == "/"


def test_parse_proc_cgroup_keeps_colons_in_paths() -> None:
    assert parse_proc_cgroup("0::/my:odd/group\n").unified == "/my:odd/group"


@pytest.mark.parametrize(
    "text",
    ["", "\n", "garbage\n", "0:/no-second-colon\n", "x::/\n", "0::relative\n", "1:cpu:/\nnot a line\n"],
)
def test_parse_proc_cgroup_rejects_garbage(text: str) -> None:
    with pytest.raises(CgroupError):
        parse_proc_cgroup(text)


@pytest.mark.parametrize(
    ("path", "ns_root", "expected"),
    [
        ("/", "/", "/"),
        ("/a/b/", "/", "/a/b"),
        ("/a/./b", "/", "/a/b"),
        ("/", "/kubepods.slice/agent.scope", "/kubepods.slice/agent.scope"),
        ("/../../system.slice/ssh.service", "/kubepods.slice/agent.scope", "/system.slice/ssh.service"),
        ("/../sibling", "/kubepods.slice/agent.scope", "/kubepods.slice/sibling"),
    ],
)
def test_normalize_path(path: str, ns_root: str, expected: str) -> None:
    assert normalize_path(path, ns_root) == expected


def test_normalize_path_refuses_escaping_the_namespace() -> None:
    with pytest.raises(CgroupError, match="outside the agent's cgroup namespace") as info:
        normalize_path("/../../kubepods.slice")
    assert "cgroup namespace" in info.value.help


# ---- identity ----------------------------------------------------------------------------------

IDENTITIES: list[tuple[str, CgroupIdentity]] = [
    # kubelet systemd driver, containerd
    (SD_BURST_A1, CgroupIdentity(SD_BURST_A1, UID_BURST, CID_BURST_A1, "containerd", "burstable",
                                 f"pod{UID_BURST}/{CID_BURST_A1[:12]}")),
    (SD_GUAR, CgroupIdentity(SD_GUAR, UID_GUAR, CID_GUAR, "containerd", "guaranteed",
                             f"pod{UID_GUAR}/{CID_GUAR[:12]}")),
    (SD_BEST, CgroupIdentity(SD_BEST, UID_BEST, CID_BEST, "containerd", "besteffort",
                             f"pod{UID_BEST}/{CID_BEST[:12]}")),
    # the pod and QoS levels themselves
    (SD_BURST_POD, CgroupIdentity(SD_BURST_POD, UID_BURST, None, None, "burstable", f"pod{UID_BURST}")),
    ("/kubepods.slice/kubepods-burstable.slice",
     CgroupIdentity("/kubepods.slice/kubepods-burstable.slice", None, None, None, "burstable",
                    "kubepods-burstable.slice")),
    ("/kubepods.slice", CgroupIdentity("/kubepods.slice", name="kubepods.slice")),
    ("/kubepods/besteffort", CgroupIdentity("/kubepods/besteffort", qos="besteffort", name="kubepods/besteffort")),
    # kubelet cgroupfs driver: bare ids, dashes in the pod UID
    (FS_BURST, CgroupIdentity(FS_BURST, UID_CGFS_BURST, CID_CGFS_BURST, None, "burstable",
                              f"pod{UID_CGFS_BURST}/{CID_CGFS_BURST[:12]}")),
    (FS_GUAR, CgroupIdentity(FS_GUAR, UID_CGFS_GUAR, CID_CGFS_GUAR, None, "guaranteed",
                             f"pod{UID_CGFS_GUAR}/{CID_CGFS_GUAR[:12]}")),
    (FS_BEST, CgroupIdentity(FS_BEST, UID_CGFS_BEST, CID_CGFS_BEST, None, "besteffort",
                             f"pod{UID_CGFS_BEST}/{CID_CGFS_BEST[:12]}")),
    # CRI-O: systemd scopes, the conmon monitor is not the container; cgroupfs without ".scope"
    (CRIO, CgroupIdentity(CRIO, UID_CRIO, CID_CRIO, "cri-o", "burstable", f"pod{UID_CRIO}/{CID_CRIO[:12]}")),
    (CRIO_CONMON, CgroupIdentity(CRIO_CONMON, UID_CRIO, None, None, "burstable",
                                 f"pod{UID_CRIO}/conmon-{CID_CRIO_CONMON[:12]}")),
    (f"{CRIO}/container",  # crun on cgroup v2 runs the container in a "container" sub-cgroup
     CgroupIdentity(f"{CRIO}/container", UID_CRIO, CID_CRIO, "cri-o", "burstable", f"pod{UID_CRIO}/{CID_CRIO[:12]}")),
    (f"/kubepods/burstable/pod{UID_CRIO}/crio-{CID_CRIO}",
     CgroupIdentity(f"/kubepods/burstable/pod{UID_CRIO}/crio-{CID_CRIO}", UID_CRIO, CID_CRIO, "cri-o", "burstable",
                    f"pod{UID_CRIO}/{CID_CRIO[:12]}")),
    # Docker as the runtime (cri-dockerd / dockershim), both drivers
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{us(UID_DK_BEST)}.slice/docker-{CID_DK_BEST}.scope",
     CgroupIdentity(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{us(UID_DK_BEST)}.slice/"
                    f"docker-{CID_DK_BEST}.scope", UID_DK_BEST, CID_DK_BEST, "docker", "besteffort",
                    f"pod{UID_DK_BEST}/{CID_DK_BEST[:12]}")),
    (DK_BURST, CgroupIdentity(DK_BURST, UID_DK_BURST, CID_DK_BURST, None, "burstable",
                              f"pod{UID_DK_BURST}/{CID_DK_BURST[:12]}")),
    # kind / kubelet with --cgroup-root=/kubelet
    (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod"
     f"{us(UID_BURST)}.slice/cri-containerd-{CID_BURST_A1}.scope",
     CgroupIdentity(f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-"
                    f"burstable-pod{us(UID_BURST)}.slice/cri-containerd-{CID_BURST_A1}.scope", UID_BURST,
                    CID_BURST_A1, "containerd", "burstable", f"pod{UID_BURST}/{CID_BURST_A1[:12]}")),
    (f"/kubelet/kubepods/pod{UID_GUAR}/{CID_GUAR}",
     CgroupIdentity(f"/kubelet/kubepods/pod{UID_GUAR}/{CID_GUAR}", UID_GUAR, CID_GUAR, None, "guaranteed",
                    f"pod{UID_GUAR}/{CID_GUAR[:12]}")),
    # static pods: the UID is a 32-hex config hash
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_STATIC}.slice/cri-containerd-{CID_GUAR}.scope",
     CgroupIdentity(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_STATIC}.slice/"
                    f"cri-containerd-{CID_GUAR}.scope", UID_STATIC, CID_GUAR, "containerd", "burstable",
                    f"pod{UID_STATIC}/{CID_GUAR[:12]}")),
    # containers outside Kubernetes
    (DK_PLAIN, CgroupIdentity(DK_PLAIN, None, CID_DK_PLAIN, "docker", None, f"docker:{CID_DK_PLAIN[:12]}")),
    (f"/system.slice/docker-{CID_DK_PLAIN}.scope",
     CgroupIdentity(f"/system.slice/docker-{CID_DK_PLAIN}.scope", None, CID_DK_PLAIN, "docker", None,
                    f"docker:{CID_DK_PLAIN[:12]}")),
    (f"/machine.slice/libpod-{CID_PODMAN}.scope",
     CgroupIdentity(f"/machine.slice/libpod-{CID_PODMAN}.scope", None, CID_PODMAN, "podman", None,
                    f"podman:{CID_PODMAN[:12]}")),
    (f"/machine.slice/libpod-{CID_PODMAN}.scope/container",
     CgroupIdentity(f"/machine.slice/libpod-{CID_PODMAN}.scope/container", None, CID_PODMAN, "podman", None,
                    f"podman:{CID_PODMAN[:12]}")),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID_PODMAN}.scope",
     CgroupIdentity(f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID_PODMAN}.scope", None,
                    CID_PODMAN, "podman", None, f"podman:{CID_PODMAN[:12]}")),
    (f"/machine.slice/libpod-conmon-{CID_PODMAN}.scope",
     CgroupIdentity(f"/machine.slice/libpod-conmon-{CID_PODMAN}.scope", name=f"conmon:{CID_PODMAN[:12]}")),
    (f"/libpod_parent/libpod-{CID_PODMAN}",
     CgroupIdentity(f"/libpod_parent/libpod-{CID_PODMAN}", None, CID_PODMAN, "podman", None,
                    f"podman:{CID_PODMAN[:12]}")),
    (f"/system.slice/nerdctl-{CID_NERDCTL}.scope",
     CgroupIdentity(f"/system.slice/nerdctl-{CID_NERDCTL}.scope", None, CID_NERDCTL, "containerd", None,
                    f"containerd:{CID_NERDCTL[:12]}")),
    (f"/default/{CID_NERDCTL}",  # containerd namespace "default", cgroupfs
     CgroupIdentity(f"/default/{CID_NERDCTL}", None, CID_NERDCTL, None, None, f"container:{CID_NERDCTL[:12]}")),
    # systemd services, sessions, user managers
    ("/system.slice/ssh.service", CgroupIdentity("/system.slice/ssh.service", name="ssh.service")),
    ("/system.slice/containerd.service", CgroupIdentity("/system.slice/containerd.service", name="containerd.service")),
    ("/system.slice/kubelet.service", CgroupIdentity("/system.slice/kubelet.service", name="kubelet.service")),
    ("/system.slice/system-getty.slice/getty@tty1.service",
     CgroupIdentity("/system.slice/system-getty.slice/getty@tty1.service", name="getty@tty1.service")),
    ("/system.slice/docker.service/worker",
     CgroupIdentity("/system.slice/docker.service/worker", name="docker.service/worker")),
    ("/user.slice/user-1000.slice/session-3.scope",
     CgroupIdentity("/user.slice/user-1000.slice/session-3.scope", name="session-3.scope")),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
     CgroupIdentity("/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
                    name="user@1000.service/dbus.service")),
    ("/user.slice/user-1000.slice/user@1000.service/init.scope",
     CgroupIdentity("/user.slice/user-1000.slice/user@1000.service/init.scope", name="user@1000.service/init.scope")),
    ("/user.slice", CgroupIdentity("/user.slice", name="user.slice")),
    ("/init.scope", CgroupIdentity("/init.scope", name="init.scope")),
    ("/", CgroupIdentity("/", name="/")),
    # plain custom paths
    ("/process_api/bce7efae55a7902e53f6981a5e4f90cd",
     CgroupIdentity("/process_api/bce7efae55a7902e53f6981a5e4f90cd",
                    name="process_api/bce7efae55a7902e53f6981a5e4f90cd")),
    ("/node-agent-test/inner", CgroupIdentity("/node-agent-test/inner", name="node-agent-test/inner")),
    # look-alikes that are not pods: no kubepods ancestor, wrong length, not a UID
    (f"/pod{UID_BURST}/{CID_BURST_A1}",
     CgroupIdentity(f"/pod{UID_BURST}/{CID_BURST_A1}", None, CID_BURST_A1, None, None,
                    f"container:{CID_BURST_A1[:12]}")),
    (f"/kubepods/burstable/pod{UID_BURST}/{CID_BURST_A1[:63]}",
     CgroupIdentity(f"/kubepods/burstable/pod{UID_BURST}/{CID_BURST_A1[:63]}", UID_BURST, None, None, "burstable",
                    f"pod{UID_BURST}")),
    ("/kubepods.slice/kubepods-podnotauid.slice", CgroupIdentity("/kubepods.slice/kubepods-podnotauid.slice",
                                                                 name="kubepods-podnotauid.slice")),
]  # fmt: skip


@pytest.mark.parametrize(("path", "expected"), IDENTITIES, ids=[p for p, _ in IDENTITIES])
def test_identify(path: str, expected: CgroupIdentity) -> None:
    got = identify(path)
    assert got == expected
    assert got.kubernetes == (expected.pod_uid is not None)


def test_identify_systemd_uid_uses_dashes_like_the_api_server() -> None:
    ident = identify(SD_BURST_A1)
    assert ident.pod_uid == UID_BURST
    assert "_" not in (ident.pod_uid or "")


@given(st.lists(st.text(alphabet="abcdef0123456789-_.@:kubepodsliceservice", max_size=70), max_size=8))
def test_identify_never_raises(parts: list[str]) -> None:
    ident = identify("/" + "/".join(parts))
    assert ident.name
    assert ident.container_id is None or len(ident.container_id) == 64


# ---- quota, stat, cpuset parsers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max 100000\n", None),
        ("max\n", None),
        ("50000 100000\n", Quota(50000, 100000)),
        ("250000 100000", Quota(250000, 100000)),
        ("150000\n", Quota(150000, 100000)),  # a lone quota: default period
        ("1000 1000", Quota(1000, 1000)),
    ],
)
def test_parse_cpu_max(text: str, expected: Quota | None) -> None:
    assert parse_cpu_max(text) == expected


@pytest.mark.parametrize(
    "text", ["", "\n", "50000 0", "max 0", "50000 -1", "x 100000", "50000 1e5", "0 100000", "-5 100000", "1 2 3"]
)
def test_parse_cpu_max_rejects(text: str) -> None:
    with pytest.raises(CgroupError, match=r"cpu\.max"):
        parse_cpu_max(text)


def test_quota_cores() -> None:
    assert Quota(50000, 100000).cores == 0.5
    assert Quota(150000, 100000).cores == 1.5


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [
        ("-1\n", "100000\n", None),
        ("-1\n", None, None),  # unlimited: the period does not matter
        ("-1\n", "0\n", None),
        ("50000\n", "100000\n", Quota(50000, 100000)),
        ("20000\n", "10000\n", Quota(20000, 10000)),
    ],
)
def test_parse_cfs(quota: str, period: str | None, expected: Quota | None) -> None:
    assert parse_cfs(quota, period) == expected


@pytest.mark.parametrize(
    ("quota", "period", "message"),
    [
        ("50000", "0", "period 0"),
        ("50000", "abc", "cfs_period_us: not an integer"),
        ("fifty", "100000", "cfs_quota_us: not an integer"),
        ("", "100000", "cfs_quota_us: not an integer"),
        ("0", "100000", "quota 0"),
        ("50000", None, "cfs_period_us is missing"),
    ],
)
def test_parse_cfs_rejects(quota: str, period: str | None, message: str) -> None:
    with pytest.raises(CgroupError, match=message):
        parse_cfs(quota, period)


def test_parse_cpu_stat_v2_in_seconds() -> None:
    text = "usage_usec 8823051\nuser_usec 6120412\nsystem_usec 2702639\nnr_periods 2410\nnr_throttled 317\n"
    text += "throttled_usec 11852090\nnr_bursts 0\nburst_usec 0\n"
    assert parse_cpu_stat(text, 2) == thr(2410, 317, 11.85209)


def test_parse_cpu_stat_v1_nanoseconds() -> None:
    text = "nr_periods 5210\nnr_throttled 1302\nthrottled_time 98122345123\nnr_bursts 0\nburst_time 0\n"
    assert parse_cpu_stat(text, 1) == thr(5210, 1302, 98.122345123)


def test_parse_cpu_stat_without_bandwidth_counters_is_none() -> None:
    assert parse_cpu_stat("usage_usec 1\nuser_usec 1\nsystem_usec 0\n", 2) is None
    assert parse_cpu_stat("", 1) is None


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("nr_periods many\nnr_throttled 3\nthrottled_usec 1\n", 2),
        ("nr_periods 4\nnr_throttled 3\n", 2),
        ("nr_periods 4\nnr_throttled 3\nthrottled_usec 5\n", 1),  # v1 counts time in throttled_time
        ("nr_periods 4\nnr_thro", 2),
    ],
)
def test_parse_cpu_stat_rejects(text: str, version: int) -> None:
    with pytest.raises(CgroupError, match=r"cpu\.stat"):
        parse_cpu_stat(text, version)


@pytest.mark.parametrize(
    ("text", "n"), [("0-3,8,10-11\n", 7), ("0\n", 1), ("0-1", 2), ("2-3\n", 2), ("0-63", 64), ("1,1,1-2", 2)]
)
def test_cpu_list_size(text: str, n: int) -> None:
    assert len(parse_cpu_list(text)) == n


@pytest.mark.parametrize("text", ["0-3,x", "3-1", "-1", "0-99999999", "0,,1"])
def test_cpu_list_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad CPU"):
        parse_cpu_list(text)


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1))
def test_cpu_list_is_the_set_it_lists(cpus: set[int]) -> None:
    ranges: list[str] = []
    for c in sorted(cpus):
        if ranges and "-" in ranges[-1] and int(ranges[-1].split("-")[1]) == c - 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{c}"
        elif ranges and "-" not in ranges[-1] and int(ranges[-1]) == c - 1:
            ranges[-1] = f"{ranges[-1]}-{c}"
        else:
            ranges.append(str(c))
    assert parse_cpu_list(",".join(ranges)) == frozenset(cpus)


# ---- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "mode", "cpu_dir", "cpuset_dir", "unified_dir"),
    [
        ("v2-systemd-containerd", Mode.V2, "", "", ""),
        ("v2-cgroupfs-containerd", Mode.V2, "", "", ""),
        ("v1-systemd-crio", Mode.V1, "cpu,cpuacct", "cpuset", None),
        ("v1-cgroupfs-docker", Mode.V1, "cpu,cpuacct", "cpuset", None),
        ("hybrid-systemd", Mode.HYBRID, "cpu,cpuacct", "cpuset", "unified"),
    ],
)
def test_detect_layout(tree: str, mode: Mode, cpu_dir: str, cpuset_dir: str, unified_dir: str | None) -> None:
    root = FIXTURES / tree
    layout = detect_layout(root)
    assert layout.mode is mode
    cpu, cpuset = layout.for_controller("cpu"), layout.for_controller("cpuset")
    assert cpu is not None
    assert cpuset is not None
    assert cpu.mount == root / cpu_dir
    assert cpuset.mount == root / cpuset_dir
    unified = layout.unified.mount if layout.unified else None
    assert unified == (root / unified_dir if unified_dir is not None else None)
    # symlinks such as cpu -> cpu,cpuacct do not count twice
    assert len({h.mount.resolve() for h in layout.hierarchies}) == len(layout.hierarchies)


def test_detect_layout_names_v1_hierarchies_like_proc_cgroup() -> None:
    layout = detect_layout(FIXTURES / "v1-systemd-crio")
    assert {frozenset(h.controllers) for h in layout.hierarchies} == {
        frozenset({"cpu", "cpuacct"}),
        frozenset({"cpuset"}),
        frozenset({"memory"}),
        frozenset({"name=systemd"}),
    }
    assert all(c in V1_CONTROLLERS or c.startswith("name=") for h in layout.hierarchies for c in h.controllers)


def test_detect_layout_of_an_empty_or_missing_root(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="no cgroup hierarchy"):
        detect_layout(tmp_path)
    with pytest.raises(CgroupError, match="cannot list") as info:
        detect_layout(tmp_path / "nope")
    assert isinstance(info.value, NodeAgentError)


def test_from_host_root_builds_sys_fs_cgroup(tmp_path: Path) -> None:
    cg = tmp_path / "sys" / "fs" / "cgroup"
    cg.mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("cpu cpuset\n")
    fs = CgroupFS.from_host_root(tmp_path)
    assert fs.root == cg
    assert fs.layout.mode is Mode.V2
    assert fs.cpu is not None
    assert fs.cpu.mount == cg


# ---- the fixture trees, end to end -------------------------------------------------------------


def fs_of(tree: str) -> CgroupFS:
    return CgroupFS(FIXTURES / tree)


def test_v2_systemd_burstable_container_limit_and_throttling() -> None:
    fs = fs_of("v2-systemd-containerd")
    snap = fs.snapshot(v2_text(SD_BURST_A1))
    assert snap.errors == ()
    assert snap.identity == identify(SD_BURST_A1)
    assert snap.limit is not None
    assert snap.limit.cores == 1.0
    assert snap.limit.leaf == 1.0
    assert snap.limit.source == SD_BURST_A1
    assert [lv.path for lv in snap.limit.levels] == [
        SD_BURST_A1,
        SD_BURST_POD,
        "/kubepods.slice/kubepods-burstable.slice",
        "/kubepods.slice",
        "/",
    ]
    assert [lv.quota.cores if lv.quota else None for lv in snap.limit.levels] == [1.0, 1.5, None, None, None]
    assert snap.throttling_path == SD_BURST_A1
    assert snap.throttling == thr(9120, 1290, 86.000001)


def test_v2_systemd_pod_level_limit_below_the_container() -> None:
    snap = fs_of("v2-systemd-containerd").snapshot(v2_text(SD_NESTED))
    assert snap.limit is not None
    assert (snap.limit.cores, snap.limit.leaf, snap.limit.source) == (0.5, 2.0, SD_NESTED_POD)
    # throttling happens where the binding quota is: the pod's counters, not the container's zeros
    assert snap.throttling_path == SD_NESTED_POD
    assert snap.throttling == thr(3000, 2400, 61.0)


def test_v2_systemd_guaranteed_pod_with_static_cpuset() -> None:
    snap = fs_of("v2-systemd-containerd").snapshot(v2_text(SD_GUAR))
    assert snap.identity.qos == "guaranteed"
    assert snap.limit is not None
    assert snap.limit.cores == 2.0
    assert snap.limit.source == SD_GUAR  # pod and container tie: the deepest level wins
    assert snap.errors == ()


def test_v2_systemd_besteffort_is_unlimited() -> None:
    snap = fs_of("v2-systemd-containerd").snapshot(v2_text(SD_BEST))
    assert snap.identity.qos == "besteffort"
    assert snap.limit is not None
    assert (snap.limit.cores, snap.limit.leaf, snap.limit.source) == (None, None, None)
    assert snap.throttling_path == SD_BEST
    assert snap.throttling == Throttling(0, 0, 0.0)


def test_v2_systemd_second_container_and_a_system_service() -> None:
    fs = fs_of("v2-systemd-containerd")
    snap = fs.snapshot(v2_text(SD_BURST_A2))
    assert snap.limit is not None
    assert snap.limit.cores == 0.5
    svc = fs.snapshot(v2_text("/system.slice/containerd.service"))
    assert svc.identity.name == "containerd.service"
    assert svc.limit is not None
    assert svc.limit.cores is None
    assert svc.errors == ()


@pytest.mark.parametrize(
    ("path", "cores", "qos", "uid", "cid"),
    [
        (FS_BURST, 1.0, "burstable", UID_CGFS_BURST, CID_CGFS_BURST),
        (FS_GUAR, 0.5, "guaranteed", UID_CGFS_GUAR, CID_CGFS_GUAR),
        (FS_BEST, None, "besteffort", UID_CGFS_BEST, CID_CGFS_BEST),  # "max" without a period
    ],
)
def test_v2_cgroupfs(path: str, cores: float | None, qos: str, uid: str, cid: str) -> None:
    snap = fs_of("v2-cgroupfs-containerd").snapshot(v2_text(path))
    assert snap.errors == ()
    assert snap.limit is not None
    assert snap.limit.cores == cores
    assert (snap.identity.qos, snap.identity.pod_uid, snap.identity.container_id) == (qos, uid, cid)


def test_v2_cgroupfs_throttling() -> None:
    snap = fs_of("v2-cgroupfs-containerd").snapshot(v2_text(FS_GUAR))
    assert snap.throttling == thr(120, 90, 4.4)


def test_v1_systemd_crio_container() -> None:
    fs = fs_of("v1-systemd-crio")
    snap = fs.snapshot(v1_text(CRIO))
    assert snap.errors == ()
    assert snap.identity.runtime == "cri-o"
    assert snap.identity.container_id == CID_CRIO
    assert snap.limit is not None
    assert (snap.limit.cores, snap.limit.leaf, snap.limit.source) == (2.0, 2.0, CRIO)
    assert snap.limit.levels[1].quota == Quota(250000, 100000)
    assert snap.throttling == thr(20480, 1022, 50.987654321)


def test_v1_systemd_crio_conmon_is_not_a_container() -> None:
    snap = fs_of("v1-systemd-crio").snapshot(v1_text(CRIO_CONMON, cpuset="/"))
    assert snap.identity.pod_uid == UID_CRIO
    assert snap.identity.container_id is None
    assert snap.limit is not None
    assert (snap.limit.cores, snap.limit.leaf, snap.limit.source) == (2.5, None, CRIO_POD)


def test_v1_pod_level_limit_below_the_container() -> None:
    snap = fs_of("v1-systemd-crio").snapshot(v1_text(CRIO_NESTED, cpuset="/"))
    assert snap.limit is not None
    assert snap.limit.cores == pytest.approx(0.3)
    assert snap.limit.leaf is None  # v1 refuses a child quota above its parent's: the container has none
    assert snap.limit.source == CRIO_NESTED_POD
    assert snap.throttling_path == CRIO_NESTED_POD
    assert snap.throttling == thr(700, 650, 41.0)


@pytest.mark.parametrize(
    ("path", "cores", "throttling"),
    [
        (DK_BEST, None, Throttling(0, 0, 0.0)),
        (DK_BURST, 1.5, thr(1500, 612, 30.5)),
        (DK_PLAIN, 1.5, Throttling(10, 0, 0.0)),
    ],
)
def test_v1_cgroupfs_docker(path: str, cores: float | None, throttling: Throttling) -> None:
    snap = fs_of("v1-cgroupfs-docker").snapshot(v1_text(path))
    assert snap.errors == ()
    assert snap.limit is not None
    assert snap.limit.cores == cores
    assert snap.throttling == throttling


def test_v1_cgroupfs_docker_outside_kubernetes_is_named_by_runtime() -> None:
    snap = fs_of("v1-cgroupfs-docker").snapshot(v1_text(DK_PLAIN))
    assert snap.identity.kubernetes is False
    assert snap.identity.name == f"docker:{CID_DK_PLAIN[:12]}"


def test_hybrid_limit_from_v1_id_from_unified() -> None:
    root = FIXTURES / "hybrid-systemd"
    fs = CgroupFS(root)
    assert fs.layout.mode is Mode.HYBRID
    snap = fs.snapshot(v1_text(HY, unified=HY))
    assert snap.errors == ()
    assert snap.identity.pod_uid == UID_HYBRID
    assert snap.limit is not None
    assert (snap.limit.cores, snap.limit.source) == (0.5, HY)
    assert snap.throttling == thr(800, 500, 20.0)


def test_hybrid_system_service() -> None:
    snap = CgroupFS(FIXTURES / "hybrid-systemd").snapshot(
        v1_text("/system.slice/ssh.service", cpuset="/", unified="/system.slice/ssh.service")
    )
    assert snap.identity.name == "ssh.service"
    assert snap.limit is not None
    assert snap.limit.cores is None
    assert snap.errors == ()


def test_identity_prefers_the_hierarchy_that_names_a_container() -> None:
    # cgroupfs-driver runtime on a hybrid host: the unified path is the runtime's service
    fs = CgroupFS(FIXTURES / "hybrid-systemd")
    proc = fs.parse(v1_text(HY, unified="/system.slice/containerd.service", systemd="/system.slice/containerd.service"))
    assert fs.identity(proc).container_id == CID_HYBRID
    proc = fs.parse(v1_text("/", unified=HY, cpuset="/", systemd="/"))
    assert fs.identity(proc).container_id == CID_HYBRID


def test_relative_paths_from_a_cgroup_namespace() -> None:
    fs = CgroupFS(FIXTURES / "v2-systemd-containerd", ns_root=SD_BURST_A2)
    snap = fs.snapshot(v2_text(f"/../cri-containerd-{CID_BURST_A1}.scope"))
    assert snap.identity.path == SD_BURST_A1
    assert snap.limit is not None
    assert snap.limit.cores == 1.0


# ---- failures cost one item / one field --------------------------------------------------------


def test_vanished_cgroup_is_an_error_for_every_field_but_identity() -> None:
    gone = f"{SD_BURST_POD}/cri-containerd-{'e' * 64}.scope"
    snap = fs_of("v2-systemd-containerd").snapshot(v2_text(gone))
    assert snap.identity.container_id == "e" * 64
    assert (snap.limit, snap.throttling) == (None, None)
    assert len(snap.errors) == 2
    assert all("does not exist" in e or "vanished" in e for e in snap.errors)


def test_vanished_cgroup_raises_from_the_direct_readers() -> None:
    fs = fs_of("v2-systemd-containerd")
    assert fs.cpu is not None
    gone = "/kubepods.slice/nope.slice"
    for fn in (read_cpu_limit, read_throttling):
        with pytest.raises(CgroupError, match="does not exist"):
            fn(fs.cpu, gone)


def test_snapshot_keeps_good_fields_when_one_is_garbled(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu\n")
    (tmp_path / "cpuset.cpus.effective").write_text("0-3\n")
    leaf = tmp_path / "app"
    leaf.mkdir()
    (leaf / "cpu.max").write_text("50000 100000\n")
    (leaf / "cpu.stat").write_text("nr_periods x\n")
    snap = CgroupFS(tmp_path).snapshot("0::/app\n")
    assert snap.limit is not None
    assert snap.limit.cores == 0.5
    assert snap.throttling is None
    assert snap.errors == ("throttling: cpu.stat nr_periods: not an integer: 'x'",)


def test_unreadable_file_is_a_cgroup_error(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "cpu.max").mkdir()  # reading a directory fails with EISDIR
    fs = CgroupFS(tmp_path)
    assert fs.cpu is not None
    with pytest.raises(CgroupError, match="cannot read"):
        read_cpu_limit(fs.cpu, "/app")


def test_snapshot_of_unusable_text_raises() -> None:
    with pytest.raises(CgroupError):
        fs_of("v2-systemd-containerd").snapshot("")


def test_process_missing_from_the_cpu_hierarchy() -> None:
    fs = fs_of("v1-systemd-crio")
    snap = fs.snapshot("1:name=systemd:/system.slice/ssh.service\n")
    assert snap.identity.name == "ssh.service"
    assert snap.limit is None
    assert any("not listed in the cpu hierarchy" in e for e in snap.errors)


def test_no_cpu_controller_anywhere(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    snap = CgroupFS(tmp_path).snapshot("0::/\n")
    assert snap.limit is None
    assert snap.throttling_path is None
    assert snap.errors == ("cpu limit: no mounted hierarchy has the cpu controller",)


# ---- edge cases, one fixture each --------------------------------------------------------------

EDGE_LIMITS: list[tuple[str, float | None]] = [
    ("v2-set", 2.5),
    ("v2-max", None),
    ("v2-max-only", None),
    ("v2-quota-only", 1.5),
    ("v2-no-cpu-max", None),  # the cpu controller is not enabled for this cgroup
    ("v1-set", 0.5),
    ("v1-unlimited", None),
    ("v1-unlimited-zero-period", None),
    ("v1-no-bandwidth", None),  # a kernel without CONFIG_CFS_BANDWIDTH
]
EDGE_ERRORS: list[tuple[str, str]] = [
    ("v2-zero-period", "period 0 is not positive"),
    ("v2-max-zero-period", "period 0 is not positive"),
    ("v2-negative-period", "period -100000 is not positive"),
    ("v2-garbage-period", "cpu.max period: not an integer: '1e5'"),
    ("v2-garbage-quota", "cpu.max quota: not an integer: 'lots'"),
    ("v2-zero-quota", "quota 0 is not positive"),
    ("v2-empty", "expected 'QUOTA \\[PERIOD\\]'"),
    ("v2-extra-fields", "expected 'QUOTA \\[PERIOD\\]'"),
    ("v1-zero-period", "period 0 is not positive"),
    ("v1-garbage-period", "cfs_period_us: not an integer: 'abc'"),
    ("v1-garbage-quota", "cfs_quota_us: not an integer: 'fifty'"),
    ("v1-zero-quota", "quota 0 is not positive"),
    ("v1-empty-quota", "cfs_quota_us: not an integer: ''"),
    ("v1-missing-period", "cpu.cfs_period_us is missing"),
]


def edge_fs(name: str) -> CgroupFS:
    fs = CgroupFS(EDGE / name)
    assert fs.layout.mode is (Mode.V2 if name.startswith("v2-") else Mode.V1)
    return fs


def test_edge_fixtures_are_all_covered() -> None:
    covered = {n for n, _ in EDGE_LIMITS} | {n for n, _ in EDGE_ERRORS} | set(EDGE_OTHER)
    assert covered == {p.name for p in EDGE.iterdir()}


@pytest.mark.parametrize(("name", "cores"), EDGE_LIMITS)
def test_edge_limit(name: str, cores: float | None) -> None:
    fs = edge_fs(name)
    text = "0::/leaf\n" if name.startswith("v2-") else "3:cpu:/leaf\n"
    limit = fs.cpu_limit(fs.parse(text))
    assert limit.cores == cores
    assert limit.leaf == cores
    assert limit.source == ("/leaf" if cores is not None else None)


@pytest.mark.parametrize(("name", "message"), EDGE_ERRORS)
def test_edge_limit_error(name: str, message: str) -> None:
    fs = edge_fs(name)
    text = "0::/leaf\n" if name.startswith("v2-") else "3:cpu:/leaf\n"
    with pytest.raises(CgroupError, match=message):
        fs.cpu_limit(fs.parse(text))
    snap = fs.snapshot(text)
    assert snap.limit is None
    assert any(e.startswith("cpu limit: ") for e in snap.errors)


EDGE_OTHER = {
    "v2-stat-no-bandwidth": ("throttling", None),
    "v2-stat-garbage": ("throttling", "nr_periods: not an integer"),
    "v2-stat-truncated": ("throttling", "not an integer: ''"),
    "v1-stat-missing-time": ("throttling", "no throttled_time"),
}


@pytest.mark.parametrize(("name", "field", "expected"), [(n, f, e) for n, (f, e) in EDGE_OTHER.items()])
def test_edge_stat(name: str, field: str, expected: str | None) -> None:
    fs = edge_fs(name)
    h = fs.cpu
    if h is None:  # v2-stat-no-bandwidth: no cpu controller at all, read the leaf through the unified hierarchy
        h = fs.unified
    assert h is not None and field == "throttling"
    if expected is not None:
        with pytest.raises(CgroupError, match=expected):
            read_throttling(h, "/leaf")
    else:
        assert read_throttling(h, "/leaf") is None
