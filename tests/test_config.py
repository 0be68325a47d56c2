"""Bad parameters are rejected before any work, with messages that say what to do."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from cifarflow.config import PipelineConfig
from cifarflow.data.archive import DownloadFailed, default_source, fetch_archive


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


def test_the_presets_promotion_floor_holds_on_cifar_10_only_and_an_explicit_one_everywhere(synthetic_archive):
    cifar10 = "airplane automobile bird cat deer dog frog horse ship truck".split()
    quick = PipelineConfig(source=str(synthetic_archive), model="quick")
    assert quick.promotion_floor(cifar10, 32) == 0.80  # where the floor was measured (the archive or the JPEG copy)
    assert quick.promotion_floor(cifar10, 64) is None  # the same pictures upscaled: not what it was measured on
    assert quick.promotion_floor(["quince", "apricot", "medlar"], 32) is None
    assert quick.promotion_floor(cifar10[::-1], 32) is None  # another label order is another data set
    chosen = PipelineConfig(source=str(synthetic_archive), model="quick", min_accuracy=0.5)
    assert chosen.promotion_floor(["quince", "apricot"], 64) == 0.5
    assert PipelineConfig(source=str(synthetic_archive), min_accuracy=0).promotion_floor(cifar10, 32) is None


URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def test_the_default_source_is_the_local_archive_then_the_jpeg_copy_then_the_url(
    tmp_path, synthetic_archive, monkeypatch
):
    data, shared = tmp_path / "data", tmp_path / "shared"
    assert default_source(data, shared) == URL  # nothing here: download
    shared.mkdir()
    (shared / "cifar10-jpeg.tar.gz").write_bytes(b"class-folder JPEGs")  # a folder source, read as one
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


def test_a_folder_is_a_source_and_the_data_set_options_have_their_defaults(tmp_path):
    config = PipelineConfig(source=str(tmp_path))
    assert config.source == str(tmp_path)
    assert (config.image_size, config.test_fraction, config.split_seed) == (32, 1 / 6, 0)
    with pytest.raises(ValidationError, match="is not an existing file or folder.*a folder of class folders"):
        PipelineConfig(source=str(tmp_path / "photos"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_size": 4}, "image_size\n.*greater than or equal to 8"),
        ({"image_size": 1024}, "image_size\n.*less than or equal to 512"),
        ({"test_fraction": 0}, "test_fraction\n.*greater than 0"),
        ({"test_fraction": 1}, "test_fraction\n.*less than 1"),
        ({"split_seed": -1}, "split_seed\n.*greater than or equal to 0"),
        ({"model": "fast", "image_size": 12}, "preset fast takes image sizes .*got 12"),
        ({"image_size": 300}, "preset classic takes image sizes .*got 300"),
    ],
)
def test_data_set_options_out_of_range_are_refused(tmp_path, changes, message):
    with pytest.raises(ValidationError, match=message):
        PipelineConfig(**({"source": str(tmp_path)} | changes))


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


def test_a_run_without_source_or_size_stays_on_the_data_set_its_data_dir_holds_and_a_url_is_cifar_10(tmp_path):
    from cifarflow.data.ingest import ingest_source, refuse_another_data_set
    from cifarflow.errors import PipelineInputError
    from cifarflow.files import write_json

    data_dir, pets = tmp_path / "data", tmp_path / "pets"
    for name in ("cat", "dog"):
        (pets / name).mkdir(parents=True)
        Image.new("RGB", (9, 9), name == "cat" and "red" or "blue").save(pets / name / "a.png")
    held = {"label_names": ["cat", "dog"], "image_size": 64, "source": {"kind": "folder", "uri": str(pets)}}
    write_json(data_dir / "parquet" / "manifest.json", held)
    before = (data_dir / "parquet" / "manifest.json").read_bytes()
    config = PipelineConfig(data_dir=data_dir)
    assert (config.source, config.image_size) == (str(pets), 64)
    assert PipelineConfig(data_dir=data_dir, image_size=48).image_size == 48
    with pytest.raises(PipelineInputError, match=r"holds 2 classes \(cat, dog\) at 64×64; .* has 10 classes"):
        refuse_another_data_set(PipelineConfig(data_dir=data_dir, source=URL))  # a URL is the CIFAR-10 archive
    with pytest.raises(PipelineInputError, match=r"at 32×32; a data dir holds one data set: .* --image-size 64\)"):
        refuse_another_data_set(PipelineConfig(data_dir=data_dir, image_size=32))
    # a deployment skips the command line's checks: ingest checks again under the run's lock, before the swap
    with pytest.raises(PipelineInputError, match="use another --data-dir"):
        ingest_source(PipelineConfig(data_dir=data_dir, image_size=16), log=lambda _: None)
    assert (data_dir / "parquet" / "manifest.json").read_bytes() == before
    assert sorted(path.name for path in (data_dir / "parquet").iterdir()) == ["manifest.json"]
