"""The GOMAXPROCS environment rule follows each Go version's own parser.

Go <= 1.25 reads it with the runtime's atoi32 (optional '-', ASCII digits: "+4" is
ignored); Go >= 1.26 with strconv.ParseInt(s, 10, 32), which also takes a leading '+'
(runtime/proc.go schedinit in go1.25.5 and go1.26.0 / go1.27.3 respectively).
"""

from __future__ import annotations

import pytest

from agent.analysis.gomaxprocs import Facts, infer, parse_env_gomaxprocs

OLD: list[tuple[int, int, int] | None] = [(1, 19, 13), (1, 21, 13), (1, 23, 9), (1, 25, 5), None]
NEW: list[tuple[int, int, int] | None] = [(1, 26, 0), (1, 27, 3)]

# value -> (old parser, new parser)
CASES = {
    "4": (4, 4),
    "+4": (None, 4),
    "0004": (4, 4),
    "+0004": (None, 4),
    "+": (None, None),
    "-": (None, None),
    "++4": (None, None),
    "+-4": (None, None),
    "-4": (None, None),
    "+0": (None, None),
    " 4": (None, None),
    "4_0": (None, None),
    "0x4": (None, None),
    "2147483647": (2147483647, 2147483647),
    "+2147483647": (None, 2147483647),
    "2147483648": (None, None),
    "": (None, None),
    "٤": (None, None),  # an Arabic-Indic digit: Python's int() would take it, Go does not
}


@pytest.mark.parametrize("value", CASES)
@pytest.mark.parametrize("version", OLD + NEW, ids=str)
def test_env_value_per_go_version(version: tuple[int, int, int] | None, value: str) -> None:
    old, new = CASES[value]
    want = new if version in NEW else old
    assert parse_env_gomaxprocs(value, version) == want
    f = Facts(version, value, None, "", False, 64, None, None)
    got = infer(f)
    if want is None:
        assert got.source != "inferred:env" and got.value == 64
    else:
        assert (got.value, got.source) == (want, "inferred:env")
