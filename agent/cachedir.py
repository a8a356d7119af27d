"""The one cache-directory rule, for the agent (merged kernel headers) and the lab (Go toolchains, builds).

$NODE_AGENT_CACHE, else $XDG_CACHE_HOME/node-agent, else ~/.cache/node-agent: the
same rule scripts/setup.sh follows, so what it installs is what the programs find.
The DaemonSet sets NODE_AGENT_CACHE to its writable emptyDir.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get("NODE_AGENT_CACHE"):
        return Path(env["NODE_AGENT_CACHE"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "node-agent"
    try:
        return Path.home() / ".cache" / "node-agent"
    except RuntimeError:  # no HOME and no passwd entry (a bare container)
        return Path(tempfile.gettempdir()) / f"node-agent-{os.geteuid()}"
