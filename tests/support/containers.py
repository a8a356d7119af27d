"""The project's image on a real container runtime, for tests/system/test_container_e2e.py.

* The base image the Dockerfile's ``FROM`` names cannot be pulled (no image registry is
  reachable), so it is made from the Debian mirror this machine's apt uses with
  ``mmdebstrap --variant=minbase`` and ``podman import``-ed under that exact name; the
  Dockerfile is then built unchanged with ``--pull=never``. Both images carry a label
  with the hash of their inputs and are rebuilt only when it changes.
* podman runs with the private ``tests/containers/containers.conf`` (through
  ``CONTAINERS_CONF``) and a private image store under the project's cache (through
  ``CONTAINERS_STORAGE_CONF``); the machine's /etc/containers is never changed.
* pip inside the build gets this machine's package index and CA as build secrets.
* The agent container's flags are derived from deploy/daemonset.yaml (`DaemonSetAgent`),
  so a change to the manifest changes what the tests run.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from agent.cachedir import cache_dir
from agent.kube.spec import parse_quantity
from tests.support.capabilities import need

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
MANIFEST = REPO / "deploy" / "daemonset.yaml"
CONTAINERS_CONF = REPO / "tests" / "containers" / "containers.conf"
SUITE = "bookworm"  # the Debian release the Dockerfile's FROM is
IMAGE_REPO = "localhost/node-agent-test"
LABEL = "org.node-agent.test.inputs"


class ContainerError(RuntimeError):
    """A runtime command failed; the message carries its output."""


def storage_conf() -> Path:
    """A private image store under the project's cache: images of ours only, never the machine's
    (another user importing a different ``debian:bookworm-slim`` there cannot swap our base)."""

    root = cache_dir() / "containers"
    conf = root / "storage.conf"
    text = f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n'
    if not conf.is_file() or conf.read_text() != text:
        root.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
    return conf


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), "CONTAINERS_STORAGE_CONF": str(storage_conf())}


def run(cmd: Sequence[str], *, timeout: float = 120, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        list(cmd), check=False, capture_output=True, text=True, timeout=timeout, env=kw.pop("env", podman_env()), **kw
    )
    if check and res.returncode != 0:
        raise ContainerError(
            f"{' '.join(cmd[:4])} ... exit {res.returncode}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
        )
    return res


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], timeout=timeout, check=check)


def podman_run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`podman run --rm ARGS` for a command that always prints (a result or an error).

    podman 4.3 + conmon now and then hands back nothing at all of a container's output (exit 0,
    empty stdout and stderr; seen once in ~40 runs of a shell that exits at once): such a run is
    made again, at most twice. Only for commands that may run twice (reads, or a write of the value
    a file already holds).
    """
    for _ in range(3):
        res = podman("run", "--rm", *args, timeout=timeout, check=check)
        if res.stdout or res.stderr:
            break
    return res


# ---- inputs: the Dockerfile's base, apt's mirror, pip's index -------------------------------------


def from_image(dockerfile: Path = DOCKERFILE) -> str:
    """The first FROM's image, fully qualified as podman stores it (docker.io/library/...)."""
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", line, re.IGNORECASE)
        if m:
            name = m[1]
            first = name.split("/")[0]
            if "/" not in name:
                return f"docker.io/library/{name}"
            if "." not in first and ":" not in first and first != "localhost":
                return f"docker.io/{name}"
            return name
    raise ContainerError(f"{dockerfile} has no FROM")


def apt_sources(texts: dict[str, str], suite: str = SUITE) -> list[str]:
    """One-line ``deb URI SUITE COMPONENTS`` entries for Debian ``suite`` from apt's source files.

    Both formats (sources.list lines and deb822 ``.sources`` stanzas); only Debian's own
    suites (suite, suite-updates, suite-security), so third-party repositories stay out.
    """
    out: list[str] = []
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    for name, text in texts.items():
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    for s in fields.get("suites", "").split():
                        if s in wanted:
                            out.append(f"deb {uri} {s} {fields.get('components', 'main')}")
        else:
            for line in text.splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)", line)
                if m and m[2] in wanted:
                    out.append(f"deb {m[1]} {m[2]} {m[3].split('#')[0].strip()}")
    return list(dict.fromkeys(out))


def host_apt_sources(suite: str = SUITE) -> list[str]:
    root = Path("/etc/apt")
    files = [root / "sources.list", *sorted((root / "sources.list.d").glob("*"))]
    texts = {str(f): f.read_text() for f in files if f.is_file() and f.suffix in {".list", ".sources"}}
    sources = apt_sources(texts, suite)
    if not sources:
        raise ContainerError(f"no Debian {suite} source in /etc/apt: cannot make the base image")
    return sources


@dataclass(frozen=True)
class PipSettings:
    """What pip inside the build needs from this machine: index URLs, trusted hosts, CA."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    ca_file: Path | None = None

    def conf(self, ca_target: str) -> str:
        lines = ["[global]"]
        if self.index_url:
            lines.append(f"index-url = {self.index_url}")
        if self.extra_index_urls:
            lines.append("extra-index-url = " + " ".join(self.extra_index_urls))
        if self.trusted_hosts:
            lines.append("trusted-host = " + " ".join(self.trusted_hosts))
        if self.ca_file:
            lines.append(f"cert = {ca_target}")
        return "\n".join(lines) + "\n"


def pip_settings(config: dict[str, str], environ: dict[str, str]) -> PipSettings:
    """From ``pip config list`` (``global.index-url='...'``) and PIP_* variables; the environment wins.

    Only network indexes cross into the build: file:// indexes and find-links are this
    machine's disk, which the build cannot see.
    """

    def get(key: str) -> str:
        env = "PIP_" + key.upper().replace("-", "_")
        return environ.get(env) or config.get(f"global.{key}") or config.get(f"install.{key}") or ""

    def network(urls: str) -> tuple[str, ...]:
        return tuple(u for u in urls.split() if u.startswith(("http://", "https://")))

    index = network(get("index-url"))
    cert = get("cert") or environ.get("SSL_CERT_FILE", "") or environ.get("REQUESTS_CA_BUNDLE", "")
    ca = Path(cert) if cert and Path(cert).is_file() else None
    return PipSettings(
        index_url=index[0] if index else None,
        extra_index_urls=network(get("extra-index-url")),
        trusted_hosts=tuple(get("trusted-host").split()),
        ca_file=ca,
    )


def host_pip_settings() -> PipSettings:
    pip = shutil.which("pip3") or shutil.which("pip")
    config: dict[str, str] = {}
    if pip:
        res = subprocess.run([pip, "config", "list"], check=False, capture_output=True, text=True, timeout=60)
        for line in res.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                config[key.strip()] = value.strip().strip("'\"")
    return pip_settings(config, dict(os.environ))


# ---- building ---------------------------------------------------------------------------------


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:20]


def image_label(name: str) -> str | None:
    res = podman("image", "inspect", "--format", "{{json .Labels}}", name, check=False)
    if res.returncode != 0:
        return None
    labels = json.loads(res.stdout or "null") or {}
    value = labels.get(LABEL)
    return str(value) if value else None


@dataclass(frozen=True)
class Built:
    name: str
    key: str
    seconds: float | None  # None: taken from the cache


# What the official image has (debuerreotype's /etc/dpkg/dpkg.cfg.d/docker*, /etc/apt/apt.conf.d/docker*):
# no docs, manuals or translations, now and for every package installed on top; dpkg without fsync.
SLIM_DPKG_OPTS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
    "force-unsafe-io",  # docker-apt-speedup: a build's dpkg needs no fsync
)
SLIM_APT_OPTS = ('Acquire::Languages "none"', 'APT::AutoRemove::SuggestsImportant "false"')


def ensure_base_image() -> Built:
    """The Dockerfile's FROM, made by mmdebstrap from apt's mirror; cached by (name, sources, options)."""
    name = from_image()
    sources = host_apt_sources()
    opts = [f"--dpkgopt={o}" for o in SLIM_DPKG_OPTS] + [f"--aptopt={o}" for o in SLIM_APT_OPTS]
    key = digest(name.encode(), "\n".join(sources).encode(), " ".join(["minbase", *opts]).encode())
    if image_label(name) == key:
        return Built(name, key, None)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="node-agent-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        run(
            ["mmdebstrap", "--variant=minbase", *opts, "--format=tar", "--quiet", SUITE, str(tar), *sources],
            timeout=900,
        )
        podman("import", "--change", f"LABEL {LABEL}={key}", "--change", 'CMD ["bash"]', str(tar), name, timeout=300)
    return Built(name, key, time.monotonic() - started)


def context_files(root: Path = REPO) -> list[Path]:
    """The build context as .dockerignore's allow-list admits it (the files the image is made of)."""
    allowed, excluded = [], []
    for raw in (root / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line.startswith("!"):
            allowed.append(line[1:].rstrip("/"))
        elif line.startswith("**/"):
            excluded.append(line[3:])  # the only other form the file uses: a name anywhere
    files: list[Path] = []
    for entry in allowed:
        path = root / entry
        found = [p for p in path.rglob("*") if p.is_file() or p.is_symlink()] if path.is_dir() else [path]
        for p in found:
            parts = p.relative_to(root).parts
            if not any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in excluded):
                files.append(p)
    return sorted(files)


def image_key(base: Built) -> str:
    parts = [base.key.encode(), DOCKERFILE.read_bytes()]
    for p in context_files():
        rel = str(p.relative_to(REPO)).encode()
        parts += [rel, os.readlink(p).encode() if p.is_symlink() else p.read_bytes()]
    return digest(*parts)


@contextlib.contextmanager
def build_secrets() -> Iterator[list[str]]:
    """``podman build`` flags that hand this machine's pip index settings and CA to the build as
    secrets (the Dockerfile's pip steps mount them; nothing lands in a layer): every image build
    of the tests, whatever its platform, uses these."""
    settings = host_pip_settings()
    with tempfile.TemporaryDirectory(prefix="node-agent-build-") as tmp:
        conf = Path(tmp) / "pip.conf"
        conf.write_text(settings.conf("/run/secrets/pip-ca.crt"))
        secrets = ["--secret", f"id=pip.conf,src={conf}"]
        if settings.ca_file:
            secrets += ["--secret", f"id=pip-ca.crt,src={settings.ca_file}"]
        yield secrets


def ensure_image() -> tuple[Built, Built]:
    """(base, agent image) built or taken from podman's storage when their inputs are unchanged."""
    base = ensure_base_image()
    key = image_key(base)
    tag = f"{IMAGE_REPO}:{key}"
    if image_label(tag) == key:
        return base, Built(tag, key, None)
    started = time.monotonic()
    with build_secrets() as secrets:
        podman(
            "build", "--pull=never", "--network=host", *secrets, "--label", f"{LABEL}={key}",
            "-t", tag, "-f", str(DOCKERFILE), str(REPO), timeout=1500,
        )  # fmt: skip
    seconds = time.monotonic() - started
    # Older builds of ours go (with their layers), so repeated runs do not fill the disk.
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", f"reference={IMAGE_REPO}")
    old = [ref for ref in listed.stdout.split() if ref != tag]
    if old:
        podman("rmi", "--force", *old, check=False)
    return base, Built(tag, key, seconds)


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


# ---- the DaemonSet's container, as podman flags ------------------------------------------------


@dataclass(frozen=True)
class Mount:
    path: str  # in the container
    host_path: str | None  # None: an emptyDir
    read_only: bool
    recursive_read_only: str | None = None  # the manifest's recursiveReadOnly
    size_limit: int | None = None  # emptyDir sizeLimit, bytes


@dataclass(frozen=True)
class DaemonSetAgent:
    """The facts of the DaemonSet's agent container that decide how it runs."""

    args: tuple[str, ...]
    env: dict[str, str]
    field_env: dict[str, str]  # name -> fieldPath (Downward API), filled in by the harness
    host_pid: bool
    host_network: bool
    read_only_root: bool
    privileged: bool
    no_new_privileges: bool
    user: str
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    seccomp: str
    apparmor: str
    memory_limit: int | None
    mounts: tuple[Mount, ...]
    port: int


def load_daemonset(path: Path = MANIFEST) -> DaemonSetAgent:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    ds = next(d for d in docs if d.get("kind") == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    sc = ctr.get("securityContext", {})
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = []
    for vm in ctr.get("volumeMounts", []):
        vol = volumes[vm["name"]]
        if "hostPath" in vol:
            mounts.append(
                Mount(vm["mountPath"], vol["hostPath"]["path"], bool(vm.get("readOnly")), vm.get("recursiveReadOnly"))
            )
        elif "emptyDir" in vol:
            limit = vol["emptyDir"].get("sizeLimit")
            mounts.append(Mount(vm["mountPath"], None, False, size_limit=int(parse_quantity(limit)) if limit else None))
        else:
            raise ContainerError(f"volume {vm['name']}: only hostPath and emptyDir are emulated")
    env, field_env = {}, {}
    for e in ctr.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        else:
            field_env[e["name"]] = e["valueFrom"]["fieldRef"]["fieldPath"]
    limit = ctr.get("resources", {}).get("limits", {}).get("memory")
    caps = sc.get("capabilities", {})
    return DaemonSetAgent(
        args=tuple(ctr.get("args", [])),
        env=env,
        field_env=field_env,
        host_pid=bool(pod.get("hostPID")),
        host_network=bool(pod.get("hostNetwork")),
        read_only_root=bool(sc.get("readOnlyRootFilesystem")),
        privileged=bool(sc.get("privileged")),
        no_new_privileges=sc.get("allowPrivilegeEscalation") is False,
        user=f"{sc.get('runAsUser', 0)}:{sc.get('runAsGroup', 0)}",
        cap_drop=tuple(caps.get("drop", [])),
        cap_add=tuple(caps.get("add", [])),
        seccomp=sc.get("seccompProfile", {}).get("type", "RuntimeDefault"),
        apparmor=sc.get("appArmorProfile", {}).get("type", "RuntimeDefault"),
        memory_limit=int(parse_quantity(limit)) if limit else None,
        mounts=tuple(mounts),
        port=int(ctr["ports"][0]["containerPort"]),
    )


def host_submounts(path: str, mountinfo: str) -> list[str]:
    """Mount points strictly below ``path`` in a mountinfo text, shallowest first."""
    base = PurePosixPath(path)
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = PurePosixPath(fields[4].encode().decode("unicode_escape"))
        if point != base and base in point.parents:
            found.append(str(point))
    return sorted(dict.fromkeys(found), key=lambda p: (p.count("/"), p))


PODMAN_SECCOMP = Path("/usr/share/containers/seccomp.json")  # containers-common: podman's default


def runtime_default_seccomp(cap_add: Sequence[str]) -> Path:
    """Kubernetes' ``RuntimeDefault`` as containerd >= 1.6 applies it, for podman.

    containerd generates its default per container: the syscall policy of containers-common's
    profile, plus bpf() when the container has CAP_BPF and perf_event_open() when it has
    CAP_PERFMON (containers-common <= 0.50, Debian 12's podman, admits them only with
    CAP_SYS_ADMIN). So: that profile, plus those calls for the capabilities the manifest adds
    (tests/system/test_deploy_capabilities.py runs bcc under containerd's real default)."""
    profile = json.loads(PODMAN_SECCOMP.read_text())
    for call, cap in (("bpf", "BPF"), ("perf_event_open", "PERFMON")):
        if cap in cap_add:
            for rule in profile["syscalls"]:  # containers-common also refuses them outright without SYS_ADMIN
                if rule.get("action") == "SCMP_ACT_ERRNO" and call in rule["names"]:
                    rule["names"] = [n for n in rule["names"] if n != call]
            profile["syscalls"].append({"names": [call], "action": "SCMP_ACT_ALLOW"})
    profile["syscalls"] = [r for r in profile["syscalls"] if r["names"]]
    text = json.dumps(profile, indent=1)
    path = cache_dir() / "containers" / f"runtime-default-seccomp-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def podman_flags(
    spec: DaemonSetAgent,
    *,
    field_values: dict[str, str],
    rro: bool = True,
    drop_mounts: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
    seccomp: str | None = None,
) -> list[str]:
    """``podman run`` flags equivalent to the kubelet running this container.

    ``rro``: emulate ``recursiveReadOnly`` (podman 4.3 cannot make a bind recursively
    read-only) by adding a read-only bind for every host sub-mount, as a kubelet and
    runtime that support it do; False is a runtime without it (the hole the agent reports).
    ``drop_mounts``: container paths left out (e.g. the header mounts, for a node without them).
    ``seccomp``: instead of the manifest's seccompProfile type: "Unconfined", "RuntimeDefault"
    (containerd's, see :func:`runtime_default_seccomp`) or "podman-default" (containers-common's).
    Networking is the host's (no iptables here): the harness overrides --listen to loopback.
    """
    if spec.privileged:
        raise ContainerError("the manifest asks for a privileged container")
    flags = ["--pull=never", "--network=host", f"--user={spec.user}"]
    if spec.host_pid:
        flags.append("--pid=host")
    if spec.read_only_root:
        flags += ["--read-only", "--read-only-tmpfs=false"]  # only the emptyDirs are writable, as in the pod
    flags += [f"--cap-drop={c}" for c in spec.cap_drop]
    flags += [f"--cap-add={c}" for c in spec.cap_add]
    if spec.no_new_privileges:
        flags += ["--security-opt", "no-new-privileges"]
    mode = seccomp or spec.seccomp
    if mode == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    elif mode == "RuntimeDefault":
        flags += ["--security-opt", f"seccomp={runtime_default_seccomp(spec.cap_add)}"]
    elif mode != "podman-default":
        raise ContainerError(f"seccompProfile {mode!r} is not emulated")
    if spec.apparmor == "Unconfined":
        flags += ["--security-opt", "apparmor=unconfined"]
    if spec.memory_limit:
        flags += [f"--memory={spec.memory_limit}", f"--memory-swap={spec.memory_limit}"]  # no swap, as the kubelet
    mountinfo = Path("/proc/self/mountinfo").read_text()
    explicit = {m.path for m in spec.mounts}
    binds: list[tuple[str, list[str]]] = []  # (destination, flags)
    for m in spec.mounts:
        if m.path in drop_mounts:
            continue
        if m.host_path is None:
            size = f",size={m.size_limit}" if m.size_limit else ""
            # The kubelet makes an emptyDir 0777: the agent, once it switched to its own uid, writes there.
            binds.append((m.path, ["--tmpfs", f"{m.path}:rw{size},mode=0777,notmpcopyup"]))
            continue
        ro = ":ro" if m.read_only else ""
        binds.append((m.path, ["-v", f"{m.host_path}:{m.path}{ro}"]))
        if m.read_only and rro and m.recursive_read_only in {"IfPossible", "Enabled"}:
            for sub in host_submounts(m.host_path, mountinfo):
                dest = str(PurePosixPath(m.path) / PurePosixPath(sub).relative_to(m.host_path))
                if dest not in explicit:  # the manifest's own mount there expands itself
                    explicit.add(dest)
                    binds.append((dest, ["-v", f"{sub}:{dest}:ro"]))
    # Parents before children, whatever order the runtime keeps: a later parent would hide them.
    for _dest, bind in sorted(binds, key=lambda b: len(PurePosixPath(b[0]).parts)):
        flags += bind
    for name in spec.field_env:
        if name not in field_values:
            raise ContainerError(f"no value for the Downward API variable {name}")
    for name, value in {**spec.env, **{n: field_values[n] for n in spec.field_env}, **(extra_env or {})}.items():
        flags += ["-e", f"{name}={value}"]
    return flags


# ---- running ----------------------------------------------------------------------------------


@dataclass
class Container:
    id: str
    name: str

    def pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.id).stdout.strip())

    def logs(self) -> str:
        res = podman("logs", self.id, check=False)
        return res.stdout + res.stderr

    def running(self) -> bool:
        res = podman("inspect", "--format", "{{.State.Running}}", self.id, check=False)
        return res.stdout.strip() == "true"

    def state(self) -> dict[str, Any]:
        return dict(json.loads(podman("inspect", "--format", "{{json .State}}", self.id).stdout))


@contextlib.contextmanager
def container(
    image: str, flags: Sequence[str], command: Sequence[str] = (), *, stop_timeout: int = 10
) -> Iterator[Container]:
    """A detached container, removed (with its cgroups) on every exit path."""
    name = f"node-agent-test-{uuid.uuid4().hex[:10]}"
    res = podman("run", "-d", f"--name={name}", *flags, image, *command, timeout=120)
    c = Container(res.stdout.strip().splitlines()[-1], name)
    try:
        yield c
    finally:
        podman("stop", f"--time={stop_timeout}", c.id, check=False, timeout=stop_timeout + 60)
        podman("rm", "-f", c.id, check=False, timeout=60)


def memory_cgroup(pid: int) -> Path | None:
    """The v1 memory cgroup directory of ``pid`` (None on a v2-only host)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    return None


@dataclass
class MemoryPeak:
    """The agent container's memory, polled while it runs."""

    pid: int
    cgroup: Path | None
    rss_peak: int = 0  # the agent process's VmHWM
    usage_peak: int = 0  # the cgroup's max_usage_in_bytes (includes page cache)
    samples: list[tuple[float, int]] = field(default_factory=list)

    def poll(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(("VmHWM:", "VmRSS:")):
                    kib = int(line.split()[1]) * 1024
                    if line.startswith("VmHWM:"):
                        self.rss_peak = max(self.rss_peak, kib)
                    else:
                        self.samples.append((time.monotonic(), kib))
        if self.cgroup is not None:
            with contextlib.suppress(OSError, ValueError):
                self.usage_peak = max(self.usage_peak, int((self.cgroup / "memory.max_usage_in_bytes").read_text()))


def remove_cgroup_tree(rel: str) -> None:
    """Remove a cgroup tree the test made runc create (e.g. a kubelet-shaped parent) in every hierarchy."""
    from agent.lab.cgroupwriter import remove_cgroup

    for hierarchy in sorted(p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir() and not p.is_symlink()):
        path = hierarchy / rel.strip("/")
        if path.is_dir():
            remove_cgroup(path)


@contextlib.contextmanager
def containerd(workdir: Path) -> Iterator[str]:
    """A private containerd (own root, state and sockets under `workdir`, no CRI plugin, no debug or
    metrics listener); yields its socket for `ctr --address`, stops it and unmounts its state on leaving."""
    binary = shutil.which("containerd")
    need(binary is not None and shutil.which("ctr") is not None, "containerd and ctr (Debian package containerd)")
    assert binary is not None
    sock = workdir / "containerd.sock"
    config = workdir / "containerd.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{workdir}/root"\nstate = "{workdir}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{workdir}/ttrpc.sock"\n'
        '[debug]\n  address = ""\n[metrics]\n  address = ""\n'
    )
    log = workdir / "containerd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "--config", str(config)], stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not sock.exists():
            raise ContainerError(f"containerd did not start:\n{log.read_text()[-2000:]}")
        yield str(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        run(["umount", "-R", f"{workdir}/state"], check=False)
