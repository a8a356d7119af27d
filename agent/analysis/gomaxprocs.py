"""What GOMAXPROCS a Go process really runs with, and how we know.

``live``: read ``runtime.gomaxprocs`` (an int32) from the process's memory.
Its address comes from the symbol table, or — in stripped binaries — from
the code of ``runtime.GOMAXPROCS`` (located through pclntab), whose first
32-bit load from writable data is ``ret := int(gomaxprocs)``: a RIP-relative
``movl`` on x86-64, an ADRP-based ``LDR``/``LDRSW`` on arm64 (decoders in
agent/gobinary/amd64.py and arm64.py).

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
from enum import StrEnum

from agent.errors import NodeAgentError

MAX_PLAUSIBLE = 1 << 16  # Go caps nothing this high in practice; guards against garbage reads
_GO_INT = re.compile(r"-?[0-9]*")  # Go's runtime atoi: optional '-', ASCII digits, nothing else
_GO_PARSEINT = re.compile(r"[+-]?[0-9]+")  # strconv.ParseInt(s, 10, _): optional sign, at least one digit
PARSEINT_SINCE = (1, 26, 0)  # runtime/proc.go schedinit reads GOMAXPROCS with strconv.ParseInt from go1.26


class GomaxprocsSource(StrEnum):
    """How the value was had: read live, or inferred by the rule named (see the module docstring)."""

    LIVE = "live"
    ENV = "inferred:env"
    AUTOMAXPROCS = "inferred:automaxprocs"
    GO125_CGROUP = "inferred:go125-cgroup"
    CPUS = "inferred:cpus"


@dataclass(frozen=True)
class Gomaxprocs:
    value: int | None
    source: GomaxprocsSource
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
        return Gomaxprocs(env, GomaxprocsSource.ENV, f"GOMAXPROCS={env} in the environment")
    if f.automaxprocs and f.env_gomaxprocs is None:
        # automaxprocs reads only its own cgroup's quota, and sets nothing without one.
        if f.leaf_limit is None or f.leaf_limit <= 0:
            return Gomaxprocs(f.affinity_cpus, GomaxprocsSource.AUTOMAXPROCS, "automaxprocs linked; no CPU quota")
        value = max(1, math.floor(f.leaf_limit))
        return Gomaxprocs(value, GomaxprocsSource.AUTOMAXPROCS, f"automaxprocs: floor({f.leaf_limit:g}) = {value}")
    if f.go_version is not None and f.go_version >= (1, 25, 0):
        if containermaxprocs_enabled(f.env_godebug, f.default_godebug):
            value = go125_default(f.affinity_cpus, f.leaf_limit)
            return Gomaxprocs(value, GomaxprocsSource.GO125_CGROUP, "Go >= 1.25 container-aware default")
        detail = "Go >= 1.25 but containermaxprocs off (GODEBUG or go.mod <= 1.24); CPU count"
        return Gomaxprocs(f.affinity_cpus, GomaxprocsSource.CPUS, detail)
    return Gomaxprocs(f.affinity_cpus, GomaxprocsSource.CPUS, "default: the CPUs the process may run on")


# ---- live ------------------------------------------------------------------------------------


def read_live(read: Callable[[int, int], bytes], runtime_addr: int) -> int:
    """The int32 at ``runtime_addr`` of a live process, validated."""
    raw = read(runtime_addr, 4)
    (value,) = struct.unpack("<i", raw)
    if not 1 <= value <= MAX_PLAUSIBLE:
        raise NodeAgentError(f"implausible gomaxprocs {value} read at {runtime_addr:#x}")
    return int(value)
