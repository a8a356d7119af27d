"""Hostile binaries against the real daemon, each test named after the attack it defends.

One real `node-agent run` (BPF, 3 s cycles) runs for the module inside a memory
cgroup with the DaemonSet's limit, next to an honest Go service that must stay
judged right throughout: GOMAXPROCS=64 in a 1-CPU cgroup, under load, flagged
gomaxprocs_above_limit with a live GOMAXPROCS of 64. Each attack is a real Go
program (tests/goprogs/spin) mutated on disk (tests/hostile/binaries.py) and run
as a real process in a small CPU cgroup of its own. After each, the node must be
fine: daemon up, no OOM kill in its cgroup and peak RSS under the limit, cycles
completing within their deadline, /metrics valid for `promtool check metrics`,
/healthz 200, the honest service still right, and the hostile item counted in
node_agent_errors_total.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import BinaryError, BudgetExceededError, CorruptBinaryError, NotGoError
from agent.gobinary import sandbox
from agent.gobinary.elf import ElfImage, open_image
from agent.gobinary.pclntab import LineTable
from agent.gobinary.symbolizer import GoBinary
from agent.lab.gotoolchain import find_toolchain
from tests.hostile import binaries as hb
from tests.support.capabilities import need, need_root
from tests.support.loopback import get
from tests.support.workloads import Cgroup, build_demo, load, service, v1_cgroup

pytestmark = [pytest.mark.bpf, pytest.mark.cgroup, pytest.mark.gotoolchain]

INTERVAL_S = 3.0
CYCLE_BOUND_S = 5.0  # a histogram bucket: the deadline (one interval) plus one sandboxed parse in flight
HOSTILE_CORES = 0.2  # enough to be sampled every cycle, little enough to leave the node its CPUs

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


@dataclass
class Node:
    agent: hb.Daemon
    honest: str  # the honest service's container label
    spin: Path
    demo: Path
    tmp: Path

    def samples(self) -> Samples:
        return parse_metrics(self.agent.metrics())

    def errors(self, kind: str) -> float:
        return value(self.samples(), "node_agent_errors_total", kind=kind) or 0.0

    def cycles(self) -> float:
        return value(self.samples(), "node_agent_cycle_duration_seconds_count") or 0.0

    def wait(self, what: str, pred: Callable[[], object], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert self.agent.proc.poll() is None, f"the daemon died: {self.agent.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.agent.log_text()[-2000:]}"
            time.sleep(0.3)

    def wait_cycles(self, n: int) -> None:
        target = self.cycles() + n
        self.wait(f"{n} more cycles", lambda: self.cycles() >= target, timeout=n * INTERVAL_S * 4 + 30)

    def assert_fine(self) -> None:
        """What every attack must leave intact."""
        agent = self.agent
        assert agent.proc.poll() is None, agent.log_text()[-3000:]
        assert agent.memory.oom_kills() == 0
        assert agent.peak_rss() < agent.memory.limit, agent.peak_rss()
        status, body = get(agent.url("/healthz"))
        assert status == 200, body
        text = agent.metrics()
        check = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        s = parse_metrics(text)
        total = value(s, "node_agent_cycle_duration_seconds_count")
        within = value(s, "node_agent_cycle_duration_seconds_bucket", le=str(CYCLE_BOUND_S))
        assert total and within == total, f"{total} cycles, {within} within {CYCLE_BOUND_S}s"
        assert value(s, "node_agent_go_gomaxprocs", container=self.honest) == 64
        assert value(s, "node_agent_go_info", container=self.honest, gomaxprocs_source="live") == 1
        assert value(s, "node_agent_go_misconfigured", container=self.honest, reason="gomaxprocs_above_limit") == 1
        assert "Traceback" not in agent.log_text()
        tenant_files = {str(p) for p in self.tmp.iterdir()}
        assert not agent.mapped_files() & tenant_files, "a tenant's file is mapped into the daemon"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    need_root()
    need(Path("/usr/bin/promtool").exists(), "promtool (Debian package prometheus)")
    spin, demo = hb.spin_binary(), build_demo()
    tmp = tmp_path_factory.mktemp("tenants")
    with contextlib.ExitStack() as stack:
        honest_cg = stack.enter_context(v1_cgroup("honest", 1.0))
        svc = stack.enter_context(service(demo, honest_cg, {"GOMAXPROCS": "64"}))
        stack.enter_context(load(demo, svc.url, 600, concurrency=4))
        memory = stack.enter_context(hb.memory_cgroup(hb.manifest_memory_limit()))
        agent = stack.enter_context(hb.daemon(tmp_path_factory.mktemp("agent"), memory, INTERVAL_S))
        n = Node(agent, honest_cg.path.name, spin, demo, tmp)
        n.wait("the honest service judged", lambda: value(n.samples(), "node_agent_go_gomaxprocs", container=n.honest))
        yield n


@contextlib.contextmanager
def hostile(node: Node, binary: Path, name: str, env: dict[str, str] | None = None) -> Iterator[Cgroup]:
    """Run ``binary`` as a real process in a small CPU cgroup of its own."""
    with v1_cgroup(name, HOSTILE_CORES) as cg, hb.running(binary, cgroup_procs=cg.path / "cgroup.procs", env=env):
        yield cg


def judged(node: Node, cg: Cgroup) -> float | None:
    return value(node.samples(), "node_agent_go_gomaxprocs", container=cg.path.name)


def ask_for_profiles(node: Node) -> None:
    """Symbols are read when a profile is asked for: fetch every listed one (what a user would do)."""
    status, body = get(node.agent.url("/profiles"), timeout=30)
    if status == 200:
        for entry in json.loads(body):
            get(node.agent.url(entry["path"]), timeout=30)


def attack(node: Node, binary: Path, name: str, kind: str, *, symbolize: bool = False) -> None:
    """Run one hostile binary for a few cycles; it is counted under ``kind`` and the node is fine.

    ``symbolize``: the attack is on symbolization, which runs when its profile is asked for."""
    before = node.errors(kind)
    logged = len(node.agent.log_text())

    def counted() -> bool:
        if symbolize:
            ask_for_profiles(node)
        return node.errors(kind) > before

    with hostile(node, binary, name):
        node.wait(f"{name} counted as {kind}", counted, timeout=90)
        said = node.agent.log_text()[logged:]  # one clear line
        assert "binary skipped: " in said or "symbols no longer read: " in said, said[-2000:]
        node.wait_cycles(2)  # and cycles go on
        node.assert_fine()
    node.assert_fine()


# ---- budgets before allocation -------------------------------------------------------------------


def test_pclntab_header_claiming_16777215_functions_is_refused_before_allocation(node: Node) -> None:
    attack(node, hb.huge_function_count(node.spin, node.tmp / "nfunc-bomb"), "nfunc", "binary_over_budget")


def test_elf_with_3_million_section_headers_is_refused_before_parsing(node: Node) -> None:
    attack(node, hb.many_section_headers(node.spin, node.tmp / "shnum-bomb"), "shnum", "binary_over_budget")


def test_function_count_the_table_cannot_hold_is_refused_without_allocating() -> None:
    """Below the absolute budget, a count must still fit the bytes: checked before any index is built."""
    table = bytearray(GoBinary.open(hb.spin_binary()).tables.pclntab)
    for claimed, error in ((hb.CLAIMED_FUNCTIONS, BudgetExceededError), (1_000_000, CorruptBinaryError)):
        table[8:16] = claimed.to_bytes(8, "little")
        tracemalloc.start()
        try:
            with pytest.raises(error):
                LineTable(bytes(table))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * len(table), peak  # the copy we passed in, not 16 million entries


def test_every_binary_of_the_node_is_not_a_sandboxed_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-Go programs (most of a node) are answered from a few bounded reads; Go ones get a child."""
    spawned: list[object] = []
    real = subprocess.Popen

    def popen(*args: object, **kwargs: object) -> object:
        spawned.append(args)
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", popen)  # what sandbox.py calls
    for program in ("/bin/ls", "/usr/bin/python3"):
        with pytest.raises(NotGoError):
            sandbox.parse_file(os.path.realpath(program))
    assert spawned == []
    plain = sandbox.parse_file(hb.spin_binary())
    assert len(spawned) == 1
    assert GoBinary.from_plain(plain).table.find_function("main.spin") is not None


# ---- deadlines on work -----------------------------------------------------------------------------


def test_pc_value_tables_that_never_advance_do_not_stall_cycles(node: Node) -> None:
    stall = hb.stalled_line_tables(node.spin, node.tmp / "stall")
    attack(node, stall, "stall", "binary_symbols_failed", symbolize=True)


def test_self_parented_inline_tree_entry_does_not_stall_cycles(node: Node) -> None:
    attack(
        node,
        hb.self_parented_inline_entry(node.spin, node.tmp / "inline-loop"),
        "inline",
        "binary_symbols_failed",
        symbolize=True,
    )


def test_binary_whose_every_lookup_is_slow_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables valid but costly (10 ms per PC here, by a stand-in CPU clock): after 1 s of such
    lookups the binary answers no more, so it cannot take every cycle's time from the others."""
    binary = GoBinary.open(hb.spin_binary())
    clock = iter(i * 0.01 for i in range(1_000_000))  # +10 ms a call: each lookup (one call in, one out) 10 ms
    monkeypatch.setattr(time, "thread_time", lambda: next(clock))  # the clock symbolizer.py reads
    pcs = iter(range(binary.table.entries[0], binary.table.entries[-1]))
    answered = 0
    with pytest.raises(BudgetExceededError, match="ms per PC"):
        for pc in pcs:
            binary.frames(pc)
            answered += 1
    assert 100 <= answered <= 102  # 1 s at 10 ms a lookup
    with pytest.raises(BudgetExceededError):  # and stays cut off, at no cost
        binary.frames(next(pcs))


# ---- no mapping of tenant files, content-keyed cache ---------------------------------------------


def test_binary_truncated_after_its_process_exits_cannot_sigbus_the_daemon(node: Node) -> None:
    """Run a binary, let the daemon cache it, truncate the file, run another file with the same build ID."""
    first = hb.copy_to(node.spin, node.tmp / "first")
    with hostile(node, first, "first", {"GOMAXPROCS": "3"}) as cg:
        node.wait("the first process judged", lambda: judged(node, cg))
    with open(first, "r+b") as f:
        f.truncate(4096)
    second = hb.copy_to(node.spin, node.tmp / "second")
    assert GoBinary.open(second).go_build_id == GoBinary.open(node.spin).go_build_id
    with hostile(node, second, "second", {"GOMAXPROCS": "5"}) as cg:
        node.wait("the second process judged", lambda: judged(node, cg))
        s = node.samples()
        assert value(s, "node_agent_go_gomaxprocs", container=cg.path.name) == 5
        assert value(s, "node_agent_go_info", container=cg.path.name, gomaxprocs_source="live") == 1
        node.assert_fine()


def test_file_truncated_while_being_parsed_is_a_clean_error_not_sigbus(tmp_path: Path) -> None:
    """In-process (a SIGBUS would end this test run): headers read, then the file cut to 4 kB."""
    victim = hb.copy_to(hb.spin_binary(), tmp_path / "cut")
    image = open_image(victim)  # headers parsed; the tables are read later
    with open(victim, "r+b") as f:
        f.truncate(4096)
    with pytest.raises(CorruptBinaryError, match=r"truncated|past end|not in the file"):
        GoBinary(image)


def test_binary_declaring_the_victims_build_id_does_not_poison_the_victim(node: Node) -> None:
    """The attacker is parsed first; then a new victim process (same build ID) must be judged by its own bytes."""
    tc = find_toolchain((1, 21))  # a build the daemon has not seen (the honest service is another)
    need(tc is not None, "Go 1.21 (run scripts/setup.sh)")
    victim_bin = hb.copy_to(build_demo(tc), node.tmp / "victim")
    victim_id = GoBinary.open(victim_bin).go_build_id
    assert victim_id is not None and victim_id != GoBinary.open(node.demo).go_build_id
    attacker = hb.declaring_build_id(node.spin, victim_id, node.tmp / "attacker")
    assert GoBinary.open(attacker).go_build_id == victim_id
    with hostile(node, attacker, "attacker", {"GOMAXPROCS": "3"}) as attacker_cg:
        node.wait(
            "the attacker judged",
            lambda: value(node.samples(), "node_agent_go_gomaxprocs", container=attacker_cg.path.name),
        )
        with (
            v1_cgroup("victim", 1.0) as victim_cg,
            service(victim_bin, victim_cg, {"GOMAXPROCS": "64"}) as victim,
            load(node.demo, victim.url, 60, concurrency=4),
        ):
            label = victim_cg.path.name
            node.wait("the victim judged", lambda: value(node.samples(), "node_agent_go_gomaxprocs", container=label))
            node.wait_cycles(1)
            s = node.samples()
            assert value(s, "node_agent_go_gomaxprocs", container=label) == 64
            assert value(s, "node_agent_go_info", container=label, gomaxprocs_source="live") == 1
            assert value(s, "node_agent_go_misconfigured", container=label, reason="gomaxprocs_above_limit") == 1
            # Symbolized with its own tables: its handlers are user code, not the attacker's spin loop
            user = value(s, "node_agent_go_cpu_seconds_total", container=label, category="user") or 0.0
            scheduler = value(s, "node_agent_go_cpu_seconds_total", container=label, category="scheduler") or 0.0
            assert user > 0 and scheduler < 0.9 * (user + scheduler), (user, scheduler)
            # The attacker misleads about itself only: its own (retargeted) symbol reads its CPU count
            assert value(s, "node_agent_go_gomaxprocs", container=attacker_cg.path.name) == os.cpu_count()
            node.assert_fine()


# ---- what held, keep: random mutations of Go tables ------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("NODE_AGENT_FUZZ_EXAMPLES", "300"))


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_random_mutations_of_go_tables_neither_crash_nor_take_over_2s(data: st.DataObject) -> None:
    """Bytes of the pclntab (header, function table, records, pc-value tables) and of the
    funcdata overwritten at random: only BinaryError, and never more than 2 s of CPU."""
    base, targets = _fuzz_base()
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        start, size = data.draw(st.sampled_from(targets))
        span = data.draw(st.sampled_from([64, 4096, size]))
        pos = start + data.draw(st.integers(0, max(0, min(span, size) - 1)))
        raw[pos] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, data.draw(st.integers(0, 255))]))
    started = time.process_time()
    try:
        b = GoBinary(ElfImage(bytes(raw), name="mutated"))
        rec = b.table.find_function("main.spin")
        pcs = [*range(rec.entry, rec.end)] if rec else []
        step = max(1, (b.table.entries[-1] - b.table.entries[0]) // 200)
        for pc in [*pcs, *range(b.table.entries[0] - 16, b.table.entries[-1] + 16, step)]:
            with contextlib.suppress(BinaryError):
                b.frames(pc)
            with contextlib.suppress(BinaryError):
                b.addr2line(pc)
        b.to_plain()
    except BinaryError:
        pass
    assert time.process_time() - started < 2.0


_FUZZ: list[tuple[bytes, list[tuple[int, int]]]] = []


def _fuzz_base() -> tuple[bytes, list[tuple[int, int]]]:
    """The spin binary and the file ranges worth mutating: pclntab regions and go:func.*."""
    if not _FUZZ:
        path = hb.spin_binary()
        img = open_image(path)
        b = GoBinary(img)
        sec = img.section(".gopclntab")
        assert sec is not None and b.tables.gofunc is not None
        t = b.table
        rec = t.find_function("main.spin")
        assert rec is not None
        func_off = img.addr_to_offset(b.tables.gofunc or 0)
        assert func_off is not None
        targets = [
            (sec.offset, 128),  # header
            (sec.offset + t.functab, 8 * t.nfunc),  # function table
            (sec.offset + rec.pcdata_off - 44, 44 + 4 * rec.npcdata + 4 * rec.nfuncdata),  # main.spin's _func
            (sec.offset + t.pctab + rec.pcln, 64),  # main.spin's tables
            (sec.offset + t.pctab + t.pcdata_table(rec, 2), 16),
            (sec.offset + t.pctab, sec.size - t.pctab),
            (func_off, 4096),  # inline trees
        ]
        _FUZZ.append((path.read_bytes(), targets))
    return _FUZZ[0]


# ---- SIGTERM mid-cycle (last: it stops the module's daemon) --------------------------------------


def test_sigterm_with_a_parse_frozen_in_flight_exits_promptly(node: Node) -> None:
    """A parse frozen (its sandbox child SIGSTOPped): cycles go on without it, and SIGTERM still
    ends the daemon at once, status 0, the frozen child killed."""
    agent = node.agent
    frozen = None
    for attempt in range(8):
        binary = hb.copy_to(node.spin, node.tmp / f"fresh{attempt}")  # a new file: a new sandboxed parse
        with hostile(node, binary, f"fresh{attempt}"):
            deadline = time.monotonic() + 3 * INTERVAL_S
            while frozen is None and time.monotonic() < deadline:
                for child in agent.children():
                    with contextlib.suppress(OSError):
                        if b"agent.gobinary.sandbox" in Path(f"/proc/{child}/cmdline").read_bytes():
                            os.kill(child, signal.SIGSTOP)
                            frozen = child
                            break
                time.sleep(0.002)
            if frozen is not None:
                break
    assert frozen is not None, "never caught a sandboxed parse"
    node.wait_cycles(1)  # cycles do not wait on a parse
    assert agent.proc.poll() is None
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    rc = agent.proc.wait(30)
    took = time.monotonic() - started
    assert rc == 0, agent.log_text()[-3000:]
    assert took < 3.0, f"SIGTERM took {took:.1f}s"
    assert not Path(f"/proc/{frozen}").exists() or "Z" in Path(f"/proc/{frozen}/stat").read_text().split()[2]
    assert "Traceback" not in agent.log_text()
