"""The agent under test on 127.0.0.1: a free port, plain GETs, polling, /metrics parsed, and
`node-agent run` started and stopped the same way by every system test that needs the daemon."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]

Samples = dict[str, list[tuple[dict[str, str], float]]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); (0, b"") when nothing answered, so a poll can simply retry."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """The first truthy value of `pred()`; an OSError (a process or file not there yet) is a retry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            value = pred()
            if value:
                return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop(proc: subprocess.Popen[Any], grace_s: float = 60) -> None:
    """SIGTERM, and SIGKILL if it is still there after `grace_s` (its exit status is the caller's to check)."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def parse_samples(body: bytes) -> Samples:
    """A text exposition as sample name -> [(labels, value)], parsed by prometheus-client."""
    out: Samples = {}
    for fam in text_string_to_metric_families(body.decode("utf-8")):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def scrape(port: int) -> Samples:
    """The agent's /metrics, parsed."""
    return parse_samples(get(f"http://127.0.0.1:{port}/metrics")[1])


@contextlib.contextmanager
def running_agent(
    log: Path, port: int, *args: str, env: dict[str, str] | None = None, cgroup: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m agent run --interval 3 --listen 127.0.0.1:PORT ARGS`, its log in `log`, ready
    (`/readyz` 200) when entered; SIGTERM on leaving, and a clean exit is left to the test to assert.

    With `cgroup` (a v1 or v2 cgroup directory, e.g. a memory limit) the agent starts inside it.
    """

    def enter() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--interval", "3", "--listen", f"127.0.0.1:{port}", *args],
            cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=enter,  # noqa: PLW1509 - joins the cgroup before the interpreter starts
        )  # fmt: skip
    try:
        wait_for(
            lambda: proc.poll() is not None or get(f"http://127.0.0.1:{port}/readyz")[0] == 200,
            90,
            "the agent's /readyz",
        )
        assert proc.poll() is None, f"the agent exited with {proc.returncode}:\n{log.read_text()[-2000:]}"
        yield proc
    finally:
        stop(proc)
