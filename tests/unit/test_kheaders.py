"""Kernel-header discovery: the decision on hand-made listings and on fixture host roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import BPFUnavailableError
from agent.sampling.kheaders import (
    ENV_VAR,
    HELP_NO_HEADERS,
    HeaderListing,
    HeaderSearch,
    HeaderTree,
    decide,
    find_kernel_headers,
    header_version,
    merge_split_tree,
    partner_names,
    prepare,
    probe,
    resolve_in_root,
    version_key,
)

RELEASE = "6.1.0-56-amd64"


# --------------------------------------------------------------------------- pure decision


def tree(path: str, *, source: bool = False, build: bool = False) -> HeaderTree:
    return HeaderTree(Path(path), has_source=source, has_build=build)


DEB_BUILD = tree("/usr/src/linux-headers-6.1.0-56-amd64", build=True)
DEB_COMMON = tree("/usr/src/linux-headers-6.1.0-56-common", source=True)
DEB_BUILD_OLD = tree("/usr/src/linux-headers-5.10.0-30-amd64", build=True)
DEB_COMMON_OLD = tree("/usr/src/linux-headers-5.10.0-30-common", source=True)


def test_debian_split_pair_under_usr_src() -> None:
    plan = decide(HeaderListing(release="6.18.44-fc", pool=(DEB_BUILD, DEB_COMMON)))
    assert plan.kind == "split"
    assert plan.build == DEB_BUILD.path
    assert plan.source == DEB_COMMON.path
    assert plan.version == "6.1.0-56-amd64"
    assert not plan.matches_running
    assert any("do not match the running kernel 6.18.44-fc" in n for n in plan.notes)


def test_usr_src_prefers_newest() -> None:
    pool = (DEB_BUILD_OLD, DEB_COMMON_OLD, DEB_BUILD, DEB_COMMON)
    assert decide(HeaderListing(release="6.18.0", pool=pool)).build == DEB_BUILD.path
    assert decide(HeaderListing(release="6.18.0", pool=tuple(reversed(pool)))).build == DEB_BUILD.path


def test_usr_src_prefers_exact_release_over_newer() -> None:
    pool = (DEB_BUILD_OLD, DEB_COMMON_OLD, DEB_BUILD, DEB_COMMON)
    plan = decide(HeaderListing(release="5.10.0-30-amd64", pool=pool))
    assert plan.build == DEB_BUILD_OLD.path
    assert plan.matches_running
    assert plan.notes == ()


def test_build_half_without_its_source_half_is_not_used() -> None:
    with pytest.raises(BPFUnavailableError) as e:
        decide(HeaderListing(release=RELEASE, pool=(DEB_BUILD, DEB_COMMON_OLD), looked_at=("/usr/src",)))
    assert "linux-headers-6.1.0-56-common" in str(e.value)
    assert e.value.help == HELP_NO_HEADERS


def test_source_half_never_pairs_with_another_directory() -> None:
    other = tree("/opt/linux-headers-6.1.0-56-common", source=True)
    with pytest.raises(BPFUnavailableError):
        decide(HeaderListing(release=RELEASE, pool=(DEB_BUILD, other)))


def test_ubuntu_and_rhel_layouts() -> None:
    ubuntu = (
        tree("/usr/src/linux-headers-5.15.0-91-generic", build=True),
        tree("/usr/src/linux-headers-5.15.0-91", source=True),
    )
    plan = decide(HeaderListing(release="5.15.0-91-generic", pool=ubuntu))
    assert (plan.kind, plan.source, plan.matches_running) == ("split", ubuntu[1].path, True)

    rhel = tree("/usr/src/kernels/5.14.0-362.el9.x86_64", source=True, build=True)
    plan = decide(HeaderListing(release="5.14.0-362.el9.x86_64", pool=(rhel,)))
    assert (plan.kind, plan.build, plan.matches_running) == ("tree", rhel.path, True)


def test_lib_modules_build_and_source_links() -> None:
    listing = HeaderListing(
        release="6.18.1", modules_build=DEB_BUILD, modules_source=DEB_COMMON, pool=(DEB_BUILD_OLD, DEB_COMMON_OLD)
    )
    plan = decide(listing)
    assert plan.kind == "split"
    assert plan.origin == "/lib/modules/6.18.1/build"
    assert (plan.build, plan.source) == (DEB_BUILD.path, DEB_COMMON.path)
    assert plan.matches_running  # the link names the running release


def test_lib_modules_complete_build_tree() -> None:
    full = tree("/usr/src/linux-6.18", source=True, build=True)
    plan = decide(HeaderListing(release="6.18.1", modules_build=full, modules_source=DEB_COMMON))
    assert (plan.kind, plan.build, plan.source) == ("tree", full.path, None)


def test_leftover_lib_modules_falls_through_to_kheaders_then_usr_src() -> None:
    leftover = tree("/lib/modules/6.18.1/build")
    assert decide(HeaderListing(release="6.18.1", modules_build=leftover, kheaders=True)).kind == "kheaders"
    plan = decide(HeaderListing(release="6.18.1", modules_build=leftover, pool=(DEB_BUILD, DEB_COMMON)))
    assert plan.build == DEB_BUILD.path


def test_kheaders_before_usr_src() -> None:
    plan = decide(HeaderListing(release="6.18.1", kheaders=True, pool=(DEB_BUILD, DEB_COMMON)))
    assert plan.kind == "kheaders"
    assert plan.build is None


def test_explicit_beats_everything() -> None:
    mine = tree("/opt/kernel", source=True, build=True)
    listing = HeaderListing(
        release=RELEASE,
        explicit=Path("/opt/kernel"),
        explicit_tree=mine,
        env=Path("/elsewhere"),
        env_tree=tree("/elsewhere", source=True, build=True),
        modules_build=DEB_BUILD,
        modules_source=DEB_COMMON,
        kheaders=True,
    )
    plan = decide(listing)
    assert (plan.kind, plan.build) == ("tree", mine.path)
    assert plan.origin.startswith("--kernel-headers")


def test_env_beats_discovery() -> None:
    env = tree("/elsewhere", source=True, build=True)
    plan = decide(HeaderListing(release=RELEASE, env=Path("/elsewhere"), env_tree=env, kheaders=True))
    assert plan.build == env.path
    assert ENV_VAR in plan.origin


def test_explicit_split_half_pairs_with_its_sibling() -> None:
    listing = HeaderListing(release=RELEASE, explicit=DEB_BUILD.path, explicit_tree=DEB_BUILD, pool=(DEB_COMMON,))
    plan = decide(listing)
    assert (plan.kind, plan.source) == ("split", DEB_COMMON.path)


@pytest.mark.parametrize(
    ("explicit_tree", "expected"),
    [
        (None, "does not exist or is not a directory"),
        (tree("/opt/kernel"), "is not a kernel header tree"),
        (tree("/opt/kernel", source=True), "never configured"),
        (tree("/opt/linux-headers-6.1.0-56-amd64", build=True), "source half"),
    ],
)
def test_wrong_explicit_dir_is_a_clear_error(explicit_tree: HeaderTree | None, expected: str) -> None:
    # A wrong explicit choice must not silently fall back to something else.
    listing = HeaderListing(
        release=RELEASE,
        explicit=Path("/opt/kernel"),
        explicit_tree=explicit_tree,
        kheaders=True,
        pool=(DEB_BUILD, DEB_COMMON),
    )
    with pytest.raises(BPFUnavailableError) as e:
        decide(listing)
    assert "--kernel-headers" in str(e.value)
    assert expected in str(e.value)
    assert e.value.help


def test_nothing_found_says_where_it_looked() -> None:
    with pytest.raises(BPFUnavailableError) as e:
        decide(HeaderListing(release="6.18.1", looked_at=("/host/lib/modules/6.18.1/build", "/host/usr/src")))
    text = str(e.value)
    assert "no kernel headers for 6.18.1" in text
    assert "/host/lib/modules/6.18.1/build" in text
    assert "linux-headers-$(uname -r)" in e.value.help
    assert "--kernel-headers" in e.value.help


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("linux-headers-6.1.0-56-amd64", "6.1.0-56-amd64"),
        ("linux-headers-5.15.0-91", "5.15.0-91"),
        ("5.14.0-362.el9.x86_64", "5.14.0-362.el9.x86_64"),
    ],
)
def test_header_version(name: str, version: str) -> None:
    assert header_version(name) == version


def test_version_key_orders_numerically() -> None:
    assert version_key("6.10.0-1-amd64") > version_key("6.9.0-30-amd64")
    assert version_key("6.1.0-56-amd64") > version_key("6.1.0-9-amd64")


def test_partner_names() -> None:
    assert partner_names("linux-headers-6.1.0-56-amd64")[0] == "linux-headers-6.1.0-56-common"
    assert "linux-headers-5.15.0-91" in partner_names("linux-headers-5.15.0-91-generic")
    assert partner_names("kernel") == ()


# --------------------------------------------------------------------------- fixture host roots


def make_half(root: Path, rel: str, *, source: bool = False, build: bool = False) -> Path:
    """A miniature header package: the files bcc and kbuild look for, each naming its origin."""
    d = root / rel.lstrip("/")
    d.mkdir(parents=True)
    (d / "Makefile").write_text(f"# {d.name}\n")
    if source:
        for f in ("include/linux/kconfig.h", "include/uapi/linux/bpf.h", "arch/x86/include/asm/ptrace.h"):
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_text(f"/* {d.name} */\n")
    if build:
        for f in ("include/generated/autoconf.h", "include/config/auto.conf", "arch/x86/include/generated/asm/x.h"):
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_text(f"/* {d.name} */\n")
        (d / "scripts").symlink_to("../../lib/linux-kbuild-6.1/scripts")
    return d


def debian_host(root: Path, version: str = "6.1.0-56") -> tuple[Path, Path]:
    return (
        make_half(root, f"usr/src/linux-headers-{version}-amd64", build=True),
        make_half(root, f"usr/src/linux-headers-{version}-common", source=True),
    )


def snapshot(root: Path) -> list[tuple[str, float]]:
    return sorted((str(p), p.lstat().st_mtime) for p in root.rglob("*"))


def test_probe_debian_host_without_lib_modules(tmp_path: Path) -> None:
    host = tmp_path / "host"
    build, common = debian_host(host)
    listing = probe(host, release="6.18.44", environ={}, sysfs=tmp_path / "sys")
    assert listing.modules_build is None
    assert not listing.kheaders
    assert HeaderTree(build, has_source=False, has_build=True) in listing.pool
    assert HeaderTree(common, has_source=True, has_build=False) in listing.pool
    plan = decide(listing)
    assert (plan.kind, plan.build, plan.source) == ("split", build, common)


def test_probe_follows_absolute_links_inside_the_host_root(tmp_path: Path) -> None:
    host = tmp_path / "host"
    build, common = debian_host(host)
    modules = host / "lib/modules/6.1.0-56-amd64"
    modules.mkdir(parents=True)
    # As Debian makes them: absolute targets, meaningful only inside the host root.
    (modules / "build").symlink_to("/usr/src/linux-headers-6.1.0-56-amd64")
    (modules / "source").symlink_to("/usr/src/linux-headers-6.1.0-56-common")
    listing = probe(host, release="6.1.0-56-amd64", environ={}, sysfs=tmp_path / "sys")
    assert listing.modules_build is not None
    assert listing.modules_build.path == build
    assert listing.modules_source is not None
    assert listing.modules_source.path == common
    assert decide(listing).origin == "/lib/modules/6.1.0-56-amd64/build"


def test_resolve_in_root(tmp_path: Path) -> None:
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "link-abs").symlink_to("/a/b")
    (tmp_path / "a/rel").symlink_to("b")
    (tmp_path / "a/up").symlink_to("../../../../a")  # cannot climb out of the root
    (tmp_path / "loop").symlink_to("/loop")
    assert resolve_in_root(tmp_path, "/link-abs") == tmp_path / "a/b"
    assert resolve_in_root(tmp_path, "/a/rel") == tmp_path / "a/b"
    assert resolve_in_root(tmp_path, "/a/up/b") == tmp_path / "a/b"
    assert resolve_in_root(tmp_path, "/missing/x") == tmp_path / "missing/x"
    with pytest.raises(OSError):
        resolve_in_root(tmp_path, "/loop")


def test_kheaders_tarball_is_seen_in_sysfs(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/kheaders.tar.xz").write_bytes(b"\xfd7zXZ")
    listing = probe(tmp_path / "host", release="6.18.1", environ={}, sysfs=tmp_path / "sys")
    assert listing.kheaders
    headers = prepare(decide(listing), tmp_path / "cache")
    assert headers.source_dir is None
    assert headers.bcc_environ() == {ENV_VAR: None}  # unset: bcc extracts the tarball itself


def test_env_variable_is_read_from_the_given_environment(tmp_path: Path) -> None:
    full = make_half(tmp_path, "kernel", source=True, build=True)
    listing = probe(tmp_path / "host", release="6.18.1", environ={ENV_VAR: str(full)}, sysfs=tmp_path / "sys")
    plan = decide(listing)
    assert (plan.kind, plan.build) == ("tree", full)
    assert prepare(plan, tmp_path / "cache").source_dir == full


def test_merged_tree_has_both_halves_and_leaves_the_host_alone(tmp_path: Path) -> None:
    host = tmp_path / "host"
    build, common = debian_host(host)
    before = snapshot(host)
    headers = find_kernel_headers(host, environ={}, sysfs=tmp_path / "sys", release="6.18.44", cache_dir=tmp_path / "c")
    merged = headers.source_dir
    assert merged is not None
    assert merged.is_relative_to(tmp_path / "c")
    assert headers.bcc_environ() == {ENV_VAR: str(merged)}
    # Everything bcc's include flags name resolves inside the one directory.
    for rel, origin in (
        ("include/linux/kconfig.h", common),
        ("include/uapi/linux/bpf.h", common),
        ("arch/x86/include/asm/ptrace.h", common),
        ("include/generated/autoconf.h", build),
        ("include/config/auto.conf", build),
        ("arch/x86/include/generated/asm/x.h", build),
    ):
        assert (merged / rel).read_text() == f"/* {origin.name} */\n", rel
    # Directories both halves have are real directories; the rest are links into the host tree.
    assert not (merged / "include").is_symlink()
    assert (merged / "include/linux").is_symlink()
    assert os.readlink(merged / "include/linux") == str(common / "include/linux")
    # Where both have the same file, the build half wins (it is the objtree).
    assert (merged / "Makefile").read_text() == f"# {build.name}\n"
    # The build half's own relative link is kept as a link to it, not copied or rewritten.
    assert os.readlink(merged / "scripts") == str(build / "scripts")
    assert snapshot(host) == before


def test_merged_tree_is_reused_and_rebuilt_when_stale(tmp_path: Path) -> None:
    build, common = debian_host(tmp_path / "host")
    cache = tmp_path / "cache"
    first = merge_split_tree(build, common, cache)
    marker_mtime = (first / ".node-agent-merged").stat().st_mtime_ns
    assert merge_split_tree(build, common, cache) == first
    assert (first / ".node-agent-merged").stat().st_mtime_ns == marker_mtime  # reused, not rebuilt

    (first / ".node-agent-merged").write_text("something else\n")
    again = merge_split_tree(build, common, cache)
    assert again == first
    assert (again / "include/linux/kconfig.h").is_file()
    assert [p.name for p in (cache / "kernel-headers").iterdir()] == [first.name]  # no leftovers


def test_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    debian_host(tmp_path / "host")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(BPFUnavailableError) as e:
        find_kernel_headers(tmp_path / "host", environ={}, sysfs=tmp_path / "sys", cache_dir=blocker)
    assert "merged header tree" in str(e.value)
    assert "--cache-dir" in e.value.help


def test_no_headers_on_host_message(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "usr/src").mkdir(parents=True)
    (host / "lib/modules/6.18.1").mkdir(parents=True)
    with pytest.raises(BPFUnavailableError) as e:
        HeaderSearch(host_root=host, sysfs=tmp_path / "sys", release="6.18.1", environ={}).find()
    text = str(e.value)
    assert text.startswith("no kernel headers for 6.18.1: looked at ")
    assert str(host / "lib/modules/6.18.1/build") in text
    assert str(host / "usr/src") in text
    assert str(tmp_path / "sys/kernel/kheaders.tar.xz") in text
    assert e.value.help == HELP_NO_HEADERS
    assert e.value.exit_code == 3


def test_explicit_dir_wrong_on_disk(tmp_path: Path) -> None:
    debian_host(tmp_path / "host")
    with pytest.raises(BPFUnavailableError) as e:
        find_kernel_headers(tmp_path / "host", explicit=tmp_path / "nope", environ={}, sysfs=tmp_path / "sys")
    assert f"--kernel-headers {tmp_path / 'nope'} does not exist" in str(e.value)

    half = make_half(tmp_path, "lonely/linux-headers-6.1.0-56-amd64", build=True)
    with pytest.raises(BPFUnavailableError) as e:
        find_kernel_headers(tmp_path / "host", explicit=half, environ={}, sysfs=tmp_path / "sys")
    assert "only the generated headers" in str(e.value)


# --------------------------------------------------------------------------- the image's bundled fallback

BUNDLED = tree("/usr/share/node-agent/kernel-headers/linux-headers-6.1.0-57-amd64", source=True, build=True)


def test_bundled_headers_come_last_and_say_they_stand_in() -> None:
    plan = decide(HeaderListing(release="6.18.44", bundled=(BUNDLED,)))
    assert (plan.kind, plan.build) == ("tree", BUNDLED.path)
    assert "bundled" in plan.origin and not plan.matches_running
    assert any("do not match the running kernel 6.18.44" in n for n in plan.notes)
    # Anything the node has wins over the fallback.
    assert decide(HeaderListing(release="6.18.44", kheaders=True, bundled=(BUNDLED,))).kind == "kheaders"
    node = decide(HeaderListing(release="6.18.44", pool=(DEB_BUILD, DEB_COMMON), bundled=(BUNDLED,)))
    assert node.build == DEB_BUILD.path


def test_probe_finds_the_bundled_tree_in_the_agents_own_file_system(tmp_path: Path) -> None:
    """No /lib/modules, no /usr/src, no kheaders on the host: the image's tree is used."""
    bundled = tmp_path / "image" / "kernel-headers"
    make_half(bundled, "linux-headers-6.1.0-57-amd64", source=True, build=True)
    make_half(bundled, "linux-headers-6.1.0-57-common", source=True)  # incomplete: ignored
    (tmp_path / "host").mkdir()
    found = find_kernel_headers(
        tmp_path / "host", environ={}, sysfs=tmp_path / "sys", release="6.18.44", bundled=bundled
    )
    assert found.source_dir == bundled / "linux-headers-6.1.0-57-amd64"
    assert "bundled" in found.describe()
    with pytest.raises(BPFUnavailableError, match=r"no kernel headers for 6\.18\.44"):
        find_kernel_headers(
            tmp_path / "host", environ={}, sysfs=tmp_path / "sys", release="6.18.44", bundled=tmp_path / "none"
        )
