"""Files as users lay them out: names that are not UTF-8, glob characters in real folder names, links
to folders and link loops, broken links, pipes and hidden files. Every file a user points at is
added, scored, or listed with a true reason; none stops the others, none is dropped without a word."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cifarflow.files import read_json
from cifarflow.inference.sources import select_files
from cifarflow.intake.screen import scan_inbox
from cifarflow.paths import from_printable, printable, walk
from flows.add_images import main as add_images_main  # imported before a test captures output: Prefect's
from flows.predict_flow import main as predict_main  # log handlers bind to the stderr of the moment they load
from tests.flow_helpers import run_flow
from tests.image_bytes import ORIENTATION, RATIONAL, RESOLUTION_UNIT, SHORT, exif_block
from tests.synthetic import CLASSES

LATIN1_NAME = b"caf\xe9.png"  # "café.png" as an old camera or zip tool writes it: not UTF-8


def picture(path: Path, seed: int, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)).save(path, format="PNG")
    return path


def latin1_file(folder: Path, seed: int) -> Path:
    """A PNG whose file name is the bytes `caf\\xe9.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = os.path.join(os.fsencode(folder), LATIN1_NAME)
    picture(Path(os.fsdecode(raw)), seed)
    return Path(os.fsdecode(raw))


def latin1_folder(parent: Path, name: bytes) -> Path:
    folder = Path(os.fsdecode(os.path.join(os.fsencode(parent), name)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------------- printable names


def test_a_name_that_is_not_utf8_is_recorded_as_lossless_printable_text():
    text = printable(os.fsdecode(b"photos/" + LATIN1_NAME))
    assert text == "photos/caf\\xe9.png"
    text.encode("utf-8")  # any UTF-8 writer (Parquet, JSON, the Prefect API) accepts it
    assert os.fsencode(from_printable(text)) == b"photos/" + LATIN1_NAME  # lossless


@pytest.mark.parametrize(
    "raw", [LATIN1_NAME, b"a\nb", "x\u0085y\u2028z".encode(), b"[2024]/\xff\xfe.jpg", "é".encode(), b"\x1b[31m"]
)
def test_printable_names_turn_back_into_the_same_bytes(raw):
    text = printable(os.fsdecode(raw))
    assert text.isprintable() and os.fsencode(from_printable(text)) == raw


@pytest.mark.parametrize(
    ("name", "expected"),
    [("photos [2024]/é.png", "photos [2024]/é.png"), ("a\nb.png", "a\\x0ab.png"), ("tab\there", "tab\\x09here")],
)
def test_printable_keeps_utf8_names_and_escapes_control_characters(name, expected):
    assert printable(name) == expected


# ------------------------------------------------------------------------------------------- walking


def test_walk_follows_links_to_folders_once_and_reports_loops_broken_links_and_pipes(tmp_path):
    root = tmp_path / "inbox"
    picture(root / "cat" / "a.png", 1)
    picture(tmp_path / "elsewhere" / "b.png", 2)
    (root / "cat" / "more").symlink_to(tmp_path / "elsewhere")  # a link to a folder: followed
    (root / "cat" / "loop").symlink_to(root / "cat")  # a loop: reported once, not followed
    (root / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(root / "cat" / "pipe.png")
    found = {str(f.path.relative_to(root)): f.problem for f in walk(root)}
    assert found == {
        "cat/a.png": None,
        "cat/more/b.png": None,
        "cat/loop": "a link to a folder already read (a loop): not read again",
        "cat/gone.png": "broken symbolic link",
        "cat/pipe.png": "not a regular file (a named pipe)",
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder whatever its permissions")
def test_walk_reports_a_folder_that_cannot_be_read(tmp_path):
    locked = tmp_path / "inbox" / "cat" / "locked"
    picture(locked / "a.png", 1)
    locked.chmod(0)
    try:
        assert [(f.path, f.problem) for f in walk(tmp_path / "inbox")] == [
            (locked, "folder could not be read: Permission denied")
        ]
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------------------------------- the inbox


def test_scan_inbox_keeps_a_file_whose_name_is_not_utf8_beside_the_others(tmp_path):
    good = picture(tmp_path / "inbox" / "cat" / "good.png", 1)
    odd = latin1_file(tmp_path / "inbox" / "cat", 2)
    result = scan_inbox(tmp_path / "inbox", CLASSES)
    assert result.rejected == [] and sorted(c.path for c in result.candidates) == sorted([good, odd])


def test_scan_inbox_gives_every_odd_entry_a_true_reason(tmp_path):
    inbox = tmp_path / "inbox"
    picture(inbox / "cat" / "a.png", 1)
    picture(tmp_path / "more-cats" / "b.png", 2)
    (inbox / "cat" / "linked").symlink_to(tmp_path / "more-cats")
    (inbox / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(inbox / "cat" / "pipe.png")
    result = scan_inbox(inbox, CLASSES)
    assert sorted(c.path.relative_to(inbox).as_posix() for c in result.candidates) == ["cat/a.png", "cat/linked/b.png"]
    assert {Path(r.path).name: r.reason for r in result.rejected} == {
        "gone.png": "broken symbolic link",
        "pipe.png": "not a regular file (a named pipe)",
    }


# ------------------------------------------------------------------------------------------- PATH arguments


def test_a_path_with_glob_characters_is_taken_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = picture(tmp_path / "photos [2024]" / "a.jpg", 1)
    b = picture(tmp_path / "photos [2024]" / "b.jpg", 2)
    picture(tmp_path / "photos 2" / "c.jpg", 3)  # what "[2024]" would match as a character class
    assert select_files(["photos [2024]/a.jpg"]).files == [a.absolute()]
    assert select_files(["photos [2024]/*.jpg"]).files == [a.absolute(), b.absolute()]
    assert select_files(["photos [2024]"]).files == [a.absolute(), b.absolute()]


def test_files_in_a_folder_that_are_not_scored_are_listed_with_the_reason(tmp_path):
    photos = tmp_path / "photos"
    good = picture(photos / "a.png", 1)
    picture(photos / ".hidden.png", 2)
    (photos / "notes.txt").write_text("not a picture")
    (photos / "gone.png").symlink_to(tmp_path / "nowhere.png")
    selection = select_files([str(photos)])
    assert selection.files == [good]
    reasons = {Path(path).name: reason for path, reason in selection.skipped}
    assert set(reasons) == {".hidden.png", "notes.txt", "gone.png"}
    assert reasons[".hidden.png"].startswith("hidden") and reasons["gone.png"] == "broken symbolic link"
    assert reasons["notes.txt"].startswith("extension '.txt' is not one of")


# ------------------------------------------------------------------------------------------- the commands


def exif_files(folder: Path) -> None:
    """A JPEG whose EXIF holds orientation 6 and a ResolutionUnit stored as RATIONAL (Pillow's
    exif_transpose raises struct.error on it), and a PNG whose EXIF is not TIFF at all."""
    folder.mkdir(parents=True, exist_ok=True)
    scene = Image.fromarray(np.random.default_rng(31).integers(0, 256, (48, 64, 3), np.uint8))
    malformed = exif_block([(ORIENTATION, SHORT, (6,)), (RESOLUTION_UNIT, RATIONAL, (2, 1))])
    scene.save(folder / "rotated.jpg", quality=95, exif=malformed)
    scene.save(folder / "unreadable-exif.png", exif=b"XX*\x00\x08\x00\x00\x00")


ODD_FILES = ["caf\\xe9.png", "good.png", "rotated.jpg", "unreadable-exif.png"]  # as recorded


def test_add_images_adds_odd_names_and_malformed_exif_beside_good_files(prefect_server, tiny_config, tmp_path, capsys):
    state, _ = run_flow(tiny_config, stages=["ingest"])
    assert state.is_completed()
    inbox = latin1_folder(tmp_path, b"inbox-\xe9t\xe9")  # the inbox's own name is not UTF-8 either
    picture(inbox / "cat" / "good.png", 11, size=64)
    latin1_file(inbox / "cat", 12)
    exif_files(inbox / "cat")
    code = add_images_main([str(inbox), "--data-dir", str(tiny_config.data_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = read_json(out.strip().splitlines()[-1].removeprefix("done: summary at "))
    assert summary["added"] == 4 and summary["rejected"] == [], summary
    assert summary["inbox"].endswith("inbox-\\xe9t\\xe9")
    assert [Path(n["path"]).name for n in summary["notes"]] == ["unreadable-exif.png"]
    batch = pq.read_table(next((tiny_config.data_dir / "batches").rglob("*.parquet")), columns=["filename"])
    assert sorted(Path(name).name for name in batch.column("filename").to_pylist()) == ODD_FILES


def test_predict_scores_odd_names_and_malformed_exif_beside_good_files(prefect_server, two_versions, tmp_path, capsys):
    folder = latin1_folder(tmp_path, b"ph\xe9tos")
    picture(folder / "good.png", 21)
    latin1_file(folder, 22)
    exif_files(folder)
    out_file = latin1_folder(tmp_path, b"out") / os.fsdecode(b"\xe9.parquet")
    code = predict_main([str(folder), "--data-dir", str(two_versions), "--out", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1] == f"done: predictions at {printable(out_file)}", out
    with open(out_file, "rb") as handle:
        rows = {Path(row["path"]).name: row for row in pq.read_table(handle).to_pylist()}
    assert sorted(rows) == ODD_FILES
    assert all(row["error"] is None and row["label"] in CLASSES for row in rows.values())
    assert [name for name, row in rows.items() if row["note"]] == ["unreadable-exif.png"]
    assert rows["unreadable-exif.png"]["note"].endswith("pixels as stored")


def test_a_data_dir_whose_name_is_not_utf8_is_refused_with_its_printable_name(synthetic_archive, tmp_path):
    from pydantic import ValidationError

    from cifarflow.config import PipelineConfig

    odd = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"d\xe9ta")))
    with pytest.raises(ValidationError, match=r"d\\xe9ta holds characters that are not UTF-8"):
        PipelineConfig(source=str(synthetic_archive), data_dir=odd)
    assert not odd.exists()


# ------------------------------------------------------------------------------------------- more kinds


def test_an_inbox_removed_before_its_scan_is_a_rejection_not_a_crash(tmp_path):
    result = scan_inbox(tmp_path / "gone", CLASSES)
    assert result.candidates == []
    assert [(r.path, r.reason) for r in result.rejected] == [
        (str(tmp_path / "gone"), "the inbox folder could not be read: No such file or directory")
    ]


def test_a_printed_name_tells_a_real_backslash_from_a_byte():
    literal, latin1 = "caf\\xe9.png", os.fsdecode(LATIN1_NAME)  # four ASCII characters, against one byte
    assert printable(literal) == "caf\\x5cxe9.png" and printable(latin1) == "caf\\xe9.png"
    assert from_printable(printable(literal)) == literal and from_printable(printable(latin1)) == latin1


def test_path_arguments_that_name_no_readable_file_are_refused_or_listed_with_a_true_reason(tmp_path):
    from cifarflow.inference.sources import UnusableArguments

    with pytest.raises(UnusableArguments, match="an empty PATH argument"):
        select_files([""])  # "$UNSET" in a shell: not the current folder
    with pytest.raises(UnusableArguments, match="File name too long"):
        select_files([str(tmp_path / ("L" * 300 + ".png"))])
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "self.png").symlink_to(tmp_path / "self.png")
    good = picture(tmp_path / "good.png", 1)
    selection = select_files([str(tmp_path / "pipe.png"), str(tmp_path / "self.png"), str(good)])
    assert selection.files == [good]
    assert selection.skipped == [
        (str(tmp_path / "pipe.png"), "not a regular file (a named pipe)"),
        (str(tmp_path / "self.png"), "could not be read: Too many levels of symbolic links"),
    ]


def test_a_recursive_pattern_through_a_link_loop_selects_each_file_once(tmp_path):
    images = [picture(tmp_path / "odd" / f"{n}.png", n) for n in range(3)]
    (tmp_path / "odd" / "sub").mkdir()
    (tmp_path / "odd" / "sub" / "up").symlink_to(tmp_path / "odd")  # a loop: odd/sub/up/sub/up/…
    for pattern in (tmp_path / "odd" / "**" / "*.png", tmp_path / "odd" / "sub" / "**"):
        files = select_files([str(pattern)]).files
        assert sorted(os.path.realpath(f) for f in files) == [str(p) for p in images]  # once each, however reached
