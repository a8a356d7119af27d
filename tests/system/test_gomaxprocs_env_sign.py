"""GOMAXPROCS="+3" against each Go toolchain's own runtime (the oracle): inference agrees with what it chose.

Go <= 1.25 ignores the '+' (atoi32), Go >= 1.26 takes it (strconv.ParseInt).
"""

from __future__ import annotations

import pytest

from agent.analysis.gomaxprocs import PARSEINT_SINCE
from tests.support import gobuild
from tests.system.test_gomaxprocs_real import (
    EXPECTED_MINORS,
    HOST_CPUS,
    MAXPROCS,
    _toolchain,
    assert_inferred,
    observe,
    run_go,
)

pytestmark = pytest.mark.gotoolchain


@pytest.mark.parametrize("value", ["+3", "+003", "+"])
@pytest.mark.parametrize("minor", EXPECTED_MINORS, ids=lambda m: f"go1.{m[1]}")
def test_plus_sign_follows_the_versions_parser(minor: tuple[int, int], value: str) -> None:
    assert HOST_CPUS != 3, "the test tells the rules apart by a GOMAXPROCS the CPU count is not"
    binary = gobuild.build_one(_toolchain(minor), MAXPROCS, "exe", "full")
    with run_go(binary, {"GOMAXPROCS": value}) as gp:
        takes_plus = minor >= PARSEINT_SINCE[:2] and value != "+"
        assert gp.ready == (3 if takes_plus else HOST_CPUS)  # the runtime itself, first
        assert_inferred(observe(gp.pid), gp.ready, "env" if takes_plus else "cpus")
