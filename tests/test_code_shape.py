"""The product's code stays legible: no function over 80 lines, and no two modules with one name that
mean different things (issue 29)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cifarflow", "flows", "tasks", "serving", "deployments")
MAX_FUNCTION_LINES = 80
# one name, one meaning: a stage's task (tasks/<stage>.py) beside the stage's logic, the monitor run's tasks
SAME_MEANING = {"ingest", "validate", "preprocess", "train", "evaluate", "calibrate", "robustness", "report", "promote"}
SAME_MEANING |= {"monitor"}
# old command paths kept for now, each printing a one-line deprecation notice
DEPRECATED = {Path("flows/registry.py")}


def modules(root: Path) -> list[Path]:
    found = [path.relative_to(root) for package in PACKAGES for path in (root / package).rglob("*.py")]
    return sorted(path for path in found if path not in DEPRECATED)


def long_functions(root: Path) -> list[str]:
    long = []
    for path in modules(root):
        for node in ast.walk(ast.parse((root / path).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return long


def shared_names(root: Path) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for path in modules(root):
        if path.name != "__init__.py":
            by_name.setdefault(path.stem, []).append(str(path))
    return {name: paths for name, paths in by_name.items() if len(paths) > 1 and name not in SAME_MEANING}


def test_no_function_is_longer_than_80_lines():
    assert long_functions(REPO_ROOT) == []


def test_no_two_modules_share_a_name_with_different_meanings():
    assert shared_names(REPO_ROOT) == {}


def test_the_checks_find_a_long_function_and_a_shared_name(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    (tmp_path / "cifarflow" / "feedback").mkdir(parents=True)
    (tmp_path / "cifarflow" / "feedback" / "export.py").write_text(f"def long():\n{body}")
    (tmp_path / "cifarflow" / "registry").mkdir()
    (tmp_path / "cifarflow" / "registry" / "export.py").write_text("def short():\n    return 1\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "train.py").write_text("")
    (tmp_path / "cifarflow" / "train.py").write_text("")
    assert long_functions(tmp_path) == ["cifarflow/feedback/export.py:1 long (81 lines)"]
    assert shared_names(tmp_path) == {"export": ["cifarflow/feedback/export.py", "cifarflow/registry/export.py"]}
