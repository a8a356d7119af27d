"""agent.host.procfs: pure parsers on text and a committed fake /proc tree (real processes: tests/system)."""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import shutil
from pathlib import Path

import pytest

from agent.errors import NodeAgentError, ProcessGoneError
from agent.host import cpulist, procfs
from agent.host.procfs import (
    Executable,
    GoEnv,
    MappedRegion,
    ProcessAccessError,
    ProcessInfo,
    ProcessKey,
    ProcessReusedError,
    ProcFS,
    ProcfsError,
    Stat,
    exe_mappings,
    file_offset,
    parse_go_env,
    parse_maps,
    parse_stat,
    parse_status,
    split_deleted,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "proc"


# ---- stat ------------------------------------------------------------------------------------


def _stat_text(comm: str, *, pid: int = 42, state: str = "S", flags: int = 0x400000, start: int = 777) -> str:
    fields = [str(pid), f"({comm})", state, "7", str(pid), str(pid), "0", "-1", str(flags), "1", "0", "0", "0"]
    fields += ["150", "50", "0", "0", "20", "0", "3", "0", str(start)]
    fields += ["0"] * 30
    return " ".join(fields) + "\n"


@pytest.mark.parametrize(
    "comm",
    ["cat", "a) b (c", "with space", ")", "(", "))", "((x))", ") 1 2 3 (", "tab\tname", "new\nline", "", "ünï"],
)
def test_parse_stat_comm_with_any_characters(comm: str) -> None:
    st = parse_stat(_stat_text(comm))
    assert st == Stat(
        pid=42, comm=comm, state="S", ppid=7, flags=0x400000, utime=150, stime=50, num_threads=3, start_time=777
    )
    assert not st.kernel_thread
    assert not st.dead


def test_parse_stat_real_kernel_thread_line() -> None:
    text = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 25 0 0 18446744073709551615 0 0 0 0 0 0 0 "
    text += "2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    st = parse_stat(text)
    assert st.kernel_thread and st.start_time == 25 and st.ppid == 0 and st.comm == "kthreadd"


@pytest.mark.parametrize("state,dead", [("Z", True), ("X", True), ("R", False), ("D", False), ("t", False)])
def test_parse_stat_dead_states(state: str, dead: bool) -> None:
    assert parse_stat(_stat_text("x", state=state)).dead is dead


@pytest.mark.parametrize(
    "text",
    ["", "42 cat S 1", "42 (cat S 1 2", "42 (cat) S 1 2 3", "x (cat) S" + " 1" * 50, "42 (cat) S nope" + " 1" * 50],
)
def test_parse_stat_rejects_malformed(text: str) -> None:
    with pytest.raises(ProcfsError):
        parse_stat(text)


# ---- status / CPU lists ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,cpus",
    [
        ("0", {0}),
        ("0-3", {0, 1, 2, 3}),
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        ("1,3,5", {1, 3, 5}),
        ("7-7", {7}),
        ("0-1\n", {0, 1}),
        ("", set()),
        ("126-127", {126, 127}),
    ],
)
def test_parse_cpu_list(text: str, cpus: set[int]) -> None:
    assert cpulist.parse_cpu_list(text) == frozenset(cpus)


@pytest.mark.parametrize("text", ["a", "3-1", "-1", "0-", "0,,1", "1-2-3", "0-99999999", "0x1"])
def test_parse_cpu_list_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad CPU"):
        cpulist.parse_cpu_list(text)
    with pytest.raises(ProcfsError, match="Cpus_allowed_list"):
        parse_status(STATUS + f"Cpus_allowed_list:\t{text}\n")


STATUS = "Name:\tapi server\nState:\tS (sleeping)\nTgid:\t10\nPid:\t10\nPPid:\t1\nThreads:\t9\nCpus_allowed:\tf\n"


def test_parse_status() -> None:
    st = parse_status(STATUS + "Cpus_allowed_list:\t0-2,5\nMems_allowed_list:\t0\n")
    assert (st.name, st.tgid, st.threads, st.cpus_allowed) == ("api server", 10, 9, frozenset({0, 1, 2, 5}))


@pytest.mark.parametrize("text", [STATUS, STATUS.replace("Threads:\t9", "Threads:\tmany") + "Cpus_allowed_list:\t0\n"])
def test_parse_status_rejects(text: str) -> None:
    with pytest.raises(ProcfsError):
        parse_status(text)


# ---- environ ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"", GoEnv()),
        (b"\0", GoEnv()),
        (b"GOMAXPROCS=4\0", GoEnv("4")),
        (b"GOMAXPROCS=4", GoEnv("4")),  # no trailing NUL
        (b"A=1\0GODEBUG=gctrace=1,x=2", GoEnv(None, "gctrace=1,x=2")),
        (b"GOMAXPROCS=2\0GOMAXPROCS=9\0", GoEnv("2")),  # first wins, as in runtime.gogetenv
        (b"GOMAXPROCS=\0", GoEnv("")),
        (b"GOMAXPROCSX=3\0XGOMAXPROCS=3\0gomaxprocs=3\0 GOMAXPROCS=3\0GODEBUG\0", GoEnv()),
        (b"GOMAXPROCS=a=b\0", GoEnv("a=b")),
        (b"GODEBUG=\xff\xfe\0", GoEnv(None, "\ufffd\ufffd")),
        (b"SECRET=hunter2\0GOMAXPROCS=7\0GODEBUG=x=1\0TOKEN=abc", GoEnv("7", "x=1")),
    ],
)
def test_parse_go_env(data: bytes, expected: GoEnv) -> None:
    assert parse_go_env(data) == expected


def test_parse_go_env_keeps_nothing_else() -> None:
    env = parse_go_env(b"SECRET=hunter2\0GOMAXPROCS=7\0PASSWORD=correct-horse\0GODEBUG=x=1")
    assert [f.name for f in dataclasses.fields(env)] == ["gomaxprocs", "godebug"]
    for text in (repr(env), str(dataclasses.asdict(env)), str(vars(env))):
        assert "hunter2" not in text and "SECRET" not in text and "correct-horse" not in text
    assert b"hunter2" not in pickle.dumps(env)


# ---- maps ------------------------------------------------------------------------------------


def _m(
    start: int, end: int, perms: str, offset: int, dev: tuple[int, int], inode: int, path: str, deleted: bool = False
) -> MappedRegion:
    return MappedRegion(start, end, perms, offset, dev[0], dev[1], inode, path, deleted)


@pytest.mark.parametrize(
    "line,expected",
    [
        (
            "55f518a15000-55f518a1a000 r-xp 00002000 fe:00 260131                     /usr/bin/cat",
            _m(0x55F518A15000, 0x55F518A1A000, "r-xp", 0x2000, (0xFE, 0), 260131, "/usr/bin/cat"),
        ),
        (
            "5645abbee000-5645abbfe000 rw-p 00000000 00:00 0 ",
            _m(0x5645ABBEE000, 0x5645ABBFE000, "rw-p", 0, (0, 0), 0, ""),
        ),
        ("1000-2000 rw-p 00000000 00:00 0", _m(0x1000, 0x2000, "rw-p", 0, (0, 0), 0, "")),
        (
            "7ffd1c3f8000-7ffd1c3fa000 r-xp 00000000 00:00 0                          [vdso]",
            _m(0x7FFD1C3F8000, 0x7FFD1C3FA000, "r-xp", 0, (0, 0), 0, "[vdso]"),
        ),
        (
            "7f0000000000-7f0000001000 r--s 00001000 103:02 99   /data/my file (v2).db",
            _m(0x7F0000000000, 0x7F0000001000, "r--s", 0x1000, (0x103, 2), 99, "/data/my file (v2).db"),
        ),
        (
            "400000-401000 r-xp 00000000 fd:01 12 /app/server (deleted)",
            _m(0x400000, 0x401000, "r-xp", 0, (0xFD, 1), 12, "/app/server", True),
        ),
        (
            "400000-401000 r-xp 00000000 fd:01 12 /a (deleted)/b",
            _m(0x400000, 0x401000, "r-xp", 0, (0xFD, 1), 12, "/a (deleted)/b"),
        ),
        (
            "400000-401000 r-xp 00000000 fd:01 12 /odd\\012name  ",
            _m(0x400000, 0x401000, "r-xp", 0, (0xFD, 1), 12, "/odd\\012name  "),
        ),
        (
            "7f3c2a000000-7f3c2a021000 rw-p 00000000 00:00 0       [anon:go: heap]",
            _m(0x7F3C2A000000, 0x7F3C2A021000, "rw-p", 0, (0, 0), 0, "[anon:go: heap]"),
        ),
        (
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
            _m(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp", 0, (0, 0), 0, "[vsyscall]"),
        ),
    ],
)
def test_parse_maps_line(line: str, expected: MappedRegion) -> None:
    assert parse_maps(line + "\n") == [expected]


def test_parse_maps_properties_and_order() -> None:
    text = (
        "2000-3000 rw-p 00000000 00:00 0 \n1000-2000 r-xp 00001000 08:01 5 /bin/x\n\n3000-4000 r--p 0 00:00 0 [vvar]\n"
    )
    maps = parse_maps(text)
    assert [m.start for m in maps] == [0x1000, 0x2000, 0x3000]
    code, anon, vvar = maps
    assert code.executable and code.readable and not code.writable and code.is_file
    assert code.device == os.makedev(8, 1) and code.size == 0x1000
    assert anon.writable and not anon.is_file
    assert not vvar.is_file and not vvar.executable
    assert parse_maps("") == []


@pytest.mark.parametrize(
    "text",
    [
        "garbage\n",
        "1000-2000 rw-p\n",
        "1000 rw-p 0 00:00 0\n",
        "1000-2000 rw-p 00000000 0000 0\n",
        "zz-2000 rw-p 0 00:00 0\n",
    ],
)
def test_parse_maps_rejects(text: str) -> None:
    with pytest.raises(ProcfsError):
        parse_maps(text)


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/a (deleted)", ("/a", True)),
        ("/a", ("/a", False)),
        ("", ("", False)),
        ("/x (deleted) (deleted)", ("/x (deleted)", True)),
    ],
)
def test_split_deleted(path: str, expected: tuple[str, bool]) -> None:
    assert split_deleted(path) == expected


SPARSE = parse_maps(
    "1000-3000 r-xp 00000000 08:01 5 /bin/x\n3000-4000 rw-p 00002000 08:01 5 /bin/x\n8000-9000 rw-p 00000000 00:00 0 \n"
)


def test_file_offset() -> None:
    code, data, _ = SPARSE
    assert file_offset(code, 0x1000) == 0
    assert file_offset(code, 0x2ABC) == 0x1ABC
    assert file_offset(data, 0x3010) == 0x2010
    with pytest.raises(ValueError):
        file_offset(code, 0x3000)
    with pytest.raises(ValueError):
        file_offset(code, 0xFFF)


def _exe(path: str, dev: int, inode: int) -> Executable:
    return Executable(path, False, dev, inode, 100, 0, Path("/proc/1/exe"))


def test_exe_mappings_by_device_and_inode() -> None:
    maps = parse_maps(
        "1000-2000 r--p 00000000 08:01 5 /app/server\n"
        "2000-3000 r-xp 00001000 08:01 5 /app/server\n"
        "3000-4000 rw-p 00002000 08:01 5 /app/server\n"
        "5000-6000 r-xp 00000000 08:01 6 /lib/libc.so\n"
        "7000-8000 r-xp 00000000 08:02 5 /other/fs/same-inode\n"
        "9000-a000 r-xp 00000000 00:00 0 [vdso]\n"
    )
    exe = _exe("/app/server", os.makedev(8, 1), 5)
    assert [m.start for m in exe_mappings(maps, exe)] == [0x2000]
    assert [m.start for m in exe_mappings(maps, exe, executable_only=False)] == [0x1000, 0x2000, 0x3000]


def test_exe_mappings_fall_back_to_path() -> None:
    # overlayfs / btrfs: maps may show another device than stat() of the exe
    maps = parse_maps("1000-2000 r-xp 00000000 00:2f 77 /app/server (deleted)\n2000-3000 r-xp 0 00:2f 78 /lib/x.so\n")
    exe = Executable("/app/server", True, os.makedev(0, 0x99), 1234, 1, 0, Path("/proc/1/exe"))
    assert [m.start for m in exe_mappings(maps, exe)] == [0x1000]
    assert exe_mappings(maps, _exe("/nowhere", 1, 2)) == []


def test_translate_errors() -> None:
    assert isinstance(procfs._translate(FileNotFoundError(errno.ENOENT, "x"), 1, "maps"), ProcessGoneError)
    assert isinstance(procfs._translate(ProcessLookupError(errno.ESRCH, "x"), 1, "maps"), ProcessGoneError)
    denied = procfs._translate(PermissionError(errno.EACCES, "x"), 1, "maps")
    assert isinstance(denied, ProcessAccessError) and "pid 1" in str(denied) and "CAP_SYS_PTRACE" in denied.describe()
    other = procfs._translate(OSError(errno.EIO, "I/O error"), 1, "maps")
    assert type(other) is ProcfsError and isinstance(other, NodeAgentError)


# ---- the committed fake /proc tree -----------------------------------------------------------


@pytest.fixture
def fake() -> ProcFS:
    return ProcFS(FIXTURES, clock_ticks=100)


@pytest.fixture
def fake_copy(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    shutil.copytree(FIXTURES, root, symlinks=True)
    return root


def test_fixture_list_pids_ignores_non_process_entries(fake: ProcFS) -> None:
    assert fake.list_pids() == [2, 4242, 4343, 5000]


def test_list_pids_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ProcfsError, match="cannot list"):
        ProcFS(tmp_path / "nope").list_pids()


def test_root_and_pid_path() -> None:
    assert ProcFS(Path("/host/proc")).pid_path(7) == Path("/host/proc/7")


def test_fixture_snapshot_go_server(fake: ProcFS) -> None:
    info = fake.snapshot(4242)
    assert info is not None
    assert info.key == ProcessKey(4242, 987654)
    assert (info.pid, info.start_time, info.ppid, info.comm, info.name) == (
        4242,
        987654,
        4100,
        "api-server",
        "api-server",
    )
    assert info.threads == 12
    assert info.cpu_seconds == pytest.approx(15.0)  # (1234 + 266) ticks / 100
    assert info.cpus_allowed == frozenset({0, 1, 2, 3, 8, 10, 11}) and info.affinity_cpus == 7
    assert info.go_env == GoEnv("4", "gctrace=0,madvdontneed=1")
    assert (info.gomaxprocs_env, info.godebug_env) == ("4", "gctrace=0,madvdontneed=1")
    assert info.cgroup is not None and "pod0d5e8c1a-3b7f-4c2e-9a61-2f0c9d8e7b6a" in info.cgroup
    assert info.errors == ()
    # exe is a symlink to /bin/sh in the fixture, as /proc/PID/exe is a (magic) link
    st = os.stat("/bin/sh")
    assert info.exe is not None
    assert (info.exe.path, info.exe.deleted) == ("/bin/sh", False)
    assert (info.exe.dev, info.exe.inode, info.exe.size) == (st.st_dev, st.st_ino, st.st_size)
    assert info.exe.file_key == (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    assert info.exe.open_path == FIXTURES / "4242" / "exe"
    assert info.mappings is not None and len(info.mappings) == 11
    # maps show another device/inode than stat(): matched by path
    assert [(m.start, m.offset) for m in info.exe_mappings()] == [(0x400000, 0)]
    assert len(info.exe_mappings(executable_only=False)) == 3
    heap = next(m for m in info.mappings if m.contains(0xC000123456))
    assert heap is not None and heap.path == "" and heap.writable
    spaced = next(m for m in info.mappings if m.contains(0x7F3C2B000010))
    assert spaced is not None and spaced.path == "/data/my file (v2).db"


def test_fixture_snapshot_keeps_no_other_environment(fake: ProcFS) -> None:
    info = fake.snapshot(4242)
    assert info is not None
    assert "SECRET=hunter2" in (FIXTURES / "4242" / "environ").read_text()  # the fixture does contain secrets
    for text in (repr(info), str(info), str(dataclasses.asdict(info))):
        for secret in ("hunter2", "SECRET", "correct-horse", "DB_PASSWORD", "HOSTNAME", "/usr/local/bin"):
            assert secret not in text
    blob = pickle.dumps(info)
    assert b"hunter2" not in blob and b"correct-horse" not in blob
    assert "99" not in (info.gomaxprocs_env or "")  # the later duplicate is ignored


def test_fixture_snapshot_awkward_process(fake: ProcFS) -> None:
    info = fake.snapshot(4343)
    assert info is not None
    assert info.comm == "a) b (c" and info.name == "a) b (c" and info.ppid == 1 and info.state == "R"
    assert info.go_env == GoEnv() and info.gomaxprocs_env is None
    assert info.cpus_allowed == frozenset({1})
    assert info.mappings is not None
    lib = next(m for m in info.mappings if m.contains(0x7F00AA000100))
    assert lib is not None and lib.deleted and lib.path == "/tmp/libgone.so"
    code = info.exe_mappings()
    assert len(code) == 1 and file_offset(code[0], 0x55D0C0A02010) == 0x2010
    assert "hunter2" not in repr(info) and "SECRET" not in str(dataclasses.asdict(info))


def test_fixture_kernel_thread_is_skipped(fake: ProcFS) -> None:
    assert fake.snapshot(2) is None
    assert fake.read_stat(2).kernel_thread and not fake.read_stat(4242).kernel_thread


def test_fixture_zombie_is_gone(fake: ProcFS) -> None:
    with pytest.raises(ProcessGoneError, match="state Z"):
        fake.snapshot(5000)


def test_fixture_missing_pid_is_gone(fake: ProcFS) -> None:
    with pytest.raises(ProcessGoneError):
        fake.snapshot(999999)
    with pytest.raises(ProcessGoneError):
        fake.read_cgroup(999999)


def test_fixture_single_file_readers(fake: ProcFS) -> None:
    assert fake.read_stat(4242).start_time == 987654
    assert fake.read_stat(4343).comm == "a) b (c"
    assert fake.read_cgroup(4343) == "0::/system.slice/weird.service\n"


def test_fixture_pid_reused_during_snapshot(fake_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = fake_copy / "4242" / "stat"
    original = procfs.parse_maps

    def reuse_then_parse(text: str) -> list[MappedRegion]:
        # between the first and the last read of stat, pid 4242 becomes another process
        stat.write_text(stat.read_text().replace(" 987654 ", " 987999 "))
        return original(text)

    monkeypatch.setattr(procfs, "parse_maps", reuse_then_parse)
    with pytest.raises(ProcessReusedError, match="987654 -> 987999") as exc:
        ProcFS(fake_copy).snapshot(4242)
    assert isinstance(exc.value, ProcessGoneError)


def test_fixture_pid_dir_vanishes_during_snapshot(fake_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = procfs.parse_status

    def vanish_then_parse(text: str) -> procfs.Status:
        shutil.rmtree(fake_copy / "4242")
        return original(text)

    monkeypatch.setattr(procfs, "parse_status", vanish_then_parse)
    with pytest.raises(ProcessGoneError):
        ProcFS(fake_copy).snapshot(4242)


def test_fixture_thread_id_is_refused(fake_copy: Path) -> None:
    status = fake_copy / "4343" / "status"
    status.write_text(status.read_text().replace("Tgid:\t4343", "Tgid:\t4242"))
    with pytest.raises(ProcfsError, match="thread of process 4242"):
        ProcFS(fake_copy).snapshot(4343)


def test_fixture_malformed_file_names_the_pid(fake_copy: Path) -> None:
    (fake_copy / "4343" / "maps").write_text("not a maps line\n")
    with pytest.raises(ProcfsError, match=r"pid 4343: maps: malformed"):
        ProcFS(fake_copy).snapshot(4343)


def test_fixture_denied_optional_files(fake: ProcFS, monkeypatch: pytest.MonkeyPatch) -> None:
    original = procfs._PidDir.read_bytes

    def deny(self: procfs._PidDir, name: str) -> bytes:
        if name in {"environ", "maps"}:
            raise procfs._translate(PermissionError(errno.EACCES, "Permission denied"), self.pid, name)
        return original(self, name)

    monkeypatch.setattr(procfs._PidDir, "read_bytes", deny)
    info = fake.snapshot(4242)
    assert info is not None
    assert info.go_env is None and info.mappings is None and info.exe is not None and info.cgroup is not None
    assert info.exe_mappings() == [] and info.gomaxprocs_env is None
    assert len(info.errors) == 2 and all("permission denied" in e for e in info.errors)


def test_processinfo_is_plain_frozen_data() -> None:
    info = ProcessInfo(
        key=ProcessKey(1, 2),
        comm="x",
        name="x",
        state="S",
        ppid=0,
        threads=1,
        cpu_seconds=0.0,
        cpus_allowed=frozenset({0}),
        exe=None,
        mappings=None,
        go_env=None,
        cgroup=None,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.ppid = 3  # type: ignore[misc]
    assert info.exe_mappings() == [] and info.gomaxprocs_env is None and info.godebug_env is None
    assert ProcessKey(1, 2) < ProcessKey(1, 3) and {ProcessKey(1, 2): 1}[ProcessKey(1, 2)] == 1
