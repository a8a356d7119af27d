"""Which mappings the sampler hands back after compiling: compiler code only, never data."""

from __future__ import annotations

from agent.sampling.sampler import compiler_text_ranges

MAPS = """\
55d0c0a00000-55d0c0a2a000 r--p 00000000 fe:00 131 /usr/bin/python3.11
7f00a0000000-7f00a6100000 r-xp 00c00000 fe:00 900 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f00a6100000-7f00a6800000 r--p 06d00000 fe:00 900 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f00a6800000-7f00a6900000 rw-p 07400000 fe:00 900 /usr/lib/x86_64-linux-gnu/libLLVM-14.so.1
7f00b0000000-7f00b3500000 r-xp 00400000 fe:00 901 /usr/lib/llvm-14/lib/libclang-cpp.so.14
7f00b4000000-7f00b4100000 r-xp 00010000 fe:00 902 /usr/lib/x86_64-linux-gnu/libbcc.so.0.26.0
7f00b5000000-7f00b5100000 r-xp 00010000 fe:00 903 /usr/lib/x86_64-linux-gnu/libc.so.6
7f00b6000000-7f00b6100000 r-xp 00000000 00:00 0
7f00b7000000-7f00b7100000 r-xp 00010000 fe:00 904 /opt/evil/notlibLLVM.so
"""


def test_only_the_compilers_code_is_dropped() -> None:
    assert compiler_text_ranges(MAPS) == [
        (0x7F00A0000000, 0x7F00A6100000),  # LLVM code; its relocated read-only data and its data stay
        (0x7F00B0000000, 0x7F00B3500000),
        (0x7F00B4000000, 0x7F00B4100000),
    ]
    assert compiler_text_ranges("") == []
