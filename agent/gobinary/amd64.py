"""Which globals a piece of x86-64 code reads as 32-bit values: RIP-relative addressing.

Go reaches a global with one instruction, ``movl disp32(%rip), %reg`` (or the
sign-extending ``movslq``), exe and PIE alike, so the target is the address
of the next instruction plus the displacement: a link-time address. Only that
pair of encodings is decoded, at every byte offset (x86 has no alignment to
resynchronize on); callers validate what they find. Pure: bytes in, addresses out.
"""

from __future__ import annotations

import struct


def int32_loads(code: bytes, addr: int) -> list[int]:
    """Targets of 32-bit RIP-relative loads (movl/movslq disp(%rip), reg) in ``code`` at ``addr``."""
    targets = []
    i = 0
    n = len(code)
    while i + 6 <= n:
        start = i
        if 0x40 <= code[i] <= 0x4F:
            rex = code[i]
            i += 1
        else:
            rex = 0
        op = code[i] if i < n else 0
        if i + 6 <= n and ((op == 0x8B and not rex & 0x08) or (op == 0x63 and rex & 0x08)):
            modrm = code[i + 1]
            if modrm & 0xC7 == 0x05:
                (disp,) = struct.unpack_from("<i", code, i + 2)
                targets.append(addr + i + 6 + disp)
        i = start + 1
    return targets
