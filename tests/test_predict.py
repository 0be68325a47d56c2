"""Batch prediction (flows/predict_flow.py, tasks/predict.py, cifarflow/inference): image files of
every format and size, folders, glob patterns and broken files → one Parquet row each and a contact
sheet, scored by the champion (or `--model vN`) with exactly the arithmetic of the exported model;
exit 1 when nothing could be scored, 2 for unusable arguments; batching changes nothing; which files
PATH arguments select.

The registry (v1, v2 = champion) is built once per module from tiny random networks
(tests/registry_helpers.py); the flow runs in-process on the session's Prefect server."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cifarflow.inference.batch import SCHEMA, predict_files
from cifarflow.inference.sources import UnusableArguments, select_files
from cifarflow.intake.images import convert_image
from flows.predict_flow import main as predict_main
from tests.registry_helpers import copy_data_dir, reseal
from tests.synthetic import CLASSES


def noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, image: Image.Image | None = None, data: bytes | None = None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image is not None:
        image.save(path, **save)
    else:
        path.write_bytes(data)
    return path


def write_inbox(root: Path) -> tuple[list[Path], list[Path]]:
    """(good, bad) image files under root/photos (nested) and root/extra (for a glob); plus files the
    folder search must skip: hidden ones and a .txt."""
    photos, extra = root / "photos", root / "extra"
    rgba = np.dstack([noise(64, 64, 4), np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)])
    good = [
        write(photos / "rgb.png", Image.fromarray(noise(32, 32, 1))),
        write(photos / "a" / "gray.png", Image.fromarray(noise(200, 120, 2)).convert("L")),
        write(
            photos / "a" / "palette.png",
            Image.fromarray(noise(17, 400, 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        ),
        write(photos / "a" / "b" / "alpha.PNG", Image.fromarray(rgba, "RGBA")),
        write(photos / "a" / "b" / "photo.jpg", Image.fromarray(noise(200, 120, 5)), quality=90),
        write(photos / "a" / "pic.webp", Image.fromarray(noise(50, 50, 6)), format="WEBP"),
        write(photos / "bitmap.bmp", Image.fromarray(noise(32, 32, 7))),
        write(extra / "one.jpg", Image.fromarray(noise(120, 200, 8))),
        write(extra / "two.jpg", Image.fromarray(noise(33, 33, 9))),
    ]
    bad = [
        write(photos / "empty.png", data=b""),
        write(photos / "a" / "notes.png", data=b"these are my notes, not a picture\n"),
        write(photos / "a" / "b" / "cut.png", data=png_bytes(Image.fromarray(noise(64, 64, 10)))[:2000]),
    ]
    write(photos / "readme.txt", data=b"not an image file extension: skipped in a folder")
    write(photos / ".hidden.png", Image.fromarray(noise(32, 32, 11)))
    write(photos / ".cache" / "thumb.png", Image.fromarray(noise(32, 32, 12)))
    write(extra / "three.png", Image.fromarray(noise(32, 32, 13)))  # not matched by extra/*.jpg
    return good, bad


@pytest.fixture(scope="module")
def data_dir(two_versions, tmp_path_factory) -> Path:
    """A data dir whose registry holds v1 and v2 (the champion)."""
    return copy_data_dir(two_versions, tmp_path_factory.mktemp("predict-module") / "data")


@pytest.fixture(scope="module")
def inbox(tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("inbox")
    good, bad = write_inbox(root)
    return root, good, bad


def predict(capsys, *args) -> tuple[int, str, str]:
    code = predict_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def out_path(stdout: str) -> Path:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("done: predictions at "), stdout
    return Path(last.removeprefix("done: predictions at "))


def expected_probabilities(files: list[Path], registry: Path, version: str) -> dict[str, dict[str, float]]:
    """{path: {class: probability}}: what the exported model gives for the pixels the intake decodes."""
    from cifarflow.inference.predictor import load_predictor

    predictor = load_predictor(version, registry)
    probabilities = predictor.probabilities(np.stack([convert_image(path, 32).pixels for path in files]))
    return {
        str(path.absolute()): dict(zip(predictor.label_names, map(float, p))) for path, p in zip(files, probabilities)
    }


def assert_rows_match(rows: list[dict], expected: dict[str, dict[str, float]]) -> None:
    """Each row's top 3 are the three most probable classes by `expected`, with its probabilities.
    (The tiny random networks give every class about 0.1, a few 1e-5 apart: compared by value, so
    that a near-tie ordered differently by float round-off cannot fail the test.)"""
    for row in rows:
        probabilities = expected[row["path"]]
        largest = sorted(probabilities.values(), reverse=True)[:3]
        np.testing.assert_allclose([t["probability"] for t in row["top"]], largest, atol=1e-6, rtol=0)
        for entry in row["top"]:
            assert entry["probability"] == pytest.approx(probabilities[entry["label"]], abs=1e-6, rel=0), row["path"]
        assert (row["label"], row["probability"]) == (row["top"][0]["label"], row["top"][0]["probability"])


# ------------------------------------ the flow ----------------------------------------------


def test_every_file_gets_a_row_scored_by_the_champion(prefect_server, data_dir, inbox, capsys):
    root, good, bad = inbox
    kinds = set()
    for file in good:
        with Image.open(file) as image:
            kinds |= {image.format, image.mode}
    assert kinds >= {"PNG", "JPEG", "WEBP", "BMP", "RGB", "L", "P", "RGBA"}
    code, out, err = predict(capsys, root / "photos", root / "extra" / "*.jpg", "--data-dir", data_dir)
    assert code == 0, err
    path = out_path(out)
    assert path.parent.parent == data_dir.resolve() / "predictions" and "-champion-" in path.parent.name
    assert f"{len(good)} of {len(good) + len(bad)} files scored by v2; {len(bad)} could not be" in out
    printed = out.splitlines()  # each file not scored, with why, in the terminal (not only in the Parquet file)
    assert f"{len(bad)} files not scored:" in printed
    for file in bad:
        assert any(line.startswith(f"  {file.absolute()}: ") and len(line) > len(f"  {file}: ") for line in printed)

    assert pq.read_schema(path) == SCHEMA
    rows = pq.read_table(path).to_pylist()
    assert sorted(row["path"] for row in rows) == sorted(str(p.absolute()) for p in good + bad)  # one row each
    by_path = {row["path"]: row for row in rows}
    for file in bad:
        row = by_path[str(file.absolute())]
        assert row["error"] and row["label"] is None and row["probability"] is None and row["top"] is None
        assert row["model_version"] == "v2"
    assert "empty file" in by_path[str(bad[0].absolute())]["error"]
    assert "not an image" in by_path[str(bad[1].absolute())]["error"]
    assert "does not decode" in by_path[str(bad[2].absolute())]["error"]

    scored = [by_path[str(file.absolute())] for file in good]
    for row in scored:
        assert row["error"] is None and row["model_version"] == "v2" and row["label"] in CLASSES
        assert len(row["top"]) == 3 and all(t["label"] in CLASSES for t in row["top"])
        assert len({t["label"] for t in row["top"]}) == 3
        probabilities = [t["probability"] for t in row["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and row["probability"] == probabilities[0]
    assert_rows_match(scored, expected_probabilities(good, data_dir / "registry", "v2"))

    sheet = path.with_suffix(".png")
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 0


def test_model_option_scores_with_that_version(prefect_server, data_dir, inbox, tmp_path, capsys):
    root, good, _ = inbox
    target = tmp_path / "scored" / "v1.parquet"
    code, out, err = predict(capsys, *good[:4], "--model", "v1", "--out", target, "--data-dir", data_dir)
    assert code == 0, err
    assert out_path(out) == target and target.with_suffix(".png").is_file()
    rows = pq.read_table(target).to_pylist()
    assert [row["path"] for row in rows] == [str(p.absolute()) for p in good[:4]]  # the order given
    assert {row["model_version"] for row in rows} == {"v1"}
    assert_rows_match(rows, expected_probabilities(good[:4], data_dir / "registry", "v1"))
    by_champion = expected_probabilities(good[:4], data_dir / "registry", "v2")
    assert max(abs(row["probability"] - by_champion[row["path"]][row["label"]]) for row in rows) > 1e-5  # not v2's


def test_exit_1_when_no_file_could_be_scored(prefect_server, data_dir, inbox, tmp_path, capsys):
    _, _, bad = inbox
    target = tmp_path / "bad.parquet"
    code, out, err = predict(capsys, *bad, "--out", target, "--data-dir", data_dir)
    assert code == 1
    assert out.strip().splitlines()[-1] == f"error: none of the {len(bad)} files could be scored; {target} says why"
    assert target.is_file()
    rows = pq.read_table(target).to_pylist()
    assert [row["path"] for row in rows] == [str(p.absolute()) for p in bad]
    assert all(row["error"] and row["label"] is None for row in rows)
    assert not target.with_suffix(".png").exists()  # no image to show


def test_an_export_that_does_not_load_ends_the_run_naming_it(prefect_server, two_versions, inbox, tmp_path, capsys):
    """Damage the check before the run cannot see (an export broken when it was registered, its files
    sealed as they are) ends the run with `error: <its export> is damaged (…)`, not TensorFlow's bare error."""
    data = copy_data_dir(two_versions, tmp_path / "data")
    v1 = data / "registry" / "versions" / "v1"
    graph = v1 / "export" / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    reseal(v1)
    _, good, _ = inbox
    code, out, err = predict(capsys, good[0], "--model", "v1", "--data-dir", data, "--no-log")
    assert code == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: {v1 / 'export'} is damaged (the SavedModel does not load: "), last
    assert "restore it from a backup" in last


@pytest.mark.flow  # the command line, in-process
def test_unusable_arguments_exit_2_before_any_work(data_dir, inbox, tmp_path, capsys):
    root, good, _ = inbox
    (tmp_path / "no-images").mkdir()
    (tmp_path / "no-images" / "readme.txt").write_text("nothing to score")
    before = sorted(data_dir.rglob("*.parquet"))
    cases = [
        ([tmp_path / "absent.png"], "absent.png: no such file or folder"),
        ([str(tmp_path / "*.jpeg")], "*.jpeg: the pattern matches nothing"),
        ([tmp_path / "no-images"], "no image files in"),
        ([good[0], "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        ([good[0], "--out", tmp_path / "x.csv"], "--out must name a .parquet file"),
        ([good[0], "--model", "v7"], "no version v7 in"),
        ([good[0], "--model", tmp_path / "nowhere.keras"], "not `champion`, a version"),
        ([good[0], "--model", good[0]], "not `champion`, a version"),  # exists, but is no model
        ([good[0], "--out", tmp_path / ("L" * 300) / "x.parquet"], "File name too long"),
        ([""], "an empty PATH argument"),
    ]
    for arguments, message in cases:
        code, out, err = predict(capsys, *arguments, "--data-dir", data_dir)
        last = out.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error: ") and message in last, (arguments, out)
        assert "done:" not in out
    assert "(versions: v1, v2)" in predict(capsys, good[0], "--model", "v7", "--data-dir", data_dir)[1]

    empty = tmp_path / "empty-data"
    code, out, _ = predict(capsys, good[0], "--data-dir", empty)
    assert code == 2 and "no champion in" in out and "run the pipeline first" in out
    assert not empty.exists()
    assert sorted(data_dir.rglob("*.parquet")) == before  # nothing was written


# ------------------------------------ the library -------------------------------------------


def test_batches_give_the_same_rows_and_report_progress(data_dir, inbox, tmp_path):
    from cifarflow.inference.predictor import load_predictor

    root, good, bad = inbox
    files = [p.absolute() for p in [*good[:3], bad[1], *good[3:6]]]  # 7 files, the 4th one bad
    predictor = load_predictor("champion", data_dir / "registry")
    assert predictor.version == "v2"
    calls = []
    small = predict_files(
        files, predictor, tmp_path / "small.parquet", batch_size=2, on_progress=lambda *a: calls.append(a)
    )
    large = predict_files(files, predictor, tmp_path / "large.parquet", tmp_path / "large.png", batch_size=256)

    assert calls == [(2, 7, 0), (4, 7, 1), (6, 7, 1), (7, 7, 1)]
    assert pq.ParquetFile(small.out).metadata.num_row_groups == 4  # each batch written as it was scored
    assert (small.files, small.scored, small.failed) == (large.files, large.scored, large.failed) == (7, 6, 1)
    assert small.errors == [{"path": str(files[3]), "error": large.errors[0]["error"]}]
    assert small.label_counts == large.label_counts and sum(small.label_counts.values()) == 6
    assert small.sheet is None and large.sheet == tmp_path / "large.png" and large.sheet.is_file()
    rows_small, rows_large = pq.read_table(small.out).to_pylist(), pq.read_table(large.out).to_pylist()
    assert [row["path"] for row in rows_small] == [row["path"] for row in rows_large] == [str(f) for f in files]
    for a, b in zip(rows_small, rows_large):
        assert (a["error"], a["model_version"]) == (b["error"], b["model_version"]) and (a["top"] is None) == (
            b["top"] is None
        )
    expected = expected_probabilities([f for f in files if f != files[3]], data_dir / "registry", "v2")
    assert_rows_match([row for row in rows_small if row["error"] is None], expected)
    assert_rows_match([row for row in rows_large if row["error"] is None], expected)
    with pytest.raises(ValueError, match="batch size must be at least 1"):
        predict_files(files, predictor, tmp_path / "never.parquet", batch_size=0)
    assert not (tmp_path / "never.parquet").exists()


def test_select_files_selects_each_file_once_in_the_order_given(inbox, monkeypatch):
    root, good, bad = inbox
    photos = root / "photos"
    in_folder = sorted(p.absolute() for p in good + bad if photos in p.parents)
    assert (
        select_files([str(photos)]).files == in_folder
    )  # recursive, path order; .hidden.png, .cache/, readme.txt skipped
    assert len(in_folder) == 10

    readme, rgb = photos / "readme.txt", photos / "rgb.png"
    assert select_files([str(readme)]).files == [readme.absolute()]  # named directly: kept, whatever its extension
    monkeypatch.chdir(photos)
    selected = select_files(["rgb.png", str(root / "extra" / "*.jpg"), str(photos), str(rgb), "./rgb.png"]).files
    assert selected[0] == rgb.absolute()
    assert selected[1:3] == [(root / "extra" / "one.jpg").absolute(), (root / "extra" / "two.jpg").absolute()]
    assert selected[3:] == [p for p in in_folder if p != rgb.absolute()]
    assert len(selected) == len(set(selected)) == 12


def test_select_files_refuses_what_names_nothing(tmp_path):
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "a.txt").write_text("x")
    with pytest.raises(UnusableArguments, match="no such file or folder"):
        select_files([str(tmp_path / "missing")])
    with pytest.raises(UnusableArguments, match="the pattern matches nothing"):
        select_files([str(tmp_path / "*.png")])
    with pytest.raises(UnusableArguments, match=r"no image files in .*only-text"):
        select_files([str(tmp_path / "only-text")])


def test_a_pattern_contributes_only_image_files(inbox):
    root, _, _ = inbox
    assert select_files([str(root / "extra" / "*")]).files == [
        (root / "extra" / name).absolute() for name in ("one.jpg", "three.png", "two.jpg")
    ]
    assert (root / "photos" / "readme.txt").absolute() not in select_files([str(root / "photos" / "*")]).files


def test_a_scheduled_run_on_a_folder_without_images_completes_with_nothing_to_score(prefect_server, data_dir, tmp_path):
    """The deployment scores a folder on a schedule: an empty folder is a quiet night, not a failure;
    a folder that does not exist still fails the run."""
    from flows.predict_flow import predict as predict_flow

    empty = tmp_path / "to-score"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    state = predict_flow([str(empty)], data_dir, return_state=True)
    assert state.is_completed() and state.result() is None
    missing = predict_flow([str(tmp_path / "nowhere")], data_dir, return_state=True)
    assert missing.is_failed() and "no such file or folder" in str(missing.message) + repr(missing.data)


@pytest.mark.parametrize(
    "train_json", [None, "{not json", '{"settings": {"model": ["seed"]}}', '{"settings": {"model": "nope"}}']
)
def test_a_keras_file_without_a_known_preset_beside_it_is_refused_with_the_reason(tmp_path, train_json):
    from cifarflow.inference.predictor import ModelNotFound, load_predictor

    model = tmp_path / "model.keras"
    model.write_bytes(b"not loaded: the preset is checked first")
    if train_json is not None:
        (tmp_path / "train.json").write_text(train_json)
    with pytest.raises(ModelNotFound, match="no train.json beside it says which preset made it"):
        load_predictor(str(model), tmp_path / "registry")


@pytest.mark.flow  # the version's export is smoke-tested in a fresh process
def test_a_champion_of_other_classes_and_size_scores_batches_and_a_bare_model_file_takes_its_data_dirs_classes(
    inbox, tmp_path
):
    """3 classes at 16×16: each file converted to 16×16 and scored by the export, rows and sheet name its classes;
    the same network as a bare `.keras` file takes its classes from train.json, else from its data dir's manifest."""
    import json
    import shutil

    from cifarflow.inference.predictor import ModelNotFound, load_predictor
    from tests.registry_helpers import add_version

    tools = ["kettle", "lantern", "anvil"]
    add_version(tmp_path / "registry", 7, tmp_path / "scratch", label_names=tools, image_size=16)
    predictor = load_predictor("champion", tmp_path / "registry")
    assert (predictor.label_names, predictor.image_size) == (tools, 16)
    _, good, _ = inbox
    result = predict_files(good, predictor, tmp_path / "out.parquet", tmp_path / "sheet.png")
    rows = pq.read_table(result.out).to_pylist()
    want = predictor.probabilities(np.stack([convert_image(path, 16).pixels for path in good]))
    assert [row["label"] for row in rows] == [tools[i] for i in want.argmax(axis=1)]
    assert set(result.label_counts) <= set(tools) and result.scored == len(good)
    with Image.open(result.sheet) as sheet:
        assert sheet.width == min(10, len(good)) * (96 + 8)  # 16 px images drawn at the sheet's 96 px

    model = tmp_path / "data" / "models" / "k" / "model.keras"
    model.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "scratch" / "model-7" / "model.keras", model)
    (model.parent / "train.json").write_text(json.dumps({"settings": {"model": "classic"}}))
    with pytest.raises(ModelNotFound, match="nor its data dir names the model's 3 classes"):
        load_predictor(str(model), tmp_path / "registry")
    (tmp_path / "data" / "parquet").mkdir()
    (tmp_path / "data" / "parquet" / "manifest.json").write_text(json.dumps({"label_names": tools}))
    bare = load_predictor(str(model), tmp_path / "registry")
    assert (bare.label_names, bare.image_size) == (tools, 16)
    (model.parent / "train.json").write_text(
        json.dumps({"settings": {"model": "classic"}, "label_names": "a b c".split()})
    )
    assert load_predictor(str(model), tmp_path / "registry").label_names == ["a", "b", "c"]
