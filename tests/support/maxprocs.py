"""Talking to tests/goprogs/maxprocs/serve, natively or under qemu-user: its line protocol over the
child's pipes ("ready N" at start; "get" -> "gomaxprocs N"; "set N" -> "set N", the runtime's
answer), each reply awaited at most a timeout, and the child killed on every exit path."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Iterator


class MaxprocsClient:
    def __init__(self, proc: subprocess.Popen[bytes], reply_timeout_s: float) -> None:
        self.proc = proc
        self.reply_timeout_s = reply_timeout_s
        self.ready = 0  # the GOMAXPROCS it reported at start, once await_ready() read it
        self._pending = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.reply_timeout_s
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"pid {self.pid}: no reply within {self.reply_timeout_s}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise AssertionError(f"pid {self.pid} exited early ({self.proc.wait(5)}): {err}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()

    def ask(self, command: str) -> tuple[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        word, value = self.line().split()
        return word, int(value)

    def await_ready(self) -> int:
        word, value = self.line().split()
        assert word == "ready"
        self.ready = int(value)
        return self.ready

    def gomaxprocs(self) -> int:
        """What the Go runtime says right now (runtime.GOMAXPROCS(0))."""
        word, value = self.ask("get")
        assert word == "gomaxprocs"
        return value

    def set(self, n: int) -> int:
        word, value = self.ask(f"set {n}")
        assert word == "set"
        return value


@contextlib.contextmanager
def talking_to(proc: subprocess.Popen[bytes], reply_timeout_s: float) -> Iterator[MaxprocsClient]:
    """A client for the started `proc`; the process is killed and its pipes closed on leaving."""
    try:
        yield MaxprocsClient(proc, reply_timeout_s)
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
