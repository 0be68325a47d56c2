"""Cache keys cover exactly what a stage's output depends on, and plans say why a stage runs."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import cifarflow.orchestration.cache as cache
from cifarflow.orchestration.cache import StageSpec, code_digest, explain_change, key_parts


@pytest.fixture
def helper_module(tmp_path, monkeypatch):
    """A throwaway module on sys.path standing in for a project helper the stage imports."""
    path = tmp_path / "helper_for_key_test.py"
    path.write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code_digest.cache_clear()
    yield path
    code_digest.cache_clear()
    sys.modules.pop("helper_for_key_test", None)


def spec():
    return StageSpec("train", ("epochs", "seed"), ("helper_for_key_test",), ("numpy",), upstream=("preprocess",))


def parts(config, fingerprint="features-1"):
    return key_parts(spec(), config, {"preprocess": SimpleNamespace(fingerprint=fingerprint)})


def test_a_package_digest_covers_every_module_in_it(tmp_path, monkeypatch):
    package = tmp_path / "helper_pkg_for_key_test"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "deep.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code_digest.cache_clear()
    before = code_digest("helper_pkg_for_key_test")
    (package / "inner" / "deep.py").write_text("X = 2\n")
    code_digest.cache_clear()
    assert code_digest("helper_pkg_for_key_test") != before
    code_digest.cache_clear()


def test_each_stage_key_covers_all_library_code_its_task_runs():
    """The library code each stage's task calls, its imports followed transitively (imports inside
    functions included) plus the modules the preset registry names, lies within the stage's `code`."""
    import ast

    from cifarflow.models.presets import PRESETS
    from cifarflow.orchestration.stages import SPECS

    def imports(module: str) -> set[str]:
        found = set()
        tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
        for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
            block.body = []  # imports for annotations only: never run, so not the stage's code
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifarflow"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")}
        return found

    entry = {  # the library module each task calls, and what the preset registry names for the stage
        "ingest": {"cifarflow.data.ingest"},
        "validate": {"cifarflow.validation.validate", "cifarflow.data.dataset_versions"},
        "preprocess": {"cifarflow.data.transform"},
        "train": {"cifarflow.training.run"},
        "evaluate": {"cifarflow.evaluation.evaluate"},
        "calibrate": {"cifarflow.calibration.calibrate"},
        "robustness": {"cifarflow.robustness.robustness"},
        "report": {"cifarflow.reporting.report"},
        "promote": {"cifarflow.promotion.promote"},
    }
    for preset in PRESETS.values():
        entry["train"] |= {preset.builder.split(":")[0], preset.trainer.split(":")[0]}
        entry["evaluate"] |= {preset.builder.split(":")[0], preset.serving.split(":")[0]}
        entry["promote"] |= {preset.builder.split(":")[0], preset.serving.split(":")[0]}  # the export traces these
        entry["robustness"] |= {preset.builder.split(":")[0], preset.serving.split(":")[0]}  # scored as exported
    shared = {
        "cifarflow",
        "cifarflow.errors",
        "cifarflow.layout",
        "cifarflow.lock",
        "cifarflow.outputs",
    }  # no arithmetic: types, messages, paths and locks
    for stage, spec in SPECS.items():
        seen, todo = set(), set(entry[stage])
        while todo:
            module = todo.pop()
            seen.add(module)
            todo |= imports(module) - seen
        modules = {m for m in seen - shared if importlib.util.find_spec(m).submodule_search_locations is None}
        uncovered = {m for m in modules if not any(m == c or m.startswith(c + ".") for c in spec.code)}
        assert not uncovered, f"{stage}'s cache key misses the source of {sorted(uncovered)}"


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, AttributeError):  # `name` is a function or class, not a module
        return False


def test_key_changes_with_each_ingredient_and_nothing_else(helper_module, monkeypatch):
    config = SimpleNamespace(epochs=15, seed=42, batch_size=32)
    base = parts(config).key
    assert parts(SimpleNamespace(epochs=15, seed=42, batch_size=999)).key == base  # not a train param here
    assert parts(SimpleNamespace(epochs=20, seed=42)).key != base
    assert parts(config, fingerprint="features-2").key != base

    helper_module.write_text("SCALE = 2\n")  # a helper module's source, not the task's own
    code_digest.cache_clear()
    assert parts(config).key != base
    helper_module.write_text("SCALE = 1\n")
    code_digest.cache_clear()
    assert parts(config).key == base

    monkeypatch.setattr(cache, "library_version", lambda name: "99.0")
    assert parts(config).key != base


def test_explain_change_names_what_changed(helper_module, monkeypatch):
    before = parts(SimpleNamespace(epochs=15, seed=42))
    previous = {
        "params": before.params,
        "upstream": before.upstream,
        "code": before.code,
        "libraries": before.libraries,
    }
    after = parts(SimpleNamespace(epochs=20, seed=42), fingerprint="features-2")
    assert explain_change(previous, after) == "epochs 15→20, preprocess output changed"
    assert explain_change(None, after) == "never ran in this data directory"
    monkeypatch.setattr(cache, "library_version", lambda name: "99.0")
    assert "numpy" in explain_change(previous, parts(SimpleNamespace(epochs=15, seed=42)))


def test_local_source_is_keyed_by_content_not_path(synthetic_archive, tmp_path):
    from cifarflow.config import PipelineConfig
    from cifarflow.orchestration.cache import source_identity

    def identity(source):
        return source_identity(PipelineConfig(source=str(source), data_dir=tmp_path / "data"))

    copy = tmp_path / "copy.tar.gz"
    copy.write_bytes(synthetic_archive.read_bytes())
    original = identity(synthetic_archive)
    assert identity(copy) == original
    assert identity(copy.as_uri()) == original
    copy.write_bytes(copy.read_bytes() + b"\0")  # a new mtime and size: hashed again, not remembered
    assert identity(copy) != original
    assert str(copy.resolve()) in (tmp_path / "data" / ".stage-state" / "source-digests.json").read_text()


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The files `cifarflow.files.file_digest` really reads from now on."""
    import cifarflow.files

    read, new = [], cifarflow.files.hashlib.new
    monkeypatch.setattr(cifarflow.files.hashlib, "new", lambda name: read.append(name) or new(name))
    return read


def remembered(path: Path, root: Path) -> str:
    from cifarflow.files import file_digest, remembered_digests

    with remembered_digests(root / ".stage-state" / "digests.json", root):
        return file_digest(path)


def test_a_remembered_digest_is_trusted_only_while_inode_size_and_mtime_are_unchanged(tmp_path, hashed):
    from cifarflow.files import file_digest

    root = tmp_path / "data"
    output = root / "features" / "x_train.npy"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"an output of many bytes")
    digest = remembered(output, root)
    assert (
        digest == file_digest(output) and '"features/x_train.npy"' in (root / ".stage-state/digests.json").read_text()
    )
    hashed.clear()

    root.rename(tmp_path / "moved")  # `mv`: same inode, size and time stamp: remembered
    root = tmp_path / "moved"
    output = root / "features" / "x_train.npy"
    assert remembered(output, root) == digest and hashed == []

    data = bytearray(output.read_bytes())
    data[3] ^= 1
    output.write_bytes(bytes(data))  # a flipped byte, written: a new mtime
    assert remembered(output, root) != digest and len(hashed) == 1
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # copy2: same size and mtime, a new inode
    assert remembered(copy / "features" / "x_train.npy", copy) == file_digest(output) and len(hashed) == 3


@pytest.mark.parametrize("text", ["", '{"key": "abc", "par', '["a list"]', '{"key": "abc", "params": 3}'])
def test_a_damaged_stage_record_reads_as_none_and_a_damaged_memo_as_empty(tmp_path, text):
    state_dir = tmp_path / ".stage-state"
    state_dir.mkdir()
    (state_dir / "train.json").write_text(text)
    assert cache.last_state(state_dir, "train") is None  # --plan then says "never ran", no traceback
    (state_dir / "digests.json").write_text(text)
    source = tmp_path / "archive.tar.gz"
    source.write_bytes(b"bytes")
    assert len(remembered(source, tmp_path)) == 64


def test_an_archive_inside_the_data_dir_keys_the_report_by_its_place_there(synthetic_archive, tmp_path):
    from cifarflow.config import PipelineConfig
    from cifarflow.orchestration.stages import report_inputs

    def inputs(data_dir: Path, source: Path) -> dict[str, str]:
        return report_inputs(PipelineConfig(source=str(source), data_dir=data_dir), {})

    for name in ("D1", "D2"):  # the same data dir before and after a move, its archive inside it
        (tmp_path / name / "cache").mkdir(parents=True)
        shutil.copy2(synthetic_archive, tmp_path / name / "cache" / "cifar-10-python.tar.gz")
    moved = [inputs(tmp_path / name, tmp_path / name / "cache" / "cifar-10-python.tar.gz") for name in ("D1", "D2")]
    assert moved == [{"source": "<data dir>/cache/cifar-10-python.tar.gz"}] * 2
    assert inputs(tmp_path / "D1", synthetic_archive) == {"source": str(synthetic_archive.resolve())}


def test_the_ingest_key_covers_the_data_set_options_and_a_folders_content(synthetic_archive, tmp_path):
    """image_size, test_fraction and split_seed each re-key ingest; a folder source is keyed by its files' content."""
    from cifarflow.config import PipelineConfig
    from cifarflow.orchestration.stages import SPECS

    def ingest_key(**settings) -> str:
        config = PipelineConfig(**({"source": str(synthetic_archive), "data_dir": tmp_path / "data"} | settings))
        return key_parts(SPECS["ingest"], config, {}).key

    base = ingest_key()
    assert ingest_key() == base
    changed = [ingest_key(image_size=64), ingest_key(test_fraction=0.2), ingest_key(split_seed=1)]
    assert len({base, *changed}) == 4

    folder = tmp_path / "photos"
    for name in ("cat/a.png", "dog/b.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(name.encode())
    before = ingest_key(source=str(folder))
    assert ingest_key(source=str(folder)) == before != base
    (folder / "dog/b.png").write_bytes(b"dog/c.png")  # same size, other content
    assert ingest_key(source=str(folder)) != before
