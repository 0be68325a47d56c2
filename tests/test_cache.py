"""Cache keys cover exactly what a stage's output depends on, and plans say why a stage runs."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

import cifarflow.orchestration.cache as cache
from cifarflow.orchestration.cache import StageSpec, explain_change, key_parts, module_digest


@pytest.fixture
def helper_module(tmp_path, monkeypatch):
    """A throwaway module on sys.path standing in for a project helper the stage imports."""
    path = tmp_path / "helper_for_key_test.py"
    path.write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module_digest.cache_clear()
    yield path
    module_digest.cache_clear()
    sys.modules.pop("helper_for_key_test", None)


def spec():
    return StageSpec("train", ("epochs", "seed"), ("helper_for_key_test",), ("numpy",), upstream=("preprocess",))


def parts(config, fingerprint="features-1"):
    return key_parts(spec(), config, {"preprocess": SimpleNamespace(fingerprint=fingerprint)})


def test_key_changes_with_each_ingredient_and_nothing_else(helper_module, monkeypatch):
    config = SimpleNamespace(epochs=15, seed=42, batch_size=32)
    base = parts(config).key
    assert parts(SimpleNamespace(epochs=15, seed=42, batch_size=999)).key == base  # not a train param here
    assert parts(SimpleNamespace(epochs=20, seed=42)).key != base
    assert parts(config, fingerprint="features-2").key != base

    helper_module.write_text("SCALE = 2\n")  # a helper module's source, not the task's own
    module_digest.cache_clear()
    assert parts(config).key != base
    helper_module.write_text("SCALE = 1\n")
    module_digest.cache_clear()
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

    copy = tmp_path / "copy.tar.gz"
    copy.write_bytes(synthetic_archive.read_bytes())
    original = source_identity(PipelineConfig(source=str(synthetic_archive)))
    assert source_identity(PipelineConfig(source=str(copy))) == original
    assert source_identity(PipelineConfig(source=copy.as_uri())) == original
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert source_identity(PipelineConfig(source=str(copy))) != original
