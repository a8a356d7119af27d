"""The package graph follows the data flow: no module imports upward, lab/ only from commands.

    sampling/ host/ gobinary/ kube  ->  analysis/  ->  export/  ->  commands/  ->  cli
    errors is the root every layer may import; lab/ (changes the machine) is for the demo
    command, the tests and the benchmarks only.
Function-level (lazy) imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).parents[2] / "agent"

LAYERS = {
    "errors": 0,
    "shutdown": 0,
    "lru": 0,
    "cachedir": 0,
    "logsetup": 0,
    "sampling": 1,
    "host": 1,
    "gobinary": 1,
    "kube": 1,
    "analysis": 2,
    "export": 3,
    "commands": 4,
    "cli": 5,
    "__main__": 6,
}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "agent":
        return None
    if len(parts) > 1 and ((AGENT / parts[1]).is_dir() or (AGENT / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "agent"  # the package itself, or a name it defines (agent.__version__)


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from agent import lab`
    return {m for m in found if package_of(m) not in (None, "agent")}


def modules() -> list[Path]:
    return sorted(AGENT.rglob("*.py"))


def edges() -> list[tuple[str, str, str]]:
    """(importing module's path, its package, imported package)."""
    out: list[tuple[str, str, str]] = []
    for path in modules():
        rel = path.relative_to(AGENT)
        src = rel.parts[0].removesuffix(".py")
        out.extend((str(rel), src, dst) for dst in {package_of(m) or "" for m in imports(path)} if dst != src)
    return out


def test_every_package_has_a_layer() -> None:
    packages = {p.relative_to(AGENT).parts[0].removesuffix(".py") for p in modules()} - {"__init__"}
    assert packages - set(LAYERS) == {"lab"}


def test_no_module_imports_upward() -> None:
    upward = [(f, dst) for f, src, dst in edges() if dst != "lab" and LAYERS[dst] > LAYERS.get(src, 99)]
    assert upward == []


def test_lab_is_imported_only_by_commands() -> None:
    users = sorted({f for f, src, dst in edges() if dst == "lab" and src != "commands"})
    assert users == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from agent.analysis.pipeline import Pipeline\n",
            {"agent.analysis.pipeline", "agent.analysis.pipeline.Pipeline"},
        ),
        ("def f():\n    import agent.export.metrics\n", {"agent.export.metrics"}),
        ("from agent import lab\nimport os\n", {"agent.lab"}),
    ],
)
def test_the_checker_sees_every_import_form(tmp_path: Path, source: str, expected: set[str]) -> None:
    (tmp_path / "m.py").write_text(source)
    assert imports(tmp_path / "m.py") == expected
