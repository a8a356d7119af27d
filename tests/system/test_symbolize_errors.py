"""Bad input: one clear line on stderr and exit status 2; never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import BinaryError
from agent.gobinary.elf import ElfImage, open_image
from agent.gobinary.symbolizer import GoBinary
from agent.lab.gotoolchain import find_toolchain
from tests.support import gobuild
from tests.support.capabilities import need


@pytest.fixture(scope="module")
def go_binary() -> Path:
    tc = find_toolchain((1, 27)) or find_toolchain()
    need(tc is not None, "a Go toolchain (run scripts/setup.sh)")
    assert tc is not None
    return gobuild.build_one(tc, gobuild.SYMTEST, "exe", "sw")


def symbolize(*args: str, stdin: str = "401000\n") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "symbolize", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], words: str) -> None:
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("node-agent: ")
    assert words in lines[0]
    assert "Traceback" not in proc.stderr


def test_not_elf(tmp_path: Path) -> None:
    f = tmp_path / "script.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    assert_clean_error(symbolize(str(f)), "not an ELF file")


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    f.touch()
    assert_clean_error(symbolize(str(f)), "empty file")


def test_directory(tmp_path: Path) -> None:
    assert_clean_error(symbolize(str(tmp_path)), "is a directory")


def test_missing_file(tmp_path: Path) -> None:
    assert_clean_error(symbolize(str(tmp_path / "nope")), "no such file")


def test_not_go() -> None:
    elf = shutil.which("ls") or "/bin/ls"
    assert_clean_error(symbolize(elf), "no Go pclntab")


def test_no_permission(tmp_path: Path, go_binary: Path) -> None:
    f = tmp_path / "bin"
    shutil.copy(go_binary, f)
    f.chmod(0)
    if os.geteuid() == 0:
        # root reads anything; drop to nobody for this one run
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "symbolize", "--info", str(f)],
            capture_output=True,
            text=True,
            user=65534,
            timeout=60,
            check=False,
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
    else:
        proc = symbolize("--info", str(f))
    assert_clean_error(proc, "permission denied")


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.3, 0.6, 0.9, 0.999])
def test_truncated(tmp_path: Path, go_binary: Path, keep: float) -> None:
    data = go_binary.read_bytes()
    f = tmp_path / "truncated"
    f.write_bytes(data[: int(len(data) * keep)])
    proc = symbolize(str(f), stdin="401000\n4a0000\n")
    assert proc.returncode in (0, 2)
    assert "Traceback" not in proc.stderr
    if proc.returncode == 2:
        assert len(proc.stderr.splitlines()) == 1


def test_unknown_magic(tmp_path: Path, go_binary: Path) -> None:
    data = bytearray(go_binary.read_bytes())
    img = open_image(go_binary)
    sec = img.section(".gopclntab")
    assert sec is not None
    data[sec.offset : sec.offset + 4] = b"\xf2\xff\xff\xff"
    f = tmp_path / "future-go"
    f.write_bytes(bytes(data))
    assert_clean_error(symbolize(str(f)), "unknown magic 0xfffffff2")


def test_bad_addresses_answer_like_addr2line(go_binary: Path) -> None:
    proc = symbolize(str(go_binary), stdin="zz\n\n0x\n-5\n")
    assert proc.returncode == 0
    assert proc.stdout == "?\n?:0\n" * 4


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_binaries_only_raise_binary_errors(go_binary: Path, data: st.DataObject) -> None:
    raw = bytearray(go_binary.read_bytes())
    img = open_image(go_binary)
    targets = [s for s in img.sections if s.has_bits and s.size and s.name]
    for _ in range(data.draw(st.integers(1, 6))):
        sec = data.draw(st.sampled_from(targets))
        # bias towards the first bytes of a section: headers live there
        span = data.draw(st.sampled_from([64, 4096, sec.size]))
        pos = sec.offset + data.draw(st.integers(0, max(0, min(span, sec.size) - 1)))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw))) :]
    try:
        b = GoBinary(ElfImage(bytes(raw), name="mutated"))
        table = b.table
        step = max(1, (table.entries[-1] - table.entries[0]) // 300)
        for pc in range(table.entries[0] - 16, table.entries[-1] + 16, step):
            b.addr2line(pc)
            b.frames(pc)
        b.info()
    except BinaryError:
        pass
