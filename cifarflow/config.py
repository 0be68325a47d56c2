"""The one typed configuration that flows from the command line (or a deployment) to every stage."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from cifarflow.data.archive import default_source, is_cifar10, is_remote, local_path
from cifarflow.data.shards import ROWS_PER_SHARD
from cifarflow.data.transform import NormalizationKind
from cifarflow.files import read_json
from cifarflow.layout import DataLayout
from cifarflow.models.presets import PRESETS, Preset, get_preset, preset_name
from cifarflow.outputs import read_whole
from cifarflow.paths import printable

IMAGE_SIZE = 32  # the default data set's image side (CIFAR-10's), when the data dir holds none yet


class PipelineConfig(BaseModel):
    """Everything a run's outputs depend on. Frozen: stages read it, never change it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(
        None,  # filled in by `_default_source`
        description="a folder of labeled images (train/<class>/… and test/<class>/…, or <class>/… alone), a "
        ".tar.gz/.tgz/.tar/.zip of one, or the URL, file:// URL or path of cifar-10-python.tar.gz (default: <data "
        "dir>/cache/cifar-10-python.tar.gz if present, else ../shared/datasets/cifar10-jpeg.tar.gz beside the "
        "repository if present, else the official URL)",
    )
    sha256: str | None = Field(None, description="expected sha256 of the archive (optional)")
    md5: str | None = Field(None, description="expected md5 of the archive (the official URL's is built in)")
    data_dir: Path = Field(Path("data"), description="where shards, features, models and reports go (one data set)")
    image_size: int = Field(
        None,  # filled in by `_defaults_from_data_dir`
        ge=8,
        le=512,
        description=f"the data set's image side in pixels: every image's centre square, resized to it (default: the "
        f"data dir's data set's, else {IMAGE_SIZE})",
    )
    test_fraction: float = Field(
        1 / 6, gt=0, lt=1, description="share of each class held out for testing when a folder has no train/ and test/"
    )
    split_seed: int = Field(0, ge=0, lt=2**31, description="seeds that held-out split (apart from --seed)")
    model: str = Field("classic", description=f"model preset: {', '.join(sorted(PRESETS))}")
    epochs: int | None = Field(None, gt=0, le=1000, description="training epochs (default: the preset's)")
    batch_size: int | None = Field(None, gt=0, le=65536, description="batch size (default: the preset's)")
    learning_rate: float | None = Field(None, gt=0, lt=10, description="learning rate (default: the preset's)")
    seed: int = Field(42, ge=0, lt=2**31, description="random seed for weights and shuffling")
    normalization: NormalizationKind | None = Field(
        None,
        description="the transform preprocess fits and every model applies first: 'unit' = pixels/255; "
        "'standardize' = per-channel z-score fitted on train (default: the preset's)",
    )
    rows_per_shard: int = Field(ROWS_PER_SHARD, gt=0, description="images per Parquet shard")
    promotion_alpha: float = Field(
        0.05, gt=0, lt=1, description="promote a new model over the champion only if McNemar's p is below this"
    )
    min_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="never promote a model below this test accuracy (default: the preset's floor on CIFAR-10, "
        "none on other data sets; 0: none)",
    )
    warm_start: Literal["none", "champion"] = Field(
        "none",
        description="'champion': start training from the champion's weights when its architecture matches "
        "(with fewer --epochs, a faster retrain on grown data); 'none': from scratch",
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_data_dir(cls, data: Any) -> Any:
        """An unset source and image size are those of the data set the data dir holds (its manifest's), else the
        default source and IMAGE_SIZE: a retrain without --source stays on the data dir's data set."""
        if not isinstance(data, dict) or (data.get("source") is not None and data.get("image_size") is not None):
            return data
        data_dir = Path(data.get("data_dir") or cls.model_fields["data_dir"].default)
        held = read_whole(lambda: read_json(DataLayout(data_dir).shard_manifest))
        held = held if isinstance(held, dict) and "image_size" in held else {}
        recorded = held.get("source", {}).get("uri")
        if data.get("source") is None:
            usable = recorded and (is_remote(recorded) or local_path(recorded).exists())
            data = data | {"source": recorded if usable else default_source(data_dir)}
        if data.get("image_size") is None:
            data = data | {"image_size": held.get("image_size", IMAGE_SIZE)}
        return data

    @field_validator("sha256", "md5")
    @classmethod
    def _hex_digest(cls, value: str | None, info: ValidationInfo) -> str | None:
        length = {"sha256": 64, "md5": 32}[info.field_name]
        if value is not None and not re.fullmatch(f"[0-9a-fA-F]{{{length}}}", value):
            raise ValueError(f"{info.field_name} must be {length} hex characters")
        return value.lower() if value else value

    @field_validator("source", "data_dir")
    @classmethod
    def _utf8_path(cls, value):
        """Prefect stores a flow's parameters as UTF-8 JSON: a name with other bytes cannot travel."""
        if printable(value) != str(value):
            raise ValueError(
                f"{printable(value)} holds characters that are not UTF-8 text (or control characters); "
                "rename it or use another path: this path is a parameter of the run, stored as UTF-8"
            )
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return preset_name(value)

    @model_validator(mode="after")
    def _source_exists(self) -> PipelineConfig:
        if not is_remote(self.source) and not local_path(self.source).exists():
            raise ValueError(
                f"source {self.source!r} is not an existing file or folder. Pass a folder of class folders "
                "(train/<class>/…, test/<class>/… or <class>/…), a .tar.gz or .zip of one, or the path or URL of "
                "cifar-10-python.tar.gz; docs/how-to/get-data.md and docs/how-to/own-images.md say more."
            )
        return self

    @model_validator(mode="after")
    def _preset_takes_image_size(self) -> PipelineConfig:
        self.preset.check_image_size(self.image_size)
        return self

    @property
    def preset(self) -> Preset:
        return get_preset(self.model)

    @property
    def layout(self) -> DataLayout:
        return DataLayout(Path(self.data_dir).resolve())

    @property
    def resolved_normalization(self) -> str:
        return self.normalization or self.preset.normalization

    def promotion_floor(self, label_names: list[str], image_size: int) -> float | None:
        """--min-accuracy (0: none), else the preset's floor on CIFAR-10, where it was measured, else none."""
        if self.min_accuracy is not None:
            return self.min_accuracy or None
        return self.preset.min_accuracy if is_cifar10(label_names, image_size) else None

    @property
    def train_epochs(self) -> int:
        return self.epochs or self.preset.epochs

    @property
    def train_batch_size(self) -> int:
        return self.batch_size or self.preset.batch_size

    @property
    def train_learning_rate(self) -> float:
        return self.learning_rate or self.preset.learning_rate


DATA_OPTIONS = {
    "source": str,
    "sha256": str,
    "md5": str,
    "data_dir": Path,
    "image_size": int,
    "test_fraction": float,
    "split_seed": int,
    "normalization": str,
    "rows_per_shard": int,
}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options saying where the data comes from and how it is stored (the pipeline's and the sweep's)."""
    for name, kind in DATA_OPTIONS.items():
        field = PipelineConfig.model_fields[name]
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=field.default, help=field.description)


def data_settings(args: argparse.Namespace) -> dict:
    """`PipelineConfig` fields from the options `add_data_arguments` defined."""
    return {name: getattr(args, name) for name in DATA_OPTIONS}
