"""The one cache-directory rule: the order scripts/setup.sh uses too (it installs the Go toolchains there)."""

from __future__ import annotations

import re
from pathlib import Path

from agent.cachedir import cache_dir

SETUP = Path(__file__).parents[2] / "scripts" / "setup.sh"


def test_order_explicit_then_xdg_then_home() -> None:
    assert cache_dir({"NODE_AGENT_CACHE": "/c", "XDG_CACHE_HOME": "/x"}) == Path("/c")
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/node-agent")
    assert cache_dir({"NODE_AGENT_CACHE": "", "XDG_CACHE_HOME": ""}) == Path.home() / ".cache" / "node-agent"


def test_setup_script_follows_the_same_rule() -> None:
    line = next(x for x in SETUP.read_text().splitlines() if re.match(r"^CACHE=", x))
    assert line == 'CACHE="${NODE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/node-agent}"'
