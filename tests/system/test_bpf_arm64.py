"""bpf/profile.bpf.c, as it is, compiles for arm64 through bcc's own compile path.

bcc picks the target from ``$ARCH`` (``arm64``: clang target
aarch64-unknown-linux-gnu, ``-D__TARGET_ARCH_arm64``, ``arch/arm64/include``)
and the kernel tree from ``$BCC_KERNEL_SOURCE``. The arm64 tree is Debian's
``linux-headers-<abi>-arm64`` (generated half, fetched by scripts/setup.sh)
beside this machine's ``-common`` half, merged by agent/sampling/kheaders.py
exactly as the agent merges a split pair on a node. The program is compiled
with the sampler's own -D flags, and every function in it is turned into BPF
bytecode (``dump_func``: compiled, not loaded — this kernel is x86-64).

A program that names x86-64 registers (``regs.bp``, ``regs.sp``, ``regs.ip``
of ``struct pt_regs``) fails here: arm64's ``bpf_user_pt_regs_t`` is
``struct user_pt_regs { regs[31]; sp; pc; pstate; }``; use bcc's
``PT_REGS_FP/SP/IP(ctx)`` (x29, sp, pc on arm64).

A probe header compiled with the program asserts the target really was
arm64 (``__aarch64__``, ``CONFIG_ARM64``, the arm64 size of the register
block); the same probe must fail for the native target, so the check cannot
pass by compiling for x86-64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.cachedir import cache_dir
from agent.sampling.kheaders import find_kernel_headers
from agent.sampling.sampler import SamplerConfig
from tests.support.capabilities import need, need_root

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "bpf" / "profile.bpf.c"
PROBE = """\
#include <uapi/linux/bpf_perf_event.h>
#if !defined(__aarch64__) || !defined(__TARGET_ARCH_arm64) || !defined(CONFIG_ARM64)
#error "node-agent probe: not compiling for arm64"
#endif
_Static_assert(sizeof(bpf_user_pt_regs_t) == 34 * 8, "node-agent probe: arm64 user_pt_regs is x0-x30, sp, pc, pstate");
"""
# Runs in a child: bcc reads $ARCH and $BCC_KERNEL_SOURCE while compiling, and its
# compile errors go to the process's stderr.
COMPILE = textwrap.dedent(
    """
    import json, sys
    from bcc import BPF
    from bcc.libbcc import lib
    b = BPF(src_file=sys.argv[1].encode(), cflags=json.loads(sys.argv[2]))
    names = [lib.bpf_function_name(b.module, i).decode() for i in range(lib.bpf_num_functions(b.module))]
    print(json.dumps({n: len(b.dump_func(n)) for n in names}))
    b.cleanup()
    """
)

pytestmark = [pytest.mark.bpf]


def arm64_headers() -> Path:
    """The arm64 generated half scripts/setup.sh unpacked (its -common partner sits beside it)."""
    found = sorted((cache_dir() / "arm64-kheaders" / "usr" / "src").glob("linux-headers-*-arm64"))
    need(bool(found), "arm64 kernel headers in the cache (scripts/setup.sh fetches them)")
    return found[-1]


def native_headers() -> Path:
    found = sorted(Path("/usr/src").glob(f"linux-headers-*-{os.uname().machine.replace('x86_64', 'amd64')}"))
    need(bool(found), "this machine's kernel headers (linux-headers-<arch>)")
    return found[-1]


def _have_bcc() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


def compile_program(headers: Path, arch: str | None, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Compile bpf/profile.bpf.c (+ the probe) with bcc for ``arch`` (None: this machine)."""
    need_root()  # bcc creates the program's maps in the kernel while compiling
    need(_have_bcc(), "bcc Python bindings (python3-bpfcc)")
    kh = find_kernel_headers(explicit=headers, cache_dir=tmp / "cache")
    probe = tmp / "arch_probe.h"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("ARCH", "BCC_KERNEL_SOURCE")}
    env.update({k: v for k, v in kh.bcc_environ().items() if v is not None})
    if arch is not None:
        env["ARCH"] = arch
    cflags = [*SamplerConfig().cflags(), "-include", str(probe)]
    return subprocess.run(
        [sys.executable, "-c", COMPILE, str(PROGRAM), json.dumps(cflags)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_profile_program_compiles_for_arm64(tmp_path: Path) -> None:
    proc = compile_program(arm64_headers(), "arm64", tmp_path)
    assert proc.returncode == 0, f"bpf/profile.bpf.c does not compile for arm64:\n{proc.stderr[-4000:]}"
    functions: dict[str, int] = json.loads(proc.stdout.splitlines()[-1])
    assert functions, "no BPF function in the program"
    for name, size in functions.items():
        assert size > 0 and size % 8 == 0, (name, size)  # whole BPF instructions


def test_arm64_probe_rejects_the_native_target(tmp_path: Path) -> None:
    """The negative control: without ARCH=arm64 the probe must stop the compile."""
    proc = compile_program(native_headers(), None, tmp_path)
    if os.uname().machine == "aarch64":
        assert proc.returncode == 0, proc.stderr[-4000:]
        return
    assert proc.returncode != 0
    assert "node-agent probe: not compiling for arm64" in proc.stderr
