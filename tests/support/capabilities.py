"""Skip-or-fail for tests that need a capability of the machine.

Locally a missing capability (root, BPF, a v1 cpu cgroup, a Go toolchain)
skips the test with a reason that says what is missing. Under CI (``CI=true``
or ``NODE_AGENT_STRICT=1``) the same situation fails the test: CI runs on a
machine that has everything, so a skip there would hide a broken set-up.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def strict() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"} or os.environ.get("NODE_AGENT_STRICT", "") not in {
        "",
        "0",
    }


def missing(what: str) -> NoReturn:
    """Skip (locally) or fail (under CI) because ``what`` is not available."""
    if strict():
        pytest.fail(f"capability missing under CI: {what}", pytrace=False)
    pytest.skip(f"capability missing: {what}")


def need(ok: bool, what: str) -> None:
    if not ok:
        missing(what)


def need_root() -> None:
    need(os.geteuid() == 0, "root (uid 0) is needed")
