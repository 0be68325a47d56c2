"""Bad parameters are rejected before any work, with messages that say what to do."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError

from cifarflow.config import PipelineConfig
from cifarflow.data.archive import DownloadFailed, default_source, fetch_archive
from cifarflow.errors import ArchiveError
from cifarflow.files import file_digest


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "greater than 0"),
        ({"batch_size": -32}, "greater than 0"),
        ({"model": "resnet9000"}, "unknown model 'resnet9000'; choose one of"),
        ({"sha256": "abc"}, "64 hex characters"),
        ({"md5": "xyz"}, "32 hex characters"),
        ({"normalization": "minmax"}, "'unit' or 'standardize'"),
        ({"source": "/nowhere/cifar.tar.gz"}, "is not an existing file"),
        ({"learning_rate": -1.0}, "greater than 0"),
        ({"promotion_alpha": 1.5}, "less than 1"),
        ({"promotion_alpha": 0}, "greater than 0"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_rejected(synthetic_archive, changes, message):
    with pytest.raises(ValidationError, match=message):
        PipelineConfig(**({"source": str(synthetic_archive)} | changes))


def test_preset_defaults_fill_unset_values(synthetic_archive):
    config = PipelineConfig(source=str(synthetic_archive))
    assert (config.model, config.train_epochs, config.train_batch_size) == ("classic", 15, 32)
    assert config.preset.recipe.optimizer == "rmsprop"
    assert config.resolved_normalization == "unit"
    assert PipelineConfig(source=str(synthetic_archive), model="quick").resolved_normalization == "standardize"
    assert (
        PipelineConfig(source=str(synthetic_archive), model="quick", normalization="unit").resolved_normalization
        == "unit"
    )
    assert PipelineConfig(source=str(synthetic_archive), epochs=3).train_epochs == 3


URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def jpeg_copy(shared: Path, builder: str | None) -> Path:
    """A stand-in for ../shared/datasets: a JPEG copy and, unless None, a builder script with that body."""
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "cifar10-jpeg.tar.gz").write_bytes(b"class-folder JPEGs")
    if builder is not None:
        (shared / "make_cifar10_archive.py").write_text(builder)
    return shared / "cifar10-jpeg.tar.gz"


def test_the_default_source_is_the_local_archive_then_the_jpeg_copy_then_the_url(
    tmp_path, synthetic_archive, monkeypatch
):
    data, shared = tmp_path / "data", tmp_path / "shared"
    assert default_source(data, shared) == URL  # nothing here: download
    jpeg_copy(shared, builder=None)
    assert default_source(data, shared) == URL  # a JPEG copy with no builder cannot be turned into an archive
    (shared / "make_cifar10_archive.py").write_text("")
    assert default_source(data, shared) == str(shared / "cifar10-jpeg.tar.gz")
    (data / "cache").mkdir(parents=True)
    shutil.copy(synthetic_archive, data / "cache" / "cifar-10-python.tar.gz")
    assert default_source(data, shared) == str(data / "cache" / "cifar-10-python.tar.gz")
    monkeypatch.chdir(tmp_path)
    assert default_source(Path("data"), shared) == "data/cache/cifar-10-python.tar.gz"  # relative, as the data dir
    # the config takes it when no source is named, for its own data dir
    assert PipelineConfig(data_dir=data).source == PipelineConfig(source=None, data_dir=data).source
    assert PipelineConfig(data_dir=data).source == str(data / "cache" / "cifar-10-python.tar.gz")
    assert PipelineConfig(data_dir=data, source=URL).source == URL  # a named source wins


def test_a_jpeg_copy_is_built_once_into_the_data_dir(tmp_path, synthetic_archive):
    """`fetch_archive` runs the builder beside the copy (a real subprocess), keeps its output in raw/, reuses it."""
    copy = jpeg_copy(tmp_path / "shared", f"import shutil, sys; shutil.copy({str(synthetic_archive)!r}, sys.argv[2])")
    path, digest = fetch_archive(str(copy), tmp_path / "data" / "raw")
    assert path.parent == tmp_path / "data" / "raw" and digest == file_digest(synthetic_archive)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing half-built left beside it
    (copy.parent / "make_cifar10_archive.py").write_text("import sys; sys.exit('must not run again')")
    assert fetch_archive(str(copy), tmp_path / "data" / "raw")[0] == path


def test_a_failed_build_is_one_line_naming_the_copy(tmp_path):
    copy = jpeg_copy(tmp_path / "shared", "import sys; print('Traceback ...', file=sys.stderr); sys.exit('bad JPEG')")
    with pytest.raises(ArchiveError) as failed:
        fetch_archive(str(copy), tmp_path / "data" / "raw")
    assert str(failed.value) == (
        f"could not build a CIFAR-10 archive from {copy} with {copy.parent / 'make_cifar10_archive.py'}: bad JPEG"
    )
    assert not list((tmp_path / "data" / "raw").iterdir())


def test_no_archive_and_no_network_is_one_line_naming_what_was_tried(tmp_path):
    """Neither the local archive nor the JPEG copy, and the download refused (a closed local port: a real
    connection, no mock): one ArchiveError line naming the URL, the reason and the places looked at."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    with pytest.raises(DownloadFailed) as failed:  # not an ArchiveError: the ingest task retries it
        fetch_archive(url, tmp_path / "data" / "raw")
    message = str(failed.value)
    assert "\n" not in message and failed.value.__cause__ is None and failed.value.__suppress_context__
    assert message.startswith(f"could not download {url} (") and "refused" in message.lower()
    assert f"{tmp_path / 'data' / 'cache' / 'cifar-10-python.tar.gz'} (absent)" in message
    assert "cifar10-jpeg.tar.gz (" in message and "or pass --source" in message


def test_the_old_preset_name_still_works_with_a_notice_for_users_and_silently_for_stored_records(capsys, tmp_path):
    from cifarflow.models.presets import get_preset

    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    assert PipelineConfig(model="seed", source=str(archive)).model == "classic"
    assert capsys.readouterr().err == "note: the preset 'seed' is now 'classic'; the old name will be removed\n"
    assert get_preset("seed").name == "classic"  # a registry version or train.json written before the rename
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_preset("nope")
