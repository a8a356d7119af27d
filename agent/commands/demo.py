"""`node-agent demo`: the problem node-agent finds, shown on one machine in about a minute.

Two copies of the bundled Go service (``agent/commands/demo/``) run side by side, each in
its own cgroup limited to 1 CPU: one with the GOMAXPROCS a big host gives it,
one with node-agent's recommendation. Both get the same closed-loop load from
loopback while the agent profiles the machine; then one table shows them side
by side, with the throughput the fix buys, and both pprof profiles are written.

Every process the demo starts (the two services and the two load generators)
runs inside one cgroup tree, ``node-agent-demo-<pid>``, so cleanup on any exit
path (an error, Ctrl-C, SIGTERM) is "kill what is in the tree, rmdir it". The
load generators get a child of their own (no limit): it keeps them from
competing with the services task-by-task on a small machine, which makes the
two copies' numbers far less noisy.

The CLI defines the ``demo`` options and imports this module only when the
demo runs; the heavy modules (bcc, rich, protobuf) come later still.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agent.analysis.verdict import Verdict, recommended_gomaxprocs
from agent.cachedir import cache_dir
from agent.errors import NodeAgentError
from agent.lab.cgroupwriter import HELP_CGROUP, JOIN_FAILED, CgroupTree, find_cpu_hierarchy, in_cgroup, remove_stale
from agent.lab.gotoolchain import HELP_GO, GoToolchain, build_program, find_toolchains, source_hash
from agent.shutdown import ignoring_signals, raising_signals

if TYPE_CHECKING:
    from agent.analysis.model import GoProcessReport, ScanResult

DEMO_SRC = Path(__file__).resolve().parent / "demo"
CGROUP_PREFIX = "node-agent-demo-"
LIMIT_CORES = 1.0
READY_TIMEOUT_S = 15.0
BUILD_TIMEOUT_S = 600
TAIL_S = 2.0  # the load runs this much longer than the profile, so the window never sees it wind down
MISCONFIGURED, FIXED, LOAD = "misconfigured", "fixed", "load"
# What the copies must not inherit from the caller's environment: they differ only in GOMAXPROCS.
_GO_RUNTIME_ENV = ("GOMAXPROCS", "GODEBUG", "GOGC", "GOMEMLIMIT", "GOTRACEBACK")
# A child joins its cgroup before the Go runtime starts (which sizes itself at start-up):
# the shell moves itself, then execs the program in place (same pid).
HELP_ROOT = "run it as root (sudo node-agent demo): it creates cgroups and loads a BPF program"


class DemoError(NodeAgentError):
    """The demo cannot run here, or one of its programs failed; ``help`` says what to do."""


# --------------------------------------------------------------------------- the Go service


def choose_toolchain(toolchains: list[GoToolchain]) -> GoToolchain | None:
    """The newest toolchain older than Go 1.25, else the newest.

    Before 1.25 the runtime ignores the CPU limit, as most services in production
    still do; from 1.25 on the demo's ``go 1.19`` go.mod keeps the container-aware
    default off anyway, and both copies get an explicit GOMAXPROCS regardless.
    """
    older = [t for t in toolchains if t.minor < (1, 25)]
    pool = older or toolchains
    return max(pool) if pool else None


def build_demo(toolchain: GoToolchain, src: Path = DEMO_SRC, cache: Path | None = None) -> tuple[Path, bool]:
    """(the service binary, whether it was built now): cached per source hash and toolchain."""
    base = (cache or cache_dir()) / "demo"
    out = base / source_hash(src) / f"demo-{toolchain.version_string}"
    return out, build_program(toolchain, src, out, cache=base, timeout_s=BUILD_TIMEOUT_S)


# --------------------------------------------------------------------------- children


class Children:
    """Every process the demo started, with its captured stderr; killed together."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stderr: dict[int, IO[bytes]] = {}

    def spawn(
        self,
        argv: list[str],
        cgroup: Path,
        env: dict[str, str],
        *,
        pass_fds: tuple[int, ...] = (),
        stdout: int = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        err = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; kill_all closes it
        try:
            proc = subprocess.Popen(
                in_cgroup(argv, cgroup),
                env=env,
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=err,
                process_group=0,  # a terminal's Ctrl-C reaches only us: we stop them, after the sampler
            )
        except BaseException:
            err.close()
            raise
        self.procs.append(proc)
        self._stderr[proc.pid] = err
        return proc

    def failure(self, proc: subprocess.Popen[bytes], what: str) -> DemoError:
        """Why ``proc`` stopped, with the tail of its stderr."""
        code = proc.poll()
        err = self._stderr.get(proc.pid)
        tail = ""
        if err is not None:
            err.seek(0)
            tail = " | ".join(err.read().decode(errors="replace").strip().splitlines()[-4:])
        if code == JOIN_FAILED:
            return DemoError(f"{what} could not join its cgroup: {tail}", help=HELP_CGROUP)
        status = "is still running" if code is None else f"exited with status {code}"
        return DemoError(f"{what} {status}" + (f": {tail}" if tail else ""), help="see the message above")

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            for f in (proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
        for err in self._stderr.values():
            err.close()
        self._stderr.clear()


def _clean_env(gomaxprocs: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GO_RUNTIME_ENV}
    if gomaxprocs is not None:
        env["GOMAXPROCS"] = str(gomaxprocs)
    return env


def _read_ready(fd: int, timeout_s: float) -> str:
    """The line a service writes once it listens ('' if it closed the pipe or timed out)."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 256)
        if not chunk:
            return ""
        data += chunk
    return data.split(b"\n", 1)[0].decode().strip()


@dataclass
class Service:
    name: str
    gomaxprocs: int
    cgroup: Path
    proc: subprocess.Popen[bytes]
    addr: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.addr}/work"


def start_service(children: Children, binary: Path, name: str, cgroup: Path, gomaxprocs: int) -> Service:
    r, w = os.pipe()
    try:
        try:
            proc = children.spawn(
                [str(binary), "serve", "-addr", "127.0.0.1:0", "-ready-fd", str(w)],
                cgroup,
                _clean_env(gomaxprocs),
                pass_fds=(w,),
            )
        finally:
            os.close(w)
        addr = _read_ready(r, READY_TIMEOUT_S)
    finally:
        os.close(r)
    if not addr:
        raise children.failure(proc, f"the {name} demo service (GOMAXPROCS={gomaxprocs})")
    return Service(name, gomaxprocs, cgroup, proc, addr)


@dataclass(frozen=True)
class LoadStats:
    requests: int
    errors: int
    seconds: float
    rps: float


def parse_load(text: str) -> LoadStats | None:
    """The load generator's one JSON line."""
    for line in reversed(text.strip().splitlines()):
        try:
            d = json.loads(line)
            return LoadStats(int(d["requests"]), int(d["errors"]), float(d["seconds"]), float(d["rps"]))
        except (ValueError, KeyError, TypeError):
            continue
    return None


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class DemoConfig:
    duration_s: float = 30.0  # profiling window
    warmup_s: float = 3.0  # load before the window opens: connections made, heaps grown
    concurrency: int = 8
    big_gomaxprocs: int = 64
    frequency_hz: int = 97
    out_dir: Path = Path("node-agent-demo-profiles")
    kernel_headers: Path | None = None
    cgroup_fs: Path = Path("/sys/fs/cgroup")
    progress: bool = True


@dataclass
class CopyResult:
    name: str
    gomaxprocs_set: int
    pid: int
    cgroup: str
    load: LoadStats
    report: GoProcessReport
    window_s: float
    pprof: Path | None = None

    @property
    def cpu_cores(self) -> float:
        """CPU used, in cores, averaged over the profile window."""
        return self.report.cpu_seconds / self.window_s if self.window_s > 0 else 0.0

    @property
    def cpu_ms_per_request(self) -> float | None:
        return 1000 * self.cpu_cores / self.load.rps if self.load.rps > 0 else None

    def to_json(self) -> dict[str, Any]:
        per_req = self.cpu_ms_per_request
        return {
            "name": self.name,
            "gomaxprocs_set": self.gomaxprocs_set,
            "pid": self.pid,
            "cgroup": self.cgroup,
            "load": {
                "requests": self.load.requests,
                "errors": self.load.errors,
                "seconds": self.load.seconds,
                "rps": self.load.rps,
            },
            "rps": self.load.rps,
            "cpu_seconds": round(self.report.cpu_seconds, 4),
            "cpu_cores": round(self.cpu_cores, 4),
            "cpu_ms_per_request": None if per_req is None else round(per_req, 4),
            "pprof": None if self.pprof is None else str(self.pprof),
            "report": self.report.to_json(),
        }


@dataclass
class DemoResult:
    misconfigured: CopyResult
    fixed: CopyResult
    window_s: float
    frequency_hz: int
    concurrency: int
    toolchain: str
    binary: Path
    cgroup_version: int
    warnings: list[str] = field(default_factory=list)

    @property
    def copies(self) -> tuple[CopyResult, CopyResult]:
        return self.misconfigured, self.fixed

    @property
    def throughput_gain(self) -> float | None:
        """rps fixed / rps misconfigured - 1."""
        before, after = self.misconfigured.load.rps, self.fixed.load.rps
        return after / before - 1 if before > 0 else None

    def to_json(self) -> dict[str, Any]:
        gain = self.throughput_gain
        return {
            "duration_s": round(self.window_s, 3),
            "frequency_hz": self.frequency_hz,
            "concurrency": self.concurrency,
            "cpu_limit_cores": LIMIT_CORES,
            "toolchain": self.toolchain,
            "binary": str(self.binary),
            "cgroup_version": self.cgroup_version,
            "copies": [c.to_json() for c in self.copies],
            "throughput_gain": None if gain is None else round(gain, 4),
            "warnings": self.warnings,
        }


def need_root() -> None:
    if os.geteuid() != 0:
        raise DemoError("node-agent demo needs root", help=HELP_ROOT)


def need_toolchain(toolchains: list[GoToolchain] | None = None) -> GoToolchain:
    tc = choose_toolchain(find_toolchains() if toolchains is None else toolchains)
    if tc is None:
        raise DemoError("no Go toolchain found to build the demo service", help=HELP_GO)
    return tc


def fixed_gomaxprocs() -> int:
    """node-agent's recommendation for a 1-CPU limit on this machine (what the fixed copy runs with)."""
    try:
        cpus = len(os.sched_getaffinity(0))  # what the pipeline sees for our children
    except OSError:
        cpus = os.cpu_count() or 1
    rec = recommended_gomaxprocs(LIMIT_CORES, cpus)
    assert rec is not None
    return rec


def _profile(
    cfg: DemoConfig,
    services: list[Service],
    loads: list[subprocess.Popen[bytes]],
    start_load: Callable[[], None],
    children: Children,
    say: Callable[[str], None],
) -> ScanResult:
    """Attach the sampler, start the load, then profile one window inside it.

    The sampler compiles and attaches first so that none of that time eats into
    the load; the window opens after the warm-up and closes before the load ends.
    """
    from agent.commands.scan import collect_shown  # noqa: PLC0415
    from agent.commands.wiring import build_pipeline  # noqa: PLC0415
    from agent.sampling.sampler import Sampler  # noqa: PLC0415

    pids = {s.pid for s in services}
    wiring = build_pipeline(cfg.frequency_hz, kernel_headers=cfg.kernel_headers)
    pipeline = wiring.pipeline

    def check_alive() -> None:
        for s in services:
            if s.proc.poll() is not None:
                raise children.failure(s.proc, f"the {s.name} demo service")
        for p in loads:
            if p.poll() not in (None, 0):
                raise children.failure(p, "a load generator")

    def tick(_elapsed: float) -> None:
        check_alive()

    say("attaching the BPF sampler to every CPU")
    with Sampler(wiring.sampler) as sampler:
        start_load()
        say(f"warming up for {cfg.warmup_s:g}s, then profiling every CPU for {cfg.duration_s:g}s")
        deadline = time.monotonic() + cfg.warmup_s
        while time.monotonic() < deadline:
            check_alive()
            time.sleep(0.1)
        pipeline.register_all(sampler, pids)  # the kernel classifies the services' samples from now on
        start = time.monotonic()
        sampler.drain()  # the window opens at this flip: nothing from start-up or warm-up
        pipeline.begin_window(pids)
        # Reading the warm-up's samples can take a while on a saturated machine; the window
        # is already open, so it counts against the duration.
        left = max(0.0, cfg.duration_s - (time.monotonic() - start))
        drain = collect_shown(sampler, left, cfg.frequency_hz, progress=cfg.progress, tick=tick)
        end = time.monotonic()
    # Flip to flip: what the samples cover. A drain that is slow on a busy machine
    # happens after its flip, so it must not count into the window.
    window = drain.interval_seconds if drain.interval_seconds > 0 else end - start
    ours = dataclasses.replace(
        drain,
        samples=[s for s in drain.samples if s.tgid in pids],
        categories=[c for c in drain.categories if c.tgid in pids],
    )
    result = pipeline.run(ours, frequency_hz=cfg.frequency_hz, duration_s=window)
    result.window = (start, start + window)
    return result


def start_load(
    cfg: DemoConfig,
    binary: Path,
    services: list[Service],
    cgroup: Path,
    loads: list[subprocess.Popen[bytes]],
    children: Children,
) -> None:
    """Both load generators, back to back: same concurrency, same duration."""
    seconds = cfg.warmup_s + cfg.duration_s + TAIL_S
    for s in services:
        argv = [str(binary), "load", "-url", s.url, "-c", str(cfg.concurrency), "-d", f"{seconds:.3f}s"]
        loads.append(children.spawn(argv, cgroup, _clean_env(None), stdout=subprocess.PIPE))


def _finish_load(loads: list[subprocess.Popen[bytes]], children: Children, timeout_s: float) -> list[LoadStats]:
    stats = []
    deadline = time.monotonic() + timeout_s
    for p in loads:
        try:
            out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise children.failure(p, "a load generator") from None
        parsed = parse_load(out.decode(errors="replace")) if p.returncode == 0 else None
        if parsed is None:
            raise children.failure(p, "a load generator")
        stats.append(parsed)
    return stats


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = lambda _m: None) -> DemoResult:
    """Build, run, load and profile both copies; everything started here is gone when it returns.

    SIGINT raises KeyboardInterrupt and SIGTERM :class:`agent.shutdown.Terminated` for the
    whole run, so the cleanup below runs on those paths too.
    """
    from agent.sampling.sampler import SamplerConfig, diagnose, raise_for  # noqa: PLC0415

    need_root()
    hierarchy = find_cpu_hierarchy(cfg.cgroup_fs)
    toolchain = need_toolchain()
    fixed = fixed_gomaxprocs()
    if cfg.big_gomaxprocs <= fixed:
        raise DemoError(
            f"--big-gomaxprocs {cfg.big_gomaxprocs} is not above the recommended {fixed}",
            help="pass a larger value, e.g. 64",
        )
    # Fail fast, before a build: the sampler checks again (and compiles) later.
    raise_for(diagnose(SamplerConfig.for_host(cfg.frequency_hz, kernel_headers=cfg.kernel_headers)))
    with raising_signals():
        say(f"building the demo service with {toolchain.version_string}")
        binary, built = build_demo(toolchain)
        say(f"{'built' if built else 'using the cached'} {binary}")
        warnings = remove_stale(hierarchy.root, CGROUP_PREFIX)
        tree = CgroupTree(hierarchy, f"{CGROUP_PREFIX}{os.getpid()}")
        children = Children()
        try:
            services, scan, stats = _run(cfg, binary, tree, children, fixed, say)
        finally:
            with ignoring_signals():  # a second Ctrl-C must not stop the cleanup half-way
                children.kill_all()
                problem = tree.remove()
            if problem:
                print(f"node-agent demo: warning: {problem}", file=sys.stderr)
    rows = {r.pid: r for r in scan.go}
    copies = []
    for s, load in zip(services, stats, strict=True):
        report = rows.get(s.pid)
        if report is None:
            raise DemoError(
                f"the profile has no samples of the {s.name} copy (pid {s.pid})",
                help="it got no CPU while profiling: the machine is too busy (see `node-agent scan` for what ran); "
                "retry when it is quieter, or with a longer --duration",
            )
        copies.append(CopyResult(s.name, s.gomaxprocs, s.pid, tree.rel(s.cgroup), load, report, scan.duration_s))
    warnings.extend(scan.errors)
    return DemoResult(
        misconfigured=copies[0],
        fixed=copies[1],
        window_s=scan.duration_s,
        frequency_hz=scan.frequency_hz,
        concurrency=cfg.concurrency,
        toolchain=toolchain.version_string,
        binary=binary,
        cgroup_version=hierarchy.version,
        warnings=warnings,
    )


def _run(
    cfg: DemoConfig, binary: Path, tree: CgroupTree, children: Children, fixed: int, say: Callable[[str], None]
) -> tuple[list[Service], ScanResult, list[LoadStats]]:
    """The part that needs cleaning up after: the caller removes ``tree`` and kills ``children``."""
    tree.create()
    cg_bad = tree.child(MISCONFIGURED, LIMIT_CORES)
    cg_fixed = tree.child(FIXED, LIMIT_CORES)
    cg_load = tree.child(LOAD, None)
    services = [
        start_service(children, binary, MISCONFIGURED, cg_bad, cfg.big_gomaxprocs),
        start_service(children, binary, FIXED, cg_fixed, fixed),
    ]
    say(
        f"started two copies in {tree.path}, each limited to {LIMIT_CORES:g} CPU: "
        f"GOMAXPROCS={cfg.big_gomaxprocs} (pid {services[0].pid}) and GOMAXPROCS={fixed} (pid {services[1].pid})"
    )
    loads: list[subprocess.Popen[bytes]] = []
    scan = _profile(
        cfg,
        services,
        loads,
        lambda: start_load(cfg, binary, services, cg_load, loads, children),
        children,
        say,
    )
    stats = _finish_load(loads, children, TAIL_S + 30)
    for s in services:
        if s.proc.poll() is not None:
            raise children.failure(s.proc, f"the {s.name} demo service")
    return services, scan, stats


# --------------------------------------------------------------------------- output


def write_profiles(result: DemoResult, out_dir: Path) -> list[Path]:
    """One gzipped pprof profile per copy, named after it (a rerun overwrites them)."""
    from agent.export.pprof import ProfilePart, build_profile, write_profile  # noqa: PLC0415

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoError(f"cannot create {out_dir}: {exc.strerror or exc}", help="pass another --out") from None
    period_ns = round(1e9 / result.frequency_hz)
    paths = []
    for c in result.copies:
        r = c.report
        prof = build_profile(
            [ProfilePart(r.profile, r.exe, r.build_id)],
            period_ns=period_ns,
            duration_ns=round(result.window_s * 1e9),
            labels={"copy": c.name, "gomaxprocs": str(c.gomaxprocs_set), "cgroup": c.cgroup, "pid": str(c.pid)},
        )
        path = out_dir / f"{c.name}-gomaxprocs-{c.gomaxprocs_set}.pb.gz"
        write_profile(str(path), prof)
        c.pprof = path
        paths.append(path)
    return paths


def pprof_command(path: Path) -> str:
    """How to open a profile: `go` from PATH, else the toolchain node-agent found."""
    go = "go"
    if shutil.which("go") is None:
        tc = choose_toolchain(find_toolchains())
        go = str(tc.go) if tc is not None else "go"
    return f"{go} tool pprof -http=127.0.0.1:8080 {path}"


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def render(result: DemoResult, out: IO[str], *, width: int | None = None) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    from agent.analysis.goruntime import Category  # noqa: PLC0415

    style = {Verdict.ABOVE: "bold red", Verdict.BELOW: "bold yellow", Verdict.OK: "green"}
    console = Console(file=out, width=width or 120, highlight=False, soft_wrap=False)
    bad, good = result.copies
    console.print(
        Text("node-agent demo: ", style="bold")
        + Text(
            f"the same Go service ({result.toolchain}) twice, each copy limited to {LIMIT_CORES:g} CPU, "
            f"the same load on both ({result.concurrency} clients each); "
            f"{result.window_s:.0f}s profiled at {result.frequency_hz} Hz"
        )
    )
    table = Table()
    table.add_column("")
    table.add_column(f"{bad.name} (pid {bad.pid})", justify="right")
    table.add_column(f"{good.name} (pid {good.pid})", justify="right")

    def row(label: str, fn: Callable[[CopyResult], str | Text]) -> None:
        table.add_row(label, fn(bad), fn(good))

    def limit(c: CopyResult) -> str:
        lim = c.report.cpu_limit_cores
        return "none" if lim is None else f"{lim:g} CPU"

    def per_request(c: CopyResult) -> str:
        v = c.cpu_ms_per_request
        return "-" if v is None else f"{v:.2f} ms"

    row("requests/s", lambda c: f"{c.load.rps:.0f}")
    row("CPU used", lambda c: f"{c.report.cpu_seconds:.1f} s ({c.cpu_cores:.2f} cores)")
    row("scheduler", lambda c: _pct(c.report.shares.get(Category.SCHEDULER, 0.0)))
    row("gc", lambda c: _pct(c.report.shares.get(Category.GC, 0.0)))
    row("runtime other", lambda c: _pct(c.report.shares.get(Category.RUNTIME_OTHER, 0.0)))
    row("user", lambda c: _pct(c.report.shares.get(Category.USER, 0.0)))
    row("GOMAXPROCS", lambda c: f"{c.report.gomaxprocs if c.report.gomaxprocs is not None else '?'}")
    row("  source", lambda c: c.report.gomaxprocs_source)
    row("CPU limit", limit)
    row("throttled", lambda c: "-" if c.report.throttled_ratio is None else _pct(c.report.throttled_ratio))
    row("verdict", lambda c: Text(str(c.report.verdict), style=style.get(c.report.verdict, "magenta")))
    row(
        "recommended",
        lambda c: "-" if c.report.recommended_gomaxprocs is None else str(c.report.recommended_gomaxprocs),
    )
    console.print(table)
    gain = result.throughput_gain
    if gain is not None:
        console.print(
            Text("Throughput gained by the fix: ", style="bold")
            + Text(f"{gain * 100:+.0f}%", style="bold green" if gain > 0 else "bold red")
            + Text(f" ({bad.load.rps:.0f} -> {good.load.rps:.0f} requests/s on the same {LIMIT_CORES:g}-CPU limit)")
        )
    console.print(f"CPU per request: {per_request(bad)} ({bad.name}) vs {per_request(good)} ({good.name})")
    console.print(Text(f"{bad.name}: ", style="bold") + Text(bad.report.explanation))
    if bad.report.fix:
        console.print(f"  fix: {bad.report.fix}")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig(
        duration_s=args.duration,
        warmup_s=args.warmup,
        concurrency=args.concurrency,
        big_gomaxprocs=args.big_gomaxprocs,
        frequency_hz=args.frequency,
        out_dir=args.out,
        kernel_headers=args.kernel_headers,
        progress=not args.json,
    )

    def say(msg: str) -> None:
        if not args.json:
            print(f"• {msg}", file=sys.stderr, flush=True)

    result = run_demo(cfg, say)
    paths = write_profiles(result, cfg.out_dir)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        hint_to = sys.stderr
    else:
        render(result, sys.stdout)
        hint_to = sys.stdout
    print(f"pprof profiles of both copies in {cfg.out_dir}/; open one with:", file=hint_to)
    for p in paths:
        print(f"  {pprof_command(p)}", file=hint_to)
    sys.stdout.flush()
    return 0
