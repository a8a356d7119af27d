"""Build and run the node-agent image for linux/arm64 on this x86-64 machine (tests only).

- ``binfmt_arm64()``: the kernel runs arm64 ELF files through Debian's
  qemu-aarch64-static (binfmt_misc, flag F: the interpreter is opened once, at
  registration, so it works inside containers). Mounts binfmt_misc and
  registers a handler only if none is there, and undoes exactly that on exit.
- ``base_image()``: no image registry is reachable, so the Dockerfile's base
  (``debian:bookworm-slim``) is made with ``mmdebstrap --arch=arm64`` from the
  machine's own Debian mirrors and cached as a tarball.
- ``Podman``: podman with private configuration (CONTAINERS_CONF,
  CONTAINERS_STORAGE_CONF, CONTAINERS_REGISTRIES_CONF under the cache):
  global container configuration and storage are never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.cachedir import cache_dir
from tests.support.containers import build_secrets

BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # qemu-user-static's registration line
OUR_HANDLER = "node-agent-aarch64"
AARCH64_MAGIC = "7f454c460201010000000000000000000200b700"  # ELF64 LSB, e_machine 183 (EM_AARCH64)
SUITE = "bookworm"
BASE_TAGS = ("docker.io/library/debian:bookworm-slim", "localhost/debian:bookworm-slim")
BUILD_TIMEOUT_S = 3600  # emulated apt-get and pip on a busy 2-CPU machine


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stderr + proc.stdout)[-6000:]}")
    return proc.stdout


def aarch64_handler() -> str | None:
    """The name of an enabled binfmt_misc handler for arm64 ELF files, if one is registered."""
    if not (BINFMT / "status").exists():
        return None
    for entry in BINFMT.iterdir():
        if entry.name in ("register", "status"):
            continue
        try:
            text = entry.read_text()
        except OSError:
            continue
        if text.startswith("enabled") and f"magic {AARCH64_MAGIC}" in text:
            return entry.name
    return None


@contextlib.contextmanager
def binfmt_arm64() -> Iterator[str]:
    """An arm64 handler for the duration; yields its name. Undoes only what it did."""
    mounted = registered = False
    if not (BINFMT / "status").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], 30)
        mounted = True
    try:
        name = aarch64_handler()
        if name is None:
            line = QEMU_CONF.read_text().strip()
            line = re.sub(r"^:[^:]*:", f":{OUR_HANDLER}:", line)
            (BINFMT / "register").write_text(line)
            registered, name = True, OUR_HANDLER
        yield name
    finally:
        if registered:
            with contextlib.suppress(OSError):
                (BINFMT / OUR_HANDLER).write_text("-1")
        if mounted:
            subprocess.run(["umount", str(BINFMT)], capture_output=True, timeout=30, check=False)


def image_cache() -> Path:
    path = cache_dir() / "arm64-image"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _mirrors() -> list[str]:
    """This machine's Debian mirrors (deb822 or one-line sources), for mmdebstrap."""
    out = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        uris = suites = None
        for line in [*f.read_text().splitlines(), ""]:
            key, _, value = line.partition(":")
            if key == "URIs":
                uris = value.strip()
            elif key == "Suites":
                suites = value.split()
            elif not line.strip() and uris and suites:
                out += [f"deb {uris} {s} main" for s in suites if s.startswith(SUITE)]
                uris = suites = None
    return out or [f"deb http://deb.debian.org/debian {SUITE} main"]


def base_image() -> Path:
    """A minbase Debian arm64 root filesystem tarball (cached; mmdebstrap runs arm64 code via binfmt)."""
    tar = image_cache() / f"debian-{SUITE}-arm64-minbase.tar"
    if tar.is_file():
        return tar
    fd, tmp = tempfile.mkstemp(prefix=".base-", suffix=".tar", dir=tar.parent)
    os.close(fd)
    try:
        cmd = ["mmdebstrap", "--arch=arm64", "--variant=minbase", "--mode=root", "--format=tar", SUITE, tmp]
        _run([*cmd, *_mirrors()], BUILD_TIMEOUT_S)
        os.replace(tmp, tar)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return tar


@dataclass(frozen=True)
class Podman:
    """podman with configuration and storage of its own."""

    home: Path

    @classmethod
    def private(cls) -> Podman:
        home = image_cache() / "podman"
        (home / "storage").mkdir(parents=True, exist_ok=True)
        (home / "containers.conf").write_text(
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{home}/events.log"\n[containers]\nnetns = "host"\n'
            # podman's rootful defaults raise nofile/nproc (1048576/4194304); where raising an rlimit
            # is not permitted (this VM), runc fails with "error setting rlimits": ask for modest ones.
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        )
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{home}/storage"\nrunroot = "{home}/run"\n'
        )
        (home / "registries.conf").write_text('unqualified-search-registries = []\nshort-name-mode = "disabled"\n')
        return cls(home)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "REGISTRIES_"))}
        env.update(
            CONTAINERS_CONF=str(self.home / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(self.home / "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=str(self.home / "registries.conf"),
            TMPDIR=str(self.home),
        )
        return env

    def __call__(self, *args: str, timeout: float = 600) -> str:
        return _run(["podman", *args], timeout, env=self.env())

    def has_image(self, ref: str) -> bool:
        proc = subprocess.run(
            ["podman", "image", "exists", ref], env=self.env(), capture_output=True, timeout=60, check=False
        )
        return proc.returncode == 0

    def import_base(self, tar: Path) -> None:
        if all(self.has_image(t) for t in BASE_TAGS):
            return
        image_id = self("import", "--os", "linux", "--arch", "arm64", str(tar), BASE_TAGS[0]).strip().splitlines()[-1]
        for tag in BASE_TAGS[1:]:
            self("tag", image_id, tag)

    def build(self, repo: Path, tag: str) -> None:
        """``podman build --platform linux/arm64`` of the repository's Dockerfile (its .dockerignore
        applies), with the same build secrets (pip's index settings and CA) as the amd64 image."""
        with build_secrets() as secrets:
            self(
                "build", "--platform", "linux/arm64", "--pull=never", "--network", "host", *secrets,
                "-f", str(repo / "Dockerfile"), "-t", tag, str(repo),
                timeout=BUILD_TIMEOUT_S,
            )  # fmt: skip
