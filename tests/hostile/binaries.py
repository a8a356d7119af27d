"""Hostile Go binaries, each made from a real Go program mutated on disk, and the
real daemon they are thrown at.

Every mutation keeps the program runnable: the Go runtime reads line tables
and inline trees only for tracebacks, checks nothing of the pclntab header but
its magic and layout fields, and the kernel ignores section headers. So each
attack runs as a real process that burns CPU where the agent must look.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from agent.gobinary.elf import ElfImage, open_image
from agent.gobinary.pclntab import PCDATA_INL_TREE_INDEX, FuncRecord, LineTable
from agent.gobinary.symbolizer import GoBinary
from agent.lab.cgroupwriter import find_memory_hierarchy, remove_cgroup, set_memory_limit
from agent.lab.gotoolchain import find_toolchain
from tests.support import gobuild
from tests.support.capabilities import missing, need
from tests.support.loopback import free_port, get

REPO = Path(__file__).resolve().parents[2]
SPIN = REPO / "tests" / "goprogs" / "spin"
DAEMONSET = REPO / "deploy" / "daemonset.yaml"
CLAIMED_FUNCTIONS = 16_777_215
CLAIMED_SECTIONS = 3_000_000


def spin_binary() -> Path:
    """tests/goprogs/spin built by Go 1.23 (pre-1.25: one build ID, the Go note)."""
    tc = find_toolchain((1, 23))
    need(tc is not None, "Go 1.23 (run scripts/setup.sh)")
    assert tc is not None
    return gobuild.build_one(tc, SPIN, "exe", "full")


def manifest_memory_limit() -> int:
    """The DaemonSet's container memory limit, in bytes."""
    for doc in yaml.safe_load_all(DAEMONSET.read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            text = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(text))
            assert m is not None, text
            shift: int = {"Ki": 10, "Mi": 20, "Gi": 30, None: 0}[m[2]]
            return int(m[1]) << shift
    raise AssertionError("no DaemonSet in the manifest")


# ---- mutations -------------------------------------------------------------------------------------


def _write(dst: Path, data: bytes | bytearray, size: int | None = None) -> Path:
    with open(dst, "wb") as f:
        f.write(data)
        if size is not None:
            f.truncate(size)  # a sparse tail: cheap on disk, huge to a reader that believes it
    dst.chmod(0o755)
    return dst


def _spin_record(src: Path) -> tuple[GoBinary, FuncRecord]:
    binary = GoBinary.open(src)
    rec = binary.table.find_function("main.spin")
    assert rec is not None
    return binary, rec


def _pctab_file_offset(binary: GoBinary, table_off: int) -> int:
    assert isinstance(binary.image, ElfImage)
    sec = binary.image.section(".gopclntab")
    assert sec is not None
    return sec.offset + binary.table.pctab + table_off


def _table_length(binary: GoBinary, table_off: int) -> int:
    """Bytes of one pc-value table up to and including its terminator."""
    data, pos, first = binary.table.data, binary.table.pctab + table_off, True
    start = pos
    while True:
        uv, pos = _uvarint(data, pos)
        if uv == 0 and not first:
            return pos - start
        first = False
        _, pos = _uvarint(data, pos)


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def huge_function_count(src: Path, dst: Path) -> Path:
    """pcHeader.nfunc = 16,777,215 and a .gopclntab section (sparse) big enough to seem to hold them."""
    data = bytearray(src.read_bytes())
    img = open_image(src)
    sec = img.section(".gopclntab")
    assert sec is not None
    struct.pack_into("<Q", data, sec.offset + 8, CLAIMED_FUNCTIONS)
    new_size = sec.offset + CLAIMED_FUNCTIONS * 8 * 2 + (1 << 20)
    index = img.sections.index(sec)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    struct.pack_into("<Q", data, shoff + index * 64 + 32, new_size - sec.offset)  # sh_size
    return _write(dst, data, new_size)


def many_section_headers(src: Path, dst: Path) -> Path:
    """e_shnum = 0 with the real count (3 million) in section 0, as ELF allows; a sparse table."""
    data = bytearray(src.read_bytes())
    shoff = (len(data) + 63) // 64 * 64
    data += b"\0" * (shoff - len(data))
    section0 = bytearray(64)
    struct.pack_into("<Q", section0, 32, CLAIMED_SECTIONS)  # sh_size of section 0 = e_shnum
    data += section0
    struct.pack_into("<Q", data, 0x28, shoff)  # e_shoff
    struct.pack_into("<H", data, 0x3C, 0)  # e_shnum
    struct.pack_into("<H", data, 0x3E, 0)  # e_shstrndx
    return _write(dst, data, shoff + CLAIMED_SECTIONS * 64)


def stalled_line_tables(src: Path, dst: Path) -> Path:
    """main.spin's file and line tables rewritten as steps that never advance the pc."""
    binary, rec = _spin_record(src)
    data = bytearray(src.read_bytes())
    for off in (rec.pcfile, rec.pcln):
        n = _table_length(binary, off)
        pos = _pctab_file_offset(binary, off)
        data[pos : pos + n] = (b"\x02\x00" * n)[:n]  # value +1, pc +0, forever
    return _write(dst, data)


def self_parented_inline_entry(src: Path, dst: Path) -> Path:
    """main.spin's inline index is 0 at every pc, and inline entry 0's call site is main.spin's entry:
    each level of the inline chain is its own parent."""
    binary, rec = _spin_record(src)
    table_off = binary.table.pcdata_table(rec, PCDATA_INL_TREE_INDEX)
    assert table_off, "main.step must be inlined into main.spin"
    data = bytearray(src.read_bytes())
    n = _table_length(binary, table_off)
    size = (rec.end - rec.entry) // binary.table.quantum
    table = b"\x02" + _varint(size) + b"\x00"  # ix 0 from entry to end
    assert len(table) <= n
    pos = _pctab_file_offset(binary, table_off)
    data[pos : pos + len(table)] = table
    tree = _inline_tree_addr(binary, rec)
    assert isinstance(binary.image, ElfImage)
    off = binary.image.addr_to_offset(tree + 8)  # inlinedCall[0].parentPc (Go >= 1.20 layout)
    assert off is not None
    struct.pack_into("<i", data, off, 0)
    return _write(dst, data)


def _inline_tree_addr(binary: GoBinary, rec: FuncRecord) -> int:
    table: LineTable = binary.table
    assert table.gofunc is not None
    (rel,) = struct.unpack_from("<I", table.data, rec.funcdata_off + 4 * table.inl_tree_index)
    return int(table.gofunc + rel)


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def declaring_build_id(src: Path, build_id: str, dst: Path) -> Path:
    """``src`` with its Go build ID (note and text marker) replaced by ``build_id``, and its
    ``runtime.gomaxprocs`` symbol pointing at ``runtime.ncpu`` instead: an agent that trusted the
    declared ID would read the victim's GOMAXPROCS from an address the attacker chose."""
    own = GoBinary.open(src).go_build_id
    assert own is not None and len(own) == len(build_id), (own, build_id)
    data = bytearray(src.read_bytes())
    assert data.count(own.encode()) >= 1
    data = bytearray(bytes(data).replace(own.encode(), build_id.encode()))
    img = open_image(src)
    ncpu = img.symbol("runtime.ncpu")
    assert ncpu is not None
    struct.pack_into("<Q", data, _symbol_entry_offset(img, "runtime.gomaxprocs") + 8, ncpu[0])  # st_value
    return _write(dst, data)


def _symbol_entry_offset(img: ElfImage, name: str) -> int:
    """File offset of the 64-bit .symtab entry named ``name``."""
    symtab, strtab = img.section(".symtab"), img.section(".strtab")
    assert symtab is not None and strtab is not None
    strings = img.section_data(strtab)
    raw = img.section_data(symtab)
    for i in range(0, len(raw) - 23, 24):
        (st_name,) = struct.unpack_from("<I", raw, i)
        if strings[st_name : strings.index(b"\0", st_name)] == name.encode():
            return symtab.offset + i
    raise AssertionError(f"no symbol {name}")


# ---- real processes ------------------------------------------------------------------------------


@contextlib.contextmanager
def running(binary: Path, *, cgroup_procs: Path | None = None, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a spin binary until the block ends; ready once it wrote to its pipe."""
    r, w = os.pipe()

    def enter() -> None:
        if cgroup_procs is not None:
            cgroup_procs.write_text(str(os.getpid()))

    proc = subprocess.Popen(
        [str(binary), str(w)],
        pass_fds=(w,),
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        preexec_fn=enter,  # noqa: PLW1509 - joins before the runtime starts
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as ready:
            if ready.readline() != b"ready\n":
                raise AssertionError(f"{binary.name} did not start (exit {proc.wait(5)}): the mutation broke it")
        yield proc.pid
        assert proc.poll() is None, f"{binary.name} exited with {proc.returncode} while under test"
    finally:
        proc.kill()
        proc.wait(10)


@dataclass
class MemoryCgroup:
    path: Path
    limit: int

    def oom_kills(self) -> int:
        f = self.path / "memory.oom_control"
        if f.exists():  # v1
            m = re.search(r"oom_kill (\d+)", f.read_text())
            return int(m[1]) if m else 0
        m = re.search(r"oom_kill (\d+)", (self.path / "memory.events").read_text())
        return int(m[1]) if m else 0


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    try:
        hierarchy = find_memory_hierarchy()
    except Exception as exc:  # reported as the capability that is missing
        missing(f"a cgroup memory controller ({exc})")
    path = hierarchy.root / f"node-agent-hostile-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        path.mkdir()
    except OSError as exc:
        missing(f"cannot create a memory cgroup ({exc})")
    try:
        set_memory_limit(path, hierarchy.version, limit)
        yield MemoryCgroup(path, limit)
    finally:
        remove_cgroup(path)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    interval_s: float
    memory: MemoryCgroup
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def metrics(self) -> str:
        status, body = get(self.url("/metrics"))
        assert status == 200, (status, body[:500])
        return body.decode()

    def peak_rss(self) -> int:
        """VmHWM: the daemon's own peak resident set."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def mapped_files(self) -> set[str]:
        out = set()
        for line in Path(f"/proc/{self.proc.pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                out.add(parts[5])
        return out

    def children(self) -> list[int]:
        """Children of every thread (the sandboxed parses are started by the parse thread)."""
        out = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                out += [int(p) for p in (task / "children").read_text().split()]
        return out

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def daemon(tmp: Path, memory: MemoryCgroup, interval_s: float = 2.0) -> Iterator[Daemon]:
    """The real `node-agent run`, inside ``memory``, until the block ends (then SIGTERM)."""
    port = free_port()
    log = tmp / "agent.log"

    def enter() -> None:
        (memory.path / "cgroup.procs").write_text(str(os.getpid()))

    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--interval", str(interval_s), "--no-kubernetes",
         "--listen", f"127.0.0.1:{port}", "--profiles"],
        cwd=os.environ.get("NODE_AGENT_DAEMON_UNDER_TEST", REPO),  # another checkout: prove these tests can fail
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115 - the child holds it
        preexec_fn=enter,  # noqa: PLW1509 - joins the memory cgroup before it allocates
    )  # fmt: skip
    d = Daemon(proc, port, interval_s, memory, log)
    try:
        deadline = time.monotonic() + 180
        while get(d.url("/readyz"))[0] != 200:
            assert proc.poll() is None, f"the daemon exited with {proc.returncode}: {d.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the daemon never became ready: {d.log_text()[-3000:]}"
            time.sleep(0.5)
        yield d
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def copy_to(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    dst.chmod(0o755)
    return dst
