"""agent.shutdown: a real SIGTERM unwinds through ``finally``; a second signal during cleanup is ignored."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from agent.shutdown import Terminated

PROGRAM = textwrap.dedent(
    """
    import os, signal, sys
    from agent.shutdown import Terminated, ignoring_signals, raising_signals
    try:
        with raising_signals():
            try:
                os.kill(os.getpid(), signal.SIG{sig})
                signal.pause()  # not reached: the handler raised
            finally:
                with ignoring_signals():
                    os.kill(os.getpid(), signal.SIGTERM)  # a second one, during the cleanup
                    print("cleaned up", flush=True)
    except Terminated as exc:
        print("terminated", exc.exit_code, flush=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
    """
)


def run(sig: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM.format(sig=sig)], capture_output=True, text=True, timeout=30, check=False
    )


def test_sigterm_unwinds_through_finally_and_exits_143() -> None:
    res = run("TERM")
    assert res.stdout.split("\n")[:2] == ["cleaned up", "terminated 143"], res.stderr
    assert res.returncode == 128 + signal.SIGTERM == Terminated.exit_code


def test_sighup_is_a_termination_too() -> None:
    res = run("HUP")
    assert res.stdout.startswith("cleaned up\nterminated"), res.stderr


def test_sigint_is_keyboard_interrupt() -> None:
    res = run("INT")
    assert res.stdout == "cleaned up\ninterrupted\n" and res.returncode == 130, res.stderr
