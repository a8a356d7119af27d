"""Every alert has a runbook: a runbook_url annotation naming docs/runbooks/<Alert>.md, and that
page says what the alert means, how to confirm it (node-agent scan or /profiles), how to fix it
and when to silence it. Also: the throttling-cause alert's promtool test can fail."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.cli import build_parser
from tests.support.prometheus import promtool

yaml: Any = importlib.import_module("yaml")

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "rules" / "node-agent-rules.yaml"
PROMETHEUSRULE = REPO / "deploy" / "prometheusrule.yaml"
RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/example/node-agent/blob/main/docs/runbooks/"
SECTIONS = ("## Meaning", "## Confirm", "## Fix", "## Silence")
THROTTLING = "NodeAgentCPUThrottlingCausedByGoMaxProcs"


def alerts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in groups for r in g["rules"] if "alert" in r]


def shipped_alerts() -> list[dict[str, Any]]:
    plain = alerts(yaml.safe_load(RULES.read_text())["groups"])
    operator = alerts(yaml.safe_load(PROMETHEUSRULE.read_text())["spec"]["groups"])
    assert [a["alert"] for a in plain] == [a["alert"] for a in operator]
    return plain


def runbook_problems(rule: dict[str, Any], runbooks: Path = RUNBOOKS) -> list[str]:
    name = rule["alert"]
    url = rule.get("annotations", {}).get("runbook_url")
    if not url:
        return [f"{name}: no runbook_url annotation"]
    if url != f"{RUNBOOK_BASE}{name}.md":
        return [f"{name}: runbook_url {url} is not {RUNBOOK_BASE}{name}.md"]
    page = runbooks / f"{name}.md"
    if not page.exists():
        return [f"{name}: {page.relative_to(REPO)} does not exist"]
    text = page.read_text()
    problems = [f"{name}: no '{s}' section" for s in SECTIONS if s not in text]
    if not text.startswith(f"# {name}\n"):
        problems.append(f"{name}: the page's title is not the alert's name")
    confirm = text[text.find("## Confirm") : text.find("## Fix")]
    if "node-agent scan" not in confirm and "/profiles" not in confirm:
        problems.append(f"{name}: 'Confirm' uses neither node-agent scan nor /profiles")
    return problems


@pytest.mark.parametrize("rule", shipped_alerts(), ids=[a["alert"] for a in shipped_alerts()])
def test_alert_has_a_runbook(rule: dict[str, Any]) -> None:
    assert runbook_problems(rule) == []


def test_an_alert_without_runbook_fails_the_check(tmp_path: Path) -> None:
    """The check above can fail: no annotation, a wrong URL, a page without its sections."""
    (tmp_path / "NodeAgentNew.md").write_text("# NodeAgentNew\n\n## Meaning\nx\n## Fix\ny\n")
    assert runbook_problems({"alert": "NodeAgentNew", "annotations": {}}) == ["NodeAgentNew: no runbook_url annotation"]
    wrong = {"alert": "NodeAgentNew", "annotations": {"runbook_url": RUNBOOK_BASE + "Other.md"}}
    assert "is not" in runbook_problems(wrong)[0]
    ok_url = {"alert": "NodeAgentNew", "annotations": {"runbook_url": RUNBOOK_BASE + "NodeAgentNew.md"}}
    assert runbook_problems(ok_url, tmp_path) == [
        "NodeAgentNew: no '## Confirm' section",
        "NodeAgentNew: no '## Silence' section",
        "NodeAgentNew: 'Confirm' uses neither node-agent scan nor /profiles",
    ]


def test_every_runbook_belongs_to_an_alert() -> None:
    names = {a["alert"] for a in shipped_alerts()}
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == names


def runbook_commands() -> list[str]:
    found = []
    for page in sorted(RUNBOOKS.glob("*.md")):
        for cmd in re.findall(r"`(?:[^`]*?-- )?(node-agent [^`\n]*)`", page.read_text()):
            found.append(cmd)
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.DOTALL):
            found += re.findall(r"-- (node-agent [^\n]*)", block)
    return sorted(set(found))


@pytest.mark.parametrize("command", runbook_commands())
def test_runbook_commands_parse(command: str) -> None:
    argv = shlex.split(command)[1:]
    build_parser().parse_args(argv)  # SystemExit (status 2) on an unknown option


def run_throttling_test(tmp_path: Path, rules_text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "deploy" / "rules").mkdir(parents=True)
    (tmp_path / "tests" / "rules").mkdir(parents=True)
    (tmp_path / "deploy" / "rules" / RULES.name).write_text(rules_text)
    test = tmp_path / "tests" / "rules" / "node-agent-throttling.test.yaml"
    shutil.copy(REPO / "tests" / "rules" / test.name, test)
    cmd = [promtool(), "test", "rules", str(test)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_throttling_alert_test_passes_as_shipped(tmp_path: Path) -> None:
    res = run_throttling_test(tmp_path, RULES.read_text())
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        # Without the join on node-agent's verdict it is plain CPUThrottlingHigh: api-1 fires too.
        (
            """) > 0.25
          and on (namespace, pod, container)
          max by (namespace, pod, container) (node_agent_go_misconfigured{reason="gomaxprocs_above_limit"}) == 1""",
            ") > 0.25",
            "api-1",
        ),
        # batch-1 (10 % throttled) is not alerted: the threshold is pinned.
        (") > 0.25", ") > 0.05", "batch-1"),
    ],
    ids=["no-join", "threshold"],
)
def test_throttling_alert_test_catches_a_broken_rule(tmp_path: Path, old: str, new: str, why: str) -> None:
    text = RULES.read_text()
    assert old in text
    res = run_throttling_test(tmp_path, text.replace(old, new, 1))
    assert res.returncode != 0, res.stdout
    assert THROTTLING in res.stdout + res.stderr
    assert why in res.stdout + res.stderr
