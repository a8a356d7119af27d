"""The Dockerfile builds for linux/arm64, and the arm64 image runs the agent (under qemu-user).

Base image from ``mmdebstrap --arch=arm64`` (no registry here), ``podman build
--platform linux/arm64`` with private container configuration, arm64 code run
through binfmt_misc + qemu-aarch64-static (tests/system/arm64_image.py).
Oracles: the image's own metadata and ``uname -m`` inside it; bcc's Python
bindings importing libbcc inside the arm64 image; and ``node-agent symbolize
--info`` in the image on a cross-compiled arm64 Go binary, whose Go version
must be the toolchain's that built it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.lab.gotoolchain import find_toolchain
from tests.support import gobuild
from tests.support.capabilities import need, need_root
from tests.system import arm64_image

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/node-agent:arm64-test"

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def podman() -> arm64_image.Podman:
    need_root()
    for tool, package in (
        ("podman", "podman"),
        ("mmdebstrap", "mmdebstrap"),
        ("arch-test", "arch-test"),
        ("qemu-aarch64-static", "qemu-user-static"),
    ):
        need(shutil.which(tool) is not None, f"{tool} (apt-get install {package})")
    need(arm64_image.QEMU_CONF.is_file(), f"{arm64_image.QEMU_CONF} (qemu-user-static)")
    return arm64_image.Podman.private()


@pytest.fixture(scope="module")
def image(podman: arm64_image.Podman) -> str:
    with arm64_image.binfmt_arm64():
        podman.import_base(arm64_image.base_image())
        podman.build(REPO, TAG)
    return TAG


def test_image_is_arm64(podman: arm64_image.Podman, image: str) -> None:
    assert podman("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", image).strip() == "linux/arm64"
    with arm64_image.binfmt_arm64():
        out = podman("run", "--rm", "--platform", "linux/arm64", "--entrypoint", "uname", image, "-m")
    assert out.strip() == "aarch64"


def test_arm64_image_loads_bcc(podman: arm64_image.Podman, image: str) -> None:
    code = "import bcc, bcc.libbcc, platform; print(platform.machine(), bcc.libbcc.lib._name)"
    with arm64_image.binfmt_arm64():
        out = podman("run", "--rm", "--platform", "linux/arm64", "--entrypoint", "python3", image, "-c", code)
    machine, lib = out.split()
    assert machine == "aarch64"
    assert "libbcc.so" in lib


def test_arm64_image_symbolizes_an_arm64_go_binary(podman: arm64_image.Podman, image: str) -> None:
    tc = find_toolchain()
    need(tc is not None, "a Go toolchain (scripts/setup.sh)")
    assert tc is not None
    binary = gobuild.build_one(tc, gobuild.SYMTEST, "pie", "sw", "arm64")
    with arm64_image.binfmt_arm64():
        out = podman(
            "run", "--rm", "--platform", "linux/arm64", "--read-only",
            "-v", f"{binary}:/work/symtest:ro", image, "symbolize", "--info", "/work/symtest",
        )  # fmt: skip
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines() if "  " in line)
    assert lines["go version"] == tc.version_string, out
    assert lines["pie"] == "yes", out
    # The same agent on this machine says the same about the same file (the path aside).
    native = subprocess.run(
        [sys.executable, "-m", "agent", "symbolize", "--info", str(binary)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.splitlines()[1:] == native.splitlines()[1:]


def test_binfmt_is_left_as_found() -> None:
    need_root()
    need(arm64_image.QEMU_CONF.is_file(), "qemu-user-static")
    before = (arm64_image.BINFMT / "status").exists(), arm64_image.aarch64_handler()
    with arm64_image.binfmt_arm64() as name:
        assert arm64_image.aarch64_handler() == name
        assert os.access(arm64_image.BINFMT / name, os.R_OK)
    assert ((arm64_image.BINFMT / "status").exists(), arm64_image.aarch64_handler()) == before
