"""node-agent: finds Go workloads whose GOMAXPROCS does not match their CPU quota."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def revision() -> str:
    """The source revision this agent was built from, for node_agent_build_info.

    The image sets NODE_AGENT_REVISION at build time (there is no .git inside it); a checkout
    asks git; anything else is "unknown" rather than a guess.
    """
    env = os.environ.get("NODE_AGENT_REVISION", "").strip()
    if env:
        return env[:64]
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return "unknown"
    try:
        res = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    out = res.stdout.strip()
    return out if res.returncode == 0 and out else "unknown"
