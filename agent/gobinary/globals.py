"""Where a Go binary keeps ``runtime.gomaxprocs``: the symbol, or, stripped, the code that reads it.

Pure reading of the binary (no process is touched): the address travels with the file's
content it was derived from (agent.gobinary.sandbox derives it in the parsing child), and
agent.analysis.gomaxprocs reads the live value there, adjusted by each process's load bias.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.gobinary import amd64, arm64
from agent.gobinary.symbolizer import GoBinary

SHF_WRITE = 0x1
SHF_EXECINSTR = 0x4
# Per e_machine: the link-time addresses a function's code loads 32-bit values from.
_INT32_LOADS: dict[str, Callable[[bytes, int], list[int]]] = {
    "EM_X86_64": amd64.int32_loads,
    "EM_AARCH64": arm64.int32_loads,
}


def gomaxprocs_address(binary: GoBinary) -> tuple[int, str] | None:
    """Link-time address of ``runtime.gomaxprocs`` and how it was found."""
    sym = binary.image.symbol("runtime.gomaxprocs")
    if sym is not None and sym[0]:
        return sym[0], "symbol"
    decode = _INT32_LOADS.get(binary.image.machine)
    if decode is None:
        return None
    rec = binary.table.find_function("runtime.GOMAXPROCS")
    if rec is None:
        return None
    code = binary.image.read(rec.entry, min(rec.end - rec.entry, 512))
    for target in decode(code, rec.entry):
        if _writable_data(binary, target):
            return target, "code of runtime.GOMAXPROCS"
    return None


def _writable_data(binary: GoBinary, addr: int) -> bool:
    """In a writable, non-executable section (where Go keeps its globals)."""
    for sec in binary.image.sections:
        if sec.contains_addr(addr) and sec.flags & SHF_WRITE and not sec.flags & SHF_EXECINSTR:
            return True
    return False
