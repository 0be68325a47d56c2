"""Shared fixtures: an isolated Prefect home and server, and tiny synthetic archives."""

from __future__ import annotations

import os
import tempfile

# Before Prefect or TensorFlow are imported: no telemetry look-ups, a private PREFECT_HOME so no
# old cache records leak in, and no TensorFlow start-up chatter.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.synthetic import write_archive  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def synthetic_archive(tmp_path: Path) -> Path:
    """A 400-image archive (5 × 60 train, 100 test) in the official python layout."""
    return write_archive(tmp_path / "source" / "cifar-10-python.tar.gz")


@pytest.fixture
def tiny_config(tmp_path: Path, synthetic_archive: Path):
    """A pipeline config on the synthetic archive: small shards, 1 epoch, its own data dir."""
    from cifarflow.config import PipelineConfig

    return PipelineConfig(source=str(synthetic_archive), data_dir=tmp_path / "data", epochs=1, rows_per_shard=100)
