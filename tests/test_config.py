"""Bad parameters are rejected before any work, with messages that say what to do."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cifarflow.config import PipelineConfig


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
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_rejected(synthetic_archive, changes, message):
    with pytest.raises(ValidationError, match=message):
        PipelineConfig(**({"source": str(synthetic_archive)} | changes))


def test_preset_defaults_fill_unset_values(synthetic_archive):
    config = PipelineConfig(source=str(synthetic_archive))
    assert (config.model, config.train_epochs, config.train_batch_size) == ("seed", 15, 32)
    assert config.preset.recipe.optimizer == "rmsprop"
    assert config.resolved_normalization == "unit"
    assert PipelineConfig(source=str(synthetic_archive), model="quick").resolved_normalization == "standardize"
    assert (
        PipelineConfig(source=str(synthetic_archive), model="quick", normalization="unit").resolved_normalization
        == "unit"
    )
    assert PipelineConfig(source=str(synthetic_archive), epochs=3).train_epochs == 3


def test_official_url_is_the_default_source():
    assert PipelineConfig().source == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
