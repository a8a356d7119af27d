"""The daemon loop's own health: failing cycles fail /healthz (with the reason), deadlines cut a
cycle short and are counted. In-process with a stand-in sampler; the HTTP server is the real one
on loopback. (The real daemon under hostile binaries and SIGTERM: tests/hostile/.)"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.analysis.pipeline import Deadline, Pipeline
from agent.commands.daemon import FAILING_CYCLES, Daemon, DaemonConfig
from agent.host.cgroupfs import HostCgroups
from agent.host.procfs import ProcessInfo, ProcFS
from agent.sampling.sampler import CategoryCount, DrainResult, Sample


class StandInSampler:
    """A cycle's drain() fails while ``failing`` is set (attaching still works); else an empty window."""

    failing = threading.Event()

    def __init__(self) -> None:
        self.drains = 0
        self.registered: dict[int, object] = {}

    def register(self, tgid: int, **_: object) -> None:
        self.registered[tgid] = _.get("token")

    def unregister(self, tgid: int) -> None:
        self.registered.pop(tgid, None)

    def drain(self) -> DrainResult:
        self.drains += 1
        if self.drains > 1 and self.failing.is_set():
            raise OSError("injected drain failure")
        return DrainResult(samples=[], lost={}, idle_samples=0, interval_seconds=0.05)

    def close(self) -> None:
        pass


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@contextmanager
def running_daemon() -> Iterator[Daemon]:
    cfg = DaemonConfig(interval_s=0.05, listen=(("127.0.0.1", 0),), bpf_retry_s=0.05)
    daemon = Daemon(cfg, sampler_factory=StandInSampler)  # type: ignore[arg-type]
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(10)
        assert not thread.is_alive()


def wait_for(pred: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_cycles_that_keep_failing_turn_healthz_503_with_the_reason() -> None:
    StandInSampler.failing.clear()
    with running_daemon() as daemon:
        wait_for(lambda: daemon.cycles >= 2)
        port = daemon.server.port
        assert healthz(port)[0] == 200
        StandInSampler.failing.set()
        wait_for(lambda: healthz(port)[0] == 503)
        _status, body = healthz(port)
        assert f"the last {FAILING_CYCLES} cycles failed" in body, body
        assert "injected drain failure" in body, body
        StandInSampler.failing.clear()  # one good cycle and it is healthy again
        wait_for(lambda: healthz(port)[0] == 200)
    StandInSampler.failing.clear()


def test_a_passed_deadline_skips_the_rest_of_the_window_and_is_counted() -> None:
    pipeline = Pipeline(ProcFS(Path("/proc")), HostCgroups(Path("/")))
    pids = [os.getpid(), os.getppid()]
    drain = DrainResult(
        samples=[Sample(pid, 0, 0, (0x401000,), 3) for pid in pids],
        lost={},
        idle_samples=0,
        interval_seconds=1,
        categories=[CategoryCount(pid, 0, "user", 3) for pid in pids],
    )
    result = pipeline.run(drain, frequency_hz=97, duration_s=1.0, deadline=Deadline(time.monotonic() - 1))
    assert pipeline.skipped_by_deadline == len(pids)
    assert pipeline.stats.errors["cycle_deadline"] == 1
    assert result.go == [] and any("deadline" in e for e in result.errors)
    # Those left out go first next time, so a backlog larger than one cycle still drains
    order: list[int] = []
    real_snapshot = pipeline.procfs.snapshot

    def snapshot(pid: int) -> ProcessInfo | None:
        order.append(pid)
        return real_snapshot(pid)

    pipeline.procfs.snapshot = snapshot  # type: ignore[method-assign]
    every = (1, *pids)
    samples = [Sample(pid, 0, 0, (0x401000,), 3) for pid in every]
    categories = [CategoryCount(pid, 0, "user", 3) for pid in every]
    wider = DrainResult(samples=samples, lost={}, idle_samples=0, interval_seconds=1, categories=categories)
    pipeline.run(wider, frequency_hz=97, duration_s=1.0, deadline=Deadline(time.monotonic() + 3600))
    assert order == [*sorted(pids), 1]
    stop = threading.Event()
    stop.set()  # SIGTERM: the same cut, however far away the deadline
    pipeline.run(drain, frequency_hz=97, duration_s=1.0, deadline=Deadline(time.monotonic() + 3600, stop))
    assert pipeline.skipped_by_deadline == len(pids)
