"""GOMAXPROCS of real Go processes: live memory reads and every inference rule.

The program under test (tests/goprogs/maxprocs) reports its own
``runtime.GOMAXPROCS(0)`` on stdout and changes it on command (stdin line
protocol, no sleeps), so every value node-agent reads from memory or infers
is compared with what the Go runtime itself says, never with a constant
alone.

- live: every installed toolchain x {exe, pie} x {full, strip, -s -w}; the
  address of ``runtime.gomaxprocs`` from the symbol table, or from the code of
  ``runtime.GOMAXPROCS`` in stripped builds (== the unstripped twin's symbol);
- inferred: ``infer(Facts)`` built the way the pipeline builds it (procfs
  snapshot + the binary's build info + the host cgroup) against the live
  value, rule name included, for env, cpus (affinity), Go 1.25's cgroup rule,
  containermaxprocs=0 (GODEBUG and a go.mod <= 1.24) and automaxprocs (a
  stand-in module with the real module path, tests/goprogs/automaxprocs_standin);
- a process that exits between snapshot and read fails with a NodeAgentError.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.analysis.gomaxprocs import Facts, Gomaxprocs, infer, read_live
from agent.errors import NodeAgentError, ProcessGoneError
from agent.gobinary.globals import gomaxprocs_address
from agent.gobinary.symbolizer import GoBinary
from agent.host.cgroupfs import HostCgroups
from agent.host.procfs import ProcessInfo, ProcFS
from agent.lab.cgroupwriter import in_cgroup
from agent.lab.gotoolchain import GoToolchain, find_toolchains
from tests.support import gobuild
from tests.support.capabilities import need
from tests.support.maxprocs import MaxprocsClient, talking_to
from tests.support.workloads import Cgroup, v1_cgroup

GOPROGS = Path(__file__).resolve().parents[1] / "goprogs"
MAXPROCS = GOPROGS / "maxprocs"  # module go 1.19: the live matrix, and DefaultGODEBUG containermaxprocs=0
GO125 = MAXPROCS / "go125"  # same program, module go 1.25: container-aware default on
WITH_AUTOMAXPROCS = MAXPROCS / "withautomaxprocs"  # same program + go.uber.org/automaxprocs (stand-in)
STANDIN = GOPROGS / "automaxprocs_standin"
EXPECTED_MINORS = [(1, 19), (1, 21), (1, 23), (1, 25), (1, 27)]
REPLY_TIMEOUT_S = 10.0
HOST_CPUS = len(os.sched_getaffinity(0))
ONE_CPU = {min(os.sched_getaffinity(0))}

pytestmark = pytest.mark.gotoolchain


# ---- building ------------------------------------------------------------------------------


def _toolchain(minor: tuple[int, int]) -> GoToolchain:
    found = [t for t in find_toolchains() if t.minor == minor]
    need(bool(found), f"Go {minor[0]}.{minor[1]} toolchain (run scripts/setup.sh)")
    return found[-1]


def _build_module(tc: GoToolchain, module: Path) -> Path:
    """A nested module's exe, cached by every source it compiles (its own tree hash would miss ../)."""
    key = hashlib.sha256((gobuild.source_hash(MAXPROCS) + gobuild.source_hash(STANDIN)).encode()).hexdigest()[:16]
    out = gobuild.testbins_dir() / f"maxprocs-modules-{key}" / tc.version_string / module.name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [str(tc.go), "build", "-buildvcs=false", "-o", str(tmp), "."],
            cwd=module,
            env=gobuild.go_env(tc),
            capture_output=True,
            text=True,
            timeout=gobuild.BUILD_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            raise gobuild.GoBuildError(f"go build in {module} with {tc.version_string}:\n{proc.stderr}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ---- running -------------------------------------------------------------------------------


@contextlib.contextmanager
def run_go(
    binary: Path,
    env: dict[str, str] | None = None,
    cgroup: Cgroup | None = None,
    cpus: set[int] | None = None,
) -> Iterator[MaxprocsClient]:
    """Start ``binary`` (in ``cgroup``, pinned to ``cpus``, both before exec: the runtime
    reads them at start); ready once it printed "ready N". Killed on every exit path."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("GOMAXPROCS", "GODEBUG")}
    full_env.update(env or {})

    def before_exec() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.Popen(
        in_cgroup([str(binary)], cgroup.path if cgroup is not None else None),
        env=full_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=before_exec,  # noqa: PLW1509 - the affinity must be set before the Go runtime starts
    )
    with talking_to(proc, REPLY_TIMEOUT_S) as gp:
        gp.await_ready()
        yield gp


# ---- observing (what the pipeline does, step by step) ----------------------------------------


@dataclass(frozen=True)
class Observed:
    info: ProcessInfo
    binary: GoBinary
    address: int  # link-time address of runtime.gomaxprocs
    how: str  # "symbol" | "code of runtime.GOMAXPROCS"
    bias: int
    live: int
    facts: Facts
    inferred: Gomaxprocs


def facts_of(info: ProcessInfo, binary: GoBinary) -> Facts:
    bi = binary.buildinfo
    assert bi is not None
    cg = HostCgroups().facts(info.cgroup or "")
    return Facts(
        go_version=bi.version_tuple,
        env_gomaxprocs=info.gomaxprocs_env,
        env_godebug=info.godebug_env,
        default_godebug=bi.default_godebug,
        automaxprocs=bi.automaxprocs,
        affinity_cpus=info.affinity_cpus,
        leaf_limit=cg.leaf_limit,
        effective_limit=cg.effective_limit,
    )


def observe(pid: int) -> Observed:
    procfs = ProcFS()
    info = procfs.snapshot(pid)
    assert info is not None and info.exe is not None
    binary = GoBinary.open(info.exe.open_path)  # through /proc/PID/exe, as the agent opens it
    found = gomaxprocs_address(binary)
    assert found is not None, "no address for runtime.gomaxprocs"
    bias = binary.load_bias((m.start, m.offset) for m in info.exe_mappings())
    assert bias is not None
    live = read_live(procfs.memory_reader(info.key), found[0] + bias)
    facts = facts_of(info, binary)
    return Observed(info, binary, found[0], found[1], bias, live, facts, infer(facts))


def assert_inferred(o: Observed, runtime_says: int, rule: str) -> None:
    assert o.live == runtime_says, f"live read {o.live}, runtime says {runtime_says}"
    assert (o.inferred.value, o.inferred.source) == (runtime_says, f"inferred:{rule}"), (o.inferred, o.facts)


# ---- 1. live reads, every toolchain x mode x variant -----------------------------------------


@pytest.mark.parametrize("variant", gobuild.VARIANTS)
@pytest.mark.parametrize("mode", gobuild.MODES)
@pytest.mark.parametrize("minor", EXPECTED_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_live_read_follows_runtime(minor: tuple[int, int], mode: str, variant: str) -> None:
    tc = _toolchain(minor)
    path = gobuild.build_one(tc, MAXPROCS, mode, variant)
    with run_go(path, {"GOMAXPROCS": "3"}) as gp:
        o = observe(gp.pid)
        assert gp.ready == 3
        assert o.live == 3
        assert o.how == ("symbol" if variant == "full" else "code of runtime.GOMAXPROCS")
        if mode == "exe":
            assert o.bias == 0
        else:
            assert o.bias != 0 and o.binary.image.is_pie
        if variant == "strip":
            twin = GoBinary.open(gobuild.build_one(tc, MAXPROCS, mode, "full"))
            sym = twin.image.symbol("runtime.gomaxprocs")
            assert sym is not None
            assert o.address == sym[0], f"code scan found {o.address:#x}, symbol is at {sym[0]:#x}"
        read = ProcFS().memory_reader(o.info.key)
        # The runtime changes it (a stop-the-world in runtime.GOMAXPROCS); the same address follows.
        for n in (1, 7, 2):
            assert gp.set(n) == n
            assert read_live(read, o.address + o.bias) == n == gp.gomaxprocs()


# ---- 2. inference rules on real processes ----------------------------------------------------


@pytest.mark.cgroup
@pytest.mark.parametrize("minor", EXPECTED_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_env_rule_beats_cgroup(minor: tuple[int, int]) -> None:
    binary = gobuild.build_one(_toolchain(minor), MAXPROCS, "exe", "full")
    with v1_cgroup("gmp-env", 1.0) as cg, run_go(binary, {"GOMAXPROCS": "5"}, cgroup=cg) as gp:
        o = observe(gp.pid)
        assert o.facts.leaf_limit == 1.0
        assert gp.ready == 5
        assert_inferred(o, gp.gomaxprocs(), "env")


@pytest.mark.parametrize(
    "value",
    [" 3", "3 ", "+3", "-3", "0", "", "３", "³", "99999999999", "9" * 5000],
    ids=["lead-space", "trail-space", "plus", "neg", "zero", "empty", "fullwidth", "superscript", "overflow", "huge"],
)
def test_env_values_go_ignores(value: str) -> None:
    """Go's runtime takes GOMAXPROCS only as a positive decimal int32, no spaces
    (strconv.Atoi32): anything else is ignored, and inference must agree."""
    binary = gobuild.build_one(_toolchain((1, 21)), MAXPROCS, "exe", "full")
    with run_go(binary, {"GOMAXPROCS": value}) as gp:
        o = observe(gp.pid)
        assert o.info.gomaxprocs_env == value
        assert gp.ready == HOST_CPUS
        assert_inferred(o, gp.ready, "cpus")


def test_env_leading_zeros_count() -> None:
    binary = gobuild.build_one(_toolchain((1, 21)), MAXPROCS, "exe", "full")
    with run_go(binary, {"GOMAXPROCS": "007"}) as gp:
        assert gp.ready == 7
        assert_inferred(observe(gp.pid), 7, "env")


@pytest.mark.parametrize("minor", [(1, 19), (1, 21), (1, 23)], ids=lambda m: f"go1.{m[1]}")
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned-1cpu", "all-cpus"])
def test_cpus_rule(minor: tuple[int, int], pinned: bool) -> None:
    binary = gobuild.build_one(_toolchain(minor), MAXPROCS, "exe", "full")
    with run_go(binary, cpus=ONE_CPU if pinned else None) as gp:
        o = observe(gp.pid)
        assert o.info.affinity_cpus == (1 if pinned else HOST_CPUS)
        assert gp.ready == o.info.affinity_cpus
        assert_inferred(o, gp.ready, "cpus")


GO125_MINORS = [(1, 25), (1, 27)]


@pytest.mark.cgroup
@pytest.mark.parametrize("minor", GO125_MINORS, ids=lambda m: f"go1.{m[1]}")
@pytest.mark.parametrize("pinned", [False, True], ids=["all-cpus", "pinned-1cpu"])
def test_go125_cgroup_rule(minor: tuple[int, int], pinned: bool) -> None:
    """Go >= 1.25, module go 1.25: min(CPUs, max(2, ceil(leaf quota))).

    With a 1-core quota the rule gives 2, which differs from the CPU count only
    on a machine with >= 3 CPUs; on this 2-CPU VM min(2, max(2, 1)) == 2 == the
    CPU count (and pinned to one CPU both give 1), so here the test can only
    check that the rule's value equals the live one and that the rule is named;
    with more CPUs it also proves the cgroup was taken into account.
    """
    binary = _build_module(_toolchain(minor), GO125)
    with v1_cgroup("gmp-go125", 1.0) as cg, run_go(binary, cgroup=cg, cpus=ONE_CPU if pinned else None) as gp:
        o = observe(gp.pid)
        assert "containermaxprocs=0" not in o.facts.default_godebug
        assert o.facts.leaf_limit == 1.0
        cpus = o.info.affinity_cpus
        expected = min(cpus, 2)
        assert gp.ready == expected
        assert_inferred(o, gp.gomaxprocs(), "go125-cgroup")
        if cpus >= 3:
            assert o.inferred.value != cpus, "the cgroup rule must be visible with >= 3 CPUs"


@pytest.mark.cgroup
@pytest.mark.parametrize("minor", GO125_MINORS, ids=lambda m: f"go1.{m[1]}")
@pytest.mark.parametrize(
    ("module", "godebug", "rule"),
    [
        ("go125", "containermaxprocs=0", "cpus"),
        ("go125", "containermaxprocs=00", "cpus"),  # Go parses it as the integer 0
        ("go125", "containermaxprocs=-1", "cpus"),  # enabled only when > 0
        ("go125", "containermaxprocs=x", "go125-cgroup"),  # unparsable: the default stays (on)
        ("go125", "containermaxprocs=0,containermaxprocs=1", "go125-cgroup"),  # last wins
        ("go119", None, "cpus"),  # go.mod go 1.19 -> DefaultGODEBUG containermaxprocs=0
        ("go119", "containermaxprocs=x", "cpus"),  # unparsable: the binary's default 0 stays
        ("go119", "containermaxprocs=1", "go125-cgroup"),  # $GODEBUG overrides DefaultGODEBUG
    ],
)
def test_containermaxprocs_setting(minor: tuple[int, int], module: str, godebug: str | None, rule: str) -> None:
    """Which rule applies to a Go >= 1.25 binary, per GODEBUG and the binary's DefaultGODEBUG.

    In a 1.5-core cgroup; on a 2-CPU machine both rules give 2, so the value
    check cannot tell them apart here (it can with >= 3 CPUs); the rule name is
    checked against Go's own parsing (runtime.parsegodebug: DefaultGODEBUG then
    $GODEBUG, left to right, values through strconv.Atoi32, on when > 0).
    """
    tc = _toolchain(minor)
    binary = _build_module(tc, GO125) if module == "go125" else gobuild.build_one(tc, MAXPROCS, "exe", "full")
    env = {"GODEBUG": godebug} if godebug is not None else {}
    with v1_cgroup("gmp-cmp", 1.5) as cg, run_go(binary, env, cgroup=cg) as gp:
        o = observe(gp.pid)
        assert ("containermaxprocs=0" in o.facts.default_godebug) == (module == "go119")
        assert_inferred(o, gp.ready, rule)
        if HOST_CPUS >= 3:
            assert gp.ready == (2 if rule == "go125-cgroup" else HOST_CPUS)


AUTOMAXPROCS_MINORS = [(1, 21), (1, 25)]


@pytest.mark.parametrize("minor", AUTOMAXPROCS_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_automaxprocs_detected(minor: tuple[int, int]) -> None:
    tc = _toolchain(minor)
    with_amp = GoBinary.open(_build_module(tc, WITH_AUTOMAXPROCS))
    without = GoBinary.open(gobuild.build_one(tc, MAXPROCS, "exe", "full"))
    assert with_amp.buildinfo is not None and with_amp.buildinfo.automaxprocs
    assert without.buildinfo is not None and not without.buildinfo.automaxprocs
    assert with_amp.info().automaxprocs


@pytest.mark.cgroup
@pytest.mark.parametrize("minor", AUTOMAXPROCS_MINORS, ids=lambda m: f"go1.{m[1]}")
@pytest.mark.parametrize(
    ("env", "rule", "expected"),
    [
        ({}, "automaxprocs", 1),  # floor(1.5); Go 1.25's own rule would say 2
        ({"GOMAXPROCS": "2"}, "env", 2),
        # Present but not a number: automaxprocs leaves it alone (os.LookupEnv),
        # and the runtime ignores it -> the runtime default, the CPU count.
        ({"GOMAXPROCS": ""}, "cpus", HOST_CPUS),
        ({"GOMAXPROCS": "x"}, "cpus", HOST_CPUS),
    ],
    ids=["quota", "env", "env-empty", "env-invalid"],
)
def test_automaxprocs_rule(minor: tuple[int, int], env: dict[str, str], rule: str, expected: int) -> None:
    binary = _build_module(_toolchain(minor), WITH_AUTOMAXPROCS)
    with v1_cgroup("gmp-amp", 1.5) as cg, run_go(binary, env, cgroup=cg) as gp:
        o = observe(gp.pid)
        assert o.facts.automaxprocs and o.facts.leaf_limit == 1.5
        assert gp.ready == expected
        assert_inferred(o, gp.ready, rule)


@pytest.mark.cgroup
@pytest.mark.parametrize("minor", AUTOMAXPROCS_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_automaxprocs_reads_only_its_own_cgroup(minor: tuple[int, int]) -> None:
    """The quota is on the parent, none on the process's own cgroup: automaxprocs
    (internal/cgroups CPUQuota) reads only the leaf, so it leaves GOMAXPROCS alone."""
    binary = _build_module(_toolchain(minor), WITH_AUTOMAXPROCS)
    with v1_cgroup("gmp-amp-parent", 1.5) as parent:
        child = Cgroup(parent.path / "leaf")
        child.path.mkdir()
        child.set_limit(None)
        with run_go(binary, cgroup=child) as gp:
            o = observe(gp.pid)
            assert (o.facts.leaf_limit, o.facts.effective_limit) == (None, 1.5)
            assert gp.ready == HOST_CPUS
            assert o.live == gp.ready
            assert o.inferred.value == gp.ready, (o.inferred, o.facts)


# ---- 3. a process that exits between snapshot and read ---------------------------------------


def _state(pid: int) -> str:
    return ProcFS().read_stat(pid).state


def test_exit_between_snapshot_and_read_is_a_clean_error() -> None:
    binary = gobuild.build_one(_toolchain((1, 21)), MAXPROCS, "pie", "strip")
    with run_go(binary, {"GOMAXPROCS": "3"}) as gp:
        o = observe(gp.pid)
        read = ProcFS().memory_reader(o.info.key)
        assert read_live(read, o.address + o.bias) == 3
        gp.proc.kill()
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while _state(gp.pid) != "Z":  # exited, not yet reaped: /proc/PID is still there, its memory is not
            assert time.monotonic() < deadline, "child did not become a zombie"
            time.sleep(0.01)
        with pytest.raises(NodeAgentError):
            read_live(read, o.address + o.bias)
        gp.proc.wait(10)  # reaped: /proc/PID is gone
        with pytest.raises(ProcessGoneError):
            read_live(read, o.address + o.bias)
        with pytest.raises(ProcessGoneError):
            ProcFS().snapshot(gp.pid)
