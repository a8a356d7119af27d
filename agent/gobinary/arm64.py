"""Which globals a piece of arm64 (A64) code reads as 32-bit values: ADRP-based addressing.

A64 has no PC-relative load with a 4 GiB reach, so Go (and every arm64
compiler) reaches a global in two steps: ``ADRP Xn, page`` puts the 4 KiB page
of the target in a register, then either

- ``LDR Wt, [Xn, #lo12]`` / ``LDRSW Xt, [Xn, #lo12]`` (Go 1.21+: ``MOVW off(R27), R1``), or
- ``ADD Xn, Xn, #lo12`` followed by ``LDR(SW) Wt, [Xn]`` (Go 1.19 and 1.20).

Both forms are position independent (the linker fills in page and offset
relative to the instruction), so exe and PIE builds decode alike and the
results are link-time addresses. Only the handful of encodings needed for
that is decoded; everything else just ends what we know about the register it
may write. Pure: bytes in, addresses out.
"""

from __future__ import annotations

import struct

# Encodings (Arm ARM, C4.1 "A64 instruction set encoding"); (mask, value).
_ADRP = (0x9F000000, 0x90000000)  # ADRP Xd, label
_ADD_IMM64 = (0xFF800000, 0x91000000)  # ADD Xd|SP, Xn|SP, #imm12{, LSL #12}  (sf=1, op=0, S=0)
_LDR_W_UIMM = (0xFFC00000, 0xB9400000)  # LDR Wt, [Xn|SP, #imm12*4]
_LDRSW_UIMM = (0xFFC00000, 0xB9800000)  # LDRSW Xt, [Xn|SP, #imm12*4]
_LDUR_W = (0xFFE00C00, 0xB8400000)  # LDUR Wt, [Xn|SP, #simm9]
_LDURSW = (0xFFE00C00, 0xB8800000)  # LDURSW Xt, [Xn|SP, #simm9]
# Control flow ends what we know: B/BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, BR/BLR/RET.
_BRANCHES = (
    (0x7C000000, 0x14000000),
    (0xFF000010, 0x54000000),
    (0x7E000000, 0x34000000),
    (0x7E000000, 0x36000000),
    (0xFE000000, 0xD6000000),
)
_SP = 31  # as a base register, 31 is SP, never a register ADRP wrote


def _is(word: int, enc: tuple[int, int]) -> bool:
    return word & enc[0] == enc[1]


def _sext(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def adrp_target(word: int, pc: int) -> int:
    """The page address ``ADRP`` at ``pc`` computes (caller checked the encoding)."""
    imm = _sext(((word >> 5) & 0x7FFFF) << 2 | (word >> 29) & 0x3, 21)
    return (pc & ~0xFFF) + (imm << 12)


def int32_loads(code: bytes, addr: int) -> list[int]:
    """Addresses of the 32-bit loads whose base register came from ADRP (+ ADD), in code order.

    ``code`` is little-endian A64 starting at link-time address ``addr``.
    A register's value is known from an ``ADRP`` until an instruction that may
    write it, or any branch (a join point could bring another value).
    """
    known: dict[int, int] = {}
    out: list[int] = []
    for off in range(0, len(code) - len(code) % 4, 4):
        (word,) = struct.unpack_from("<I", code, off)
        rd, rn = word & 0x1F, (word >> 5) & 0x1F
        if _is(word, _ADRP):
            known[rd] = adrp_target(word, addr + off)
            continue
        if _is(word, _ADD_IMM64) and rn in known and rn != _SP:
            shift = 12 if word & (1 << 22) else 0
            known[rd] = known[rn] + (((word >> 10) & 0xFFF) << shift)
            continue
        if (_is(word, _LDR_W_UIMM) or _is(word, _LDRSW_UIMM)) and rn in known and rn != _SP:
            out.append(known[rn] + ((word >> 10) & 0xFFF) * 4)
        elif (_is(word, _LDUR_W) or _is(word, _LDURSW)) and rn in known and rn != _SP:
            out.append(known[rn] + _sext((word >> 12) & 0x1FF, 9))
        if any(_is(word, b) for b in _BRANCHES):
            known.clear()
        else:
            known.pop(rd, None)  # most encodings write bits 4:0; forgetting too much only costs a miss
    return out
