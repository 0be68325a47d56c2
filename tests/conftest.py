"""Shared fixtures: an isolated Prefect home and server, and tiny synthetic archives."""

from __future__ import annotations

import cifarflow.environment  # the defaults (no telemetry look-ups, quiet TensorFlow), before any test imports them

import os
import tempfile
from pathlib import Path

import pytest

from tests.synthetic import write_archive

# A private PREFECT_HOME, so no old cache records leak in. Set here, at the conftest's import: pytest
# imports it before any test module, and nothing imported above imports Prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# MLflow tracking off (its SQLite store costs ~2.7 s per new data dir); tests/test_tracking.py turns it on
os.environ["CIFARFLOW_TRACKING"] = "off"

TIERS = ("slow", "server", "flow", "unit")  # slowest first


def pytest_collection_modifyitems(items):
    """Tiers by what a test starts, so no marker can be forgotten: `server` (a real `prefect server
    start` subprocess) and `slow` (the full data set) are marked by their modules; a test that uses
    the session's temporary Prefect server or the two-version registry, or is marked so because it runs
    the command line or a fresh process of the product, is `flow`; every other test is `unit`.

    Then the files are ordered by their slowest tier, each file's tests kept in order: `make test`
    hands whole files to its workers in this order, and starting the long files first (longest
    processing time first) keeps one worker from running the slowest file alone at the end."""
    for item in items:
        if any(item.get_closest_marker(name) for name in ("server", "slow", "flow")):
            continue
        # the registry fixture exports and smoke-tests its versions in fresh processes of the product
        fresh = {"prefect_server", "two_versions"} & set(item.fixturenames)
        item.add_marker(pytest.mark.flow if fresh else pytest.mark.unit)
    rank: dict[str, int] = {}
    for item in items:
        tier = next(TIERS.index(name) for name in TIERS if item.get_closest_marker(name))
        rank[item.nodeid.split("::")[0]] = min(tier, rank.get(item.nodeid.split("::")[0], len(TIERS)))
    order = {id(item): number for number, item in enumerate(items)}
    items.sort(key=lambda item: (rank[item.nodeid.split("::")[0]], order[id(item)]))


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def cli_env(prefect_server, tmp_path):
    """Environment for CLI subprocesses: the session's Prefect server, a private PREFECT_HOME."""
    from prefect.settings import PREFECT_API_URL

    return os.environ | {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PYTHONUNBUFFERED": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


@pytest.fixture(scope="session")
def two_versions(tmp_path_factory) -> Path:
    """A data dir whose model registry holds v1 and v2 (the champion), each built as a promotion
    builds it (export + smoke test); once per session. Copy it before changing it
    (`tests.registry_helpers.copy_data_dir`)."""
    from tests.registry_helpers import build_two_versions

    return build_two_versions(tmp_path_factory.mktemp("two-versions") / "data")


@pytest.fixture
def synthetic_archive(tmp_path: Path) -> Path:
    """A 400-image archive (5 × 60 train, 100 test) in the official python layout."""
    return write_archive(tmp_path / "source" / "cifar-10-python.tar.gz")


@pytest.fixture
def tiny_config(tmp_path: Path, synthetic_archive: Path):
    """A pipeline config on the synthetic archive: small shards, 1 epoch, its own data dir."""
    from cifarflow.config import PipelineConfig

    return PipelineConfig(source=str(synthetic_archive), data_dir=tmp_path / "data", epochs=1, rows_per_shard=100)
