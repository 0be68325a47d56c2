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


# Issue 30: the data set's classes and image size come from the data, never from CIFAR-10's constants. The
# official archive's reader (its format is 32×32, ten classes) and the one default image size are the exceptions.
CIFAR_CONSTANTS = {
    "a CIFAR-10 class name": r"\b(airplane|automobile|bird|cat|deer|dog|frog|horse|ship|truck)\b",
    "a fixed image shape": r"IMAGE_SHAPE|\b32, ?32\b|\b32 ?\* ?32\b|32×32|\b3072\b|\b1024\b",
    "a fixed class count": r"NUM_CLASSES|num_classes[^=\n]*= ?10\b|\b10 classes\b|Dense\(10\b|minlength=10\b",
}
CONSTANT_OWNERS = {Path("cifarflow/data/archive.py")}


def cifar_constants(root: Path) -> list[str]:
    """`path:line what` for each use of a CIFAR-10 constant in product code (string literals and comments too)."""
    import re

    found = []
    pages = sorted(path.relative_to(root) for path in (root / "serving" / "static").glob("*.*"))
    for path in modules(root) + pages:
        if path in CONSTANT_OWNERS:
            continue
        for number, line in enumerate((root / path).read_text().splitlines(), start=1):
            found += [f"{path}:{number} {what}" for what, rule in CIFAR_CONSTANTS.items() if re.search(rule, line)]
    return found


def test_nothing_hard_codes_cifar_10s_classes_outputs_or_image_size():
    assert cifar_constants(REPO_ROOT) == []


def test_the_constant_check_finds_each_kind(tmp_path):
    (tmp_path / "serving").mkdir()
    lines = ["LABELS = ['cat', 'dog']", "x = np.zeros((n, 32, 32, 3))", "y = one_hot(labels, num_classes=10)"]
    (tmp_path / "serving" / "page.py").write_text("\n".join(lines))
    (tmp_path / "cifarflow" / "data").mkdir(parents=True)
    (tmp_path / "cifarflow" / "data" / "archive.py").write_text("SHAPE = (32, 32, 3)\n")
    assert cifar_constants(tmp_path) == [
        "serving/page.py:1 a CIFAR-10 class name",
        "serving/page.py:2 a fixed image shape",
        "serving/page.py:3 a fixed class count",
    ]
