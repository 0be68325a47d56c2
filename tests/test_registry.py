"""The model registry (cifarflow/registry, cifarflow/promotion, flows/registry_flow.py): numbered versions and
the `champion` alias, one line per move in aliases.jsonl; `registry_flow.py path` printing a SavedModel that
scores like the `.keras` model in a process that never imports this package; a failed export or smoke test
leaving the registry byte for byte as it was; rollbacks the nightly run respects; the command line's exit
codes and last lines; builds and moves killed half-way undone by the next command; a registry of the landed
main's form converted once; every kind of damage named, with its fix, by every command.

The registry is built once per module the way a promotion builds it (tests/registry_helpers.py:
stage → export → smoke test in a fresh process → commit → move the alias), then copied per test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cifarflow.orchestration.stages import STAGES
from cifarflow.promotion.rollback import demoted_by_hand
from cifarflow.registry import store
from cifarflow.registry.build import Canary, VersionRejected, stage_next_version
from flows.predict_flow import main as predict_command
from flows.registry_flow import main as registry_command
from tests.conftest import REPO_ROOT
from tests.registry_helpers import canary_pixels, snapshot, tiny_model_file, version_inputs
from tests.synthetic import CLASSES

REGISTRY_CLI = str(REPO_ROOT / "flows" / "registry_flow.py")


@dataclass(frozen=True)
class Built:
    data_dir: Path  # <data_dir>/registry holds v1 (seed 1) and v2 (seed 2, the champion)
    fresh_model: Path  # a seed-3 network that is in no version
    fresh_inputs: tuple  # version_inputs(fresh_model, 3): record, metrics, predictions, labels, canary


@pytest.fixture(scope="module")
def built(two_versions, tmp_path_factory) -> Built:
    base = tmp_path_factory.mktemp("registry-module")
    fresh = tiny_model_file(base / "scratch" / "model-3" / "model.keras", 3)
    return Built(two_versions, fresh, version_inputs(fresh, 3))


@pytest.fixture
def registry(built, tmp_path) -> Path:
    """A private copy of the module's registry."""
    target = tmp_path / "data" / "registry"
    shutil.copytree(built.data_dir / "registry", target)
    return target


def assert_unchanged(registry: Path, before: dict[str, tuple]) -> None:
    """The registry is as `before`, no build left in `.staging/`."""
    assert snapshot(registry) == before


def moves_file(registry: Path) -> list[dict]:
    return [json.loads(line) for line in (registry / "aliases.jsonl").read_text().splitlines()]


def keras_probabilities(model_path: Path, pixels: np.ndarray) -> np.ndarray:
    from cifarflow.models.presets import get_preset

    preset = get_preset("classic")
    return preset.predict(preset.load(model_path), pixels)


# ------------------------------------ versions and the alias --------------------------------


def test_versions_are_numbered_and_the_alias_moves_with_its_reason(registry):
    from cifarflow.registry.saved_model import load_export

    assert [v.name for v in store.list_versions(registry)] == ["v1", "v2"]
    assert store.champion_name(registry) == "v2" and store.next_name(registry) == "v3"
    assert not [p for p in registry.rglob("*") if p.is_symlink()]  # nothing a backup or a copy can break
    v1, v2 = store.list_versions(registry)
    assert v1.model_id != v2.model_id and v2.version == "v2"

    move = store.move_alias(registry, "v1", by="hand", reason="  v2 misreads night photos ")
    assert store.champion_name(registry) == "v1"
    assert store.read_champion_version(registry).model_id == v1.model_id
    assert load_export(store.read_version(registry, "v2").export_dir).label_names == CLASSES  # v2 stays usable

    lines = moves_file(registry)
    assert [(m["from"], m["to"], m["by"]) for m in lines] == [
        (None, "v1", "promotion"),
        ("v1", "v2", "promotion"),
        ("v2", "v1", "hand"),
    ]
    assert lines[-1] == move and store.alias_moves(registry) == lines
    assert move["reason"] == "v2 misreads night photos" and move["model_id"] == v1.model_id and move["at"]
    assert demoted_by_hand(registry, v2.model_id)["to"] == "v1"
    assert demoted_by_hand(registry, v1.model_id) is None  # v1 was replaced by a promotion, not by hand
    store.move_alias(registry, "v2", by="hand", reason="the night photos were mislabeled, v2 is fine")
    assert demoted_by_hand(registry, v2.model_id) is None  # a person took it back: the last word counts


def test_a_promotion_does_not_move_the_alias_if_someone_moved_it_meanwhile(registry):
    before = snapshot(registry)
    with pytest.raises(store.AliasMoved, match="the champion is v2 now, not v1"):
        store.move_alias(registry, "v2", by="promotion", reason="promoted", expected_from="v1")
    assert snapshot(registry) == before  # nothing moved, nothing recorded
    store.move_alias(registry, "v1", by="promotion", reason="promoted", expected_from="v2")
    assert store.champion_name(registry) == "v1"


def test_the_alias_does_not_move_without_a_reason_or_to_an_unknown_version(registry):
    before = snapshot(registry)
    for reason in ("", "   "):
        with pytest.raises(store.RegistryError, match="needs a reason"):
            store.move_alias(registry, "v1", by="hand", reason=reason)
    with pytest.raises(store.RegistryError, match=r"no version v9 in .* \(versions: v1, v2\)"):
        store.move_alias(registry, "v9", by="hand", reason="roll forward")
    with pytest.raises(store.RegistryError, match="not a version name"):
        store.move_alias(registry, "latest", by="hand", reason="roll forward")
    assert snapshot(registry) == before


def test_a_version_is_never_overwritten(registry):
    before = snapshot(registry)
    staging = store.new_staging(registry)
    shutil.copytree(registry / "versions" / "v1", staging, dirs_exist_ok=True)  # a complete version
    with pytest.raises(store.RegistryError, match="version v2 exists already"):
        store.commit_version(registry, staging, "v2")
    shutil.rmtree(staging / "export")
    with pytest.raises(store.RegistryError, match="is not a complete version"):
        store.commit_version(registry, staging, "v3")
    store.discard_staging(staging)
    assert snapshot(registry) == before


def test_a_move_that_fails_records_nothing(registry, monkeypatch):
    import errno

    from cifarflow.errors import StorageError

    before = snapshot(registry)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "append_line", disk_full)
    for _ in range(3):  # the promote task's retries
        with pytest.raises(StorageError, match="the disk is full"):
            store.move_alias(registry, "v1", by="promotion", reason="promoted", expected_from="v2")
    assert snapshot(registry) == before  # no record of a move that did not happen


def landed_main_form(registry: Path, pending: bool) -> dict:
    """The registry as the landed main wrote it: champion.json (the alias, carrying its last move) beside a
    `champion` link; with `pending`, a kill came after champion.json moved to v1 and before aliases.jsonl."""
    v1 = store.read_version(registry, "v1")
    move = {"at": "2026-01-02T03:04:05+00:00", "alias": "champion", "from": "v2", "to": "v1"}
    move |= {"model_id": v1.model_id, "by": "hand", "reason": "v2 misreads night photos"}
    if pending:
        (registry / "champion.json").write_text(json.dumps({"version": "v1", "model_id": v1.model_id, "move": move}))
        (registry / "champion").symlink_to(os.path.join("versions", "v2"))
    else:
        last = moves_file(registry)[-1]
        (registry / "champion.json").write_text(
            json.dumps({"version": "v2", "model_id": last["model_id"], "move": last})
        )
        (registry / "champion").symlink_to(os.path.join("versions", "v2"))
    return move


@pytest.mark.parametrize("pending", [False, True], ids=["settled", "a move not yet in aliases.jsonl"])
def test_a_registry_of_the_landed_main_is_converted_once(registry, capsys, pending):
    move = landed_main_form(registry, pending)
    lines = moves_file(registry)
    code, out, _ = registry_main(capsys, registry.parent, "list")
    said = [line for line in out.splitlines() if line.startswith("registry: ")]
    assert code == 0 and said == [
        "registry: converted: the champion is recorded in aliases.jsonl alone (champion.json removed)",
        "registry: the `champion` link was removed: `python flows/registry_flow.py path` prints the folder",
    ]
    assert not (registry / "champion.json").exists() and not os.path.lexists(registry / "champion")
    assert moves_file(registry) == ([*lines, move] if pending else lines)  # each move once
    assert store.champion_name(registry) == ("v1" if pending else "v2")
    assert out.strip().splitlines()[-1] == f"done: 2 versions, champion {'v1' if pending else 'v2'}"
    assert [
        line for line in registry_main(capsys, registry.parent, "list")[1].splitlines() if "registry:" in line
    ] == []


# ------------------------------------ the exported artifact ---------------------------------

CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    export, pixels, out = sys.argv[1:]
    loaded = tf.saved_model.load(export)
    np.save(out, loaded.serve(tf.constant(np.load(pixels)))["probabilities"].numpy())
    signature = loaded.signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    print(json.dumps({
        "inputs": {name: [spec.dtype.name, spec.shape.as_list()] for name, spec in inputs.items()},
        "outputs": {name: spec.dtype.name for name, spec in signature.structured_outputs.items()},
        "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("cifarflow", "keras")),
    }))
    """
)


@pytest.mark.flow  # fresh processes of the product: not the unit tier
def test_the_printed_path_loads_and_scores_like_the_keras_model_in_another_process(registry, tmp_path):
    printed = registry_cli(registry.parent, "path", "v2")
    assert printed.returncode == 0, printed.stderr
    export, last = printed.stdout.strip().splitlines()
    assert export == str(registry / "versions" / "v2" / "export")
    assert last == "done: v2's SavedModel, the folder above: tf.saved_model.load(…) reads it"
    champion = registry_cli(registry.parent, "path")  # the champion by default
    assert champion.returncode == 0 and champion.stdout.splitlines()[0] == export
    pixels = np.concatenate(
        [canary_pixels(7, 14), np.zeros((1, 32, 32, 3), np.uint8), np.full((1, 32, 32, 3), 255, np.uint8)]
    )
    np.save(tmp_path / "pixels.npy", pixels)
    (tmp_path / "client.py").write_text(CLIENT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "client.py", export, "pixels.npy", "out.npy"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: the client cannot import it from the working directory
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["inputs"] == {"pixels": ["uint8", [None, 32, 32, 3]]}
    assert report["outputs"] == {"probabilities": "float32"}
    assert not [m for m in report["imported"] if m.startswith("cifarflow")]  # the artifact needs no package

    version = store.read_version(registry, "v2")
    served = np.load(tmp_path / "out.npy")
    expected = keras_probabilities(version.model_path, pixels)
    assert served.shape == (len(pixels), 10) and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_array_equal(served.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(served.sum(axis=1), 1.0, atol=1e-5)
    # the tiny random networks put every class near 0.1; the tolerance still tells two networks apart
    other = keras_probabilities(store.read_version(registry, "v1").model_path, pixels)
    assert np.abs(served - other).max() > 1e-4

    metadata = json.loads((version.export_dir / "cifarflow.json").read_text())
    assert metadata["endpoint"] == "serve" and metadata["label_names"] == CLASSES and metadata["preset"] == "classic"
    assert metadata["input"] == {"name": "pixels", "dtype": "uint8", "shape": [None, 32, 32, 3]}
    smoke = json.loads((version.directory / "smoke.json").read_text())
    assert smoke["passed"] and smoke["images"] == 20 and smoke["max_difference"] <= smoke["tolerance"]


# ------------------------------------ a version that fails ----------------------------------


@pytest.mark.flow  # a fresh process of the product: not the unit tier
def test_a_failed_smoke_test_leaves_the_registry_as_it_was(registry, built):
    record, metrics, predictions, labels, canary = built.fresh_inputs
    wrong = Canary(canary.pixels, np.roll(canary.probabilities, 1, axis=1))  # every top-1 class off by one
    before = snapshot(registry)
    with pytest.raises(VersionRejected, match="smoke test FAILED: top-1 agreement 0.00%") as rejected:
        stage_next_version(registry, built.fresh_model, record, metrics, predictions, labels, wrong)
    assert rejected.value.smoke is not None and not rejected.value.smoke.passed
    assert rejected.value.smoke.images == len(canary.pixels)
    assert_unchanged(registry, before)
    assert [v.name for v in store.list_versions(registry)] == ["v1", "v2"] and store.champion_name(registry) == "v2"


def _export_then_fail(model_path, preset, label_names, out_dir, temperature=None, dataset=None):
    from cifarflow.registry.saved_model import export_model

    export_model(model_path, preset, label_names, out_dir)  # a whole SavedModel is written first…
    raise OSError(28, "No space left on device")  # …then the metadata write fails


@pytest.mark.parametrize("fault", ["unknown preset", "write fails after the SavedModel"])
def test_a_failed_export_leaves_the_registry_as_it_was(registry, built, monkeypatch, fault):
    record, metrics, predictions, labels, canary = built.fresh_inputs
    if fault == "unknown preset":
        record = replace(record, preset="no-such-preset")
    else:
        monkeypatch.setattr("cifarflow.registry.build.export_model", _export_then_fail)
    before = snapshot(registry)
    with pytest.raises(VersionRejected, match="the export failed") as rejected:
        stage_next_version(registry, built.fresh_model, record, metrics, predictions, labels, canary)
    assert rejected.value.smoke is None
    assert_unchanged(registry, before)


# ------------------------------------ promotion and the registry ----------------------------


def challenger_score(inputs, model_id: str, test_set: str = "a-new-test-set"):
    """The Score a nightly run would have for this model; a new test set, so the decision promotes it."""
    from cifarflow.promotion.decision import Score

    _, metrics, predictions, labels, _ = inputs
    return Score(
        model_id=model_id,
        run_name="nightly",
        preset="classic",
        dataset_version="d" * 64,
        test_set_sha256=test_set,
        predictions=np.asarray(predictions, np.int64),
        labels=np.asarray(labels, np.int64),
        metrics=metrics,
        label_names=tuple(CLASSES),
        image_size=32,
    )


def run_report(tmp_path: Path) -> SimpleNamespace:
    directory = tmp_path / "report"
    directory.mkdir()
    (directory / "report.md").write_text("# Run\n")
    return SimpleNamespace(directory=directory, report_path=directory / "report.md", run_name="nightly")


def test_a_model_rolled_back_by_hand_is_not_promoted_again(registry, built, tmp_path):
    from cifarflow.promotion.decision import decide
    from cifarflow.promotion.promote import promote_challenger, respect_rollback
    from cifarflow.registry.store import read_decisions

    v2 = store.read_version(registry, "v2")
    challenger = challenger_score(built.fresh_inputs, v2.model_id)  # v2's model comes back in a nightly run
    decision = decide(challenger, None)
    assert respect_rollback(decision, registry) == decision  # nobody rolled back from v2 yet
    kept = replace(decision, promoted=False, reason="not-better")
    store.move_alias(registry, "v1", by="hand", reason="v2 misreads night photos")
    assert respect_rollback(kept, registry) == kept  # only a promotion is overruled

    moves = store.alias_moves(registry)
    outcome = promote_challenger(
        challenger,
        v2.model_path,
        run_report(tmp_path),
        registry,
        alpha=0.05,
        key="k",
        canary=built.fresh_inputs[-1],
        log=lambda _: None,
    )
    assert not outcome.promoted
    recorded = json.loads((tmp_path / "report" / "promotion.json").read_text())["decision"]
    assert recorded["reason"] == "rolled-back" and not recorded["promoted"]
    summary = recorded["summary"]
    assert "this model is v2, which was rolled back by hand" in summary and "v2 misreads night photos" in summary
    assert "`python flows/registry_flow.py promote v2`" in summary
    assert store.champion_name(registry) == "v1" and store.alias_moves(registry) == moves
    assert [v.name for v in store.list_versions(registry)] == ["v1", "v2"]
    assert read_decisions(registry)[-1]["reason"] == "rolled-back"
    assert "the champion stays v1" in (tmp_path / "report" / "promotion.md").read_text()
    assert json.loads((tmp_path / "report" / "promotion.json").read_text())["champion_version"] == "v1"


@pytest.mark.flow  # a fresh process of the product: not the unit tier
def test_a_smoke_test_failure_turns_a_promotion_into_kept(registry, built, tmp_path):
    from cifarflow.promotion.promote import promote_challenger
    from cifarflow.registry.store import read_decisions

    record, *_, canary = built.fresh_inputs
    challenger = challenger_score(built.fresh_inputs, record.model_id)
    wrong = Canary(canary.pixels, np.roll(canary.probabilities, 1, axis=1))
    moves = store.alias_moves(registry)
    outcome = promote_challenger(
        challenger,
        built.fresh_model,
        run_report(tmp_path),
        registry,
        alpha=0.05,
        key="k",
        log=lambda _: None,
        canary=wrong,
    )
    assert not outcome.promoted and outcome.champion_id == store.read_version(registry, "v2").model_id
    recorded = json.loads((tmp_path / "report" / "promotion.json").read_text())["decision"]
    assert recorded["reason"] == "smoke-test-failed" and not recorded["promoted"]
    assert recorded["summary"].startswith("kept champion: the challenger won (promoted: the test set changed")
    assert "smoke test FAILED: top-1 agreement" in recorded["summary"]
    assert [v.name for v in store.list_versions(registry)] == ["v1", "v2"] and store.version_of_model(
        registry, record.model_id
    ) is None
    assert not (registry / "versions" / "v3").exists()
    assert not list(registry.glob(".staging/*"))  # the staged export and model were deleted
    assert store.champion_name(registry) == "v2" and store.alias_moves(registry) == moves
    assert read_decisions(registry)[-1]["reason"] == "smoke-test-failed"


# ------------------------------------ the command line --------------------------------------


def registry_cli(data_dir: Path, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, REGISTRY_CLI, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env or os.environ,
        timeout=300,
    )


def registry_main(capsys, data_dir: Path, *args: str) -> tuple[int, str, str]:
    code = registry_command(["--data-dir", str(data_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.flow  # a fresh process of the product: not the unit tier
def test_cli_lists_the_versions_and_marks_the_champion(registry):
    result = registry_cli(registry.parent, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "version",
        "champion",
        "model",
        "accuracy",
        "classes",
        "size",
        "dataset",
        "trained_by_run",
        "promoted_at",
        "model_sha256",
        "files",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    v1, v2 = store.list_versions(registry)
    assert rows["v1"][1:6] == ["classic", f"{round(v1.accuracy, 4)}", "10", "32×32", "dataset-1"]
    assert "champion" not in rows["v1"]
    assert rows["v2"][1:7] == ["champion", "classic", f"{round(v2.accuracy, 4)}", "10", "32×32", "dataset-2"]
    assert rows["v2"][-2] == v2.model_id[:12] and rows["v1"][-2] == v1.model_id[:12]
    assert rows["v1"][-1] == rows["v2"][-1] == "verified"
    assert "latest moves of the champion alias:" in result.stdout
    assert "v1 → v2  by promotion: promoted: test fixture" in result.stdout


def test_cli_promote_moves_the_champion_in_a_prefect_flow(registry, cli_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    result = registry_cli(registry.parent, "promote", "v1", "--reason", "v2 misreads night photos", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "done: champion v2 → v1 (v2 misreads night photos)"
    assert store.champion_name(registry) == "v1"
    last = store.alias_moves(registry)[-1]
    assert (last["from"], last["to"], last["by"], last["reason"]) == ("v2", "v1", "hand", "v2 misreads night photos")
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["champion-to-v1"])))
    assert [run.state.name for run in runs] == ["Completed"]


@pytest.mark.flow  # a fresh process of the product: not the unit tier
def test_cli_promote_refuses_an_unknown_version_or_an_empty_reason(registry):
    before = snapshot(registry)
    unknown = registry_cli(registry.parent, "promote", "v9", "--reason", "roll forward")
    assert unknown.returncode == 2
    assert unknown.stdout.strip().splitlines()[-1].startswith("error: no version v9 in ")
    assert "(versions: v1, v2)" in unknown.stdout
    empty = registry_cli(registry.parent, "promote", "v1", "--reason", "")
    assert empty.returncode == 2
    assert "error: --reason is empty; say why the champion moves" in empty.stdout
    assert snapshot(registry) == before


def test_cli_path_refuses_an_unknown_version_and_a_registry_without_champion(registry, capsys, tmp_path):
    code, out, _ = registry_main(capsys, registry.parent, "path", "v9")
    assert code == 2 and out.strip().splitlines()[-1].startswith("error: no version v9 in ")
    code, out, _ = registry_main(capsys, tmp_path / "empty", "path")
    assert code == 2 and out.strip().splitlines() == [
        f"error: no champion in {tmp_path / 'empty' / 'registry'} yet: run the pipeline first"
    ]
    code, out, _ = registry_main(capsys, tmp_path / "empty", "list")
    assert code == 0 and out.strip().splitlines()[-1] == "done: 0 versions, champion (none)"


# ------------------------------------ a registry damaged by hand ----------------------------


def edit_record(path: Path, **changes) -> None:
    record = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    path.write_text(json.dumps(record))


def cut(path: Path) -> str:
    """Cut the file to half its size; what a version check says of it."""
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    return f"{size // 2:,} bytes, {size:,} when registered"


def empty(path: Path) -> str:
    size = path.stat().st_size
    path.write_bytes(b"")
    return f"0 bytes, {size:,} when registered"


def flip_a_byte(path: Path) -> str:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return "changed since it was registered: another sha256, same size"


def edit_and_say(path: Path, problem: str, **changes) -> str:
    edit_record(path, **changes)
    return problem


# how a version is damaged → (the file named, inside the version folder; what the message says is wrong)
VERSION_DAMAGE = {
    "emptied export/cifarflow.json": (lambda v: empty(v / "export" / "cifarflow.json"), "export/cifarflow.json"),
    "cut saved_model.pb": (lambda v: cut(v / "export" / "saved_model.pb"), "export/saved_model.pb"),
    "missing variables/": (
        lambda v: shutil.rmtree(v / "export" / "variables") or "missing",
        "export/variables/variables.data-00000-of-00001",
    ),
    "a byte changed in model.keras": (lambda v: flip_a_byte(v / "model.keras"), "model.keras"),
    "a missing file": (lambda v: (v / "predictions.npy").unlink() or "missing", "predictions.npy"),
    "empty version.json": (lambda v: empty(v / "version.json") and "empty file", "version.json"),
    "truncated version.json": (lambda v: cut(v / "version.json") and "not valid JSON", "version.json"),
    "a value changed by hand": (
        lambda v: edit_and_say(
            v / "version.json",
            "changed since it was registered: its content does not match its `record_sha256`",
            accuracy=0.99,
        ),
        "version.json",
    ),
}


def predict_main(capsys, data_dir: Path, image: Path, *args: str) -> tuple[int, str, str]:
    code = predict_command([str(image), "--data-dir", str(data_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def monitor_main(capsys, data_dir: Path) -> tuple[int, str, str]:
    from flows.monitor_flow import main as monitor_command

    code = monitor_command(["--data-dir", str(data_dir)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(canary_pixels(3, 1)[0]).save(path)
    return path


def assert_refused_naming(result: tuple[int, str, str], named: str, problem: str) -> None:
    code, out, err = result
    last = out.strip().splitlines()[-1]
    assert code == 2 and last.startswith(f"error: {named} is damaged ("), out
    assert problem in last and "Traceback" not in err


def health(data_dir: Path) -> tuple[int, dict]:
    """The service's /health right after its start-up on `data_dir` (the app's lifespan runs: the
    model is loaded as `python serving/app.py` loads it)."""
    import asyncio

    import httpx

    from serving.app import create_app

    app = create_app(data_dir, log_predictions=False)

    async def ask() -> httpx.Response:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
                return await client.get("/health")

    answer = asyncio.run(ask())
    return answer.status_code, answer.json()


@pytest.mark.parametrize("damage", VERSION_DAMAGE)
def test_a_damaged_version_is_named_by_every_command(registry, capsys, image, damage):
    """Whatever file of a version is damaged, `list`, batch prediction, the monitor, the service's
    /health and a move of the alias name it, with what is wrong and what to do; the other version
    still serves."""
    from cifarflow.inference.predictor import locate

    harm, file = VERSION_DAMAGE[damage]
    problem = harm(registry / "versions" / "v2")  # the champion
    named = str(registry / "versions" / "v2" / file)
    fix = 'make v1 the champion: `python flows/registry_flow.py promote v1 --reason "v2 is damaged"`'

    code, out, err = registry_main(capsys, registry.parent, "list")
    assert code == 0 and "Traceback" not in err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
    assert rows["v1"][1] == "classic" and rows["v1"][-1] == "verified"  # the healthy one is shown
    assert rows["v2"][1:] == ["champion", "DAMAGED", file]
    assert f"{named} is damaged ({problem}" in out and "restore it from a backup" in out and fix in out
    assert out.strip().splitlines()[-1] == "done: 1 version, champion v2; 1 damaged (see above)"

    assert_refused_naming(predict_main(capsys, registry.parent, image, "--model", "v2"), named, problem)
    assert_refused_naming(predict_main(capsys, registry.parent, image), named, problem)  # the champion
    assert_refused_naming(monitor_main(capsys, registry.parent), named, problem)
    status, body = health(registry.parent)
    assert status == 503 and f"{named} is damaged ({problem}" in body["error"] and fix in body["error"]
    assert locate("v1", registry).name == "v1"  # the others still serve
    with pytest.raises(store.RegistryDamaged, match=f"{named} is damaged"):  # nor is it a target to roll back to
        store.move_alias(registry, "v2", by="hand", reason="roll forward")


def last_line(text: str):
    """Replace aliases.jsonl's last line with `text` (a hand edit)."""
    return lambda path: path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]) + text)


ALIAS_DAMAGE = {  # how aliases.jsonl is damaged → what the message says is wrong
    "emptied": (lambda path: path.write_text(""), "no whole line"),
    "its last line edited into something else": (
        last_line('{"to": 2}\n'),
        "its last line (2) is not a whole move to a version",
    ),
    "its last line naming a version that is not there": (
        last_line('{"at": "2026-01-01", "from": "v2", "to": "v7", "by": "hand", "reason": "typo"}\n'),
        "it names v7, which is not in the registry (versions: v1, v2)",
    ),
}


@pytest.mark.parametrize("damage", ALIAS_DAMAGE)
def test_a_damaged_champion_alias_is_named_and_a_move_by_hand_repairs_it(registry, capsys, image, damage):
    from cifarflow.inference.predictor import locate

    harm, problem = ALIAS_DAMAGE[damage]
    named = str(registry / "aliases.jsonl")
    harm(registry / "aliases.jsonl")

    code, out, err = registry_main(capsys, registry.parent, "list")
    assert code == 0 and "Traceback" not in err
    assert [line.split()[:2] for line in out.splitlines()[1:3]] == [["v1", "classic"], ["v2", "classic"]]  # no champion
    assert f"{named} is damaged ({problem}" in out
    assert "): choose the champion again with `python flows/registry_flow.py promote vN --reason …`" in out
    assert out.strip().splitlines()[-1] == "done: 2 versions, champion (none); 1 damaged (see above)"

    assert_refused_naming(predict_main(capsys, registry.parent, image), named, problem)
    assert locate("v1", registry).name == "v1"
    store.move_alias(registry, "v1", by="hand", reason="aliases.jsonl was damaged")  # what `promote` does
    assert store.read_champion_version(registry).name == "v1"
    last = store.alias_moves(registry)[-1]
    assert (last["to"], last["by"]) == ("v1", "hand") and last["from"] == ("v7" if "v7" in problem else None)


def test_an_unreadable_line_of_the_alias_log_is_named_and_the_others_stand(registry, capsys):
    path = registry / "aliases.jsonl"
    first, second = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(first + b'{"at": "2026-\n' + b"\xff\xfe not text\n" + second)  # two lines spoiled by hand
    store.move_alias(registry, "v1", by="hand", reason="v2 misreads night photos")
    code, out, err = registry_main(capsys, registry.parent, "list")
    assert code == 0 and "Traceback" not in err
    assert f"{path} is damaged (lines 2, 3 are not whole records, skipped): every other line stands" in out
    assert "v2 → v1  by hand: v2 misreads night photos" in out
    assert demoted_by_hand(registry, store.read_version(registry, "v2").model_id)["to"] == "v1"
    assert out.strip().splitlines()[-1] == "done: 2 versions, champion v1; 1 damaged (see above)"


@pytest.mark.flow  # a fresh process of the product: not the unit tier
def test_damage_is_refused_from_the_command_line_without_a_traceback(registry, image):
    """The same refusals as above, through the real commands in their own processes (the issue's
    example: an emptied export/cifarflow.json, once a bare JSONDecodeError naming no file)."""
    predict_cli = str(REPO_ROOT / "flows" / "predict_flow.py")
    problem = empty(registry / "versions" / "v2" / "export" / "cifarflow.json")
    named = f"{registry / 'versions' / 'v2' / 'export' / 'cifarflow.json'} is damaged ({problem})"
    listed = registry_cli(registry.parent, "list")
    assert listed.returncode == 0 and named in listed.stdout and "Traceback" not in listed.stderr
    assert listed.stdout.splitlines()[2].split()[1:] == ["champion", "DAMAGED", "export/cifarflow.json"]
    for args in ([], ["--model", "v2"]):
        refused = subprocess.run(
            [sys.executable, predict_cli, str(image), "--data-dir", str(registry.parent), *args],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=300,
        )
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stdout.strip().splitlines()[-1].startswith(f"error: {named}")
        assert "Traceback" not in refused.stderr


KILLED_REGISTRATION = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    import numpy as np

    registry, point = Path(sys.argv[1]), sys.argv[2]


    def pause(*args, **kwargs):  # the kill point: say so, then wait for SIGKILL
        print("paused", flush=True)
        time.sleep(600)


    from cifarflow.files import file_digest
    from cifarflow.registry import build, store

    if point == "moving the alias":  # half the move's line written (what a power cut can leave)
        write = os.write
        os.write = lambda fd, data: write(fd, data[: len(data) // 2]) and pause()
        store.move_alias(registry, "v1", by="hand", reason="v2 misreads night photos")
    model = registry.parent / "model.keras"
    model.write_bytes(b"a network")
    record = store.VersionRecord(file_digest(model), "classic", 0.5, "run-3", "dataset-3", "t" * 64)
    if point == "exporting":
        def export_half(model_path, preset, label_names, out_dir, temperature=None, dataset=None):
            Path(out_dir).mkdir()
            (Path(out_dir) / "saved_model.pb").write_bytes(b"half a graph")
            pause()

        build.export_model = export_half
        build.stage_next_version(registry, model, record, {}, np.zeros(3), np.zeros(3), canary=None)
    if point == "committing":  # sealed, not yet renamed into versions/
        replace = os.replace
        os.replace = lambda src, dst: pause() if Path(dst).parent.name == "versions" else replace(src, dst)
        staging = store.new_staging(registry, "v3")
        (staging / "export").mkdir()
        (staging / "model.keras").write_bytes(model.read_bytes())
        for name in ("predictions.npy", "labels.npy"):
            np.save(staging / name, np.zeros(3, np.int16))
        (staging / "metrics.json").write_text("{}")
        (staging / "version.json").write_text(json.dumps(record.to_json()))
        store.commit_version(registry, staging, "v3")
    """
)
KILL_POINTS = ("exporting", "committing", "moving the alias")


@pytest.mark.flow  # real processes of the product: not the unit tier
@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_registry_write_killed_half_way_is_undone_by_the_next_command(registry, capsys, point):
    """SIGKILL while a version is built, sealed or made the champion by hand: the registry reads whole
    meanwhile, and the next command (here `registry_flow.py list`) undoes the build or the half-written move
    and says so; a build still running is left alone."""
    before = snapshot(registry)
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_REGISTRATION, str(registry), point],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "paused"
        if point == "exporting":  # while the build runs, another command leaves it alone
            code, out, _ = registry_main(capsys, registry.parent, "list")
            assert "undone" not in out and [p.name for p in (registry / ".staging").iterdir()] == ["v3"]
        assert [v.name for v in store.list_versions(registry)] == ["v1", "v2"]  # whole while it is killed
        assert store.champion_name(registry) == "v2"
    finally:
        child.kill()  # SIGKILL
        child.wait()
    listed = registry_cli(registry.parent, "list")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stdout + listed.stderr
    said = [line for line in listed.stdout.splitlines() if line.startswith("registry: ")]
    if point == "moving the alias":
        assert said == [
            "registry: undone: a move of the champion that a killed command left half-written in "
            f"{registry / 'aliases.jsonl'}"
        ]
    else:
        assert len(said) == 1 and said[0].startswith(
            f"registry: undone: the build of version v3 that a killed command left in {registry / '.staging' / 'v3'} "
        )
        assert said[0].endswith(
            "was removed (it was never registered; the pipeline builds it again if it still promotes the model)"
        )
    assert snapshot(registry) == before  # nothing of v3 or of the move is left, not even .staging/
    assert listed.stdout.strip().splitlines()[-1] == "done: 2 versions, champion v2"
    again = registry_cli(registry.parent, "list")
    assert not [line for line in again.stdout.splitlines() if line.startswith("registry: ")]  # nothing left to do


@pytest.mark.flow  # a real service process: not the unit tier
def test_the_service_started_on_a_damaged_champion_names_the_file_and_follows_the_fix(registry, tmp_path):
    """/health's 503 names the damaged file and the fix; once the champion is moved (as
    `registry.py promote v1` does), the service serves v1 without a restart."""
    import httpx

    from tests.serving_helpers import serving_process, wait_until

    problem = cut(registry / "versions" / "v2" / "export" / "saved_model.pb")
    named = f"{registry / 'versions' / 'v2' / 'export' / 'saved_model.pb'} is damaged ({problem})"
    with serving_process(registry.parent, tmp_path / "serving.log") as server:
        answer = httpx.get(f"{server.url}/health", timeout=10)
        assert answer.status_code == 503 and named in answer.json()["error"]
        assert (
            'make v1 the champion: `python flows/registry_flow.py promote v1 --reason "v2 is damaged"`'
            in (answer.json()["error"])
        )
        assert named in server.log_tail()
        store.move_alias(registry, "v1", by="hand", reason="v2 is damaged")
        healthy = wait_until(
            lambda: (r := httpx.get(f"{server.url}/health", timeout=10)).status_code == 200 and r.json(), 30
        )
        assert healthy == {"status": "ok", "model_version": "v1"}


def test_the_promote_stage_stops_before_writing_anything_when_the_champion_is_damaged(registry, built, tmp_path):
    from cifarflow.promotion.outcome import baseline_id
    from cifarflow.promotion.promote import promote_challenger

    (registry / "versions" / "v2" / "version.json").write_text("")
    record, *_, canary = built.fresh_inputs
    before = snapshot(registry)
    with pytest.raises(store.RegistryDamaged, match=r"versions/v2/version.json is damaged \(empty file\)"):
        baseline_id(registry, record.model_id)  # the promote stage's cache key: the run stops here
    with pytest.raises(store.RegistryDamaged, match=r"versions/v2/version.json is damaged \(empty file\)"):
        promote_challenger(
            challenger_score(built.fresh_inputs, record.model_id),
            built.fresh_model,
            run_report(tmp_path),
            registry,
            alpha=0.05,
            key="k",
            canary=canary,
            log=lambda _: None,
        )
    assert snapshot(registry) == before
    assert not (tmp_path / "report" / "promotion.json").exists()


def test_the_pipeline_stops_at_promote_naming_a_damaged_champion(prefect_server, tiny_config):
    from tests.flow_helpers import run_flow

    state, states = run_flow(tiny_config)
    assert state.is_completed() and states["promote"] == "Completed"
    registry = tiny_config.layout.registry
    record = registry / "versions" / "v1" / "version.json"
    record.write_text(record.read_text()[:30])  # the champion's record cut short
    before = snapshot(registry)

    state, states = run_flow(tiny_config)
    assert state.is_failed()
    with pytest.raises(store.RegistryDamaged, match=rf"{record} is damaged \(not valid JSON") as damaged:
        state.result()
    assert "restore it from a backup" in str(damaged.value)
    assert states == {stage: "Cached" for stage in STAGES if stage != "promote"}
    assert snapshot(registry) == before  # nothing registered, no alias moved, no record written


def test_the_service_keeps_serving_through_a_damaged_alias_and_follows_the_repair(registry):
    from cifarflow.inference.live import LiveModel

    logged = []
    live = LiveModel(registry, log=logged.append)
    assert live.refresh() and live.version == "v2"
    last_line('{"to": "v\n')(registry / "aliases.jsonl")  # its last line edited by hand
    assert not live.refresh() and not live.refresh()
    assert live.version == "v2" and f"{registry / 'aliases.jsonl'} is damaged (its last line" in live.problem
    assert sum("cannot be read" in line for line in logged) == 1  # said once, not every second
    store.move_alias(registry, "v1", by="hand", reason="aliases.jsonl was edited")
    assert live.refresh() and live.version == "v1" and live.problem is None


def test_damage_to_the_version_being_served_is_logged_once_naming_the_file_and_the_fix(registry):
    """The champion's files damaged while the service holds it in memory: it keeps serving, and its
    periodic check (every `verify_s`) logs the damaged file and what to do, once; the fix followed, the
    service serves v1 and says nothing more."""
    from cifarflow.inference.live import LiveModel

    logged = []
    live = LiveModel(registry, log=logged.append, verify_s=0)
    assert live.refresh() and live.version == "v2"
    assert not live.refresh() and logged == ["serving model v2"]  # whole: nothing said
    problem = cut(registry / "versions" / "v2" / "export" / "saved_model.pb")
    assert not live.refresh() and not live.refresh() and live.version == "v2"
    named = f"{registry / 'versions' / 'v2' / 'export' / 'saved_model.pb'} is damaged ({problem})"
    fix = 'make v1 the champion: `python flows/registry_flow.py promote v1 --reason "v2 is damaged"`'
    assert len(logged) == 2 and named in logged[1] and fix in logged[1] and live.damage in logged[1]
    assert logged[1].endswith("; still serving v2 from memory, but a restart would not load it")
    store.move_alias(registry, "v1", by="hand", reason="v2 is damaged")
    assert live.refresh() and live.version == "v1" and live.damage is None
    assert not live.refresh() and logged[2:] == ["serving model v1 (was v2)"]


def test_health_names_damage_to_the_version_being_served(registry, monkeypatch):
    """The service keeps serving v2 from memory after its files are damaged on disk, and /health (still
    200: requests are answered) names the file and the fix, so a probe sees it before a restart fails."""
    import asyncio

    import httpx

    import cifarflow.inference.live
    from serving.app import create_app

    monkeypatch.setattr(cifarflow.inference.live, "VERIFY_S", 0.0)
    app = create_app(registry.parent, log_predictions=False, poll_s=0.05)
    named = f"{registry / 'versions' / 'v2' / 'export' / 'saved_model.pb'} is damaged"

    async def ask() -> tuple[dict, dict]:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
                whole = (await client.get("/health")).json()
                cut(registry / "versions" / "v2" / "export" / "saved_model.pb")
                for _ in range(100):
                    answer = await client.get("/health")
                    if answer.status_code == 200 and "damage" in answer.json():
                        break
                    await asyncio.sleep(0.05)
                return whole, answer.json()

    whole, damaged = asyncio.run(ask())
    assert whole == {"status": "ok", "model_version": "v2"}
    assert damaged["status"] == "ok" and damaged["model_version"] == "v2"
    assert named in damaged["damage"] and "flows/registry_flow.py promote v1" in damaged["damage"]


# ------------------------------------ the typed version record ------------------------------


def test_version_json_is_read_as_a_typed_record_and_written_back_the_same(registry):
    """The record's attributes say what they hold (`preset`, `dataset_version`); the JSON keeps the names
    the landed registries and the service's /model answer use, and reads back to the same JSON."""
    written = {
        "id": "a" * 64,
        "model": "classic",
        "accuracy": 0.5,
        "run_name": "nightly",
        "dataset_sha256": "dataset-version-id",
        "test_set_sha256": "t" * 64,
        "version": "v1",
        "label_names": list(CLASSES),
        "batch_ids": ["b1"],
        "normalization": "unit",
        "promoted_at": "2026-01-01T00:00:00+00:00",
        "test_images": 100,
        "decision": "promoted: first champion",
        "source_model": "models/k/model.keras",
        "smoke": {"passed": True},
    }
    record = store.VersionRecord.from_json(written | {"unknown": 1})
    assert (record.preset, record.dataset_version, record.model_id) == ("classic", "dataset-version-id", "a" * 64)
    assert record.batch_ids == ("b1",) and record.label_names == tuple(CLASSES) and record.replaced is None
    assert record.to_json() == written

    v1 = registry / "versions" / "v1" / "version.json"
    sealed = json.loads(v1.read_text())
    assert store.read_version(registry, "v1").to_json() == {k: v for k, v in sealed.items() if k != "record_sha256"}
    v1.write_text(json.dumps({k: v for k, v in sealed.items() if k != "record_sha256"}))
    with pytest.raises(store.RegistryDamaged, match=r"version.json is damaged \(not a sealed version record"):
        store.read_version(registry, "v1")


@pytest.mark.flow  # the smoke test is a fresh process of the product: not the unit tier
def test_an_export_takes_the_models_image_size_and_carries_its_data_set(tmp_path):
    import keras

    from cifarflow.data.transform import Normalization
    from cifarflow.models.presets import get_preset
    from cifarflow.registry.saved_model import METADATA, canary_indices, export_model, load_export, smoke_test

    keras.utils.set_random_seed(0)
    classic = get_preset("classic")
    model = classic.build(Normalization("unit", (0.0,) * 3, (1.0,) * 3), num_classes=3, image_size=64)
    model.save(tmp_path / "model.keras")
    dataset = {"dataset_sha256": "d" * 64, "source": {"kind": "folder", "uri": "/photos/fruit", "sha256": "s"}}
    dataset |= {"split": {"method": "held-out", "test_fraction": 1 / 6, "split_seed": 0}}
    export_model(
        tmp_path / "model.keras", "classic", ["quince", "apricot", "medlar"], tmp_path / "export", None, dataset
    )
    metadata = json.loads((tmp_path / "export" / METADATA).read_text())
    assert metadata["input"]["shape"] == [None, 64, 64, 3] and metadata["output"]["shape"] == [None, 3]
    assert metadata["image_size"] == 64 and metadata["dataset"] == dataset
    exported = load_export(tmp_path / "export")
    assert exported.image_size == 64 and exported.label_names == ["quince", "apricot", "medlar"]
    pixels = np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    expected = classic.predict(classic.load(tmp_path / "model.keras"), pixels)
    np.testing.assert_allclose(exported.probabilities(pixels), expected, atol=1e-5)
    assert smoke_test(tmp_path / "export", pixels, expected).passed

    # an export written before the image size was kept: its input shape says it
    (tmp_path / "export" / METADATA).write_text(json.dumps(metadata | {"image_size": None}))
    assert load_export(tmp_path / "export").image_size == 64
    # the canary spreads about 1,000 images over the classes, whatever their number
    three, hundred = np.repeat(np.arange(3), 500), np.repeat(np.arange(100), 50)
    assert len(canary_indices(three)) == 1002 and len(canary_indices(hundred)) == 1000
    assert set(np.bincount(three[canary_indices(three)])) == {334}


@pytest.mark.parametrize("count", [None, "garbage", 99, -5, True, 1.5, 10**400])
def test_a_count_of_announced_moves_that_is_not_one_announces_the_callers_move_once(built, tmp_path, count):
    """registry/announced.json missing, unreadable or not a count of these moves: the caller's move is announced, not
    every move (-5) nor none (99), and the count is written right (without a server the events are dropped)."""
    from cifarflow.files import write_json
    from cifarflow.orchestration.events import ANNOUNCED, announce_moves

    registry = shutil.copytree(built.data_dir / "registry", tmp_path / "registry")
    moves = store.alias_moves(registry)
    if count == "garbage":
        (registry / ANNOUNCED).write_text("{not json")
    elif count is not None:
        (registry / ANNOUNCED).write_text(f'{{"moves": {json.dumps(count) if count != 10**400 else "1e400"}}}')
    assert announce_moves(str(tmp_path), registry, moved=True) == moves[-1:]
    assert json.loads((registry / ANNOUNCED).read_text()) == {"moves": len(moves)}
    assert announce_moves(str(tmp_path), registry, moved=False) == []  # nothing new: nothing announced again
    write_json(registry / ANNOUNCED, {"moves": len(moves) - 2})  # two moves whose events were lost
    assert announce_moves(str(tmp_path), registry, moved=False) == moves[-2:]
