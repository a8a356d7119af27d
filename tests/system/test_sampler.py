"""The BPF CPU sampler: pure helpers, diagnosis on fixture roots, and the real thing.

The BPF tests load bpf/profile.bpf.c into this machine's kernel, run CPU-bound
children and check what the drains report against what the timers must have
taken (sample_freq per CPU per second).
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import BPFUnavailableError, NodeAgentError
from agent.host import cpulist
from agent.sampling.kheaders import HeaderSearch
from agent.sampling.sampler import (
    LOST_REASONS,
    CategoryCount,
    DrainResult,
    Finding,
    Sample,
    Sampler,
    SamplerConfig,
    can_bpf_and_perf,
    diagnose,
    map_sizes,
    parse_cap_eff,
    parse_lockdown,
    raise_for,
    stack_from_ips,
)
from tests.support.capabilities import need

FREQ = 199


# --------------------------------------------------------------------------- pure helpers


def test_capabilities() -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000000000\n"
    assert parse_cap_eff(status) == (1 << 38) | (1 << 39)
    assert can_bpf_and_perf(parse_cap_eff(status))
    assert can_bpf_and_perf(1 << 21)  # CAP_SYS_ADMIN alone (pre-5.8 kernels)
    assert not can_bpf_and_perf(1 << 39)  # CAP_BPF without CAP_PERFMON
    assert not can_bpf_and_perf(parse_cap_eff("Name:\tx\n"))


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("[none] integrity confidentiality\n", "none"),
        ("none integrity [confidentiality]", "confidentiality"),
        ("", None),
    ],
)
def test_parse_lockdown(text: str, mode: str | None) -> None:
    assert parse_lockdown(text) == mode


def test_stack_from_ips() -> None:
    assert stack_from_ips([3, 2, 1, 0, 0, 7]) == (3, 2, 1)
    assert stack_from_ips([0, 0]) == ()
    assert stack_from_ips([5, 6]) == (5, 6)  # full depth: no terminator


def test_config_sizes_are_cflags_and_validated() -> None:
    cfg = SamplerConfig(count_entries=100, stack_entries=50, stack_depth=64, per_thread=True)
    assert cfg.cflags()[:4] == ["-DCOUNT_ENTRIES=100", "-DSTACK_ENTRIES=50", "-DSTACK_DEPTH=64", "-DPER_THREAD=1"]
    assert "-DMAX_RT=64" in cfg.cflags()
    assert SamplerConfig().sample_freq == 97
    for bad in ({"sample_freq": 0}, {"stack_depth": 128}, {"count_entries": 0}):
        with pytest.raises(NodeAgentError):
            SamplerConfig(**bad)  # type: ignore[arg-type]


def test_drain_result_totals() -> None:
    s = Sample(1, 0, 9, (), 5, user_stack_error=errno.EFAULT)
    cats = [CategoryCount(1, 9, "unknown", 5), CategoryCount(1, 9, "user", 5)]
    r = DrainResult([s], dict.fromkeys(LOST_REASONS, 0) | {"categories_full": 3}, 7, 1.0, categories=cats)
    assert (r.busy_samples, r.total_samples) == (10, 20)


@pytest.mark.parametrize(
    ("cpus", "freq", "interval", "sizes"),
    [
        (2, 97, 15.0, (4096, 4096)),  # today's small node: the floor
        (2, 9312, 5.0, (131072, 65536)),  # 18,624 samples/s: both at their caps
        (192, 97, 15.0, (131072, 65536)),
        (8, 97, 15.0, (16384, 16384)),
    ],
)
def test_map_sizes_follow_cpus_rate_and_interval(cpus: int, freq: int, interval: float, sizes: tuple[int, int]) -> None:
    assert map_sizes(cpus, freq, interval) == sizes


# --------------------------------------------------------------------------- diagnosis on fixture roots


def fake_roots(tmp_path: Path, *, cap_eff: str, lockdown: str | None, paranoid: str = "2") -> SamplerConfig:
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self/status").write_text(f"Name:\tagent\nCapEff:\t{cap_eff}\n")
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "sys/kernel/perf_event_paranoid").write_text(paranoid + "\n")
    (sysfs / "devices/system/cpu").mkdir(parents=True)
    (sysfs / "devices/system/cpu/online").write_text("0-3\n")
    if lockdown is not None:
        (sysfs / "kernel/security").mkdir(parents=True)
        (sysfs / "kernel/security/lockdown").write_text(lockdown)
    (tmp_path / "host/usr/src").mkdir(parents=True)
    headers = HeaderSearch(host_root=tmp_path / "host", sysfs=sysfs, release="6.18.1", environ={})
    return SamplerConfig(proc=proc, sysfs=sysfs, headers=headers)


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def test_diagnose_unprivileged_locked_down_without_headers(tmp_path: Path) -> None:
    cfg = fake_roots(tmp_path, cap_eff="0000000000000000", lockdown="none integrity [confidentiality]\n")
    found = by_check(diagnose(cfg))
    assert set(found) >= {"bcc", "privileges", "perf_event_paranoid", "lockdown", "kernel_headers", "cpus"}
    assert found["privileges"].severity == "error"
    assert "CAP_BPF+CAP_PERFMON" in found["privileges"].message
    assert "root" in found["privileges"].help
    assert found["perf_event_paranoid"].severity == "error"
    assert "perf_event_paranoid=2" in found["perf_event_paranoid"].message
    assert found["lockdown"].severity == "warning"
    assert "confidentiality" in found["lockdown"].message
    assert found["kernel_headers"].severity == "error"
    assert "no kernel headers for 6.18.1" in found["kernel_headers"].message
    assert "linux-headers-$(uname -r)" in found["kernel_headers"].help
    assert found["cpus"].ok
    assert "4 online CPUs" in found["cpus"].message

    with pytest.raises(BPFUnavailableError) as e:
        raise_for(list(found.values()))
    assert "CAP_BPF" in str(e.value)
    assert "no kernel headers" in str(e.value)
    assert "lockdown" not in str(e.value)  # a warning does not stop the sampler
    assert "--kernel-headers" in e.value.help


def test_diagnose_privileged_with_headers(tmp_path: Path) -> None:
    cfg = fake_roots(tmp_path, cap_eff="000000c000000000", lockdown="[none] integrity confidentiality\n")
    full = tmp_path / "host/usr/src/linux-6.18.1"
    for f in ("include/linux/kconfig.h", "include/generated/autoconf.h"):
        (full / f).parent.mkdir(parents=True, exist_ok=True)
        (full / f).write_text("")
    found = by_check(diagnose(cfg))
    for name in ("privileges", "perf_event_paranoid", "lockdown", "kernel_headers", "cpus"):
        assert found[name].ok, found[name]
    assert str(full) in found["kernel_headers"].message
    assert not (tmp_path / "host").joinpath("var").exists()  # diagnosis writes nothing


def have_bcc() -> bool:
    try:
        import bcc  # noqa: F401
    except Exception:
        return False
    return True


def test_sampler_refuses_without_privileges(tmp_path: Path) -> None:
    need(have_bcc(), "bcc Python bindings (python3-bpfcc)")
    cfg = fake_roots(tmp_path, cap_eff="0000000000000000", lockdown=None)
    with pytest.raises(BPFUnavailableError) as e:
        Sampler(cfg)
    assert "missing CAP_BPF+CAP_PERFMON" in str(e.value)
    assert "CAP_PERFMON" in e.value.help


@pytest.mark.bpf
def test_sampler_without_headers_says_what_is_missing(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "root (uid 0) is needed")
    need(have_bcc(), "bcc Python bindings (python3-bpfcc)")
    (tmp_path / "host/usr/src").mkdir(parents=True)
    search = HeaderSearch(host_root=tmp_path / "host", sysfs=tmp_path / "sys", environ={}, cache_dir=tmp_path / "c")
    with pytest.raises(BPFUnavailableError) as e:
        Sampler(SamplerConfig(headers=search))
    assert str(e.value).startswith(f"no kernel headers for {os.uname().release}: looked at ")
    assert str(tmp_path / "host/usr/src") in str(e.value)
    assert "install linux-headers-$(uname -r)" in e.value.help
    assert "--kernel-headers DIR" in e.value.help


@pytest.mark.bpf
def test_compile_error_is_reported_with_diagnostics(tmp_path: Path) -> None:
    bpf_ready()
    broken = tmp_path / "broken.bpf.c"
    broken.write_text("int on_cpu_sample(struct bpf_perf_event_data *ctx) { return undefined_thing; }\n")
    with pytest.raises(BPFUnavailableError) as e:
        Sampler(config(tmp_path, source=broken))
    assert "compiling broken.bpf.c" in str(e.value)
    assert "undefined_thing" in str(e.value)  # clang's own message, captured from fd 2


# --------------------------------------------------------------------------- the real sampler


def bpf_ready() -> None:
    need(os.geteuid() == 0, "root (uid 0) is needed to load BPF programs")
    need(have_bcc(), "bcc Python bindings (python3-bpfcc)")
    problems = [f.message for f in diagnose() if f.fatal and not f.ok]
    need(not problems, "; ".join(problems))


class Busy:
    """A CPU-bound child that reports through a pipe once it is spinning."""

    CODE = "import os, sys\nos.write(1, b'r')\nwhile True:\n    pass\n"

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.read(1) == b"r"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def busy() -> Iterator[Busy]:
    child = Busy()
    try:
        yield child
    finally:
        child.stop()


def config(cache: Path, **kw: Any) -> SamplerConfig:
    """Real settings, but the merged header tree goes to a test directory, not /var/cache."""
    return SamplerConfig(sample_freq=FREQ, headers=HeaderSearch(cache_dir=cache), **kw)


@pytest.fixture(scope="module")
def sampler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sampler]:
    bpf_ready()
    with Sampler(config(tmp_path_factory.mktemp("cache"))) as s:
        yield s


def count_for(result: DrainResult, tgid: int) -> int:
    return sum(c.count for c in result.categories if c.tgid == tgid)


def drain_until_sampled(sampler: Sampler, pid: int, within_s: float = 10.0) -> DrainResult:
    """One drain holding samples of ``pid`` (a loaded machine may starve it for a while)."""
    deadline = time.monotonic() + within_s
    while True:
        time.sleep(0.5)
        r = sampler.drain()
        if count_for(r, pid) or time.monotonic() > deadline:
            return r


def register_as_user_code(sampler: Sampler, pid: int) -> None:
    """Register a non-Go child as if all its code were Go user code: it then gets stacks too."""
    sampler.register(pid, text=(0, 1 << 47), hot=[], runtime=[])


def cpu_seconds(pid: int) -> float:
    """Time the kernel says the process ran (ns precision), so contention from other load does not matter."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def timed_drain(sampler: Sampler, pid: int) -> tuple[DrainResult, float]:
    """A drain and the child's CPU time at its flip (read right after; the drain takes milliseconds)."""
    r = sampler.drain()
    return r, cpu_seconds(pid)


@pytest.mark.bpf
def test_cpu_bound_child_dominates(sampler: Sampler, busy: Busy) -> None:
    register_as_user_code(sampler, busy.pid)
    _, ran_before = timed_drain(sampler, busy.pid)  # a clean interval with the child already spinning
    time.sleep(2.0)
    r, ran_after = timed_drain(sampler, busy.pid)
    mine = [s for s in r.samples if s.tgid == busy.pid]
    got = count_for(r, busy.pid)
    assert sum(s.count for s in mine) == got  # a registered process: every sample has a profile entry
    assert {c.category for c in r.categories if c.tgid == busy.pid} == {"user"}
    ran = ran_after - ran_before
    assert 1.9 < r.interval_seconds < 3.0
    assert ran > 0.15 * r.interval_seconds  # it did run: the comparison below means something
    assert 0.85 * FREQ * ran - 5 <= got <= 1.15 * FREQ * ran + 5, (got, FREQ * ran)
    per_tgid: dict[int, int] = {}
    for c in r.categories:
        per_tgid[c.tgid] = per_tgid.get(c.tgid, 0) + c.count
    others = [n for tgid, n in per_tgid.items() if tgid != busy.pid]
    # A spinning process is as busy as anything can be: no one else is far ahead of it
    # (other load on the machine may share the CPUs fairly with it, hence not "first").
    assert got >= 0.6 * max(others, default=0)
    with_stacks = sum(s.count for s in mine if s.user_stack)
    assert with_stacks >= 0.9 * got
    assert all(s.user_stack_error == 0 for s in mine if s.user_stack)
    assert all(s.tid == 0 for s in mine)  # per_thread is off
    assert got <= r.busy_samples <= r.total_samples <= 1.1 * FREQ * len(sampler.cpus) * r.interval_seconds


@pytest.mark.bpf
def test_cgroup_id_is_the_childs_cgroup_v2_inode(sampler: Sampler, busy: Busy) -> None:
    unified = next(
        (line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines() if " - cgroup2 " in line),
        None,
    )
    need(unified is not None, "a mounted cgroup v2 hierarchy")
    assert unified is not None
    rel = next(line[3:] for line in Path(f"/proc/{busy.pid}/cgroup").read_text().splitlines() if line.startswith("0::"))
    inode = os.stat(Path(unified) / rel.lstrip("/")).st_ino
    sampler.drain()
    time.sleep(0.5)
    ids = {c.cgroup_id for c in sampler.drain().categories if c.tgid == busy.pid}
    assert ids == {inode}


@pytest.mark.bpf
def test_drains_split_time_without_loss_or_repeats(sampler: Sampler, busy: Busy) -> None:
    _, ran = timed_drain(sampler, busy.pid)
    start = ran
    results = []
    for _ in range(8):
        time.sleep(0.25)
        r, now = timed_drain(sampler, busy.pid)
        results.append((r, now - ran))
        ran = now
    # Each drain holds its own interval only: no drain repeats earlier counts.
    for r, cpu in results:
        n = count_for(r, busy.pid)
        assert 0.7 * FREQ * cpu - 5 <= n <= 1.3 * FREQ * cpu + 5, (n, FREQ * cpu)
    # Together they hold the whole time: nothing is lost at the flips.
    total = sum(count_for(r, busy.pid) for r, _ in results)
    expected = FREQ * (ran - start)
    assert 0.88 * expected - 5 <= total <= 1.12 * expected + 5, (total, expected)
    assert max(r.drain_seconds for r, _ in results) < 0.25


@pytest.mark.bpf
def test_process_exiting_mid_cycle(sampler: Sampler) -> None:
    sampler.drain()
    child = Busy()
    try:
        time.sleep(0.4)
        ran = cpu_seconds(child.pid)
    finally:
        child.stop()  # gone, and reaped, before the drain
    r = sampler.drain()
    assert count_for(r, child.pid) >= 0.8 * FREQ * ran - 5
    assert count_for(r, child.pid) > 0
    assert r.categories  # the rest of the interval is intact
    assert sampler.drain().interval_seconds > 0  # and the sampler keeps going


@pytest.mark.bpf
def test_lost_reasons_are_all_there(sampler: Sampler) -> None:
    r = sampler.drain()
    assert list(r.lost) == list(LOST_REASONS)
    assert all(isinstance(v, int) and v >= 0 for v in r.lost.values())
    assert isinstance(r.idle_samples, int)
    assert r.idle_samples >= 0


@pytest.mark.bpf
def test_tiny_maps_count_what_they_drop(busy: Busy, tmp_path: Path) -> None:
    bpf_ready()
    others: list[Busy] = []
    try:
        for _ in range(3):
            others.append(Busy())
        cfg = config(tmp_path, count_entries=2, stack_entries=2, per_thread=True)
        with Sampler(cfg) as s:
            for child in (busy, *others):
                register_as_user_code(s, child.pid)
            s.drain()
            time.sleep(1.0)
            r = s.drain()
    finally:
        for o in others:
            o.stop()
    assert len(r.samples) <= 2
    assert r.lost["counts_full"] > 0
    assert r.lost["stacks_full"] > 0
    assert r.lost["categories_full"] == 0  # profile maps overflowing cost no category count
    # Four spinning processes keep every CPU busy, so the timers fire freq × CPUs × seconds
    # times; the samples the full map refused are still accounted for.
    everything = FREQ * len(s.cpus) * r.interval_seconds
    assert 0.85 * everything <= r.total_samples <= 1.1 * everything


@pytest.mark.bpf
def test_per_thread_keys(busy: Busy, tmp_path: Path) -> None:
    bpf_ready()
    with Sampler(config(tmp_path, per_thread=True)) as s:
        register_as_user_code(s, busy.pid)
        time.sleep(0.5)
        r = s.drain()
    tids = {x.tid for x in r.samples if x.tgid == busy.pid}
    assert tids == {busy.pid}  # the child's only thread is its main thread


def bpf_fds() -> dict[int, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("anon_inode:") and ("bpf" in link or "perf_event" in link):
            out[int(fd)] = link
    return out


def prog_exists(prog_id: int) -> bool:
    libbpf = ct.CDLL("libbpf.so.1", use_errno=True)
    fd = libbpf.bpf_prog_get_fd_by_id(ct.c_uint32(prog_id))
    if fd >= 0:
        os.close(fd)
        return True
    return False


@pytest.mark.bpf
def test_close_detaches_everything(busy: Busy, tmp_path: Path) -> None:
    bpf_ready()
    before = bpf_fds()
    s = Sampler(config(tmp_path))
    opened = {fd: link for fd, link in bpf_fds().items() if fd not in before}
    perf = [fd for fd, link in opened.items() if "perf_event" in link]
    assert len(perf) == len(s.cpus) == len(cpulist.parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text()))
    prog_ids = [
        int(line.split()[1])
        for fd, link in opened.items()
        if "bpf-prog" in link
        for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
        if line.startswith("prog_id:")
    ]
    assert prog_ids
    time.sleep(0.3)
    assert count_for(s.drain(), busy.pid) > 0

    s.close()
    s.close()  # idempotent
    assert s.closed
    assert bpf_fds() == before  # every perf event, program and map fd released
    with pytest.raises(BPFUnavailableError):
        s.drain()
    try:
        deadline = time.monotonic() + 5
        while any(prog_exists(p) for p in prog_ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(prog_exists(p) for p in prog_ids)  # the kernel freed the program: nothing samples
    except OSError:
        need(False, "libbpf.so.1 to look programs up by id")


@pytest.mark.bpf
def test_verifier_rejection_is_reported_with_its_log(tmp_path: Path) -> None:
    bpf_ready()
    before = bpf_fds()
    bad = tmp_path / "bad.bpf.c"
    bad.write_text(
        "int on_cpu_sample(struct bpf_perf_event_data *ctx) {\n"
        "    return *(volatile u32 *)(long)bpf_ktime_get_ns();  /* a scalar is not a pointer */\n"
        "}\n"
    )
    with pytest.raises(BPFUnavailableError) as e:
        Sampler(config(tmp_path, source=bad))
    assert "the kernel refused to load on_cpu_sample" in str(e.value)
    assert "invalid mem access" in str(e.value)  # the verifier's own words
    assert bpf_fds() == before  # the failed load released what it had opened


@pytest.mark.bpf
def test_a_stack_without_go_frames_is_unknown_never_user(sampler: Sampler, busy: Busy) -> None:
    """A registered process whose stack has no frame in its Go text: counted, as `unknown`, not `user`."""
    sampler.register(busy.pid, text=(1, 2), hot=[], runtime=[])
    try:
        sampler.drain()
        r = drain_until_sampled(sampler, busy.pid)
    finally:
        sampler.unregister(busy.pid)
    cats = {c.category: c.count for c in r.categories if c.tgid == busy.pid}
    assert set(cats) == {"unknown"} and cats["unknown"] > 0
    assert r.lost["user_stack_empty"] >= cats["unknown"]
    assert busy.pid not in sampler.registered


@pytest.mark.bpf
def test_an_unregistered_process_is_counted_without_a_stack_walk(sampler: Sampler, busy: Busy) -> None:
    sampler.unregister(busy.pid)
    sampler.drain()
    r = drain_until_sampled(sampler, busy.pid)
    assert {c.category for c in r.categories if c.tgid == busy.pid} == {"unregistered"}
    assert not [s for s in r.samples if s.tgid == busy.pid]  # no profile entry: nothing was walked
