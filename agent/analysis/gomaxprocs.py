"""What GOMAXPROCS a Go process really runs with, and how we know.

``live``: read ``runtime.gomaxprocs`` (an int32) from the process's memory.
Its address comes from the symbol table, or — in stripped binaries — from
the code of ``runtime.GOMAXPROCS`` (located through pclntab), whose first
32-bit RIP-relative load is ``ret := int(gomaxprocs)``.

``inferred:<rule>`` when memory cannot be read, with the rule that decided:
  ``env``           GOMAXPROCS in the environment, as Go reads it (a positive
                    decimal int32; anything else is ignored);
  ``automaxprocs``  go.uber.org/automaxprocs linked in and GOMAXPROCS absent
                    from the environment (present at all, even invalid, and
                    automaxprocs leaves it alone): floor(leaf quota), min 1;
  ``go125-cgroup``  Go >= 1.25 default: min(CPUs, max(2, ceil(leaf limit)))
                    unless GODEBUG (or the binary's DefaultGODEBUG) turns
                    containermaxprocs off — the default for modules whose go
                    directive is <= 1.24;
  ``cpus``          otherwise the number of CPUs the process may run on.
Both Go 1.25 and automaxprocs read the limit of the process's own cgroup only,
not its ancestors'.
Computation here is pure; reading memory is a callable the caller supplies.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import NodeAgentError
from agent.gobinary.symbolizer import GoBinary

SHF_WRITE = 0x1
SHF_EXECINSTR = 0x4
MAX_PLAUSIBLE = 1 << 16  # Go caps nothing this high in practice; guards against garbage reads
_GO_INT = re.compile(r"-?[0-9]*")  # Go's runtime atoi: optional '-', ASCII digits, nothing else
_GO_PARSEINT = re.compile(r"[+-]?[0-9]+")  # strconv.ParseInt(s, 10, _): optional sign, at least one digit
PARSEINT_SINCE = (1, 26, 0)  # runtime/proc.go schedinit reads GOMAXPROCS with strconv.ParseInt from go1.26


@dataclass(frozen=True)
class Gomaxprocs:
    value: int | None
    source: str  # "live", "inferred:<rule>", or "unknown"
    detail: str = ""


@dataclass(frozen=True)
class Facts:
    """What inference needs to know about one process."""

    go_version: tuple[int, int, int] | None
    env_gomaxprocs: str | None
    env_godebug: str | None
    default_godebug: str
    automaxprocs: bool
    affinity_cpus: int  # CPUs the process may run on (sched_getaffinity)
    leaf_limit: float | None  # cores, the process's own cgroup only (what Go 1.25 and automaxprocs read)
    effective_limit: float | None  # cores, min over the cgroup and its ancestors


def go_atoi32(text: str) -> int | None:
    """The runtime's strconv.Atoi32: no spaces, no '+', ASCII digits only, must fit an
    int32 (leading zeros allowed, and a lone "-" is 0, as in Go)."""
    if not text or _GO_INT.fullmatch(text) is None:
        return None
    digits = text.lstrip("-").lstrip("0")
    if len(digits) > 10:  # beyond int32; also keeps int() off huge strings
        return None
    n = int(digits or "0")
    if text.startswith("-"):
        n = -n
    return n if -(1 << 31) <= n < (1 << 31) else None


def go_parseint32(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 32): like atoi32, but a leading '+' is allowed and a lone sign is not."""
    if _GO_PARSEINT.fullmatch(text) is None:
        return None
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 10:
        return None
    n = -int(digits or "0") if text.startswith("-") else int(digits or "0")
    return n if -(1 << 31) <= n < (1 << 31) else None


def parse_env_gomaxprocs(text: str | None, go_version: tuple[int, int, int] | None) -> int | None:
    """Go's rule (schedinit): a positive int32 applies, anything else is ignored; parsed as that
    version parses it (an unknown version: the older, stricter parser)."""
    if text is None:
        return None
    newer = go_version is not None and go_version >= PARSEINT_SINCE
    n = go_parseint32(text) if newer else go_atoi32(text)
    return n if n is not None and n > 0 else None


def containermaxprocs_enabled(env: str | None, default: str) -> bool:
    """As runtime.parsegodebug sets debug.containermaxprocs: 1, then DefaultGODEBUG, then
    $GODEBUG, left to right; a value Atoi32 rejects changes nothing; on when > 0."""
    value = 1
    for text in (default, env or ""):
        for field in text.split(","):
            key, sep, raw = field.partition("=")
            if sep and key == "containermaxprocs" and (n := go_atoi32(raw)) is not None:
                value = n
    return value > 0


def go125_default(affinity_cpus: int, leaf_limit: float | None) -> int:
    """Go 1.25's container-aware default: min(CPUs, max(2, ceil(limit)))."""
    if leaf_limit is None:
        return affinity_cpus
    return min(affinity_cpus, max(2, math.ceil(leaf_limit)))


def infer(f: Facts) -> Gomaxprocs:
    env = parse_env_gomaxprocs(f.env_gomaxprocs, f.go_version)
    if env is not None:
        return Gomaxprocs(env, "inferred:env", f"GOMAXPROCS={env} in the environment")
    if f.automaxprocs and f.env_gomaxprocs is None:
        # automaxprocs reads only its own cgroup's quota, and sets nothing without one.
        if f.leaf_limit is None or f.leaf_limit <= 0:
            return Gomaxprocs(f.affinity_cpus, "inferred:automaxprocs", "automaxprocs linked; no CPU quota")
        value = max(1, math.floor(f.leaf_limit))
        return Gomaxprocs(value, "inferred:automaxprocs", f"automaxprocs: floor({f.leaf_limit:g}) = {value}")
    if f.go_version is not None and f.go_version >= (1, 25, 0):
        if containermaxprocs_enabled(f.env_godebug, f.default_godebug):
            value = go125_default(f.affinity_cpus, f.leaf_limit)
            return Gomaxprocs(value, "inferred:go125-cgroup", "Go >= 1.25 container-aware default")
        detail = "Go >= 1.25 but containermaxprocs off (GODEBUG or go.mod <= 1.24); CPU count"
        return Gomaxprocs(f.affinity_cpus, "inferred:cpus", detail)
    return Gomaxprocs(f.affinity_cpus, "inferred:cpus", "default: the CPUs the process may run on")


# ---- live ------------------------------------------------------------------------------------


def _rip_loads(code: bytes, addr: int) -> list[int]:
    """Targets of 32-bit RIP-relative loads (movl/movslq disp(%rip), reg) in x86-64 code."""
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


def gomaxprocs_address(binary: GoBinary) -> tuple[int, str] | None:
    """Link-time address of ``runtime.gomaxprocs`` and how it was found."""
    sym = binary.image.symbol("runtime.gomaxprocs")
    if sym is not None and sym[0]:
        return sym[0], "symbol"
    if binary.image.machine != "EM_X86_64":
        return None
    rec = binary.table.find_function("runtime.GOMAXPROCS")
    if rec is None:
        return None
    code = binary.image.read(rec.entry, min(rec.end - rec.entry, 512))
    for target in _rip_loads(code, rec.entry):
        if _writable_data(binary, target):
            return target, "code of runtime.GOMAXPROCS"
    return None


def _writable_data(binary: GoBinary, addr: int) -> bool:
    """In a writable, non-executable section (where Go keeps its globals)."""
    for sec in binary.image.sections:
        if sec.contains_addr(addr) and sec.flags & SHF_WRITE and not sec.flags & SHF_EXECINSTR:
            return True
    return False


def read_live(read: Callable[[int, int], bytes], runtime_addr: int) -> int:
    """The int32 at ``runtime_addr`` of a live process, validated."""
    raw = read(runtime_addr, 4)
    (value,) = struct.unpack("<i", raw)
    if not 1 <= value <= MAX_PLAUSIBLE:
        raise NodeAgentError(f"implausible gomaxprocs {value} read at {runtime_addr:#x}")
    return int(value)
