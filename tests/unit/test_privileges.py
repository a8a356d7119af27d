"""Which capabilities the agent gives up when it switches users (agent/host/privileges.py).

The switch itself, with the DaemonSet's capability set and as a real process, is tested in
tests/system/test_deploy_capabilities.py; here the rule for each kernel and --user's syntax.
"""

from __future__ import annotations

import pytest

from agent.host.privileges import CAP_SETGID, CAP_SETUID, CAP_SYS_RESOURCE, bpf_memory_in_memcg, parse_user, unneeded

ALWAYS = 1 << CAP_SETUID | 1 << CAP_SETGID


@pytest.mark.parametrize(
    ("release", "memcg"),
    [
        ("6.18.0-1-amd64", True),
        ("5.11.0", True),
        ("5.15.0-1051-aws", True),  # Ubuntu 22.04 / EKS
        ("5.14.0-362.el9.x86_64", True),  # RHEL 9
        ("5.10.205-195.807.amzn2.x86_64", False),  # Amazon Linux 2: memlock still counts
        ("5.8.0", False),
        ("4.18.0-513.el8.x86_64", False),
        ("10.0.0", True),
        ("", False),
        ("garbage", False),
    ],
)
def test_sys_resource_is_dropped_only_where_bpf_memory_is_charged_to_memcg(release: str, memcg: bool) -> None:
    assert bpf_memory_in_memcg(release) is memcg
    assert unneeded(release) == ALWAYS | (1 << CAP_SYS_RESOURCE if memcg else 0)


@pytest.mark.parametrize(
    ("text", "want"),
    [("2000000000", (2_000_000_000, 2_000_000_000)), ("1000:2000", (1000, 2000)), ("5:0", (5, 0)), ("7:", (7, 7))],
)
def test_user_is_uid_and_optional_gid(text: str, want: tuple[int, int]) -> None:
    assert parse_user(text) == want


@pytest.mark.parametrize("text", ["0", "nobody", "-1", "4294967295", "1:x", ":5"])
def test_bad_user_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_user(text)
