"""Find the kernel headers bcc compiles the sampler against.

bcc (0.26, ``src/cc/frontends/clang/loader.cc``) compiles inside one directory:
``$BCC_KERNEL_SOURCE`` if set, else ``/lib/modules/$(uname -r)/build`` (with
``/source`` as the srctree when both exist), else the tarball the kheaders
module exposes at ``/sys/kernel/kheaders.tar.xz``. With ``BCC_KERNEL_SOURCE``
it uses that one directory for both the source half (``include/linux``,
``arch/x86/include``) and the generated half (``include/generated``,
``arch/x86/include/generated``).

Debian ships the halves as two packages, ``linux-headers-<ver>-amd64`` (generated)
and ``linux-headers-<ver>-common`` (source), joined only by the
``/lib/modules/<release>/{build,source}`` links. A node agent sees the host
through ``--host-root`` and must not touch it, and bcc never looks under a host
root, so for a split pair we build a private tree of symlinks that merges both
halves and hand that to bcc as ``BCC_KERNEL_SOURCE``.

Paths the user gives (``--kernel-headers``, ``$BCC_KERNEL_SOURCE``) are taken as
the agent sees them; discovered places (``/lib/modules``, ``/usr/src``) are
looked up under the host root, following symlinks inside that root.

Last comes the image's own fallback (``BUNDLED_HEADERS``, see the Dockerfile): Debian's
header tree of the image's release, for nodes with no headers at all. The sampler uses
only UAPI definitions (the perf-event context, pt_regs, map and helper ABI), which the
kernel keeps stable, so headers of another release compile a program that loads and
samples correctly on this kernel.

`decide` is pure: it chooses from a `HeaderListing`; `probe` does the looking,
`prepare` the (cache-only) writing, `find_kernel_headers` all three.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from agent import cachedir
from agent.errors import BPFUnavailableError

ENV_VAR = "BCC_KERNEL_SOURCE"
KHEADERS_TARBALL = "kernel/kheaders.tar.xz"  # under /sys
HELP_NO_HEADERS = (
    "install linux-headers-$(uname -r) on the node, or mount the host's /usr/src and /lib/modules "
    "into the agent (read-only) and pass --host-root, or pass --kernel-headers DIR"
)
_SOURCE_MARK = "include/linux/kconfig.h"  # what bcc itself checks for
_BUILD_MARK = "include/generated/autoconf.h"  # a configured (objtree) half
_SCAN_DIRS = ("usr/src", "usr/src/kernels")
BUNDLED_HEADERS = Path("/usr/share/node-agent/kernel-headers")  # in the agent's own file system (the image)
_MERGE_MARKER = ".node-agent-merged"
_MAX_SYMLINKS = 40

Kind = Literal["tree", "split", "kheaders"]


@dataclass(frozen=True)
class HeaderTree:
    """What was seen at one candidate directory."""

    path: Path  # as the agent opens it (host root applied, symlinks resolved)
    has_source: bool  # include/linux/kconfig.h: the srctree half
    has_build: bool  # include/generated/autoconf.h: the objtree half

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def complete(self) -> bool:
        return self.has_source and self.has_build


@dataclass(frozen=True)
class HeaderListing:
    """Everything `decide` needs; built by `probe` or by hand in tests."""

    release: str  # uname -r of the running kernel
    explicit: Path | None = None  # --kernel-headers as given
    explicit_tree: HeaderTree | None = None  # None: missing or not a directory
    env: Path | None = None  # $BCC_KERNEL_SOURCE as given
    env_tree: HeaderTree | None = None
    modules_build: HeaderTree | None = None  # <host>/lib/modules/<release>/build
    modules_source: HeaderTree | None = None  # <host>/lib/modules/<release>/source
    kheaders: bool = False  # /sys/kernel/kheaders.tar.xz exists
    pool: tuple[HeaderTree, ...] = ()  # trees under <host>/usr/src and beside the dirs above
    bundled: tuple[HeaderTree, ...] = ()  # complete trees shipped with the agent (last resort)
    looked_at: tuple[str, ...] = ()  # for the error message


@dataclass(frozen=True)
class HeaderPlan:
    """The choice: one complete tree, a split pair to merge, or bcc's kheaders."""

    kind: Kind
    origin: str  # which rule chose it, for messages and /readyz
    build: Path | None = None  # the tree itself (kind "tree") or its objtree half
    source: Path | None = None  # the srctree half (kind "split")
    version: str = ""  # the headers' release as far as the names tell
    matches_running: bool = True
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class KernelHeaders:
    """Where bcc should compile: ``source_dir`` goes into ``$BCC_KERNEL_SOURCE``."""

    plan: HeaderPlan
    source_dir: Path | None  # None: leave bcc to its own lookup (kheaders tarball)

    def bcc_environ(self) -> dict[str, str | None]:
        """Variables to set (str) or unset (None) while bcc compiles."""
        return {ENV_VAR: None if self.source_dir is None else str(self.source_dir)}

    def describe(self) -> str:
        where = str(self.source_dir) if self.source_dir else "bcc's kheaders extraction"
        text = f"kernel headers from {self.plan.origin} ({where})"
        if not self.plan.matches_running and self.plan.version:
            text += f"; headers {self.plan.version} do not match the running kernel"
        return text


# --------------------------------------------------------------------------- decision (pure)


def header_version(name: str) -> str:
    """``linux-headers-6.1.0-56-amd64`` -> ``6.1.0-56-amd64``; RHEL's ``kernels/<release>`` stays."""
    for prefix in ("linux-headers-", "linux-source-", "linux-"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version))


def partner_names(build_name: str) -> tuple[str, ...]:
    """Names the srctree half of a split package may have, most specific first.

    Debian: ``linux-headers-6.1.0-56-amd64`` + ``linux-headers-6.1.0-56-common``
    (also ``-common-rt``); Ubuntu: ``linux-headers-5.15.0-91-generic`` + ``linux-headers-5.15.0-91``.
    """
    base, sep, _flavour = build_name.rpartition("-")
    if not sep or not base:
        return ()
    return (f"{base}-common", f"{base}-common-rt", base)


def find_partner(build: HeaderTree, pool: Iterable[HeaderTree]) -> HeaderTree | None:
    """The source half that sits next to ``build`` under a partner name."""
    by_name = {t.name: t for t in pool if t.path.parent == build.path.parent and t.has_source and t != build}
    for name in partner_names(build.name):
        if name in by_name:
            return by_name[name]
    return None


def _plan_for(
    tree: HeaderTree, pool: Iterable[HeaderTree], origin: str, release: str, source: HeaderTree | None = None
) -> HeaderPlan | str:
    """A plan for one candidate, or why it cannot be used."""
    version = header_version(tree.name)
    matches = release in {version, tree.name}
    if tree.complete:
        return HeaderPlan("tree", origin, build=tree.path, version=version, matches_running=matches)
    if not tree.has_build:
        if tree.has_source:
            return f"{tree.path} has no {_BUILD_MARK}: it is a source tree that was never configured"
        return f"{tree.path} is not a kernel header tree ({_SOURCE_MARK} is missing)"
    partner = source if source is not None and source.has_source else find_partner(tree, pool)
    if partner is None:
        wanted = " or ".join(partner_names(tree.name)) or "its -common half"
        return f"{tree.path} holds only the generated headers and its source half ({wanted}) was not found next to it"
    return HeaderPlan("split", origin, build=tree.path, source=partner.path, version=version, matches_running=matches)


def _mismatch_note(plan: HeaderPlan, release: str) -> HeaderPlan:
    if plan.matches_running or plan.kind == "kheaders":
        return plan
    note = (
        f"headers {plan.version} do not match the running kernel {release}; "
        "the sampler reads no kernel structures, so it still works"
    )
    return HeaderPlan(
        plan.kind, plan.origin, plan.build, plan.source, plan.version, plan.matches_running, (*plan.notes, note)
    )


def decide(listing: HeaderListing) -> HeaderPlan:
    """Choose headers in the documented order; raise if the user's choice is wrong or nothing fits."""
    release = listing.release
    for given, tree, origin in (
        (listing.explicit, listing.explicit_tree, "--kernel-headers"),
        (listing.env, listing.env_tree, f"${ENV_VAR}"),
    ):
        if given is None:
            continue
        if tree is None:
            raise BPFUnavailableError(
                f"kernel headers: {origin} {given} does not exist or is not a directory",
                help=f"point {origin} at a kernel header tree (the directory that contains include/ and arch/)",
            )
        plan = _plan_for(tree, listing.pool, f"{origin} {given}", release)
        if isinstance(plan, str):
            raise BPFUnavailableError(
                f"kernel headers: {origin} {given} cannot be used: {plan}",
                help=f"point {origin} at a complete tree, or at the generated half with its source half beside it; "
                + HELP_NO_HEADERS,
            )
        return _mismatch_note(plan, release)

    skipped: list[str] = []
    if listing.modules_build is not None:
        origin = f"/lib/modules/{release}/build"
        plan = _plan_for(listing.modules_build, listing.pool, origin, release, source=listing.modules_source)
        if isinstance(plan, HeaderPlan):
            # The link names the running release even when the directory name does not.
            return HeaderPlan(plan.kind, plan.origin, plan.build, plan.source, release, True, plan.notes)
        skipped.append(plan)

    if listing.kheaders:
        return HeaderPlan("kheaders", "/sys/kernel/kheaders.tar.xz", version=release)

    candidates: list[HeaderPlan] = []
    seen: set[Path] = set()
    for tree in listing.pool:
        if tree.path in seen or not tree.has_build:
            continue  # source halves are reached through their build half
        seen.add(tree.path)
        plan = _plan_for(tree, listing.pool, f"/usr/src ({tree.name})", release)
        if isinstance(plan, HeaderPlan):
            candidates.append(plan)
        else:
            skipped.append(plan)
    if candidates:
        best = max(candidates, key=lambda p: (p.matches_running, version_key(p.version), p.kind == "tree"))
        return _mismatch_note(best, release)

    if listing.bundled:
        tree = max(listing.bundled, key=lambda t: version_key(header_version(t.name)))
        plan = _plan_for(tree, (), f"the agent's bundled headers ({tree.name})", release)
        if isinstance(plan, HeaderPlan):
            return _mismatch_note(plan, release)
        skipped.append(plan)

    looked = ", ".join(listing.looked_at) or "nowhere"
    detail = f" ({'; '.join(skipped)})" if skipped else ""
    raise BPFUnavailableError(
        f"no kernel headers for {release}: looked at {looked}{detail}",
        help=HELP_NO_HEADERS,
    )


# --------------------------------------------------------------------------- looking (I/O)


def resolve_in_root(root: Path, path: PurePosixPath | str) -> Path:
    """Resolve ``path`` (absolute, as the host sees it) inside ``root``.

    Absolute symlink targets are re-rooted, so ``/host/lib/modules/X/build ->
    /usr/src/...`` leads to ``/host/usr/src/...`` and not to the agent's own /usr/src.
    """
    parts = list(PurePosixPath(path).parts[1:])
    resolved = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in {"", "."}:
            continue
        if part == "..":
            resolved = resolved.parent
            continue
        here = resolved / part
        real = root / here.relative_to("/")
        if real.is_symlink():
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, "too many symbolic links", str(real))
            target = PurePosixPath(os.readlink(real))
            if target.is_absolute():
                resolved = PurePosixPath("/")
                parts = list(target.parts[1:]) + parts
            else:
                parts = list(target.parts) + parts
        else:
            resolved = here
    return root / resolved.relative_to("/")


def tree_at(path: Path) -> HeaderTree | None:
    """Look at one directory (already resolved); None if it is not a directory."""
    try:
        if not path.is_dir():
            return None
        return HeaderTree(path, (path / _SOURCE_MARK).is_file(), (path / _BUILD_MARK).is_file())
    except OSError:
        return None


def _trees_in(directory: Path) -> list[HeaderTree]:
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return []
    trees = []
    for entry in entries:
        tree = tree_at(entry)
        if tree is not None and (tree.has_source or tree.has_build):
            trees.append(tree)
    return trees


def _user_tree(given: Path | None, pool_dirs: list[Path]) -> HeaderTree | None:
    if given is None:
        return None
    tree = tree_at(given.resolve())
    if tree is not None:
        pool_dirs.append(tree.path.parent)
    return tree


def probe(
    host_root: Path = Path("/"),
    *,
    release: str | None = None,
    explicit: Path | None = None,
    environ: Mapping[str, str] | None = None,
    sysfs: Path = Path("/sys"),
    bundled: Path = BUNDLED_HEADERS,
) -> HeaderListing:
    """Look at every place `decide` considers. Reads only."""
    environ = os.environ if environ is None else environ
    release = release or os.uname().release
    env_value = environ.get(ENV_VAR) or None
    env = Path(env_value) if env_value else None
    pool_dirs: list[Path] = []
    looked: list[str] = []

    explicit_tree = _user_tree(explicit, pool_dirs)
    env_tree = _user_tree(env, pool_dirs)
    if explicit is not None:
        looked.append(f"--kernel-headers {explicit}")
    if env is not None:
        looked.append(f"${ENV_VAR}={env}")

    modules = PurePosixPath("/lib/modules") / release
    looked.append(str(host_root / modules.relative_to("/") / "build"))
    build = source = None
    try:
        build = tree_at(resolve_in_root(host_root, modules / "build"))
        source = tree_at(resolve_in_root(host_root, modules / "source"))
    except OSError:
        pass
    if build is not None:
        pool_dirs.append(build.path.parent)

    tarball = sysfs / KHEADERS_TARBALL
    looked.append(str(tarball))
    for scan in _SCAN_DIRS:
        looked.append(str(host_root / scan))
        try:
            pool_dirs.append(resolve_in_root(host_root, PurePosixPath("/") / scan))
        except OSError:
            continue

    if bundled.is_dir():
        looked.append(str(bundled))
    pool: list[HeaderTree] = []
    for directory in dict.fromkeys(pool_dirs):  # keeps order, drops repeats
        pool.extend(t for t in _trees_in(directory) if t not in pool)
    return HeaderListing(
        release=release,
        explicit=explicit,
        explicit_tree=explicit_tree,
        env=env,
        env_tree=env_tree,
        modules_build=build,
        modules_source=source,
        kheaders=tarball.is_file(),
        pool=tuple(pool),
        bundled=tuple(t for t in _trees_in(bundled) if t.complete),
        looked_at=tuple(looked),
    )


# --------------------------------------------------------------------------- preparing (writes the cache only)


def _link_merged(dst: Path, build: Path, source: Path) -> None:
    """Symlink the union of two trees into ``dst``; recurse only where both have a directory of that name.

    Where both have a file, the build (objtree) half wins, as in kbuild's include order.
    """
    dst.mkdir()
    build_names = {e.name for e in build.iterdir()}
    source_names = {e.name for e in source.iterdir()}
    for name in sorted(build_names | source_names):
        b, s = build / name, source / name
        if name in build_names and name in source_names and b.is_dir() and s.is_dir():
            _link_merged(dst / name, b, s)
        else:
            (dst / name).symlink_to(b if name in build_names else s)


def merge_split_tree(build: Path, source: Path, cache_dir: Path) -> Path:
    """A merged symlink tree for a split header pair, made once per pair and reused.

    Built beside its final name and renamed into place, so a concurrent agent
    or a crash never leaves a half-made tree where bcc would look.
    """
    marker = f"{build}\n{source}\n"
    digest = hashlib.sha256(marker.encode()).hexdigest()[:12]
    parent = cache_dir / "kernel-headers"
    final = parent / f"{build.name}-{digest}"
    if _merged_ok(final, marker):
        return final
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".merge-", dir=parent))
    try:
        tree = work / "tree"
        _link_merged(tree, build, source)
        (tree / _MERGE_MARKER).write_text(marker)
        if final.exists() or final.is_symlink():
            shutil.rmtree(final, ignore_errors=True)  # stale: a tree of our own symlinks
        try:
            tree.rename(final)
        except OSError:
            if not _merged_ok(final, marker):  # lost a race to a good tree: fine; else a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _merged_ok(tree: Path, marker: str) -> bool:
    try:
        return (tree / _MERGE_MARKER).read_text() == marker and (tree / _SOURCE_MARK).is_file()
    except OSError:
        return False


def prepare(plan: HeaderPlan, cache_dir: Path | None = None) -> KernelHeaders:
    """Turn a plan into the directory bcc gets; merges split pairs into the cache."""
    if plan.kind == "kheaders":
        return KernelHeaders(plan, None)
    assert plan.build is not None
    if plan.kind == "tree":
        return KernelHeaders(plan, plan.build)
    assert plan.source is not None
    cache = cache_dir or cachedir.cache_dir()
    try:
        merged = merge_split_tree(plan.build, plan.source, cache)
    except OSError as e:
        raise BPFUnavailableError(
            f"kernel headers: cannot build the merged header tree for {plan.build} + {plan.source} in {cache}: {e}",
            help="pass a writable --cache-dir (or set NODE_AGENT_CACHE)",
        ) from e
    return KernelHeaders(plan, merged)


@dataclass(frozen=True)
class HeaderSearch:
    """Where to look: the inputs of `find_kernel_headers` as one value (CLI and daemon config)."""

    host_root: Path = Path("/")
    explicit: Path | None = None
    sysfs: Path = Path("/sys")
    cache_dir: Path | None = None
    release: str | None = None
    environ: Mapping[str, str] | None = field(default=None, compare=False)
    bundled: Path = BUNDLED_HEADERS

    def listing(self) -> HeaderListing:
        return probe(
            self.host_root,
            release=self.release,
            explicit=self.explicit,
            environ=self.environ,
            sysfs=self.sysfs,
            bundled=self.bundled,
        )

    def find(self) -> KernelHeaders:
        return find_kernel_headers(
            self.host_root,
            explicit=self.explicit,
            environ=self.environ,
            sysfs=self.sysfs,
            cache_dir=self.cache_dir,
            release=self.release,
            bundled=self.bundled,
        )


def find_kernel_headers(
    host_root: Path = Path("/"),
    *,
    explicit: Path | None = None,
    environ: Mapping[str, str] | None = None,
    sysfs: Path = Path("/sys"),
    cache_dir: Path | None = None,
    release: str | None = None,
    bundled: Path = BUNDLED_HEADERS,
) -> KernelHeaders:
    """Probe, decide and prepare. Raises BPFUnavailableError saying what is missing."""
    listing = probe(host_root, release=release, explicit=explicit, environ=environ, sysfs=sysfs, bundled=bundled)
    return prepare(decide(listing), cache_dir)
