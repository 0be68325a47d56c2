"""A labeled image folder (or a .zip/.tar.gz of one) as a data source: its shape, its identity, and its ingest."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cifarflow.data.folder import describe_folder, folder_identity, ingest_folder, is_folder_source
from cifarflow.data.shards import read_shards, shard_files
from cifarflow.errors import PipelineInputError
from cifarflow.files import read_json, write_json
from cifarflow.intake.images import convert_image
from tests.synthetic import write_archive


def picture(seed: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    """Noise: every seed a different content."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def make_tree(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """`counts` maps a class folder ("cat" or "train/cat") to how many PNGs of distinct noise it gets."""
    for folder, count in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for number in range(count):
            seed += 1
            picture(seed).save(root / folder / f"{number:02d}.png")
    return root


def ingest(source: Path, staging: Path, size: int = 8, fraction: float = 0.25, split_seed: int = 0) -> dict:
    return ingest_folder(source, staging, size, fraction, split_seed, 1000, lambda _: None, None)


def rows(staging: Path, found: dict, split: str) -> list[tuple[int, str, str]]:
    """(label, filename, sha256 of pixels) of a split's rows, in row order."""
    paths, counts = shard_files(staging, found["shards"][split])
    images, labels = read_shards(paths, counts)
    names = [name for path in paths for name in pq.read_table(path, columns=["filename"]).column(0).to_pylist()]
    return [
        (int(label), name, hashlib.sha256(image.tobytes()).hexdigest())
        for label, name, image in zip(labels, names, images)
    ]


def test_the_given_layout_keeps_its_split_with_rows_by_content_and_labels_by_sorted_name(tmp_path):
    source = make_tree(tmp_path / "src", {"train/dog": 2, "train/cat": 3, "test/dog": 1, "test/cat": 1})
    (source / "train" / "cat" / "sub").mkdir()
    picture(99).save(source / "train" / "cat" / "sub" / "00.png")
    assert is_folder_source(source) and describe_folder(source).layout == "given"
    found = ingest(source, tmp_path / "out")
    assert found["label_names"] == ["cat", "dog"] and found["split"] == {"method": "given"}
    train = rows(tmp_path / "out", found, "train")
    files = {name: (source / name).read_bytes() for name in (name for _, name, _ in train)}
    assert sorted((label, name) for label, name, _ in train) == [
        (0, "train/cat/00.png"),
        (0, "train/cat/01.png"),
        (0, "train/cat/02.png"),
        (0, "train/cat/sub/00.png"),
        (1, "train/dog/00.png"),
        (1, "train/dog/01.png"),
    ]
    # rows by the files' content sha256: classes mixed, so a first-N subset is a fair sample; never listing order
    assert [name for _, name, _ in train] == sorted(files, key=lambda name: hashlib.sha256(files[name]).digest())
    expected = convert_image((source / "train/cat/01.png").read_bytes(), 8).pixels
    assert (
        dict((name, pixels) for _, name, pixels in train)["train/cat/01.png"]
        == hashlib.sha256(expected.tobytes()).hexdigest()
    )
    assert sorted(name for _, name, _ in rows(tmp_path / "out", found, "test")) == [
        "test/cat/00.png",
        "test/dog/00.png",
    ]
    assert found["source"]["kind"] == "folder" and found["source"]["files"] == 8 and found["skipped"] == []
    assert not (tmp_path / "out" / ".pixels.scratch").exists()


def test_classes_txt_sets_the_label_order_and_classes_only_in_train_are_no_error(tmp_path):
    source = make_tree(tmp_path / "src", {"train/b": 1, "train/a": 1, "train/c": 1, "test/a": 1, "test/b": 1})
    (source / "classes.txt").write_text("c\n\nb\na\n")
    assert describe_folder(source).label_names == ("c", "b", "a")
    found = ingest(source, tmp_path / "out")
    assert sorted((label, name) for label, name, _ in rows(tmp_path / "out", found, "train")) == [
        (0, "train/c/00.png"),
        (1, "train/b/00.png"),
        (2, "train/a/00.png"),
    ]


@pytest.mark.parametrize(
    ("counts", "classes_txt", "says"),
    [
        ({}, None, "no class folders"),
        ({"cat": 2}, None, "one class folder (cat)"),
        ({"train/cat": 1, "train/dog": 1}, None, "has train/ but no test/"),
        ({"test/cat": 1, "test/dog": 1}, None, "has test/ but no train/"),
        ({"train/cat": 1, "test/cat": 1, "val/cat": 1}, None, "beside other folders (val)"),
        ({"cat": 1, "dog": 1}, "cat\nbird\n", "names bird, which are not class folders; leaves out dog"),
        ({"cat": 1, "dog": 1}, "cat\ndog\ncat\n", "repeats cat"),
    ],
)
def test_a_folder_that_is_not_a_data_set_is_refused_naming_it_and_what_to_do(tmp_path, counts, classes_txt, says):
    source = make_tree(tmp_path / "src", counts)
    source.mkdir(exist_ok=True)
    if classes_txt is not None:
        (source / "classes.txt").write_text(classes_txt)
    with pytest.raises(PipelineInputError, match="src") as refused:
        describe_folder(source)
    assert says in str(refused.value)


def test_over_256_classes_is_refused_and_256_is_not(tmp_path):
    for name in range(257):
        (tmp_path / f"c{name:03d}").mkdir()
    with pytest.raises(PipelineInputError, match="257 class folders; at most 256"):
        describe_folder(tmp_path)
    (tmp_path / "c256").rmdir()
    assert len(describe_folder(tmp_path).label_names) == 256


def test_sub_folders_at_any_depth_and_symlinked_folders_are_read_hidden_entries_and_cycles_are_not(tmp_path):
    outside = make_tree(tmp_path / "elsewhere", {"birds": 2})
    source = make_tree(tmp_path / "src", {"cat": 1, "cat/a/b": 1, "dog": 1})
    (source / "dog" / "linked").symlink_to(outside / "birds", target_is_directory=True)
    (source / "cat" / "loop").symlink_to(source / "cat", target_is_directory=True)
    (source / "cat" / ".thumbs").mkdir()
    picture(50).save(source / "cat" / ".thumbs" / "x.png")
    picture(51).save(source / "cat" / ".hidden.png")
    (source / ".git").mkdir()
    (source / "README.md").write_text("not in a class folder: ignored")
    found = ingest(source, tmp_path / "out", fraction=0.01)  # n ≥ 2 holds one out
    names = sorted(name for split in ("train", "test") for _, name, _ in rows(tmp_path / "out", found, split))
    assert found["label_names"] == ["cat", "dog"]
    assert names == ["cat/00.png", "cat/a/b/00.png", "dog/00.png", "dog/linked/00.png", "dog/linked/01.png"]


def test_files_that_do_not_decode_are_listed_as_skipped_with_why_and_the_rest_ingested(tmp_path):
    source = make_tree(tmp_path / "src", {"cat": 3, "dog": 3})
    picture(9, (64, 64)).save(source / "cat" / "broken.jpg")
    (source / "cat" / "broken.jpg").write_bytes((source / "cat" / "broken.jpg").read_bytes()[:400])  # cut short
    (source / "dog" / "empty.png").write_bytes(b"")
    (source / "dog" / "notes.txt").write_text("a text file")
    (source / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    found = ingest(source, tmp_path / "out")
    reasons = {entry["path"]: entry["reason"] for entry in found["skipped"]}
    assert list(reasons) == sorted(reasons) == ["cat/broken.jpg", "dog/empty.png", "dog/gone.png", "dog/notes.txt"]
    assert reasons["dog/empty.png"] == "empty file (0 bytes)" and "not an image" in reasons["dog/notes.txt"]
    assert reasons["dog/gone.png"].startswith("could not be read") and "decode" in reasons["cat/broken.jpg"]
    assert sum(len(rows(tmp_path / "out", found, s)) for s in ("train", "test")) == 6 and found["source"]["files"] == 10


def test_the_held_out_split_depends_only_on_content_and_seed_is_stratified_and_keeps_copies_together(tmp_path):
    source = make_tree(tmp_path / "one", {"cat": 12, "dog": 7})
    for copy in range(3):
        shutil.copy(source / "dog" / "00.png", source / "dog" / f"copy{copy}.png")
    found = ingest(source, tmp_path / "out1")
    assert found["split"] == {"method": "held-out", "test_fraction": 0.25, "split_seed": 0}
    test = rows(tmp_path / "out1", found, "test")
    assert [label for label, _, _ in test].count(0) == 3  # 12 × 0.25
    dog_tests = {name for label, name, _ in test if label == 1}
    copies = {"dog/00.png", "dog/copy0.png", "dog/copy1.png", "dog/copy2.png"}
    assert copies <= dog_tests or not copies & dog_tests  # identical files: one side
    assert len({pixels for label, _, pixels in test if label == 1}) == 2  # 7 distinct contents × 0.25 → 2

    # the same contents, renamed and written in the reverse order: the same contents held out
    renamed = tmp_path / "two"
    for path in sorted(source.rglob("*.png"), reverse=True):
        (renamed / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, renamed / path.parent.name / f"renamed-{path.name}")
    again = ingest(renamed, tmp_path / "out2")
    assert sorted(p for _, _, p in rows(tmp_path / "out2", again, "test")) == sorted(p for _, _, p in test)
    other_seed = ingest(source, tmp_path / "out3", split_seed=1)
    assert sorted(p for _, _, p in rows(tmp_path / "out3", other_seed, "test")) != sorted(p for _, _, p in test)


def test_a_damaged_zip_member_a_device_and_a_name_that_is_not_utf8_are_each_that_files_problem(tmp_path):
    source = make_tree(tmp_path / "src", {"cat": 3, "dog": 3})
    (source / "dog" / "zero.png").symlink_to("/dev/zero")  # read whole, it would never end
    odd = os.fsencode(source / "cat") + b"/caf\xe9.png"  # Latin-1, not UTF-8
    with open(odd, "wb") as handle:
        picture(40).save(handle, format="PNG")
    found = ingest(source, tmp_path / "out")
    assert {e["path"]: e["reason"] for e in found["skipped"]} == {
        "dog/zero.png": "could not be read: not a regular file (a device, pipe or socket)"
    }
    names = {name for split in ("train", "test") for _, name, _ in rows(tmp_path / "out", found, split)}
    assert "cat/caf\\xe9.png" in names and len(names) == 7  # stored escaped, as printable text

    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((tmp_path / "src").rglob("*.png")):
            if path.is_file() and not path.is_symlink() and b"\xe9" not in os.fsencode(path):
                zipped.write(path, path.relative_to(tmp_path / "src").as_posix())
    data = bytearray(archive.read_bytes())
    at = data.find(b"cat/01.png") + len("cat/01.png") + 10  # inside the first member's compressed bytes
    data[at] ^= 0xFF
    archive.write_bytes(bytes(data))
    found = ingest(archive, tmp_path / "out-zip")
    skipped = {e["path"]: e["reason"] for e in found["skipped"]}
    assert list(skipped) == ["cat/01.png"] and skipped["cat/01.png"].startswith("could not be read")
    assert sum(len(rows(tmp_path / "out-zip", found, s)) for s in ("train", "test")) == 5


def test_a_class_folder_whose_name_is_not_utf8_is_refused_before_any_work(tmp_path):
    source = make_tree(tmp_path / "src", {"cat": 1})
    os.mkdir(os.fsencode(source) + b"/caf\xe9")
    with pytest.raises(PipelineInputError, match=r"not UTF-8 text \(caf\\xe9\): a class name"):
        describe_folder(source)


def test_a_zip_and_a_tar_gz_of_the_folder_give_the_folders_shards_byte_for_byte(tmp_path):
    source = make_tree(tmp_path / "photos", {"train/cat": 2, "train/dog": 2, "test/cat": 1, "test/dog": 1})
    (source / "classes.txt").write_text("dog\ncat\n")
    with tarfile.open(tmp_path / "photos.tar.gz", "w:gz") as tar:  # members under one top folder: photos/…
        tar.add(source, arcname="photos")
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:  # members relative to the folder
        for path in sorted(source.rglob("*")):
            archive.write(path, path.relative_to(source).as_posix())
        archive.writestr("__MACOSX/._cat", b"resource fork")
    found = [
        ingest(path, tmp_path / f"out-{path.name}")
        for path in (source, tmp_path / "photos.tar.gz", tmp_path / "photos.zip")
    ]
    assert all(is_folder_source(tmp_path / name) for name in ("photos.tar.gz", "photos.zip"))
    assert found[0]["label_names"] == ["dog", "cat"] and found[0]["shards"]["train"]
    assert found[0]["shards"] == found[1]["shards"] == found[2]["shards"]
    assert found[1]["source"]["sha256"] == hashlib.sha256((tmp_path / "photos.tar.gz").read_bytes()).hexdigest()


def test_the_cifar_python_archive_is_not_a_folder_source_and_unsafe_member_names_are_refused(tmp_path):
    assert not is_folder_source(write_archive(tmp_path / "cifar-10-python.tar.gz"))
    data = io.BytesIO()
    picture(1).save(data, "PNG")
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tar:
        for name in ("cat/1.png", "../dog/1.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))
    with pytest.raises(PipelineInputError, match=r"evil.tar.gz holds a member named '../dog/1.png'"):
        describe_folder(tmp_path / "evil.tar.gz")


def test_folder_identity_rehashes_a_changed_file_and_trusts_the_memo_for_unchanged_ones(tmp_path):
    source = make_tree(tmp_path / "src", {"cat": 2, "dog": 2})
    memo, root = tmp_path / "data" / "digests.json", tmp_path
    first = folder_identity(source, memo, root)
    assert folder_identity(source, memo, root) == first
    assert first == ingest(source, tmp_path / "out")["source"]["sha256"]  # what ingest records is the same identity

    # a file rewritten with other content of the same size, later: read again, the identity changes
    changed = source / "cat" / "00.png"
    stat = changed.stat()
    other = bytearray(changed.read_bytes())
    other[-20] ^= 0xFF
    changed.write_bytes(bytes(other))
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert changed.stat().st_size == stat.st_size and folder_identity(source, memo, root) != first

    # an unchanged file is not read again: the memo's word is taken (here a planted one) until its mtime moves
    entries = read_json(memo)
    name = str((source / "dog" / "01.png").relative_to(root))
    planted = entries[name] | {"sha256": "0" * 64}
    write_json(memo, entries | {name: planted})
    with_planted = folder_identity(source, memo, root)
    os.utime(source / "dog" / "01.png", ns=(0, 10**18))
    assert with_planted != folder_identity(source, memo, root) == folder_identity(source, memo, root)
    assert read_json(memo)[name]["sha256"] == hashlib.sha256((source / "dog" / "01.png").read_bytes()).hexdigest()


def test_every_accepted_format_is_ingested_at_64_pixels(tmp_path):
    source = make_tree(tmp_path / "src", {"plain": 2})
    (source / "formats").mkdir()
    image = picture(7, (30, 20))
    image.save(source / "formats" / "a.jpg", quality=90)
    image.convert("CMYK").save(source / "formats" / "cmyk.jpg")
    image.save(source / "formats" / "b.webp")
    image.save(source / "formats" / "c.bmp")
    image.convert("P").save(source / "formats" / "d.gif")
    image.save(source / "formats" / "e.tiff")
    image.convert("RGBA").save(source / "formats" / "f.png")
    found = ingest(source, tmp_path / "out", size=64, fraction=0.01)
    assert found["skipped"] == [] and found["image_size"] == 64
    paths, counts = shard_files(tmp_path / "out", found["shards"]["train"] + found["shards"]["test"])
    images, labels = read_shards(paths, counts)
    assert images.shape == (9, 64, 64, 3) and images.dtype == np.uint8 and sorted(labels) == [0] * 7 + [1] * 2


@pytest.mark.flow  # decodes on worker processes (each starts a Python): seconds, not a unit
def test_two_and_101_classes_of_tiny_images_ingest_on_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setattr("cifarflow.data.folder.INLINE_FILES", 0)  # workers even for a few files
    two = ingest(make_tree(tmp_path / "two", {"a": 2, "b": 2}), tmp_path / "out2")
    assert two["label_names"] == ["a", "b"] and len(rows(tmp_path / "out2", two, "test")) == 2
    many = make_tree(tmp_path / "many", {f"class-{n:03d}": 2 for n in range(101)})
    seen = []
    found = ingest_folder(many, tmp_path / "out", 8, 0.2, 0, 50, print, lambda done, total: seen.append((done, total)))
    assert len(found["label_names"]) == 101 and len(found["shards"]["train"]) == 3  # 101 rows, 50 a shard
    test = rows(tmp_path / "out", found, "test")
    assert sorted(label for label, _, _ in test) == list(range(101))  # one of each class's two held out
    assert seen[0] == (0, 202) and seen[-1] == (202, 202) and len(seen) > 2


def test_the_ingest_task_shows_decoding_progress_as_a_bar_and_a_prefect_progress_artifact(
    prefect_server, monkeypatch, capsys
):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.runtime import flow_run

    import tasks.ingest

    monkeypatch.setattr(tasks.ingest, "SHOW_AFTER_S", 0.0)  # a tiny ingest would end before the bar shows

    @flow
    def decode_three_chunks() -> str:
        with tasks.ingest.DecodeProgress() as progress:
            for done in (0, 64, 128, 150):
                progress(done, 150)
        return flow_run.id

    run_id = decode_three_chunks()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    assert [(a.type, a.data) for a in artifacts] == [("progress", 100.0)]
    shown = capsys.readouterr().out
    assert "decoding images" in shown and "150/150" in shown


def test_a_link_to_itself_is_skipped_and_classes_txt_may_start_with_a_bom_but_must_be_utf8(tmp_path):
    source = make_tree(tmp_path / "src", {"cat": 2, "dog": 2})
    (source / "cat" / "loop.png").symlink_to("loop.png")
    (source / "classes.txt").write_bytes("\ufeffdog\r\ncat\r\n".encode())  # Notepad's UTF-8, Windows line ends
    assert describe_folder(source).label_names == ("dog", "cat")
    found = ingest(source, tmp_path / "out")
    assert [entry["path"] for entry in found["skipped"]] == ["cat/loop.png"]
    assert found["skipped"][0]["reason"].startswith("could not be read: Too many levels of symbolic links")
    (source / "classes.txt").write_bytes("dog\ncat\nb\xe4r\n".encode("latin-1"))
    with pytest.raises(PipelineInputError, match="classes.txt is not UTF-8 text: save it as UTF-8"):
        describe_folder(source)
