"""tests/containers.py, the container e2e harness: its pure parts, without a runtime.

What matters most: the agent container's flags come from deploy/daemonset.yaml, so a change
to the manifest changes what the e2e runs (shown by editing a copy of the manifest).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.support.containers import (
    MANIFEST,
    apt_sources,
    context_files,
    from_image,
    host_submounts,
    load_daemonset,
    pip_settings,
    podman_flags,
)

MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 22 0:21 / /sys rw,nosuid - sysfs sysfs rw
24 23 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
25 24 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
26 24 0:33 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 22 0:5 / /proc rw - proc proc rw
28 22 0:40 / /system rw - tmpfs tmpfs rw
"""


def test_host_submounts_are_strictly_below_and_parents_first() -> None:
    assert host_submounts("/sys", MOUNTINFO) == ["/sys/fs/cgroup", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"]
    assert host_submounts("/proc", MOUNTINFO) == []


def test_from_image_qualifies_as_podman_stores_it(tmp_path: Path) -> None:
    df = tmp_path / "Dockerfile"
    for line, want in [
        ("FROM debian:bookworm-slim", "docker.io/library/debian:bookworm-slim"),
        ("FROM --platform=$BUILDPLATFORM debian:bookworm-slim AS x", "docker.io/library/debian:bookworm-slim"),
        ("FROM someone/img:1", "docker.io/someone/img:1"),
        ("FROM quay.io/a/b:2", "quay.io/a/b:2"),
    ]:
        df.write_text(f"# c\n{line}\nRUN true\n")
        assert from_image(df) == want
    assert from_image().endswith("debian:bookworm-slim")


def test_apt_sources_from_both_formats_debian_suites_only() -> None:
    texts = {
        "/etc/apt/sources.list.d/debian.sources": (
            "Types: deb\n# comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
            "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n"
        ),
        "/etc/apt/sources.list.d/node.sources": (
            "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
        ),
        "/etc/apt/sources.list": "deb [arch=amd64] http://mirror.example/debian bookworm main contrib # x\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
    }
    assert apt_sources(texts) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
        "deb http://mirror.example/debian bookworm main contrib",
    ]


def test_pip_settings_keep_network_indexes_and_the_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = {
        "global.extra-index-url": "file:///opt/pypi/simple https://mirror.example/simple",
        "global.find-links": "/opt/wheels",
        "global.cert": str(ca),
    }
    s = pip_settings(config, {"PIP_INDEX_URL": "https://proxy.example/simple", "PIP_TRUSTED_HOST": "proxy.example"})
    assert s.index_url == "https://proxy.example/simple"
    assert s.extra_index_urls == ("https://mirror.example/simple",)
    conf = s.conf("/run/secrets/pip-ca.crt")
    assert "cert = /run/secrets/pip-ca.crt" in conf and "trusted-host = proxy.example" in conf
    assert "/opt/" not in conf and str(ca) not in conf  # nothing of this machine's disk
    assert pip_settings({}, {}).conf("/x") == "[global]\n"


def test_build_context_is_the_dockerignore_allow_list() -> None:
    files = {str(p.relative_to(MANIFEST.parents[1])) for p in context_files()}
    assert "pyproject.toml" in files and "bpf/profile.bpf.c" in files and "agent/cli.py" in files
    assert not any("__pycache__" in f or f.endswith(".pyc") or f.startswith("tests/") for f in files)


def flags_for(doc_edit: object = None, tmp: Path | None = None, **kw: object) -> list[str]:
    path = MANIFEST
    if doc_edit is not None and tmp is not None:
        docs = list(yaml.safe_load_all(MANIFEST.read_text()))
        ds = next(d for d in docs if d and d["kind"] == "DaemonSet")
        doc_edit(ds["spec"]["template"]["spec"])  # type: ignore[operator]
        path = tmp / "daemonset.yaml"
        path.write_text(yaml.safe_dump_all(docs))
    return podman_flags(load_daemonset(path), field_values={"NODE_NAME": "node-a", "POD_IP": "127.0.0.1"}, **kw)  # type: ignore[arg-type]


def test_flags_are_the_manifests() -> None:
    f = flags_for()
    assert "--pid=host" not in f and "--read-only" in f and "--cap-drop=ALL" in f
    assert {x.removeprefix("--cap-add=") for x in f if x.startswith("--cap-add=")} == {
        "BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH", "SETUID", "SETGID",
    }  # fmt: skip
    assert "apparmor=unconfined" in f and "no-new-privileges" in f
    (profile,) = [x.removeprefix("seccomp=") for x in f if x.startswith("seccomp=")]  # RuntimeDefault
    rules = json.loads(Path(profile).read_text())["syscalls"]
    for call in ("bpf", "perf_event_open"):  # the manifest adds BPF and PERFMON: containerd admits both calls
        assert any(call in r["names"] and r["action"] == "SCMP_ACT_ALLOW" and not r.get("includes") for r in rules)
    assert f"--memory={512 * 2**20}" in f
    assert "/proc:/host/proc:ro" in f and "/sys:/host/sys:ro" in f and "/sys/fs/cgroup:/host/sys/fs/cgroup:ro" in f
    assert "/tmp:rw,size=268435456,mode=0777,notmpcopyup" in f
    assert "NODE_NAME=node-a" in f and "NODE_AGENT_CACHE=/var/cache/node-agent" in f
    binds = [f[i + 1].split(":")[1] for i, x in enumerate(f) if x == "-v"]
    assert len(binds) == len(set(binds))  # no destination twice
    depth = [len(Path(b).parts) for b in binds]
    assert depth == sorted(depth)  # parents before the sub-mounts they would hide


def test_a_change_to_the_manifest_changes_the_flags(tmp_path: Path) -> None:
    def loosen(pod: dict) -> None:  # type: ignore[type-arg]
        c = pod["containers"][0]
        c["resources"]["limits"]["memory"] = "1Gi"
        c["securityContext"]["capabilities"]["add"].remove("SYS_PTRACE")
        c["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
        for m in c["volumeMounts"]:
            if m["mountPath"] == "/host/sys":
                m["readOnly"] = False
        c["env"].append({"name": "NODE_AGENT_INTERVAL", "value": "5"})

    f = flags_for(loosen, tmp_path)
    assert f"--memory={2**30}" in f and "--cap-add=SYS_PTRACE" not in f and "seccomp=unconfined" in f
    assert "/sys:/host/sys" in f and "NODE_AGENT_INTERVAL=5" in f


def test_without_recursive_read_only_the_submounts_are_not_added() -> None:
    f = flags_for(rro=False)
    assert not any(x.startswith("/sys/fs/cgroup/cpu:") for x in f)
    assert "/sys/fs/cgroup:/host/sys/fs/cgroup:ro" in f  # the manifest's own mount stays
