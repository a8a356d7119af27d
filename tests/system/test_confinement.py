"""agent/sampling/confinement.py: bpf() refused by seccomp/AppArmor is named as such, not as missing headers.

The real case (a container under podman's default seccomp profile) is in
tests/system/test_container_e2e.py; these are the pure rules and the probe on this machine.
"""

from __future__ import annotations

import errno
import os
import platform

import pytest

from agent.sampling.confinement import SYS_BPF, Confinement, describe_confinement, parse_status, probe_bpf
from tests.support.capabilities import need_root

STATUS = "Name:\tpython3\nSeccomp:\t2\nSeccomp_filters:\t1\nSpeculation_Store_Bypass:\tthread vulnerable\n"


def test_parse_status() -> None:
    assert parse_status(STATUS) == (2, 1)
    assert parse_status("Name:\tx\n") == (0, 0)  # kernels without CONFIG_SECCOMP


@pytest.mark.parametrize(
    ("conf", "says", "fix"),
    [
        (Confinement(2, 1, ""), "seccomp filter (1 filter(s))", "seccomp=unconfined"),
        (Confinement(2, 1, "containers-default-0.50.1 (enforce)"), "seccomp", "Unconfined"),
        (Confinement(0, 0, "docker-default (enforce)"), "AppArmor profile 'docker-default (enforce)'", "apparmor="),
        (Confinement(0, 0, "unconfined"), "security module", "dmesg"),
        (Confinement(0, 0, ""), "security module", "dmesg"),
    ],
)
def test_refusal_names_the_confinement_and_the_fix(conf: Confinement, says: str, fix: str) -> None:
    described = describe_confinement(errno.EPERM, conf)
    assert described is not None
    message, help_text = described
    assert message.startswith("bpf() is refused (EPERM) although the capabilities allow it")
    assert says in message and fix in help_text
    assert "header" not in message + help_text


def test_other_errors_are_not_blamed_on_confinement() -> None:
    assert describe_confinement(errno.EINVAL, Confinement(2, 1, "")) is None


def test_probe_creates_a_map_as_root_and_closes_it() -> None:
    need_root()
    before = len(os.listdir("/proc/self/fd"))
    assert probe_bpf() == (0 if platform.machine() in SYS_BPF else None)
    assert len(os.listdir("/proc/self/fd")) == before
