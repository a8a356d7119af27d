"""Hostile tenants for real: forged Go binaries, hostile process names, the manifest's memory cap.

Everything here changes the machine only through files under a test's tmp dir and
agent/lab/cgroupwriter.py (the one cgroup writer); each context manager undoes itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import yaml

from agent.gobinary.elf import open_image
from agent.gobinary.symbolizer import GoBinary
from agent.kube.spec import parse_quantity
from agent.lab.cgroupwriter import make_cgroup, remove_cgroup, set_memory_limit
from tests.support.capabilities import need, need_root

V1_MEMORY = Path("/sys/fs/cgroup/memory")
DAEMONSET = Path(__file__).resolve().parents[2] / "deploy" / "daemonset.yaml"

# A 14-byte function name (the length of "main.transform") that would forge a folded record:
# a newline, a frame separator and a trailing count.
FORGED_NAME = b"x\nforged;y 999"
RENAMED_FUNCTION = b"main.transform"

# Go processes' names: the basename a binary is executed as (the kernel keeps 15 bytes as comm).
HOSTILE_COMMS = [
    b"\xff\xfebad-utf8",  # not UTF-8: one such label made every /metrics scrape fail
    b"[red]mark",  # rich markup (a file name cannot hold the "/" of "[/x]")
    b"\x1b[2Jesc",  # a terminal escape sequence
]
# A name only prctl(PR_SET_NAME) can give: "[/x]" crashed the scan table (rich MarkupError).
MARKUP_COMM = b"[/x]"


@contextlib.contextmanager
def named_busy_process(comm: bytes, seconds: float) -> Iterator[subprocess.Popen[bytes]]:
    """A non-Go process that renames itself (prctl PR_SET_NAME) and then burns a CPU (to be among the busiest)."""
    code = (
        "import ctypes, sys, time\n"
        f"ctypes.CDLL(None).prctl(15, {comm!r}, 0, 0, 0)\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        f"end = time.monotonic() + {seconds}\n"
        "while time.monotonic() < end: pass\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert Path(f"/proc/{proc.pid}/comm").read_bytes() == comm + b"\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def manifest_memory_limit() -> int:
    """The DaemonSet's limits.memory, in bytes (the limit the attacks are tried under)."""
    docs = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d and d.get("kind") == "DaemonSet"]
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    return int(parse_quantity(container["resources"]["limits"]["memory"]).to_integral_value())


def forge_binary(original: Path, out: Path) -> Path:
    """A copy of a Go binary whose ``main.transform`` is named FORGED_NAME in every table.

    The Go build ID is changed too, so no cache keyed by it can hand this binary's names to
    the original (or the original's to this one): the test is about names, not that attack.
    """
    data = original.read_bytes()
    build_id = GoBinary(open_image(original)).go_build_id
    need(bool(build_id), f"a Go build ID in {original}")
    assert build_id is not None
    new_id = "".join("z" if c != "/" else c for c in build_id[:4]) + build_id[4:]
    data = data.replace(build_id.encode(), new_id.encode())
    renamed = data.replace(b"\x00" + RENAMED_FUNCTION + b"\x00", b"\x00" + FORGED_NAME + b"\x00")
    assert renamed != data, "main.transform not found in the binary's name tables"
    out.write_bytes(renamed)
    out.chmod(0o755)
    return out


def hostile_names(target: Path, directory: Path) -> list[Path]:
    """Symlinks to ``target`` named HOSTILE_COMMS: executing one gives the process that comm."""
    links = []
    for name in HOSTILE_COMMS:
        link = Path(os.fsdecode(os.path.join(os.fsencode(directory), name)))
        link.symlink_to(target)
        links.append(link)
    return links


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A v1 memory cgroup with a hard limit; join it with ``(path / "cgroup.procs").write_text(pid)``."""
    need_root()
    need((V1_MEMORY / "memory.limit_in_bytes").exists(), f"a writable cgroup v1 memory controller at {V1_MEMORY}")
    path = make_cgroup(V1_MEMORY / f"node-agent-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        set_memory_limit(path, 1, limit_bytes)
        yield path
    finally:
        problem = remove_cgroup(path)
        assert problem is None, problem


def memory_peak(cgroup: Path) -> int:
    return int((cgroup / "memory.max_usage_in_bytes").read_text())


def oom_kills(cgroup: Path) -> int:
    for line in (cgroup / "memory.oom_control").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def mib(n: int | Decimal) -> str:
    return f"{float(n) / 2**20:.0f} MiB"
