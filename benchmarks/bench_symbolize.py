"""Symbolization benchmark, side by side with Go's debug/gosym (the anchor).

Both sides run as whole processes on the same binary and the same PCs:
open + index + N random PCs -> file:line. Reported: wall time, CPU time and
peak RSS of each (best of --repeat runs), their ratios against the targets
(2x; CPU is the one a loaded machine does not distort), the in-process cost of
a cached lookup, and what the daemon pays to open the binary: a sandboxed
parse (child process + rebuilding from plain data) against an in-process one.

    .venv/bin/python benchmarks/bench_symbolize.py [--binary /usr/bin/prometheus] [--pcs 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.cachedir import cache_dir
from agent.gobinary import sandbox
from agent.gobinary.symbolizer import GoBinary
from agent.lab.gotoolchain import find_toolchain

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@dataclass
class Run:
    wall_s: float
    max_rss_kb: int
    cpu_s: float = 0.0  # user + system of the command and everything it waited for


def build_reference() -> Path:
    tc = find_toolchain()
    if tc is None:
        raise SystemExit("no Go toolchain found: run scripts/setup.sh")
    out = cache_dir() / "bench" / f"gosym_ref-{tc.version_string}"
    src = HERE / "gosym_ref"
    newest_src = max(p.stat().st_mtime for p in src.iterdir())
    if not out.exists() or out.stat().st_mtime < newest_src:
        out.parent.mkdir(parents=True, exist_ok=True)
        env = dict(
            os.environ,
            GOTOOLCHAIN="local",
            GOFLAGS="-mod=mod",
            CGO_ENABLED="0",
            GOCACHE=str(cache_dir() / "gocache"),
            GOPATH=str(cache_dir() / "gopath"),
        )
        subprocess.run([str(tc.go), "build", "-o", str(out), "."], cwd=src, env=env, check=True)
    return out


def timed(cmd: list[str], stdin_path: Path | None = None) -> Run:
    """Wall time and peak RSS of one command, measured by /usr/bin/time.

    Peak RSS comes from /usr/bin/time, not os.wait4 here: a forked child's
    ru_maxrss starts at its parent's RSS, and this process holds a parsed
    50 MB binary. Wall time is taken around the whole command (10 ms
    resolution of time(1) is too coarse).
    """
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            start = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run(
                ["/usr/bin/time", "-o", out.name, "-f", "%M", *cmd],
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                check=False,
            )
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        finally:
            if stdin_path:
                stdin.close()  # type: ignore[union-attr]
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed with status {proc.returncode}")
        rss = out.read().split()[-1]
    return Run(wall, int(rss), cpu)


def best(runs: list[Run]) -> Run:
    return Run(min(r.wall_s for r in runs), min(r.max_rss_kb for r in runs), min(r.cpu_s for r in runs))


def open_costs(path: str, repeat: int) -> tuple[float, float]:
    """CPU seconds (best of ``repeat``) to open a binary in-process and through the sandbox."""
    in_process, sandboxed = [], []
    for _ in range(repeat):
        t = time.process_time()
        GoBinary.open(path)
        in_process.append(time.process_time() - t)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.process_time()
        GoBinary.from_plain(sandbox.parse_file(path))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        sandboxed.append(time.process_time() - t + child)
    return min(in_process), min(sandboxed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="/usr/bin/prometheus")
    ap.add_argument("--pcs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    binary = GoBinary.open(args.binary)
    table = binary.table
    rnd = random.Random(args.seed)
    pcs = []
    for _ in range(args.pcs):
        i = rnd.randrange(table.nfunc)
        pcs.append(rnd.randrange(table.entries[i], table.entries[i + 1]))

    ref = build_reference()
    with tempfile.TemporaryDirectory() as tmp:
        pcfile = Path(tmp) / "pcs.txt"
        pcfile.write_text("".join(f"{pc:#x}\n" for pc in pcs))
        ours_cmd = [sys.executable, "-m", "agent", "symbolize", args.binary]
        ref_cmd = [str(ref), args.binary, str(pcfile)]
        timed(ours_cmd, pcfile)  # warm the page cache for both
        timed(ref_cmd)
        ours = best([timed(ours_cmd, pcfile) for _ in range(args.repeat)])
        theirs = best([timed(ref_cmd) for _ in range(args.repeat)])

    # In-process: a cached PC is a dict hit.
    for pc in pcs[:1000]:
        binary.frames(pc)
    n = 200_000
    hot = pcs[:1000]
    start = time.perf_counter()
    for i in range(n):
        binary.frames(hot[i % 1000])
    cached_us = (time.perf_counter() - start) / n * 1e6
    open_in_process, open_sandboxed = open_costs(args.binary, args.repeat)

    result = {
        "binary": args.binary,
        "functions": table.nfunc,
        "pcs": args.pcs,
        "node_agent": asdict(ours),
        "go_debug_gosym": asdict(theirs),
        "wall_ratio": round(ours.wall_s / theirs.wall_s, 2),
        "cpu_ratio": round(ours.cpu_s / theirs.cpu_s, 2),
        "rss_ratio": round(ours.max_rss_kb / theirs.max_rss_kb, 2),
        "cached_lookup_us": round(cached_us, 3),
        "open_cpu_s": {"in_process": round(open_in_process, 3), "sandboxed": round(open_sandboxed, 3)},
        "targets": {"wall_ratio": 2.0, "cpu_ratio": 2.0, "rss_ratio": 2.0, "cached_lookup_us": 1.0},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"binary            {args.binary} ({table.nfunc} functions), {args.pcs} PCs, best of {args.repeat}")
        for label, run in (("node-agent", ours), ("Go debug/gosym", theirs)):
            rss = run.max_rss_kb / 1024
            print(f"{label:<17} {run.wall_s:.3f} s wall  {run.cpu_s:.3f} s CPU  {rss:.1f} MiB peak RSS")
        print(
            f"ratio             {result['wall_ratio']}x wall  {result['cpu_ratio']}x CPU (target <= 2)"
            f"   {result['rss_ratio']}x RSS (target <= 2)"
        )
        print(f"cached lookup     {cached_us:.3f} us (target well under 1 us)")
        print(f"open (daemon)     {open_sandboxed:.3f} s CPU sandboxed vs {open_in_process:.3f} s in-process")
    ok = result["wall_ratio"] <= 2.0 and result["rss_ratio"] <= 2.0 and cached_us < 1.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
