"""Parse a tenant's binary in a child process under a memory, CPU and time budget.

The daemon reads every Go binary on the node, and each is a tenant's bytes.
Parsing is bounded inside the parsers (budgets before allocation), but a slip
there must still cost one binary, not the node: so the daemon parses each
new file in a fresh ``python -m agent.gobinary.sandbox`` whose address space
(RLIMIT_AS) and CPU (RLIMIT_CPU) are capped, under a wall-clock deadline,
and takes the answer back as plain data (:class:`PlainBinary`: JSON facts and
byte blobs, size-capped, never pickle). The file reaches the child as its
stdin, opened by the parent, so the child parses the file the parent
checked; a file that names no Go section (most of a node's programs) is
answered in-process from a few bounded reads, without a child.
``runtime.gomaxprocs``' address is derived in the child from the same file,
so it travels with the content it came from.

Wire format (child -> parent, on stdout): 8-byte big-endian length, a JSON
header, then the blobs whose sizes the header lists. An error is a header
with ``error`` (a BinaryError class name) and ``message``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.errors import (
    BinaryError,
    BudgetExceededError,
    CorruptBinaryError,
    DeadlineExceededError,
    NotELFError,
    NotGoError,
    UnsupportedGoError,
)
from agent.gobinary.elf import FileView, has_go_sections
from agent.gobinary.symbolizer import PlainBinary

MAX_HEADER = 1 << 20
_ERRORS: dict[str, type[BinaryError]] = {
    cls.__name__: cls
    for cls in (BinaryError, BudgetExceededError, CorruptBinaryError, NotELFError, NotGoError, UnsupportedGoError)
}
_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the `agent` package


@dataclass(frozen=True)
class Budget:
    """What one binary's parse may cost. The child's memory is charged to the daemon's
    cgroup: ``memory_bytes`` plus the daemon's own RSS must stay under its limit."""

    memory_bytes: int = 256 << 20  # address space the child may add after start-up (~200 MiB daemon + this < 512)
    cpu_s: int = 5  # Prometheus (63k functions) takes 0.12 s
    wall_s: float = 10.0
    max_output_bytes: int = 160 << 20  # pclntab + kept regions (Prometheus: 19 MB)


def parse_file(
    path: str | os.PathLike[str],
    budget: Budget = Budget(),
    *,
    expired: Callable[[], bool] = lambda: False,
) -> PlainBinary:
    """Parse ``path`` in a sandboxed child; a BinaryError (or DeadlineExceededError) for this file only."""
    name = str(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - handed to the child, closed below
    except FileNotFoundError:
        raise BinaryError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise NotELFError(f"{name}: is a directory") from None
    except OSError as exc:
        raise BinaryError(f"{name}: cannot open: {exc.strerror or exc}") from None
    with f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NotELFError(f"{name}: not a regular file")
        if not has_go_sections(FileView(f.fileno(), st.st_size, name), name):  # most of a node: no child
            raise NotGoError(f"{name}: no Go sections")
        return _run_child(f, name, budget, expired)


def _run_child(f: IO[bytes], name: str, budget: Budget, expired: Callable[[], bool]) -> PlainBinary:
    env = {"PYTHONPATH": _ROOT, "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.gobinary.sandbox", str(budget.memory_bytes), str(budget.cpu_s), name],
        stdin=f,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        close_fds=True,
        start_new_session=True,  # a terminal's ^C reaches the daemon, which ends the child itself
    )
    try:
        out = _read_bounded(proc, budget, expired, name)
        status = proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()
    return _decode(out, status, name, budget)


def _read_bounded(proc: subprocess.Popen[bytes], budget: Budget, expired: Callable[[], bool], name: str) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + budget.wall_s
    limit = budget.max_output_bytes + MAX_HEADER + 8
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            if expired():
                raise DeadlineExceededError(f"{name}: parse interrupted (shutting down)")
            if time.monotonic() > deadline:
                raise BudgetExceededError(f"{name}: parsing took over {budget.wall_s:.0f}s")
            if not sel.select(timeout=0.1):
                continue
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise BudgetExceededError(f"{name}: parse result over {budget.max_output_bytes} bytes")
            chunks.append(chunk)


def _decode(out: bytes, status: int, name: str, budget: Budget) -> PlainBinary:
    if status < 0:
        sig = -status
        if sig == signal.SIGXCPU:
            raise BudgetExceededError(f"{name}: parsing used over {budget.cpu_s}s of CPU")
        if sig == signal.SIGKILL:
            raise BudgetExceededError(f"{name}: the parser was killed (out of memory?)")
        raise CorruptBinaryError(f"{name}: the parser died of signal {sig}")
    if len(out) < 8:
        raise CorruptBinaryError(f"{name}: the parser exited with {status} and no answer")
    hlen = int.from_bytes(out[:8], "big")
    if hlen > MAX_HEADER or 8 + hlen > len(out):
        raise CorruptBinaryError(f"{name}: malformed parse result")
    try:
        header = json.loads(out[8 : 8 + hlen])
    except ValueError:
        raise CorruptBinaryError(f"{name}: malformed parse result") from None
    if not isinstance(header, dict):
        raise CorruptBinaryError(f"{name}: malformed parse result")
    if "error" in header:
        cls = _ERRORS.get(str(header["error"]), BinaryError)
        return _raise(cls, str(header.get("message", ""))[:500])
    sizes = header.get("blobs")
    meta = header.get("meta")
    if (
        not isinstance(meta, dict)
        or not isinstance(sizes, list)
        or not all(isinstance(n, int) and n >= 0 for n in sizes)
        or 8 + hlen + sum(sizes) != len(out)
    ):
        raise CorruptBinaryError(f"{name}: malformed parse result")
    blobs = []
    pos = 8 + hlen
    for n in sizes:
        blobs.append(out[pos : pos + n])
        pos += n
    return PlainBinary(meta, blobs)


def _raise(cls: type[BinaryError], message: str) -> PlainBinary:
    raise cls(message)


# ---- the child -----------------------------------------------------------------------------------


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit(memory_bytes: int, cpu_s: int) -> None:
    """Caps on this child; also the first the kernel's OOM killer picks, before the daemon."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (_vm_size() + memory_bytes, _vm_size() + memory_bytes))


def _write(header: dict[str, object], blobs: list[bytes]) -> None:
    raw = json.dumps(header).encode()
    out = sys.stdout.buffer
    out.write(len(raw).to_bytes(8, "big"))
    out.write(raw)
    for blob in blobs:
        out.write(blob)
    out.flush()


def main(argv: list[str]) -> int:
    memory_bytes, cpu_s, name = int(argv[0]), int(argv[1]), argv[2]
    # Everything the parse needs is imported before the limits apply; then the file.
    from agent.gobinary.elf import ElfImage  # noqa: PLC0415
    from agent.gobinary.globals import gomaxprocs_address  # noqa: PLC0415 - child only
    from agent.gobinary.symbolizer import GoBinary  # noqa: PLC0415

    _limit(memory_bytes, cpu_s)
    try:
        size = os.fstat(0).st_size
        if size == 0:
            raise NotELFError(f"{name}: empty file")
        image = ElfImage(FileView(0, size, name), name=name)
        plain = GoBinary(image).to_plain(gomaxprocs_address)
    except BinaryError as exc:
        _write({"error": type(exc).__name__, "message": str(exc)}, [])
        return 0
    except MemoryError:
        _write({"error": "BudgetExceededError", "message": f"{name}: parsing needs over {memory_bytes} bytes"}, [])
        return 0
    except RecursionError:
        _write({"error": "CorruptBinaryError", "message": f"{name}: malformed Go tables (recursion)"}, [])
        return 0
    _write({"meta": plain.meta, "blobs": [len(b) for b in plain.blobs]}, plain.blobs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
