"""The pclntab parser on synthetic tables of every format (tests/pclnwriter.py)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import BinaryError, CorruptBinaryError, NotGoError, UnsupportedGoError
from agent.gobinary.pclntab import Frame, LineTable, PclnVersion, sniff_version
from tests.support.pclnwriter import Func, Inline, Row, build, encode_pcvalue

ALL = list(PclnVersion)

PROGRAM = [
    Func("main.plain", 0x40, [Row(0x10, "/src/main.go", 10), Row(0x40, "/src/main.go", 12)]),
    # main.outer inlines main.mid, which inlines main.leaf. A parentPc names an
    # instruction whose position is the call site, as the compiler emits:
    #   [0x00,0x08) outer, line 20        [0x08,0x10) outer, line 21: calls mid
    #   [0x10,0x14) mid, line 32: calls leaf   [0x14,0x18) mid's own body, line 31
    #   [0x18,0x20) leaf's body, leaf.go:41   [0x20,0x60) outer again, line 22
    Func(
        "main.outer",
        0x60,
        [
            Row(0x08, "/src/main.go", 20),
            Row(0x10, "/src/main.go", 21),
            Row(0x14, "/src/mid.go", 32, inl=0),
            Row(0x18, "/src/mid.go", 31, inl=0),
            Row(0x20, "/src/leaf.go", 41, inl=1),
            Row(0x60, "/src/main.go", 22),
        ],
        [Inline("main.mid", 0x08, "/src/main.go", 21), Inline("main.leaf", 0x10, "/src/mid.go", 32)],
    ),
    # rows end before the function does: the tail is padding (no file, line -1)
    Func("runtime.tail", 0x30, [Row(0x20, "/go/src/runtime/proc.go", 100)]),
]


def table(version: PclnVersion, **kw: int) -> LineTable:
    b = build(PROGRAM, version, **kw)
    return LineTable(b.table, text_start=b.text_start, gofunc=b.gofunc, read=b.read)


@pytest.mark.parametrize("version", ALL)
def test_header(version: PclnVersion) -> None:
    t = table(version)
    assert t.version == version
    assert t.nfunc == 3
    assert t.ptrsize == 8
    assert [n for n, _, _ in t.functions()] == ["main.plain", "main.outer", "runtime.tail"]
    assert t.entries == [0x401000, 0x401040, 0x4010A0, 0x4010D0]


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize(
    ("pc", "expected"),
    [
        (0x401000, Frame("main.plain", "/src/main.go", 10)),
        (0x40100F, Frame("main.plain", "/src/main.go", 10)),
        (0x401010, Frame("main.plain", "/src/main.go", 12)),
        (0x40103F, Frame("main.plain", "/src/main.go", 12)),
        (0x401040, Frame("main.outer", "/src/main.go", 20)),
        # addr2line semantics: physical function, innermost position
        (0x401058, Frame("main.outer", "/src/leaf.go", 41)),
        (0x4010C0, Frame("runtime.tail", "", -1)),
    ],
)
def test_lookup(version: PclnVersion, pc: int, expected: Frame) -> None:
    assert table(version).lookup(pc) == expected


@pytest.mark.parametrize("version", ALL)
def test_outside_text(version: PclnVersion) -> None:
    t = table(version)
    assert t.lookup(0x400FFF) is None
    assert t.lookup(0x4010D0) is None
    assert t.frames(0) == []


@pytest.mark.parametrize("version", ALL)
def test_inline_chain(version: PclnVersion) -> None:
    t = table(version)
    assert t.frames(0x401058) == [
        Frame("main.leaf", "/src/leaf.go", 41),
        Frame("main.mid", "/src/mid.go", 32),
        Frame("main.outer", "/src/main.go", 21),
    ]
    assert t.frames(0x401054) == [Frame("main.mid", "/src/mid.go", 31), Frame("main.outer", "/src/main.go", 21)]
    assert t.frames(0x401060) == [Frame("main.outer", "/src/main.go", 22)]


@pytest.mark.parametrize("version", [PclnVersion.GO118, PclnVersion.GO120])
def test_text_start_from_moduledata(version: PclnVersion) -> None:
    """Go >=1.26 writes 0 as textStart; the caller's value must win."""
    b = build(PROGRAM, version, header_text_start=0)
    t = LineTable(b.table, text_start=b.text_start)
    assert t.lookup(0x401010) == Frame("main.plain", "/src/main.go", 12)
    assert LineTable(b.table).lookup(0x10) == Frame("main.plain", "/src/main.go", 12)


def test_without_inline_reader_frames_are_physical() -> None:
    b = build(PROGRAM, PclnVersion.GO120)
    t = LineTable(b.table, text_start=b.text_start)
    assert t.frames(0x401058) == [Frame("main.outer", "/src/leaf.go", 41)]


@pytest.mark.parametrize(
    ("runs", "encoded"),
    [
        ([(4, 0)], bytes([2, 4, 0])),  # -1 -> 0: delta +1 -> zigzag 2
        ([(4, 5), (8, 3)], bytes([12, 4, 3, 4, 0])),  # +6 -> 12; -2 -> 3
        ([(300, 1)], bytes([4, 0xAC, 0x02, 0])),
    ],
)
def test_pcvalue_encoding_matches_go(runs: list[tuple[int, int]], encoded: bytes) -> None:
    assert encode_pcvalue(runs) == encoded


def test_sniff_version() -> None:
    for version in ALL:
        assert sniff_version(build(PROGRAM, version).table[:16]) == version
    assert sniff_version(b"\xf1\xff\xff\xff\x00\x00\x03\x08" + bytes(8)) is None  # quantum 3
    assert sniff_version(b"\x00" * 16) is None


def test_unknown_magic_is_refused() -> None:
    data = bytearray(build(PROGRAM, PclnVersion.GO120).table)
    struct.pack_into("<I", data, 0, 0xFFFFFFF2)
    with pytest.raises(UnsupportedGoError, match="unknown magic 0xfffffff2"):
        LineTable(bytes(data))


@pytest.mark.parametrize("data", [b"", b"\xf1\xff\xff\xff", b"\x7fELF" + bytes(60), bytes(64)])
def test_not_a_table(data: bytes) -> None:
    with pytest.raises(NotGoError):
        LineTable(data)


@pytest.mark.parametrize("version", ALL)
def test_truncated_tables_fail_cleanly(version: PclnVersion) -> None:
    """Every cut either raises a BinaryError or answers exactly what the whole table answers."""
    full = build(PROGRAM, version).table
    pcs = range(0x401000, 0x4010D0, 8)
    want = {pc: LineTable(full, text_start=0x401000).frames(pc) for pc in pcs}
    assert all(want.values()) and {f[-1].function for f in want.values()} == {n.name for n in PROGRAM}
    answered = []
    for cut in range(0, len(full), 7):
        try:
            t = LineTable(full[:cut], text_start=0x401000)
            got = {pc: t.frames(pc) for pc in pcs}
        except BinaryError:
            continue
        assert got == want, f"cut at {cut} of {len(full)} bytes answered other frames"
        answered.append(cut)
    # only a cut into the table's last bytes (unread padding) may still answer
    assert all(cut > len(full) - 64 for cut in answered), answered


def test_unsorted_function_table() -> None:
    b = build(PROGRAM, PclnVersion.GO120)
    t = LineTable(b.table, text_start=b.text_start)
    data = bytearray(b.table)
    struct.pack_into("<I", data, t.functab + 8, 0xFFFF)  # second entry beyond the third
    with pytest.raises(CorruptBinaryError, match="not sorted"):
        LineTable(bytes(data), text_start=b.text_start)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(ALL),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_tables_only_raise_binary_errors(version: PclnVersion, edits: list[tuple[int, int]]) -> None:
    b = build(PROGRAM, version)
    data = bytearray(b.table)
    for pos, value in edits:
        data[pos % len(data)] = value
    try:
        t = LineTable(bytes(data), text_start=b.text_start, gofunc=b.gofunc, read=b.read)
        for pc in range(0x400FF0, 0x4010E0, 4):
            t.lookup(pc)
            t.frames(pc)
        list(t.functions())
    except BinaryError:
        pass
