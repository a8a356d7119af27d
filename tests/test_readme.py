"""The README is part of the product: what it names must exist and what it tells you to run must parse.

Commands are checked against the real parser, metric names against the
collector's contract, `node-agent run`'s flag table against `run --help`'s
options and their environment variables, paths against the tree.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from agent import cli
from agent.export.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    nxt = README.find("\n#", start + len(title))
    return README[start : nxt if nxt >= 0 else len(README)]


def _node_agent_commands() -> list[str]:
    """Every `node-agent ...` invocation in code, without placeholders or option syntax."""
    inline = re.findall(r"`(node-agent [^`\n]*)`", README)
    blocks = "\n".join(re.findall(r"```sh\n(.*?)```", README, re.DOTALL))
    found = inline + re.findall(r"(?m)^\s*(?:\S*/)?(node-agent .*)$", blocks)
    out = []
    for text in found:
        # A synopsis ("[--json]", "BINARY"): options dropped (checked below), placeholders filled.
        cmd = re.sub(r"\[[^\]]*\]", "", text.strip())
        cmd = re.sub(r"\b[A-Z]{2,}\b", "/usr/bin/prometheus", cmd)
        out.append(" ".join(cmd.split()))
    return sorted(set(out))


COMMANDS = _node_agent_commands()


def test_readme_names_every_subcommand() -> None:
    named = {c.split()[1] for c in COMMANDS if len(c.split()) > 1}
    assert {"demo", "scan", "run", "symbolize"} <= named


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_commands_parse(command: str) -> None:
    argv = shlex.split(command)[1:]
    if argv == ["demo"] or argv[:1] == ["--version"]:
        argv = argv or ["demo"]
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README command does not parse: {command!r} (exit {exc.code})")


def test_metric_table_is_the_contract() -> None:
    table = _section("### Metrics")
    documented = set(re.findall(r"\| `(node_agent_[a-z_]+)` \|", table))
    assert documented == set(METRIC_NAMES)


def test_run_flag_table_matches_the_parser() -> None:
    table = _section("### Configuration (`node-agent run`)")
    rows = re.findall(r"^\| `(--[a-z-]+)` \| `?([A-Z_]*)`? \|", table, re.MULTILINE)
    assert rows, "no flag rows found"
    run = _subparser("run")
    flags = {opt: a for a in run._actions for opt in a.option_strings if opt.startswith("--") and opt != "--help"}
    assert {flag for flag, _ in rows} == set(flags)
    for flag, env in rows:
        if env:
            assert env in (flags[flag].help or ""), f"{flag}: README says {env}, --help does not"


@pytest.mark.parametrize(
    "path",
    sorted(set(re.findall(r"(?<![\w/.-])((?:scripts|deploy|benchmarks|tests|agent|bpf)/[\w./*-]+[\w*])", README))),
)
def test_paths_in_readme_exist(path: str) -> None:
    assert list(REPO.glob(path)), f"README names {path}, which is not in the tree"


def test_quick_start_is_the_two_scripts_ci_runs() -> None:
    quick = _section("## Quick start")
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.DOTALL)
    assert [b.strip() for b in blocks] == ["./scripts/demo.sh", "./scripts/test.sh"]
    assert "exec ./scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert 'node-agent" demo' in (REPO / "scripts" / "demo.sh").read_text()


def _subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = action.choices[name]
    return parser


def test_every_documented_option_exists() -> None:
    """Options in a synopsis (``node-agent scan [--duration S] ...``) belong to that subcommand."""
    checked = 0
    for cmd in re.findall(r"`(node-agent [^`\n]*)`", README.replace("\n", " ")):
        words = cmd.split()
        if len(words) < 2 or words[1] not in ("demo", "scan", "run", "symbolize"):
            continue
        options = {o for a in _subparser(words[1])._actions for o in a.option_strings}
        for opt in re.findall(r"--[a-z][a-z-]*", cmd):
            assert opt in options, f"README: `{cmd}` names {opt}, which `{words[1]}` does not take"
            checked += 1
    assert checked > 10
