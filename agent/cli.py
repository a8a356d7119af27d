"""`node-agent` command line: ``main(argv) -> int`` maps errors to exit codes.

Every expected failure is a :class:`NodeAgentError`: printed as one line on
stderr (with its hint) and turned into its exit status; tracebacks are for
bugs only.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from agent import __version__
from agent.errors import NodeAgentError
from agent.gobinary.pclntab import Frame
from agent.gobinary.symbolizer import GoBinary

log = logging.getLogger("node_agent")


def _parse_pc(text: str) -> int | None:
    text = text.strip()
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def _symbolize(binary: GoBinary, inlines: bool, stdin: TextIO, stdout: TextIO) -> None:
    interactive = stdin.isatty()
    out: list[str] = []
    for line in stdin:
        pc = _parse_pc(line)
        if inlines:
            frames: Sequence[Frame] = binary.frames(pc) if pc is not None else ()
            if not frames:
                out.append("?\t?:0\n")
            out.extend(f"{f.function}\t{f.file}:{f.line}\n" for f in frames)
            out.append("\n")
        else:
            frame = binary.addr2line(pc) if pc is not None else None
            out.append("?\n?:0\n" if frame is None else f"{frame.function}\n{frame.file}:{frame.line}\n")
        if interactive or len(out) >= 4096:
            stdout.write("".join(out))
            out.clear()
            if interactive:
                stdout.flush()
    stdout.write("".join(out))


def _print_info(binary: GoBinary, stdout: TextIO) -> None:
    info = binary.info()
    rows = [
        ("path", info.path),
        ("go version", info.go_version or "unknown (no build info)"),
        ("main module", info.main_module or "unknown"),
        ("go build id", info.go_build_id or "none"),
        ("gnu build id", info.gnu_build_id or "none"),
        ("pie", "yes" if info.is_pie else "no"),
        ("pclntab", f"{info.pclntab_version} in {info.pclntab_location}"),
        ("functions", str(info.functions)),
        ("automaxprocs", "yes" if info.automaxprocs else "no"),
        ("DefaultGODEBUG", info.default_godebug or "(none)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        stdout.write(f"{key:<{width}}  {value}\n")


def cmd_symbolize(args: argparse.Namespace) -> int:
    binary = GoBinary.open(args.binary)
    if args.info:
        _print_info(binary, sys.stdout)
    else:
        _symbolize(binary, args.inlines, sys.stdin, sys.stdout)
    sys.stdout.flush()
    return 0


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose options may also come from the environment.

    An environment value goes through the option's own ``type`` (the same validation as the
    flag) and only when the flag is absent, so a bad value fails exactly like a bad flag: one
    line naming the variable, exit status 2. Values are read at parse time, not when the
    parser is built, so ``--version`` and ``--help`` work whatever the environment holds.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env_options: dict[str, tuple[str, Callable[[str], Any], Any]] = {}

    def add_env_argument(
        self, flag: str, *, env: str, type: Callable[[str], Any], default: Any, help: str, **kwargs: Any
    ) -> argparse.Action:
        """``flag`` that falls back to ``$env`` (through ``type``), then to ``default``."""
        action = self.add_argument(flag, type=type, default=None, help=f"{help} [{env}]", **kwargs)
        self.env_options[action.dest] = (env, type, default)
        return action

    def add_env_flag(self, flag: str, *, env: str, help: str) -> argparse.Action:
        """A switch that ``$env`` may also turn on or off (1/true/yes/on, 0/false/no/off)."""
        action = self.add_argument(flag, action="store_const", const=True, default=None, help=f"{help} [{env}]")
        self.env_options[action.dest] = (env, _boolean, False)
        return action

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, rest = super().parse_known_args(args, namespace)
        for dest, (env, convert, default) in self.env_options.items():
            if getattr(ns, dest, None) is not None:
                continue  # the flag wins
            raw = os.environ.get(env, "")
            if raw == "":
                setattr(ns, dest, default)
                continue
            try:
                setattr(ns, dest, convert(raw))
            except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
                self.exit(2, f"{self.prog}: error: environment variable {env}={_shown(raw)}: {exc}\n")
        return ns, rest


def _shown(raw: str) -> str:
    """An environment value quoted for one line of stderr: escaped and cut short."""
    return repr(raw if len(raw) <= 80 else raw[:80] + "...")


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError("must be one of 1/true/yes/on or 0/false/no/off")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {_shown(text)}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {_shown(text)}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text.strip()}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text.strip()}")
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _frequency(text: str) -> int:
    value = _integer(text)
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be 1..10000 Hz, got {value}")
    return value


def _directory(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a path, got an empty string")
    return Path(text)


def _listen(text: str) -> list[tuple[str, int]]:
    from agent.export.http import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--listen").lstrip(": ")) from None


def _user(text: str) -> tuple[int, int]:
    from agent.host.privileges import parse_user

    try:
        return parse_user(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--user").lstrip(": ")) from None


def _choice(*allowed: str) -> Callable[[str], str]:
    """A case-insensitive choice that also validates environment values."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, got {_shown(text)}")
        return value

    return parse


def _add_host_options(p: Parser) -> None:
    p.add_env_argument(
        "--host-root",
        env="NODE_AGENT_HOST_ROOT",
        type=_directory,
        default=Path("/"),
        help="where the host's /proc and /sys are mounted (in a container: /host)",
    )
    _add_bpf_options(p)


def _add_bpf_options(p: Parser) -> None:
    p.add_env_argument(
        "--kernel-headers",
        env="NODE_AGENT_KERNEL_HEADERS",
        type=_directory,
        default=None,
        help="kernel headers directory for bcc (default: search /lib/modules and /usr/src)",
    )
    p.add_env_argument(
        "--frequency",
        env="NODE_AGENT_FREQUENCY",
        type=_frequency,
        default=97,
        help="samples per second per CPU (default 97, prime)",
    )


def cmd_scan(args: argparse.Namespace) -> int:
    from agent.commands.scan import ScanConfig, run_scan
    from agent.export.report import render_table, write_folded, write_json, write_pprof

    cfg = ScanConfig(
        duration_s=args.duration,
        frequency_hz=args.frequency,
        host_root=args.host_root,
        kernel_headers=args.kernel_headers,
        progress=not args.json,
    )
    result = run_scan(cfg)
    if args.json:
        write_json(result, sys.stdout)
    else:
        render_table(result, sys.stdout)
    if args.pprof:
        paths = write_pprof(result, args.pprof)
        print(f"wrote {len(paths)} pprof profile(s) to {args.pprof}; open one with:", file=sys.stderr)
        if paths:
            print(f"  go tool pprof -http=127.0.0.1:8080 {paths[0]}", file=sys.stderr)
    if args.folded:
        with open(args.folded, "w") as f:
            write_folded(result, f)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.commands.demo import cmd_demo as run

    return run(args)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.commands.daemon import Daemon, DaemonConfig
    from agent.export.http import ProfileAccess
    from agent.logsetup import configure_logging

    configure_logging(args.log_level, args.log_format)
    listen = args.listen
    if args.user:
        from agent.host.privileges import drop_to

        drop_to(*args.user)  # first: before any thread, before any tenant input
    if args.profiles_token_file:
        profiles = ProfileAccess.from_token_file(args.profiles_token_file)
    else:
        profiles = ProfileAccess(enabled=args.profiles)
    cfg = DaemonConfig(
        interval_s=args.interval,
        frequency_hz=args.frequency,
        listen=tuple(listen),
        profiles=profiles,
        host_root=args.host_root,
        kernel_headers=args.kernel_headers,
        cache_dir=args.cache_dir,
        max_series=args.max_series,
        bpf_retry_s=args.bpf_retry,
        node_name=args.node_name,
    )
    kube = None
    if not args.no_kubernetes:
        from agent.kube.watch import connect

        kube = connect(args.node_name or None)
        if not kube.enabled:
            # Said once, here; the daemon then names containers by their cgroup.
            log.warning("Kubernetes API unavailable (%s): labelling containers by cgroup", kube.status().reason)
        kube.start()
    daemon = Daemon(cfg, kube=kube)
    daemon.install_signal_handlers()
    try:
        return daemon.run()
    finally:
        if kube is not None:
            kube.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="node-agent",
        description="Find Go workloads whose GOMAXPROCS does not match their CPU quota.",
    )
    parser.add_argument("--version", action="version", version=f"node-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sym = sub.add_parser(
        "symbolize",
        help="symbolize addresses of a Go binary from its pclntab",
        description="Read hexadecimal addresses (one per line, 0x optional) on stdin and print "
        "what `go tool addr2line` prints: the function, then FILE:LINE.",
    )
    sym.add_argument("binary", help="a Go ELF executable (stripped binaries work too)")
    mode = sym.add_mutually_exclusive_group()
    mode.add_argument(
        "--inlines",
        action="store_true",
        help="print every inlined frame, innermost first, as FUNCTION<TAB>FILE:LINE, then a blank line",
    )
    mode.add_argument("--info", action="store_true", help="describe the binary instead of reading addresses")
    sym.set_defaults(func=cmd_symbolize)

    scan = sub.add_parser(
        "scan",
        help="profile this machine for a while and judge every Go process's GOMAXPROCS",
        description="Sample every CPU with BPF, symbolize Go stacks, and report per Go process the CPU "
        "spent in the scheduler and GC, its GOMAXPROCS and CPU limit, and a verdict. Exit status 0 even "
        "when something is flagged.",
    )
    scan.add_argument("--duration", type=_positive_float, default=10.0, help="seconds to profile (default 10)")
    scan.add_argument("--json", action="store_true", help="print a JSON list, one object per Go process")
    scan.add_argument("--pprof", type=Path, metavar="DIR", help="write one gzipped pprof profile per Go process")
    scan.add_argument("--folded", type=Path, metavar="FILE", help="write folded stacks for flame-graph tools")
    _add_host_options(scan)
    scan.set_defaults(func=cmd_scan)

    run = sub.add_parser(
        "run",
        help="run as the node's daemon: sample continuously, serve /metrics, /healthz, /readyz, /profiles",
        description="The DaemonSet agent. Every option can also be set by the environment variable in brackets.",
    )
    run.add_env_argument(
        "--interval",
        env="NODE_AGENT_INTERVAL",
        type=_positive_float,
        default=15.0,
        help="seconds per sampling window (default 15)",
    )
    run.add_env_argument(
        "--listen",
        env="NODE_AGENT_LISTEN",
        type=_listen,
        default=[("127.0.0.1", 9464)],
        help="HOST:PORT[,HOST:PORT...] for /metrics and the probes; [::]:PORT or :PORT is every address, "
        "IPv6 and IPv4 (default 127.0.0.1:9464)",
    )
    run.add_env_argument(
        "--user",
        env="NODE_AGENT_USER",
        type=_user,
        default=None,
        metavar="UID[:GID]",
        help="started as root, switch to this uid (one that owns nothing) keeping only the capabilities, so "
        "the agent can read what it needs and write nothing it does not own",
    )
    run.add_env_flag(
        "--profiles",
        env="NODE_AGENT_PROFILES",
        help="serve /profiles (every container's functions, source paths, exe path and build ID) to anyone "
        "who reaches the port; off by default",
    )
    run.add_env_argument(
        "--profiles-token-file",
        env="NODE_AGENT_PROFILES_TOKEN_FILE",
        type=_directory,
        default=None,
        metavar="FILE",
        help="serve /profiles only to requests with 'Authorization: Bearer <the file's content>' (implies --profiles)",
    )
    run.add_env_argument(
        "--max-series",
        env="NODE_AGENT_MAX_SERIES",
        type=_positive_int,
        default=5000,
        help="cap on per-container series; the least busy are dropped and counted (default 5000)",
    )
    run.add_env_argument(
        "--bpf-retry",
        env="NODE_AGENT_BPF_RETRY",
        type=_positive_float,
        default=60.0,
        help="seconds between attempts to load BPF when it failed (default 60)",
    )
    run.add_env_argument(
        "--cache-dir",
        env="NODE_AGENT_CACHE",
        type=_directory,
        default=None,
        help="writable directory for the merged kernel-header tree",
    )
    run.add_env_argument(
        "--node-name",
        env="NODE_NAME",
        type=str,
        default="",
        help="this node's name, for the pod watch's fieldSelector (Downward API spec.nodeName)",
    )
    run.add_env_flag(
        "--no-kubernetes",
        env="NODE_AGENT_NO_KUBERNETES",
        help="do not contact the Kubernetes API; label by cgroup only",
    )
    run.add_env_argument(
        "--log-level",
        env="NODE_AGENT_LOG_LEVEL",
        type=_choice("debug", "info", "warning", "error"),
        default="info",
        help="debug, info, warning or error (default info)",
    )
    run.add_env_argument(
        "--log-format",
        env="NODE_AGENT_LOG_FORMAT",
        type=_choice("text", "json"),
        default="text",
        help="text, or json: one object per line with time, level, logger, message and fields (default text)",
    )
    _add_host_options(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo",
        help="show the problem on this machine: one Go service, GOMAXPROCS 64 vs the fix, each in 1 CPU",
        description="Build the bundled Go service and run two copies side by side, each in its own cgroup "
        "limited to 1 CPU: one with the GOMAXPROCS a big host gives it, one with node-agent's recommendation. "
        "Drive both with the same load, profile the machine meanwhile, and print them side by side with the "
        "throughput the fix gains; write both pprof profiles. Needs root, BPF, a Go toolchain and a cgroup cpu "
        "controller; removes everything it created on exit (Ctrl-C included).",
    )
    demo.add_argument("--duration", type=_positive_float, default=30.0, help="seconds to profile (default 30)")
    demo.add_argument(
        "--warmup", type=_non_negative_float, default=3.0, help="seconds of load before profiling (default 3)"
    )
    demo.add_argument("--concurrency", type=_positive_int, default=8, help="concurrent clients per copy (default 8)")
    demo.add_argument(
        "--big-gomaxprocs",
        type=_positive_int,
        default=64,
        metavar="N",
        help="GOMAXPROCS of the misconfigured copy: what a big host gives it (default 64)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("node-agent-demo-profiles"),
        metavar="DIR",
        help="where to write the pprof profiles (default ./node-agent-demo-profiles)",
    )
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_bpf_options(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except NodeAgentError as exc:
        print(f"node-agent: {exc.describe()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
