"""A data dir is portable: moved (`mv`), copied (`cp -a`) or restored from a backup that turned its
links into copies (`cp -rL`), it works as before. Every stage whose output is whole is `Cached`, every
path reported lies under the new location, the original is left alone, and nothing in the data dir
names the old location.

One pipeline run (tiny synthetic archive, `classic` preset, 1 epoch) per module; each test reruns the
command line, in this process, on a moved or copied data dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort

from cifarflow.config import PipelineConfig
from cifarflow.registry import store
from flows.cifar_flow import main as pipeline_command
from tests.flow_helpers import ALL_CACHED, run_flow, task_states
from tests.registry_helpers import snapshot
from tests.synthetic import write_archive


@dataclass(frozen=True)
class FirstRun:
    data_dir: Path  # where the pipeline ran; tests move it away only for as long as they run
    archive: Path


@pytest.fixture(scope="module")
def first_run(prefect_server, tmp_path_factory) -> FirstRun:
    base = tmp_path_factory.mktemp("portable")
    archive = write_archive(base / "source" / "cifar-10-python.tar.gz")
    config = PipelineConfig(source=str(archive), data_dir=base / "D1", epochs=1, rows_per_shard=100)
    state, states = run_flow(config)
    assert state.is_completed(), state.message
    assert store.champion_name(config.layout.registry) == "v1"
    return FirstRun(config.layout.root, archive)


def rerun(first: FirstRun, data_dir: Path, capsys) -> tuple[int, str, dict[str, str]]:
    """`flows/cifar_flow.py` with the first run's options on `data_dir`: exit status, the last stdout
    line, and the task-run states Prefect recorded."""
    args = ["--source", first.archive, "--data-dir", data_dir, "--epochs", "1", "--rows-per-shard", "100"]
    code = pipeline_command([str(a) for a in args])
    out, _ = capsys.readouterr()
    with get_client(sync_client=True) as client:
        [flow_run] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["cifar10-pipeline"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    return code, out.strip().splitlines()[-1], task_states(flow_run.id)


def naming(root: Path, old: Path) -> list[str]:
    """The files under `root` that contain the path `old`."""
    needle = str(old).encode()
    return [
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
        if needle in path.read_bytes()
    ]


def assert_works_in_place(data_dir: Path, old: Path, code: int, last: str, states: dict[str, str]) -> None:
    assert code == 0, last
    assert last.startswith(f"done: report at {data_dir / 'reports'}/"), last
    assert Path(last.removeprefix("done: report at ")).is_dir()
    assert states == ALL_CACHED
    assert store.read_champion_version(data_dir / "registry").directory == data_dir / "registry" / "versions" / "v1"
    assert (data_dir / "reports" / "latest" / "report.md").is_file()
    assert naming(data_dir, old) == []


def test_a_moved_data_dir_reruns_cached_with_every_path_under_its_new_place(first_run, tmp_path, capsys):
    moved = tmp_path / "D2"
    os.rename(first_run.data_dir, moved)  # what `mv` does on one file system
    try:
        code, last, states = rerun(first_run, moved, capsys)
        assert_works_in_place(moved, first_run.data_dir, code, last, states)
    finally:
        os.rename(moved, first_run.data_dir)  # back where the module's other tests expect it


def test_a_copied_data_dir_reports_under_the_copy_and_leaves_the_original_alone(first_run, tmp_path, capsys):
    copy = tmp_path / "D2"
    subprocess.run(["cp", "-a", str(first_run.data_dir), str(copy)], check=True)
    original = snapshot(first_run.data_dir, mtimes=True)
    code, last, states = rerun(first_run, copy, capsys)
    assert_works_in_place(copy, first_run.data_dir, code, last, states)
    assert snapshot(first_run.data_dir, mtimes=True) == original  # not a byte, link or time stamp changed


def test_a_backup_that_copied_the_links_reruns_cached(first_run, tmp_path, capsys):
    restored = tmp_path / "restored"
    shutil.copytree(first_run.data_dir, restored, symlinks=False)  # cp -rL, rsync -L, zip, object-store syncs
    assert (restored / "reports" / "latest").is_dir()
    code, last, states = rerun(first_run, restored, capsys)
    assert_works_in_place(restored, first_run.data_dir, code, last, states)
