"""Configuration: every NODE_AGENT_* value goes through its flag's validation.

A bad value from the environment is one line naming the variable and exit status 2, like a bad
flag; never a traceback, never silently taken (``False`` meaning true, ``-5`` seconds).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]

# Every environment variable `node-agent run` reads, with a value its validation must refuse.
BAD_ENV = [
    ("NODE_AGENT_INTERVAL", "-5", "must be > 0"),
    ("NODE_AGENT_INTERVAL", "0", "must be > 0"),
    ("NODE_AGENT_INTERVAL", "nan", "not a finite number"),
    ("NODE_AGENT_INTERVAL", "15s", "not a number"),
    ("NODE_AGENT_MAX_SERIES", "abc", "not an integer"),
    ("NODE_AGENT_MAX_SERIES", "0", "must be >= 1"),
    ("NODE_AGENT_BPF_RETRY", "-1", "must be > 0"),
    ("NODE_AGENT_FREQUENCY", "20000", "must be 1..10000 Hz"),
    ("NODE_AGENT_FREQUENCY", "9.7", "not an integer"),
    ("NODE_AGENT_NO_KUBERNETES", "maybe", "must be one of 1/true/yes/on or 0/false/no/off"),
    ("NODE_AGENT_LOG_LEVEL", "verbose", "must be one of debug, info, warning, error"),
    ("NODE_AGENT_LOG_FORMAT", "xml", "must be one of text, json"),
    ("NODE_AGENT_HOST_ROOT", " ", "must be a path"),
    ("NODE_AGENT_KERNEL_HEADERS", " ", "must be a path"),
    ("NODE_AGENT_LISTEN", "9464", "wants HOST:PORT"),
    ("NODE_AGENT_USER", "nobody", "wants UID[:GID] as numbers"),
    ("NODE_AGENT_PROFILES", "maybe", "must be one of 1/true/yes/on or 0/false/no/off"),
    ("NODE_AGENT_PROFILES_TOKEN_FILE", " ", "must be a path"),
]


def env_vars_of(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    return {env for env, _, _ in run.env_options.values()}


def test_every_run_env_variable_has_a_bad_value_case() -> None:
    assert {name for name, _, _ in BAD_ENV} | {"NODE_AGENT_CACHE", "NODE_NAME"} == env_vars_of(build_parser())


@pytest.mark.parametrize(("name", "value", "why"), BAD_ENV, ids=[f"{n}={v}" for n, v, _ in BAD_ENV])
def test_bad_environment_value_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str, why: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-kubernetes"] if name != "NODE_AGENT_NO_KUBERNETES" else ["run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"node-agent run: error: environment variable {name}={value!r}: {why}"), err
    assert "Traceback" not in err


@pytest.mark.parametrize(("name", "value", "why"), BAD_ENV[:3], ids=["-5", "0", "nan"])
def test_the_flag_refuses_what_the_environment_refuses(
    capsys: pytest.CaptureFixture[str], name: str, value: str, why: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", f"--interval={value}"])
    assert exc.value.code == 2
    assert why in capsys.readouterr().err


def test_a_flag_wins_over_a_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_AGENT_INTERVAL", "-5")
    assert build_parser().parse_args(["run", "--interval", "3"]).interval == 3.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(v, False) for v in ("False", "false", "0", "no", "off", "")],
        *[(v, True) for v in ("True", "1", "yes", "ON")],
    ],
)
def test_no_kubernetes_false_means_false(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("NODE_AGENT_NO_KUBERNETES", value)
    assert build_parser().parse_args(["run"]).no_kubernetes is expected


def test_environment_values_are_typed_like_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "NODE_AGENT_INTERVAL": "2.5",
        "NODE_AGENT_MAX_SERIES": "900",
        "NODE_AGENT_FREQUENCY": "49",
        "NODE_AGENT_LOG_FORMAT": "JSON",
        "NODE_AGENT_HOST_ROOT": "/host",
        "NODE_AGENT_CACHE": "/var/cache/node-agent",
    }.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["run"])
    assert (args.interval, args.max_series, args.frequency, args.log_format) == (2.5, 900, 49, "json")
    assert (args.host_root, args.cache_dir) == (Path("/host"), Path("/var/cache/node-agent"))


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env_vars_of(build_parser()):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["run"])
    assert (args.interval, args.max_series, args.bpf_retry, args.frequency) == (15.0, 5000, 60.0, 97)
    assert args.listen == [("127.0.0.1", 9464)]
    assert (args.node_name, args.no_kubernetes, args.host_root) == ("", False, Path("/"))
    assert (args.log_level, args.log_format, args.cache_dir, args.kernel_headers) == ("info", "text", None, None)
    assert (args.user, args.profiles, args.profiles_token_file) == (None, False, None)


def test_version_works_whatever_the_environment_holds() -> None:
    """The reported case: NODE_AGENT_MAX_SERIES=abc node-agent --version printed a traceback."""
    res = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        env={"PATH": "/usr/bin:/bin", "NODE_AGENT_MAX_SERIES": "abc", "NODE_AGENT_INTERVAL": "-5"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "node-agent 0.1.0\n", "")


def test_real_command_with_bad_environment_exits_2_without_traceback() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--no-kubernetes"],
        env={"PATH": "/usr/bin:/bin", "NODE_AGENT_INTERVAL": "-5"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr == "node-agent run: error: environment variable NODE_AGENT_INTERVAL='-5': must be > 0, got -5\n"


def test_hostile_environment_value_is_escaped_and_cut(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NODE_AGENT_MAX_SERIES", "1\n\x1b[2Jfake log line" + "x" * 10_000)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and len(err) < 300, err


def test_bad_listen_from_the_environment_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """NODE_AGENT_LISTEN is checked where the flag is (parse_listen, before anything starts)."""
    monkeypatch.setenv("NODE_AGENT_LISTEN", "no-port-here")
    monkeypatch.setattr("agent.logsetup.configure_logging", lambda *_a, **_k: None)  # keep pytest's handlers
    with pytest.raises(SystemExit) as exc:  # refused while parsing, like any bad flag
        main(["run", "--no-kubernetes"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-port-here" in err and "Traceback" not in err, err
