"""agent/gobinary/arm64.py against GNU objdump for AArch64 on hand-assembled code.

Every instruction word is built here by hand from the Arm ARM encodings;
binutils' ``aarch64-linux-gnu-objdump`` disassembles the same bytes at the
same address, and a tiny interpreter over its text (ADRP pages, ADD
immediates, load offsets, which register each instruction writes) gives the
expected load addresses. The decoder must agree on every sequence, including
the ones where it must find nothing (clobbered base, a branch in between,
64-bit and SP-based loads).
"""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from agent.gobinary import arm64
from tests.support.capabilities import need

OBJDUMP = "aarch64-linux-gnu-objdump"

# ---- a hand assembler (Arm ARM C6.2: ADRP, ADD (immediate), LDR/LDRSW (immediate), LDUR/LDURSW, ORR, B, BL, RET)


def adrp(rd: int, pc: int, target: int) -> int:
    pages = ((target & ~0xFFF) - (pc & ~0xFFF)) >> 12
    imm = pages & 0x1FFFFF
    return 0x90000000 | (imm & 0x3) << 29 | (imm >> 2) << 5 | rd


def add_imm(rd: int, rn: int, imm12: int, lsl12: bool = False) -> int:
    return 0x91000000 | int(lsl12) << 22 | imm12 << 10 | rn << 5 | rd


def ldr_w(rt: int, rn: int, byte_off: int) -> int:
    return 0xB9400000 | (byte_off // 4) << 10 | rn << 5 | rt


def ldrsw(rt: int, rn: int, byte_off: int) -> int:
    return 0xB9800000 | (byte_off // 4) << 10 | rn << 5 | rt


def ldr_x(rt: int, rn: int, byte_off: int) -> int:
    return 0xF9400000 | (byte_off // 8) << 10 | rn << 5 | rt


def ldur_w(rt: int, rn: int, simm9: int) -> int:
    return 0xB8400000 | (simm9 & 0x1FF) << 12 | rn << 5 | rt


def ldursw(rt: int, rn: int, simm9: int) -> int:
    return 0xB8800000 | (simm9 & 0x1FF) << 12 | rn << 5 | rt


def mov_reg(rd: int, rm: int) -> int:  # ORR Xd, XZR, Xm
    return 0xAA0003E0 | rm << 16 | rd


def b(pc: int, target: int) -> int:
    return 0x14000000 | ((target - pc) >> 2) & 0x3FFFFFF


def bl(pc: int, target: int) -> int:
    return 0x94000000 | ((target - pc) >> 2) & 0x3FFFFFF


def cbz_w(rt: int, pc: int, target: int) -> int:
    return 0x34000000 | (((target - pc) >> 2) & 0x7FFFF) << 5 | rt


RET = 0xD65F03C0
NOP = 0xD503201F
SP = 31

# ---- the oracle: objdump's disassembly, interpreted

_LINE = re.compile(r"^\s*([0-9a-f]+):\s+([0-9a-f]{8})\s+(\S+)\s*(.*)$")
_REG = r"[xw](\d+)"
_BRANCH = re.compile(r"^(b|bl|br|blr|ret|cbz|cbnz|tbz|tbnz|b\.\w+)$")


def objdump(words: list[int], vma: int, tmp: Path) -> list[tuple[int, str, str]]:
    """(address, mnemonic, operands) per word, as binutils decodes them."""
    raw = tmp / "code.bin"
    raw.write_bytes(b"".join(struct.pack("<I", w) for w in words))
    out = subprocess.run(
        [OBJDUMP, "-D", "-b", "binary", "-m", "aarch64", f"--adjust-vma={vma:#x}", str(raw)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = []
    for line in out.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append((int(m.group(1), 16), m.group(3), m.group(4).split("//")[0].strip()))
    assert len(rows) == len(words), out
    return rows


def expected_loads(rows: list[tuple[int, str, str]]) -> list[int]:
    """Addresses of 32-bit loads whose base is known from adrp/add, per objdump's text."""
    known: dict[str, int] = {}
    out: list[int] = []
    for _addr, mnem, ops in rows:
        if mnem == "adrp":
            m = re.fullmatch(r"x(\d+), 0x([0-9a-f]+)(?: <.*>)?", ops)
            assert m, ops
            known[m.group(1)] = int(m.group(2), 16)
            continue
        if mnem == "add":
            m = re.fullmatch(r"x(\d+), x(\d+), #0x([0-9a-f]+)(, lsl #12)?", ops)
            if m and m.group(2) in known:
                known[m.group(1)] = known[m.group(2)] + (int(m.group(3), 16) << (12 if m.group(4) else 0))
                continue
        if mnem in ("ldr", "ldrsw", "ldur", "ldursw"):
            m = re.fullmatch(r"([xw])(\d+), \[x(\d+)(?:, #(-?\d+))?\]", ops)
            is32 = m is not None and (mnem in ("ldrsw", "ldursw") or m.group(1) == "w")
            if m and is32 and m.group(3) in known:
                out.append(known[m.group(3)] + int(m.group(4) or 0))
        if _BRANCH.match(mnem):
            known.clear()
        else:
            first = re.match(_REG, ops)
            if first:
                known.pop(first.group(1), None)
    return out


@pytest.fixture(scope="module")
def have_objdump() -> None:
    need(shutil.which(OBJDUMP) is not None, f"{OBJDUMP} (apt-get install binutils-aarch64-linux-gnu)")


GOMAXPROCS_VAR = 0x17D83C  # runtime.gomaxprocs in a Go 1.21 arm64 exe
VMA = 0x16060


def _case(name: str, vma: int, words: list[int], n: int) -> tuple[str, int, list[int], int]:
    return (name, vma, words, n)


def _cases() -> list[tuple[str, int, list[int], int]]:
    v, t = VMA, GOMAXPROCS_VAR
    lo = t & 0xFFF
    return [
        # Go 1.21+: ADRP R27; MOVW lo12(R27), R1  (what runtime.GOMAXPROCS does)
        _case("go121-adrp-ldrsw", v, [adrp(27, v, t), ldrsw(1, 27, lo), RET], 1),
        _case("adrp-ldr-w", v, [adrp(3, v, t), ldr_w(4, 3, lo)], 1),
        # Go 1.19/1.20: ADRP R27; ADD $lo12, R27, R27; MOVW (R27), R1
        _case("go119-adrp-add-ldrsw", v, [adrp(27, v, t), add_imm(27, 27, lo), ldrsw(1, 27, 0)], 1),
        _case("add-into-other-reg", v, [adrp(0, v, t), add_imm(5, 0, lo), ldr_w(1, 5, 4)], 1),
        _case("add-lsl12", v, [adrp(2, v, t), add_imm(2, 2, 3, lsl12=True), ldr_w(1, 2, 8)], 1),
        _case("ldur-negative", v, [adrp(2, v, t), ldur_w(1, 2, -4), ldursw(6, 2, 252)], 2),
        _case("target-below-pc", 0x7FF000, [adrp(9, 0x7FF000, 0x10000), ldrsw(1, 9, 0x40)], 1),
        _case("far-target", 0x10000, [adrp(9, 0x10000, 0x10000 + (1 << 31) + 0x123000), ldrsw(1, 9, 16)], 1),
        _case("nops-between", v, [adrp(27, v, t), NOP, NOP, ldrsw(1, 27, lo)], 1),
        _case("two-globals", v, [adrp(0, v, 0x14A718), add_imm(0, 0, 0x718), adrp(27, v + 8, t), ldrsw(1, 27, lo)], 1),
        _case("base-reused-after-load", v, [adrp(27, v, t), ldrsw(1, 27, lo), ldr_w(2, 27, lo + 4)], 2),
        # Nothing to find:
        _case("base-clobbered-by-mov", v, [adrp(27, v, t), mov_reg(27, 0), ldrsw(1, 27, lo)], 0),
        _case("base-clobbered-by-own-load", v, [adrp(1, v, t), ldrsw(1, 1, lo), ldrsw(2, 1, lo)], 1),
        _case("branch-between", v, [adrp(27, v, t), b(v + 4, v + 8), ldrsw(1, 27, lo)], 0),
        _case("call-between", v, [adrp(27, v, t), bl(v + 4, v + 0x100), ldrsw(1, 27, lo)], 0),
        _case("cbz-between", v, [adrp(27, v, t), cbz_w(3, v + 4, v + 12), ldrsw(1, 27, lo)], 0),
        _case("64-bit-load", v, [adrp(27, v, t), ldr_x(1, 27, lo & ~7)], 0),
        _case("sp-based", v, [ldr_w(1, SP, 28), add_imm(SP, SP, 48), ldrsw(0, SP, 4)], 0),
        _case("no-adrp", v, [ldrsw(1, 27, lo), ldr_w(1, 3, 0)], 0),
    ]


@pytest.mark.parametrize(("name", "vma", "words", "n"), _cases(), ids=[c[0] for c in _cases()])
def test_decoder_agrees_with_objdump(
    have_objdump: None, tmp_path: Path, name: str, vma: int, words: list[int], n: int
) -> None:
    want = expected_loads(objdump(words, vma, tmp_path))
    code = b"".join(struct.pack("<I", w) for w in words)
    assert arm64.int32_loads(code, vma) == want
    assert len(want) == n, (name, [hex(a) for a in want])  # the case is what its name says


def test_gomaxprocs_sequence_reads_the_variable(have_objdump: None, tmp_path: Path) -> None:
    """The Go 1.21 arm64 prologue of runtime.GOMAXPROCS, word for word (go tool objdump of a real build)."""
    words = [0xF9400B90, 0xEB3063FF, 0x540004A9, 0xF81D0FFE, 0xF81F83FD, 0xD10023FD, 0xF9001FE0, NOP, NOP]
    words += [0x900009A0, 0x911C6000, 0x94000E75, 0xF0000B3B, 0xB9883F61, 0xB9001FE1]
    vma = 0x16030
    want = expected_loads(objdump(words, vma, tmp_path))
    assert arm64.int32_loads(b"".join(struct.pack("<I", w) for w in words), vma) == want == [GOMAXPROCS_VAR]


def test_random_adrp_targets_agree_with_objdump(have_objdump: None, tmp_path: Path) -> None:
    """2,000 random ADRP words at random 4-byte-aligned PCs: the page each computes."""
    rnd = random.Random(14)
    vma = rnd.randrange(1 << 20, 1 << 40) & ~0xFFF
    words = [0x90000000 | rnd.getrandbits(31) & 0x60FFFFE0 | rnd.randrange(31) for _ in range(2000)]
    rows = objdump(words, vma, tmp_path)
    for (addr, mnem, ops), w in zip(rows, words, strict=True):
        assert mnem == "adrp", (hex(w), mnem)
        page = int(ops.split(", 0x")[1].split()[0], 16)
        assert arm64.adrp_target(w, addr) == page, (hex(w), hex(addr), ops)


def _random_code(rnd: random.Random, vma: int, n: int, arbitrary: bool) -> list[int]:
    """A mix of the decoded encodings over few registers (so bases are often known), plus
    arbitrary 32-bit words when ``arbitrary``."""
    words: list[int] = []
    for i in range(n):
        pc = vma + 4 * i
        kind = rnd.randrange(6 if arbitrary else 5)
        r = rnd.randrange(4)
        if kind == 0:
            words.append(adrp(r, pc, rnd.randrange(1 << 32)))
        elif kind == 1:
            words.append(add_imm(r, rnd.randrange(4), rnd.randrange(4096), rnd.random() < 0.2))
        elif kind == 2:
            words.append(rnd.choice((ldr_w, ldrsw))(rnd.randrange(5), rnd.randrange(4), 4 * rnd.randrange(4096)))
        elif kind == 3:
            words.append(rnd.choice((ldur_w, ldursw))(rnd.randrange(5), rnd.randrange(4), rnd.randrange(-256, 256)))
        elif kind == 4:
            words.append(mov_reg(r, rnd.randrange(8)))
        else:
            words.append(rnd.getrandbits(32))
    return words


def test_random_sequences_agree_with_objdump(have_objdump: None, tmp_path: Path) -> None:
    """3,000 random ADRP/ADD/LDR/LDUR/MOV words: exactly the loads objdump's reading gives."""
    vma = 0x400000
    words = _random_code(random.Random(1414), vma, 3000, arbitrary=False)
    want = expected_loads(objdump(words, vma, tmp_path))
    assert arm64.int32_loads(b"".join(struct.pack("<I", w) for w in words), vma) == want
    assert len(want) > 300


def _is_subsequence(small: list[int], big: list[int]) -> bool:
    it = iter(big)
    return all(x in it for x in small)


def test_random_words_never_invent_a_load(have_objdump: None, tmp_path: Path) -> None:
    """With arbitrary words mixed in (SIMD loads, undefined encodings...) the decoder may forget a
    register objdump's reading keeps, never the reverse: what it reports, objdump confirms."""
    vma = 0x400000
    words = _random_code(random.Random(4141), vma, 6000, arbitrary=True)
    want = expected_loads(objdump(words, vma, tmp_path))
    got = arm64.int32_loads(b"".join(struct.pack("<I", w) for w in words), vma)
    assert _is_subsequence(got, want)
    assert len(got) >= 0.8 * len(want) > 200


def test_trailing_partial_word_is_ignored() -> None:
    code = struct.pack("<II", adrp(27, VMA, GOMAXPROCS_VAR), ldrsw(1, 27, 0x83C)) + b"\x61\x3f"
    assert arm64.int32_loads(code, VMA) == [GOMAXPROCS_VAR]
    assert arm64.int32_loads(b"", VMA) == []
