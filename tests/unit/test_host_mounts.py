"""agent/host/mounts.py: which host mounts under --host-root are writable (pure, on mountinfo texts)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from agent.host.mounts import check_host_mounts, parse_mountinfo, writable_under

# As podman 4.3 + runc lays out the DaemonSet's mounts: `-v /sys:/host/sys:ro` is read-only at
# the top, but the cgroup controllers below it came along writable (a non-recursive bind).
PODMAN_PLAIN = """\
1200 1100 0:90 / / ro,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1201 1200 0:5 / /host/proc ro,nosuid,nodev,noexec,relatime - proc proc rw
1202 1200 0:21 / /host/sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs rw
1203 1202 0:26 / /host/sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
1204 1203 0:27 / /host/sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
1205 1203 0:33 / /host/sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
1206 1200 254:0 /lib/modules /host/lib/modules ro,relatime - ext4 /dev/vda rw
1207 1200 254:0 /usr/src /host/usr/src ro,relatime - ext4 /dev/vda rw
1208 1200 0:95 / /tmp rw,nosuid,nodev,relatime - tmpfs tmpfs rw,size=262144k
1209 1200 0:96 / /host\\040dir rw,relatime - tmpfs tmpfs rw
"""

# The same with a read-only bind on every sub-mount, stacked on the writable ones.
PODMAN_CLOSED = (
    PODMAN_PLAIN
    + """\
1300 1203 0:26 / /host/sys/fs/cgroup ro,relatime - tmpfs tmpfs rw,mode=755
1301 1300 0:27 / /host/sys/fs/cgroup/cpu ro,relatime - cgroup cgroup rw,cpu
1302 1300 0:33 / /host/sys/fs/cgroup/unified ro,relatime - cgroup2 cgroup2 rw
"""
)


def points(text: str, root: str = "/host") -> list[str]:
    return sorted(str(e.point) for e in writable_under(parse_mountinfo(text), PurePosixPath(root)))


def test_submounts_of_a_read_only_bind_are_reported_writable() -> None:
    assert points(PODMAN_PLAIN) == ["/host/sys/fs/cgroup", "/host/sys/fs/cgroup/cpu", "/host/sys/fs/cgroup/unified"]


def test_read_only_binds_stacked_on_the_submounts_close_the_hole() -> None:
    assert points(PODMAN_CLOSED) == []


def test_mounts_outside_the_host_root_do_not_count() -> None:
    assert "/tmp" not in points(PODMAN_PLAIN)
    assert points(PODMAN_PLAIN, "/host/lib") == []


def test_host_root_slash_means_not_in_a_container() -> None:
    assert points(PODMAN_PLAIN, "/") == []


def test_a_read_only_file_system_counts_as_read_only() -> None:
    text = "1 0 0:1 / /host/x rw - squashfs /dev/loop0 ro\n"
    assert points(text) == []


def test_escaped_mount_points_and_garbage_lines() -> None:
    entries = parse_mountinfo(PODMAN_PLAIN + "garbage\n\n1 2 3\n")
    assert PurePosixPath("/host dir") in {e.point for e in entries}
    assert len(entries) == 10


def test_check_reason_names_the_mounts_and_the_fix(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(PODMAN_PLAIN)
    check = check_host_mounts(Path("/host"), info)
    assert "/host/sys/fs/cgroup/cpu (cgroup)" in check.reason
    assert "recursiveReadOnly" in check.reason and "\n" not in check.reason
    info.write_text(PODMAN_CLOSED)
    assert check_host_mounts(Path("/host"), info).reason == ""


def test_unreadable_mountinfo_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    check = check_host_mounts(Path("/host"), tmp_path / "missing")
    assert check.reason.startswith("cannot check that the host mounts are read-only")
